"""Mamba (v1) mixer for decoding: no autograd, our kernels for the step.

Parameter names and shapes are mamba-ssm's (``in_proj``, ``conv1d``, ``x_proj``,
``dt_proj``, ``A_log``, ``D``, ``out_proj``), so its mixer state dicts load as they are.
``A_log`` and ``D`` stay fp32 whatever the model dtype, as in mamba-ssm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import skip_init

from ..ops.mamba import mamba_scan_ref, mamba_step, mamba_step_ref, ring_store, ring_window
from ..ops.ttt_state import ACT_DTYPES, FLOAT_DTYPES, _check_tensor, check_disjoint, check_module_input
from ..utils.generation import PrefillPlan, lengths_on_host


@torch.compiler.disable
def _fused_step(*args):
    # the Triton launches (and their argument checks) stay outside torch.compile's graphs
    return mamba_step(*args)


@dataclass
class MambaLayerCache:
    # [B, d_conv, d_inner], activation dtype: the last d_conv conv inputs, a ring (the input of
    # position p in slot p mod d_conv; ops.mamba.ring_window gives mamba-ssm's [B, d_inner, d_conv])
    conv_state: torch.Tensor
    ssm_state: torch.Tensor  # [B, d_inner, d_state], fp32 by default
    # [B] int64: each sequence's absolute position, shared with (and advanced by) the model's cache
    positions: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        """The tensors this layer owns (not the shared positions)."""
        return [self.conv_state, self.ssm_state]


class Mamba(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank=None,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4, seed: int = 0,
                 device=None, dtype=torch.float32, use_triton: bool = True, init: bool = True):
        """``init=False`` leaves the random-drawn weights uninitialised (for a state dict to be
        loaded, or a ``meta``-device model that only counts bytes)."""
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.use_triton = use_triton
        d, r = self.d_inner, self.dt_rank

        # every weight is drawn below (or loaded): skip torch's default init
        device = torch.get_default_device() if device is None else device  # skip_init reads None as meta
        kw = dict(device=device, dtype=dtype)
        self.in_proj = skip_init(nn.Linear, d_model, 2 * d, bias=False, **kw)
        self.conv1d = skip_init(nn.Conv1d, d, d, d_conv, groups=d, padding=d_conv - 1, bias=True, **kw)
        self.x_proj = skip_init(nn.Linear, d, r + 2 * d_state, bias=False, **kw)
        self.dt_proj = skip_init(nn.Linear, r, d, bias=True, **kw)
        self.out_proj = skip_init(nn.Linear, d, d_model, bias=False, **kw)
        if init:
            self._init_weights(seed, dt_min, dt_max, dt_init_floor)
        # A = -(1, 2, ..., d_state) per channel
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(d, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d, device=device))
        self.requires_grad_(False)

    @torch.no_grad()
    def _init_weights(self, seed, dt_min, dt_max, dt_init_floor) -> None:
        """mamba-ssm's init, drawn in fp32 on the CPU from our own generator, so a seed gives
        the same weights on every device and the global RNG is left alone."""
        g = torch.Generator().manual_seed(seed)
        d, r, d_conv = self.d_inner, self.dt_rank, self.d_conv

        def uniform(p, bound):
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)

        # nn.Linear / nn.Conv1d defaults (kaiming_uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)))
        for lin in (self.in_proj, self.x_proj, self.out_proj):
            uniform(lin.weight, lin.in_features ** -0.5)
        uniform(self.conv1d.weight, d_conv ** -0.5)
        uniform(self.conv1d.bias, d_conv ** -0.5)
        uniform(self.dt_proj.weight, r ** -0.5)
        # dt log-uniform in [dt_min, dt_max]; the bias is its inverse softplus
        dt = torch.exp(torch.rand(d, generator=g) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def step_weights(self):
        """The step's weights in :func:`mamba_step`'s order (the conv weight as ``[d_inner, d_conv]``)."""
        return (self.conv1d.weight.view(self.d_inner, self.d_conv), self.conv1d.bias, self.x_proj.weight,
                self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D)

    def step_bytes(self, batch: int, state_dtype=torch.float32, weights: bool = True) -> int:
        """Bytes a decode step between in_proj and out_proj must move: per sequence the SSM state
        read and written, the conv ring's ``d_conv - 1`` earlier inputs read and one slot written
        (activation dtype), x and z read, y written and x_proj's output (dt_low, B, C) read; with
        ``weights``, also :meth:`step_weights` read once."""
        a, s, d = self.in_proj.weight.element_size(), state_dtype.itemsize, self.d_inner
        per_seq = 2 * d * self.d_state * s + d * self.d_conv * a + 3 * d * a + (self.dt_rank + 2 * self.d_state) * a
        w = sum(t.numel() * t.element_size() for t in self.step_weights()) if weights else 0
        return batch * per_seq + w

    def allocate_inference_cache(self, batch: int, dtype=None, state_dtype=torch.float32,
                                 positions: torch.Tensor | None = None) -> MambaLayerCache:
        """Zero states for ``batch`` sequences; the conv state holds conv inputs, so it is in the
        activation dtype (the weights' by default). ``positions [B]``: the model's shared position
        tensor (default: a new one at 0, which the caller advances)."""
        dev = self.in_proj.weight.device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        if positions is None:
            positions = torch.zeros(batch, dtype=torch.int64, device=dev)
        return MambaLayerCache(torch.zeros(batch, self.d_conv, self.d_inner, dtype=dtype, device=dev),
                               torch.zeros(batch, self.d_inner, self.d_state, dtype=state_dtype, device=dev),
                               positions)

    def check_cache(self, cache: MambaLayerCache, batch: int) -> None:
        """That ``cache`` is one :meth:`allocate_inference_cache` makes for ``batch`` sequences
        (shapes, dtypes, device, contiguous, apart): checked before a step or prefill writes anything."""
        if not isinstance(cache, MambaLayerCache):
            raise TypeError(f"cache must be a MambaLayerCache, got {type(cache).__name__}")
        w = self.in_proj.weight
        # the reference step runs float64 states, with float64 activations only (its conv output
        # stays in the activation dtype and meets x_proj in the state's)
        dtypes = FLOAT_DTYPES if not self.use_triton and w.dtype == torch.float64 else ACT_DTYPES
        _check_tensor("conv_state", cache.conv_state, (batch, self.d_conv, self.d_inner), dtypes, w.device)
        _check_tensor("ssm_state", cache.ssm_state, (batch, self.d_inner, self.d_state), dtypes, w.device)
        _check_tensor("positions", cache.positions, (batch,), (torch.int32, torch.int64), w.device)
        check_disjoint([("conv_state", cache.conv_state), ("ssm_state", cache.ssm_state)])

    def _check_call(self, hidden: torch.Tensor, cache, dims: int) -> None:
        check_module_input("hidden", hidden, dims, self.d_model, self.in_proj.weight)
        self.check_cache(cache, hidden.shape[0])

    @torch.no_grad()
    def step(self, hidden: torch.Tensor, cache: MambaLayerCache) -> torch.Tensor:
        """One token per sequence at ``cache.positions``: ``hidden [B, d_model] -> [B, d_model]``;
        updates the states in place, leaves the positions to their owner. No host syncs, so it
        can be captured in a CUDA graph."""
        self._check_call(hidden, cache, 2)
        return self.step_checked(hidden, cache)

    def step_checked(self, hidden: torch.Tensor, cache: MambaLayerCache) -> torch.Tensor:
        """:meth:`step` for a caller that has checked ``hidden`` and ``cache`` (the model, every layer first)."""
        xz = F.linear(hidden, self.in_proj.weight)
        x, z = xz[:, :self.d_inner], xz[:, self.d_inner:]  # row-strided views: the kernels take them as they are
        step = _fused_step if self.use_triton else mamba_step_ref
        y = step(x, z, cache.conv_state, cache.ssm_state, cache.positions, *self.step_weights())
        return F.linear(y, self.out_proj.weight)

    @torch.no_grad()
    def prefill(self, hidden: torch.Tensor, cache: MambaLayerCache, lengths=None, *,
                plan: PrefillPlan | None = None) -> torch.Tensor:
        """``hidden [B, T, d_model] -> [B, T, d_model]`` with the reference scan, continuing from
        ``cache`` at ``cache.positions`` and leaving in it the states decode continues from (the
        positions to their owner, like :meth:`step`). With ``lengths [B]``
        (right padding), sequence ``b``'s states stop after ``lengths[b]`` tokens and its padded
        outputs are zero. ``plan``: the model's checked :func:`prefill_plan`, instead of ``lengths``
        (no host sync here)."""
        self._check_call(hidden, cache, 3)
        return self.prefill_checked(hidden, cache, lengths, plan=plan)

    def prefill_checked(self, hidden: torch.Tensor, cache: MambaLayerCache, lengths=None, *,
                        plan: PrefillPlan | None = None) -> torch.Tensor:
        """:meth:`prefill` for a caller that has checked ``hidden`` and ``cache``."""
        T = hidden.shape[1]
        if plan is not None:
            plan.check_for(hidden, lengths)
            lengths = None if plan.full else plan.lengths
        elif lengths is not None:
            # a host sync, which prefill (never graph-captured) can afford
            lengths = torch.tensor(lengths_on_host(lengths, hidden.shape[0], T, min_len=0), device=hidden.device)
        xz = F.linear(hidden, self.in_proj.weight)
        x, z = xz[..., :self.d_inner], xz[..., self.d_inner:]
        # the scan runs on mamba-ssm's conv window: the inputs before the prompts in, the last
        # d_conv inputs of each prompt out
        pos = cache.positions
        window = ring_window(cache.conv_state, pos - 1)
        y, window, new_ssm = mamba_scan_ref(x, z, *self.step_weights(), conv_state=window, ssm_state=cache.ssm_state,
                                            lengths=lengths)
        ring_store(cache.conv_state, window, pos + (T if lengths is None else lengths) - 1)
        cache.ssm_state.copy_(new_ssm)
        return F.linear(y, self.out_proj.weight)
