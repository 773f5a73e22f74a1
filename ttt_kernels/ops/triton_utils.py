"""Triton device functions shared by the TTT kernels.

Rows are the first axis, features the second; ``cols`` masks the real features
when the head dim is padded up to a power of two (f = 96 runs in a 128 block).
Everything here works on fp32 values.
"""

import functools
import os

import torch
import triton
import triton.language as tl


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
MAX_ROW_DIM = 16384  # the row kernels (norms, gates) hold one row per program in registers
# Every launch asks for FMA contraction (a * b + c in one instruction, as measured): Triton 3.9
# warns that its default turns it off in 3.10, which would split each of the kernels' multiply-adds.
FP_FUSION = {"enable_fp_fusion": True}


def on_input_device(fn):
    """Run the launcher ``fn`` with its first tensor argument's CUDA device current: Triton
    launches on the current device and its current stream, so inputs on another GPU would
    otherwise be handed to a kernel on the wrong device, unordered with their own stream."""
    @functools.wraps(fn)
    def launcher(*args, **kwargs):
        t = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if t is None or not t.is_cuda or t.device.index == torch.cuda.current_device():
            return fn(*args, **kwargs)
        with torch.cuda.device(t.device):
            return fn(*args, **kwargs)
    return launcher


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter: ``TRITON_INTERPRET`` set to any value
    Triton takes as true (1, true, on, yes, y; any case)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes", "y")


@functools.lru_cache(maxsize=None)
def _sm90_or_newer(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_options(device: torch.device) -> dict:
    """Launch options (``FP_FUSION`` included) of a decode-step kernel that begins with
    :func:`wait_for_prior_kernel`: a programmatic dependent launch on Hopper and newer GPUs,
    which schedules the kernel while the one before it in the stream drains (also inside a CUDA
    graph), a plain launch elsewhere. On the H100, with the six Triton kernels of a ttt-1b decode
    layer launched so, a step at B=512 took 17.25 ms instead of 17.30; with the Mamba conv and SSM
    kernels launched so, a mamba-1.4b step 8.18 instead of 8.20."""
    on = device.type == "cuda" and not interpreting() and _sm90_or_newer(device.index)
    return {"PDL": on, "launch_pdl": on, **FP_FUSION}


@triton.jit
def wait_for_prior_kernel(PDL: tl.constexpr):
    """A kernel launched with :func:`pdl_options` calls this before its first load: it returns
    once the previous kernel in the stream has finished and its writes are visible."""
    if PDL:
        tl.extra.cuda.gdc_wait()


def row_warps(dim: int) -> int:
    """Warps of a program that holds one row of ``dim`` values (8 to 16 per thread)."""
    return min(16, max(1, triton.next_power_of_2(dim) // 256))


def dot_config(state_dtype: torch.dtype, fp32_precision: str = "ieee"):
    """Operand dtype and precision of the kernels' matrix products (``DOT_DTYPE, DOT_PREC``).

    fp16/bf16 states multiply on the tensor cores in their own dtype. fp32 states never
    use plain tf32 (~1e-3 relative error): ``fp32_precision`` is "ieee" (exact fp32, built
    from FMA instructions) or "tf32x3" (three tf32 tensor-core products, ~1e-6; it frees
    registers in some kernels and adds spills in others, so each launcher picks the one it
    measured faster). Triton's CPU interpreter multiplies bf16 operands wrongly (seen with
    3.9), so there bf16 is upcast to fp32; the GPU tests cover the bf16 tensor-core path.
    """
    if state_dtype == torch.bfloat16 and interpreting():
        state_dtype = torch.float32
    return _TL_DTYPES[state_dtype], (fp32_precision if state_dtype == torch.float32 else "tf32")


def fast_tanh(state_dtype: torch.dtype) -> bool:
    """Whether gelu may use the GPU's one-instruction ``tanh.approx.f32`` (~5e-4 relative error,
    27% fewer instructions in the TTT-MLP decode step): for fp16/bf16 states, whose products are
    16-bit anyway; fp32 states keep the exact form (their tolerance is 1e-4), and the CPU
    interpreter has no inline PTX."""
    return state_dtype in (torch.float16, torch.bfloat16) and not interpreting()


@triton.jit
def tanh(x, FAST: tl.constexpr):
    if FAST:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        # tl has no tanh on every Triton version we support; exact in fp32 up to exp2 and the
        # division. Clamped where tanh is 1.0 in fp32 anyway, so exp2 never overflows.
        return 1.0 - 2.0 / (tl.exp2(tl.minimum(2.8853900817779268 * x, 64.0)) + 1.0)


@triton.jit
def gelu_tanh_and_grad(x, FAST: tl.constexpr):
    """Tanh-approximation gelu and its exact derivative, from one tanh."""
    xx = x * x
    th = tanh(x * (0.7978845608028654 + 0.035677408136300125 * xx), FAST)
    gelu = 0.5 * x * (1.0 + th)
    grad = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * (0.7978845608028654 + 0.10703222440890037 * xx)
    return gelu, grad


@triton.jit
def gelu_tanh(x, FAST: tl.constexpr):
    y, _ = gelu_tanh_and_grad(x, FAST)  # the unused derivative is dead code for the compiler
    return y


@triton.jit
def rms_norm_row(s, w_ptr, cols, m, dim, eps):
    """RMSNorm of one fp32 row ``s`` (``cols`` masked by ``m``, ``dim`` real values) times the
    weight ``w_ptr [dim]``, in fp32."""
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=0) / dim + eps)
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    return s * rstd * w


@triton.jit
def as_row(x, R: tl.constexpr, M: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """Vector ``x`` as row ``R`` of an ``M``-row tile, zeros elsewhere: the operand that puts a
    vector x matrix product on the tensor cores (``tl.dot`` needs M >= 16; its transpose is the
    column operand of a transposed product). Broadcast-and-reduce on the CUDA cores would hold an
    fp32 copy of the matrix in registers, which is what limits occupancy."""
    rows = tl.arange(0, M)
    return tl.where(rows[:, None] == R, x[None, :], 0.0).to(DOT_DTYPE)


@triton.jit
def dual_row(Y, R: tl.constexpr, attn, G, eta, M: tl.constexpr):
    """The dual form's ``x W0 - eta sum_j attn_j G_j`` for one token: row ``R`` of ``Y`` holds
    ``x W0`` (other rows are ignored), ``attn [M]`` and ``G [M, n]`` are the rows' weights and
    gradients. Both sums over the rows are one reduction."""
    rows = tl.arange(0, M)
    return tl.sum(tl.where(rows[:, None] == R, Y, 0.0) - (eta * attn)[:, None] * G, axis=0)


@triton.jit
def _normalize(z, cols, F: tl.constexpr):
    """(z - mean) / std over axis 1 and 1/std, with padded columns kept at zero."""
    mu = tl.sum(tl.where(cols[None, :], z, 0.0), axis=1) / F
    zc = tl.where(cols[None, :], z - mu[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, axis=1) / F + 1e-6)
    return zc * rstd[:, None], rstd


@triton.jit
def layer_norm_rows(z, gamma, beta, cols, F: tl.constexpr):
    x_hat, _ = _normalize(z, cols, F)
    return gamma[None, :] * x_hat + beta[None, :]


@triton.jit
def ln_l2_grad_rows(z, target, gamma, beta, cols, F: tl.constexpr):
    """d/dz of 0.5 * ||LN(z) - target||^2 per row (zero in padded columns: gamma is 0 there)."""
    x_hat, rstd = _normalize(z, cols, F)
    g_hat = (gamma[None, :] * x_hat + beta[None, :] - target) * gamma[None, :]
    s1 = tl.sum(g_hat, axis=1)
    s2 = tl.sum(g_hat * x_hat, axis=1)
    grad = (F * g_hat - s1[:, None] - x_hat * s2[:, None]) * (rstd[:, None] / F)
    return tl.where(cols[None, :], grad, 0.0)


@triton.jit
def token_phase(pos, tib_ptr, K: tl.constexpr):
    """The token at position ``pos``: its index ``t`` in its mini-batch and
    ``eta_t = max(0, 1/(t+1) + token_idx_bias[t])``."""
    # K is a power of two: t is in 0..K-1 whatever pos holds (a negative position, which only a
    # caller writing the positions by hand can make, never indexes outside the cache)
    t = (pos & (K - 1)).to(tl.int32)
    eta = tl.maximum(1.0 / (t + 1).to(tl.float32) + tl.load(tib_ptr + t).to(tl.float32), 0.0)
    return t, eta


@triton.jit
def load_qkv_lr(q_ptr, k_ptr, v_ptr, lr_ptr, bh, cols, cm, F: tl.constexpr):
    """``q, k, v [B*H, F]`` rows and ``lr [B*H]`` of head ``bh``, in fp32 (zero in padded columns)."""
    q = tl.load(q_ptr + bh * F + cols, mask=cm, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + bh * F + cols, mask=cm, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + bh * F + cols, mask=cm, other=0.0).to(tl.float32)
    lr = tl.load(lr_ptr + bh).to(tl.float32)
    return q, k, v, lr


@triton.jit
def load_ln_params(ln_w_ptr, ln_b_ptr, h, cols, cm, F: tl.constexpr):
    """The TTT norm's ``gamma, beta`` of head ``h`` in fp32 (zero in padded columns)."""
    gamma = tl.load(ln_w_ptr + h * F + cols, mask=cm, other=0.0).to(tl.float32)
    beta = tl.load(ln_b_ptr + h * F + cols, mask=cm, other=0.0).to(tl.float32)
    return gamma, beta


@triton.jit
def load_token(q_ptr, k_ptr, v_ptr, lr_ptr, pos_ptr, ln_w_ptr, ln_b_ptr, tib_ptr, bh, cols, cm,
               H: tl.constexpr, F: tl.constexpr, K: tl.constexpr):
    """The step's inputs for head ``bh`` (= sequence * H + head), in fp32: the token's
    index ``t`` in its mini-batch and ``eta_t`` (:func:`token_phase`), ``q, k, v``, ``lr`` and the
    TTT norm's ``gamma, beta`` (zero in padded columns)."""
    t, eta = token_phase(tl.load(pos_ptr + bh // H), tib_ptr, K)
    q, k, v, lr = load_qkv_lr(q_ptr, k_ptr, v_ptr, lr_ptr, bh, cols, cm, F)
    gamma, beta = load_ln_params(ln_w_ptr, ln_b_ptr, bh % H, cols, cm, F)
    return t, eta, q, k, v, lr, gamma, beta


@triton.jit
def load_minibatch_rows(kc_ptr, vc_ptr, lrc_ptr, bh, t, k, v, lr, cols, cm, F: tl.constexpr, K: tl.constexpr):
    """The dual state's mini-batch so far as ``[K, BF]`` rows (fp32): cached rows ``j < t``
    and the current token at row ``t``; rows ``j > t`` get lr 0, so they contribute nothing."""
    rows = tl.arange(0, K)
    row_off = bh * K * F + rows[:, None] * F + cols[None, :]
    # All K rows are loaded whatever t is, so the loads need not wait for the position's load
    # (t masks them only afterwards); where(), not a product, drops the stale rows j >= t, so
    # garbage (even NaN) there cannot leak into the step.
    kc = tl.load(kc_ptr + row_off, mask=cm[None, :], other=0.0).to(tl.float32)
    vc = tl.load(vc_ptr + row_off, mask=cm[None, :], other=0.0).to(tl.float32)
    lrc = tl.load(lrc_ptr + bh * K + rows)
    cached = rows < t
    at_t = rows == t
    kr = tl.where(at_t[:, None], k[None, :], tl.where(cached[:, None], kc, 0.0))
    vr = tl.where(at_t[:, None], v[None, :], tl.where(cached[:, None], vc, 0.0))
    return kr, vr, tl.where(at_t, lr, tl.where(cached, lrc, 0.0))


@triton.jit
def store_cache_row(kc_ptr, vc_ptr, lrc_ptr, bh, t, k, v, lr, cols, cm, F: tl.constexpr, K: tl.constexpr):
    """Append the current token to the dual state's mini-batch cache (row ``t``)."""
    tl.store(kc_ptr + bh * K * F + t * F + cols, k.to(kc_ptr.dtype.element_ty), mask=cm)
    tl.store(vc_ptr + bh * K * F + t * F + cols, v.to(vc_ptr.dtype.element_ty), mask=cm)
    tl.store(lrc_ptr + bh * K + t, lr)


@triton.jit
def pos_mod(p, K: tl.constexpr):
    """``p mod K`` in ``0..K-1`` for a negative ``p`` too (``%`` keeps the sign): a ring conv
    state's slot of position ``p``, a rotary table's row."""
    s = p % K
    return tl.where(s < 0, s + K, s)


@triton.jit
def ring_tap(cs_ptr, p, i: tl.constexpr, d, dm, dim, K: tl.constexpr):
    """Tap ``i`` (0 the oldest) of a conv window ending at position ``p``, for channels ``d``
    (mask ``dm``) of one sequence's ring state ``cs_ptr [K, dim]``: the input of position
    ``p - K + 1 + i``, in fp32 (``cs_ptr``, ``p`` ``[rows, 1]`` and ``d`` ``[1, channels]`` give
    a tile of several sequences). The TTT block's convs and the Mamba conv keep their state as
    a ring, so a step writes one slot (``dim`` values) instead of shifting all K."""
    return tl.load(cs_ptr + pos_mod(p - (K - 1) + i, K) * dim + d, mask=dm, other=0.0).to(tl.float32)


# ---- prefill: one program per (sequence, head) walks its prompt window by window, a window
# being one whole mini-batch of absolute positions [m*K, (m+1)*K). Row r of a window is prompt
# token s = w*K + r - t0 (t0: the start position's index in its mini-batch); rows s < 0 are the
# mini-batch so far that the state's cache holds, rows s >= the prompt's length are absent.

@triton.jit
def prefill_program(pos_ptr, len_ptr, tib_ptr, ln_w_ptr, ln_b_ptr, cols, cm, H: tl.constexpr, F: tl.constexpr,
                    K: tl.constexpr):
    """This program's sequence ``b`` and head ``h`` (``bh = b * H + h``, 64-bit), the start's index
    ``t0`` in its mini-batch, the prompt length ``n``, the number of windows, ``eta`` of each row,
    ``eta`` of the last row (the update's) and the TTT norm's ``gamma, beta``."""
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    rows = tl.arange(0, K)
    t0 = (tl.load(pos_ptr + b) & (K - 1)).to(tl.int32)  # in 0..K-1, as load_token's t
    n = tl.load(len_ptr + b).to(tl.int32)
    eta = tl.maximum(1.0 / (rows + 1).to(tl.float32) + tl.load(tib_ptr + rows).to(tl.float32), 0.0)
    eta_last = tl.maximum(1.0 / K + tl.load(tib_ptr + K - 1).to(tl.float32), 0.0)
    gamma = tl.load(ln_w_ptr + h * F + cols, mask=cm, other=0.0).to(tl.float32)
    beta = tl.load(ln_b_ptr + h * F + cols, mask=cm, other=0.0).to(tl.float32)
    return bh, b, h, t0, n, tl.cdiv(t0 + n, K), eta, eta_last, gamma, beta


@triton.jit
def load_prefill_rows(q_ptr, k_ptr, v_ptr, lr_ptr, b, h, s, n, sq_b, sq_t, sk_b, sk_t, sv_b, sv_t, T, cols, cm,
                      H: tl.constexpr, F: tl.constexpr):
    """Prompt tokens ``s`` (one per row) of sequence ``b``, head ``h``: ``q, k, v`` in their
    dtype (``[B, T, H, f]`` with strides ``s*_b, s*_t`` and contiguous heads) and ``lr`` in fp32
    (``[B, T, H]`` contiguous); rows outside the prompt ``[0, n)`` come out zero."""
    valid = (s >= 0) & (s < n)
    m = valid[:, None] & cm[None, :]
    # a 64-bit offset per sequence, 32-bit ones inside it (the launcher checks T * stride < 2**31)
    q = tl.load(q_ptr + (b * sq_b + h * F) + (s[:, None] * sq_t + cols[None, :]), mask=m, other=0.0)
    k = tl.load(k_ptr + (b * sk_b + h * F) + (s[:, None] * sk_t + cols[None, :]), mask=m, other=0.0)
    v = tl.load(v_ptr + (b * sv_b + h * F) + (s[:, None] * sv_t + cols[None, :]), mask=m, other=0.0)
    lr = tl.load(lr_ptr + (b * T * H + h) + s * H, mask=valid, other=0.0).to(tl.float32)
    return q, k, v, lr


@triton.jit
def with_cached_rows(kc_ptr, vc_ptr, lrc_ptr, bh, t0, k, v, lr, cols, cm, F: tl.constexpr, K: tl.constexpr):
    """The first window's rows ``r < t0`` taken from the dual state's mini-batch cache."""
    rows = tl.arange(0, K)
    cached = rows < t0
    m = cached[:, None] & cm[None, :]
    off = bh * K * F + rows[:, None] * F + cols[None, :]
    k = tl.where(m, tl.load(kc_ptr + off, mask=m, other=0.0), k)
    v = tl.where(m, tl.load(vc_ptr + off, mask=m, other=0.0), v)
    lr = tl.where(cached, tl.load(lrc_ptr + bh * K + rows, mask=cached, other=0.0), lr)
    return k, v, lr


@triton.jit
def causal_dual_weights(S, eta, K: tl.constexpr):
    """``eta_i * (S_ij + 1)`` for ``j <= i``, else 0 (``S [K, K]``): the weight of row ``j``'s
    gradient in row ``i``'s output, the dual form's causal correction."""
    rows = tl.arange(0, K)
    return tl.where(rows[None, :] <= rows[:, None], (S + 1.0) * eta[:, None], 0.0)


@triton.jit
def finish_prefill_window(out_ptr, out, kc_ptr, vc_ptr, lrc_ptr, k, v, lr, b, h, bh, s, n, T, cols, cm,
                          H: tl.constexpr, F: tl.constexpr, K: tl.constexpr):
    """Store the window's outputs (prompt rows only; ``out`` is ``[B, T, H, f]`` contiguous) and,
    if the prompt ends inside this window, its rows so far into the mini-batch cache."""
    valid = (s >= 0) & (s < n)
    tl.store(out_ptr + (b * T * H + h) * F + (s[:, None] * (H * F) + cols[None, :]),
             out.to(out_ptr.dtype.element_ty), mask=valid[:, None] & cm[None, :])
    rows = tl.arange(0, K)
    keep = (s < n) & (s + (K - 1 - rows) >= n)  # the rows so far of a mini-batch the prompt ends inside
    m = keep[:, None] & cm[None, :]
    off = bh * K * F + rows[:, None] * F + cols[None, :]
    tl.store(kc_ptr + off, k.to(kc_ptr.dtype.element_ty), mask=m)
    tl.store(vc_ptr + off, v.to(vc_ptr.dtype.element_ty), mask=m)
    tl.store(lrc_ptr + bh * K + rows, lr, mask=keep)
