"""Plain PyTorch references for TTT-MLP (inner net ``mlp_2``):
``z1 = x W1 + b1, x2 = gelu(z1), z2 = x2 W2 + b2`` (tanh-approximation gelu).

Same three forms as ``ttt_linear.naive``: per-token primal, per-token dual on the
fused kernels' state, and one whole mini-batch in matrix form. All compute in fp32,
or in float64 when the state is float64.
"""

import torch

from ..ttt_state import TTTDualState, TTTPrimalState
from ..utils import (compute_dtype, finish_dual_step, finish_primal_step, gelu_tanh, gelu_tanh_grad,
                     layer_norm, ln_l2_grad, minibatch_rows, primal_grads_so_far, token_eta)


def _vecmat(x, W):
    return torch.einsum("bhi,bhij->bhj", x, W)


def ttt_mlp_decode_primal_ref(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias,
                              state: TTTPrimalState) -> torch.Tensor:
    cdt = compute_dtype(state.weights[0].dtype)
    K = token_idx_bias.shape[0]
    t = pos.long() % K
    gw, gb = ln_weight.to(cdt), ln_bias.to(cdt)
    qc, kc, vc, lrc = q.to(cdt), k.to(cdt), v.to(cdt), lr.to(cdt)
    W1, b1, W2, b2 = (w.to(cdt) for w in state.weights)
    W1_grad, b1_grad, W2_grad, b2_grad = primal_grads_so_far(state, t, cdt)

    z1 = _vecmat(kc, W1) + b1
    x2 = gelu_tanh(z1)
    z2 = _vecmat(x2, W2) + b2
    g2 = ln_l2_grad(z2, vc - kc, gw, gb) * lrc[..., None]
    g1 = _vecmat(g2, W2.transpose(-1, -2)) * gelu_tanh_grad(z1)
    W1_grad = W1_grad + kc[..., :, None] * g1[..., None, :]
    b1_grad = b1_grad + g1
    W2_grad = W2_grad + x2[..., :, None] * g2[..., None, :]
    b2_grad = b2_grad + g2

    eta = token_eta(t, token_idx_bias, cdt).view(-1, 1, 1, 1)
    W1_bar, b1_bar = W1 - eta * W1_grad, b1 - eta[..., 0] * b1_grad
    W2_bar, b2_bar = W2 - eta * W2_grad, b2 - eta[..., 0] * b2_grad
    x2_bar = gelu_tanh(_vecmat(qc, W1_bar) + b1_bar)
    z2_bar = _vecmat(x2_bar, W2_bar) + b2_bar
    out = qc + layer_norm(z2_bar, gw, gb)
    finish_primal_step(state, [W1_bar, b1_bar, W2_bar, b2_bar], [W1_grad, b1_grad, W2_grad, b2_grad],
                       t == K - 1)
    return out.to(q.dtype)


def _grads(k_rows, v_rows, lr_rows, W1, b1, W2, b2, gw, gb):
    """Per-row activations and lr-scaled gradients at the mini-batch's start weights."""
    z1 = k_rows @ W1 + b1[..., None, :]
    x2 = gelu_tanh(z1)
    z2 = x2 @ W2 + b2[..., None, :]
    g2 = ln_l2_grad(z2, v_rows - k_rows, gw[:, None], gb[:, None]) * lr_rows[..., None]
    g1 = (g2 @ W2.transpose(-1, -2)) * gelu_tanh_grad(z1)
    return x2, g1, g2


def ttt_mlp_decode_dual_ref(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias,
                            state: TTTDualState) -> torch.Tensor:
    cdt = compute_dtype(state.weights[0].dtype)
    K = token_idx_bias.shape[0]
    t = pos.long() % K
    gw, gb = ln_weight.to(cdt), ln_bias.to(cdt)
    qc = q.to(cdt)
    W1, b1, W2, b2 = (w.to(cdt) for w in state.weights)
    k_rows, v_rows, lr_rows = minibatch_rows(state, k, v, lr, t, cdt)
    x2, g1, g2 = _grads(k_rows, v_rows, lr_rows, W1, b1, W2, b2, gw, gb)  # g rows j > t are zero

    eta = token_eta(t, token_idx_bias, cdt).view(-1, 1, 1)
    attn1 = torch.einsum("bhi,bhji->bhj", qc, k_rows) + 1.0  # q.k_j + 1
    z1_bar = _vecmat(qc, W1) + b1 - eta * torch.einsum("bhj,bhji->bhi", attn1, g1)
    x2_bar = gelu_tanh(z1_bar)
    attn2 = torch.einsum("bhi,bhji->bhj", x2_bar, x2) + 1.0  # x2_bar.x2_j + 1
    z2_bar = _vecmat(x2_bar, W2) + b2 - eta * torch.einsum("bhj,bhji->bhi", attn2, g2)
    out = qc + layer_norm(z2_bar, gw, gb)

    new = [W1 - eta[..., None] * k_rows.transpose(-1, -2) @ g1, b1 - eta * g1.sum(-2),
           W2 - eta[..., None] * x2.transpose(-1, -2) @ g2, b2 - eta * g2.sum(-2)]
    finish_dual_step(state, new, k, v, lr, t)
    return out.to(q.dtype)


def ttt_mlp_minibatch_dual_ref(Q, Kx, V, LR, ln_weight, ln_bias, token_idx_bias, weights):
    """One whole mini-batch from its start: ``Q, Kx, V [B, H, K, f]``, ``LR [B, H, K]``.

    Returns the outputs ``[B, H, K, f]`` and the weights at the next mini-batch's start.
    """
    cdt = compute_dtype(weights[0].dtype)
    gw, gb = ln_weight.to(cdt), ln_bias.to(cdt)
    W1, b1, W2, b2 = (w.to(cdt) for w in weights)
    Q, Kx, V, LR = (x.to(cdt) for x in (Q, Kx, V, LR))
    K = Q.shape[-2]
    x2, g1, g2 = _grads(Kx, V, LR, W1, b1, W2, b2, gw, gb)
    eta = token_eta(torch.arange(K, device=Q.device), token_idx_bias, cdt)[:, None]
    causal = torch.ones(K, K, dtype=torch.bool, device=Q.device).tril()
    Z1_bar = Q @ W1 + b1[..., None, :] - eta * (((Q @ Kx.transpose(-1, -2) + 1.0) * causal) @ g1)
    X2_bar = gelu_tanh(Z1_bar)
    Z2_bar = X2_bar @ W2 + b2[..., None, :] - eta * (((X2_bar @ x2.transpose(-1, -2) + 1.0) * causal) @ g2)
    out = Q + layer_norm(Z2_bar, gw[:, None], gb[:, None])
    e = eta[-1]
    return out, [W1 - e * Kx.transpose(-1, -2) @ g1, b1 - e * g1.sum(-2),
                 W2 - e * x2.transpose(-1, -2) @ g2, b2 - e * g2.sum(-2)]
