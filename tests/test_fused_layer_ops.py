"""The fused norms and gates and the TTT layer's fused convs (the decode step's q/k conv + rotary,
v and lr; the convs over whole prompts) against their float64 PyTorch references (Triton's interpreter on the CPU)."""

import pytest
import torch
import torch.nn.functional as F

from ttt_kernels.ops.conv_rotary import (apply_rotary_ref, causal_conv1d_prefill, causal_conv1d_prefill_ref,
                                         pre_conv_step, pre_conv_step_ref, qk_conv_rotary_prefill,
                                         qk_conv_rotary_prefill_ref, ring_window, ttt_step_inputs, ttt_step_inputs_ref)
from ttt_kernels.ops.mamba import causal_conv1d_ring_update_ref
from ttt_kernels.ops.norm import (add_rms_norm, add_rms_norm_ref, gated_layer_norm, gated_layer_norm_ref, silu_mul,
                                  silu_mul_ref)
from ttt_kernels.ops.triton_utils import interpreting
from ttt_kernels.ops.utils import gelu_tanh

ACT = [torch.float32, torch.float16, torch.bfloat16]
# Triton's interpreter (3.9) truncates fp32 -> bf16 where the GPU rounds to nearest; the q/k step
# rounds twice (conv output, rotated output), which can take bf16 just past 1e-2 on the CPU
INTERPRETED = interpreting()
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2 if INTERPRETED else 1e-2}


def assert_close(a, ref, tol, what):
    assert a.dtype == ref.dtype or ref.dtype == torch.float64, what
    assert torch.isfinite(a).all(), f"{what}: non-finite values (an unwritten element?)"
    err = ((a.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
    assert err <= tol, f"{what}: max error {err:.3g} of max |ref| (tolerance {tol:g})"


def randn(*shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device, dtype)


@pytest.mark.parametrize("dtype", ACT)
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_rms_norm(dtype, with_residual, device, poison_alloc):
    D = 96  # not a power of two: the masked tail
    wide = randn(5, 3, 2 * D, dtype=dtype, device=device, seed=0)
    x = wide[..., :D]  # row-strided, like a split projection
    res = randn(5, 3, D, dtype=torch.float32, device=device, seed=1) if with_residual else None
    w = randn(D, dtype=dtype, device=device, seed=2)
    y, r = add_rms_norm(x, res, w, 1e-6)
    y_ref, r_ref = add_rms_norm_ref(x.double(), None if res is None else res.double(), w.double(), 1e-6)
    assert y.shape == x.shape and y.dtype == dtype and r.dtype == torch.float32
    assert_close(r, r_ref, 1e-6, "residual sum")
    assert_close(y, y_ref, TOL[dtype], "normed")


@pytest.mark.parametrize("dtype", ACT)
def test_gated_layer_norm(dtype, device, poison_alloc):
    D = 96
    z = randn(4, 2, D, dtype=dtype, device=device, seed=0) * 3 + 1
    gate = randn(4, 2, 3 * D, dtype=dtype, device=device, seed=1)[..., D:2 * D]
    w, b = randn(D, dtype=dtype, device=device, seed=2), randn(D, dtype=dtype, device=device, seed=3)
    y = gated_layer_norm(z, gate, w, b, 1e-6)
    ref = gated_layer_norm_ref(z.double(), gate.double(), w.double(), b.double(), 1e-6)
    assert y.dtype == dtype
    assert_close(y, ref, TOL[dtype], "gated layer norm")


@pytest.mark.parametrize("dtype", ACT)
def test_silu_mul(dtype, device, poison_alloc):
    n = 96
    gate_up = randn(5, 3, 2 * n, dtype=dtype, device=device, seed=0) * 3
    wide = randn(5, 3, 2 * n + 8, dtype=dtype, device=device, seed=1)
    wide[..., :2 * n] = gate_up  # row-strided input too
    for x in (gate_up, wide[..., :2 * n]):
        y = silu_mul(x)
        assert y.shape == (5, 3, n) and y.dtype == dtype
        assert_close(y, silu_mul_ref(x.double()), TOL[dtype], "silu(gate) * up")


def test_norm_errors(device):
    x = torch.zeros(2, 8, device=device)
    with pytest.raises(ValueError, match="weight"):
        add_rms_norm(x, None, torch.ones(7, device=device), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        add_rms_norm(x, torch.zeros(3, 8, device=device), torch.ones(8, device=device), 1e-6)
    with pytest.raises(TypeError, match="x must be"):
        add_rms_norm(x.long(), None, torch.ones(8, device=device), 1e-6)
    with pytest.raises(ValueError, match="gate"):
        gated_layer_norm(x, x[:1], torch.ones(8, device=device), torch.zeros(8, device=device), 1e-6)
    with pytest.raises(ValueError, match="even"):
        silu_mul(torch.zeros(2, 7, device=device))
    with pytest.raises(ValueError, match="gate_up"):
        silu_mul(torch.tensor(1.0, device=device))


def rotary_tables(f, period, device):
    inv = 10000.0 ** (-torch.arange(0, f, 2, dtype=torch.float64) / f)
    ang = torch.arange(period, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().float().to(device), ang.sin().float().to(device)


@pytest.mark.parametrize("dtype", ACT)
@pytest.mark.parametrize("f", [64, 96])
def test_ttt_step_inputs(dtype, f, device, poison_alloc):
    """Many steps from mixed per-sequence positions, inputs as row-strided views of one projection
    (like the layer's): q, k, v, lr (outputs poisoned) and the conv state."""
    B, H, KC, period, lr_scale = 3, 5, 4, 16, 8.0 / f  # 5 heads: two programs of four, one part-masked
    D = H * f
    wq, bq, wk, bk = (randn(*s, dtype=dtype, device=device, seed=i) * 0.5
                      for i, s in enumerate([(D, KC), (D,), (D, KC), (D,)]))
    lr_bias = randn(H, dtype=torch.float32, device=device, seed=5)
    cos, sin = rotary_tables(f, period, device)
    state = randn(B, KC, D, dtype=dtype, device=device, seed=10)
    state_ref = state.double()
    pos = torch.tensor([0, 7, 29], device=device)
    for step in range(20):
        xqk, gate, v, lr_logit = randn(B, 3 * D + H, dtype=dtype, device=device, seed=100 + step).split(
            [D, D, D, H], dim=-1)
        q, k, v_heads, lr = ttt_step_inputs(xqk, v, lr_logit, state, wq, bq, wk, bk, cos, sin, pos, lr_bias,
                                            lr_scale, H)
        q_ref, k_ref, v_ref, lr_ref = ttt_step_inputs_ref(
            xqk.double(), v.double(), lr_logit.double(), state_ref, wq.double(), bq.double(), wk.double(),
            bk.double(), cos.double(), sin.double(), pos, lr_bias.double(), lr_scale, H)
        assert q.shape == v_heads.shape == (B, H, f) and q.dtype == v_heads.dtype == dtype
        assert v_heads.is_contiguous() and lr.shape == (B, H) and lr.dtype == torch.float32
        assert_close(q, q_ref, TOL[dtype], f"q, step {step}")
        assert_close(k, k_ref, TOL[dtype], f"k, step {step}")
        assert torch.equal(v_heads, v.reshape(B, H, f)), f"v, step {step}"
        assert_close(lr, lr_ref, 1e-6, f"lr, step {step}")
        assert torch.equal(state.double(), state_ref), f"conv state, step {step}: the last inputs, exactly"
        pos += 1


@pytest.mark.parametrize("dtype", ACT)
@pytest.mark.parametrize("with_residual", [True, False])
def test_pre_conv_step(dtype, with_residual, device, poison_alloc):
    """add+RMSNorm -> conv step -> add+RMSNorm over many steps (D = 96: a masked tail): the normed
    output and the residual (poisoned first) and the conv state, against the float64 reference
    fed the kernel's previous state and residual."""
    B, D, KC = 3, 96, 4
    nw, ow = (1 + 0.5 * randn(D, dtype=torch.float32, device=device, seed=i).to(dtype) for i in (0, 1))
    cw, cb = randn(D, KC, dtype=dtype, device=device, seed=2) * 0.5, randn(D, dtype=dtype, device=device, seed=3)
    state = randn(B, KC, D, dtype=dtype, device=device, seed=10)
    residual = randn(B, D, dtype=torch.float32, device=device, seed=11) if with_residual else None
    pos = torch.tensor([0, 5, 30], device=device)  # mixed ring slots
    for step in range(6):
        hidden = randn(B, 2 * D, dtype=dtype, device=device, seed=100 + step)[:, :D]  # row-strided
        state_ref = state.double()
        y, r = pre_conv_step(hidden, residual, state, pos, nw, cw, cb, ow, 1e-6)
        y_ref, r_ref = pre_conv_step_ref(hidden.double(), None if residual is None else residual.double(), state_ref,
                                         pos, nw.double(), cw.double(), cb.double(), ow.double(), 1e-6)
        assert y.dtype == dtype and r.dtype == torch.float32 and y.shape == r.shape == (B, D)
        assert_close(r, r_ref, TOL[dtype], f"residual, step {step}")
        assert_close(y, y_ref, TOL[dtype], f"normed, step {step}")
        assert_close(state, state_ref, TOL[dtype], f"conv state, step {step}")
        residual = r if with_residual else None
        pos += 1


def test_pre_conv_step_keeps_the_residual_in_fp32(device):
    """fp16 rows into an fp32 residual that fp16 cannot hold (1 + 1e-5 k): with the conv's weight and
    bias zero the new residual is exactly residual + hidden, in fp32."""
    B, D, KC = 2, 96, 4
    hidden = randn(B, D, dtype=torch.float16, device=device, seed=0)
    residual = 1 + 1e-5 * torch.arange(B * D, dtype=torch.float32, device=device).view(B, D)
    ones, zeros = torch.ones(D, dtype=torch.float16, device=device), torch.zeros(D, dtype=torch.float16, device=device)
    state = torch.zeros(B, KC, D, dtype=torch.float16, device=device)
    pos = torch.zeros(B, dtype=torch.int64, device=device)
    _, r = pre_conv_step(hidden, residual, state, pos, ones, torch.zeros(D, KC, dtype=torch.float16, device=device),
                         zeros, ones, 1e-6)
    assert torch.equal(r, residual + hidden.float())


def test_gated_layer_norm_of_a_constant_row(device):
    # zero variance: the eps keeps LayerNorm(z) = bias (without it, 0 / 0)
    z = torch.full((2, 64), 3.0, device=device)
    gate, w, b = (randn(2, 64, dtype=torch.float32, device=device, seed=i) for i in range(3))
    y = gated_layer_norm(z, gate, w[0], b[0], 1e-6)
    torch.testing.assert_close(y, gelu_tanh(gate) * b[0])


def test_pre_conv_step_errors(device):
    B, D, KC = 2, 16, 4
    st, x = torch.zeros(B, KC, D, device=device), torch.zeros(B, D, device=device)
    w, cw = torch.ones(D, device=device), torch.zeros(D, KC, device=device)
    pos = torch.zeros(B, dtype=torch.int64, device=device)
    with pytest.raises(TypeError, match="residual"):
        pre_conv_step(x, x.half(), st, pos, w, cw, w, w, 1e-6)
    with pytest.raises(ValueError, match="conv_state"):
        pre_conv_step(x, None, st[:1], pos, w, cw, w, w, 1e-6)
    with pytest.raises(ValueError, match="conv_state"):  # the [B, D, k] layout of mamba-ssm's convs
        pre_conv_step(x, None, st.transpose(1, 2).contiguous(), pos, w, cw, w, w, 1e-6)
    with pytest.raises(ValueError, match="positions"):
        pre_conv_step(x, None, st, pos[:1], w, cw, w, w, 1e-6)
    with pytest.raises(ValueError, match="out_norm_weight"):
        pre_conv_step(x, None, st, pos, w, cw, w, w[:3], 1e-6)
    with pytest.raises(ValueError, match="hidden"):
        pre_conv_step(torch.zeros(D, B, device=device).t(), None, st, pos, w, cw, w, w, 1e-6)
    assert not st.any(), "a rejected call wrote the state"


def test_rotary_ref_is_a_rotation():
    """The reference itself: norms of each (i, i + f/2) pair are kept, position 0 is the identity."""
    cos, sin = rotary_tables(8, 16, "cpu")
    x = torch.randn(5, 2, 8, dtype=torch.float64)
    pos = torch.tensor([0, 3, 16, 17, 40])
    y = apply_rotary_ref(x, pos, cos.double(), sin.double())

    def pair_norm(t):
        return t[..., :4] ** 2 + t[..., 4:] ** 2

    torch.testing.assert_close(pair_norm(y), pair_norm(x))
    torch.testing.assert_close(y[0], x[0])
    torch.testing.assert_close(y[2], x[2])  # 16 = 0 mod 16


def test_ring_conv_state_ref_is_a_causal_conv():
    """The references' ring state itself: stepping tokens one at a time from mixed start positions
    (the ring wraps) gives F.conv1d over the zero-padded sequence, and the state ends as the last
    k inputs."""
    B, T, D, KC = 3, 9, 5, 4
    x = torch.randn(B, T, D, dtype=torch.float64)
    w, b = torch.randn(D, KC, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    state = torch.zeros(B, KC, D, dtype=torch.float64)
    pos = torch.tensor([0, 2, 7])
    ys = []
    for t in range(T):
        ys.append(causal_conv1d_ring_update_ref(x[:, t], state, pos, w, b, silu=False))
        pos += 1
    ref = F.conv1d(F.pad(x.transpose(1, 2), (KC - 1, 0)), w.unsqueeze(1), b, groups=D).transpose(1, 2)
    torch.testing.assert_close(torch.stack(ys, 1), ref)
    torch.testing.assert_close(ring_window(state, pos - 1), x[:, -KC:].transpose(1, 2))


def test_ttt_step_inputs_errors(device):
    B, H, f, KC = 2, 2, 8, 4
    D = H * f
    st = torch.zeros(B, KC, D, device=device)
    w, b = torch.zeros(D, KC, device=device), torch.zeros(D, device=device)
    cos, sin = rotary_tables(f, 16, device)
    pos = torch.zeros(B, dtype=torch.int64, device=device)
    x, logit = torch.zeros(B, D, device=device), torch.zeros(B, H, device=device)
    lr_bias = torch.zeros(H, device=device)

    def call(x=x, v=x, logit=logit, st=st, pos=pos, lr_bias=lr_bias):
        return ttt_step_inputs(x, v, logit, st, w, b, w, b, cos, sin, pos, lr_bias, 0.1, H)

    with pytest.raises(ValueError, match="conv_state"):
        call(st=st[:1])
    with pytest.raises(TypeError, match="conv_state"):
        call(st=st.half())
    with pytest.raises(ValueError, match="positions"):
        call(pos=pos[:1])
    with pytest.raises(TypeError, match="v must"):
        call(v=x.half())
    with pytest.raises(ValueError, match="unit column stride"):
        call(v=torch.zeros(D, B, device=device).t())
    with pytest.raises(ValueError, match="lr_logit"):
        call(logit=logit[:, :1])
    with pytest.raises(ValueError, match="lr_bias"):
        call(lr_bias=lr_bias[:1])
    before = [st.clone(), pos.clone()]
    with pytest.raises(TypeError, match="lr_bias"):
        call(lr_bias=lr_bias.long())
    with pytest.raises(TypeError, match="q_weight"):
        ttt_step_inputs(x, x, logit, st, w.long(), b, w, b, cos, sin, pos, lr_bias, 0.1, H)
    with pytest.raises(TypeError, match="k_bias"):
        ttt_step_inputs(x, x, logit, st, w, b, w, b.double(), cos, sin, pos, lr_bias, 0.1, H)
    with pytest.raises(ValueError, match="period >= 1"):  # positions are taken modulo the period
        ttt_step_inputs(x, x, logit, st, w, b, w, b, cos[:0], sin[:0], pos, lr_bias, 0.1, H)
    with pytest.raises(ValueError, match="num_heads"):
        ttt_step_inputs(x, x, logit, st, w, b, w, b, cos, sin, pos, lr_bias, 0.1, 0)
    assert torch.equal(st, before[0]) and torch.equal(pos, before[1]), "a rejected call wrote the state"
    # a negative position (written by hand: nothing here checks it) reads the table's row pos mod period
    x = randn(B, D, dtype=torch.float32, device=device, seed=3)
    outs = [ttt_step_inputs(x, x, logit, st.clone(), w + 0.5, b, w - 0.5, b, cos, sin, p, lr_bias, 0.1, H)
            for p in (torch.tensor([-3, 5], device=device), torch.tensor([13, 5], device=device))]
    for a, b_ in zip(*outs):
        assert torch.equal(a, b_)


@pytest.mark.parametrize("dtype", ACT)
@pytest.mark.parametrize("rotary,f", [(False, 64), (True, 64), (True, 96)], ids=["conv", "qk-rotary", "qk-rotary-f96"])
def test_conv_prefill(dtype, rotary, f, device, poison_alloc):
    """Ragged prompts (1 token, fewer than the taps, across the 64-token blocks) from a random state
    and positions: outputs (poisoned first; q and k both from the state as it was) and the state
    decode continues from."""
    B, T, H, KC, period = 4, 70, 2, 4, 16
    D = H * f
    lengths = torch.tensor([70, 1, 2, 65], device=device)
    w1, b1, w2, b2 = (randn(*s, dtype=dtype, device=device, seed=i) * 0.5
                      for i, s in enumerate([(D, KC), (D,), (D, KC), (D,)]))
    state = randn(B, KC, D, dtype=dtype, device=device, seed=10)
    state_ref = state.double()
    x = randn(B, T, 3 * D, dtype=dtype, device=device, seed=20)[:, :, D:2 * D]  # a slice, as xqk is
    pos = torch.tensor([0, 7, 29, 3], device=device)
    if rotary:
        cos, sin = rotary_tables(f, period, device)
        out = qk_conv_rotary_prefill(x, state, w1, b1, w2, b2, cos, sin, pos, lengths, H)
        ref = qk_conv_rotary_prefill_ref(x.double(), state_ref, w1.double(), b1.double(), w2.double(), b2.double(),
                                         cos.double(), sin.double(), pos, lengths, H)
    else:
        out = [causal_conv1d_prefill(x, state, w1, b1, pos, lengths)]
        ref = [causal_conv1d_prefill_ref(x.double(), state_ref, w1.double(), b1.double(), pos, lengths)]
    for i, (y, y_ref) in enumerate(zip(out, ref)):
        assert y.dtype == dtype and y.shape == ((B, T, H, f) if rotary else (B, T, D))
        assert_close(y, y_ref, TOL[dtype], f"output {i}")
    assert torch.equal(state.double(), state_ref), "state: the inputs up to each prompt's last token, exactly"


def test_conv_prefill_errors(device):
    B, T, D, KC = 2, 5, 16, 4
    st = torch.zeros(B, KC, D, device=device)
    w, b = torch.zeros(D, KC, device=device), torch.zeros(D, device=device)
    n = torch.full((B,), T, device=device)
    x = torch.zeros(B, T, D, device=device)
    with pytest.raises(ValueError, match="state"):
        causal_conv1d_prefill(x, st[:1], w, b, n, n)
    with pytest.raises(TypeError, match="state"):
        causal_conv1d_prefill(x, st.half(), w, b, n, n)
    with pytest.raises(ValueError, match="lengths"):
        causal_conv1d_prefill(x, st, w, b, n, n[:1])
    with pytest.raises(ValueError, match="positions"):
        causal_conv1d_prefill(x, st, w, b, n[:1], n)
    with pytest.raises(ValueError, match="unit channel stride"):
        causal_conv1d_prefill(x.transpose(1, 2), st, w, b, n, n)
    cos, sin = rotary_tables(8, 16, device)
    with pytest.raises(ValueError, match="k_weight"):
        qk_conv_rotary_prefill(x, st, w, b, w[:, :2], b, cos, sin, n, n, 2)
    with pytest.raises(ValueError, match="conv_state"):
        qk_conv_rotary_prefill(x, st[:1], w, b, w, b, cos, sin, n, n, 2)
    with pytest.raises(ValueError, match="period >= 1"):
        qk_conv_rotary_prefill(x, st, w, b, w, b, cos[:0], sin[:0], n, n, 2)
    with pytest.raises(TypeError, match="weight"):
        causal_conv1d_prefill(x, st, w.long(), b, n, n)
    assert not st.any(), "a rejected call wrote the state"
    # a negative start position (unchecked here) reads the table's row pos mod period, as the decode step
    x = randn(B, T, D, dtype=torch.float32, device=device, seed=4)
    outs = [qk_conv_rotary_prefill(x, st.clone(), w + 0.5, b, w - 0.5, b, cos, sin, p, n, 2)
            for p in (torch.tensor([-3, 5], device=device), torch.tensor([13, 5], device=device))]
    for a, b_ in zip(*outs):
        assert torch.equal(a, b_)
