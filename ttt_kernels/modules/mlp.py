"""SwiGLU feed-forward block: ``down(silu(gate(x)) * up(x))``.

Gate and up are one ``[2 I, D]`` matrix so a decode step reads them in one GEMM
(at small batch the step is bound by reading the weights, not by the arithmetic).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.hidden = hidden
        self.gate_up_proj = nn.Linear(dim, 2 * hidden, bias=False, device=device, dtype=dtype)
        self.down_proj = nn.Linear(hidden, dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.gate_up_proj.weight).split(self.hidden, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj.weight)
