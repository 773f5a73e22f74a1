"""Fused TTT-MLP decode step in the dual form (one launch per layer per token).

One program per (sequence, head). It reads ``W1, W2`` once, rebuilds the mini-batch
so far (cached ``k_j, v_j, lr_j`` for ``j < t``, the current token at row ``t``) and
recomputes the rows' activations and gradients at the mini-batch's start weights
with tensor-core products (16 rows), then

    z1_bar = q W1 + b1 - eta_t sum_j (q.k_j + 1) lr_j g1_j,   x2_bar = gelu(z1_bar)
    z2_bar = x2_bar W2 + b2 - eta_t sum_j (x2_bar.x2_j + 1) lr_j g2_j

without materialising any weight gradient. At the mini-batch's last token it applies
the rank-K update to the weights; otherwise it appends the token to the cache.

The hidden dim is walked in chunks, twice: the first pass needs every chunk to get
``z2`` (and so ``g2``), the second forms ``g1`` and the outputs chunk by chunk; its
reads of a chunk come from L2. Small chunks keep registers low enough for several
programs per SM, which measured faster than holding a whole head in one tile.

W1 may be stored row-major (``[f, 4f]`` per head) or hidden-major (``[4f, f]``, see
:func:`w1_hidden_major`); the kernels are compiled for the layout they are given.

The passes come in two forms (``TRANSPOSED``). The transposed one runs every product as
``W^T`` times the rows' ``[f or hidden, K]`` tile: a 64-wide weight chunk is then the
64-row operand of Hopper's wgmma, read straight from the shared memory the pipeliner
loads it into, and the 16 rows are its N. The row form keeps the rows as the 16-row M of
``mma.sync`` with the weights in registers. The launcher picks the one measured faster
for the state dtype and head dim.
"""

import torch
import triton
import triton.language as tl

from ..triton_utils import (as_row, dot_config, dual_row, fast_tanh, gelu_tanh, gelu_tanh_and_grad, layer_norm_rows,
                            ln_l2_grad_rows, load_minibatch_rows, load_token, on_input_device, pdl_options,
                            store_cache_row, wait_for_prior_kernel)
from ..ttt_state import TTTDualState, check_decode_args, check_kernel_sizes


@triton.jit
def _w1_offsets(bh, hid, cols, F: tl.constexpr, FH: tl.constexpr, W1_HM: tl.constexpr):
    """Offsets of ``W1[cols, hid]`` of head ``bh``, stored row-major (``[f, 4f]``) or, with ``W1_HM``,
    hidden-major (``[4f, f]``). A constexpr, not the strides: runtime strides cost 64-72 B more of
    spills per thread in the transposed form (Triton 3.6, sm_90)."""
    if W1_HM:
        return bh * F * FH + hid[None, :] * F + cols[:, None]
    else:
        return bh * F * FH + cols[:, None] * FH + hid[None, :]


@triton.jit
def _load_weights(W1_ptr, W2_ptr, bh, c0, cols, cm, W1_HM: tl.constexpr, F: tl.constexpr, FH: tl.constexpr,
                  BH: tl.constexpr):
    """W1[:, c0:c0+BH] and W2[c0:c0+BH, :] of head ``bh`` (zero where padded)."""
    hid = c0 + tl.arange(0, BH)
    hm = hid < FH
    W1 = tl.load(W1_ptr + _w1_offsets(bh, hid, cols, F, FH, W1_HM), mask=cm[:, None] & hm[None, :], other=0.0)
    W2 = tl.load(W2_ptr + bh * FH * F + hid[:, None] * F + cols[None, :], mask=hm[:, None] & cm[None, :], other=0.0)
    return W1, W2


@triton.jit
def _load_b1(b1_ptr, bh, c0, FH: tl.constexpr, BH: tl.constexpr):
    """b1[c0:c0+BH] of head ``bh`` in fp32 (zero outside ``[0, FH)``, so a load one chunk past either
    end reads nothing)."""
    hid = c0 + tl.arange(0, BH)
    return tl.load(b1_ptr + bh * FH + hid, mask=(hid >= 0) & (hid < FH), other=0.0).to(tl.float32)


@triton.jit
def _load_chunk(W1_ptr, b1_ptr, W2_ptr, bh, c0, cols, cm, W1_HM: tl.constexpr, F: tl.constexpr, FH: tl.constexpr,
                BH: tl.constexpr):
    """W1[:, c0:c0+BH], b1[c0:c0+BH] (fp32), W2[c0:c0+BH, :] of head ``bh`` (zero where padded)."""
    W1, W2 = _load_weights(W1_ptr, W2_ptr, bh, c0, cols, cm, W1_HM, F, FH, BH)
    return W1, _load_b1(b1_ptr, bh, c0, FH, BH), W2


@triton.jit
def _update_chunk(W1_ptr, b1_ptr, W2_ptr, KT, G1, X2T, G2, b1, eta, bh, c0, cols, cm, W1_HM: tl.constexpr,
                  F: tl.constexpr, FH: tl.constexpr, BH: tl.constexpr, DOT_DTYPE: tl.constexpr,
                  DOT_PREC: tl.constexpr):
    """The mini-batch's rank-K update of one hidden chunk: ``W1[:, chunk] -= eta K^T G1``,
    ``b1[chunk] -= eta sum_j G1_j``, ``W2[chunk, :] -= eta X2^T G2`` (``KT [BF, K]``,
    ``G1 [K, BH]``, ``X2T [BH, K]``, ``G2 [K, BF]``). The weights are read again here (from
    L2): kept live from the chunk's tiles they spill, in both kernel forms (measured slower)."""
    hid = c0 + tl.arange(0, BH)
    hm = hid < FH
    w1_off = _w1_offsets(bh, hid, cols, F, FH, W1_HM)
    w1_mask = cm[:, None] & hm[None, :]
    W1_0 = tl.load(W1_ptr + w1_off, mask=w1_mask, other=0.0).to(tl.float32)
    W1_new = tl.dot(KT.to(DOT_DTYPE), (-eta * G1).to(DOT_DTYPE), acc=W1_0, input_precision=DOT_PREC)
    tl.store(W1_ptr + w1_off, W1_new.to(W1_ptr.dtype.element_ty), mask=w1_mask)
    tl.store(b1_ptr + bh * FH + hid, (b1 - eta * tl.sum(G1, axis=0)).to(b1_ptr.dtype.element_ty), mask=hm)
    w2_off = bh * FH * F + hid[:, None] * F + cols[None, :]
    w2_mask = hm[:, None] & cm[None, :]
    W2_0 = tl.load(W2_ptr + w2_off, mask=w2_mask, other=0.0).to(tl.float32)
    W2_new = tl.dot(X2T.to(DOT_DTYPE), (-eta * G2).to(DOT_DTYPE), acc=W2_0, input_precision=DOT_PREC)
    tl.store(W2_ptr + w2_off, W2_new.to(W2_ptr.dtype.element_ty), mask=w2_mask)


@triton.jit
def _passes_transposed(W1_ptr, b1_ptr, W2_ptr, q, kr, vr, lrr, attn1, gamma, beta, b2, eta, is_last, bh, cols, cm,
                       W1_HM: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, FH: tl.constexpr, BH: tl.constexpr,
                       K: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr, FAST_TANH: tl.constexpr):
    """Both passes with every product transposed, ``W^T [hidden or f, .] x rows^T [., K]``: the
    weight chunk is the 64-row operand that Hopper's wgmma takes from shared memory, the K rows
    its N. Returns, in row form, ``XW`` (row 0: ``x2_bar W2``), ``xx`` (``x2_bar . x2_j``) and ``G2``.
    Pass 2 walks the chunks newest-first, so it rereads first what pass 1 read last (with a
    hidden-major W1, 8 µs faster at B=512 and 4% at B=64 on the H100; tuning log v14)."""
    KT = tl.trans(kr).to(DOT_DTYPE)
    QT = tl.trans(as_row(q, 0, K, DOT_DTYPE))
    # pass 1: z2 of every row needs all hidden chunks. b1 is loaded one chunk ahead by hand:
    # the pipeliner streams only the products' operands, and b1 starts the chunk's product.
    Z2T = tl.zeros((BF, K), dtype=tl.float32) + b2[:, None]
    b1_next = _load_b1(b1_ptr, bh, 0, FH, BH)
    for c0 in range(0, FH, BH):
        b1 = b1_next
        b1_next = _load_b1(b1_ptr, bh, c0 + BH, FH, BH)
        W1, W2 = _load_weights(W1_ptr, W2_ptr, bh, c0, cols, cm, W1_HM, F, FH, BH)
        X2T = gelu_tanh(tl.dot(tl.trans(W1.to(DOT_DTYPE)), KT, input_precision=DOT_PREC) + b1[:, None], FAST_TANH)
        Z2T = tl.dot(tl.trans(W2.to(DOT_DTYPE)), X2T.to(DOT_DTYPE), acc=Z2T, input_precision=DOT_PREC)
    G2 = ln_l2_grad_rows(tl.trans(Z2T), vr - kr, gamma, beta, cm, F) * lrr[:, None]
    G2Td = tl.trans(G2).to(DOT_DTYPE)
    # pass 2, chunk by chunk: g1, the output path and (at the mini-batch end) the update. The
    # shares of x2_bar W2 (column 0 of XWT) and of x2_bar . x2_j (XXT summed over the hidden
    # units) are reduced once, after the last chunk.
    XWT = tl.zeros((BF, K), dtype=tl.float32)
    XXT = tl.zeros((BH, K), dtype=tl.float32)
    b1_next = _load_b1(b1_ptr, bh, FH - BH, FH, BH)
    for i in range(0, FH, BH):
        c0 = FH - BH - i
        b1 = b1_next
        b1_next = _load_b1(b1_ptr, bh, c0 - BH, FH, BH)
        W1, W2 = _load_weights(W1_ptr, W2_ptr, bh, c0, cols, cm, W1_HM, F, FH, BH)
        W1Td = tl.trans(W1.to(DOT_DTYPE))
        Z1T = tl.dot(W1Td, KT, input_precision=DOT_PREC) + b1[:, None]
        ZQ1T = tl.dot(W1Td, QT, input_precision=DOT_PREC)
        X2T, GPT = gelu_tanh_and_grad(Z1T, FAST_TANH)
        G1T = tl.dot(W2.to(DOT_DTYPE), G2Td, input_precision=DOT_PREC) * GPT
        z1_bar = dual_row(tl.trans(ZQ1T), 0, attn1, tl.trans(G1T), eta, K) + b1
        x2_bar = gelu_tanh(z1_bar, FAST_TANH)
        XWT = tl.dot(tl.trans(W2.to(DOT_DTYPE)), tl.trans(as_row(x2_bar, 0, K, DOT_DTYPE)), acc=XWT,
                     input_precision=DOT_PREC)
        XXT += X2T * x2_bar[:, None]
        if is_last:
            _update_chunk(W1_ptr, b1_ptr, W2_ptr, KT, tl.trans(G1T), X2T, G2, b1, eta, bh, c0, cols, cm, W1_HM,
                          F, FH, BH, DOT_DTYPE, DOT_PREC)
    return tl.trans(XWT), tl.sum(XXT, axis=0), G2


@triton.jit
def _dual_chunk(W1_ptr, b1_ptr, W2_ptr, ZQ1, b1, W2, X2, GP, G2, kr, attn1, eta, is_last, XW, XX, bh, c0, cols,
                cm, W1_HM: tl.constexpr, F: tl.constexpr, FH: tl.constexpr, BH: tl.constexpr, K: tl.constexpr,
                DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr, FAST_TANH: tl.constexpr):
    """One hidden chunk of the row form's output path (and of the update at the mini-batch end);
    ``ZQ1`` the product of ``as_row(q, 0)`` and the chunk of ``W1``, ``X2, GP`` its ``gelu(Z1),
    gelu'(Z1)``. Adds the chunk's share of ``x2_bar W2`` (row 0 of ``XW``) and of
    ``x2_bar . x2_j`` (the rows of ``XX`` summed) to those tiles, which are reduced once,
    after the last chunk: a sum per chunk would add its barriers to every chunk's chain.
    """
    G1 = tl.dot(G2.to(DOT_DTYPE), tl.trans(W2.to(DOT_DTYPE)), input_precision=DOT_PREC) * GP
    z1_bar = dual_row(ZQ1, 0, attn1, G1, eta, K) + b1
    x2_bar = gelu_tanh(z1_bar, FAST_TANH)
    XW = tl.dot(as_row(x2_bar, 0, K, DOT_DTYPE), W2.to(DOT_DTYPE), acc=XW, input_precision=DOT_PREC)
    XX += X2 * x2_bar[None, :]
    if is_last:
        _update_chunk(W1_ptr, b1_ptr, W2_ptr, tl.trans(kr), G1, tl.trans(X2), G2, b1, eta, bh, c0, cols, cm, W1_HM,
                       F, FH, BH, DOT_DTYPE, DOT_PREC)
    return XW, XX


@triton.jit
def _passes_rows(W1_ptr, b1_ptr, W2_ptr, q, kr, vr, lrr, attn1, gamma, beta, b2, eta, is_last, bh, cols, cm,
                 W1_HM: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, FH: tl.constexpr, BH: tl.constexpr,
                 K: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr, FAST_TANH: tl.constexpr):
    """Both passes with the K rows as the 16-row M of ``mma.sync`` and the weight chunks as its
    B operand (in registers). Returns what :func:`_passes_transposed` returns."""
    kd = kr.to(DOT_DTYPE)
    # pass 1: z2 of every row needs all hidden chunks
    Z2 = tl.zeros((K, BF), dtype=tl.float32) + b2[None, :]
    for c0 in range(0, FH, BH):
        W1, b1, W2 = _load_chunk(W1_ptr, b1_ptr, W2_ptr, bh, c0, cols, cm, W1_HM, F, FH, BH)
        X2 = gelu_tanh(tl.dot(kd, W1.to(DOT_DTYPE), input_precision=DOT_PREC) + b1[None, :], FAST_TANH)
        Z2 += tl.dot(X2.to(DOT_DTYPE), W2.to(DOT_DTYPE), input_precision=DOT_PREC)
    G2 = ln_l2_grad_rows(Z2, vr - kr, gamma, beta, cm, F) * lrr[:, None]
    # pass 2, chunk by chunk: g1, the output path and (at the mini-batch end) the update
    XW = tl.zeros((K, BF), dtype=tl.float32)
    XX = tl.zeros((K, BH), dtype=tl.float32)
    for c0 in range(0, FH, BH):
        W1, b1, W2 = _load_chunk(W1_ptr, b1_ptr, W2_ptr, bh, c0, cols, cm, W1_HM, F, FH, BH)
        ZQ1 = tl.dot(as_row(q, 0, K, DOT_DTYPE), W1.to(DOT_DTYPE), input_precision=DOT_PREC)
        Z1 = tl.dot(kd, W1.to(DOT_DTYPE), input_precision=DOT_PREC) + b1[None, :]
        X2, GP = gelu_tanh_and_grad(Z1, FAST_TANH)
        XW, XX = _dual_chunk(W1_ptr, b1_ptr, W2_ptr, ZQ1, b1, W2, X2, GP, G2, kr, attn1, eta, is_last, XW, XX,
                             bh, c0, cols, cm, W1_HM, F, FH, BH, K, DOT_DTYPE, DOT_PREC, FAST_TANH)
    return XW, tl.sum(XX, axis=1), G2


@triton.jit
def ttt_mlp_decode_dual_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, pos_ptr, ln_w_ptr, ln_b_ptr, tib_ptr, out_ptr,
    W1_ptr, b1_ptr, W2_ptr, b2_ptr, kc_ptr, vc_ptr, lrc_ptr,
    H: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, FH: tl.constexpr, BH: tl.constexpr, K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr, FAST_TANH: tl.constexpr, TRANSPOSED: tl.constexpr,
    W1_HM: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_prior_kernel(PDL)
    bh = tl.program_id(0).to(tl.int64)  # 64-bit offsets: B*H*f*4f overflows int32
    cols = tl.arange(0, BF)
    cm = cols < F  # real features (f = 96 runs in a 128-wide block)
    t, eta, q, k, v, lr, gamma, beta = load_token(q_ptr, k_ptr, v_ptr, lr_ptr, pos_ptr, ln_w_ptr, ln_b_ptr, tib_ptr,
                                                  bh, cols, cm, H, F, K)
    is_last = t == K - 1

    b2 = tl.load(b2_ptr + bh * F + cols, mask=cm, other=0.0).to(tl.float32)

    # the mini-batch so far (rows j > t carry lr 0)
    kr, vr, lrr = load_minibatch_rows(kc_ptr, vc_ptr, lrc_ptr, bh, t, k, v, lr, cols, cm, F, K)
    attn1 = tl.sum(kr * q[None, :], axis=1) + 1.0  # q.k_j + 1
    if TRANSPOSED:
        XW, xx, G2 = _passes_transposed(W1_ptr, b1_ptr, W2_ptr, q, kr, vr, lrr, attn1, gamma, beta, b2, eta, is_last,
                                        bh, cols, cm, W1_HM, F, BF, FH, BH, K, DOT_DTYPE, DOT_PREC, FAST_TANH)
    else:
        XW, xx, G2 = _passes_rows(W1_ptr, b1_ptr, W2_ptr, q, kr, vr, lrr, attn1, gamma, beta, b2, eta, is_last,
                                  bh, cols, cm, W1_HM, F, BF, FH, BH, K, DOT_DTYPE, DOT_PREC, FAST_TANH)

    z2_bar = dual_row(XW, 0, xx + 1.0, G2, eta, K) + b2
    out = q[None, :] + layer_norm_rows(z2_bar[None, :], gamma, beta, cm, F)
    tl.store(out_ptr + bh * F + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=cm[None, :])

    if is_last:
        tl.store(b2_ptr + bh * F + cols, (b2 - eta * tl.sum(G2, axis=0)).to(b2_ptr.dtype.element_ty), mask=cm)
    else:
        store_cache_row(kc_ptr, vc_ptr, lrc_ptr, bh, t, k, v, lr, cols, cm, F, K)


def transposed_form(state_dtype: torch.dtype, head_dim: int) -> bool:
    """Whether :func:`ttt_mlp_decode_dual` runs the transposed form for this state dtype and head dim.

    Measured on the H100 at B=512 (benchmarks/results/dual_kernel_tuning.md, v12): for a 16-bit
    state at f <= 64 the transposed form (578 us, the row form 642 us). The row form stays faster for
    an fp32 state (tf32x3 splits each operand in registers, so wgmma's shared-memory operands buy
    nothing: 2257 against 3162 us) and at f = 96 (769 against 828 us), and ties at f = 128."""
    return state_dtype != torch.float32 and triton.next_power_of_2(head_dim) <= 64


def w1_hidden_major(state_dtype: torch.dtype, head_dim: int) -> bool:
    """Whether a state for :func:`ttt_mlp_decode_dual` should store W1 hidden-major
    (``TTTDualState.from_params(..., w1_hidden_major=True)``): where the transposed form runs, a
    64-wide hidden chunk of W1 is then one 8 KB piece, not 64 rows of 128 B (with pass 2
    newest-first, 8 us faster at B=512 and 4% at B=64 on the H100; tuning log v14). The kernel
    reads either layout; the row form's speed was measured row-major only, so it keeps that."""
    return transposed_form(state_dtype, head_dim)


@on_input_device
def ttt_mlp_decode_dual(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, state: TTTDualState,
                        *, out=None, check_positions=True) -> torch.Tensor:
    """One TTT-MLP decode step, fused; updates ``state`` in place and returns ``q + LN(z2_bar)``.

    ``q, k, v [B, H, f]``, ``lr [B, H]``, ``pos [B]`` (absolute positions; not advanced
    here), ``ln_weight, ln_bias [H, f]``, ``token_idx_bias [K]``.
    """
    B, H, f, K, out = check_decode_args("mlp_2", TTTDualState, q, k, v, lr, pos, ln_weight, ln_bias,
                                        token_idx_bias, state, out, check_positions)
    check_kernel_sizes(K, f, dot=True)
    W1, b1, W2, b2 = state.weights
    BF = triton.next_power_of_2(f)
    FH = 4 * f
    BH = min(64, triton.next_power_of_2(FH))
    # fp32 state: tf32x3 products, ~3077 -> ~2252 us at B=512 on the H100 against exact fp32 (FMA);
    # compiled for f=96 they also halve the spills (2.1 -> 1.1 KB per thread)
    dot_dtype, dot_prec = dot_config(W1.dtype, fp32_precision="tf32x3")
    # Measured on the H100 at B=512 (tuning log, v12): the transposed form at two pipeline stages
    # and a 128-register cap (four programs per SM at 48 KB of shared memory each); the row form
    # at 3 stages (1 for fp32: more would not fit in shared memory) and the compiler's registers.
    transposed = transposed_form(W1.dtype, f)
    if transposed:
        opts = {"num_stages": 2, "maxnreg": 128}
    else:
        opts = {"num_stages": 1 if W1.dtype == torch.float32 else 3}
    ttt_mlp_decode_dual_kernel[(B * H,)](
        q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, out,
        W1, b1, W2, b2, state.k_cache, state.v_cache, state.lr_cache,
        H=H, F=f, BF=BF, FH=FH, BH=BH, K=K, DOT_DTYPE=dot_dtype, DOT_PREC=dot_prec, FAST_TANH=fast_tanh(W1.dtype),
        TRANSPOSED=transposed, W1_HM=not W1.is_contiguous(), num_warps=4, **opts, **pdl_options(out.device),
    )
    return out
