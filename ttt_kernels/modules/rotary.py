"""Rotary tables for q/k, with the position taken modulo the TTT mini-batch.

TTT layers rotate by the position *inside the mini-batch* (``p mod K``), so the
table has only ``K`` rows. The ops (``ops.conv_rotary``) pick the rows with a device
tensor of positions, never a Python int: a captured CUDA graph then stays valid for
every position. Rotation convention: halves (``[x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]``).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class Rotary(nn.Module):
    """Holds the ``cos, sin [K, f/2]`` fp32 tables."""

    def __init__(self, head_dim: int, period: int, base: float = 10000.0, device=None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary needs an even head dim, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.arange(period, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [K, f/2]
        # fp32 tables, not saved: they are a function of the config
        self.register_buffer("cos", angles.cos().float().to(device), persistent=False)
        self.register_buffer("sin", angles.sin().float().to(device), persistent=False)
