"""TTT-MLP prefill on the hand-written CUDA kernel (csrc/ttt_mlp_prefill.cu).

Same arguments, semantics and end state as :func:`ttt_mlp_prefill` (Triton), for the shape the
kernel keeps on-chip: head dim 64, mini-batch 16, a float16 or bfloat16 state, W1 and W2 in
shared memory for the whole prompt. :func:`cuda_prefill_supported` says whether a call fits.
"""

from __future__ import annotations

import torch

from ..cuda_backend import check_supported
from ..ttt_state import TTTDualState, check_prefill_args


def _rows_aligned(x: torch.Tensor) -> bool:
    """Every [f] row of ``x [B, T, H, f]`` starts on 16 bytes (the kernel copies 16 bytes at a time)."""
    return all((n * x.element_size()) % 16 == 0 for n in (x.storage_offset(), x.stride(0), x.stride(1)))


def cuda_prefill_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: TTTDualState) -> str | None:
    """None when :func:`ttt_mlp_prefill_cuda` takes these prompts and state, else why not
    (shapes, dtypes and alignment only; the arguments are checked by the op)."""
    if q.shape[-1] != 64 or state.k_cache.shape[2] != 16:
        return (f"the CUDA prefill kernel takes head dim 64 and mini-batch 16, got {q.shape[-1]} and "
                f"{state.k_cache.shape[2]}")
    if state.weights[0].dtype not in (torch.float16, torch.bfloat16):
        return f"the CUDA prefill kernel takes a float16 or bfloat16 state, got {state.weights[0].dtype}"
    if not state.weights[0].is_contiguous():
        return "the CUDA prefill kernel reads W1 row-major, this state's W1 is hidden-major"
    if not all(_rows_aligned(x) for x in (q, k, v)):
        return "the CUDA prefill kernel needs every q, k, v row 16-byte aligned (storage offset and strides)"
    return None


def ttt_mlp_prefill_cuda(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, state: TTTDualState, *, lengths=None,
                         out=None, check_positions=True) -> torch.Tensor:
    """TTT-MLP over whole prompts in one CUDA launch; updates ``state`` in place and returns
    ``q + LN(z2_bar)``. Arguments as :func:`ttt_kernels.ops.ttt_mlp.ttt_mlp_prefill`."""
    B, T, H, f, K, lengths, out = check_prefill_args("mlp_2", q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias,
                                                     state, lengths, out, check_positions)
    reason = cuda_prefill_supported(q, k, v, state)
    if reason is not None:
        raise ValueError(f"{reason} (ttt_mlp_prefill covers every case)")
    check_supported(q, K).ttt_mlp_prefill(q, k, v, lr, pos, lengths, ln_weight, ln_bias, token_idx_bias, out,
                                          *state.weights, state.k_cache, state.v_cache, state.lr_cache)
    return out
