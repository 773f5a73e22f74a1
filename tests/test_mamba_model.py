"""Mamba LM: the fused step against the reference path, prefill + decode against the full
reference scan, save/load, configs and bad input (CPU, Triton's interpreter, fp32); on the
GPU, CUDA-graph vs eager generation of mamba-1.4b and a cross-check against mamba-ssm."""

import re
from dataclasses import replace

import pytest
import torch

from ttt_kernels.models import MAMBA_CONFIGS, TTTLM, MambaLM, get_config
from ttt_kernels.modules.mamba import MambaLayerCache
from ttt_kernels.utils.generation import DecodeStep, InferenceCache, generate

V = 32000
# fp32: the fused kernels against the PyTorch reference (2e-7 measured on the CPU; GPU GEMMs
# and exp round differently), and the reference against itself at other batch/chunk shapes
TOL, REF_TOL = 1e-4, 1e-5


@pytest.fixture(autouse=True, scope="module")
def exact_and_single_threaded():
    # tiny tensors: one CPU thread is as fast and does not crawl when the cores are shared;
    # on a GPU the fp32 comparisons need fp32 products, not TF32
    n, tf32 = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.set_num_threads(n)
    torch.backends.cuda.matmul.allow_tf32 = tf32


@torch.no_grad()
def tiny_model(device="cpu", dtype=torch.float32, use_triton=True, **overrides):
    """mamba-tiny with the parameters a fresh init leaves at constants (norms, D, A_log)
    perturbed, so a mix-up of any of them shows."""
    model = MambaLM.from_name("mamba-tiny", device=device, dtype=dtype, use_triton=use_triton, **overrides)
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if name.endswith(("norm.weight", "norm_f.weight", ".D", ".A_log")):
            p.add_(0.2 * torch.randn(p.shape, generator=g).to(p.device))
    return model


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def states(cache):
    return [t for layer in cache.layers for t in layer.tensors()]


def random_ids(shape, seed, device):
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed)).to(device)


# ------------------------------------------------------------------ the fused step vs the reference path

def test_fused_step_matches_reference_path(device):
    """Ragged prompts, then 40 teacher-forced steps: logits every step and both states of
    every layer, fused Triton step against the PyTorch reference step (same weights)."""
    model, ref_model = tiny_model(device), tiny_model(device, use_triton=False)
    B, T, steps = 3, 6, 40
    prompt, lengths = random_ids((B, T), 0, device), [6, 1, 4]
    cache, ref_cache = model.allocate_inference_cache(B), ref_model.allocate_inference_cache(B)
    logits, ref_logits = model.prefill(prompt, cache, lengths), ref_model.prefill(prompt, ref_cache, lengths)
    assert rel_err(logits, ref_logits) < TOL  # both scan with the reference; the norms differ (fused)
    for i in range(steps):
        ids = ref_logits.argmax(-1)  # the same tokens go into both
        logits, ref_logits = model.step(ids, cache), ref_model.step(ids, ref_cache)
        assert logits.shape == (B, V)
        assert rel_err(logits, ref_logits) < TOL, f"step {i}"
        if i % 10 == 9:
            for s, rs in zip(states(cache), states(ref_cache), strict=True):
                assert rel_err(s, rs) < TOL, f"state after step {i}"
    assert cache.positions.tolist() == [6 + steps, 1 + steps, 4 + steps]
    assert torch.equal(cache.positions, ref_cache.positions)


# ------------------------------------------------------------------ prefill + decode == the full reference scan

@pytest.mark.parametrize("T", [1, 7])
def test_prefill_then_decode_equals_full_scan(T, device):
    """Prefill T tokens, then decode S with the fused step: each step's logits equal those of
    a fresh prefill (the reference scan) of the whole sequence so far, and the final states
    those of the full sequence's prefill; a prefill in two chunks equals one at once."""
    model = tiny_model(device)
    B, S = 2, 6
    seq = random_ids((B, T + S), T, device)
    cache = model.allocate_inference_cache(B)
    model.prefill(seq[:, :T], cache)
    for s in range(S):
        logits = model.step(seq[:, T + s], cache)
        full = model.prefill(seq[:, :T + s + 1], model.allocate_inference_cache(B))
        assert rel_err(logits, full) < TOL, f"decode step {s} after a {T}-token prefill"
    full_cache = model.allocate_inference_cache(B)
    model.prefill(seq, full_cache)
    for s, rs in zip(states(cache), states(full_cache), strict=True):
        assert rel_err(s, rs) < TOL
    assert torch.equal(cache.positions, full_cache.positions)

    chunked = model.allocate_inference_cache(B)
    model.prefill(seq[:, :T], chunked)
    assert rel_err(model.prefill(seq[:, T:], chunked), logits) < TOL
    for s, rs in zip(states(chunked), states(full_cache), strict=True):
        assert rel_err(s, rs) < REF_TOL


def test_ragged_prefill_equals_each_sequence_alone(device):
    model = tiny_model(device, use_triton=False)  # the batching logic, not the kernels
    lengths = [7, 2, 5]
    prompt, nxt = random_ids((3, 7), 5, device), random_ids((3,), 6, device)
    cache = model.allocate_inference_cache(3)
    first = model.prefill(prompt, cache, lengths)
    second = model.step(nxt, cache)
    for b, n in enumerate(lengths):
        alone = model.allocate_inference_cache(1)
        assert rel_err(first[b], model.prefill(prompt[b:b + 1, :n], alone)[0]) < REF_TOL
        assert rel_err(second[b], model.step(nxt[b:b + 1], alone)[0]) < REF_TOL
        for s, rs in zip(states(cache), states(alone), strict=True):
            assert rel_err(s[b], rs[0]) < REF_TOL


# ------------------------------------------------------------------ generation, configs, save/load

def test_generate_eager_cpu():
    model = tiny_model(use_triton=False)  # generation's bookkeeping; the kernels are tested above
    prompt = random_ids((2, 5), 1, "cpu")
    out = generate(model, prompt, max_length=5 + 8, cg=False, lengths=[5, 2], output_scores=True)
    assert out.sequences.shape == (2, 13) and out.generated.shape == (2, 8) and len(out.scores) == 8
    cache = model.allocate_inference_cache(2)
    logits = model.prefill(prompt, cache, [5, 2])
    for i in range(8):  # by hand: prefill, then feed back the argmax
        ids = logits.argmax(-1)
        assert torch.equal(ids, out.generated[:, i])
        torch.testing.assert_close(logits, out.scores[i], rtol=0, atol=0)
        logits = model.step(ids, cache)
    # the stepper's warm-up steps leave a zeroed cache
    cache = model.allocate_inference_cache(2)
    DecodeStep(model, cache, cg=False)
    assert all(not t.any() for t in cache.tensors())


def test_named_configs_and_roofline_bytes():
    """Every config builds; mamba-1.4b's numbers the roofline uses: d_inner 4096, dt_rank 128,
    13.5 MiB (14.16 MB) of state per sequence (fp32 SSM, fp16 conv ring); a step reads and
    writes the SSM state, reads three of the ring's four slots and writes one, and moves the
    activations and 2.68 GB of fp16 weights (1.33B parameters at a 32000 vocab)."""
    for name in MAMBA_CONFIGS:
        MambaLM(get_config(name), device="meta", dtype=torch.float16, init=False)
    m = MambaLM(get_config("mamba-1.4b"), device="meta", dtype=torch.float16, init=False)
    mixer = m.layers[0].mixer
    assert (mixer.d_inner, mixer.dt_rank, mixer.d_state, len(m.layers)) == (4096, 128, 16, 48)
    state = m.allocate_inference_cache(1).nbytes() - 8  # less the position
    assert state == 48 * 4096 * (16 * 4 + 4 * 2) == 14_155_776
    assert 1.33e9 < sum(p.numel() for p in m.parameters()) < 1.34e9
    weights = m.decode_weight_bytes()
    assert 2.67e9 < weights < 2.68e9
    ssm, conv = 48 * 4096 * 16 * 4, 48 * 4096 * 4 * 2
    per_seq = 2 * ssm + conv + 48 * (3 * 4096 + 128 + 32) * 2  # SSM state twice, the ring once; x, z, y; dt_low, B, C
    assert m.decode_bytes_per_step(512) == 512 * per_seq + weights
    with pytest.raises(ValueError, match="MambaConfig"):
        TTTLM.from_name("mamba-tiny")
    with pytest.raises(ValueError, match="TTTConfig"):
        MambaLM.from_name("ttt-tiny")


def test_vocab_padding_and_seeded_init(device):
    model = MambaLM.from_name("mamba-tiny", vocab_size=509, device=device)
    assert model.embed_tokens.weight.shape == (512, 128)  # padded to a multiple of 8
    cache = model.allocate_inference_cache(2)
    ids = random_ids((2, 3), 0, device) % 509
    assert model.prefill(ids, cache).shape == (2, 509)
    assert model.step(torch.tensor([0, 508], device=device), cache).shape == (2, 509)
    # the logits are the first 509 of the padded LM head's: the same weights unpadded give them too
    full = MambaLM.from_name("mamba-tiny", vocab_size=512, device=device)
    assert torch.equal(full.prefill(ids, full.allocate_inference_cache(2))[:, :509],
                       model.prefill(ids, model.allocate_inference_cache(2)))
    a, b = MambaLM.from_name("mamba-tiny"), MambaLM.from_name("mamba-tiny")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.layers[0].mixer.in_proj.weight, a.layers[1].mixer.in_proj.weight)
    c = MambaLM.from_name("mamba-tiny", seed=1)
    assert not torch.equal(a.embed_tokens.weight, c.embed_tokens.weight)


@torch.no_grad()
def slow_mixer_forward(m, h):
    """mamba-ssm's slow path from zero states, written out: the nn.Conv1d module (padding
    d_conv - 1, cut to T), x_proj, softplus(dt_proj), the scan token by token, the D skip and
    the SiLU(z) gate. Shares no code with the package's reference scan."""
    T = h.shape[1]
    x, z = torch.nn.functional.linear(h, m.in_proj.weight).chunk(2, dim=-1)
    x = torch.nn.functional.silu(m.conv1d(x.transpose(1, 2))[..., :T]).transpose(1, 2)
    dt, Bm, Cm = torch.nn.functional.linear(x, m.x_proj.weight).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = torch.nn.functional.softplus(torch.nn.functional.linear(dt, m.dt_proj.weight, m.dt_proj.bias))
    A = -torch.exp(m.A_log)
    s = x.new_zeros(x.shape[0], m.d_inner, m.d_state)
    ys = []
    for t in range(T):
        s = torch.exp(dt[:, t, :, None] * A) * s + (dt[:, t] * x[:, t])[..., None] * Bm[:, t, None, :]
        ys.append((s * Cm[:, t, None, :]).sum(-1) + m.D * x[:, t])
    return torch.nn.functional.linear(torch.stack(ys, 1) * torch.nn.functional.silu(z), m.out_proj.weight)


def test_mixer_prefill_equals_the_slow_path(device):
    m = tiny_model(device).layers[0].mixer
    h = torch.randn(2, 7, m.d_model, generator=torch.Generator().manual_seed(5)).to(device)
    assert rel_err(m.prefill(h, m.allocate_inference_cache(2)), slow_mixer_forward(m, h)) < REF_TOL


def test_save_load_round_trip(tmp_path, device):
    model = tiny_model(device)
    model.save_pretrained(tmp_path / "m")
    loaded = MambaLM.from_pretrained(tmp_path / "m", device=device)
    assert loaded.config == model.config
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and v.dtype == v2.dtype and torch.equal(v, v2)
    prompt = random_ids((2, 4), 0, device)
    a = model.prefill(prompt, ca := model.allocate_inference_cache(2))
    b = loaded.prefill(prompt, cb := loaded.allocate_inference_cache(2))
    assert torch.equal(a, b)
    assert torch.equal(model.step(a.argmax(-1), ca), loaded.step(b.argmax(-1), cb))
    half = MambaLM.from_pretrained(tmp_path / "m", dtype=torch.float16, use_triton=False)
    assert half.dtype == torch.float16 and half.layers[0].mixer.A_log.dtype == torch.float32
    assert not half.config.use_triton and not half.layers[0].mixer.use_triton
    TTTLM.from_name("ttt-tiny").save_pretrained(tmp_path / "ttt")
    with pytest.raises(ValueError, match="unknown MambaConfig fields"):
        MambaLM.from_pretrained(tmp_path / "ttt")


# ------------------------------------------------------------------ bad input: clear errors, state untouched

def with_layer(cache, i, j, how):
    """A cache sharing ``cache``'s tensors but for layer ``i``'s state ``j`` (0 conv, 1 SSM) in dtype
    ``how``, or non-contiguous (``"strided"``)."""
    layers = list(cache.layers)
    states = layers[i].tensors()
    t = states[j]
    if how == "strided":
        states[j] = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)[..., ::2].copy_(t)
    else:
        states[j] = t.to(how)
    layers[i] = MambaLayerCache(*states, cache.positions)
    return InferenceCache(layers, cache.positions)


def test_bad_input_is_rejected_and_leaves_the_cache_alone(device):
    model = tiny_model(device)
    cache = model.allocate_inference_cache(2)
    model.prefill(random_ids((2, 3), 0, device), cache)
    before = [t.clone() for t in cache.tensors()]
    ids = torch.tensor([1, 2], device=device)
    other_width = MambaLM.from_name("mamba-tiny", d_model=64, device=device).allocate_inference_cache(2)
    other_depth = MambaLM.from_name("mamba-tiny", n_layer=1, device=device).allocate_inference_cache(2)
    bad_calls = [
        (ValueError, "input_ids", lambda: model.step(ids[:1], cache)),
        (ValueError, "input_ids", lambda: model.step(ids[:, None], cache)),
        (TypeError, "input_ids", lambda: model.step(ids.float(), cache)),
        (ValueError, "input_ids", lambda: model.prefill(ids, cache)),
        (ValueError, "input_ids", lambda: model.prefill(ids[:1, None], cache)),
        (ValueError, "lengths", lambda: model.prefill(ids[:, None], cache, lengths=[1, 2])),
        (ValueError, "lengths", lambda: model.prefill(ids[:, None], cache, lengths=[1])),
        (ValueError, "cache", lambda: model.step(ids, other_depth)),
        (TypeError, "cache", lambda: model.step(ids, cache.layers)),
        (ValueError, "conv_state", lambda: model.step(ids, other_width)),
        (ValueError, "cache layer 1", lambda: model.step(ids, InferenceCache([cache.layers[0], other_width.layers[1]],
                                                                             cache.positions))),
        # layer 1's states broken where only its kernels would have noticed, after layer 0 was stepped
        (TypeError, "cache layer 1: ssm_state must have dtype",
         lambda: model.step(ids, with_layer(cache, 1, 1, torch.int32))),
        (TypeError, "cache layer 1: ssm_state must have dtype",
         lambda: model.prefill(ids[:, None], with_layer(cache, 1, 1, torch.int32))),
        (ValueError, "cache layer 1: conv_state must be contiguous",
         lambda: model.step(ids, with_layer(cache, 1, 0, "strided"))),
        (TypeError, "cache layer 1: cache must be a MambaLayerCache",
         lambda: model.step(ids, InferenceCache([cache.layers[0], tuple(cache.layers[1].tensors())], cache.positions))),
        (ValueError, "cache layer 1: its positions are not the cache's",
         lambda: model.step(ids, InferenceCache([cache.layers[0], replace(cache.layers[1], positions=ids.clone())],
                                                cache.positions))),
    ]
    for exc, match, call in bad_calls:
        with pytest.raises(exc, match=re.escape(match)):
            call()
        for t, t0 in zip(cache.tensors(), before, strict=True):
            assert torch.equal(t, t0)
    assert all(not t.any() for t in other_width.tensors())
    # the reference step takes float64 states with float64 activations only: rejected before layer 0 steps
    ref = tiny_model(device, use_triton=False)
    wide = ref.allocate_inference_cache(2, state_dtype=torch.float64)
    with pytest.raises(TypeError, match="cache layer 0: ssm_state must have dtype"):
        ref.step(ids, wide)
    assert all(not t.any() for t in wide.tensors())
    ref64 = tiny_model(device, dtype=torch.float64, use_triton=False)
    ref64.step(ids, ref64.allocate_inference_cache(2, state_dtype=torch.float64))


# ------------------------------------------------------------------ GPU

@pytest.mark.gpu
def test_cuda_graph_generation_equals_eager_1p4b():
    """mamba-1.4b, fp16, fp32 state, ragged prompts: 48 decode steps replayed from one CUDA
    graph give the eager run's tokens, token for token."""
    model = MambaLM.from_name("mamba-1.4b", device="cuda", dtype=torch.float16)
    B, T, n_new = 4, 9, 49  # the first token comes from prefill, then 48 steps
    prompt = random_ids((B, T), 0, "cuda")
    lengths = torch.tensor([9, 1, 5, 8])
    eager = generate(model, prompt, T + n_new, cg=False, lengths=lengths, output_scores=True)
    graph = generate(model, prompt, T + n_new, cg=True, lengths=lengths, output_scores=True)
    assert torch.equal(eager.generated, graph.generated)
    for a, b in zip(eager.scores, graph.scores):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def _mamba_ssm_model(config, device, dtype):
    """mamba-ssm's own LM of the same shape, or a skip."""
    try:
        from mamba_ssm.models.config_mamba import MambaConfig as SSMConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    except ImportError as e:
        pytest.skip(f"mamba_ssm not importable ({e}); pip install -e '.[mamba]' on the GPU machine")
    ssm_config = SSMConfig(d_model=config.d_model, n_layer=config.n_layer, vocab_size=config.vocab_size,
                           ssm_cfg=dict(d_state=config.d_state, d_conv=config.d_conv, expand=config.expand),
                           rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
                           pad_vocab_size_multiple=config.pad_vocab_size_multiple)
    return MambaLMHeadModel(ssm_config, device=device, dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cross_check_mamba_ssm_model(dtype):
    """Our weights loaded into mamba-ssm's MambaLMHeadModel (same parameter names under its
    ``backbone.``): its full-sequence forward (fused scan) against our prefill of 5 tokens
    and 27 fused decode steps, teacher-forced, logits at every position."""
    model = tiny_model("cuda", dtype, d_model=256, n_layer=4)
    theirs = _mamba_ssm_model(model.config, "cuda", dtype)
    sd = {"backbone." + k: v for k, v in model.state_dict().items() if k != "embed_tokens.weight"}
    sd["backbone.embedding.weight"] = sd["lm_head.weight"] = model.embed_tokens.weight
    theirs.load_state_dict(sd, strict=True)
    B, T, S = 4, 5, 28
    seq = random_ids((B, T + S), 0, "cuda")
    with torch.no_grad():
        ref = theirs(seq).logits[..., :V].float()
    cache = model.allocate_inference_cache(B)
    ours = [model.prefill(seq[:, :T], cache)]
    ours += [model.step(seq[:, i], cache) for i in range(T, T + S - 1)]
    tol = 1e-3 if dtype == torch.float32 else 2e-2
    for i, logits in enumerate(ours):
        assert rel_err(logits, ref[:, T - 1 + i]) < tol, f"position {T - 1 + i}"
