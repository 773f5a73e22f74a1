"""Configurations of the TTT language models (sizes of the TTT paper's models)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class TTTConfig:
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TTTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TTTConfig fields: {unknown}")
        return cls(**d)


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


def get_config(name: str, **overrides) -> TTTConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown TTT config {name!r}; known: {sorted(CONFIGS)}")
    return TTTConfig(**{**CONFIGS[name], **overrides})
