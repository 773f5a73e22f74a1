"""The TTT block's decode convs, one launch each.

``ttt_step_inputs``: the TTT op's inputs: the q and k causal convs of the shared ``xqk`` input
(one conv state: both read the same inputs) with the rotary (position modulo the mini-batch) of
their outputs, ``v`` split into contiguous heads, and the per-head learning rate
``lr_scale * sigmoid(lr_logit + lr_bias)``. Unfused that is two conv launches, about a dozen
elementwise kernels per rotation (casts, the table gathers, four products, the concatenation),
a copy of ``v`` out of the projection's rows and five kernels for the learning rate, each a few
µs on ``[B, D]`` rows. One program per (sequence, group of heads): rotary pairs channel ``i``
with ``i + f/2`` of the same head, so a program holds whole heads.

``TTTStepInputs`` bundles those arguments for ``ttt_linear_decode_dual_from_projection``, whose
programs (one per sequence and head) run the same computation for their head
(:func:`token_from_projection`) instead of loading the q, k, v and lr this launch wrote: one launch
a layer fewer (H100, ttt-1b at B=512: 1.8% off the TTT-Linear step). The TTT-MLP kernel measured
slower with it (its programs' prologue costs more than the launch; tuning log v15) and keeps two.

``pre_conv_step``: the block's first sub-block, add+RMSNorm -> causal conv -> add+RMSNorm.
Three launches unfused, each reading and writing the row again (the fp32 residual twice); one
program per sequence holds its whole row here.

Both keep their conv state as a ring ``[B, k, D]`` (position p's input in slot ``p mod k``): a
step reads the k - 1 older slots and writes one, where shifting a ``[B, D, k]`` state (mamba-ssm's
layout) reads and writes all k: at ttt-1b's sizes and B=512, 8 MB a conv and step instead of 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..triton_utils import (MAX_ROW_DIM, load_ln_params, load_qkv_lr, on_input_device, pdl_options, pos_mod, ring_tap,
                            rms_norm_row, row_warps, token_phase, wait_for_prior_kernel)
from ..ttt_state import ACT_DTYPES, _check_tensor


@triton.jit
def _rotated(a1, a2, c, s, dt: tl.constexpr):
    """The rotary of the pair halves ``a1, a2`` (fp32): ``(a1 c - a2 s, a2 c + a1 s)`` in ``dt``, each
    half rounded to ``dt`` before the rotation, as unfused."""
    a1 = a1.to(dt).to(tl.float32)
    a2 = a2.to(dt).to(tl.float32)
    return (a1 * c - a2 * s).to(dt), (a2 * c + a1 * s).to(dt)


@triton.jit
def _rotate_store(a1, a2, out_ptr, c, s, jm, HALF: tl.constexpr):
    """Rotates the pair halves ``a1, a2`` (fp32) and stores them at ``out_ptr`` and ``out_ptr + HALF``."""
    r1, r2 = _rotated(a1, a2, c, s, out_ptr.dtype.element_ty)
    tl.store(out_ptr, r1, mask=jm)
    tl.store(out_ptr + HALF, r2, mask=jm)


@triton.jit
def _qk_conv(x, cs_ptr, p, wq_ptr, bq_ptr, wk_ptr, bk_ptr, d, dm, dim, KC: tl.constexpr):
    """Both convs (fp32, + bias) at channels ``d`` of the window ending with ``x`` (the state's
    dtype) at position ``p``: each older tap is loaded once for the two."""
    accq = tl.load(bq_ptr + d, mask=dm, other=0.0).to(tl.float32)
    acck = tl.load(bk_ptr + d, mask=dm, other=0.0).to(tl.float32)
    for i in tl.static_range(KC):
        xi = x.to(tl.float32) if i == KC - 1 else ring_tap(cs_ptr, p, i, d, dm, dim, KC)
        accq += xi * tl.load(wq_ptr + d * KC + i, mask=dm, other=0.0).to(tl.float32)
        acck += xi * tl.load(wk_ptr + d * KC + i, mask=dm, other=0.0).to(tl.float32)
    return accq, acck


@triton.jit
def _ttt_step_inputs_kernel(x_ptr, stride_x, v_ptr, stride_v, logit_ptr, stride_logit, lr_bias_ptr, lr_scale,
                            cs_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, cos_ptr, sin_ptr, pos_ptr,
                            q_ptr, k_ptr, v_out_ptr, lr_ptr, H, dim,
                            F: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr, G: tl.constexpr,
                            KC: tl.constexpr, PERIOD: tl.constexpr, PDL: tl.constexpr):
    """Program (sequence, group of G heads). Element e: head ``G * group + e // BLOCK``, its pair
    channel ``e % BLOCK`` (BLOCK = HALF rounded up to a power of two)."""
    wait_for_prior_kernel(PDL)
    b = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, G * BLOCK)
    h = tl.program_id(1) * G + e // BLOCK
    j = e % BLOCK
    jm = (j < HALF) & (h < H)
    d1 = h * F + j
    d2 = d1 + HALF
    pos = tl.load(pos_ptr + b)
    p = pos_mod(pos, PERIOD)  # the rotary table's row (a negative position too)
    c = tl.load(cos_ptr + p * HALF + j, mask=jm, other=0.0)
    s = tl.load(sin_ptr + p * HALF + j, mask=jm, other=0.0)
    cs = cs_ptr + b * KC * dim
    x1 = tl.load(x_ptr + b * stride_x + d1, mask=jm, other=0.0).to(cs_ptr.dtype.element_ty)
    x2 = tl.load(x_ptr + b * stride_x + d2, mask=jm, other=0.0).to(cs_ptr.dtype.element_ty)
    q1, k1 = _qk_conv(x1, cs, pos, wq_ptr, bq_ptr, wk_ptr, bk_ptr, d1, jm, dim, KC)
    q2, k2 = _qk_conv(x2, cs, pos, wq_ptr, bq_ptr, wk_ptr, bk_ptr, d2, jm, dim, KC)
    slot = pos_mod(pos, KC)  # the new input's slot, which no older tap reads
    tl.store(cs + slot * dim + d1, x1, mask=jm)
    tl.store(cs + slot * dim + d2, x2, mask=jm)
    o = (b * H + h) * F + j
    _rotate_store(q1, q2, q_ptr + o, c, s, jm, HALF)
    _rotate_store(k1, k2, k_ptr + o, c, s, jm, HALF)
    tl.store(v_out_ptr + o, tl.load(v_ptr + b * stride_v + d1, mask=jm), mask=jm)
    tl.store(v_out_ptr + o + HALF, tl.load(v_ptr + b * stride_v + d2, mask=jm), mask=jm)
    lm = jm & (j == 0)  # one element per head
    logit = tl.load(logit_ptr + b * stride_logit + h, mask=lm, other=0.0).to(tl.float32) + \
        tl.load(lr_bias_ptr + h, mask=lm, other=0.0).to(tl.float32)
    tl.store(lr_ptr + b * H + h, lr_scale * tl.sigmoid(logit), mask=lm)


@triton.jit
def token_from_projection(x_ptr, stride_x, vp_ptr, stride_v, logit_ptr, stride_logit, lr_bias_ptr, lr_scale, cs_ptr,
                          wq_ptr, bq_ptr, wk_ptr, bk_ptr, cos_ptr, sin_ptr, pos, bh, cols, cm, H: tl.constexpr,
                          F: tl.constexpr, KC: tl.constexpr, PERIOD: tl.constexpr):
    """What :func:`ttt_step_inputs` computes for head ``bh`` (= sequence * H + head) of the token at
    ``pos``, in a TTT decode program's column layout (``cols [BF]``, mask ``cm``): ``q, k, v`` (fp32
    of the values that launch stores, same roundings) and ``lr``; steps the head's channels of the
    ring ``cs_ptr``. Column ``c`` of a rotary pair needs its partner's conv too: for a power-of-two
    ``F`` (the block is the head) the program's own values with their halves swapped; else each conv
    runs again at the partner columns (loads of the same lines, from L1). The swap keeps q and k in
    the layout the kernel's loads would have given them: computed from loads at the partner offsets
    instead, the TTT-MLP kernel (where it was tried) spilled 72 B a thread instead of 16, 24 with the
    swap (Triton 3.6, sm_90)."""
    b = bh // H
    h = bh % H
    HALF: tl.constexpr = F // 2
    dim = H * F
    lo = cols < HALF
    own = h * F + cols
    j = tl.where(lo, cols, cols - HALF)
    p = pos_mod(pos, PERIOD)
    c = tl.load(cos_ptr + p * HALF + j, mask=cm, other=0.0)
    s = tl.load(sin_ptr + p * HALF + j, mask=cm, other=0.0)
    cs = cs_ptr + b * KC * dim
    x_own = tl.load(x_ptr + b * stride_x + own, mask=cm, other=0.0).to(cs_ptr.dtype.element_ty)
    q_own, k_own = _qk_conv(x_own, cs, pos, wq_ptr, bq_ptr, wk_ptr, bk_ptr, own, cm, dim, KC)
    if (F & (F - 1)) == 0:
        q_partner = tl.flip(q_own.reshape(2, HALF), 0).reshape(F)
        k_partner = tl.flip(k_own.reshape(2, HALF), 0).reshape(F)
    else:
        partner = h * F + tl.where(lo, cols + HALF, cols - HALF)
        x_partner = tl.load(x_ptr + b * stride_x + partner, mask=cm, other=0.0).to(cs_ptr.dtype.element_ty)
        q_partner, k_partner = _qk_conv(x_partner, cs, pos, wq_ptr, bq_ptr, wk_ptr, bk_ptr, partner, cm, dim, KC)
    tl.store(cs + pos_mod(pos, KC) * dim + own, x_own, mask=cm)
    dt = x_ptr.dtype.element_ty
    # the first half is a pair's (a1 c - a2 s), the second its (a2 c + a1 s): each as _rotated forms it
    q_lo, _ = _rotated(q_own, q_partner, c, s, dt)
    _, q_hi = _rotated(q_partner, q_own, c, s, dt)
    k_lo, _ = _rotated(k_own, k_partner, c, s, dt)
    _, k_hi = _rotated(k_partner, k_own, c, s, dt)
    q = tl.where(lo, q_lo, q_hi).to(tl.float32)
    k = tl.where(lo, k_lo, k_hi).to(tl.float32)
    v = tl.load(vp_ptr + b * stride_v + own, mask=cm, other=0.0).to(tl.float32)
    logit = tl.load(logit_ptr + b * stride_logit + h).to(tl.float32) + tl.load(lr_bias_ptr + h).to(tl.float32)
    return q, k, v, lr_scale * tl.sigmoid(logit)


@triton.jit
def load_dual_token(q_ptr, k_ptr, v_ptr, lr_ptr, pos_ptr, ln_w_ptr, ln_b_ptr, tib_ptr, x_ptr, stride_x, vp_ptr,
                    stride_v, logit_ptr, stride_logit, lr_bias_ptr, lr_scale, cs_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr,
                    cos_ptr, sin_ptr, bh, cols, cm, H: tl.constexpr, F: tl.constexpr, K: tl.constexpr,
                    KC: tl.constexpr, PERIOD: tl.constexpr, FROM_PROJECTION: tl.constexpr):
    """:func:`~ttt_kernels.ops.triton_utils.load_token` for a dual-form TTT decode kernel that may
    take its token either way: ``q, k, v, lr`` loaded from their tensors, or with ``FROM_PROJECTION``
    made from the projection by :func:`token_from_projection` (the ``*_ptr`` of the other way are None)."""
    pos = tl.load(pos_ptr + bh // H)
    t, eta = token_phase(pos, tib_ptr, K)
    if FROM_PROJECTION:
        q, k, v, lr = token_from_projection(x_ptr, stride_x, vp_ptr, stride_v, logit_ptr, stride_logit, lr_bias_ptr,
                                            lr_scale, cs_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr, cos_ptr, sin_ptr, pos,
                                            bh, cols, cm, H, F, KC, PERIOD)
    else:
        q, k, v, lr = load_qkv_lr(q_ptr, k_ptr, v_ptr, lr_ptr, bh, cols, cm, F)
    gamma, beta = load_ln_params(ln_w_ptr, ln_b_ptr, bh % H, cols, cm, F)
    return t, eta, q, k, v, lr, gamma, beta


def ring_length(conv_state) -> int:
    """The taps k of a ring conv state ``[B, k, D]``; 0 for anything else, so that the shape check
    that follows names the argument."""
    return conv_state.shape[1] if isinstance(conv_state, torch.Tensor) and conv_state.dim() == 3 else 0


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


@dataclass(frozen=True)
class TTTStepInputs:
    """One decode token's TTT-op inputs as the block's projection gives them, before the q/k convs,
    the rotary and the learning rate's sigmoid: the arguments of :func:`ttt_step_inputs` but the
    positions (see there). ``ttt_linear_decode_dual_from_projection`` takes them and runs that step
    in its own programs."""
    xqk: torch.Tensor
    v: torch.Tensor
    lr_logit: torch.Tensor
    conv_state: torch.Tensor
    q_weight: torch.Tensor
    q_bias: torch.Tensor
    k_weight: torch.Tensor
    k_bias: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    lr_bias: torch.Tensor
    lr_scale: float
    num_heads: int

    def check(self, positions) -> tuple[int, int, int, int, int]:
        """Validates the fields against each other and ``positions`` -> ``(B, H, f, k, period)``: the
        batch, heads, head dim, conv taps and rotary period."""
        xqk, v, lr_logit = self.xqk, self.v, self.lr_logit
        if not isinstance(xqk, torch.Tensor) or xqk.dim() != 2 or xqk.stride(-1) != 1:
            raise ValueError(f"xqk must be a [B, D] tensor with unit column stride, got {getattr(xqk, 'shape', xqk)}")
        B, D = xqk.shape
        H = self.num_heads
        dev, KC = xqk.device, ring_length(self.conv_state)
        f, period = check_heads_and_rotary(D, H, self.cos, self.sin, dev)
        _check_tensor("xqk", xqk, (B, D), ACT_DTYPES, dev, contiguous=False)
        _check_tensor("v", v, (B, D), (xqk.dtype,), dev, contiguous=False)
        _check_tensor("lr_logit", lr_logit, (B, H), ACT_DTYPES, dev, contiguous=False)
        if v.stride(-1) != 1 or lr_logit.stride(-1) != 1:
            raise ValueError("v and lr_logit must have unit column stride")
        _check_tensor("conv_state", self.conv_state, (B, KC, D), (xqk.dtype,), dev)
        for name, w in (("q_weight", self.q_weight), ("k_weight", self.k_weight)):
            _check_tensor(name, w, (D, KC), ACT_DTYPES, dev)
        for name, b in (("q_bias", self.q_bias), ("k_bias", self.k_bias)):
            _check_tensor(name, b, (D,), ACT_DTYPES, dev)
        _check_tensor("positions", positions, (B,), (torch.int32, torch.int64), dev)
        _check_tensor("lr_bias", self.lr_bias, (H,), ACT_DTYPES, dev)
        return B, H, f, KC, period

    def apply(self, step_inputs, positions):
        """``step_inputs`` (:func:`ttt_step_inputs` or its reference) of these inputs at ``positions``."""
        return step_inputs(self.xqk, self.v, self.lr_logit, self.conv_state, self.q_weight, self.q_bias, self.k_weight,
                           self.k_bias, self.cos, self.sin, positions, self.lr_bias, self.lr_scale, self.num_heads)

    def kernel_args(self) -> dict:
        """The arguments of :func:`token_from_projection` by the names the TTT kernels take them
        under (checked fields)."""
        return dict(x_ptr=self.xqk, stride_x=self.xqk.stride(0), vp_ptr=self.v, stride_v=self.v.stride(0),
                    logit_ptr=self.lr_logit, stride_logit=self.lr_logit.stride(0), lr_bias_ptr=self.lr_bias,
                    lr_scale=float(self.lr_scale), cs_ptr=self.conv_state, wq_ptr=self.q_weight,
                    bq_ptr=self.q_bias, wk_ptr=self.k_weight, bk_ptr=self.k_bias, cos_ptr=self.cos,
                    sin_ptr=self.sin, KC=ring_length(self.conv_state), PERIOD=self.cos.shape[0],
                    FROM_PROJECTION=True)


# what a TTT kernel's projection arguments get when its q, k, v, lr come in as tensors
NO_PROJECTION = dict.fromkeys(("x_ptr", "stride_x", "vp_ptr", "stride_v", "logit_ptr", "stride_logit", "lr_bias_ptr",
                               "lr_scale", "cs_ptr", "wq_ptr", "bq_ptr", "wk_ptr", "bk_ptr", "cos_ptr", "sin_ptr",
                               "KC", "PERIOD")) | {"FROM_PROJECTION": False}


@on_input_device
def ttt_step_inputs(xqk, v, lr_logit, conv_state, q_weight, q_bias, k_weight, k_bias, cos, sin, positions,
                    lr_bias, lr_scale: float, num_heads: int):
    """One decode token's TTT-op inputs: ``xqk, v [B, D]`` and ``lr_logit [B, H]`` (row-strided
    views of one projection are fine) -> ``q, k, v [B, H, f]`` in ``xqk``'s dtype (contiguous)
    and ``lr [B, H]`` fp32.

    ``conv_state [B, k, D]`` (``xqk``'s dtype, the inputs of both convs, a ring: position p's input
    in slot ``p mod k``) steps in place; ``*_weight [D, k]``, ``*_bias [D]``; ``cos, sin
    [period, f/2]`` fp32; ``positions [B]`` int (the token's, not advanced); ``lr_bias [H]``.
    No host sync: graph-safe.
    """
    B, H, f, KC, period = TTTStepInputs(xqk, v, lr_logit, conv_state, q_weight, q_bias, k_weight, k_bias, cos, sin,
                                        lr_bias, lr_scale, num_heads).check(positions)
    D, dev = xqk.shape[1], xqk.device
    q = torch.empty(B, H, f, dtype=xqk.dtype, device=dev)
    k, v_heads = torch.empty_like(q), torch.empty_like(q)
    lr = torch.empty(B, H, dtype=torch.float32, device=dev)
    # four heads and two warps a program: one-warp programs (one head) stop at the SM's limit of
    # 32 resident programs, half its warps (H100, ttt-1b's sizes at B=512, the state not in L2:
    # 14.8 us with one head a program, 12.3 us with four)
    G = 4
    _ttt_step_inputs_kernel[(B, triton.cdiv(H, G))](
        xqk, xqk.stride(0), v, v.stride(0), lr_logit, lr_logit.stride(0), lr_bias, float(lr_scale),
        conv_state, q_weight, q_bias, k_weight, k_bias, cos, sin, positions, q, k, v_heads, lr, H, D,
        F=f, HALF=f // 2, BLOCK=triton.next_power_of_2(f // 2), G=G, KC=KC, PERIOD=period, num_warps=2,
        **pdl_options(dev))
    return q, k, v_heads, lr


@triton.jit
def _pre_conv_step_kernel(x_ptr, stride_x, res_ptr, stride_r, cs_ptr, pos_ptr, nw_ptr, cw_ptr, cb_ptr, ow_ptr, y_ptr,
                          res_out_ptr, dim, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr, KC: tl.constexpr,
                          PDL: tl.constexpr):
    wait_for_prior_kernel(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < dim
    dt = y_ptr.dtype.element_ty
    p = tl.load(pos_ptr + row)
    cs = cs_ptr + row * KC * dim
    # the older taps first: their loads need only the position, not the norm's reductions
    conv = tl.load(cb_ptr + cols, mask=m, other=0.0).to(tl.float32)
    for i in tl.static_range(KC - 1):
        conv += ring_tap(cs, p, i, cols, m, dim, KC) * tl.load(cw_ptr + cols * KC + i, mask=m, other=0.0).to(tl.float32)
    s = tl.load(x_ptr + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(res_ptr + row * stride_r + cols, mask=m, other=0.0).to(tl.float32)
    # each stage rounds its output to the activation dtype, as the unfused launches do
    a = rms_norm_row(s, nw_ptr, cols, m, dim, eps).to(dt).to(cs_ptr.dtype.element_ty)
    tl.store(cs + pos_mod(p, KC) * dim + cols, a, mask=m)
    conv += a.to(tl.float32) * tl.load(cw_ptr + cols * KC + KC - 1, mask=m, other=0.0).to(tl.float32)
    s += conv.to(dt).to(tl.float32)
    tl.store(res_out_ptr + row * dim + cols, s, mask=m)
    tl.store(y_ptr + row * dim + cols, rms_norm_row(s, ow_ptr, cols, m, dim, eps).to(dt), mask=m)


@on_input_device
def pre_conv_step(hidden, residual, conv_state, positions, norm_weight, conv_weight, conv_bias, out_norm_weight,
                  eps: float):
    """``residual += hidden; a = RMSNorm(residual); residual += conv(a); RMSNorm(residual)`` for one
    token: ``hidden [B, D]`` (unit column stride), ``residual [B, D]`` fp32 or None (the first
    block: the sum starts at ``hidden``) -> ``(normed [B, D] in hidden's dtype, residual [B, D] fp32)``,
    as :func:`~ttt_kernels.ops.conv_rotary.pre_conv_step_ref`. ``conv_state [B, k, D]``
    (``hidden``'s dtype, a ring: position p's input in slot ``p mod k``) steps in place at
    ``positions [B]`` int (the token's, not advanced); ``norm_weight``, ``out_norm_weight``,
    ``conv_bias [D]``, ``conv_weight [D, k]``; ``eps`` of both norms. No host sync: graph-safe."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2 or hidden.stride(-1) != 1:
        raise ValueError(f"hidden must be a [B, D] tensor with unit column stride, got "
                         f"{getattr(hidden, 'shape', hidden)}")
    B, D = hidden.shape
    if D > MAX_ROW_DIM:
        raise ValueError(f"hidden: D = {D} exceeds {MAX_ROW_DIM}")
    dev, KC = hidden.device, ring_length(conv_state)
    _check_tensor("hidden", hidden, (B, D), ACT_DTYPES, dev, contiguous=False)
    if residual is not None:
        _check_tensor("residual", residual, (B, D), (torch.float32,), dev, contiguous=False)
        if residual.stride(-1) != 1:
            raise ValueError("residual must have unit column stride")
    _check_tensor("conv_state", conv_state, (B, KC, D), (hidden.dtype,), dev)
    _check_tensor("positions", positions, (B,), (torch.int32, torch.int64), dev)
    for name, t, shape in (("norm_weight", norm_weight, (D,)), ("conv_weight", conv_weight, (D, KC)),
                           ("conv_bias", conv_bias, (D,)), ("out_norm_weight", out_norm_weight, (D,))):
        _check_tensor(name, t, shape, ACT_DTYPES, dev)
    y = torch.empty(B, D, dtype=hidden.dtype, device=dev)
    res = torch.empty(B, D, dtype=torch.float32, device=dev)
    if B:
        _pre_conv_step_kernel[(B,)](
            hidden, hidden.stride(0), hidden if residual is None else residual,
            0 if residual is None else residual.stride(0), conv_state, positions, norm_weight, conv_weight,
            conv_bias, out_norm_weight, y, res, D, eps, HAS_RES=residual is not None,
            BLOCK=triton.next_power_of_2(D), KC=KC,
            # twice a norm kernel's warps (H100, ttt-1b's sizes at B=512: 14.1 -> 11.0 us)
            num_warps=min(16, 2 * row_warps(D)), **pdl_options(dev))
    return y, res
