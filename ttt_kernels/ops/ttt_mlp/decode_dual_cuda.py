"""TTT-MLP dual-form decode step on the hand-written CUDA kernel (csrc/ttt_mlp_decode_dual.cuh).

Same arguments, semantics and state layout as :func:`ttt_mlp_decode_dual` (Triton), W1 row-major
only (the Triton kernel also reads it hidden-major); head dims 64 and 128, mini-batches of at
most 16 tokens.
"""

import torch

from ..cuda_backend import check_supported
from ..ttt_state import TTTDualState, check_decode_args


def check_row_major_w1(state: TTTDualState) -> None:
    """The CUDA TTT-MLP kernels read W1 row-major (``[f, 4f]`` contiguous, what ``check_state``
    accepts besides hidden-major): refuse a hidden-major W1 before anything is written."""
    if not state.weights[0].is_contiguous():
        raise ValueError("state.weights[0]: the CUDA kernel reads W1 row-major, this state's W1 is hidden-major "
                         "(allocate it with TTTDualState.from_params(..., w1_hidden_major=False); a model's "
                         "cache after set_inner_net)")


def ttt_mlp_decode_dual_cuda(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, state: TTTDualState,
                             *, out=None, check_positions=True) -> torch.Tensor:
    """One TTT-MLP decode step, one launch; updates ``state`` in place and returns ``q + LN(z2_bar)``."""
    _, _, _, K, out = check_decode_args("mlp_2", TTTDualState, q, k, v, lr, pos, ln_weight, ln_bias,
                                        token_idx_bias, state, out, check_positions)
    check_row_major_w1(state)
    check_supported(q, K).ttt_mlp_decode_dual(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, out,
                                              *state.weights, state.k_cache, state.v_cache, state.lr_cache)
    return out
