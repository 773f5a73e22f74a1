from .decode import qk_conv_rotary_step
from .naive import (apply_rotary_ref, causal_conv1d_prefill_ref, qk_conv_rotary_prefill_ref,
                    qk_conv_rotary_step_ref)
from .prefill import causal_conv1d_prefill, qk_conv_rotary_prefill

__all__ = ["qk_conv_rotary_step", "apply_rotary_ref", "qk_conv_rotary_step_ref", "causal_conv1d_prefill",
           "causal_conv1d_prefill_ref", "qk_conv_rotary_prefill", "qk_conv_rotary_prefill_ref"]
