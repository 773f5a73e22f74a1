"""Plain PyTorch math shared by the TTT references (any dtype, any device)."""

import math

import torch

LN_EPS = 1e-6
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def gelu_tanh_grad(x: torch.Tensor) -> torch.Tensor:
    """Exact derivative of :func:`gelu_tanh`."""
    th = torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)


def layer_norm(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim; ``weight``/``bias`` broadcast against ``z``."""
    mu = z.mean(-1, keepdim=True)
    std = torch.sqrt(((z - mu) ** 2).mean(-1, keepdim=True) + LN_EPS)
    return weight * (z - mu) / std + bias


def ln_l2_grad(z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. ``z`` of ``0.5 * ||LN(z) - target||^2`` (LayerNorm over the last dim)."""
    f = z.shape[-1]
    mu = z.mean(-1, keepdim=True)
    std = torch.sqrt(((z - mu) ** 2).mean(-1, keepdim=True) + LN_EPS)
    x_hat = (z - mu) / std
    g_hat = (weight * x_hat + bias - target) * weight
    return (f * g_hat - g_hat.sum(-1, keepdim=True) - x_hat * (g_hat * x_hat).sum(-1, keepdim=True)) / (f * std)


def token_eta(t: torch.Tensor, token_idx_bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``eta_t = max(0, 1/(t+1) + token_idx_bias[t])`` for in-mini-batch indices ``t``."""
    return torch.clamp_min(1.0 / (t.to(dtype) + 1.0) + token_idx_bias.to(dtype)[t], 0.0)


def compute_dtype(state_dtype: torch.dtype) -> torch.dtype:
    """References accumulate in fp32, or in float64 when handed a float64 state."""
    return torch.float64 if state_dtype == torch.float64 else torch.float32


def _row_is(t: torch.Tensor, K: int) -> torch.Tensor:
    """[B, 1, K, 1] mask of cache row ``t`` per sequence (static shapes: graph- and compile-safe)."""
    return (torch.arange(K, device=t.device)[None, :] == t[:, None])[:, None, :, None]


def minibatch_rows(state, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor, t: torch.Tensor, cdt: torch.dtype):
    """The dual state's cached rows with the current token put at row ``t``, in ``cdt``.

    Returns ``K_rows, V_rows [B, H, K, f]``, ``lr_rows [B, H, K]`` with the rows
    ``j > t`` (not part of this mini-batch yet) given zero learning rate.
    """
    K = state.k_cache.shape[2]
    at_t = _row_is(t, K)
    k_rows = torch.where(at_t, k[:, :, None, :].to(cdt), state.k_cache.to(cdt))
    v_rows = torch.where(at_t, v[:, :, None, :].to(cdt), state.v_cache.to(cdt))
    lr_rows = torch.where(at_t[..., 0], lr[:, :, None].to(cdt), state.lr_cache.to(cdt))
    in_minibatch = torch.arange(K, device=k.device)[None, :] <= t[:, None]  # [B, K]
    return k_rows, v_rows, lr_rows * in_minibatch[:, None, :]


def finish_dual_step(state, new_weights, k, v, lr, t: torch.Tensor) -> None:
    """End of a dual step: sequences at the last token of their mini-batch take the
    updated weights; the others append the current token to the cache."""
    B, _, K, _ = state.k_cache.shape
    last = t == K - 1
    for w, nw in zip(state.weights, new_weights):
        w.copy_(torch.where(last.view(B, *([1] * (w.dim() - 1))), nw.to(w.dtype), w))
    write = _row_is(t, K) & ~last.view(B, 1, 1, 1)
    state.k_cache.copy_(torch.where(write, k[:, :, None, :].to(state.k_cache.dtype), state.k_cache))
    state.v_cache.copy_(torch.where(write, v[:, :, None, :].to(state.v_cache.dtype), state.v_cache))
    state.lr_cache.copy_(torch.where(write[..., 0], lr[:, :, None].to(state.lr_cache.dtype), state.lr_cache))


def primal_grads_so_far(state, t: torch.Tensor, cdt: torch.dtype) -> list[torch.Tensor]:
    """The primal gradient sums before this token: zero at a mini-batch's first token
    (whatever the buffers hold then, so the last token need not clear them)."""
    B = t.shape[0]
    return [torch.where((t == 0).view(B, *([1] * (g.dim() - 1))), 0.0, g.to(cdt)) for g in state.grads]


def finish_primal_step(state, w_bar, grads, last: torch.Tensor) -> None:
    """End of a primal step: sequences at their mini-batch's last token take the weights
    ``W_bar``; the others store the gradient sums."""
    B = last.shape[0]
    for w, g, nw, ng in zip(state.weights, state.grads, w_bar, grads):
        sel = last.view(B, *([1] * (w.dim() - 1)))
        w.copy_(torch.where(sel, nw.to(w.dtype), w))
        g.copy_(torch.where(sel, g, ng.to(g.dtype)))
