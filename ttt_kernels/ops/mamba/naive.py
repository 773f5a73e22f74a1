"""Plain PyTorch references for Mamba (v1) decode and prefill (any device, float64-capable).

Conventions (mamba-ssm's, but for the decode cache's conv state):

* A conv *window* ``[B, d_inner, d_conv]`` holds the last ``d_conv`` conv inputs, oldest
  first, as mamba-ssm's conv state does; after :func:`causal_conv1d_update_ref`,
  ``window[..., -1]`` is the step's own input. :func:`mamba_scan_ref` takes and returns
  windows, so its states can be exchanged with mamba-ssm.
* The decode cache keeps the conv state as a *ring* ``[B, d_conv, d_inner]``: the input of
  position ``p`` in slot ``p mod d_conv`` (a step writes one slot instead of shifting all
  ``d_conv``). :func:`ring_window` and :func:`ring_store` convert between the two.
* ``ssm_state [B, d_inner, d_state]``; ``A = -exp(A_log)`` is ``[d_inner, d_state]``.
* x_proj's output is ``[dt_low (dt_rank) | B (d_state) | C (d_state)]``;
  ``dt = softplus(dt_low @ dt_proj_weight^T + dt_bias)``.

The references compute in fp32, or in float64 when any of ``x`` and the states is
float64, and never round intermediates to the activation dtype: they are the ground
truth the kernels are measured against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _cdt(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, silu=True):
    """One step of the depthwise causal conv: shifts ``x [B, d]`` into ``conv_state``
    (in place) and returns ``silu(conv + bias)`` (``[B, d]``, compute dtype)."""
    cdt = _cdt(x, conv_state)
    window = torch.cat([conv_state[..., 1:], x.to(conv_state.dtype).unsqueeze(-1)], dim=-1)
    conv_state.copy_(window)
    out = (window.to(cdt) * weight.to(cdt)).sum(-1)
    if bias is not None:
        out = out + bias.to(cdt)
    return F.silu(out) if silu else out


def _ring_slots(state: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    B, k, D = state.shape
    slots = (last.view(B, 1) - (k - 1) + torch.arange(k, device=state.device)) % k  # non-negative
    return slots.view(B, k, 1).expand(B, k, D)


def ring_window(state: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """The ring ``state [B, k, D]`` as the window ``[B, D, k]`` of the inputs at positions
    ``last[b] - k + 1 .. last[b]``, oldest first (a copy)."""
    return state.gather(1, _ring_slots(state, last)).transpose(1, 2)


def ring_store(state: torch.Tensor, window: torch.Tensor, last: torch.Tensor) -> None:
    """Writes ``window [B, D, k]`` (the inputs at positions ``last[b] - k + 1 .. last[b]``) into
    the ring ``state [B, k, D]`` in place."""
    state.scatter_(1, _ring_slots(state, last), window.transpose(1, 2).to(state.dtype))


def causal_conv1d_ring_update_ref(x, conv_state, positions, weight, bias=None, silu=True):
    """:func:`causal_conv1d_update_ref` on a ring ``conv_state [B, d_conv, d]``, the tokens at
    ``positions [B]``: writes ``x [B, d]`` into slot ``positions mod d_conv`` in place and returns
    ``silu(conv + bias)`` (``[B, d]``, compute dtype); the reference of the ring conv kernels."""
    window = ring_window(conv_state, positions - 1)
    out = causal_conv1d_update_ref(x, window, weight, bias, silu)
    ring_store(conv_state, window, positions)
    return out


def _dt(dt, dt_bias, dt_proj_weight, dt_softplus, cdt):
    dt = dt.to(cdt)
    if dt_proj_weight is not None:
        dt = dt @ dt_proj_weight.to(cdt).T
    if dt_bias is not None:
        dt = dt + dt_bias.to(cdt)
    return F.softplus(dt) if dt_softplus else dt


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True,
                               dt_proj_weight=None):
    """One step of the selective scan; updates ``state [b, d, n]`` in place and returns
    ``y [b, d]`` (compute dtype).

    ``dt`` is ``[b, d]``, or the low-rank ``[b, r]`` when ``dt_proj_weight [d, r]`` is given.
    """
    cdt = _cdt(x, state)
    dt = _dt(dt, dt_bias, dt_proj_weight, dt_softplus, cdt)
    x = x.to(cdt)
    dA = torch.exp(dt.unsqueeze(-1) * A.to(cdt))
    h = state.to(cdt) * dA + (dt * x).unsqueeze(-1) * B.to(cdt).unsqueeze(1)
    state.copy_(h)
    y = (h * C.to(cdt).unsqueeze(1)).sum(-1)
    if D is not None:
        y = y + D.to(cdt) * x
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y


def split_x_db(x_db, dt_rank: int, d_state: int):
    """x_proj's output ``[..., dt_rank + 2 d_state]`` -> ``dt_low, B, C`` (views)."""
    return x_db.split([dt_rank, d_state, d_state], dim=-1)


def mamba_step_ref(x, z, conv_state, ssm_state, positions, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                   dt_proj_bias, A_log, D):
    """The Mamba (v1) mixer's decode step between in_proj and out_proj, the tokens at
    ``positions [B]``.

    ``x, z [B, d_inner]`` (in_proj's two halves), the ring ``conv_state [B, d_conv, d_inner]``,
    ``conv_weight [d_inner, d_conv]``, ``x_proj_weight [dt_rank + 2 d_state, d_inner]``,
    ``dt_proj_weight [d_inner, dt_rank]``, ``A_log [d_inner, d_state]``. Both states are updated
    in place; returns ``y`` in ``x.dtype``.
    """
    cdt = _cdt(x, conv_state, ssm_state)
    xc = causal_conv1d_ring_update_ref(x, conv_state, positions, conv_weight, conv_bias, silu=True)
    dt_low, Bm, Cm = split_x_db(xc @ x_proj_weight.to(cdt).T, dt_proj_weight.shape[1], A_log.shape[1])
    y = selective_state_update_ref(ssm_state, xc, dt_low, -torch.exp(A_log.to(cdt)), Bm, Cm, D, z,
                                   dt_proj_bias, dt_softplus=True, dt_proj_weight=dt_proj_weight)
    return y.to(x.dtype)


def mamba_scan_ref(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                   conv_state=None, ssm_state=None, lengths=None):
    """Whole-sequence Mamba (v1) mixer between in_proj and out_proj (prefill).

    ``x, z [B, T, d_inner]``. Starts from the conv window ``conv_state [B, d_inner, d_conv]``
    and ``ssm_state`` (zeros when None) and returns ``(y [B, T, d_inner], conv_state,
    ssm_state)`` with the final window and state as new tensors in the given states' dtypes
    (fp32/float64 when None), so that decode continues exactly. ``lengths [B]`` (optional,
    each in ``0..T``): sequence ``b`` has ``lengths[b]`` real tokens followed by padding; its
    states stop at its last real token and its padded outputs are zero.
    """
    Bsz, T, d = x.shape
    d_conv = conv_weight.shape[-1]
    d_state = A_log.shape[1]
    cdt = _cdt(x, conv_state, ssm_state)
    if conv_state is None:
        conv_state = torch.zeros(Bsz, d, d_conv, dtype=x.dtype, device=x.device)
    if ssm_state is None:
        ssm_state = torch.zeros(Bsz, d, d_state, dtype=cdt, device=x.device)
    if lengths is None:
        lengths = torch.full((Bsz,), T, dtype=torch.long, device=x.device)
    lengths = lengths.to(device=x.device, dtype=torch.long)

    # the conv over [old state | new inputs], inputs stored in the conv state's dtype as decode does;
    # token i's window is xpad[..., i+1 : i+1+d_conv]
    xpad = torch.cat([conv_state, x.to(conv_state.dtype).transpose(1, 2)], dim=-1)  # [B, d, d_conv + T]
    w = conv_weight.to(cdt)
    xc = sum(w[:, k, None] * xpad[..., 1 + k:1 + k + T].to(cdt) for k in range(d_conv))  # [B, d, T]
    if conv_bias is not None:
        xc = xc + conv_bias.to(cdt)[:, None]
    xc = F.silu(xc).transpose(1, 2)  # [B, T, d]
    # after L tokens the state is the last d_conv inputs: xpad[..., L : L + d_conv]
    idx = lengths.view(Bsz, 1, 1) + torch.arange(d_conv, device=x.device)
    new_conv = xpad.gather(2, idx.expand(Bsz, d, d_conv)).clone()

    dt_low, Bm, Cm = split_x_db(xc @ x_proj_weight.to(cdt).T, dt_proj_weight.shape[1], d_state)
    dt = _dt(dt_low, dt_proj_bias, dt_proj_weight, True, cdt)  # [B, T, d]
    A = -torch.exp(A_log.to(cdt))
    live = torch.arange(T, device=x.device)[None, :] < lengths[:, None]  # [B, T]
    h = ssm_state.to(cdt)
    ys = []
    for t in range(T):  # the recurrence itself is sequential; a reference needs no chunked scan
        h_new = h * torch.exp(dt[:, t, :, None] * A) + (dt[:, t] * xc[:, t])[..., None] * Bm[:, t, None, :]
        ys.append((h_new * Cm[:, t, None, :]).sum(-1))
        h = torch.where(live[:, t, None, None], h_new, h)
    y = torch.stack(ys, dim=1) if T else xc.new_zeros(Bsz, 0, d)
    y = (y + D.to(cdt) * xc) * F.silu(z.to(cdt))
    y = torch.where(live[..., None], y, 0.0)
    return y.to(x.dtype), new_conv, h.to(ssm_state.dtype)
