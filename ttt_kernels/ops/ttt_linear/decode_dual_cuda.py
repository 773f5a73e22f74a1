"""TTT-Linear dual-form decode step on the hand-written CUDA kernel (csrc/ttt_linear_decode_dual.cu).

Same arguments, semantics and state layout as :func:`ttt_linear_decode_dual` (Triton);
head dims 64 and 128, mini-batches of at most 16 tokens.
"""

import torch

from ..cuda_backend import check_supported
from ..ttt_state import TTTDualState, check_decode_args


def ttt_linear_decode_dual_cuda(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, state: TTTDualState,
                                *, out=None, check_positions=True) -> torch.Tensor:
    """One TTT-Linear decode step, one launch; updates ``state`` in place and returns ``q + LN(z_bar)``."""
    _, _, _, K, out = check_decode_args("mlp_1", TTTDualState, q, k, v, lr, pos, ln_weight, ln_bias,
                                        token_idx_bias, state, out, check_positions)
    check_supported(q, K).ttt_linear_decode_dual(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, out,
                                                 *state.weights, state.k_cache, state.v_cache, state.lr_cache)
    return out
