from .fused import add_rms_norm, gated_layer_norm, silu_mul
from .naive import add_rms_norm_ref, gated_layer_norm_ref, silu_mul_ref

__all__ = ["add_rms_norm", "gated_layer_norm", "silu_mul", "add_rms_norm_ref", "gated_layer_norm_ref", "silu_mul_ref"]
