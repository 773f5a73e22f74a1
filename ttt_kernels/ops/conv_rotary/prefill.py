"""The TTT blocks' causal depthwise convs over whole prompts, one launch per conv: the block's
pre-conv, and each of the q/k convs of the shared ``xqk`` input (one conv state) with the rotary
of its output.

The reference (``naive.causal_conv1d_prefill_ref``) concatenates the state and the prompt in
fp32 channel-major, runs ``F.conv1d`` and transposes back: on the H100 at B=16, T=4096 that
was ~20 ms of a TTT-1B layer's 34 ms of prefill (concatenations, the fp32 depthwise conv, casts
and the rotary's elementwise kernels). Here a program reads its tile of ``x`` in place (any row
stride: ``xqk`` is a slice of the input projection), the taps before the prompt from the state,
and writes the result in ``x``'s dtype, token-major, as the TTT kernels read it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import FP_FUSION, on_input_device, pos_mod
from ..ttt_state import ACT_DTYPES, _check_tensor
from .decode import check_heads_and_rotary, ring_length


@triton.jit
def _conv_tile(x_ptr, stride_xb, stride_xt, cs_ptr, w_ptr, bias_ptr, b, p0, t, tm, d, dm, dim, KC: tl.constexpr):
    """``conv + bias`` (fp32) at tokens ``t`` and channels ``d`` of sequence ``b``, whose token 0 is
    at position ``p0``: taps before the prompt come from its ring state ``cs_ptr [KC, dim]``."""
    acc = tl.load(bias_ptr + d, mask=dm, other=0.0).to(tl.float32)[None, :]
    for i in tl.static_range(KC):
        tt = t[:, None] + (i - (KC - 1))  # the input this tap reads
        m = tm[:, None] & dm[None, :]
        xin = tl.load(x_ptr + b * stride_xb + tt * stride_xt + d[None, :], mask=m & (tt >= 0), other=0.0)
        old = tl.load(cs_ptr + pos_mod(p0 + tt, KC) * dim + d[None, :], mask=m & (tt < 0), other=0.0)
        w = tl.load(w_ptr + d * KC + i, mask=dm, other=0.0).to(tl.float32)
        acc += tl.where(tt >= 0, xin.to(tl.float32), old.to(tl.float32)) * w[None, :]
    return acc


@triton.jit
def _conv_prefill_kernel(x_ptr, stride_xb, stride_xt, cs_ptr, w_ptr, bias_ptr, len_ptr, out_ptr, T, dim,
                         cos_ptr, sin_ptr, pos_ptr,
                         HALF: tl.constexpr, BH: tl.constexpr, BT: tl.constexpr, KC: tl.constexpr,
                         KP: tl.constexpr, ROTARY: tl.constexpr, PERIOD: tl.constexpr, WRITE_STATE: tl.constexpr):
    """Program (b, token block, channel block of 2 HALF channels: with ROTARY one head, whose
    channel j pairs with j + HALF; BH = HALF rounded up to a power of two). WRITE_STATE: leave the
    new state (off for a conv whose state another conv of the same inputs advances after it)."""
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    tm = t < T
    j = tl.arange(0, BH)
    d1 = tl.program_id(2) * (2 * HALF) + j
    d2 = d1 + HALF
    dm1, dm2 = (j < HALF) & (d1 < dim), (j < HALF) & (d2 < dim)
    cs = cs_ptr + b * KC * dim
    p0 = tl.load(pos_ptr + b)
    y1 = _conv_tile(x_ptr, stride_xb, stride_xt, cs, w_ptr, bias_ptr, b, p0, t, tm, d1, dm1, dim, KC)
    y2 = _conv_tile(x_ptr, stride_xb, stride_xt, cs, w_ptr, bias_ptr, b, p0, t, tm, d2, dm2, dim, KC)
    # rounded to the activation dtype before the rotation, as the unfused layer does
    y1 = y1.to(out_ptr.dtype.element_ty).to(tl.float32)
    y2 = y2.to(out_ptr.dtype.element_ty).to(tl.float32)
    if ROTARY:
        p = pos_mod(p0 + t, PERIOD)  # as the decode kernel's
        cm = tm[:, None] & (j < HALF)[None, :]
        c = tl.load(cos_ptr + p[:, None] * HALF + j[None, :], mask=cm, other=0.0)
        s = tl.load(sin_ptr + p[:, None] * HALF + j[None, :], mask=cm, other=0.0)
        y1, y2 = y1 * c - y2 * s, y2 * c + y1 * s
    out = out_ptr + (b * T + t[:, None]) * dim
    tl.store(out + d1[None, :], y1.to(out_ptr.dtype.element_ty), mask=tm[:, None] & dm1[None, :])
    tl.store(out + d2[None, :], y2.to(out_ptr.dtype.element_ty), mask=tm[:, None] & dm2[None, :])

    if WRITE_STATE and tl.program_id(1) == 0:
        # the prompt's last KC inputs into their slots (fewer for a shorter prompt: the older
        # inputs' slots keep them), once every thread of the program has read the old state (its
        # first tokens' taps above); token blocks past the first never read the state
        n = tl.load(len_ptr + b).to(tl.int32)
        tt = n - KC + tl.arange(0, KP)  # [KP]
        tw = (tt >= 0) & (tt < n)
        slot = pos_mod(p0 + tt, KC)
        tl.debug_barrier()
        for half in tl.static_range(2):
            d = d1 if half == 0 else d2
            m = (dm1 if half == 0 else dm2)[:, None] & tw[None, :]
            xin = tl.load(x_ptr + b * stride_xb + tt[None, :] * stride_xt + d[:, None], mask=m, other=0.0)
            tl.store(cs + slot[None, :] * dim + d[:, None], xin.to(cs_ptr.dtype.element_ty), mask=m)


@on_input_device
def _launch(x, state, weight, bias, positions, lengths, out, rotary=None, num_heads=1, write_state=True):
    B, T, D = x.shape
    KC = state.shape[1]
    if rotary is None:  # channel blocks of 64; the rotary's tables are not read
        half, period, (cos, sin) = 32, 1, (x, x)
    else:
        (cos, sin), half = rotary, D // num_heads // 2
        period = cos.shape[0]
    grid = (B, triton.cdiv(T, 64), triton.cdiv(D, 2 * half))
    _conv_prefill_kernel[grid](x, x.stride(0), x.stride(1), state, weight, bias, lengths, out, T, D, cos, sin,
                               positions, HALF=half, BH=triton.next_power_of_2(half), BT=64, KC=KC,
                               KP=triton.next_power_of_2(KC), ROTARY=rotary is not None, PERIOD=period,
                               WRITE_STATE=write_state, num_warps=4, **FP_FUSION)
    return out


def _check(x, positions, lengths, state, convs, x_name="x", state_name="state"):
    """``x``, ``positions``, ``lengths`` and the conv ``state``, then each conv's ``(weight, bias,
    prefix)`` (names ``<prefix>weight``, ``<prefix>bias``)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.stride(-1) != 1:
        raise ValueError(f"{x_name} must be a [B, T, D] tensor with unit channel stride, "
                         f"got {getattr(x, 'shape', x)}")
    B, T, D = x.shape
    _check_tensor(x_name, x, (B, T, D), ACT_DTYPES, x.device, contiguous=False)
    KC = ring_length(state)
    _check_tensor(state_name, state, (B, KC, D), (x.dtype,), x.device)
    for weight, bias, prefix in convs:
        _check_tensor(prefix + "weight", weight, (D, KC), ACT_DTYPES, x.device)
        _check_tensor(prefix + "bias", bias, (D,), ACT_DTYPES, x.device)
    _check_tensor("positions", positions, (B,), (torch.int32, torch.int64), x.device)
    _check_tensor("lengths", lengths, (B,), (torch.int32, torch.int64), x.device)
    if T * max(x.stride(1), D) >= 2**31:
        raise ValueError("one sequence of x spans 2**31 elements or more (the kernel's offsets)")


def causal_conv1d_prefill(x, state, weight, bias, positions, lengths) -> torch.Tensor:
    """``x [B, T, D]`` (any row stride; token t at position ``positions[b] + t``) -> ``conv + bias``
    ``[B, T, D]`` in ``x``'s dtype, as :func:`~ttt_kernels.ops.conv_rotary.causal_conv1d_prefill_ref`:
    continues from the ring ``state [B, k, D]`` (``x``'s dtype; position p's input in slot
    ``p mod k``) and leaves in it each sequence's last k inputs up to token ``lengths[b] - 1``
    (each in 1..T, not checked here: a host sync); ``weight [D, k]``, ``bias [D]``."""
    _check(x, positions, lengths, state, [(weight, bias, "")])
    return _launch(x, state, weight, bias, positions, lengths, torch.empty(x.shape, dtype=x.dtype, device=x.device))


def qk_conv_rotary_prefill(xqk, conv_state, q_weight, q_bias, k_weight, k_bias, cos, sin, positions, lengths,
                           num_heads: int):
    """``xqk [B, T, D]`` -> ``q, k [B, T, H, f]`` in ``xqk``'s dtype: the q and k convs over the
    prompts from the ring ``conv_state`` (their shared inputs; the k conv's launch, the second,
    leaves the new state), then the rotary at positions ``positions[b] + t`` modulo the table's
    length (``cos, sin [period, f/2]`` fp32), as
    :func:`~ttt_kernels.ops.conv_rotary.qk_conv_rotary_prefill_ref`. Two launches."""
    _check(xqk, positions, lengths, conv_state, [(q_weight, q_bias, "q_"), (k_weight, k_bias, "k_")], "xqk",
           "conv_state")
    B, T, D = xqk.shape
    H = num_heads
    f, _ = check_heads_and_rotary(D, H, cos, sin, xqk.device)
    out = []
    for w, b, write_state in ((q_weight, q_bias, False), (k_weight, k_bias, True)):
        y = torch.empty(B, T, H, f, dtype=xqk.dtype, device=xqk.device)
        out.append(_launch(xqk, conv_state, w, b, positions, lengths, y, (cos, sin), H, write_state))
    return out[0], out[1]
