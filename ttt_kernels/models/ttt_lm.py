"""TTT language model for decoding (no autograd): seeded random weights, prefill, step.

Block (pre-norm, the residual stream in fp32, each norm adding the previous output in):

    x = x + pre_conv(RMSNorm(x))     # causal depthwise conv, kernel 4 (ttt-1b's pre_conv)
    x = x + TTTLayer(RMSNorm(x))
    x = x + SwiGLU(RMSNorm(x))

then a final RMSNorm and the LM head, tied to the token embedding.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules.mlp import SwiGLU
from ..modules.norm import RMSNorm
from ..modules.ttt_layer import (TTTLayer, TTTLayerCache, conv_apply_full, conv_prefill_inputs, conv_step,
                                 prefill_plan)
from ..utils.generation import InferenceCache
from .config import TTTConfig, get_config

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass
class TTTBlockCache:
    pre_conv: torch.Tensor  # [B, D, k]: the pre-conv's last inputs
    mixer: TTTLayerCache

    def tensors(self) -> list[torch.Tensor]:
        return [self.pre_conv, *self.mixer.tensors()]


class TTTBlock(nn.Module):
    def __init__(self, config: TTTConfig, device=None, dtype=None):
        super().__init__()
        c, D = config, config.hidden_size
        kw = dict(device=device, dtype=dtype)
        self.conv_norm = RMSNorm(D, c.rms_norm_eps, **kw)
        self.pre_conv = nn.Conv1d(D, D, c.pre_conv_kernel, groups=D, bias=True, **kw)
        self.seq_norm = RMSNorm(D, c.rms_norm_eps, **kw)
        self.mixer = TTTLayer(D, c.num_attention_heads, c.inner_net, c.mini_batch_size, c.conv_kernel,
                              c.rope_theta, c.ttt_base_lr, **kw)
        self.ffn_norm = RMSNorm(D, c.rms_norm_eps, **kw)
        self.mlp = SwiGLU(D, c.intermediate_size, **kw)

    def allocate_inference_cache(self, batch, state_dtype, act_dtype, positions) -> TTTBlockCache:
        conv = torch.zeros(batch, self.pre_conv.in_channels, self.pre_conv.kernel_size[0], dtype=act_dtype,
                           device=self.pre_conv.weight.device)
        return TTTBlockCache(conv, self.mixer.allocate_inference_cache(batch, state_dtype, act_dtype, positions))

    def reset_inference_cache(self, cache: TTTBlockCache) -> None:
        cache.pre_conv.zero_()
        self.mixer.reset_inference_cache(cache.mixer)

    def step(self, hidden, residual, cache: TTTBlockCache):
        h, residual = self.conv_norm(hidden, residual, prenorm=True)
        h = conv_step(h, cache.pre_conv, self.pre_conv, fused=self.mixer.spec.kernel)
        h, residual = self.seq_norm(h, residual, prenorm=True)
        h = self.mixer.step(h, cache.mixer)
        h, residual = self.ffn_norm(h, residual, prenorm=True)
        return self.mlp(h), residual

    def prefill(self, hidden, residual, cache: TTTBlockCache, lengths: torch.Tensor):
        h, residual = self.conv_norm(hidden, residual, prenorm=True)
        h = conv_apply_full(conv_prefill_inputs(h, cache.pre_conv, lengths), self.pre_conv, h.dtype)
        h, residual = self.seq_norm(h, residual, prenorm=True)
        h = self.mixer.prefill(h, cache.mixer, lengths)
        h, residual = self.ffn_norm(h, residual, prenorm=True)
        return self.mlp(h), residual


class TTTLM(nn.Module):
    def __init__(self, config: TTTConfig, device=None, dtype=torch.float32, init: bool = True):
        super().__init__()
        self.config = config
        kw = dict(device=device, dtype=dtype)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, **kw)
        self.layers = nn.ModuleList(TTTBlock(config, **kw) for _ in range(config.num_hidden_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        if init:
            self._init_weights()
        self.requires_grad_(False)

    @classmethod
    def from_name(cls, name: str, device=None, dtype=torch.float32, **overrides) -> "TTTLM":
        """A named config (``ttt-1b``, ``ttt-tiny``, ...) with seeded random weights."""
        return cls(get_config(name, **overrides), device=device, dtype=dtype)

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Every parameter from one CPU generator (the same weights on every device): linears
        and the embedding ~ N(0, 0.02), inner-net matrices likewise with zero biases, convs as
        nn.Conv1d's default U(+-1/sqrt(kernel)), norms at identity, lr and token-index biases 0."""
        g = torch.Generator().manual_seed(self.config.seed)
        std = self.config.initializer_range

        def normal(p):
            p.copy_(torch.randn(p.shape, generator=g) * std)

        def uniform(p, bound):
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)

        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                uniform(m.weight, m.kernel_size[0] ** -0.5)
                uniform(m.bias, m.kernel_size[0] ** -0.5)
            elif isinstance(m, (nn.Linear, nn.Embedding)):
                normal(m.weight)
            elif isinstance(m, (RMSNorm, nn.LayerNorm)):
                m.weight.fill_(1.0)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, TTTLayer):
                for p in m.inner_params():
                    normal(p) if p.dim() == 3 else p.zero_()
                m.ttt_norm_weight.fill_(1.0)
                for p in (m.ttt_norm_bias, m.token_idx_bias, m.lr_bias):
                    p.zero_()

    # ---- inner net

    def set_inner_net(self, name: str) -> None:
        """Switch every layer's TTT op (same family: mlp_1 / mlp_2). Allocate caches after."""
        for blk in self.layers:
            blk.mixer.set_inner_net(name)
        self.config.inner_net = name

    # ---- cache

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def allocate_inference_cache(self, batch: int, state_dtype=None) -> InferenceCache:
        """Fresh states for ``batch`` sequences; the TTT state dtype defaults to the model's."""
        state_dtype = self.dtype if state_dtype is None else state_dtype
        positions = torch.zeros(batch, dtype=torch.int64, device=self.device)  # shared by every layer
        layers = [blk.allocate_inference_cache(batch, state_dtype, self.dtype, positions) for blk in self.layers]
        return InferenceCache(layers, positions, reset_fn=self.reset_inference_cache)

    @torch.no_grad()
    def reset_inference_cache(self, cache: InferenceCache) -> None:
        for blk, c in zip(self.layers, cache.layers):
            blk.reset_inference_cache(c)
        cache.positions.zero_()

    # ---- decode

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """``input_ids [B] -> logits [B, V]``, one token per sequence at ``cache.positions``,
        which it then advances by one. No host sync: safe to capture in a CUDA graph."""
        if input_ids.shape != cache.positions.shape:
            raise ValueError(f"input_ids must be [{cache.batch_size}], got {tuple(input_ids.shape)}")
        hidden, residual = F.embedding(input_ids, self.embed_tokens.weight), None
        for blk, c in zip(self.layers, cache.layers):
            hidden, residual = blk.step(hidden, residual, c)
        logits = F.linear(self.norm_f(hidden, residual), self.embed_tokens.weight)
        cache.positions.add_(1)  # once, after every layer read it
        return logits

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, cache: InferenceCache, lengths=None) -> torch.Tensor:
        """``input_ids [B, T]`` (right-padded to ``T`` when ``lengths [B]`` is given, each in 1..T)
        continuing from ``cache``. Returns each sequence's last prompt token's logits ``[B, V]``
        and leaves in ``cache`` exactly the state decode continues from (positions advanced by
        the lengths). A reference path: layer by layer, the TTT part token by token except
        for whole aligned mini-batches."""
        B, T = input_ids.shape
        if B != cache.batch_size or T < 1:
            raise ValueError(f"input_ids must be [{cache.batch_size}, T >= 1], got {tuple(input_ids.shape)}")
        # checks lengths and positions up front (each layer plans again; cheap next to a prefill)
        _, lengths_t, _, _ = prefill_plan(cache.positions, lengths, T, self.config.mini_batch_size)
        hidden, residual = F.embedding(input_ids, self.embed_tokens.weight), None
        for blk, c in zip(self.layers, cache.layers):
            hidden, residual = blk.prefill(hidden, residual, c, lengths_t)
        dev = input_ids.device
        rows, last = torch.arange(B, device=dev), lengths_t - 1
        logits = F.linear(self.norm_f(hidden[rows, last], residual[rows, last]), self.embed_tokens.weight)
        cache.positions.add_(lengths_t)
        return logits

    # ---- bytes a decode step must move (the roofline of the benchmarks)

    def decode_weight_bytes(self) -> int:
        """Weights a step reads: all but the inner nets' initial weights, which only seed the state."""
        seed = {id(p) for blk in self.layers for p in blk.mixer.inner_params()}
        return sum(p.numel() * p.element_size() for p in self.parameters() if id(p) not in seed)

    def decode_bytes_per_step(self, batch: int, state_dtype=None) -> int:
        """Per step: each layer's inner-net weights read once per (sequence, head) plus q, k, v, out
        (``decode_floor_bytes``), the mini-batch-end weight write amortised over K steps, and the
        model's weights."""
        from ..utils.benchmarking import decode_floor_bytes, inner_net_elements
        c = self.config
        sdt = self.dtype if state_dtype is None else state_dtype
        inner = self.layers[0].mixer.inner
        H, f = c.num_attention_heads, c.head_dim
        write = batch * H * inner_net_elements(inner, f) * sdt.itemsize / c.mini_batch_size
        per_layer = decode_floor_bytes(inner, batch, H, f, sdt, self.dtype) + write
        return int(c.num_hidden_layers * per_layer) + self.decode_weight_bytes()

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
    def from_pretrained(cls, path, device=None, dtype=None, inner_net: str | None = None) -> "TTTLM":
        """Load ``save_pretrained``'s directory; ``dtype`` defaults to the saved one,
        ``inner_net`` switches the TTT op (same family)."""
        from safetensors.torch import load_file
        with open(os.path.join(path, CONFIG_FILE)) as fh:
            config = TTTConfig.from_dict(json.load(fh))
        if inner_net is not None:
            from ..modules.ttt_layer import get_inner_net
            if get_inner_net(inner_net).inner != get_inner_net(config.inner_net).inner:
                raise ValueError(f"{inner_net} does not fit weights saved for {config.inner_net}")
            config.inner_net = inner_net
        tensors = load_file(os.path.join(path, WEIGHTS_FILE))
        dtype = tensors["embed_tokens.weight"].dtype if dtype is None else dtype
        model = cls(config, device=device, dtype=dtype, init=False)
        model.load_state_dict(tensors, strict=True)
        return model
