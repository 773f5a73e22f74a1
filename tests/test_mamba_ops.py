"""Mamba (v1) decode kernels against the float64 PyTorch references (Triton's interpreter
on the CPU; the ``gpu`` tests need CUDA)."""

import pytest
import torch

from ttt_kernels.modules.mamba import Mamba
from ttt_kernels.ops.mamba import (causal_conv1d_ring_update_ref, causal_conv1d_update, mamba_scan_ref, mamba_step,
                                   mamba_step_ref, ring_store, ring_window, selective_state_update,
                                   selective_state_update_ref)
from ttt_kernels.ops.triton_utils import interpreting

ACT = [torch.float32, torch.float16, torch.bfloat16]
# Triton's interpreter (3.9) truncates fp32 -> bf16 where the GPU rounds to nearest, doubling
# bf16's rounding error on the CPU (x_conv, x_proj's output and y are each stored in bf16)
INTERPRETED = interpreting()
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2 if INTERPRETED else 1e-2}


def rel_err(a, ref):
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def assert_rel(a, ref, tol, what):
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    err = rel_err(a, ref)
    assert err <= tol, f"{what}: max error {err:.3g} of max |ref| (tolerance {tol:g})"


def make_params(d, N=16, R=5, K=4, dtype=torch.float32, device="cpu", seed=0):
    """Mamba-like weights in ``mamba_step``'s order; dt spans softplus' curved part and its tails."""
    g = torch.Generator().manual_seed(seed)

    def u(*shape, lo=-1.0, hi=1.0):
        return torch.rand(*shape, generator=g) * (hi - lo) + lo

    conv_w, conv_b = u(d, K) * 0.5, u(d) * 0.5
    x_proj = u(R + 2 * N, d) * d ** -0.5
    dt_w = u(d, R) * R ** -0.5
    dt_b = u(d, lo=-7.0, hi=2.0)
    A_log = torch.log(torch.arange(1, N + 1).float()).repeat(d, 1) + u(d, N) * 0.1
    D = u(d, lo=0.5, hi=1.5)
    act = [t.to(device, dtype) for t in (conv_w, conv_b, x_proj, dt_w, dt_b)]
    return (*act, A_log.to(device), D.to(device))


def make_states(B, d, N=16, K=4, act=torch.float32, state=torch.float32, device="cpu", seed=1):
    """The ring conv state ``[B, K, d]``, the SSM state and each sequence's position (ragged,
    one at 0, so the ring's slots wrap at different steps)."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(B, device=device) * 3 % 11
    return (torch.randn(B, K, d, generator=g).to(device, act), torch.randn(B, d, N, generator=g).to(device, state),
            pos)


def ring_from_window(window, last):
    """A ring state holding the conv window ``[B, d, K]`` of the inputs up to position ``last``."""
    ring = window.new_zeros(window.shape[0], window.shape[2], window.shape[1])
    ring_store(ring, window, last)
    return ring


def poisoned(B, d, dtype, device):
    return torch.full((B, d), float("nan"), dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# single ops


@pytest.mark.parametrize("dtype", ACT)
def test_conv_update_matches_ref(dtype, device):
    B, d = 3, 80
    w, b = make_params(d, dtype=dtype, device=device)[:2]
    cs, _, pos = make_states(B, d, act=dtype, device=device)
    cs64 = cs.double()
    for step in range(6):  # past the 4-slot ring's wrap for every sequence
        x = torch.randn(B, 2 * d, device=device).to(dtype)[:, :d]  # a row-strided view, like in_proj's half
        out = causal_conv1d_update(x, cs, pos, w, b, out=poisoned(B, d, dtype, device))
        ref = causal_conv1d_ring_update_ref(x.double(), cs64, pos, w, b)
        assert_rel(out, ref, TOL[dtype], f"conv step {step}")
        assert torch.equal(cs.double(), cs64), "the conv state holds the raw inputs, exactly"
        pos += 1


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("low_rank_dt", [False, True])
def test_selective_state_update_matches_ref(state_dtype, low_rank_dt, device):
    B, d, N, R = 5, 48, 16, 5
    _, _, _, dt_w, dt_b, A_log, D = make_params(d, N, R, device=device)
    A = -torch.exp(A_log)
    _, h, _ = make_states(B, d, N, state=state_dtype, device=device)
    h64 = h.double()
    tol = 1e-4 if state_dtype == torch.float32 else 1e-2
    for step in range(5):
        if state_dtype != torch.float32:
            h64 = h.double()  # a 16-bit state drifts by its own rounding: check each step from the kernel's state
        x, z = torch.randn(B, d, device=device), torch.randn(B, d, device=device)
        BC = torch.randn(B, 2 * N, device=device)
        dt = torch.randn(B, R, device=device) if low_rank_dt else torch.randn(B, d, device=device) - 3
        kw = dict(dt_proj_weight=dt_w) if low_rank_dt else {}
        out = selective_state_update(h, x, dt, A, BC[:, :N], BC[:, N:], D, z, dt_b, out=poisoned(B, d, x.dtype, device),
                                     **kw)
        ref = selective_state_update_ref(h64, x.double(), dt, A, BC[:, :N], BC[:, N:], D, z, dt_b, **kw)
        assert_rel(out, ref, tol, f"y at step {step}")
        assert_rel(h, h64, tol, f"state at step {step}")


def test_softplus_is_accurate_in_its_tails(device):
    # from a zero state with x = B = C = 1, y = N * softplus(dt) exactly: every dt is checked
    # elementwise, deep in the exp tail (where log(1 + exp(dt)) in fp32 would be off by up to 2%)
    # and past the linear cut-off at 20
    B, d, N = 2, 64, 16
    dt = torch.linspace(-16.0, 30.0, B * d, device=device).view(B, d)
    ones = torch.ones(B, N, device=device)
    h = torch.zeros(B, d, N, device=device)
    y = selective_state_update(h, torch.ones(B, d, device=device), dt, -torch.ones(d, N, device=device), ones, ones)
    torch.testing.assert_close(y.double(), N * torch.nn.functional.softplus(dt.double()), rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# the fused step over many steps


@pytest.mark.parametrize("dtype", ACT)
def test_mamba_step_vs_float64_reference(dtype, device):
    # 3 sequences and 80 channels: neither fills a 16 x 32 tile, so the masks are exercised
    B, d, N, R, steps = 3, 80, 16, 5, 40
    params = make_params(d, N, R, dtype=dtype, device=device)
    cs, h, pos = make_states(B, d, N, act=dtype, device=device)
    cs64, h64 = cs.double(), h.double()
    g = torch.Generator().manual_seed(2)
    for step in range(steps):
        xz = torch.randn(B, 2 * d, generator=g).to(device, dtype)
        x, z = xz[:, :d], xz[:, d:]
        y = mamba_step(x, z, cs, h, pos, *params, out=poisoned(B, d, dtype, device))
        ref = mamba_step_ref(x.double(), z.double(), cs64, h64, pos, *params)
        assert_rel(y, ref, TOL[dtype], f"{dtype} y at step {step}")
        pos += 1
    assert torch.equal(cs.double(), cs64)
    assert_rel(h, h64, TOL[dtype], f"{dtype} ssm state after {steps} steps")


@pytest.mark.parametrize("T", [1, 2, 7])
def test_prefill_then_decode_equals_full_scan(T, device):
    B, d, N, R, S = 3, 80, 16, 5, 6
    dtype = torch.float16
    params = make_params(d, N, R, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(3)
    xz = torch.randn(B, T + S, 2 * d, generator=g).to(device, dtype)
    x, z = xz[..., :d], xz[..., d:]
    ring0, h0, pos = make_states(B, d, N, act=dtype, device=device)  # continuing from a non-zero state
    cs0 = ring_window(ring0, pos - 1)  # the scan takes (and returns) mamba-ssm's window
    y_all, cs_all, h_all = mamba_scan_ref(x.double(), z.double(), *params, conv_state=cs0.double(),
                                          ssm_state=h0.double())

    _, cs, h = mamba_scan_ref(x[:, :T].double(), z[:, :T].double(), *params, conv_state=cs0.double(),
                              ssm_state=h0.double())
    pos = pos + T
    cs, h = ring_from_window(cs.to(dtype), pos - 1), h.float()  # the decode cache's layout and dtypes
    for s in range(S):
        y = mamba_step(x[:, T + s], z[:, T + s], cs, h, pos, *params, out=poisoned(B, d, dtype, device))
        assert_rel(y, y_all[:, T + s], TOL[dtype], f"decode step {s} after a {T}-token prefill")
        pos += 1
    assert torch.equal(ring_window(cs, pos - 1).double(), cs_all)
    assert_rel(h, h_all, TOL[dtype], "ssm state")


def test_scan_ragged_lengths_equal_per_sequence_scans(device):
    B, d, N, R, T = 3, 48, 16, 5, 6
    params = make_params(d, N, R, dtype=torch.float64, device=device)
    x, z = torch.randn(2, B, T, d, dtype=torch.float64, device=device)
    ring0, h0, pos = make_states(B, d, N, act=torch.float64, state=torch.float64, device=device)
    cs0 = ring_window(ring0, pos - 1)
    lengths = torch.tensor([6, 0, 3], device=device)
    y, cs, h = mamba_scan_ref(x, z, *params, conv_state=cs0, ssm_state=h0, lengths=lengths)
    for b, L in enumerate(lengths.tolist()):
        yb, csb, hb = mamba_scan_ref(x[b:b + 1, :L], z[b:b + 1, :L], *params, conv_state=cs0[b:b + 1],
                                     ssm_state=h0[b:b + 1])
        torch.testing.assert_close(y[b, :L], yb[0], rtol=1e-12, atol=1e-12)
        assert (y[b, L:] == 0).all()
        assert torch.equal(cs[b], csb[0])
        torch.testing.assert_close(h[b], hb[0], rtol=1e-12, atol=1e-12)


def test_scan_ref_is_step_ref_repeated(device):
    B, d, N, R, T = 2, 48, 16, 5, 9
    params = make_params(d, N, R, dtype=torch.float64, device=device)
    x, z = torch.randn(2, B, T, d, dtype=torch.float64, device=device)
    cs, h, pos = make_states(B, d, N, act=torch.float64, state=torch.float64, device=device)
    y, cs_scan, h_scan = mamba_scan_ref(x, z, *params, conv_state=ring_window(cs, pos - 1), ssm_state=h)
    for t in range(T):
        torch.testing.assert_close(mamba_step_ref(x[:, t], z[:, t], cs, h, pos, *params), y[:, t], rtol=1e-10,
                                   atol=1e-12)
        pos += 1
    assert torch.equal(ring_window(cs, pos - 1), cs_scan)
    torch.testing.assert_close(h, h_scan, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# the mixer


@pytest.mark.parametrize("use_triton", [True, False])
def test_mixer_step_equals_prefill(use_triton, device):
    B, T = 3, 10
    m = Mamba(40, seed=0, device=device, use_triton=use_triton)  # d_inner 80, dt_rank 3
    hidden = torch.randn(B, T, 40, device=device)
    cache_p = m.allocate_inference_cache(B)
    y_p = m.prefill(hidden, cache_p)
    cache_s = m.allocate_inference_cache(B)
    y_s = []
    for t in range(T):
        y_s.append(m.step(hidden[:, t], cache_s))
        cache_s.positions += 1  # the layer leaves its positions to their owner
    assert_rel(torch.stack(y_s, dim=1), y_p, 1e-4, "stepped vs prefilled outputs")
    # the conv state holds in_proj outputs: on the GPU the [B*T, d] and [B, d] GEMMs round differently
    assert_rel(cache_s.conv_state, cache_p.conv_state, 1e-5, "conv state")
    assert_rel(cache_s.ssm_state, cache_p.ssm_state, 1e-4, "ssm state")


def test_mixer_ragged_prefill_then_step(device):
    B, T = 3, 7
    m = Mamba(40, seed=1, device=device)
    hidden = torch.randn(B, T + 1, 40, device=device)
    lengths = torch.tensor([7, 2, 5])
    cache = m.allocate_inference_cache(B)
    m.prefill(hidden[:, :T], cache, lengths=lengths)
    cache.positions += lengths.to(device)
    nxt = hidden[torch.arange(B), lengths]  # each sequence's next token
    y = m.step(nxt, cache)
    for b, L in enumerate(lengths.tolist()):
        cache_b = m.allocate_inference_cache(1)
        y_b = m.prefill(hidden[b:b + 1, :L + 1], cache_b)
        assert_rel(y[b], y_b[0, L], 1e-4, f"sequence {b}")
        assert_rel(cache.ssm_state[b], cache_b.ssm_state[0], 1e-4, f"sequence {b} ssm state")
        assert_rel(ring_window(cache.conv_state[b:b + 1], cache.positions[b:b + 1]),
                   ring_window(cache_b.conv_state, torch.tensor([L], device=device)), 1e-5, f"sequence {b} conv state")
    with pytest.raises(ValueError, match="lengths"):
        m.prefill(hidden, m.allocate_inference_cache(B), lengths=torch.tensor([1, 2, 99]))


def test_mixer_init_like_mamba_ssm():
    m = Mamba(64, seed=0, dtype=torch.float16)
    assert m.dt_rank == 4 and m.d_inner == 128
    assert m.conv1d.weight.shape == (128, 1, 4) and m.x_proj.weight.shape == (4 + 32, 128)
    dt = torch.nn.functional.softplus(m.dt_proj.bias.float())
    assert dt.min() >= 0.99e-3 and dt.max() <= 0.101
    torch.testing.assert_close(-torch.exp(m.A_log[0]), -torch.arange(1.0, 17.0))
    assert m.A_log.dtype == m.D.dtype == torch.float32 and m.in_proj.weight.dtype == torch.float16
    assert torch.equal(Mamba(64, seed=0).in_proj.weight, Mamba(64, seed=0).in_proj.weight)
    assert not any(p.requires_grad for p in m.parameters())


# --------------------------------------------------------------------------------------------
# bad input: a clear error naming the argument, states untouched


def _step_args(device, dtype=torch.float16):
    B, d, N, R = 3, 48, 16, 5
    xz = torch.randn(B, 2 * d, device=device).to(dtype)
    cs, h, pos = make_states(B, d, N, act=dtype, device=device)
    return dict(zip(["x", "z", "conv_state", "ssm_state", "positions", "conv_weight", "conv_bias", "x_proj_weight",
                     "dt_proj_weight", "dt_proj_bias", "A_log", "D"],
                    [xz[:, :d], xz[:, d:], cs, h, pos, *make_params(d, N, R, dtype=dtype, device=device)]))


def _noncontiguous(t):
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


BAD_STEP_ARGS = [
    ("x", lambda a: a["x"].double(), TypeError),
    ("x", lambda a: a["x"][:, None], ValueError),
    ("x", lambda a: _noncontiguous(a["x"]), ValueError),
    ("z", lambda a: a["z"][:2], ValueError),
    ("z", lambda a: a["z"].float(), TypeError),
    ("conv_state", lambda a: a["conv_state"][..., :40], ValueError),
    ("conv_state", lambda a: a["conv_state"].transpose(1, 2).contiguous(), ValueError),  # mamba-ssm's layout
    ("conv_state", lambda a: _noncontiguous(a["conv_state"]), ValueError),
    ("conv_state", lambda a: a["conv_state"].tolist(), ValueError),
    ("positions", lambda a: a["positions"].float(), TypeError),
    ("positions", lambda a: a["positions"][:2], ValueError),
    ("ssm_state", lambda a: a["ssm_state"].double(), TypeError),
    ("ssm_state", lambda a: _noncontiguous(a["ssm_state"]), ValueError),
    ("ssm_state", lambda a: a["ssm_state"][:, :, :12], ValueError),
    ("conv_weight", lambda a: a["conv_weight"].to("meta"), ValueError),
    ("conv_bias", lambda a: a["conv_bias"][:-1], ValueError),
    ("x_proj_weight", lambda a: a["x_proj_weight"].float(), TypeError),
    ("x_proj_weight", lambda a: a["x_proj_weight"][:-1], ValueError),
    ("dt_proj_weight", lambda a: a["dt_proj_weight"][:-1], ValueError),
    ("dt_proj_bias", lambda a: a["dt_proj_bias"].to("meta"), ValueError),
    ("A_log", lambda a: a["A_log"].T, ValueError),
    ("D", lambda a: a["D"].tolist(), TypeError),
    ("D", lambda a: a["D"].to(torch.int32), TypeError),
]


@pytest.mark.parametrize("name,bad,exc", BAD_STEP_ARGS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_STEP_ARGS)])
def test_mamba_step_rejects_bad_input_and_keeps_state(name, bad, exc, device):
    args = _step_args(device)
    cs0, h0 = args["conv_state"].clone(), args["ssm_state"].clone()
    args[name] = bad(args)
    with pytest.raises(exc, match=rf"^{name}\b"):
        mamba_step(**args)
    for key, ref in (("conv_state", cs0), ("ssm_state", h0)):
        if key != name:
            assert torch.equal(args[key], ref), f"{key} was written although {name} was rejected"


def test_bad_out_and_config_rejected_before_any_write(device):
    args = _step_args(device)
    cs0, h0 = args["conv_state"].clone(), args["ssm_state"].clone()
    with pytest.raises(TypeError, match="out"):
        mamba_step(**args, out=torch.empty(3, 48, device=device))
    with pytest.raises(ValueError, match="ssm_config"):
        mamba_step(**args, ssm_config=(8, 32, 4, 0))  # the fused dt_proj needs 16-row tiles
    with pytest.raises(ValueError, match="ssm_config"):
        mamba_step(**args, ssm_config=(16, 16, 2))  # no register cap given
    with pytest.raises(ValueError, match="ssm_config"):
        mamba_step(**args, ssm_config=(16, 16, 2, 512))
    assert torch.equal(args["conv_state"], cs0) and torch.equal(args["ssm_state"], h0)


def test_single_ops_reject_bad_input(device):
    a = _step_args(device, torch.float32)
    h0 = a["ssm_state"].clone()
    BC = torch.randn(3, 32, device=device)
    A = -torch.exp(a["A_log"])
    with pytest.raises(ValueError, match="dt"):
        selective_state_update(a["ssm_state"], a["x"], a["x"][:, :5], A, BC[:, :16], BC[:, 16:])
    with pytest.raises(ValueError, match="B"):
        selective_state_update(a["ssm_state"], a["x"], a["x"], A, BC[:, :15], BC[:, 16:])
    with pytest.raises(ValueError, match="ssm_state"):
        selective_state_update(a["ssm_state"][:2], a["x"], a["x"], A, BC[:, :16], BC[:, 16:])
    assert torch.equal(a["ssm_state"], h0)
    cs0 = a["conv_state"].clone()
    with pytest.raises(ValueError, match="conv_weight"):
        causal_conv1d_update(a["x"], a["conv_state"], a["positions"], a["conv_weight"][:, :3])
    assert torch.equal(a["conv_state"], cs0)


# --------------------------------------------------------------------------------------------
# cross-checks against mamba-ssm / causal-conv1d (optional) and the full-size GPU check


def _mamba_ssm_ops():
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update as ssu
    except ImportError:
        pytest.skip("mamba_ssm not importable (pip install mamba-ssm on the GPU machine)")
    if not torch.cuda.is_available():
        pytest.skip("mamba_ssm's kernels need CUDA")
    try:
        from causal_conv1d import causal_conv1d_update as ccu
    except ImportError:
        ccu = None
    return ssu, ccu


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cross_check_mamba_ssm(dtype):
    ssu, ccu = _mamba_ssm_ops()
    B, d, N, R = 64, 512, 16, 32
    params = make_params(d, N, R, dtype=dtype, device="cuda")
    conv_w, conv_b, x_proj, dt_w, dt_b, A_log, D = params
    cs, h, pos = make_states(B, d, N, act=dtype, device="cuda")
    cs_m, h_m = ring_window(cs, pos - 1).contiguous(), h.clone()  # mamba-ssm's conv window
    xz = torch.randn(B, 2 * d, device="cuda").to(dtype)
    x, z = xz[:, :d], xz[:, d:]
    y = mamba_step(x, z, cs, h, pos, *params)
    # mamba-ssm's own step: conv update, x_proj, dt_proj GEMM, selective_state_update
    if ccu is not None:
        xc = ccu(x.contiguous(), cs_m, conv_w, conv_b, "silu")
        assert torch.equal(ring_window(cs, pos), cs_m)
    else:
        xc = causal_conv1d_update(x, ring_from_window(cs_m, pos - 1), pos, conv_w, conv_b)
    dt_low, Bm, Cm = torch.nn.functional.linear(xc, x_proj).split([R, N, N], dim=-1)
    dt = torch.nn.functional.linear(dt_low, dt_w)
    y_m = ssu(h_m, xc, dt, -torch.exp(A_log), Bm, Cm, D, z=z.contiguous(), dt_bias=dt_b, dt_softplus=True)
    assert_rel(y, y_m, 1e-2, "y vs mamba_ssm")
    assert_rel(h, h_m, 1e-2, "ssm state vs mamba_ssm")


@pytest.mark.gpu
def test_full_size_step_gpu():
    """d_inner 4096 (mamba-1.4b), B = 512, fp16 activations, fp32 state: the kernels vs the
    reference in fp32 over a few steps, and one CUDA-graph replay vs eager."""
    B, d, N, R = 512, 4096, 16, 128
    dtype = torch.float16
    params = make_params(d, N, R, dtype=dtype, device="cuda")
    cs, h, _ = make_states(B, d, N, act=dtype, device="cuda")
    pos = torch.randint(0, 1000, (B,), device="cuda")
    cs_r, h_r = cs.float(), h.clone()
    for step in range(4):
        xz = torch.randn(B, 2 * d, device="cuda").to(dtype)
        y = mamba_step(xz[:, :d], xz[:, d:], cs, h, pos, *params, out=poisoned(B, d, dtype, "cuda"))
        y_r = mamba_step_ref(xz[:, :d].float(), xz[:, d:].float(), cs_r, h_r, pos, *params)
        assert_rel(y, y_r, 1e-2, f"y at step {step}")
        pos += 1
    assert torch.equal(cs.float(), cs_r)
    assert_rel(h, h_r, 1e-2, "ssm state")

    xz = torch.randn(B, 2 * d, device="cuda").to(dtype)
    cs_e, h_e = cs.clone(), h.clone()
    y_e = mamba_step(xz[:, :d], xz[:, d:], cs_e, h_e, pos, *params)
    out = torch.empty(B, d, dtype=dtype, device="cuda")
    cs_g, h_g = cs.clone(), h.clone()
    mamba_step(xz[:, :d], xz[:, d:], cs_g.clone(), h_g.clone(), pos, *params, out=out)  # compile outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        mamba_step(xz[:, :d], xz[:, d:], cs_g, h_g, pos, *params, out=out)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, y_e)
    assert torch.equal(cs_g, cs_e)
    torch.testing.assert_close(h_g, h_e)
