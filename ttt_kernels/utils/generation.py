"""Greedy generation for recurrent-state LMs, with CUDA-graph decode (in the style of
mamba-ssm's ``generate(input_ids, max_length, cg=True)``).

Model-agnostic: any model with

    allocate_inference_cache(batch, state_dtype=None) -> InferenceCache
    prefill(input_ids [B, T], cache, lengths=None) -> logits of each sequence's last prompt token [B, V]
    step(input_ids [B], cache) -> logits [B, V]     # advances cache.positions by one, in place

works (the TTT LM and a Mamba LM alike). ``step`` must do no host synchronisation
and allocate its state nowhere but in the cache, so one CUDA graph of it, captured on
static buffers, replays correctly at every position: positions live in a device
tensor, and whatever depends on them (mini-batch phase, rotary) is computed from it
inside the graph.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch


def _flatten(x) -> list[torch.Tensor]:
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return [x]
    if hasattr(x, "tensors"):
        return list(x.tensors())
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _flatten(item)]
    raise TypeError(f"cannot find the tensors of a {type(x).__name__}")


class InferenceCache:
    """Per-layer decode states and each sequence's position (``positions [B]`` int64, on the device).

    ``layers[i]`` is whatever layer ``i`` keeps (a tensor, a tuple of tensors, or an object
    with ``tensors()``). ``reset()`` returns every sequence to an empty prefix *in place*,
    so graphs captured on these buffers stay valid: it calls ``reset_fn(cache)`` when the
    model gave one (TTT states start from learned weights), else zeroes everything (Mamba).
    """

    def __init__(self, layers: list, positions: torch.Tensor, reset_fn=None):
        if positions.dim() != 1 or positions.dtype != torch.int64:
            raise ValueError("positions must be a [B] int64 tensor")
        self.layers = layers
        self.positions = positions
        self.reset_fn = reset_fn

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        return [*_flatten(self.layers), self.positions]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @torch.no_grad()
    def reset(self) -> None:
        if self.reset_fn is not None:
            self.reset_fn(self)
        else:
            for t in self.tensors():
                t.zero_()
        self.positions.zero_()


@dataclass(frozen=True)
class PrefillPlan:
    """A prefill's checked lengths and start positions, read back to the host once (the model
    makes one and hands it to every layer, so the layers need no host sync of their own)."""
    T: int  # tokens per prompt (padding included)
    lengths_host: list[int]  # each prompt's length, 1..T
    lengths: torch.Tensor  # the same on the device, [B] int64
    starts_host: list[int]  # each sequence's position before the prefill

    @property
    def full(self) -> bool:
        """Whether every prompt has all ``T`` tokens (no padding)."""
        return min(self.lengths_host) == self.T

    def check_for(self, x: torch.Tensor, lengths) -> None:
        """A layer's check that this plan is for ``x [B, T, ...]`` and comes without ``lengths``."""
        if lengths is not None:
            raise ValueError("give lengths or plan, not both")
        if (len(self.lengths_host), self.T) != tuple(x.shape[:2]):
            raise ValueError(f"plan is for [{len(self.lengths_host)}, {self.T}] prompts, got {tuple(x.shape[:2])}")

    def start_phase(self, K: int) -> int | None:
        """The start's index in a mini-batch of ``K`` when the same for every sequence, else None."""
        phases = {p % K for p in self.starts_host}
        return phases.pop() if len(phases) == 1 else None


def lengths_on_host(lengths, B: int, T: int, min_len: int = 1) -> list[int]:
    """``lengths`` (a sequence or tensor of ``B`` integers in ``min_len..T``) read back to the host."""
    t = torch.as_tensor(lengths)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"lengths must be integers, got {t.dtype}")
    host = t.reshape(-1).tolist()
    if len(host) != B or not all(min_len <= n <= T for n in host):
        raise ValueError(f"lengths must be {B} values in {min_len}..{T}, got {host}")
    return host


def prefill_plan(positions: torch.Tensor, lengths, T: int) -> PrefillPlan:
    """Checks ``lengths`` (None: all ``T``) and ``positions [B]`` for a prefill of ``T`` tokens
    and returns its :class:`PrefillPlan` (a host sync)."""
    B = positions.shape[0]
    if B == 0:
        raise ValueError("nothing to prefill: the batch is empty")
    lengths_host = [T] * B if lengths is None else lengths_on_host(lengths, B, T)
    # the cache owns the positions: checked here, so decode steps need no host sync
    starts = positions.tolist()
    if min(starts) < 0 or max(starts) + T >= 2**31 - 1:
        raise ValueError(f"cache positions out of range: {min(starts)}..{max(starts)}")
    return PrefillPlan(T, lengths_host, torch.tensor(lengths_host, device=positions.device), starts)


class DecodeStep:
    """One greedy decode step on static buffers: ``ids [B]`` (the tokens to feed) -> logits
    ``[B, V]``, and the argmax written back into ``ids``, ready for the next call.

    With ``cg`` (CUDA only) the step is captured once in a CUDA graph and every call is a
    replay. The constructor first runs a few warm-up steps (for a capture on a side stream),
    so lazy initialisation (Triton compilation, cuBLAS workspaces, torch.compile) happens
    outside the capture and outside any timed step; they advance the cache, so the
    constructor ends with ``cache.reset()``: build the stepper *before* prefill.
    """

    def __init__(self, model, cache: InferenceCache, cg: bool = True, use_compile: bool = False,
                 n_warmup: int = 3):
        self.cache = cache
        self.ids = torch.zeros(cache.batch_size, dtype=torch.long, device=cache.positions.device)
        self.fn = torch.compile(model.step, dynamic=False) if use_compile else model.step
        self.cg = cg and cache.positions.is_cuda
        if cg and not self.cg:
            warnings.warn("CUDA graphs need a CUDA device; decoding eagerly", stacklevel=2)
        self.graph = None
        self.logits = None
        if self.cg:
            with torch.cuda.device(self.ids.device):  # capture (and replay) on the model's device's streams
                self._capture(n_warmup)
        else:
            for _ in range(n_warmup):  # compile kernels (and torch.compile) now, not in the first real step
                self._step()
        cache.reset()

    @torch.no_grad()
    def _step(self) -> torch.Tensor:
        logits = self.fn(self.ids, self.cache)
        self.ids.copy_(logits.argmax(-1))
        return logits

    def _capture(self, n_warmup: int) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(n_warmup):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()  # lives in the graph's pool; every replay rewrites it
        torch.cuda.synchronize()

    def __call__(self) -> torch.Tensor:
        if self.graph is None:
            return self._step()
        with torch.cuda.device(self.ids.device):
            self.graph.replay()
        return self.logits


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # [B, T + n_new]: the prompt (padding included) then the generated tokens
    generated: torch.Tensor  # [B, n_new]
    scores: list | None  # n_new logits [B, V] (fp32) when output_scores


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_length: int, cg: bool = True, lengths=None, state_dtype=None,
             use_compile: bool = False, output_scores: bool = False) -> GenerationOutput:
    """Greedy decoding of ``max_length - T`` new tokens per sequence after ``input_ids [B, T]``.

    ``lengths [B]``: ragged prompts, right-padded to ``T`` (sequence ``b`` continues after
    its first ``lengths[b]`` tokens). ``cg=False`` decodes eagerly (also the fallback off CUDA).
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a [B, T] tensor, got {getattr(input_ids, 'shape', input_ids)}")
    if not isinstance(max_length, int) or isinstance(max_length, bool):
        raise TypeError(f"max_length must be an int, got {type(max_length).__name__}")
    B, T = input_ids.shape
    n_new = max_length - T
    if n_new < 1:
        raise ValueError(f"max_length ({max_length}) must exceed the prompt length ({T})")
    cache = model.allocate_inference_cache(B, state_dtype=state_dtype)
    stepper = DecodeStep(model, cache, cg=cg, use_compile=use_compile)
    logits = model.prefill(input_ids, cache, lengths=lengths)
    generated = torch.empty(B, n_new, dtype=torch.long, device=input_ids.device)
    scores = [logits.to(torch.float32, copy=True)] if output_scores else None
    stepper.ids.copy_(logits.argmax(-1))
    generated[:, 0] = stepper.ids
    for i in range(1, n_new):
        logits = stepper()
        generated[:, i] = stepper.ids
        if output_scores:
            scores.append(logits.to(torch.float32, copy=True))  # the graph's buffer is rewritten next step
    return GenerationOutput(torch.cat([input_ids, generated], dim=1), generated, scores)
