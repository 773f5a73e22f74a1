from .fused import add_rms_norm, gated_layer_norm
from .naive import add_rms_norm_ref, gated_layer_norm_ref

__all__ = ["add_rms_norm", "gated_layer_norm", "add_rms_norm_ref", "gated_layer_norm_ref"]
