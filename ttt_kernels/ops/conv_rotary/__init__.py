from .decode import qk_conv_rotary_step
from .naive import apply_rotary_ref, qk_conv_rotary_step_ref

__all__ = ["qk_conv_rotary_step", "apply_rotary_ref", "qk_conv_rotary_step_ref"]
