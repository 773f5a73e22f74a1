"""TTT-Linear decode step in the primal form: the original TTT inference algorithm,
kept as the baseline the dual kernel is measured against.

One program per (sequence, head). The state holds ``W0, b0`` (weights at the start of
the mini-batch) and the materialised gradient sums ``W_grad = sum_j lr_j k_j^T g_j``,
``b_grad = sum_j lr_j g_j``. Each token

    z = k W0 + b0,   g = lr * ln_l2_grad(z, v - k)
    W_grad += k^T g,  b_grad += g                      (sums start from 0 at t = 0)
    W_bar = W0 - eta_t W_grad,  b_bar = b0 - eta_t b_grad
    out = q + LN(q W_bar + b_bar)

and writes back ``W_grad, b_grad``, or, at the mini-batch's last token, ``W_bar, b_bar``
into the weights (the gradient buffers are then stale and ignored by the next token,
which has t = 0). That is three weight-sized matrices of traffic per token (read W0,
read and write W_grad), versus about one for the dual form.
"""

import torch
import triton
import triton.language as tl

from ..triton_utils import FP_FUSION, layer_norm_rows, ln_l2_grad_rows, load_token, on_input_device
from ..ttt_state import TTTPrimalState, check_decode_args


@triton.jit
def ttt_linear_decode_primal_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, pos_ptr, ln_w_ptr, ln_b_ptr, tib_ptr, out_ptr,
    W_ptr, b_ptr, Wg_ptr, bg_ptr,
    H: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, K: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)  # 64-bit offsets: B*H*f*4f overflows int32
    cols = tl.arange(0, BF)
    cm = cols < F  # real features (f = 96 runs in a 128-wide block)
    t, eta, q, k, v, lr, gamma, beta = load_token(q_ptr, k_ptr, v_ptr, lr_ptr, pos_ptr, ln_w_ptr, ln_b_ptr, tib_ptr,
                                                  bh, cols, cm, H, F, K)


    w_off = bh * F * F + cols[:, None] * F + cols[None, :]
    w_mask = cm[:, None] & cm[None, :]
    W = tl.load(W_ptr + w_off, mask=w_mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + bh * F + cols, mask=cm, other=0.0).to(tl.float32)
    # at t = 0 the buffers hold the previous mini-batch's sums (or garbage): not read at all,
    # so they count as zero even if they hold NaN/inf. (The masks take has_grad through
    # tl.where, not `mask & has_grad`: Triton's interpreter turns tensor & scalar-bool into
    # an int32 mask, which tl.load rejects.)
    has_grad = t > 0
    Wg = tl.load(Wg_ptr + w_off, mask=tl.where(has_grad, w_mask, False), other=0.0).to(tl.float32)
    bg = tl.load(bg_ptr + bh * F + cols, mask=tl.where(has_grad, cm, False), other=0.0).to(tl.float32)

    # vector-matrix products as broadcast-and-reduce in fp32: the plain form for one row vector
    z = tl.sum(k[:, None] * W, axis=0) + b
    g = tl.sum(ln_l2_grad_rows(z[None, :], (v - k)[None, :], gamma, beta, cm, F), axis=0) * lr
    Wg += k[:, None] * g[None, :]
    bg += g

    W_bar = W - eta * Wg
    b_bar = b - eta * bg
    z_bar = tl.sum(q[:, None] * W_bar, axis=0) + b_bar
    out = q[None, :] + layer_norm_rows(z_bar[None, :], gamma, beta, cm, F)
    tl.store(out_ptr + bh * F + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=cm[None, :])

    if t == K - 1:  # the mini-batch ends: its weights become the next one's start
        tl.store(W_ptr + w_off, W_bar.to(W_ptr.dtype.element_ty), mask=w_mask)
        tl.store(b_ptr + bh * F + cols, b_bar.to(b_ptr.dtype.element_ty), mask=cm)
    else:
        tl.store(Wg_ptr + w_off, Wg.to(Wg_ptr.dtype.element_ty), mask=w_mask)
        tl.store(bg_ptr + bh * F + cols, bg.to(bg_ptr.dtype.element_ty), mask=cm)


def _num_warps(f: int) -> int:
    # W, W_grad and W_bar are fp32 register tiles: 32 values per thread each at f <= 64 on
    # 4 warps, 64 at f = 128 on 8. Compiled offline for sm_90 (Triton 3.9): 164 registers
    # at f = 64, ~250 at f = 96/128, no spills for any state dtype.
    return 4 if f <= 64 else 8


@on_input_device
def ttt_linear_decode_primal(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, state: TTTPrimalState,
                             *, out=None, check_positions=True) -> torch.Tensor:
    """One TTT-Linear decode step in the primal form; updates ``state`` in place and returns
    ``q + LN(z_bar)`` in q's dtype.

    ``q, k, v [B, H, f]``, ``lr [B, H]``, ``pos [B]`` (absolute positions; not advanced
    here), ``ln_weight, ln_bias [H, f]``, ``token_idx_bias [K]``. Every argument is checked
    before the launch, so a rejected call leaves ``state`` untouched.
    """
    B, H, f, K, out = check_decode_args("mlp_1", TTTPrimalState, q, k, v, lr, pos, ln_weight, ln_bias,
                                        token_idx_bias, state, out, check_positions)
    W, b = state.weights
    W_grad, b_grad = state.grads
    ttt_linear_decode_primal_kernel[(B * H,)](
        q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, out,
        W, b, W_grad, b_grad,
        H=H, F=f, BF=triton.next_power_of_2(f), K=K, num_warps=_num_warps(f), **FP_FUSION,
    )
    return out
