"""Fused TTT-Linear decode step in the dual form (one launch per layer per token).

One program per (sequence, head). It reads ``W0, b0`` once, rebuilds the
mini-batch so far (cached ``k_j, v_j, lr_j`` for ``j < t`` plus the current token at
row ``t``), recomputes the rows' gradients at ``W0`` with one tensor-core product
(which also gives ``q W0`` while the mini-batch has a free row), and forms
``z_bar = q W0 + b0 - eta_t * sum_j lr_j (q.k_j + 1) g_j`` without ever materialising ``W_grad``.
At the mini-batch's last token it applies the rank-K update to ``W0, b0``; otherwise it
appends the token to the cache.
"""

import torch
import triton
import triton.language as tl

from ..conv_rotary.decode import NO_PROJECTION, TTTStepInputs, load_dual_token
from ..triton_utils import (as_row, dot_config, dual_row, layer_norm_rows, ln_l2_grad_rows, load_minibatch_rows,
                            on_input_device, pdl_options, store_cache_row, wait_for_prior_kernel)
from ..ttt_state import TTTDualState, check_decode_args, check_decode_args_from_projection, check_kernel_sizes


@triton.jit
def ttt_linear_decode_dual_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, pos_ptr, ln_w_ptr, ln_b_ptr, tib_ptr, out_ptr,
    W_ptr, b_ptr, kc_ptr, vc_ptr, lrc_ptr,
    x_ptr, stride_x, vp_ptr, stride_v, logit_ptr, stride_logit, lr_bias_ptr, lr_scale, cs_ptr, wq_ptr, bq_ptr,
    wk_ptr, bk_ptr, cos_ptr, sin_ptr,
    H: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr, KC: tl.constexpr, PERIOD: tl.constexpr,
    FROM_PROJECTION: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_prior_kernel(PDL)
    bh = tl.program_id(0).to(tl.int64)  # 64-bit offsets: B*H*f*4f overflows int32
    cols = tl.arange(0, BF)
    cm = cols < F  # real features (f = 96 runs in a 128-wide block)
    t, eta, q, k, v, lr, gamma, beta = load_dual_token(
        q_ptr, k_ptr, v_ptr, lr_ptr, pos_ptr, ln_w_ptr, ln_b_ptr, tib_ptr, x_ptr, stride_x, vp_ptr, stride_v, logit_ptr,
        stride_logit, lr_bias_ptr, lr_scale, cs_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, cos_ptr, sin_ptr, bh, cols, cm,
        H, F, K, KC, PERIOD, FROM_PROJECTION)


    # the mini-batch so far (rows j > t carry lr 0)
    kr, vr, lrr = load_minibatch_rows(kc_ptr, vc_ptr, lrc_ptr, bh, t, k, v, lr, cols, cm, F, K)

    w_off = bh * F * F + cols[:, None] * F + cols[None, :]
    w_mask = cm[:, None] & cm[None, :]
    W = tl.load(W_ptr + w_off, mask=w_mask, other=0.0)
    b = tl.load(b_ptr + bh * F + cols, mask=cm, other=0.0).to(tl.float32)

    # gradients of every row at W0 (rows > t come out zero through lr). While t < K-1 the last row
    # is free, so q rides there and the same product gives q W0 + b0 (its gradient is zeroed by lr);
    # q W0 needs a product of its own only at t = K-1. H100, B=512: 97.2 -> 91.9 us.
    rows = tl.arange(0, K)
    q_in_last_row = ((rows == K - 1) & (t < K - 1))[:, None]
    Z = tl.dot(tl.where(q_in_last_row, q[None, :], kr).to(DOT_DTYPE), W.to(DOT_DTYPE),
               input_precision=DOT_PREC) + b[None, :]
    G = ln_l2_grad_rows(Z, vr - kr, gamma, beta, cm, F) * lrr[:, None]

    attn = tl.sum(kr * q[None, :], axis=1) + 1.0  # q.k_j + 1
    if t == K - 1:
        ZQ = tl.dot(as_row(q, K - 1, K, DOT_DTYPE), W.to(DOT_DTYPE), input_precision=DOT_PREC) + b[None, :]
    else:
        ZQ = Z
    z_bar = dual_row(ZQ, K - 1, attn, G, eta, K)
    out = q[None, :] + layer_norm_rows(z_bar[None, :], gamma, beta, cm, F)
    tl.store(out_ptr + bh * F + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=cm[None, :])

    if t == K - 1:
        # W is read again here (from L2) rather than kept live in registers all kernel long
        W0 = tl.load(W_ptr + w_off, mask=w_mask, other=0.0).to(tl.float32)
        W_new = tl.dot(tl.trans(kr).to(DOT_DTYPE), (-eta * G).to(DOT_DTYPE), acc=W0, input_precision=DOT_PREC)
        tl.store(W_ptr + w_off, W_new.to(W_ptr.dtype.element_ty), mask=w_mask)
        tl.store(b_ptr + bh * F + cols, (b - eta * tl.sum(G, axis=0)).to(b_ptr.dtype.element_ty), mask=cm)
    else:
        store_cache_row(kc_ptr, vc_ptr, lrc_ptr, bh, t, k, v, lr, cols, cm, F, K)


def _launch_config(f: int, state_dtype: torch.dtype) -> dict:
    # 16-bit states: measured at B=512 on an H200 (benchmarks/results/dual_kernel_tuning.md, v6),
    # the fastest of 1/2/4/8 warps with and without a register cap. f=64: one warp per (sequence,
    # head), as in the CUDA kernel (94 us; 4 warps capped at 96 registers, the earlier choice, 105).
    # f=96 (a 128-wide block): 2 warps (127 us; 8 warps 149). f=128: 8 warps capped at 128 registers
    # (157 us; uncapped 222). An fp32 state's tiles take twice the registers: compiled for sm_90
    # (benchmarks/kernel_resources.py, Triton 3.6 and 3.9) f=64 on 1 warp spills ~1.1 KB per thread
    # and f=96 on 2 warps gets ptxas's give-up code (32 registers, 15 KB of stack); 4 warps at f=64
    # spill nothing, f=96 takes f=128's config (1.4 KB). On the H100 (B=512, fp16 activations) that
    # took f=64 from 460 to 244 us and f=96 (H=16) from 8211 to 1589 us.
    fp32 = state_dtype == torch.float32
    if f <= 64:
        return {"num_warps": 4 if fp32 else 1}
    if f <= 96 and not fp32:
        return {"num_warps": 2}
    return {"num_warps": 8, "maxnreg": 128}


def ttt_linear_decode_dual(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, state: TTTDualState,
                           *, out=None, check_positions=True) -> torch.Tensor:
    """One TTT-Linear decode step, fused; updates ``state`` in place and returns ``q + LN(z_bar)``.

    ``q, k, v [B, H, f]``, ``lr [B, H]``, ``pos [B]`` (absolute positions; not advanced
    here), ``ln_weight, ln_bias [H, f]``, ``token_idx_bias [K]``.
    """
    B, H, f, K, out = check_decode_args("mlp_1", TTTDualState, q, k, v, lr, pos, ln_weight, ln_bias,
                                        token_idx_bias, state, out, check_positions)
    return _launch(B, H, f, K, (q, k, v, lr), NO_PROJECTION, pos, ln_weight, ln_bias, token_idx_bias, state, out)


def ttt_linear_decode_dual_from_projection(inputs: TTTStepInputs, pos, ln_weight, ln_bias, token_idx_bias,
                                           state: TTTDualState, *, out=None, check_positions=True) -> torch.Tensor:
    """:func:`~ttt_kernels.ops.conv_rotary.ttt_step_inputs` and :func:`ttt_linear_decode_dual` in one
    launch: each program makes its head's ``q, k, v, lr`` from the projection (stepping the q/k conv
    state in place) and returns ``q + LN(z_bar)`` ``[B, H, f]`` in ``inputs.xqk``'s dtype."""
    B, H, f, K, out = check_decode_args_from_projection("mlp_1", TTTDualState, inputs, pos, ln_weight, ln_bias,
                                                        token_idx_bias, state, out, check_positions)
    return _launch(B, H, f, K, (None,) * 4, inputs.kernel_args(), pos, ln_weight, ln_bias, token_idx_bias, state, out)


@on_input_device  # the one place the kernel launches: the checks before it run on any current device
def _launch(B, H, f, K, qkv_lr, projection: dict, pos, ln_weight, ln_bias, token_idx_bias, state, out):
    check_kernel_sizes(K, f, dot=True)
    W, b = state.weights
    BF = triton.next_power_of_2(f)
    # fp32 state: exact fp32 products; tf32x3 measured 6% slower at f=64 (7% faster at f=96), H100, B=512
    dot_dtype, dot_prec = dot_config(W.dtype)
    ttt_linear_decode_dual_kernel[(B * H,)](
        *qkv_lr, pos, ln_weight, ln_bias, token_idx_bias, out,
        W, b, state.k_cache, state.v_cache, state.lr_cache, **projection,
        H=H, F=f, BF=BF, K=K, DOT_DTYPE=dot_dtype, DOT_PREC=dot_prec, **_launch_config(f, W.dtype),
        **pdl_options(out.device),
    )
    return out
