"""Random TTT layers, states and inputs for the op tests (never zeros: those hide bugs)."""

import torch

from ttt_kernels.ops.ttt_linear import ttt_linear_decode_dual_ref, ttt_linear_decode_primal_ref
from ttt_kernels.ops.ttt_mlp import ttt_mlp_decode_dual_ref, ttt_mlp_decode_primal_ref
from ttt_kernels.ops.ttt_state import TTTDualState, TTTPrimalState
from ttt_kernels.utils import benchmarking

DUAL_REFS = {"mlp_1": ttt_linear_decode_dual_ref, "mlp_2": ttt_mlp_decode_dual_ref}
PRIMAL_REFS = {"mlp_1": ttt_linear_decode_primal_ref, "mlp_2": ttt_mlp_decode_primal_ref}
LR_SCALE = 0.3
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float64: 1e-12}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def random_layer(inner_net, H, f, K=16, device="cpu", gen=None):
    """Per-head inner-net params ``[H, ...]``, TTT-norm params and token-index bias (float64)."""
    return benchmarking.random_layer(inner_net, H, f, K, device, dtype=torch.float64, gen=gen)


def random_token(B, H, f, dtype, device="cpu", gen=None):
    """q, k, v ``[B, H, f]`` in ``dtype`` and lr ``[B, H]`` fp32 (drawn on the CPU: same draws on any device)."""
    q, k, v = (torch.randn(B, H, f, generator=gen, dtype=torch.float64).to(device, dtype) for _ in range(3))
    # lr well above a real model's (<= 1/f) so the mini-batch terms weigh in every output
    lr = (LR_SCALE * torch.rand(B, H, generator=gen, dtype=torch.float64)).to(device, torch.float32)
    return q, k, v, lr


def random_dual_state(params, B, K, state_dtype, act_dtype, gen=None, w1_hidden_major=False) -> TTTDualState:
    """A dual state with random cache rows: valid for a sequence at any position
    (rows j < t are its mini-batch so far, the rest are ignored)."""
    st = TTTDualState.from_params(params, B, K, state_dtype, act_dtype, w1_hidden_major)
    shape = st.k_cache.shape
    st.k_cache.copy_(torch.randn(shape, generator=gen, dtype=torch.float64))
    st.v_cache.copy_(torch.randn(shape, generator=gen, dtype=torch.float64))
    st.lr_cache.copy_(LR_SCALE * torch.rand(st.lr_cache.shape, generator=gen, dtype=torch.float64))
    return st


def random_primal_state(params, B, state_dtype, gen=None) -> TTTPrimalState:
    """A primal state with random gradient sums (ignored by sequences at t = 0)."""
    st = TTTPrimalState.from_params(params, B, state_dtype)
    for g in st.grads:
        g.copy_(0.05 * torch.randn(g.shape, generator=gen, dtype=torch.float64))
    return st


def to_float64(state):
    if isinstance(state, TTTDualState):
        return TTTDualState([w.double() for w in state.weights], state.k_cache.double(),
                            state.v_cache.double(), state.lr_cache.double())
    return TTTPrimalState([w.double() for w in state.weights], [g.double() for g in state.grads])
