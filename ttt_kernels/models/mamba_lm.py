"""Mamba (v1) language model for decoding (no autograd): the baseline of the TTT LMs.

mamba-ssm's ``MambaLMHeadModel`` layout (RMSNorm, residual in fp32, tied embeddings,
no MLP), on the same skeleton, cache conventions and generation as the TTT LMs:

    x = x + Mamba(RMSNorm(x))       # per block
    logits = RMSNorm(x) @ embedding^T

The decode state per layer is a ``MambaLayerCache``: the ring ``conv_state [B, d_conv,
d_inner]`` in the activation dtype, ``ssm_state [B, d_inner, d_state]`` fp32 by default, and
the model's shared positions.
The step runs the fused Triton conv + SSM kernels (``use_triton``, default) or the
PyTorch reference step; prefill runs the reference scan.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..modules.mamba import Mamba
from ..modules.norm import RMSNorm
from ..utils.generation import InferenceCache
from ._common import RecurrentLM, read_config
from .config import MambaConfig


class MambaBlock(nn.Module):
    def __init__(self, config: MambaConfig, seed: int, device=None, dtype=None, init: bool = True):
        super().__init__()
        c = config
        self.norm = RMSNorm(c.d_model, c.rms_norm_eps, device=device, dtype=dtype)
        self.mixer = Mamba(c.d_model, c.d_state, c.d_conv, c.expand, c.dt_rank, seed=seed, device=device,
                           dtype=dtype, use_triton=c.use_triton, init=init)

    @property
    def fused(self) -> bool:
        """The norm fused as well when the step runs the fused kernels."""
        return self.mixer.use_triton

    def step(self, hidden, residual, cache):
        h, residual = self.norm(hidden, residual, prenorm=True, fused=self.fused)
        return self.mixer.step_checked(h, cache), residual  # the model checked every layer's cache

    def prefill(self, hidden, residual, cache, plan):
        h, residual = self.norm(hidden, residual, prenorm=True, fused=self.fused)
        return self.mixer.prefill_checked(h, cache, plan=plan), residual


class MambaLM(RecurrentLM):
    config_class = MambaConfig

    def __init__(self, config: MambaConfig, device=None, dtype=torch.float32, init: bool = True):
        # one CPU generator seeds everything: the same weights on every device
        g = torch.Generator().manual_seed(config.seed)
        seeds = torch.randint(0, 2**62, (config.n_layer,), generator=g).tolist()
        blocks = [MambaBlock(config, s, device=device, dtype=dtype, init=init) for s in seeds]
        super().__init__(config, blocks, config.d_model, config.padded_vocab_size, config.rms_norm_eps,
                         device=device, dtype=dtype)
        if init:
            self._init_weights(g)
        self.requires_grad_(False)

    @torch.no_grad()
    def _init_weights(self, g: torch.Generator) -> None:
        """mamba-ssm's: the mixers as :class:`Mamba` draws them, the embedding ~ N(0, 0.02), and
        each out_proj scaled by 1/sqrt(n_layer) so the fp32 residual sum stays O(1) over depth."""
        w = self.embed_tokens.weight
        w.copy_(torch.randn(w.shape, generator=g) * self.config.initializer_range)
        for blk in self.layers:
            blk.mixer.out_proj.weight.div_(math.sqrt(self.config.n_layer))

    def allocate_inference_cache(self, batch: int, state_dtype=None) -> InferenceCache:
        """Zero states for ``batch`` sequences; the SSM state is fp32 unless ``state_dtype``
        says otherwise. ``reset()`` zeroes them in place."""
        state_dtype = torch.float32 if state_dtype is None else state_dtype
        positions = torch.zeros(batch, dtype=torch.int64, device=self.device)
        layers = [blk.mixer.allocate_inference_cache(batch, state_dtype=state_dtype, positions=positions)
                  for blk in self.layers]
        return InferenceCache(layers, positions)

    def _check_layer_cache(self, blk: MambaBlock, c, cache: InferenceCache) -> None:
        blk.mixer.check_cache(c, cache.batch_size)
        if c.positions is not cache.positions:  # the model advances only its own
            raise ValueError("its positions are not the cache's: allocate it with allocate_inference_cache")

    def decode_bytes_per_step(self, batch: int, state_dtype=None) -> int:
        """Per step: each layer's states read and written plus x, z, y and x_proj's output
        (``Mamba.step_bytes``), and the model's weights read once. mamba-1.4b, fp16, fp32
        state: 26.7 MB per sequence (its 12.6 MB of SSM state twice, and of its 1.6 MB ring of
        conv inputs three quarters read and one quarter written) + 1.2 MB of activations, and
        2.68 GB of weights."""
        state_dtype = torch.float32 if state_dtype is None else state_dtype
        layers = sum(blk.mixer.step_bytes(batch, state_dtype, weights=False) for blk in self.layers)
        return layers + self.decode_weight_bytes()

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None, use_triton: bool | None = None) -> MambaLM:
        """Load ``save_pretrained``'s directory; ``dtype`` defaults to the saved one (A_log and
        D stay fp32), ``use_triton`` overrides the saved choice of step."""
        config = read_config(path, MambaConfig)
        if use_triton is not None:
            config.use_triton = use_triton
        return cls._load_pretrained(path, config, device=device, dtype=dtype)
