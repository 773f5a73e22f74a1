"""TTT-MLP prefill in the dual form, chunked by mini-batch (one launch per layer per prompt).

One program per (sequence, head) walks its prompt one mini-batch ("window") at a time,
as ``ttt_linear.chunk`` does (same windows, starts, ragged lengths and end state). Per
window, all at the window's start weights:

    Z1 = Kx W1 + b1,  X2 = gelu(Z1),  G2 = lr * ln_l2_grad(X2 W2 + b2, V - Kx)
    G1 = (G2 W2^T) * gelu'(Z1)
    X2_bar = gelu(Q W1 + b1 - (eta_i * tril(Q Kx^T + 1)) G1)
    out    = Q + LN(X2_bar W2 + b2 - (eta_i * tril(X2_bar X2^T + 1)) G2)
    W1 -= eta_{K-1} Kx^T G1,  W2 -= eta_{K-1} X2^T G2  (and the biases), rounded to the state dtype.

Where the weights fit (f <= 64 with a 16-bit state: W1 and W2 are 64 KB per head) they
stay on-chip from the first window to the last, the hidden dim in one tile, packed two
16-bit values per register between windows. Larger heads
and fp32 states keep them in the state tensors and walk the hidden dim in chunks twice per
window, like the decode kernel: the first pass needs every chunk for ``Z2`` (so ``G2``), the second forms ``G1``,
the outputs and the update chunk by chunk, writing each chunk's new weights in place.
"""

import torch
import triton
import triton.language as tl

from ..triton_utils import (FP_FUSION, causal_dual_weights, dot_config, fast_tanh, finish_prefill_window, gelu_tanh,
                            gelu_tanh_and_grad, layer_norm_rows, ln_l2_grad_rows, load_prefill_rows, prefill_program,
                            on_input_device, with_cached_rows)
from ..ttt_state import TTTDualState, check_prefill_args, prefill_strides
from .decode_dual import _load_chunk, _w1_offsets


@triton.jit
def _hidden(kd, W1, b1, DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr, FAST_TANH: tl.constexpr):
    """``X2 = gelu(Z1)`` and ``gelu'(Z1)`` of one hidden chunk, ``Z1 = Kx W1 + b1``."""
    Z1 = tl.dot(kd, W1.to(DOT_DTYPE), input_precision=DOT_PREC) + b1.to(tl.float32)[None, :]
    return gelu_tanh_and_grad(Z1, FAST_TANH)


@triton.jit
def _hidden_q(kd, qd, W1, b1, DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr, FAST_TANH: tl.constexpr):
    """:func:`_hidden` and the output path's ``Q W1 + b1``, from one operand copy of ``W1``."""
    X2, GP = _hidden(kd, W1, b1, DOT_DTYPE, DOT_PREC, FAST_TANH)
    return X2, GP, tl.dot(qd, W1.to(DOT_DTYPE), input_precision=DOT_PREC) + b1.to(tl.float32)[None, :]


@triton.jit
def _dual_hidden(kd, W1, b1, W2, X2, GP, ZQ1, G2, A1, eta_upd, DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr,
                 FAST_TANH: tl.constexpr):
    """One hidden chunk's share of the outputs, ``X2_bar W2`` and ``X2_bar X2^T``, and its
    updated ``W1, b1, W2`` (rounded to their dtype, that of the state); ``ZQ1 = Q W1 + b1``."""
    W2d = W2.to(DOT_DTYPE)
    X2d = X2.to(DOT_DTYPE)
    G2d = G2.to(DOT_DTYPE)
    b1f = b1.to(tl.float32)
    G1 = tl.dot(G2d, tl.trans(W2d), input_precision=DOT_PREC) * GP
    z1_bar = ZQ1 - tl.dot(A1.to(DOT_DTYPE), G1.to(DOT_DTYPE), input_precision=DOT_PREC)
    x2_bar = gelu_tanh(z1_bar, FAST_TANH).to(DOT_DTYPE)
    xw = tl.dot(x2_bar, W2d, input_precision=DOT_PREC)
    xx = tl.dot(x2_bar, tl.trans(X2d), input_precision=DOT_PREC)
    W1 = tl.dot(tl.trans(kd), (-eta_upd * G1).to(DOT_DTYPE), acc=W1.to(tl.float32),
                input_precision=DOT_PREC).to(W1.dtype)
    b1 = (b1f - eta_upd * tl.sum(G1, axis=0)).to(b1.dtype)
    W2 = tl.dot(tl.trans(X2d), (-eta_upd * G2).to(DOT_DTYPE), acc=W2.to(tl.float32),
                input_precision=DOT_PREC).to(W2.dtype)
    return xw, xx, W1, b1, W2


@triton.jit
def _pack2(W):
    """A 16-bit ``[R, C]`` tile as ``[R, C // 2]`` int32, two values per register: ptxas gives
    every 16-bit value a 32-bit register of its own, so on-chip fp16 weights would take
    as many registers as fp32 ones. 32-bit tiles pass through."""
    if W.dtype.primitive_bitwidth == 16:
        R: tl.constexpr = W.shape[0]
        C: tl.constexpr = W.shape[1]
        lo, hi = tl.split(tl.reshape(W, (R, C // 2, 2)))
        lo = lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        W = lo | (hi.to(tl.int16, bitcast=True).to(tl.int32) << 16)
    return W


@triton.jit
def _unpack2(P, dtype: tl.constexpr):
    """The inverse of :func:`_pack2` for a tile of ``dtype``."""
    if dtype.primitive_bitwidth == 16:
        R: tl.constexpr = P.shape[0]
        C: tl.constexpr = P.shape[1]
        lo = P.to(tl.int16).to(dtype, bitcast=True)
        hi = (P >> 16).to(tl.int16).to(dtype, bitcast=True)
        P = tl.reshape(tl.join(lo, hi), (R, 2 * C))
    return P


@triton.jit
def _store_chunk(W1_ptr, b1_ptr, W2_ptr, W1, b1, W2, bh, c0, cols, cm, W1_HM: tl.constexpr, F: tl.constexpr,
                 FH: tl.constexpr, BH: tl.constexpr):
    """Write back W1[:, c0:c0+BH], b1[c0:c0+BH], W2[c0:c0+BH, :] of head ``bh`` (the inverse of ``_load_chunk``)."""
    hid = c0 + tl.arange(0, BH)
    hm = hid < FH
    tl.store(W1_ptr + _w1_offsets(bh, hid, cols, F, FH, W1_HM), W1, mask=cm[:, None] & hm[None, :])
    tl.store(b1_ptr + bh * FH + hid, b1, mask=hm)
    tl.store(W2_ptr + bh * FH * F + hid[:, None] * F + cols[None, :], W2, mask=hm[:, None] & cm[None, :])


@triton.jit
def ttt_mlp_prefill_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, pos_ptr, len_ptr, ln_w_ptr, ln_b_ptr, tib_ptr, out_ptr,
    W1_ptr, b1_ptr, W2_ptr, b2_ptr, kc_ptr, vc_ptr, lrc_ptr,
    sq_b, sq_t, sk_b, sk_t, sv_b, sv_t, T,
    H: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, FH: tl.constexpr, BH: tl.constexpr, K: tl.constexpr,
    ON_CHIP: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr, FAST_TANH: tl.constexpr,
    W1_HM: tl.constexpr,
):
    cols = tl.arange(0, BF)
    cm = cols < F  # real features (f = 96 runs in a 128-wide block)
    rows = tl.arange(0, K)
    bh, b, h, t0, n, n_win, eta, eta_last, gamma, beta = prefill_program(pos_ptr, len_ptr, tib_ptr, ln_w_ptr,
                                                                         ln_b_ptr, cols, cm, H, F, K)
    if ON_CHIP:  # the whole hidden dim is one chunk (BH >= FH), held here across windows
        W1, b1, W2 = _load_chunk(W1_ptr, b1_ptr, W2_ptr, bh, 0, cols, cm, W1_HM, F, FH, BH)
        b1 = b1.to(W1.dtype)  # kept, like the weights, in the state dtype
        W1, W2 = _pack2(W1), _pack2(W2)
    b2 = tl.load(b2_ptr + bh * F + cols, mask=cm, other=0.0)

    q, k, v, lr = load_prefill_rows(q_ptr, k_ptr, v_ptr, lr_ptr, b, h, rows - t0, n,
                                    sq_b, sq_t, sk_b, sk_t, sv_b, sv_t, T, cols, cm, H, F)
    k, v, lr = with_cached_rows(kc_ptr, vc_ptr, lrc_ptr, bh, t0, k, v, lr, cols, cm, F, K)
    for w in range(n_win):
        s = w * K + rows - t0
        # the next window's inputs are loaded now, so their latency hides behind this window's math
        q_n, k_n, v_n, lr_n = load_prefill_rows(q_ptr, k_ptr, v_ptr, lr_ptr, b, h, s + K, n,
                                                sq_b, sq_t, sk_b, sk_t, sv_b, sv_t, T, cols, cm, H, F)
        kd, qd = k.to(DOT_DTYPE), q.to(DOT_DTYPE)
        target = v.to(tl.float32) - k.to(tl.float32)
        b2f = b2.to(tl.float32)
        A1 = causal_dual_weights(tl.dot(qd, tl.trans(kd), input_precision=DOT_PREC), eta, K)
        # a window the prompt ends inside leaves the weights as they are (eta 0 adds exact zeros)
        eta_upd = tl.where(w * K + K - t0 <= n, eta_last, 0.0)
        if ON_CHIP:
            W1, W2 = _unpack2(W1, b1.dtype), _unpack2(W2, b1.dtype)
            X2, GP, ZQ1 = _hidden_q(kd, qd, W1, b1, DOT_DTYPE, DOT_PREC, FAST_TANH)
            Z2 = tl.dot(X2.to(DOT_DTYPE), W2.to(DOT_DTYPE), input_precision=DOT_PREC) + b2f[None, :]
            G2 = ln_l2_grad_rows(Z2, target, gamma, beta, cm, F) * lr[:, None]
            xw, xx, W1, b1, W2 = _dual_hidden(kd, W1, b1, W2, X2, GP, ZQ1, G2, A1, eta_upd, DOT_DTYPE, DOT_PREC,
                                              FAST_TANH)
            W1, W2 = _pack2(W1), _pack2(W2)
        else:
            Z2 = tl.zeros((K, BF), dtype=tl.float32) + b2f[None, :]
            for c0 in range(0, FH, BH):
                W1c, b1c, W2c = _load_chunk(W1_ptr, b1_ptr, W2_ptr, bh, c0, cols, cm, W1_HM, F, FH, BH)
                X2, _ = _hidden(kd, W1c, b1c, DOT_DTYPE, DOT_PREC, FAST_TANH)
                Z2 += tl.dot(X2.to(DOT_DTYPE), W2c.to(DOT_DTYPE), input_precision=DOT_PREC)
            G2 = ln_l2_grad_rows(Z2, target, gamma, beta, cm, F) * lr[:, None]
            xw = tl.zeros((K, BF), dtype=tl.float32)
            xx = tl.zeros((K, K), dtype=tl.float32)
            for c0 in range(0, FH, BH):
                W1c, b1c, W2c = _load_chunk(W1_ptr, b1_ptr, W2_ptr, bh, c0, cols, cm, W1_HM, F, FH, BH)
                b1c = b1c.to(W1c.dtype)
                X2, GP, ZQ1 = _hidden_q(kd, qd, W1c, b1c, DOT_DTYPE, DOT_PREC, FAST_TANH)
                xw_c, xx_c, W1c, b1c, W2c = _dual_hidden(kd, W1c, b1c, W2c, X2, GP, ZQ1, G2, A1, eta_upd,
                                                         DOT_DTYPE, DOT_PREC, FAST_TANH)
                xw += xw_c
                xx += xx_c
                _store_chunk(W1_ptr, b1_ptr, W2_ptr, W1c, b1c, W2c, bh, c0, cols, cm, W1_HM, F, FH, BH)
            tl.debug_barrier()  # the next window reads weights other threads of this program wrote
        A2 = causal_dual_weights(xx, eta, K)
        z2_bar = xw + b2f[None, :] - tl.dot(A2.to(DOT_DTYPE), G2.to(DOT_DTYPE), input_precision=DOT_PREC)
        out = q.to(tl.float32) + layer_norm_rows(z2_bar, gamma, beta, cm, F)
        b2 = (b2f - eta_upd * tl.sum(G2, axis=0)).to(b2.dtype)
        finish_prefill_window(out_ptr, out, kc_ptr, vc_ptr, lrc_ptr, k, v, lr, b, h, bh, s, n, T, cols, cm, H, F, K)
        q, k, v, lr = q_n, k_n, v_n, lr_n
    if ON_CHIP:
        W1, W2 = _unpack2(W1, b1.dtype), _unpack2(W2, b1.dtype)
        _store_chunk(W1_ptr, b1_ptr, W2_ptr, W1, b1, W2, bh, 0, cols, cm, W1_HM, F, FH, BH)
    tl.store(b2_ptr + bh * F + cols, b2, mask=cm)


# On-chip weights up to 64 KB per head: f = 64 with a 16-bit state (W1, W2 one 64x256 and
# one 256x64 tile, packed two values per register: 64 registers per thread on 8 warps).
# Larger ones would live in local memory.
_MAX_ON_CHIP_BYTES = 64 * 1024


def _launch_config(on_chip: bool) -> dict:
    # on-chip: one program per SM (ptxas still spills ~200 B per thread at 8 warps, ~1 KB with the
    # weights unpacked: 9.19 vs 10.89 ms at B=16, T=4096 on the H100);
    # streamed: the decode kernel's 64-wide hidden chunks on 4 warps.
    # benchmarks/prefill_benchmark.py --sweep times the alternatives.
    return {"num_warps": 8 if on_chip else 4, "num_stages": 1}


@on_input_device
def ttt_mlp_prefill(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, state: TTTDualState, *, lengths=None,
                    out=None, check_positions=True, config=None) -> torch.Tensor:
    """TTT-MLP over whole prompts, fused; updates ``state`` in place and returns ``q + LN(z2_bar)``.

    Arguments as :func:`ttt_kernels.ops.ttt_linear.ttt_linear_prefill`. ``config``: Triton
    launch options for tuning, plus ``on_chip`` (bool: weights held on-chip, or streamed
    from the state chunk by chunk; default by size) and ``hidden_chunk`` (the streamed chunk).
    """
    B, T, H, f, K, lengths, out = check_prefill_args("mlp_2", q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias,
                                                     state, lengths, out, check_positions)
    W1, b1, W2, b2 = state.weights
    FH = 4 * f
    opts = dict(config or {})
    on_chip = opts.pop("on_chip", 2 * f * triton.next_power_of_2(FH) * W1.element_size() <= _MAX_ON_CHIP_BYTES)
    hidden_chunk = opts.pop("hidden_chunk", 64)
    BH = triton.next_power_of_2(FH) if on_chip else hidden_chunk
    opts = opts or _launch_config(on_chip)
    # fp32 state: exact fp32 products; tf32x3 spilled 4.7 KB per thread here and ran 6.3x slower
    # (H100, B=16 x 4096 tokens)
    dot_dtype, dot_prec = dot_config(W1.dtype)
    ttt_mlp_prefill_kernel[(B * H,)](
        q, k, v, lr, pos, lengths, ln_weight, ln_bias, token_idx_bias, out,
        W1, b1, W2, b2, state.k_cache, state.v_cache, state.lr_cache, *prefill_strides(q, k, v), T,
        H=H, F=f, BF=triton.next_power_of_2(f), FH=FH, BH=BH, K=K, ON_CHIP=on_chip,
        DOT_DTYPE=dot_dtype, DOT_PREC=dot_prec, FAST_TANH=fast_tanh(W1.dtype), W1_HM=not W1.is_contiguous(),
        **opts, **FP_FUSION,
    )
    return out
