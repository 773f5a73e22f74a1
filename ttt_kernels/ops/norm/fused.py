"""Fused norms and gates for the decode step (one launch each, any leading shape).

At decode the norms run on ``[B, D]`` rows of a few MB: launch-bound, not byte-bound.
Unfused, the residual add, the fp32 casts, the RMS reduction and the weight multiply
are five to seven kernels per norm; the TTT output gate (LayerNorm, tanh-gelu of the
gate, product, cast) about a dozen; the SwiGLU gate two. One program per row does each
in one pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import (MAX_ROW_DIM, gelu_tanh, on_input_device, pdl_options, rms_norm_row, row_warps,
                            wait_for_prior_kernel)
from ..ttt_state import ACT_DTYPES


@triton.jit
def _add_rms_norm_kernel(x_ptr, stride_x, res_ptr, stride_r, w_ptr, y_ptr, res_out_ptr, dim, eps,
                         HAS_RES: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_prior_kernel(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < dim
    s = tl.load(x_ptr + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(res_ptr + row * stride_r + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(res_out_ptr + row * dim + cols, s, mask=m)
    tl.store(y_ptr + row * dim + cols, rms_norm_row(s, w_ptr, cols, m, dim, eps).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gated_layer_norm_kernel(z_ptr, stride_z, g_ptr, stride_g, w_ptr, b_ptr, y_ptr, dim, eps,
                             BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_prior_kernel(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < dim
    z = tl.load(z_ptr + row * stride_z + cols, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(z, axis=0) / dim
    zc = tl.where(m, z - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, axis=0) / dim + eps)
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=m, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + row * stride_g + cols, mask=m, other=0.0).to(tl.float32)
    y = gelu_tanh(g, False) * (zc * rstd * w + b)  # exact tanh: one row of gates, not worth the error
    tl.store(y_ptr + row * dim + cols, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _silu_mul_kernel(x_ptr, stride_x, y_ptr, dim, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_prior_kernel(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < dim
    g = tl.load(x_ptr + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * stride_x + dim + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * dim + cols, (g * tl.sigmoid(g) * u).to(y_ptr.dtype.element_ty), mask=m)


def _rows(name: str, t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` as ``[rows, dim]`` with unit column stride, without copying when it can."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in ACT_DTYPES:
        raise TypeError(f"{name} must be fp32, fp16 or bf16, got {t.dtype}")
    if t.shape[-1] != dim:
        raise ValueError(f"{name} must have last dim {dim}, got shape {tuple(t.shape)}")
    t = t.reshape(-1, dim)
    return t if t.stride(-1) == 1 else t.contiguous()


def _check_params(x: torch.Tensor, **params) -> None:
    dim = x.shape[-1]
    if dim > MAX_ROW_DIM:
        raise ValueError(f"last dim {dim} exceeds {MAX_ROW_DIM}")
    for name, p in params.items():
        if not isinstance(p, torch.Tensor) or tuple(p.shape) != (dim,) or p.device != x.device:
            raise ValueError(f"{name} must be a [{dim}] tensor on {x.device}, got "
                             f"{getattr(p, 'shape', type(p).__name__)}")
        if not p.is_contiguous():
            raise ValueError(f"{name} must be contiguous")


@on_input_device
def add_rms_norm(x, residual, weight, eps):
    """``(RMSNorm(x + residual) in x's dtype, x + residual in fp32)`` in one launch;
    ``residual=None`` starts the sum at ``x``. Row-strided inputs are fine."""
    dim = x.shape[-1] if isinstance(x, torch.Tensor) else 0
    x2 = _rows("x", x, dim)
    _check_params(x, weight=weight)
    if residual is not None:
        if tuple(residual.shape) != tuple(x.shape) or residual.device != x.device:
            raise ValueError(f"residual must match x {tuple(x.shape)} on {x.device}, "
                             f"got {tuple(residual.shape)} on {residual.device}")
        r2 = _rows("residual", residual, dim)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    res = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    if x2.shape[0]:
        _add_rms_norm_kernel[(x2.shape[0],)](
            x2, x2.stride(0), r2 if residual is not None else x2, r2.stride(0) if residual is not None else 0,
            weight, y, res, dim, eps, HAS_RES=residual is not None, BLOCK=triton.next_power_of_2(dim),
            num_warps=row_warps(dim), **pdl_options(y.device))
    return y, res


@on_input_device
def gated_layer_norm(z, gate, weight, bias, eps):
    """``gelu_tanh(gate) * LayerNorm(z)`` in ``z``'s dtype, one launch, fp32 inside."""
    dim = z.shape[-1] if isinstance(z, torch.Tensor) else 0
    z2 = _rows("z", z, dim)
    if not isinstance(gate, torch.Tensor) or tuple(gate.shape) != tuple(z.shape) or gate.device != z.device:
        raise ValueError(f"gate must match z {tuple(z.shape)} on {z.device}, got {getattr(gate, 'shape', None)}")
    g2 = _rows("gate", gate, dim)
    _check_params(z, weight=weight, bias=bias)
    y = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    if z2.shape[0]:
        _gated_layer_norm_kernel[(z2.shape[0],)](z2, z2.stride(0), g2, g2.stride(0), weight, bias, y, dim, eps,
                                                 BLOCK=triton.next_power_of_2(dim), num_warps=row_warps(dim),
                                                 **pdl_options(y.device))
    return y


@on_input_device
def silu_mul(gate_up):
    """``silu(gate) * up`` in ``gate_up``'s dtype, one launch, fp32 inside: the SwiGLU gate,
    ``gate_up [..., 2 n]`` holding ``gate`` then ``up`` (one GEMM's output)."""
    two_n = gate_up.shape[-1] if isinstance(gate_up, torch.Tensor) and gate_up.dim() else 0
    if two_n % 2 or not two_n:
        raise ValueError(f"gate_up must have an even last dim (gate then up), got {two_n}")
    if two_n // 2 > MAX_ROW_DIM:
        raise ValueError(f"gate_up: n = {two_n // 2} exceeds {MAX_ROW_DIM}")
    x2 = _rows("gate_up", gate_up, two_n)
    dim = two_n // 2
    y = torch.empty((*gate_up.shape[:-1], dim), dtype=gate_up.dtype, device=gate_up.device)
    if x2.shape[0]:
        _silu_mul_kernel[(x2.shape[0],)](x2, x2.stride(0), y, dim, BLOCK=triton.next_power_of_2(dim),
                                         num_warps=row_warps(dim), **pdl_options(y.device))
    return y
