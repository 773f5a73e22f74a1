"""The TTT block's decode convs, one launch each.

``ttt_step_inputs``: the TTT op's inputs: the q and k causal convs of the shared ``xqk`` input
(one conv state: both read the same inputs) with the rotary (position modulo the mini-batch) of
their outputs, ``v`` split into contiguous heads, and the per-head learning rate
``lr_scale * sigmoid(lr_logit + lr_bias)``. Unfused that is two conv launches, about a dozen
elementwise kernels per rotation (casts, the table gathers, four products, the concatenation),
a copy of ``v`` out of the projection's rows and five kernels for the learning rate, each a few
µs on ``[B, D]`` rows. One program per (sequence, head): rotary pairs channel ``i`` with
``i + f/2`` of the same head, so a program holds both halves of its head.

``pre_conv_step``: the block's first sub-block, add+RMSNorm -> causal conv -> add+RMSNorm.
Three launches unfused, each reading and writing the row again (the fp32 residual twice); one
program per sequence holds its whole row here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import (FP_FUSION, MAX_ROW_DIM, conv_state_shift, conv_window, on_input_device, rms_norm_row,
                            row_warps)
from ..ttt_state import ACT_DTYPES, _check_tensor


@triton.jit
def _conv_rotate_store(win1, win2, w_ptr, bias_ptr, out_ptr, d1, d2, j, jm, c, s,
                       HALF: tl.constexpr, KC: tl.constexpr, KP: tl.constexpr):
    # the conv output is rounded to the activation dtype before the rotation, as unfused
    a1 = conv_window(win1, w_ptr, bias_ptr, d1, jm, KC, KP, True)
    a2 = conv_window(win2, w_ptr, bias_ptr, d2, jm, KC, KP, True)
    a1 = a1.to(out_ptr.dtype.element_ty).to(tl.float32)
    a2 = a2.to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + j, (a1 * c - a2 * s).to(out_ptr.dtype.element_ty), mask=jm)
    tl.store(out_ptr + HALF + j, (a2 * c + a1 * s).to(out_ptr.dtype.element_ty), mask=jm)


@triton.jit
def _ttt_step_inputs_kernel(x_ptr, stride_x, v_ptr, stride_v, logit_ptr, stride_logit, lr_bias_ptr, lr_scale,
                            cs_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, cos_ptr, sin_ptr, pos_ptr,
                            q_ptr, k_ptr, v_out_ptr, lr_ptr, H, dim,
                            F: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr, KC: tl.constexpr,
                            KP: tl.constexpr, PERIOD: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    j = tl.arange(0, BLOCK)
    jm = j < HALF
    d1 = h * F + j
    d2 = d1 + HALF
    x1 = tl.load(x_ptr + b * stride_x + d1, mask=jm, other=0.0)
    x2 = tl.load(x_ptr + b * stride_x + d2, mask=jm, other=0.0)
    p = tl.load(pos_ptr + b) % PERIOD
    p = tl.where(p < 0, p + PERIOD, p)  # the table's row for a negative position too (% keeps the sign)
    c = tl.load(cos_ptr + p * HALF + j, mask=jm, other=0.0)
    s = tl.load(sin_ptr + p * HALF + j, mask=jm, other=0.0)
    win1 = conv_state_shift(x1, cs_ptr + b * dim * KC, d1, jm, KC, KP)
    win2 = conv_state_shift(x2, cs_ptr + b * dim * KC, d2, jm, KC, KP)
    _conv_rotate_store(win1, win2, wq_ptr, bq_ptr, q_ptr + bh * F, d1, d2, j, jm, c, s, HALF, KC, KP)
    _conv_rotate_store(win1, win2, wk_ptr, bk_ptr, k_ptr + bh * F, d1, d2, j, jm, c, s, HALF, KC, KP)
    tl.store(v_out_ptr + bh * F + j, tl.load(v_ptr + b * stride_v + d1, mask=jm), mask=jm)
    tl.store(v_out_ptr + bh * F + HALF + j, tl.load(v_ptr + b * stride_v + d2, mask=jm), mask=jm)
    logit = tl.load(logit_ptr + b * stride_logit + h).to(tl.float32) + tl.load(lr_bias_ptr + h).to(tl.float32)
    tl.store(lr_ptr + bh, lr_scale * tl.sigmoid(logit))


def check_heads_and_rotary(D: int, num_heads: int, cos, sin, device) -> tuple[int, int]:
    """``D`` channels as ``num_heads`` heads of an even dim ``f`` and the rotary tables ``cos, sin
    [period, f/2]`` fp32 (``period >= 1``: positions are taken modulo it) -> ``(f, period)``."""
    H = num_heads
    if not isinstance(H, int) or H < 1 or D % H or (D // H) % 2:
        raise ValueError(f"num_heads: D={D} must split into {H} heads of an even head dim")
    f = D // H
    period = cos.shape[0] if isinstance(cos, torch.Tensor) and cos.dim() == 2 else 0
    if period < 1:
        raise ValueError(f"cos must be a [period >= 1, {f // 2}] table, got {getattr(cos, 'shape', cos)}")
    _check_tensor("cos", cos, (period, f // 2), (torch.float32,), device)
    _check_tensor("sin", sin, (period, f // 2), (torch.float32,), device)
    return f, period


@on_input_device
def ttt_step_inputs(xqk, v, lr_logit, conv_state, q_weight, q_bias, k_weight, k_bias, cos, sin, positions,
                    lr_bias, lr_scale: float, num_heads: int):
    """One decode token's TTT-op inputs: ``xqk, v [B, D]`` and ``lr_logit [B, H]`` (row-strided
    views of one projection are fine) -> ``q, k, v [B, H, f]`` in ``xqk``'s dtype (contiguous)
    and ``lr [B, H]`` fp32.

    ``conv_state [B, D, k]`` (``xqk``'s dtype, the inputs of both convs) steps in place; ``*_weight [D, k]``,
    ``*_bias [D]``; ``cos, sin [period, f/2]`` fp32; ``positions [B]`` int (not advanced);
    ``lr_bias [H]``. No host sync: graph-safe.
    """
    if not isinstance(xqk, torch.Tensor) or xqk.dim() != 2 or xqk.stride(-1) != 1:
        raise ValueError(f"xqk must be a [B, D] tensor with unit column stride, got {getattr(xqk, 'shape', xqk)}")
    B, D = xqk.shape
    H = num_heads
    dev, KC = xqk.device, conv_state.shape[-1] if isinstance(conv_state, torch.Tensor) else 0
    f, period = check_heads_and_rotary(D, H, cos, sin, dev)
    _check_tensor("xqk", xqk, (B, D), ACT_DTYPES, dev, contiguous=False)
    _check_tensor("v", v, (B, D), (xqk.dtype,), dev, contiguous=False)
    _check_tensor("lr_logit", lr_logit, (B, H), ACT_DTYPES, dev, contiguous=False)
    if v.stride(-1) != 1 or lr_logit.stride(-1) != 1:
        raise ValueError("v and lr_logit must have unit column stride")
    _check_tensor("conv_state", conv_state, (B, D, KC), (xqk.dtype,), dev)
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        _check_tensor(name, w, (D, KC), ACT_DTYPES, dev)
    for name, b in (("q_bias", q_bias), ("k_bias", k_bias)):
        _check_tensor(name, b, (D,), ACT_DTYPES, dev)
    _check_tensor("positions", positions, (B,), (torch.int32, torch.int64), dev)
    _check_tensor("lr_bias", lr_bias, (H,), ACT_DTYPES, dev)
    q = torch.empty(B, H, f, dtype=xqk.dtype, device=dev)
    k, v_heads = torch.empty_like(q), torch.empty_like(q)
    lr = torch.empty(B, H, dtype=torch.float32, device=dev)
    _ttt_step_inputs_kernel[(B * H,)](
        xqk, xqk.stride(0), v, v.stride(0), lr_logit, lr_logit.stride(0), lr_bias, float(lr_scale),
        conv_state, q_weight, q_bias, k_weight, k_bias, cos, sin, positions, q, k, v_heads, lr, H, D,
        F=f, HALF=f // 2, BLOCK=triton.next_power_of_2(f // 2), KC=KC, KP=triton.next_power_of_2(KC),
        PERIOD=period, num_warps=1, **FP_FUSION)
    return q, k, v_heads, lr


@triton.jit
def _pre_conv_step_kernel(x_ptr, stride_x, res_ptr, stride_r, cs_ptr, nw_ptr, cw_ptr, cb_ptr, ow_ptr, y_ptr,
                          res_out_ptr, dim, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr, KC: tl.constexpr,
                          KP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < dim
    dt = y_ptr.dtype.element_ty
    s = tl.load(x_ptr + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(res_ptr + row * stride_r + cols, mask=m, other=0.0).to(tl.float32)
    # each stage rounds its output to the activation dtype, as the unfused launches do
    a = rms_norm_row(s, nw_ptr, cols, m, dim, eps).to(dt)
    win = conv_state_shift(a, cs_ptr + row * dim * KC, cols, m, KC, KP)
    s += conv_window(win, cw_ptr, cb_ptr, cols, m, KC, KP, True).to(dt).to(tl.float32)
    tl.store(res_out_ptr + row * dim + cols, s, mask=m)
    tl.store(y_ptr + row * dim + cols, rms_norm_row(s, ow_ptr, cols, m, dim, eps).to(dt), mask=m)


@on_input_device
def pre_conv_step(hidden, residual, conv_state, norm_weight, conv_weight, conv_bias, out_norm_weight, eps: float):
    """``residual += hidden; a = RMSNorm(residual); residual += conv(a); RMSNorm(residual)`` for one
    token: ``hidden [B, D]`` (unit column stride), ``residual [B, D]`` fp32 or None (the first
    block: the sum starts at ``hidden``) -> ``(normed [B, D] in hidden's dtype, residual [B, D] fp32)``,
    as :func:`~ttt_kernels.ops.conv_rotary.pre_conv_step_ref`. ``conv_state [B, D, k]``
    (``hidden``'s dtype) steps in place; ``norm_weight``, ``out_norm_weight``, ``conv_bias [D]``,
    ``conv_weight [D, k]``; ``eps`` of both norms. No host sync: graph-safe."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2 or hidden.stride(-1) != 1:
        raise ValueError(f"hidden must be a [B, D] tensor with unit column stride, got "
                         f"{getattr(hidden, 'shape', hidden)}")
    B, D = hidden.shape
    if D > MAX_ROW_DIM:
        raise ValueError(f"hidden: D = {D} exceeds {MAX_ROW_DIM}")
    dev, KC = hidden.device, conv_state.shape[-1] if isinstance(conv_state, torch.Tensor) else 0
    _check_tensor("hidden", hidden, (B, D), ACT_DTYPES, dev, contiguous=False)
    if residual is not None:
        _check_tensor("residual", residual, (B, D), (torch.float32,), dev, contiguous=False)
        if residual.stride(-1) != 1:
            raise ValueError("residual must have unit column stride")
    _check_tensor("conv_state", conv_state, (B, D, KC), (hidden.dtype,), dev)
    for name, t, shape in (("norm_weight", norm_weight, (D,)), ("conv_weight", conv_weight, (D, KC)),
                           ("conv_bias", conv_bias, (D,)), ("out_norm_weight", out_norm_weight, (D,))):
        _check_tensor(name, t, shape, ACT_DTYPES, dev)
    y = torch.empty(B, D, dtype=hidden.dtype, device=dev)
    res = torch.empty(B, D, dtype=torch.float32, device=dev)
    if B:
        _pre_conv_step_kernel[(B,)](
            hidden, hidden.stride(0), hidden if residual is None else residual,
            0 if residual is None else residual.stride(0), conv_state, norm_weight, conv_weight, conv_bias,
            out_norm_weight, y, res, D, eps, HAS_RES=residual is not None, BLOCK=triton.next_power_of_2(D),
            KC=KC, KP=triton.next_power_of_2(KC), num_warps=row_warps(D), **FP_FUSION)
    return y, res
