"""TTT-Linear prefill in the dual form, chunked by mini-batch (one launch per layer per prompt).

One program per (sequence, head) walks its prompt one mini-batch ("window") at a time,
keeping ``W, b`` on-chip from the first window to the last. Per window of ``K`` rows
(keys ``Kx``, queries ``Q``, all at the window's start weights ``W0``):

    G     = lr * ln_l2_grad(Kx W0 + b0, V - Kx)                       (tensor cores, [K, f])
    Z_bar = Q W0 + b0 - (eta_i * tril(Q Kx^T + 1)) G                  (the causal dual correction)
    out   = Q + LN(Z_bar)
    W0   <- W0 - eta_{K-1} Kx^T G,  b0 <- b0 - eta_{K-1} sum_rows(G)   (once per window)

so no gradient is ever materialised and the weights never leave the chip between
windows. They are rounded to the state dtype after every update, exactly as the decode
kernels store them, so prefill followed by decode equals decode of every token.

Any start and length: windows are whole mini-batches of absolute positions. A prompt
that starts mid-mini-batch takes that mini-batch's earlier rows from the state's cache;
one that ends mid-mini-batch leaves the weights at that mini-batch's start and writes
its rows so far to the cache, which is the state the decode kernels continue from.
Ragged prompts: each sequence stops at its own length.
"""

import torch
import triton
import triton.language as tl

from ..triton_utils import (FP_FUSION, causal_dual_weights, dot_config, finish_prefill_window, layer_norm_rows,
                            ln_l2_grad_rows, load_prefill_rows, on_input_device, prefill_program,
                            with_cached_rows)
from ..ttt_state import TTTDualState, check_prefill_args, prefill_strides


@triton.jit
def ttt_linear_prefill_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, pos_ptr, len_ptr, ln_w_ptr, ln_b_ptr, tib_ptr, out_ptr,
    W_ptr, b_ptr, kc_ptr, vc_ptr, lrc_ptr,
    sq_b, sq_t, sk_b, sk_t, sv_b, sv_t, T,
    H: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr,
):
    cols = tl.arange(0, BF)
    cm = cols < F  # real features (f = 96 runs in a 128-wide block)
    rows = tl.arange(0, K)
    bh, b, h, t0, n, n_win, eta, eta_last, gamma, beta = prefill_program(pos_ptr, len_ptr, tib_ptr, ln_w_ptr,
                                                                         ln_b_ptr, cols, cm, H, F, K)
    w_off = bh * F * F + cols[:, None] * F + cols[None, :]
    w_mask = cm[:, None] & cm[None, :]
    # kept on-chip in the state dtype: rounded to it after every update, as decode stores it
    W = tl.load(W_ptr + w_off, mask=w_mask, other=0.0)
    bias = tl.load(b_ptr + bh * F + cols, mask=cm, other=0.0)

    q, k, v, lr = load_prefill_rows(q_ptr, k_ptr, v_ptr, lr_ptr, b, h, rows - t0, n,
                                    sq_b, sq_t, sk_b, sk_t, sv_b, sv_t, T, cols, cm, H, F)
    k, v, lr = with_cached_rows(kc_ptr, vc_ptr, lrc_ptr, bh, t0, k, v, lr, cols, cm, F, K)
    for w in range(n_win):
        s = w * K + rows - t0
        # the next window's inputs are loaded now, so their latency hides behind this window's math
        q_n, k_n, v_n, lr_n = load_prefill_rows(q_ptr, k_ptr, v_ptr, lr_ptr, b, h, s + K, n,
                                                sq_b, sq_t, sk_b, sk_t, sv_b, sv_t, T, cols, cm, H, F)
        kd, qd, Wd = k.to(DOT_DTYPE), q.to(DOT_DTYPE), W.to(DOT_DTYPE)
        kf = k.to(tl.float32)
        b0 = bias.to(tl.float32)
        Z = tl.dot(kd, Wd, input_precision=DOT_PREC) + b0[None, :]
        G = ln_l2_grad_rows(Z, v.to(tl.float32) - kf, gamma, beta, cm, F) * lr[:, None]
        A = causal_dual_weights(tl.dot(qd, tl.trans(kd), input_precision=DOT_PREC), eta, K)
        z_bar = (tl.dot(qd, Wd, input_precision=DOT_PREC) + b0[None, :]
                 - tl.dot(A.to(DOT_DTYPE), G.to(DOT_DTYPE), input_precision=DOT_PREC))
        out = q.to(tl.float32) + layer_norm_rows(z_bar, gamma, beta, cm, F)
        # a window the prompt ends inside leaves the weights as they are (eta 0 adds exact zeros)
        eta_upd = tl.where(w * K + K - t0 <= n, eta_last, 0.0)
        W = tl.dot(tl.trans(kd), (-eta_upd * G).to(DOT_DTYPE), acc=W.to(tl.float32),
                   input_precision=DOT_PREC).to(W.dtype)
        bias = (b0 - eta_upd * tl.sum(G, axis=0)).to(bias.dtype)
        finish_prefill_window(out_ptr, out, kc_ptr, vc_ptr, lrc_ptr, k, v, lr, b, h, bh, s, n, T, cols, cm, H, F, K)
        q, k, v, lr = q_n, k_n, v_n, lr_n
    tl.store(W_ptr + w_off, W, mask=w_mask)
    tl.store(b_ptr + bh * F + cols, bias, mask=cm)


def _launch_config(f: int, state_dtype: torch.dtype) -> dict:
    # f = 64 with a 16-bit state: 4 warps at the compiler's register count (B=16, T=4096 on the
    # H100: 1.12 ms; capped at 128 registers, to fit the B*H = 512 programs in one wave, it
    # spills and takes 1.40 ms). Larger heads and fp32 states get 8 warps.
    # benchmarks/prefill_benchmark.py --sweep times the alternatives.
    if f <= 64 and state_dtype.itemsize == 2:
        return {"num_warps": 4, "num_stages": 1}
    return {"num_warps": 8, "num_stages": 1}


@on_input_device
def ttt_linear_prefill(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, state: TTTDualState, *, lengths=None,
                       out=None, check_positions=True, config=None) -> torch.Tensor:
    """TTT-Linear over whole prompts, fused; updates ``state`` in place and returns ``q + LN(z_bar)``.

    ``q, k, v [B, T, H, f]`` (each token's heads contiguous; batch and token strides free),
    ``lr [B, T, H]``, ``pos [B]`` (the prompts' absolute start positions; not advanced here),
    ``ln_weight, ln_bias [H, f]``, ``token_idx_bias [K]``, ``lengths [B]`` (ragged prompts:
    sequence ``b`` uses its first ``lengths[b]`` tokens; output rows past it are not written).
    ``config``: Triton launch options (``num_warps``, ``num_stages``, ``maxnreg``) for tuning.
    """
    B, T, H, f, K, lengths, out = check_prefill_args("mlp_1", q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias,
                                                     state, lengths, out, check_positions)
    W, b = state.weights
    # fp32 state: tf32x3 products, 5.77 -> 4.44 ms for B=16 x 4096 tokens on the H100 against exact fp32
    dot_dtype, dot_prec = dot_config(W.dtype, fp32_precision="tf32x3")
    ttt_linear_prefill_kernel[(B * H,)](
        q, k, v, lr, pos, lengths, ln_weight, ln_bias, token_idx_bias, out,
        W, b, state.k_cache, state.v_cache, state.lr_cache, *prefill_strides(q, k, v), T,
        H=H, F=f, BF=triton.next_power_of_2(f), K=K, DOT_DTYPE=dot_dtype, DOT_PREC=dot_prec,
        **(config or _launch_config(f, W.dtype)), **FP_FUSION,
    )
    return out
