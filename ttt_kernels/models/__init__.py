"""Language models for decoding: TTT LMs and the Mamba baseline, built from named configs."""

from .config import CONFIGS, MAMBA_CONFIGS, MambaConfig, TTTConfig, get_config
from .mamba_lm import MambaLM
from .ttt_lm import TTTLM

__all__ = ["CONFIGS", "MAMBA_CONFIGS", "TTTLM", "MambaConfig", "MambaLM", "TTTConfig", "get_config"]
