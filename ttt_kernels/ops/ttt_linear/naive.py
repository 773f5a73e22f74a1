"""Plain PyTorch references for TTT-Linear (inner net ``mlp_1``): ``z = x W + b``.

Three forms that must agree (see ../../../README.md and the design note):
  * :func:`ttt_linear_decode_primal_ref` - the original per-token algorithm with
    materialised gradient sums;
  * :func:`ttt_linear_decode_dual_ref` - per-token dual form on the state the fused
    kernels use (weights at the mini-batch start + the mini-batch input cache);
  * :func:`ttt_linear_minibatch_dual_ref` - one whole mini-batch in matrix form.
All compute in fp32, or in float64 when the state is float64.
"""

import torch

from ..ttt_state import TTTDualState, TTTPrimalState
from ..utils import (compute_dtype, finish_dual_step, finish_primal_step, layer_norm, ln_l2_grad,
                     minibatch_rows, primal_grads_so_far, token_eta)


def _ln_params(ln_weight, ln_bias, cdt):
    return ln_weight.to(cdt), ln_bias.to(cdt)


def ttt_linear_decode_primal_ref(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias,
                                 state: TTTPrimalState) -> torch.Tensor:
    cdt = compute_dtype(state.weights[0].dtype)
    K = token_idx_bias.shape[0]
    t = pos.long() % K
    gw, gb = _ln_params(ln_weight, ln_bias, cdt)
    qc, kc, vc, lrc = q.to(cdt), k.to(cdt), v.to(cdt), lr.to(cdt)
    W, b = (w.to(cdt) for w in state.weights)
    W_grad, b_grad = primal_grads_so_far(state, t, cdt)

    z = torch.einsum("bhi,bhij->bhj", kc, W) + b
    g = ln_l2_grad(z, vc - kc, gw, gb) * lrc[..., None]
    W_grad = W_grad + kc[..., :, None] * g[..., None, :]
    b_grad = b_grad + g

    eta = token_eta(t, token_idx_bias, cdt).view(-1, 1, 1, 1)
    W_bar, b_bar = W - eta * W_grad, b - eta[..., 0] * b_grad
    z_bar = torch.einsum("bhi,bhij->bhj", qc, W_bar) + b_bar
    out = qc + layer_norm(z_bar, gw, gb)
    finish_primal_step(state, [W_bar, b_bar], [W_grad, b_grad], t == K - 1)
    return out.to(q.dtype)


def _grads(k_rows, v_rows, lr_rows, W, b, gw, gb):
    """Per-row gradients at the mini-batch's start weights, scaled by each row's lr."""
    z = k_rows @ W + b[..., None, :]
    return ln_l2_grad(z, v_rows - k_rows, gw[:, None], gb[:, None]) * lr_rows[..., None]


def ttt_linear_decode_dual_ref(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias,
                               state: TTTDualState) -> torch.Tensor:
    cdt = compute_dtype(state.weights[0].dtype)
    K = token_idx_bias.shape[0]
    t = pos.long() % K
    gw, gb = _ln_params(ln_weight, ln_bias, cdt)
    qc = q.to(cdt)
    W, b = (w.to(cdt) for w in state.weights)
    k_rows, v_rows, lr_rows = minibatch_rows(state, k, v, lr, t, cdt)
    G = _grads(k_rows, v_rows, lr_rows, W, b, gw, gb)  # rows j > t are zero

    eta = token_eta(t, token_idx_bias, cdt).view(-1, 1, 1)
    attn = torch.einsum("bhi,bhji->bhj", qc, k_rows) + 1.0  # q.k_j + 1
    z_bar = torch.einsum("bhi,bhij->bhj", qc, W) + b - eta * torch.einsum("bhj,bhji->bhi", attn, G)
    out = qc + layer_norm(z_bar, gw, gb)

    W_new = W - eta[..., None] * k_rows.transpose(-1, -2) @ G
    b_new = b - eta * G.sum(-2)
    finish_dual_step(state, [W_new, b_new], k, v, lr, t)
    return out.to(q.dtype)


def ttt_linear_minibatch_dual_ref(Q, Kx, V, LR, ln_weight, ln_bias, token_idx_bias, weights):
    """One whole mini-batch from its start: ``Q, Kx, V [B, H, K, f]``, ``LR [B, H, K]``.

    Returns the outputs ``[B, H, K, f]`` and the weights at the next mini-batch's start.
    """
    W, b = weights
    cdt = compute_dtype(W.dtype)
    gw, gb = _ln_params(ln_weight, ln_bias, cdt)
    Q, Kx, V, LR, W, b = (x.to(cdt) for x in (Q, Kx, V, LR, W, b))
    K = Q.shape[-2]
    G = _grads(Kx, V, LR, W, b, gw, gb)
    eta = token_eta(torch.arange(K, device=Q.device), token_idx_bias, cdt)
    attn = torch.tril(Q @ Kx.transpose(-1, -2) + 1.0)  # token i sees rows j <= i
    Z_bar = Q @ W + b[..., None, :] - eta[:, None] * (attn @ G)
    out = Q + layer_norm(Z_bar, gw[:, None], gb[:, None])
    return out, [W - eta[-1] * Kx.transpose(-1, -2) @ G, b - eta[-1] * G.sum(-2)]
