from .decode import causal_conv1d_update, mamba_step, selective_state_update
from .naive import (causal_conv1d_ring_update_ref, causal_conv1d_update_ref, mamba_scan_ref, mamba_step_ref,
                    ring_store, ring_window, selective_state_update_ref, split_x_db)

__all__ = ["causal_conv1d_update", "mamba_step", "selective_state_update", "causal_conv1d_ring_update_ref",
           "causal_conv1d_update_ref", "mamba_scan_ref", "mamba_step_ref", "ring_store", "ring_window",
           "selective_state_update_ref", "split_x_db"]
