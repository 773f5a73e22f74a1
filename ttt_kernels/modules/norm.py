"""RMSNorm with the residual add fused in, as the pre-norm blocks of the TTT and Mamba LMs use it.

The residual stream is kept in fp32 whatever the activation dtype: over dozens of
layers an fp16 running sum loses the small updates of late layers.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, prenorm: bool = False):
        """``RMSNorm(x + residual)`` in ``x``'s dtype.

        With ``prenorm=True`` it also returns the sum ``x + residual`` in fp32: the
        residual the next block adds its output to (``residual=None`` starts it at ``x``).
        """
        res = x.float() if residual is None else residual + x  # fp32 + x: one kernel, fp32 result
        y = F.rms_norm(res, res.shape[-1:], self.weight.float(), self.eps).to(x.dtype)
        return (y, res) if prenorm else y
