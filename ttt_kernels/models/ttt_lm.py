"""TTT language model for decoding (no autograd): seeded random weights, prefill, step.

Block (pre-norm, the residual stream in fp32, each norm adding the previous output in):

    x = x + pre_conv(RMSNorm(x))     # causal depthwise conv, kernel 4 (ttt-1b's pre_conv)
    x = x + TTTLayer(RMSNorm(x))
    x = x + SwiGLU(RMSNorm(x))

then a final RMSNorm and the LM head, tied to the token embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..modules.mlp import SwiGLU
from ..modules.norm import RMSNorm
from ..modules.ttt_layer import TTTLayer, TTTLayerCache, conv_prefill, pre_conv_block_step
from ..ops.ttt_state import _check_tensor
from ..utils.generation import InferenceCache, PrefillPlan
from ._common import RecurrentLM, read_config
from .config import TTTConfig


@dataclass
class TTTBlockCache:
    pre_conv: torch.Tensor  # [B, k, D]: the pre-conv's last inputs (a ring, see ops.conv_rotary)
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
        conv = torch.zeros(batch, self.pre_conv.kernel_size[0], self.pre_conv.in_channels, dtype=act_dtype,
                           device=self.pre_conv.weight.device)
        return TTTBlockCache(conv, self.mixer.allocate_inference_cache(batch, state_dtype, act_dtype, positions))

    def reset_inference_cache(self, cache: TTTBlockCache) -> None:
        cache.pre_conv.zero_()
        self.mixer.reset_inference_cache(cache.mixer)

    @property
    def fused(self) -> bool:
        """Fused kernels around the TTT op too (norms, convs) when the op is a fused kernel."""
        return self.mixer.spec.kernel

    def step(self, hidden, residual, cache: TTTBlockCache):
        fused = self.fused
        h, residual = pre_conv_block_step(hidden, residual, cache.pre_conv, cache.mixer.positions, self.conv_norm,
                                          self.pre_conv, self.seq_norm, fused)
        h = self.mixer.step_checked(h, cache.mixer)  # the model checked every layer's cache
        h, residual = self.ffn_norm(h, residual, prenorm=True, fused=fused)
        return self.mlp(h, fused=fused), residual

    def prefill(self, hidden, residual, cache: TTTBlockCache, plan: PrefillPlan):
        fused = self.fused
        h, residual = self.conv_norm(hidden, residual, prenorm=True, fused=fused)
        h = conv_prefill(h, cache.pre_conv, self.pre_conv, cache.mixer.positions, plan.lengths, fused=fused)
        h, residual = self.seq_norm(h, residual, prenorm=True, fused=fused)
        h = self.mixer.prefill_checked(h, cache.mixer, plan=plan)
        h, residual = self.ffn_norm(h, residual, prenorm=True, fused=fused)
        return self.mlp(h, fused=fused), residual


class TTTLM(RecurrentLM):
    """Decode and prefill as :class:`RecurrentLM` runs them, block by block (how a TTT layer
    prefills is :meth:`TTTLayer.prefill`'s business)."""

    config_class = TTTConfig

    def __init__(self, config: TTTConfig, device=None, dtype=torch.float32, init: bool = True):
        kw = dict(device=device, dtype=dtype)
        super().__init__(config, (TTTBlock(config, **kw) for _ in range(config.num_hidden_layers)),
                         config.hidden_size, config.vocab_size, config.rms_norm_eps, **kw)
        if init:
            self._init_weights()
        self.requires_grad_(False)

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

    def _check_layer_cache(self, blk: TTTBlock, c, cache: InferenceCache) -> None:
        if not isinstance(c, TTTBlockCache):
            raise TypeError(f"a {type(c).__name__}, not a TTT block's cache")
        B, w = cache.batch_size, blk.pre_conv.weight
        _check_tensor("pre_conv", c.pre_conv, (B, blk.pre_conv.kernel_size[0], blk.pre_conv.in_channels),
                      (w.dtype,), w.device)
        blk.mixer.check_cache(c.mixer, B)
        if c.mixer.positions is not cache.positions:  # the model advances only its own
            raise ValueError("its positions are not the cache's: allocate it with allocate_inference_cache")

    def _check_prompt_length(self, T: int) -> None:
        self.layers[0].mixer.check_prompt_length(T)

    # ---- inner net

    def set_inner_net(self, name: str) -> None:
        """Switch every layer's TTT op (same family: mlp_1 / mlp_2). Allocate caches after."""
        for blk in self.layers:
            blk.mixer.set_inner_net(name)
        self.config.inner_net = name

    # ---- cache

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

    # ---- bytes a decode step must move (the roofline of the benchmarks)

    def state_seed_params(self) -> list[torch.Tensor]:
        """The inner nets' initial weights: they only seed the TTT state."""
        return [p for blk in self.layers for p in blk.mixer.inner_params()]

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

    # ---- load

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None, inner_net: str | None = None) -> TTTLM:
        """Load ``save_pretrained``'s directory; ``dtype`` defaults to the saved one,
        ``inner_net`` switches the TTT op (same family)."""
        config = read_config(path, TTTConfig)
        if inner_net is not None:
            from ..modules.ttt_layer import get_inner_net
            if get_inner_net(inner_net).inner != get_inner_net(config.inner_net).inner:
                raise ValueError(f"{inner_net} does not fit weights saved for {config.inner_net}")
            config.inner_net = inner_net
        return cls._load_pretrained(path, config, device=device, dtype=dtype)
