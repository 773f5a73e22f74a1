"""TTT-MLP decode step in the primal form: the original TTT inference algorithm, kept
as the baseline the dual kernel is measured against.

One program per (sequence, head). The state holds the weights at the start of the
mini-batch (``W1 [f, 4f], b1, W2 [4f, f], b2``) and the materialised gradient sums
(``W1_grad = sum_j lr_j k_j^T g1_j`` etc.). Each token

    z1 = k W1 + b1,  x2 = gelu(z1),  z2 = x2 W2 + b2
    g2 = lr * ln_l2_grad(z2, v - k),  g1 = (g2 W2^T) * gelu'(z1)
    W1_grad += k^T g1,  W2_grad += x2^T g2  (and the biases)       (sums start from 0 at t = 0)
    W_bar = W - eta_t W_grad for each weight
    out = q + LN(gelu(q W1_bar + b1_bar) W2_bar + b2_bar)

and writes back the gradient sums, or, at the mini-batch's last token, the ``W_bar``
into the weights (the gradient buffers are then stale and ignored by the next token,
which has t = 0).

The hidden dim (4f) is walked in chunks of ``BH``: a whole head's ``W1``, ``W2`` and
their gradient sums (4 x 16k values at f = 64) would not fit in registers. ``g2`` needs
every chunk's share of ``z2``, so there are two passes: the first computes ``z2``; the second recomputes ``z1`` of the
chunk (its W1, W2 come back from L2), forms ``g1``, the new gradient sums, the
``W_bar`` chunks and the chunk's share of ``z2_bar``. Per token that is the six
weight-sized matrices of traffic of the original (read W1, W2, W1_grad, W2_grad;
write W1_grad, W2_grad), plus the second pass's L2 re-reads.
"""

import torch
import triton
import triton.language as tl

from ..triton_utils import (FP_FUSION, fast_tanh, gelu_tanh, gelu_tanh_and_grad, layer_norm_rows, ln_l2_grad_rows,
                            load_token, on_input_device)
from ..ttt_state import TTTPrimalState, check_decode_args


@triton.jit
def ttt_mlp_decode_primal_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, pos_ptr, ln_w_ptr, ln_b_ptr, tib_ptr, out_ptr,
    W1_ptr, b1_ptr, W2_ptr, b2_ptr, W1g_ptr, b1g_ptr, W2g_ptr, b2g_ptr,
    H: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, FH: tl.constexpr, BH: tl.constexpr, K: tl.constexpr,
    FAST_TANH: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)  # 64-bit offsets: B*H*f*4f overflows int32
    cols = tl.arange(0, BF)
    cm = cols < F  # real features (f = 96 runs in a 128-wide block)
    t, eta, q, k, v, lr, gamma, beta = load_token(q_ptr, k_ptr, v_ptr, lr_ptr, pos_ptr, ln_w_ptr, ln_b_ptr, tib_ptr,
                                                  bh, cols, cm, H, F, K)
    is_last = t == K - 1
    # at t = 0 the gradient buffers hold the previous mini-batch's sums (or garbage): they
    # are not read at all, so they count as zero even if they hold NaN/inf. (The masks take
    # has_grad through tl.where, not `mask & has_grad`: Triton's interpreter turns
    # tensor & scalar-bool into an int32 mask, which tl.load rejects.)
    has_grad = t > 0

    b2 = tl.load(b2_ptr + bh * F + cols, mask=cm, other=0.0).to(tl.float32)

    # pass 1: z2 = gelu(k W1 + b1) W2 + b2, chunk by chunk over the hidden dim
    # (vector-matrix products as broadcast-and-reduce in fp32: the plain form for one row vector)
    z2 = b2
    for c0 in range(0, FH, BH):
        hid = c0 + tl.arange(0, BH)
        hm = hid < FH
        w1_mask = cm[:, None] & hm[None, :]
        w2_mask = hm[:, None] & cm[None, :]
        W1 = tl.load(W1_ptr + bh * F * FH + cols[:, None] * FH + hid[None, :], mask=w1_mask, other=0.0).to(tl.float32)
        b1 = tl.load(b1_ptr + bh * FH + hid, mask=hm, other=0.0).to(tl.float32)
        W2 = tl.load(W2_ptr + bh * FH * F + hid[:, None] * F + cols[None, :], mask=w2_mask, other=0.0).to(tl.float32)
        x2 = gelu_tanh(tl.sum(k[:, None] * W1, axis=0) + b1, FAST_TANH)
        z2 += tl.sum(x2[:, None] * W2, axis=0)
    g2 = tl.sum(ln_l2_grad_rows(z2[None, :], (v - k)[None, :], gamma, beta, cm, F), axis=0) * lr

    # pass 2: g1, the new gradient sums, W_bar and z2_bar, chunk by chunk
    z2_bar = tl.zeros((BF,), dtype=tl.float32)
    for c0 in range(0, FH, BH):
        hid = c0 + tl.arange(0, BH)
        hm = hid < FH
        w1_off = bh * F * FH + cols[:, None] * FH + hid[None, :]
        w2_off = bh * FH * F + hid[:, None] * F + cols[None, :]
        w1_mask = cm[:, None] & hm[None, :]
        w2_mask = hm[:, None] & cm[None, :]
        W1 = tl.load(W1_ptr + w1_off, mask=w1_mask, other=0.0).to(tl.float32)
        b1 = tl.load(b1_ptr + bh * FH + hid, mask=hm, other=0.0).to(tl.float32)
        W2 = tl.load(W2_ptr + w2_off, mask=w2_mask, other=0.0).to(tl.float32)
        z1 = tl.sum(k[:, None] * W1, axis=0) + b1
        x2, gp = gelu_tanh_and_grad(z1, FAST_TANH)
        g1 = tl.sum(W2 * g2[None, :], axis=1) * gp

        # each matrix is stored as soon as it is final: at most three weight tiles live at once
        # (stores deferred to the chunk's end keep five and spill)
        W1g = tl.load(W1g_ptr + w1_off, mask=tl.where(has_grad, w1_mask, False), other=0.0).to(tl.float32)
        b1g = tl.load(b1g_ptr + bh * FH + hid, mask=tl.where(has_grad, hm, False), other=0.0).to(tl.float32)
        W1g += k[:, None] * g1[None, :]
        b1g += g1
        W1_bar = W1 - eta * W1g
        b1_bar = b1 - eta * b1g
        if is_last:  # the mini-batch ends: its weights become the next one's start
            tl.store(W1_ptr + w1_off, W1_bar.to(W1_ptr.dtype.element_ty), mask=w1_mask)
            tl.store(b1_ptr + bh * FH + hid, b1_bar.to(b1_ptr.dtype.element_ty), mask=hm)
        else:
            tl.store(W1g_ptr + w1_off, W1g.to(W1g_ptr.dtype.element_ty), mask=w1_mask)
            tl.store(b1g_ptr + bh * FH + hid, b1g.to(b1g_ptr.dtype.element_ty), mask=hm)
        x2_bar = gelu_tanh(tl.sum(q[:, None] * W1_bar, axis=0) + b1_bar, FAST_TANH)

        W2g = tl.load(W2g_ptr + w2_off, mask=tl.where(has_grad, w2_mask, False), other=0.0).to(tl.float32)
        W2g += x2[:, None] * g2[None, :]
        W2_bar = W2 - eta * W2g
        if is_last:
            tl.store(W2_ptr + w2_off, W2_bar.to(W2_ptr.dtype.element_ty), mask=w2_mask)
        else:
            tl.store(W2g_ptr + w2_off, W2g.to(W2g_ptr.dtype.element_ty), mask=w2_mask)
        z2_bar += tl.sum(x2_bar[:, None] * W2_bar, axis=0)

    b2g = tl.load(b2g_ptr + bh * F + cols, mask=tl.where(has_grad, cm, False), other=0.0).to(tl.float32) + g2
    b2_bar = b2 - eta * b2g
    z2_bar += b2_bar
    out = q[None, :] + layer_norm_rows(z2_bar[None, :], gamma, beta, cm, F)
    tl.store(out_ptr + bh * F + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=cm[None, :])
    if is_last:
        tl.store(b2_ptr + bh * F + cols, b2_bar.to(b2_ptr.dtype.element_ty), mask=cm)
    else:
        tl.store(b2g_ptr + bh * F + cols, b2g.to(b2g_ptr.dtype.element_ty), mask=cm)


def _launch_config(f: int) -> dict:
    # Chunks of 8192 weights on 8 warps: 32 fp32 values per thread and tile. Pass 2 holds
    # about three such tiles plus the broadcast vectors; compiled offline for sm_90 (Triton
    # 3.9) that takes ~250 registers and no spill for fp16/bf16 states (16 bytes for fp32).
    # Larger chunks spill (BH = 128 at f = 128: 370-660 bytes of stack per thread).
    BF = triton.next_power_of_2(f)
    return {"BH": min(8192 // BF, triton.next_power_of_2(4 * f)), "num_warps": 8}


@on_input_device
def ttt_mlp_decode_primal(q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, state: TTTPrimalState,
                          *, out=None, check_positions=True) -> torch.Tensor:
    """One TTT-MLP decode step in the primal form; updates ``state`` in place and returns
    ``q + LN(z2_bar)`` in q's dtype.

    ``q, k, v [B, H, f]``, ``lr [B, H]``, ``pos [B]`` (absolute positions; not advanced
    here), ``ln_weight, ln_bias [H, f]``, ``token_idx_bias [K]``. Every argument is checked
    before the launch, so a rejected call leaves ``state`` untouched.
    """
    B, H, f, K, out = check_decode_args("mlp_2", TTTPrimalState, q, k, v, lr, pos, ln_weight, ln_bias,
                                        token_idx_bias, state, out, check_positions)
    ttt_mlp_decode_primal_kernel[(B * H,)](
        q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, out,
        *state.weights, *state.grads,
        H=H, F=f, BF=triton.next_power_of_2(f), FH=4 * f, K=K, FAST_TANH=fast_tanh(state.weights[0].dtype),
        **_launch_config(f), **FP_FUSION,
    )
    return out
