"""Fused Triton kernels for the Mamba (v1) decode step.

What is fused, and why not into one kernel
------------------------------------------
Mamba v1's step between in_proj and out_proj is

    xc = silu(conv(conv_state, x))                          # per channel
    dt_low, B, C = x_proj(xc)                               # reduces over ALL channels of xc
    dt = softplus(dt_proj(dt_low) + dt_bias)                # per channel again
    h = h * exp(dt A) + dt x B;  y = (C.h + D xc) * silu(z)  # per (channel, state)

B, C and dt_low depend on the whole ``d_inner`` row of the conv output, so a
grid-wide dependency sits between the conv and the state update. One kernel
would need a grid-wide barrier (deadlock-prone and not CUDA-graph friendly
without cooperative launch) or every channel block recomputing the whole row's
x_proj (``d_inner / BLOCK_D`` = 128x redundant reads of x_proj's weight). So the
step is three launches, each doing all the work its data allows:

1. ``_conv_step_kernel``: depthwise conv + bias + SiLU over the ring ``conv_state``
   (``x`` into slot ``position mod d_conv``); writes ``xc`` (activation dtype) for
   launches 2 and 3.
2. x_proj as a cuBLAS GEMM (``[B, d_inner] x [d_inner, dt_rank + 2 d_state]``).
3. ``_ssm_step_kernel``: dt_proj on the tensor cores (``tl.dot`` of a 16-row
   tile of ``dt_low`` with a ``dt_rank x BLOCK_D`` slice of its weight), bias,
   softplus, ``exp(dt A)`` with ``A = -exp(A_log)``, the state update in
   registers, ``C.h``, the D skip and the SiLU(z) gate. Fusing dt_proj saves
   mamba-ssm's separate dt GEMM and the ``[B, d_inner]`` dt round trip.

Bytes per layer-step at d_inner 4096, d_state 16, fp32 state, fp16 activations,
B = 512 (dt_rank 128): ssm state 134.2 MB read + 134.2 MB written; conv state
12.6 MB read (three earlier inputs) + 4.2 MB written (one slot); x, z, xc (written,
then read by the GEMM and kernel 3) and y 4.2 MB each; dt_low/B/C and the weights
~2.5 MB. About 310 MB, of which 298 MB must move in any design (states, x, z, y):
~99 us at the 3.0 TB/s an H100 copy reaches. The split costs the xc round trip
(~12.6 MB). The conv state is a ring ``[B, d_conv, d_inner]`` indexed by position, as the
TTT block's convs keep theirs, instead of mamba-ssm's ``[B, d_inner, d_conv]`` shift
layout, which reads and rewrites all ``d_conv`` inputs (33.6 MB): on the H100 at B=512 the
conv kernel went from 20.2 to 14.6 us, the step (micro_benchmark, CUDA graph) from 124.1
to 118.4 us and a mamba-1.4b decode step from 8.20 to 7.96 ms. ``ring_window`` turns the
ring into mamba-ssm's window.
Everything here is shape-static and free of host syncs, so the step can be
captured in a CUDA graph. Both kernels launch with programmatic dependent launch
(``pdl_options``: scheduled while the GEMM before them drains, waiting for its writes
before their first load): on the H100 the step at B=512 went from 2522 to 2560 GB/s and a
mamba-1.4b decode step from 8.20 to 8.18 ms. Loading the SSM state tile before dt_proj's
operands (so that it is in flight while dt is computed) was slower: 2491 GB/s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..triton_utils import on_input_device, pdl_options, pos_mod, ring_tap, wait_for_prior_kernel
from ..ttt_state import ACT_DTYPES, STATE_DTYPES, _check_tensor, check_out
from .naive import split_x_db

# (rows, channels, warps, register cap) of a state tile: 16 rows is the least tl.dot takes; 16
# channels on 2 warps (a 16 KB fp32 tile, 64 values per thread in 16-byte loads) measured 107.3 us at
# B=512 on the H100 (142 registers, 7 programs per SM) and 105.2 us capped at 128 registers (8 per
# SM, no spills), against 106.2 for 32 x 16 on 4 warps and 94.3 for a copy of the state alone
# (CUDA-graph replays; .cs / evict_first cache hints on the state cost 3-5 us). A register cap of 0
# leaves the compiler's choice. mamba_step_benchmark.py --sweep re-tunes it.
SSM_CONFIG = (16, 16, 2, 128)
# (rows, channels, warps) of a conv program: 8 rows share the weights' loads; at B=512 on the H100
# 14.6 us against 16.5 for one row (mamba_step_benchmark.py --sweep re-tunes it)
CONV_CONFIG = (8, 512, 4)


@triton.jit
def _conv_step_kernel(x_ptr, stride_x, cs_ptr, pos_ptr, w_ptr, bias_ptr, out_ptr, stride_o, batch, dim,
                      K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                      SILU: tl.constexpr, PDL: tl.constexpr):
    wait_for_prior_kernel(PDL)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    bm, dm = rb < batch, d < dim
    m2 = bm[:, None] & dm[None, :]
    rb = rb.to(tl.int64)
    p = tl.load(pos_ptr + rb, mask=bm, other=0)[:, None]
    cs = cs_ptr + rb[:, None] * K * dim
    # the input as the state stores it (the conv reads it so, as prefill will)
    x = tl.load(x_ptr + rb[:, None] * stride_x + d[None, :], mask=m2, other=0.0).to(cs_ptr.dtype.element_ty)
    acc = tl.load(w_ptr + d * K + (K - 1), mask=dm, other=0.0).to(tl.float32)[None, :] * x.to(tl.float32)
    for i in tl.static_range(K - 1):
        w = tl.load(w_ptr + d * K + i, mask=dm, other=0.0).to(tl.float32)
        acc += w[None, :] * ring_tap(cs, p, i, d[None, :], m2, dim, K)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=dm, other=0.0).to(tl.float32)[None, :]
    tl.store(cs + pos_mod(p, K) * dim + d[None, :], x, mask=m2)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(out_ptr + rb[:, None] * stride_o + d[None, :], acc.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _softplus(v):
    # log1p(exp(v)) with log1p(u) = log(1+u) * u / ((1+u) - 1): plain log(1+u) would lose up to
    # 1e-4 relative at the dt biases Mamba starts from (u ~ 1e-3); above 20 softplus(v) = v in fp32
    u = tl.exp(tl.minimum(v, 20.0))
    w = 1.0 + u
    log1p = tl.where(w == 1.0, u, tl.log(w) * u / (w - 1.0))
    return tl.where(v > 20.0, v, log1p)


@triton.jit
def _ssm_step_kernel(
    s_ptr, x_ptr, stride_x, dt_ptr, stride_dt, dtw_ptr, dtb_ptr, A_ptr, B_ptr, stride_B, C_ptr, stride_C,
    D_ptr, z_ptr, stride_z, out_ptr, stride_o, batch, dim,
    N: tl.constexpr, R: tl.constexpr, RP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
    DT_PROJ: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, A_IS_LOG: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, DOT_PREC: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_prior_kernel(PDL)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    rd = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, N)
    bm = rb < batch
    dm = rd < dim
    m2 = bm[:, None] & dm[None, :]
    rb = rb.to(tl.int64)  # B * d_inner * N overflows int32 past ~32k sequences

    # the per-channel parameters first, so their loads overlap those of dt_proj's operands
    # (107.3 against 110.8 us at B=512 with the dt bias, A and D loaded where they are used)
    A = tl.load(A_ptr + rd[:, None] * N + n[None, :], mask=dm[:, None], other=0.0).to(tl.float32)
    if A_IS_LOG:
        A = -tl.exp(A)
    if HAS_D:
        Dv = tl.load(D_ptr + rd, mask=dm, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt_bias = tl.load(dtb_ptr + rd, mask=dm, other=0.0).to(tl.float32)

    if DT_PROJ:  # dt = dt_low @ dt_proj_weight^T for this tile, on the tensor cores
        r = tl.arange(0, RP)
        lo = tl.load(dt_ptr + rb[:, None] * stride_dt + r[None, :], mask=bm[:, None] & (r[None, :] < R), other=0.0)
        wt = tl.load(dtw_ptr + rd[None, :] * R + r[:, None], mask=(r[:, None] < R) & dm[None, :], other=0.0)
        # fp16/bf16 values are exact in tf32, so the fp32 cast costs no precision (and sidesteps the
        # interpreter's bf16 dot); fp32 operands get exact ieee products
        dt = tl.dot(lo.to(tl.float32), wt.to(tl.float32), input_precision=DOT_PREC)
    else:
        dt = tl.load(dt_ptr + rb[:, None] * stride_dt + rd[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += dt_bias[None, :]
    if DT_SOFTPLUS:
        dt = _softplus(dt)

    # the state tile [rows, channels, N] is contiguous along N and channels: 16-byte loads
    s_off = rb[:, None, None] * dim * N + rd[None, :, None] * N + n[None, None, :]
    m3 = m2[:, :, None]
    h = tl.load(s_ptr + s_off, mask=m3, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + rb[:, None] * stride_x + rd[None, :], mask=m2, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + rb[:, None] * stride_B + n[None, :], mask=bm[:, None], other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + rb[:, None] * stride_C + n[None, :], mask=bm[:, None], other=0.0).to(tl.float32)
    h = h * tl.exp(dt[:, :, None] * A[None, :, :]) + (dt * x)[:, :, None] * Bv[:, None, :]
    tl.store(s_ptr + s_off, h.to(s_ptr.dtype.element_ty), mask=m3)

    y = tl.sum(h * Cv[:, None, :], axis=2)  # from the unrounded state, as mamba-ssm does
    if HAS_D:
        y += Dv[None, :] * x
    if HAS_Z:
        z = tl.load(z_ptr + rb[:, None] * stride_z + rd[None, :], mask=m2, other=0.0).to(tl.float32)
        y *= z * tl.sigmoid(z)
    tl.store(out_ptr + rb[:, None] * stride_o + rd[None, :], y.to(out_ptr.dtype.element_ty), mask=m2)


# ---------------------------------------------------------------------------------------------
# argument checks: all of them run before anything is written


def _check_rows(name, t, shape, dtypes, device) -> None:
    """A [rows, cols] operand whose rows may be strided (a column slice of a wider GEMM output,
    like in_proj's x and z halves) but whose columns are contiguous."""
    _check_tensor(name, t, shape, dtypes, device, contiguous=False)
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must have unit stride in its last dim, got strides {tuple(t.stride())}")


def _check_x(x) -> tuple[int, int]:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a [batch, d_inner] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    _check_rows("x", x, x.shape, ACT_DTYPES, x.device)
    return x.shape


def _check_conv(x, conv_state, positions, conv_weight, conv_bias) -> int:
    Bsz, d = x.shape
    if not isinstance(conv_state, torch.Tensor) or conv_state.dim() != 3:
        raise ValueError("conv_state must be a [batch, d_conv, d_inner] ring, "
                         f"got {getattr(conv_state, 'shape', type(conv_state).__name__)}")
    K = conv_state.shape[1]
    if not 2 <= K <= 8:
        raise ValueError(f"conv_state: d_conv must be in 2..8, got {K}")
    _check_tensor("conv_state", conv_state, (Bsz, K, d), ACT_DTYPES, x.device)
    _check_tensor("positions", positions, (Bsz,), (torch.int32, torch.int64), x.device)
    _check_tensor("conv_weight", conv_weight, (d, K), ACT_DTYPES, x.device)
    if conv_bias is not None:
        _check_tensor("conv_bias", conv_bias, (d,), ACT_DTYPES, x.device)
    return K


def _check_ssm_state(ssm_state, Bsz, d, dev) -> int:
    if not isinstance(ssm_state, torch.Tensor) or ssm_state.dim() != 3:
        raise ValueError("ssm_state must be a [batch, d_inner, d_state] tensor, "
                         f"got {getattr(ssm_state, 'shape', type(ssm_state).__name__)}")
    N = ssm_state.shape[2]
    if N < 1 or N & (N - 1) or N > 256:
        raise ValueError(f"ssm_state: d_state must be a power of two <= 256, got {N}")
    _check_tensor("ssm_state", ssm_state, (Bsz, d, N), STATE_DTYPES, dev)
    return N


def _check_config(config, dt_proj: bool) -> tuple[int, int, int, int]:
    config = SSM_CONFIG if config is None else config
    if not isinstance(config, tuple) or len(config) != 4:
        raise ValueError(f"ssm_config must be a (rows, channels, warps, register cap) tuple, got {config!r}")
    BB, BD, warps, maxnreg = config
    for v, what in ((BB, "rows"), (BD, "channels"), (warps, "warps")):
        if not isinstance(v, int) or v < 1 or v & (v - 1):
            raise ValueError(f"ssm_config: {what} must be a power of two, got {v!r}")
    if not isinstance(maxnreg, int) or not (maxnreg == 0 or 24 <= maxnreg <= 255):
        raise ValueError(f"ssm_config: the register cap must be 0 (none) or in 24..255, got {maxnreg!r}")
    if dt_proj and (BB < 16 or BD < 16):
        raise ValueError(f"ssm_config: the fused dt_proj (tl.dot) needs >= 16 rows and channels, got {BB}x{BD}")
    return BB, BD, warps, maxnreg


# ---------------------------------------------------------------------------------------------
# launches (arguments already checked)


@on_input_device
def _launch_conv(x, conv_state, positions, conv_weight, conv_bias, out, silu: bool) -> None:
    Bsz, d = x.shape
    BB, BD, warps = CONV_CONFIG
    BD = min(BD, triton.next_power_of_2(d))
    _conv_step_kernel[(triton.cdiv(d, BD), triton.cdiv(Bsz, BB))](
        x, x.stride(0), conv_state, positions, conv_weight, conv_weight if conv_bias is None else conv_bias,
        out, out.stride(0), Bsz, d,
        K=conv_state.shape[1], BLOCK_B=BB, BLOCK_D=BD, HAS_BIAS=conv_bias is not None, SILU=silu, num_warps=warps,
        **pdl_options(x.device),
    )


@on_input_device
def _launch_ssm(ssm_state, x, dt, A, B, C, D, z, dt_bias, dt_proj_weight, out, dt_softplus: bool,
                a_is_log: bool, config) -> None:
    Bsz, d = x.shape
    N = ssm_state.shape[2]
    BB, BD, warps, maxnreg = config
    R = 1 if dt_proj_weight is None else dt_proj_weight.shape[1]
    # fp16/bf16 operands are exact in tf32; an fp32 one needs ieee products
    fp32_dot = dt.dtype == torch.float32 or (dt_proj_weight is not None and dt_proj_weight.dtype == torch.float32)
    _ssm_step_kernel[(triton.cdiv(d, BD), triton.cdiv(Bsz, BB))](
        ssm_state, x, x.stride(0), dt, dt.stride(0), x if dt_proj_weight is None else dt_proj_weight,
        x if dt_bias is None else dt_bias, A, B, B.stride(0), C, C.stride(0),
        x if D is None else D, x if z is None else z, 0 if z is None else z.stride(0), out, out.stride(0),
        Bsz, d,
        N=N, R=R, RP=max(16, triton.next_power_of_2(R)), BLOCK_B=BB, BLOCK_D=BD,
        DT_PROJ=dt_proj_weight is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus,
        A_IS_LOG=a_is_log, HAS_D=D is not None, HAS_Z=z is not None,
        DOT_PREC="ieee" if fp32_dot else "tf32", num_warps=warps, **({"maxnreg": maxnreg} if maxnreg else {}),
        **pdl_options(x.device),
    )


# ---------------------------------------------------------------------------------------------
# public ops


def causal_conv1d_update(x, conv_state, positions, conv_weight, conv_bias=None, *, silu=True,
                         out=None) -> torch.Tensor:
    """One decode step of the depthwise causal conv for the tokens at ``positions [B]``: writes
    ``x [B, d]`` into slot ``positions mod d_conv`` of the ring ``conv_state [B, d_conv, d]`` in
    place and returns ``silu(conv + bias)`` in ``x.dtype``."""
    _check_x(x)
    _check_conv(x, conv_state, positions, conv_weight, conv_bias)
    out = check_out(out, x)
    _launch_conv(x, conv_state, positions, conv_weight, conv_bias, out, silu)
    return out


def selective_state_update(ssm_state, x, dt, A, B, C, D=None, z=None, dt_bias=None, *, dt_softplus=True,
                           dt_proj_weight=None, out=None, ssm_config=None) -> torch.Tensor:
    """One step of the selective scan (mamba-ssm's ``selective_state_update`` for one head
    group), updating ``ssm_state [B, d, N]`` in place; returns ``y [B, d]`` in ``x.dtype``.

    ``dt`` is ``[B, d]``, or the low-rank ``[B, dt_rank]`` when ``dt_proj_weight [d, dt_rank]``
    is given (then dt_proj runs inside the kernel). ``A [d, N]``, ``B, C [B, N]``, ``D,
    dt_bias [d]``, ``z [B, d]``. Row-strided ``x, dt, B, C, z`` (column slices) are fine.
    """
    Bsz, d = _check_x(x)
    dev = x.device
    N = _check_ssm_state(ssm_state, Bsz, d, dev)
    if dt_proj_weight is not None:
        if not isinstance(dt_proj_weight, torch.Tensor) or dt_proj_weight.dim() != 2:
            raise ValueError("dt_proj_weight must be a [d_inner, dt_rank] tensor")
        _check_tensor("dt_proj_weight", dt_proj_weight, (d, dt_proj_weight.shape[1]), ACT_DTYPES, dev)
        _check_rows("dt", dt, (Bsz, dt_proj_weight.shape[1]), ACT_DTYPES, dev)
    else:
        _check_rows("dt", dt, (Bsz, d), ACT_DTYPES, dev)
    _check_tensor("A", A, (d, N), ACT_DTYPES, dev)
    _check_rows("B", B, (Bsz, N), ACT_DTYPES, dev)
    _check_rows("C", C, (Bsz, N), ACT_DTYPES, dev)
    if D is not None:
        _check_tensor("D", D, (d,), ACT_DTYPES, dev)
    if z is not None:
        _check_rows("z", z, (Bsz, d), ACT_DTYPES, dev)
    if dt_bias is not None:
        _check_tensor("dt_bias", dt_bias, (d,), ACT_DTYPES, dev)
    config = _check_config(ssm_config, dt_proj_weight is not None)
    out = check_out(out, x)
    _launch_ssm(ssm_state, x, dt, A, B, C, D, z, dt_bias, dt_proj_weight, out, dt_softplus, False, config)
    return out


def mamba_step(x, z, conv_state, ssm_state, positions, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
               dt_proj_bias, A_log, D, *, out=None, ssm_config=None) -> torch.Tensor:
    """The Mamba (v1) decode step between in_proj and out_proj (see the module docstring):
    conv kernel, x_proj GEMM, fused dt_proj + selective-state kernel. Same arguments as
    :func:`~ttt_kernels.ops.mamba.naive.mamba_step_ref`; both states are updated in place
    (nothing is written when an argument is rejected). Returns ``y [B, d_inner]`` in ``x.dtype``.
    """
    Bsz, d = _check_x(x)
    dev = x.device
    _check_rows("z", z, (Bsz, d), (x.dtype,), dev)
    _check_conv(x, conv_state, positions, conv_weight, conv_bias)
    N = _check_ssm_state(ssm_state, Bsz, d, dev)
    if not isinstance(dt_proj_weight, torch.Tensor) or dt_proj_weight.dim() != 2:
        raise ValueError("dt_proj_weight must be a [d_inner, dt_rank] tensor, "
                         f"got {getattr(dt_proj_weight, 'shape', type(dt_proj_weight).__name__)}")
    R = dt_proj_weight.shape[1]
    _check_tensor("dt_proj_weight", dt_proj_weight, (d, R), ACT_DTYPES, dev)
    # x_proj runs as a GEMM on the conv output, which is in x's dtype
    _check_tensor("x_proj_weight", x_proj_weight, (R + 2 * N, d), (x.dtype,), dev)
    _check_tensor("dt_proj_bias", dt_proj_bias, (d,), ACT_DTYPES, dev)
    _check_tensor("A_log", A_log, (d, N), ACT_DTYPES, dev)
    _check_tensor("D", D, (d,), ACT_DTYPES, dev)
    config = _check_config(ssm_config, True)
    out = check_out(out, x)

    xc = torch.empty(Bsz, d, dtype=x.dtype, device=dev)
    _launch_conv(x, conv_state, positions, conv_weight, conv_bias, xc, silu=True)
    dt_low, Bm, Cm = split_x_db(F.linear(xc, x_proj_weight), R, N)
    _launch_ssm(ssm_state, xc, dt_low, A_log, Bm, Cm, D, z, dt_proj_bias, dt_proj_weight, out,
                dt_softplus=True, a_is_log=True, config=config)
    return out
