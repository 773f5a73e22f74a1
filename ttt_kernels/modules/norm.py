"""RMSNorm with the residual add fused in, as the pre-norm blocks of the TTT and Mamba LMs use it.

The residual stream is kept in fp32 whatever the activation dtype: over dozens of
layers an fp16 running sum loses the small updates of late layers.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.norm import add_rms_norm, add_rms_norm_ref


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, prenorm: bool = False,
                fused: bool = False):
        """``RMSNorm(x + residual)`` in ``x``'s dtype.

        With ``prenorm=True`` it also returns the sum ``x + residual`` in fp32: the
        residual the next block adds its output to (``residual=None`` starts it at ``x``).
        ``fused``: one Triton launch instead of PyTorch's several kernels (under
        ``torch.compile`` the PyTorch form is kept: inductor fuses it itself).
        """
        if fused and not torch.compiler.is_compiling():
            y, res = add_rms_norm(x, residual, self.weight, self.eps)
        else:
            y, res = add_rms_norm_ref(x, residual, self.weight, self.eps)
        return (y, res) if prenorm else y
