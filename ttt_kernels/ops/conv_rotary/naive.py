"""PyTorch references for the TTT layer's q/k inputs at decode: the two causal depthwise
convs of the shared ``xqk`` input, then rotary with the position modulo the TTT mini-batch."""

from __future__ import annotations

import torch

from ..mamba.naive import causal_conv1d_update_ref


def apply_rotary_ref(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [..., H, f]`` by table row ``positions % len(cos)`` (``positions`` of shape
    ``[...]``, ``cos, sin [period, f/2]``), halves convention:
    ``[x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]``; computed in fp32 (float64 for
    float64 input), returned in ``x``'s dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    idx = positions % cos.shape[0]
    c, s = cos[idx].to(acc).unsqueeze(-2), sin[idx].to(acc).unsqueeze(-2)  # [..., 1, f/2]
    x1, x2 = x.to(acc).chunk(2, dim=-1)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def qk_conv_rotary_step_ref(xqk, q_state, k_state, q_weight, q_bias, k_weight, k_bias, cos, sin, positions,
                            num_heads: int):
    """``xqk [B, D]`` -> ``q, k [B, H, f]``: each conv steps its own state ``[B, D, k]`` in
    place; its output is rounded to ``xqk``'s dtype before the rotation (as the unfused
    layer does)."""
    B, D = xqk.shape
    out = []
    for state, w, b in ((q_state, q_weight, q_bias), (k_state, k_weight, k_bias)):
        y = causal_conv1d_update_ref(xqk, state, w, b, silu=False).to(xqk.dtype)
        out.append(apply_rotary_ref(y.view(B, num_heads, D // num_heads), positions, cos, sin))
    return out[0], out[1]
