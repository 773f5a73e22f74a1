"""The three TTT references agree in float64: per-token primal, per-token dual, whole mini-batch dual."""

import pytest
import torch
from ttt_helpers import DUAL_REFS, PRIMAL_REFS, random_layer, random_token

from ttt_kernels.ops.ttt_linear import ttt_linear_minibatch_dual_ref
from ttt_kernels.ops.ttt_mlp import ttt_mlp_minibatch_dual_ref
from ttt_kernels.ops.ttt_state import TTTDualState, TTTPrimalState

MINIBATCH_REFS = {"mlp_1": ttt_linear_minibatch_dual_ref, "mlp_2": ttt_mlp_minibatch_dual_ref}
D = torch.float64


@pytest.mark.parametrize("inner_net", ["mlp_1", "mlp_2"])
def test_primal_equals_minibatch_dual(inner_net):
    gen = torch.Generator().manual_seed(1)
    B, H, f, K, n_mb = 2, 3, 16, 8, 3
    params, ln_w, ln_b, tib = random_layer(inner_net, H, f, K, gen=gen)
    primal = TTTPrimalState.from_params(params, B, D)
    weights = [p.unsqueeze(0).repeat(B, *[1] * p.dim()) for p in params]
    for m in range(n_mb):
        toks = [random_token(B, H, f, D, gen=gen) for _ in range(K)]
        Q, Kx, V = (torch.stack([tk[i] for tk in toks], 2) for i in range(3))
        LR = torch.stack([tk[3] for tk in toks], 2).double()
        out_mb, weights = MINIBATCH_REFS[inner_net](Q, Kx, V, LR, ln_w, ln_b, tib, weights)
        for i, (q, k, v, lr) in enumerate(toks):
            pos = torch.full((B,), m * K + i)
            out = PRIMAL_REFS[inner_net](q, k, v, lr.double(), pos, ln_w, ln_b, tib, primal)
            torch.testing.assert_close(out, out_mb[:, :, i], rtol=1e-10, atol=1e-10)
        for w, w_mb in zip(primal.weights, weights):
            torch.testing.assert_close(w, w_mb, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("inner_net", ["mlp_1", "mlp_2"])
def test_dual_equals_primal_mixed_positions(inner_net):
    """Sequences start at different places in their mini-batches (the caches' earlier rows
    carry zero learning rate, which is the state a fresh primal state describes too)."""
    gen = torch.Generator().manual_seed(2)
    B, H, f, K = 4, 2, 16, 8
    params, ln_w, ln_b, tib = random_layer(inner_net, H, f, K, gen=gen)
    dual = TTTDualState.from_params(params, B, K, D, D)
    dual.k_cache.normal_(generator=gen)  # garbage rows: lr 0 must make them inert
    primal = TTTPrimalState.from_params(params, B, D)
    pos = torch.tensor([0, 3, 7, 13])
    for _ in range(3 * K):
        q, k, v, lr = random_token(B, H, f, D, gen=gen)
        out_d = DUAL_REFS[inner_net](q, k, v, lr.double(), pos, ln_w, ln_b, tib, dual)
        out_p = PRIMAL_REFS[inner_net](q, k, v, lr.double(), pos, ln_w, ln_b, tib, primal)
        torch.testing.assert_close(out_d, out_p, rtol=1e-10, atol=1e-10)
        pos = pos + 1
    # after a boundary both hold the weights at their sequence's current mini-batch start
    at_start = pos % K == 0
    for wd, wp in zip(dual.weights, primal.weights):
        torch.testing.assert_close(wd[at_start], wp[at_start], rtol=1e-10, atol=1e-10)
