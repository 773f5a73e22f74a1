from .decode import TTTStepInputs, pre_conv_step, ttt_step_inputs
from .naive import (apply_rotary_ref, causal_conv1d_prefill_ref, pre_conv_step_ref, qk_conv_rotary_prefill_ref,
                    ring_store, ring_window, ttt_lr_ref, ttt_step_inputs_ref)
from .prefill import causal_conv1d_prefill, qk_conv_rotary_prefill

__all__ = ["TTTStepInputs", "pre_conv_step", "pre_conv_step_ref", "ttt_step_inputs", "ttt_step_inputs_ref",
           "ttt_lr_ref",
           "apply_rotary_ref", "causal_conv1d_prefill", "causal_conv1d_prefill_ref", "qk_conv_rotary_prefill",
           "qk_conv_rotary_prefill_ref", "ring_window", "ring_store"]
