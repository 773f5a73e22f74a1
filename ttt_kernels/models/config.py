"""Configurations of the language models: the TTT paper's sizes and Mamba (v1) baselines."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


# a field's annotation -> the values it takes (bool is an int to Python, never a size here)
_FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "int | None": (int, type(None))}


class _ConfigIO:
    """JSON round trip of a config dataclass (``save_pretrained`` / ``from_pretrained``), with
    each field's type checked (a config file read back is user input)."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v, types = getattr(self, f.name), _FIELD_TYPES[f.type]
            if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
                raise TypeError(f"{type(self).__name__}.{f.name} must be {f.type}, got {v!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise TypeError(f"a {cls.__name__} is read from a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
        return cls(**d)


@dataclass
class TTTConfig(_ConfigIO):
    hidden_size: int = 2048
    intermediate_size: int = 5504
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    vocab_size: int = 32000
    mini_batch_size: int = 16  # TTT mini-batch K; rotary positions are taken mod K too
    conv_kernel: int = 4  # the q and k convs
    pre_conv_kernel: int = 4  # the conv on the hidden stream before each TTT block
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    ttt_base_lr: float = 1.0
    initializer_range: float = 0.02
    inner_net: str = "mlp_2_dual"  # which TTT op runs; the weights depend only on mlp_1 / mlp_2
    seed: int = 0  # of the random init

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class MambaConfig(_ConfigIO):
    """Mamba (v1) LM, mamba-ssm's ``MambaLMHeadModel`` layout: RMSNorm, residual in fp32,
    tied embeddings, no MLP."""
    d_model: int = 2048
    n_layer: int = 48
    vocab_size: int = 32000
    pad_vocab_size_multiple: int = 8  # embedding rows, so the LM-head GEMM stays aligned
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # ceil(d_model / 16) when None (or "auto", as mamba-ssm's configs say)
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_triton: bool = True  # the fused Triton step; False: the PyTorch reference step
    seed: int = 0  # of the random init

    def __post_init__(self):
        if self.dt_rank == "auto":
            self.dt_rank = None
        super().__post_init__()

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return math.ceil(self.vocab_size / m) * m

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model


_1B = dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=32)

CONFIGS = {
    "ttt-125m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12),
    "ttt-350m": dict(hidden_size=1024, intermediate_size=2736, num_hidden_layers=24, num_attention_heads=16),
    "ttt-760m": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
    "ttt-1b": _1B,
    "ttt-profile": {**_1B, "num_hidden_layers": 1},  # one 1B layer: short profiler traces
    "ttt-tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                     vocab_size=512),  # tests and CPU functional runs
}

# mamba-ssm's model sizes (their 50277-token vocabulary replaced by ours, 32000)
MAMBA_CONFIGS = {
    "mamba-130m": dict(d_model=768, n_layer=24),
    "mamba-370m": dict(d_model=1024, n_layer=48),
    "mamba-790m": dict(d_model=1536, n_layer=48),
    "mamba-1.4b": dict(d_model=2048, n_layer=48),
    "mamba-tiny": dict(d_model=128, n_layer=2),  # tests and CPU functional runs
}


def get_config(name: str, **overrides) -> TTTConfig | MambaConfig:
    """The named config (a ``TTTConfig`` for ``ttt-*``, a ``MambaConfig`` for ``mamba-*``)."""
    for table, cls in ((CONFIGS, TTTConfig), (MAMBA_CONFIGS, MambaConfig)):
        if name in table:
            return cls(**{**table[name], **overrides})
    raise ValueError(f"unknown model config {name!r}; known: {sorted([*CONFIGS, *MAMBA_CONFIGS])}")
