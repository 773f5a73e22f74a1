"""Fused dual-form Triton decode steps vs the float64 dual reference."""

import math

import pytest
import torch
from ttt_helpers import DUAL_REFS, TOL, random_dual_state, random_layer, random_token, rel_err, to_float64

from ttt_kernels.ops.ttt_linear import ttt_linear_decode_dual
from ttt_kernels.ops.ttt_mlp import ttt_mlp_decode_dual

KERNELS = {"mlp_1": ttt_linear_decode_dual, "mlp_2": ttt_mlp_decode_dual}
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# (state dtype, activation dtype): each state dtype, and states wider than activations
DTYPES = [(F32, F32), (F16, F16), (BF16, BF16), (F32, F16)]
# fp32 kernels run their products in ieee fp32 or tf32x3 (errors ~1e-7 / ~1e-6), so 1e-5 (not the
# rule's 1e-4) catches a product silently done in 16 bits (8.7e-5 when Z = K W was) or in plain tf32
F32_TIGHT = 1e-5


def run_against_reference(inner_net, B, H, f, state_dtype, act_dtype, pos, steps, device, seed, weight_scale=1.0,
                          w1_hidden_major=False):
    """``steps`` decode steps from positions ``pos`` vs the float64 reference (outputs poisoned, stale
    cache rows NaN); ``weight_scale`` scales the inner net's start weights (small: z's variance
    near the LayerNorm's eps); ``w1_hidden_major``: the ``mlp_2`` state's W1 layout."""
    gen = torch.Generator().manual_seed(seed)
    K = 16
    params, ln_w, ln_b, tib = random_layer(inner_net, H, f, K, gen=gen)
    tib[3] = -0.5  # eta_3 = max(0, 1/4 - 0.5) = 0: the clamp is exercised
    params = [p * weight_scale for p in params]
    params, ln_w, ln_b, tib = [p.to(device) for p in params], ln_w.to(device), ln_b.to(device), tib.to(device)
    state = random_dual_state(params, B, K, state_dtype, act_dtype, gen=gen, w1_hidden_major=w1_hidden_major)
    assert state.weights[0].is_contiguous() != w1_hidden_major
    ref_state = to_float64(state)  # the reference runs in float64 on the same device
    stale = torch.arange(K) >= (pos % K)[:, None]  # [B, K]: rows j >= t are not part of the step
    for cache in (state.k_cache, state.v_cache, state.lr_cache):  # NaN there must not leak
        cache.masked_fill_(stale.view(B, 1, K, *[1] * (cache.dim() - 3)).to(cache.device), math.nan)
    ln = [x.to(torch.float32) for x in (ln_w, ln_b, tib)]
    pos = pos.to(device)
    tol = TOL[state_dtype] if act_dtype == torch.float32 else max(TOL[state_dtype], TOL[act_dtype])
    if state_dtype == act_dtype == F32:
        tol = F32_TIGHT
    for _ in range(steps):
        q, k, v, lr = random_token(B, H, f, act_dtype, device, gen=gen)
        out = torch.full_like(q, math.nan)
        KERNELS[inner_net](q, k, v, lr, pos, *ln, state, out=out)
        ref = DUAL_REFS[inner_net](q.double(), k.double(), v.double(), lr.double(), pos, ln_w, ln_b, tib, ref_state)
        assert not out.isnan().any(), "unwritten output elements"
        # compare the layer's own contribution LN(z_bar): q passes through and would hide errors
        assert rel_err(out - q, ref - q.double()) < tol, (rel_err(out - q, ref - q.double()), pos)
        pos += 1
    for w, w_ref in zip(state.weights, ref_state.weights):
        assert rel_err(w, w_ref) < tol
    t = (pos % K).tolist()  # cache rows j < t must hold this mini-batch's inputs exactly
    for b in range(B):
        for name in ("k_cache", "v_cache", "lr_cache"):
            torch.testing.assert_close(getattr(state, name)[b, :, : t[b]].double(),
                                       getattr(ref_state, name)[b, :, : t[b]], msg=name)


@pytest.mark.parametrize("inner_net", ["mlp_1", "mlp_2"])
@pytest.mark.parametrize("state_dtype,act_dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_dual_kernel_matches_reference(inner_net, state_dtype, act_dtype, device):
    # 40 steps from mixed in-mini-batch positions: every sequence crosses >= 2 boundaries
    pos = torch.tensor([0, 7, 15, 37])
    run_against_reference(inner_net, 4, 2, 64, state_dtype, act_dtype, pos, 40, device, seed=10)


@pytest.mark.parametrize("state_dtype,act_dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_mlp_dual_kernel_hidden_major_w1(state_dtype, act_dtype, device):
    # W1 stored [4f, f] (what the model allocates for the transposed form): both kernel forms
    # index it through its strides, the update writes it back in place
    pos = torch.tensor([0, 7, 15, 37])
    run_against_reference("mlp_2", 4, 2, 64, state_dtype, act_dtype, pos, 40, device, seed=14, w1_hidden_major=True)


@pytest.mark.parametrize("inner_net", ["mlp_1", "mlp_2"])
def test_dual_kernel_small_activations(inner_net, device):
    # start weights scaled by 1e-3: z_bar's variance is near the LayerNorm's eps (1e-6), which
    # then shapes the output and the gradient (an eps of 1e-5 errs by 11% here, 6e-6 at scale 1)
    run_against_reference(inner_net, 2, 1, 64, F32, F32, torch.tensor([0, 9]), 20, device, seed=13,
                          weight_scale=1e-3)


@pytest.mark.parametrize("inner_net", ["mlp_1", "mlp_2"])
@pytest.mark.parametrize("state_dtype,act_dtype", [(F32, F32), (F16, F16)], ids=["float32", "float16"])
def test_dual_kernel_padded_head_dim(inner_net, state_dtype, act_dtype, device):
    # f = 96 (the 760M config) runs in a 128-wide block with masked columns
    run_against_reference(inner_net, 2, 1, 96, state_dtype, act_dtype, torch.tensor([3, 14]), 20, device, seed=11)


@pytest.mark.gpu
@pytest.mark.parametrize("inner_net,hidden_major", [("mlp_1", False), ("mlp_2", False), ("mlp_2", True)],
                         ids=["mlp_1", "mlp_2", "mlp_2-hidden_major_w1"])
@pytest.mark.parametrize("f", [64, 128])
def test_dual_kernel_1b_sizes(inner_net, hidden_major, f):
    B = 512 if f == 64 else 64
    pos = torch.arange(B) * 7 % 100  # every phase of the mini-batch
    run_against_reference(inner_net, B, 32 if f == 64 else 16, f, F16, F16, pos, 40, "cuda", seed=12,
                          w1_hidden_major=hidden_major)
