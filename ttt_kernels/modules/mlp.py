"""SwiGLU feed-forward block: ``down(silu(gate(x)) * up(x))``.

Gate and up are one ``[2 I, D]`` matrix so a decode step reads them in one GEMM
(at small batch the step is bound by reading the weights, not by the arithmetic).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.norm import silu_mul, silu_mul_ref


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.gate_up_proj = nn.Linear(dim, 2 * hidden, bias=False, device=device, dtype=dtype)
        self.down_proj = nn.Linear(hidden, dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """``fused``: the gate in one Triton launch instead of PyTorch's two kernels (under
        ``torch.compile`` the PyTorch form is kept: inductor fuses it itself)."""
        gate_up = F.linear(x, self.gate_up_proj.weight)
        if fused and not torch.compiler.is_compiling():
            h = silu_mul(gate_up)
        else:
            h = silu_mul_ref(gate_up)
        return F.linear(h, self.down_proj.weight)
