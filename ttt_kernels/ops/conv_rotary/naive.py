"""PyTorch references for the TTT layer's causal depthwise convs (the block's pre-conv and the
q/k convs of the shared ``xqk`` input), the rotary with the position modulo the TTT
mini-batch and the learning rate: one decode step, and whole prompts (prefill).

A conv state here is a ring ``[B, k, D]``: the input of position ``p`` lives in slot ``p mod k``,
so a decode step writes one slot (``D`` values) instead of shifting all ``k``. The references
unroll it into the ``[B, D, k]`` window (oldest first) that a plain conv step reads
(:func:`ring_window`) and store the window back (:func:`ring_store`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..mamba.naive import causal_conv1d_ring_update_ref, causal_conv1d_update_ref, ring_store, ring_window
from ..norm.naive import add_rms_norm_ref


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


def pre_conv_step_ref(hidden, residual, conv_state, positions, norm_weight, conv_weight, conv_bias,
                      out_norm_weight, eps: float):
    """The TTT block's first sub-block for one token at ``positions [B]``: ``residual += hidden``,
    RMSNorm, the causal conv (stepping the ring ``conv_state [B, k, D]`` in place), ``residual +=
    conv``, RMSNorm. Returns ``(normed in hidden's dtype, residual)``; each stage's output is
    rounded to ``hidden``'s dtype, the residual stays fp32 (float64 for float64 input)."""
    a, residual = add_rms_norm_ref(hidden, residual, norm_weight, eps)
    c = causal_conv1d_ring_update_ref(a, conv_state, positions, conv_weight, conv_bias, silu=False).to(a.dtype)
    return add_rms_norm_ref(c, residual, out_norm_weight, eps)


def ttt_lr_ref(lr_logit: torch.Tensor, lr_bias: torch.Tensor, lr_scale: float) -> torch.Tensor:
    """The TTT learning rate per head, ``lr_scale * sigmoid(lr_logit + lr_bias)`` in fp32
    (``lr_scale`` = base lr / head dim)."""
    return lr_scale * torch.sigmoid(lr_logit.float() + lr_bias.float())


def ttt_step_inputs_ref(xqk, v, lr_logit, conv_state, q_weight, q_bias, k_weight, k_bias, cos, sin,
                        positions, lr_bias, lr_scale: float, num_heads: int):
    """``xqk, v [B, D]``, ``lr_logit [B, H]`` -> ``q, k, v [B, H, f]`` and ``lr [B, H]``. ``xqk``
    steps into the ring ``conv_state [B, k, D]`` in place at ``positions``, and the q and k convs
    both read that window; each output is rounded to ``xqk``'s dtype before the rotation (as
    the unfused layer does)."""
    B, D = xqk.shape
    f = D // num_heads
    window = ring_window(conv_state, positions - 1)
    out = []
    # the q conv steps a copy of the window, the k conv the window itself
    for state, w, b in ((window.clone(), q_weight, q_bias), (window, k_weight, k_bias)):
        y = causal_conv1d_update_ref(xqk, state, w, b, silu=False).to(xqk.dtype)
        out.append(apply_rotary_ref(y.view(B, num_heads, f), positions, cos, sin))
    ring_store(conv_state, window, positions)
    return out[0], out[1], v.reshape(B, num_heads, f), ttt_lr_ref(lr_logit, lr_bias, lr_scale)


def causal_conv1d_prefill_ref(x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                              positions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Depthwise causal conv over whole prompts continuing from ``state``: ``x [B, T, D]``
    (token t at position ``positions[b] + t``) -> ``conv + bias`` ``[B, T, D]`` in ``x``'s dtype
    (computed in fp32, float64 for float64 input). The ring ``state [B, k, D]`` is left holding
    each sequence's last k inputs up to token ``lengths[b] - 1``; ``weight [D, k]``, ``bias [D]``."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    k = state.shape[1]
    window = ring_window(state, positions - 1)  # the k inputs before each prompt
    full = torch.cat([window[..., 1:].to(acc), x.to(acc).transpose(1, 2)], dim=-1)  # [B, D, k-1+T]
    idx = (lengths - 1).view(-1, 1, 1) + torch.arange(k, device=x.device).view(1, 1, -1)
    ring_store(state, full.gather(-1, idx.expand(-1, full.shape[1], -1)), positions + lengths - 1)
    y = F.conv1d(full, weight.to(acc).unsqueeze(1), bias.to(acc), groups=full.shape[1])
    return y.transpose(1, 2).to(x.dtype)


def qk_conv_rotary_prefill_ref(xqk, conv_state, q_weight, q_bias, k_weight, k_bias, cos, sin, positions,
                               lengths, num_heads: int):
    """``xqk [B, T, D]`` -> ``q, k [B, T, H, f]``: the q and k convs over the prompts from the one
    ``conv_state`` of their shared inputs (:func:`causal_conv1d_prefill_ref`, which leaves the
    state decode continues from), rounded to ``xqk``'s dtype, then rotated at the tokens'
    positions ``positions[b] + t``."""
    B, T, D = xqk.shape
    pos = positions.view(B, 1) + torch.arange(T, device=xqk.device)
    out = []
    # the q conv reads the state on a copy, the k conv reads and advances it
    for state, w, b in ((conv_state.clone(), q_weight, q_bias), (conv_state, k_weight, k_bias)):
        y = causal_conv1d_prefill_ref(xqk, state, w, b, positions, lengths)
        out.append(apply_rotary_ref(y.view(B, T, num_heads, D // num_heads), pos, cos, sin))
    return out[0], out[1]
