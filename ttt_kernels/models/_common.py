"""What the TTT and Mamba language models share.

Both are a token embedding, a stack of pre-norm blocks, a final RMSNorm and an LM head
tied to the embedding. The residual stream is fp32: each block's first RMSNorm adds the
previous block's output into it (``RMSNorm(x, residual, prenorm=True)``), so a block
maps ``(hidden, residual) -> (hidden, residual)``. On top of that this module gives the
decode API of :mod:`ttt_kernels.utils.generation` (``prefill`` / ``step``) and
save/load of a local directory (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules.norm import RMSNorm
from ..utils.generation import InferenceCache, prefill_plan
from .config import get_config

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def _with_context(e: Exception, where: str) -> Exception:
    """A TypeError or ValueError like ``e`` (subclasses such as JSONDecodeError take other
    arguments) whose message starts with ``where``."""
    return (TypeError if isinstance(e, TypeError) else ValueError)(f"{where}: {e}")


def read_config(path, config_cls):
    """The config ``save_pretrained`` wrote into ``path``."""
    file = os.path.join(path, CONFIG_FILE)
    with open(file) as fh:
        try:
            return config_cls.from_dict(json.load(fh))
        except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
            raise _with_context(e, file) from None


class RecurrentLM(nn.Module):
    """Base of the LMs. A subclass sets ``config_class``, passes its blocks to ``__init__``
    and implements ``allocate_inference_cache``; each block has

        step(hidden [B, D], residual, cache_layer) -> (hidden, residual)
        prefill(hidden [B, T, D], residual, cache_layer, plan: PrefillPlan) -> (hidden, residual)
        fused: bool  (its norms run as fused kernels; the final norm follows the last block)

    Logits cover ``config.vocab_size`` tokens; embedding rows past it (padding for aligned
    GEMMs) take part in the LM-head GEMM but never in the output.
    """

    config_class: type

    def __init__(self, config, layers, d_model: int, vocab_rows: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.config = config
        kw = dict(device=device, dtype=dtype)
        self.embed_tokens = nn.Embedding(vocab_rows, d_model, **kw)
        self.layers = nn.ModuleList(layers)
        self.norm_f = RMSNorm(d_model, eps, **kw)

    @classmethod
    def from_name(cls, name: str, device=None, dtype=torch.float32, **overrides):
        """A named config (``ttt-1b``, ``mamba-1.4b``, ``*-tiny``, ...) with seeded random weights."""
        config = get_config(name, **overrides)
        if not isinstance(config, cls.config_class):
            raise ValueError(f"{name!r} is a {type(config).__name__}, not a model for {cls.__name__}")
        return cls(config, device=device, dtype=dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    # ---- decode

    def _check_cache(self, cache) -> None:
        """Every layer's state before any layer is stepped (the blocks then run unchecked)."""
        if not isinstance(cache, InferenceCache):
            raise TypeError(f"cache must be an InferenceCache, got {type(cache).__name__}")
        if len(cache.layers) != len(self.layers):
            raise ValueError(f"cache has {len(cache.layers)} layers, the model {len(self.layers)}: "
                             "allocate it with this model's allocate_inference_cache")
        for i, (blk, c) in enumerate(zip(self.layers, cache.layers)):
            try:
                self._check_layer_cache(blk, c, cache)
            except (TypeError, ValueError) as e:
                raise _with_context(e, f"cache layer {i}") from None

    def _check_layer_cache(self, blk, c, cache) -> None:
        """One block's state ``c`` in ``cache`` (the subclass knows its layout)."""
        raise NotImplementedError

    def _check_prompt_length(self, T: int) -> None:
        """A prompt of ``T`` tokens, before any layer runs (a subclass may limit it)."""

    @staticmethod
    def _check_ids(input_ids, dims: int) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != dims:
            raise ValueError(f"input_ids must be a {dims}-d tensor, got {getattr(input_ids, 'shape', input_ids)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be int64 or int32, got {input_ids.dtype}")

    def _logits(self, hidden, residual) -> torch.Tensor:
        logits = F.linear(self.norm_f(hidden, residual, fused=self.layers[-1].fused), self.embed_tokens.weight)
        return logits[..., :self.config.vocab_size]

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """``input_ids [B] -> logits [B, V]``, one token per sequence at ``cache.positions``,
        which it then advances by one. No host sync: safe to capture in a CUDA graph (token
        ids are not range-checked, which would need one)."""
        self._check_ids(input_ids, 1)
        self._check_cache(cache)
        if input_ids.shape != cache.positions.shape:
            raise ValueError(f"input_ids must be [{cache.batch_size}], got {tuple(input_ids.shape)}")
        hidden, residual = F.embedding(input_ids, self.embed_tokens.weight), None
        for blk, c in zip(self.layers, cache.layers):
            hidden, residual = blk.step(hidden, residual, c)
        logits = self._logits(hidden, residual)
        cache.positions.add_(1)  # once, after every layer read it
        return logits

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, cache: InferenceCache, lengths=None) -> torch.Tensor:
        """``input_ids [B, T]`` (right-padded to ``T`` when ``lengths [B]`` is given, each in 1..T)
        continuing from ``cache``. Returns each sequence's last prompt token's logits ``[B, V]``
        and leaves in ``cache`` exactly the state decode continues from (positions advanced by
        the lengths). Everything is checked before any state is written."""
        self._check_ids(input_ids, 2)
        self._check_cache(cache)
        B, T = input_ids.shape
        if B != cache.batch_size or T < 1:
            raise ValueError(f"input_ids must be [{cache.batch_size}, T >= 1], got {tuple(input_ids.shape)}")
        self._check_prompt_length(T)
        # checks lengths and positions: the prefill's one host sync (the layers take the plan)
        plan = prefill_plan(cache.positions, lengths, T)
        hidden, residual = F.embedding(input_ids, self.embed_tokens.weight), None
        for blk, c in zip(self.layers, cache.layers):
            hidden, residual = blk.prefill(hidden, residual, c, plan)
        rows, last = torch.arange(B, device=input_ids.device), plan.lengths - 1
        logits = self._logits(hidden[rows, last], residual[rows, last])
        cache.positions.add_(plan.lengths)
        return logits

    # ---- bytes a decode step must move (the benchmarks' roofline)

    def state_seed_params(self) -> list[torch.Tensor]:
        """Parameters a decode step never reads (they only initialise the state)."""
        return []

    def decode_weight_bytes(self) -> int:
        """Weights a step reads: every parameter but ``state_seed_params``; the embedding
        counts whole, as the tied LM head reads it all."""
        seed = {id(p) for p in self.state_seed_params()}
        return sum(p.numel() * p.element_size() for p in self.parameters() if id(p) not in seed)

    # ---- save / load

    def save_pretrained(self, path) -> None:
        from safetensors.torch import save_file
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, CONFIG_FILE), "w") as fh:
            json.dump(self.config.to_dict(), fh, indent=1)
        # the LM head is the embedding (tied), so it is stored once
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  os.path.join(path, WEIGHTS_FILE))

    @classmethod
    def _load_pretrained(cls, path, config, device=None, dtype=None):
        """The model of ``config`` with ``save_pretrained``'s weights from ``path``; ``dtype``
        defaults to the saved one (parameters kept in fp32 by design stay fp32)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        file = os.path.join(path, WEIGHTS_FILE)
        try:
            tensors = load_file(file)
        except SafetensorError as e:
            raise ValueError(f"{file} is not a readable safetensors file: {e}") from None
        dtype = tensors["embed_tokens.weight"].dtype if dtype is None and "embed_tokens.weight" in tensors else dtype
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
        model = cls(config, device=device, dtype=dtype, init=False)
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise ValueError(f"the weights in {file} do not fit its config.json: {e}") from None
        return model
