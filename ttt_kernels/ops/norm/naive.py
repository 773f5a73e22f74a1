"""PyTorch references of the fused norms and gates (any leading shape; float64-capable)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils import gelu_tanh


def add_rms_norm_ref(x, residual, weight, eps):
    """``(RMSNorm(x + residual) in x's dtype, x + residual)``; the sum is fp32 (float64 for
    float64 input), ``residual=None`` starts it at ``x``."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    res = x.to(acc) if residual is None else residual.to(acc) + x.to(acc)
    y = F.rms_norm(res, res.shape[-1:], weight.to(acc), eps)
    return y.to(x.dtype), res


def gated_layer_norm_ref(z, gate, weight, bias, eps):
    """``gelu_tanh(gate) * LayerNorm(z)`` over the last dim, computed in fp32 (float64 for
    float64 input), returned in ``z``'s dtype: the TTT layer's output gate."""
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    normed = F.layer_norm(z.to(acc), z.shape[-1:], weight.to(acc), bias.to(acc), eps)
    return (gelu_tanh(gate.to(acc)) * normed).to(z.dtype)


def silu_mul_ref(gate_up):
    """``silu(gate) * up`` for ``gate_up = [gate, up]`` along the last dim, computed in fp32
    (float64 for float64 input), returned in ``gate_up``'s dtype: the SwiGLU gate."""
    acc = torch.float64 if gate_up.dtype == torch.float64 else torch.float32
    gate, up = gate_up.to(acc).chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)
