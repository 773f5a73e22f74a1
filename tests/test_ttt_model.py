"""Whole-model decode: every inner net against the PyTorch dual reference path, prefill vs
token-by-token decode, save/load, generation; on the GPU, CUDA-graph vs eager generation.

fp32 on the test device (the CPU with Triton's interpreter, or the GPU when there is one)."""

import copy
import dataclasses
import json
import re

import pytest
import torch

from ttt_kernels.models import MambaLM, _common
from ttt_kernels.models.config import CONFIGS, get_config
from ttt_kernels.models.ttt_lm import TTTLM
from ttt_kernels.modules import ttt_layer
from ttt_kernels.modules.ttt_layer import INNER_NETS, get_inner_net
from ttt_kernels.ops import cuda_backend
from ttt_kernels.utils.generation import DecodeStep, InferenceCache, generate, prefill_plan

KERNEL_NETS = [n for n in INNER_NETS if get_inner_net(n).kernel]  # Triton and CUDA
F32, F16 = torch.float32, torch.float16


@pytest.fixture(autouse=True, scope="module")
def exact_and_single_threaded():
    # tiny tensors: one CPU thread is as fast, and does not slow to a crawl (spinning OpenMP
    # workers) when other processes share the cores. On a GPU the fp32 comparisons need
    # fp32 products, not TF32.
    n, tf32 = torch.get_num_threads(), (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_num_threads(n)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@torch.no_grad()
def tiny_model(inner_net="mlp_2_dual", device="cpu", dtype=F32, seed=0):
    """ttt-tiny with every parameter perturbed (a fresh init has zero biases, identity norms and
    a small TTT learning rate, which would hide bugs in those paths)."""
    model = TTTLM.from_name("ttt-tiny", device=device, dtype=dtype, inner_net=inner_net, ttt_base_lr=8.0)
    g = torch.Generator().manual_seed(seed + 1)
    inner = {id(p) for blk in model.layers for p in blk.mixer.inner_params()}
    for p in model.parameters():
        noise = torch.randn(p.shape, generator=g).to(p.device)
        if id(p) in inner and p.dim() == 3:
            p.copy_(noise * p.shape[1] ** -0.5)  # an inner net that does something
        else:
            p.add_((0.02 if p.dim() == 1 and p.shape[0] == 16 else 0.1) * noise)  # token_idx_bias: eta stays > 0
    return model


def with_inner_net(model, name):
    other = copy.deepcopy(model)
    other.set_inner_net(name)
    return other


def reference_for(name):
    return f"{get_inner_net(name).inner}_dual"


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def load_op_or_skip(name):
    try:
        get_inner_net(name).load()
    except ImportError as e:
        pytest.skip(f"{name}: kernel not available yet ({e})")
    if name.endswith("_cuda") and not cuda_backend.is_available():
        pytest.skip(f"{name}: {cuda_backend.unavailable_reason()}")


def conv_states(cache):
    return [t for c in cache.layers for t in (c.pre_conv, c.mixer.qk_conv)]


# ------------------------------------------------------------------ every inner net vs the reference

@pytest.mark.parametrize("inner_net", [n for n in INNER_NETS if n not in ("mlp_1_dual", "mlp_2_dual")])
def test_inner_net_matches_reference_path(inner_net, device):
    """Ragged prompts (so the sequences sit at different mini-batch phases), then 40
    teacher-forced steps: logits every step, conv states, and the TTT weights whenever a
    sequence is at a mini-batch boundary (there primal and dual states hold the same weights);
    dual states are compared whole at the end."""
    load_op_or_skip(inner_net)
    ref_model = tiny_model(reference_for(inner_net), device=device)
    model = with_inner_net(ref_model, inner_net)
    B, T, steps = 2, 6, 40
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 512, (B, T), generator=g).to(device)
    lengths = [6, 3]  # phases 6 and 3 after prefill: the boundaries fall on different steps
    cache, ref_cache = model.allocate_inference_cache(B), ref_model.allocate_inference_cache(B)
    logits, ref_logits = model.prefill(prompt, cache, lengths), ref_model.prefill(prompt, ref_cache, lengths)
    assert rel_err(logits, ref_logits) < 1e-4
    boundaries = 0
    for _ in range(steps):
        ids = ref_logits.argmax(-1)  # the same tokens go into both
        logits, ref_logits = model.step(ids, cache), ref_model.step(ids, ref_cache)
        assert rel_err(logits, ref_logits) < 1e-4
        at_boundary = (cache.positions % 16 == 0).nonzero().flatten().tolist()
        for c, rc in zip(cache.layers, ref_cache.layers):
            for w, rw in zip(c.mixer.ttt.weights, rc.mixer.ttt.weights):
                for b in at_boundary:
                    assert rel_err(w[b], rw[b]) < 1e-4
        boundaries += len(at_boundary)
    assert boundaries == 4  # each sequence crossed two mini-batch boundaries
    assert torch.equal(cache.positions, ref_cache.positions)
    for s, rs in zip(conv_states(cache), conv_states(ref_cache)):
        assert rel_err(s, rs) < 1e-5
    if get_inner_net(inner_net).form == "dual":
        for c, rc in zip(cache.layers, ref_cache.layers):
            for t, rt in zip(c.mixer.ttt.tensors(), rc.mixer.ttt.tensors()):
                assert rel_err(t, rt) < 1e-4


@pytest.mark.parametrize("inner_net", ["mlp_1_dual_triton", "mlp_2_dual_triton"])
def test_step_inputs_launch_only_where_the_ttt_kernel_does_not_make_them(inner_net, monkeypatch, device):
    """mlp_1_dual_triton's TTT kernel makes q, k, v, lr from the projection (ops.conv_rotary's launch
    never runs); mlp_2_dual_triton keeps that launch (measured faster; tuning log v15)."""
    model = tiny_model(inner_net, device=device)
    calls = []
    launch = ttt_layer._fused_ttt_step_inputs
    monkeypatch.setattr(ttt_layer, "_fused_ttt_step_inputs", lambda *a: calls.append(1) or launch(*a))
    cache = model.allocate_inference_cache(2, F16)
    model.step(torch.tensor([1, 2], device=device), cache)
    assert len(calls) == (0 if inner_net == "mlp_1_dual_triton" else model.config.num_hidden_layers)


def test_triton_mlp_state_w1_layout_follows_the_kernel(device):
    """mlp_2_dual_triton keeps W1 hidden-major where its transposed form runs (a 16-bit state at
    f <= 64), row-major elsewhere and for the other inner nets; with a float16 state the model
    then matches the reference path (prefill through the Triton prefill kernel, 20 steps with a
    mini-batch boundary)."""
    ref_model = tiny_model("mlp_2_dual", device=device)
    model = with_inner_net(ref_model, "mlp_2_dual_triton")
    for m, dtype, hidden_major in ((model, F16, True), (model, F32, False), (ref_model, F16, False),
                                   (with_inner_net(ref_model, "mlp_2_dual_cuda"), F16, False)):
        W1 = m.allocate_inference_cache(1, state_dtype=dtype).layers[0].mixer.ttt.weights[0]
        assert W1.is_contiguous() != hidden_major and W1.transpose(-1, -2).is_contiguous() == hidden_major
    B = 2
    prompt = torch.randint(0, 512, (B, 6), generator=torch.Generator().manual_seed(3)).to(device)
    cache, ref_cache = model.allocate_inference_cache(B, F16), ref_model.allocate_inference_cache(B, F16)
    logits, ref_logits = model.prefill(prompt, cache, [6, 3]), ref_model.prefill(prompt, ref_cache, [6, 3])
    for _ in range(20):
        assert rel_err(logits, ref_logits) < 1e-2
        ids = ref_logits.argmax(-1)
        logits, ref_logits = model.step(ids, cache), ref_model.step(ids, ref_cache)
    for c, rc in zip(cache.layers, ref_cache.layers):
        for t, rt in zip(c.mixer.ttt.tensors(), rc.mixer.ttt.tensors()):
            assert rel_err(t, rt) < 1e-2
    # that cache under the CUDA inner net (W1 row-major only): refused before any layer writes
    before = [t.clone() for t in (cache.positions, *conv_states(cache),
                                  *(t for c in cache.layers for t in c.mixer.ttt.tensors()))]
    with pytest.raises(ValueError, match="cache layer 0: state.weights.0.: the CUDA kernel reads W1 row-major"):
        with_inner_net(model, "mlp_2_dual_cuda").step(ids, cache)
    after = [cache.positions, *conv_states(cache), *(t for c in cache.layers for t in c.mixer.ttt.tensors())]
    assert all(torch.equal(x, y) for x, y in zip(before, after))


# ------------------------------------------------------------------ prefill == token-by-token decode

def live_state(cache, b):
    """What decode reads of sequence ``b``'s cache: conv states, TTT weights, and the
    mini-batch so far (dual: cache rows j < t; primal: the gradient sums, unless t = 0).
    Rows beyond t are stale leftovers that no step reads."""
    t = int(cache.positions[b] % 16)
    out = [cache.positions[b]]
    for c in cache.layers:
        st = c.mixer.ttt
        out += [c.pre_conv[b], c.mixer.qk_conv[b], *(w[b] for w in st.weights)]
        if hasattr(st, "k_cache"):
            out += [st.k_cache[b, :, :t], st.v_cache[b, :, :t], st.lr_cache[b, :, :t]]
        elif t > 0:
            out += [g[b] for g in st.grads]
    return out


def assert_same_state(cache, b, ref_cache, rb, tol=1e-5):
    for x, r in zip(live_state(cache, b), live_state(ref_cache, rb), strict=True):
        assert x.shape == r.shape
        assert (x.double() - r.double()).norm() <= tol * max(r.double().norm(), 1e-30)


def assert_caches_close(cache, ref_cache, tol=1e-5):
    for b in range(cache.batch_size):
        assert_same_state(cache, b, ref_cache, b, tol)


def token_by_token(model, prompt, continuation):
    """Step through the prompt one token at a time, then the continuation: logits after the
    prompt's last token and after each continuation token, and the cache."""
    cache = model.allocate_inference_cache(prompt.shape[0])
    for i in range(prompt.shape[1]):
        logits = model.step(prompt[:, i], cache)
    out = [logits]
    for ids in continuation.unbind(1):
        out.append(model.step(ids, cache))
    return out, cache


def prefill_then_decode(model, prompt, continuation, lengths=None):
    cache = model.allocate_inference_cache(prompt.shape[0])
    out = [model.prefill(prompt, cache, lengths)]
    for ids in continuation.unbind(1):
        out.append(model.step(ids, cache))
    return out, cache


@pytest.mark.parametrize("inner_net", ["mlp_2_dual", "mlp_1_primal"])
@pytest.mark.parametrize("length", [1, 16, 21])
def test_prefill_equals_token_by_token(inner_net, length, device):
    # 16 and 21 run their first mini-batch in matrix form; 21 and 1 end mid-mini-batch
    model = tiny_model(inner_net, device=device)
    g = torch.Generator().manual_seed(length)
    prompt = torch.randint(0, 512, (2, length), generator=g).to(device)
    continuation = torch.randint(0, 512, (2, 20), generator=g).to(device)
    out, cache = prefill_then_decode(model, prompt, continuation)
    ref, ref_cache = token_by_token(model, prompt, continuation)
    for x, r in zip(out, ref):
        assert rel_err(x, r) < 1e-5
    assert_caches_close(cache, ref_cache)


def test_ragged_and_chunked_prefill(device):
    """Ragged prompts in one batch equal each sequence prefilled alone, through decode; and a
    prompt prefilled in two chunks equals it prefilled at once."""
    model = tiny_model("mlp_2_dual", device=device)
    g = torch.Generator().manual_seed(3)
    lengths = [21, 1, 16]
    prompt = torch.randint(0, 512, (3, 21), generator=g).to(device)
    continuation = torch.randint(0, 512, (3, 18), generator=g).to(device)
    out, cache = prefill_then_decode(model, prompt, continuation, lengths)
    for b, n in enumerate(lengths):
        ref, ref_cache = token_by_token(model, prompt[b:b + 1, :n], continuation[b:b + 1])
        for x, r in zip(out, ref):
            assert rel_err(x[b], r[0]) < 1e-5
        assert_same_state(cache, b, ref_cache, 0)

    one = model.allocate_inference_cache(3)
    whole = model.prefill(prompt, one)
    two = model.allocate_inference_cache(3)
    model.prefill(prompt[:, :5], two)
    chunked = model.prefill(prompt[:, 5:], two)
    assert rel_err(chunked, whole) < 1e-5
    assert_caches_close(two, one)


def test_prefill_from_mixed_phases(device):
    """A second prefill from positions at different places in their mini-batches (16 and 5) equals
    stepping the tokens one by one (the reference path may take whole mini-batches only where
    every sequence starts one)."""
    model = tiny_model("mlp_2_dual", device=device)
    g = torch.Generator().manual_seed(4)
    first, second = (torch.randint(0, 512, (2, 16), generator=g).to(device) for _ in range(2))
    caches = [model.allocate_inference_cache(2) for _ in range(2)]
    for c in caches:
        model.prefill(first, c, [16, 5])
    logits = model.prefill(second, caches[0])
    for i in range(16):
        stepped = model.step(second[:, i], caches[1])
    assert rel_err(logits, stepped) < 1e-5
    assert_caches_close(caches[0], caches[1])


def test_layer_constants_against_their_definitions(device):
    """What the fused and the reference paths share, so that comparing them cannot check it: the
    learning-rate scale base_lr / f, and the rotary tables (position mod K, frequencies
    theta^(-2i/f)), through a step at position p against p + K from the same state."""
    model = tiny_model("mlp_2_dual", device=device)
    layer, c = model.layers[0].mixer, model.config
    f, K = c.head_dim, c.mini_batch_size
    assert layer.lr_scale == c.ttt_base_lr / f
    angles = torch.arange(K, dtype=torch.float64)[:, None] * c.rope_theta ** (-torch.arange(0, f, 2) / f)[None, :]
    torch.testing.assert_close(layer.rotary.cos.double().cpu(), angles.cos(), rtol=0, atol=1e-6)
    torch.testing.assert_close(layer.rotary.sin.double().cpu(), angles.sin(), rtol=0, atol=1e-6)
    ids = torch.tensor([5, 9], device=device)
    logits = []
    for p in (3, 3 + K):
        cache = model.allocate_inference_cache(2)
        cache.positions.fill_(p)
        logits.append(model.step(ids, cache))
    assert torch.equal(logits[0], logits[1])


@pytest.mark.parametrize("family", ["ttt", "mamba"])
def test_reference_step_compiles_to_one_graph(family):
    """The per-step cache checks trace under torch.compile (no graph break before the first layer):
    a reference-path step is one graph."""
    import torch._dynamo
    model = (tiny_model("mlp_2_dual") if family == "ttt" else
             MambaLM.from_name("mamba-tiny", use_triton=False))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.step)(torch.tensor([1, 2]), model.allocate_inference_cache(2))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_decode_bytes_per_step_counts_what_a_step_moves():
    """Per layer and sequence: the inner net's weights read once (state dtype) plus q, k, v, out,
    and the weights written once per mini-batch of K; once per step: the model's weights."""
    model = TTTLM.from_name("ttt-tiny", inner_net="mlp_2_dual")
    c, B = model.config, 3
    f, H, K, L = c.head_dim, c.num_attention_heads, c.mini_batch_size, c.num_hidden_layers
    per_head = f * 4 * f + 4 * f + 4 * f * f + f  # W1, b1, W2, b2
    state = B * H * per_head * 2  # fp16 state
    expected = L * (state + state / K + B * H * 4 * f * 4) + model.decode_weight_bytes()  # fp32 activations
    assert model.decode_bytes_per_step(B, torch.float16) == int(expected)


def test_model_prefill_plans_once(monkeypatch, device):
    """The model checks positions and lengths once (``prefill_plan``, a host sync) and hands the
    plan to its layers, which plan nothing themselves; a layer given both a plan and lengths refuses."""
    model = tiny_model("mlp_2_dual", device=device)
    prompt = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(4)).to(device)
    cache = model.allocate_inference_cache(2)
    monkeypatch.setattr(ttt_layer, "prefill_plan", lambda *a: pytest.fail("a layer planned its own prefill"))
    model.prefill(prompt, cache, [7, 3])
    monkeypatch.undo()
    plan = prefill_plan(cache.positions, None, 7)
    x = torch.zeros(2, 7, model.config.hidden_size, device=device)
    with pytest.raises(ValueError, match="not both"):
        model.layers[0].mixer.prefill(x, cache.layers[0].mixer, [7, 7], plan=plan)
    with pytest.raises(ValueError, match="plan is for"):
        model.layers[0].mixer.prefill(x[:, :6], cache.layers[0].mixer, plan=plan)


# ------------------------------------------------------------------ configs, save/load, generation

def test_named_configs_sizes():
    """The 1B config's numbers the roofline uses: ~2.6 GB of fp16 weights, 50 MB of dual
    fp16 TTT weights per sequence (primal: twice that); every config builds."""
    for name in CONFIGS:
        TTTLM(get_config(name), device="meta", dtype=torch.float16, init=False)
    m = TTTLM(get_config("ttt-1b"), device="meta", dtype=torch.float16, init=False)
    assert 2.5e9 < m.decode_weight_bytes() < 2.7e9
    cache = m.allocate_inference_cache(1)
    ttt_weights = sum(w.numel() * 2 for c in cache.layers for w in c.mixer.ttt.weights)
    assert 50e6 < ttt_weights < 51e6
    m.set_inner_net("mlp_2_primal")
    assert 100e6 < m.allocate_inference_cache(1).nbytes() < 103e6
    with pytest.raises(ValueError):
        m.set_inner_net("mlp_1_dual")


def with_layer_state(cache, i, pre_conv=None, qk_conv=None, **ttt_fields):
    """A cache sharing ``cache``'s tensors but for layer ``i``'s replaced pre-conv, qk-conv or TTT state fields."""
    blk = cache.layers[i]
    mixer = dataclasses.replace(blk.mixer, ttt=dataclasses.replace(blk.mixer.ttt, **ttt_fields),
                                qk_conv=blk.mixer.qk_conv if qk_conv is None else qk_conv)
    layers = list(cache.layers)
    layers[i] = dataclasses.replace(blk, mixer=mixer, pre_conv=blk.pre_conv if pre_conv is None else pre_conv)
    return InferenceCache(layers, cache.positions)


def strided(t):
    """``t``'s values in a non-contiguous tensor."""
    return torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)[..., ::2].copy_(t)


def test_bad_input_is_rejected_and_leaves_the_cache_alone(device):
    """Bad ids, a cache of another inner-net form (set_inner_net after allocating), of the other
    family, with one layer of another width: a clear error before any layer is stepped."""
    model = tiny_model("mlp_2_dual", device=device)
    cache = model.allocate_inference_cache(2)
    ids = torch.tensor([1, 2], device=device)
    model.prefill(ids[:, None].repeat(1, 3), cache)
    before = [t.clone() for t in cache.tensors()]
    primal = with_inner_net(model, "mlp_2_primal")
    other_family = TTTLM.from_name("ttt-tiny", inner_net="mlp_1_dual", device=device).allocate_inference_cache(2)
    narrow = TTTLM.from_name("ttt-tiny", hidden_size=64, num_attention_heads=1, device=device)
    spliced = InferenceCache([cache.layers[0], narrow.allocate_inference_cache(2).layers[1]], cache.positions)
    ttt1 = cache.layers[1].mixer.ttt
    bad_calls = [
        (ValueError, "input_ids", lambda: model.step(ids[:1], cache)),
        (TypeError, "input_ids", lambda: model.step(ids.float(), cache)),
        (TypeError, "TTTPrimalState", lambda: primal.step(ids, cache)),
        (TypeError, "TTTPrimalState", lambda: primal.prefill(ids[:, None], cache)),
        (ValueError, "mlp_2 needs 4", lambda: model.step(ids, InferenceCache(other_family.layers, cache.positions))),
        (ValueError, "cache layer 1", lambda: model.step(ids, spliced)),
        (TypeError, "not a TTT block", lambda: model.step(ids, InferenceCache([cache.layers[0], (ids, ids)],
                                                                              cache.positions))),
        # layer 1's state broken where only its TTT op would have noticed, after layer 0 was stepped
        (ValueError, "cache layer 1: state.k_cache must have shape",
         lambda: model.step(ids, with_layer_state(cache, 1, k_cache=ttt1.k_cache[:, :, :8].contiguous()))),
        (TypeError, "cache layer 1: state.lr_cache must have dtype",
         lambda: model.prefill(ids[:, None], with_layer_state(cache, 1, lr_cache=ttt1.lr_cache.half()))),
        (TypeError, "cache layer 1: the state's weights must share one dtype",
         lambda: model.step(ids, with_layer_state(cache, 1, weights=[ttt1.weights[0].half(), *ttt1.weights[1:]]))),
        (ValueError, "cache layer 1: state.k_cache and state.v_cache share memory",
         lambda: model.step(ids, with_layer_state(cache, 1, v_cache=ttt1.k_cache))),
        (ValueError, "cache layer 1: cache.qk_conv must be contiguous",
         lambda: model.step(ids, with_layer_state(cache, 1, qk_conv=strided(cache.layers[1].mixer.qk_conv)))),
        (TypeError, "cache layer 0: pre_conv must have dtype",
         lambda: model.step(ids, with_layer_state(cache, 0, pre_conv=cache.layers[0].pre_conv.double()))),
        (TypeError, "lengths must be integers", lambda: model.prefill(ids[:, None].repeat(1, 3), cache, [2.7, 3.0])),
        (TypeError, "lengths must be integers", lambda: model.prefill(ids[:, None], cache, torch.tensor([True, True]))),
        (ValueError, "the batch is empty",
         lambda: model.prefill(ids[:0, None], model.allocate_inference_cache(0))),
        (ValueError, "input_ids must be a", lambda: generate(model, ids, 5, cg=False)),
        (TypeError, "max_length must be an int", lambda: generate(model, ids[:, None], 5.0, cg=False)),
        (ValueError, "cache layer 0: its positions are not the cache's",
         lambda: model.step(ids, InferenceCache(cache.layers, cache.positions.clone()))),
    ]
    for exc, match, call in bad_calls:
        with pytest.raises(exc, match=match):
            call()
        for t, t0 in zip(cache.tensors(), before, strict=True):
            assert torch.equal(t, t0), match
    with pytest.raises(TypeError, match="runs states in"):
        with_inner_net(model, "mlp_2_dual_triton").allocate_inference_cache(2, state_dtype=torch.float64)


def test_layer_checks_its_input_and_cache_before_writing(device):
    """A TTT layer used alone: a bad input or cache is rejected before its convs step."""
    layer = tiny_model("mlp_2_dual_triton", device=device).layers[0].mixer
    cache = layer.allocate_inference_cache(2, F32, F32)
    x = torch.randn(2, layer.hidden_size, device=device)
    layer.step(x, cache)
    before = [t.clone() for t in cache.tensors()]
    primal = copy.deepcopy(layer)
    primal.set_inner_net("mlp_2_primal_triton")
    bad_calls = [
        (TypeError, "state.lr_cache must have dtype",
         lambda: layer.step(x, dataclasses.replace(cache, ttt=dataclasses.replace(cache.ttt,
                                                                                   lr_cache=cache.ttt.lr_cache.half())))),
        (TypeError, "TTTPrimalState", lambda: primal.step(x, cache)),
        (TypeError, "x must have dtype", lambda: layer.step(x.double(), cache)),
        (ValueError, "x must be a [B, D]", lambda: layer.step(x[:, :-1], cache)),
        (ValueError, "state.weights[0] must have shape (1,", lambda: layer.step(x[:1], cache)),
        (ValueError, "x must be a [B, T, D]", lambda: layer.prefill(x, cache)),
    ]
    for exc, match, call in bad_calls:
        with pytest.raises(exc, match=re.escape(match)):
            call()
        for t, t0 in zip(cache.tensors(), before, strict=True):
            assert torch.equal(t, t0), match
    # a caller's int32 positions (the ops take them) are fine
    own = layer.allocate_inference_cache(2, F32, F32, positions=torch.zeros(2, dtype=torch.int32, device=device))
    layer.step(x, own)


def test_prompt_longer_than_the_fused_prefill_takes_is_rejected_before_any_layer_runs():
    # the kernels address the in-projection's rows (3 D + H wide) with 32-bit offsets
    model = TTTLM.from_name("ttt-tiny", inner_net="mlp_2_dual_triton")
    c = model.config
    limit = (2**31 - 1) // (3 * c.hidden_size + c.num_attention_heads)
    cache = model.allocate_inference_cache(1)
    before = [t.clone() for t in cache.tensors()]
    with pytest.raises(ValueError, match=f"longer than the fused prefill takes at once \\({limit}\\)"):
        model.prefill(torch.zeros(1, limit + 1, dtype=torch.long), cache)
    assert all(torch.equal(t, t0) for t, t0 in zip(cache.tensors(), before, strict=True))


@pytest.mark.parametrize("inner_net,K", [("mlp_2_dual_triton", 12), ("mlp_1_dual_triton", 8),
                                         ("mlp_2_primal_triton", 12)])
def test_kernel_sizes_are_checked_when_the_model_is_built(inner_net, K):
    with pytest.raises(ValueError, match="K must be a power of two|need a mini-batch K >= 16"):
        TTTLM.from_name("ttt-tiny", inner_net=inner_net, mini_batch_size=K)
    TTTLM.from_name("ttt-tiny", inner_net=reference_for(inner_net), mini_batch_size=K)  # the references take any K


def test_save_load_round_trip(tmp_path, device):
    model = tiny_model("mlp_2_dual", device=device)
    model.save_pretrained(tmp_path / "m")
    loaded = TTTLM.from_pretrained(tmp_path / "m", device=device)
    assert loaded.config == model.config
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and v.dtype == v2.dtype and torch.equal(v, v2)
    prompt = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(0)).to(device)
    a = model.prefill(prompt, model.allocate_inference_cache(2))
    b = loaded.prefill(prompt, loaded.allocate_inference_cache(2))
    assert torch.equal(a, b)
    assert TTTLM.from_pretrained(tmp_path / "m", inner_net="mlp_2_primal").config.inner_net == "mlp_2_primal"
    with pytest.raises(ValueError):
        TTTLM.from_pretrained(tmp_path / "m", inner_net="mlp_1_dual")
    # a fresh init is seeded: the same weights every time
    assert torch.equal(TTTLM.from_name("ttt-tiny").embed_tokens.weight, TTTLM.from_name("ttt-tiny").embed_tokens.weight)


def test_from_pretrained_errors_name_the_file(tmp_path):
    path = tmp_path / "m"
    TTTLM.from_name("ttt-tiny").save_pretrained(path)
    config = json.loads((path / "config.json").read_text())

    def rewrite(name, text):
        (path / name).write_text(text) if isinstance(text, str) else (path / name).write_bytes(text)

    weights = (path / "model.safetensors").read_bytes()
    cases = [
        ("config.json", "{not json", ValueError, "config.json"),
        ("config.json", json.dumps([1, 2]), TypeError, "JSON object, got list"),
        ("config.json", json.dumps({**config, "hidden_size": "128"}), TypeError, "TTTConfig.hidden_size must be int"),
        ("config.json", json.dumps({**config, "hidden_size": 64}), ValueError, "do not fit its config.json"),
        ("model.safetensors", weights[:100], ValueError, "model.safetensors is not a readable safetensors file"),
    ]
    for name, text, exc, match in cases:
        original = (path / name).read_bytes()
        rewrite(name, text)
        with pytest.raises(exc, match=re.escape(match)):
            TTTLM.from_pretrained(path)
        rewrite(name, original)
    with pytest.raises(TypeError, match="floating-point"):
        TTTLM.from_pretrained(path, dtype=torch.int32)
    TTTLM.from_pretrained(path)  # restored
    assert get_config("mamba-tiny", dt_rank="auto").dt_rank is None  # as mamba-ssm's configs say it


def test_generate_eager_cpu():
    model = tiny_model("mlp_2_dual")
    prompt = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(1))
    out = generate(model, prompt, max_length=9 + 12, cg=False, lengths=[9, 4], output_scores=True)
    assert out.sequences.shape == (2, 21) and out.generated.shape == (2, 12) and len(out.scores) == 12
    # by hand: prefill, then feed back the argmax
    cache = model.allocate_inference_cache(2)
    logits = model.prefill(prompt, cache, [9, 4])
    for i in range(12):
        ids = logits.argmax(-1)
        assert torch.equal(ids, out.generated[:, i])
        assert torch.allclose(logits.float(), out.scores[i])
        logits = model.step(ids, cache)
    # the stepper resets the cache after its warm-up steps
    cache = model.allocate_inference_cache(2)
    DecodeStep(model, cache, cg=False)
    assert cache.positions.sum() == 0


def test_cuda_inner_net_prefills_on_the_cuda_kernel_where_it_fits():
    from ttt_kernels.modules.ttt_layer import prefill_kernel
    from ttt_kernels.ops.ttt_mlp import ttt_mlp_prefill, ttt_mlp_prefill_cuda
    for name, dtype, op in (("mlp_2_dual_cuda", torch.float16, ttt_mlp_prefill_cuda),
                            ("mlp_2_dual_cuda", F32, ttt_mlp_prefill),  # an fp32 state does not fit on-chip
                            ("mlp_2_dual_triton", torch.float16, ttt_mlp_prefill)):
        model = TTTLM.from_name("ttt-tiny", dtype=dtype, inner_net=name)
        state = model.allocate_inference_cache(2).layers[0].mixer.ttt
        q = torch.zeros(2, 16, 2, 64, dtype=dtype)
        assert prefill_kernel(model.layers[0].mixer.spec, q, q, q, state) is op, (name, dtype)
        v = torch.zeros(2, 16, 136, dtype=dtype)[:, :, 1:129].view(2, 16, 2, 64)  # rows off 16-byte alignment
        assert prefill_kernel(model.layers[0].mixer.spec, q, q, v, state) is ttt_mlp_prefill


# ------------------------------------------------------------------ GPU: CUDA graphs

@pytest.mark.gpu
@pytest.mark.parametrize("inner_net", KERNEL_NETS)
@pytest.mark.parametrize("promptlen", [1, 21])
def test_cuda_graph_generation_equals_eager(inner_net, promptlen):
    load_op_or_skip(inner_net)
    model = tiny_model(inner_net, device="cuda", dtype=torch.float16)
    B, n_new = 8, 64  # 63 replays of the graph: every mini-batch phase, 4 weight updates
    prompt = torch.randint(0, 512, (B, promptlen), generator=torch.Generator().manual_seed(promptlen)).cuda()
    lengths = None if promptlen == 1 else torch.tensor([21, 5, 16, 1, 21, 9, 13, 20])
    eager = generate(model, prompt, promptlen + n_new, cg=False, lengths=lengths, output_scores=True)
    graph = generate(model, prompt, promptlen + n_new, cg=True, lengths=lengths, output_scores=True)
    assert torch.equal(eager.generated, graph.generated)
    for a, b in zip(eager.scores, graph.scores):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("inner_net", KERNEL_NETS + ["mamba"])
@pytest.mark.parametrize("cg", [False, True])
def test_model_on_another_gpu_than_the_current_one(inner_net, cg):
    """With cuda:0 current, a model on cuda:1 generates what the same model does on cuda:0: Triton
    launches on the current device and CUDA graphs capture the current device's streams, so
    both must follow the model's device."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    if inner_net != "mamba":
        load_op_or_skip(inner_net)
    outs = []
    for dev in ("cuda:0", "cuda:1"):
        if inner_net == "mamba":
            model = MambaLM.from_name("mamba-tiny", device=dev, dtype=torch.float16)
        else:
            model = tiny_model(inner_net, device=dev, dtype=torch.float16)
        prompt = torch.randint(0, 512, (3, 21), generator=torch.Generator().manual_seed(3)).to(dev)
        with torch.cuda.device(0):
            outs.append((model, generate(model, prompt, 21 + 24, cg=cg, lengths=torch.tensor([21, 4, 17]),
                                         output_scores=True)))
    (m0, out0), (m1, out1) = outs
    for a, b in zip(m0.state_dict().values(), m1.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())  # the same model on both
    assert torch.equal(out0.generated.cpu(), out1.generated.cpu())
    for a, b in zip(out0.scores, out1.scores):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("inner_net", ["mlp_2_dual_triton", "mlp_1_dual_triton", "mamba"])
def test_prefill_syncs_only_to_plan(inner_net, monkeypatch):
    """After the model's one host sync (its prefill plan), a prefill with fused TTT layers, or of
    a Mamba model, queues everything without waiting for the GPU (CUDA's sync debug mode raises
    on any synchronising call)."""
    if inner_net == "mamba":
        model = MambaLM.from_name("mamba-tiny", device="cuda", dtype=torch.float16)
    else:
        model = tiny_model(inner_net, device="cuda", dtype=torch.float16)
    prompt = torch.randint(0, 512, (3, 21), generator=torch.Generator().manual_seed(6)).cuda()
    model.prefill(prompt, model.allocate_inference_cache(3), [21, 4, 17])  # compiles the kernels
    plan_once = _common.prefill_plan

    def plan_then_forbid_syncs(*args):
        plan = plan_once(*args)
        torch.cuda.set_sync_debug_mode("error")
        return plan

    monkeypatch.setattr(_common, "prefill_plan", plan_then_forbid_syncs)
    try:
        model.prefill(prompt, model.allocate_inference_cache(3), [21, 4, 17])
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_cuda_prefill_matches_triton_prefill():
    """mlp_2_dual_cuda prefills an fp16 model on the CUDA kernel: ragged prompts from a start
    mid-mini-batch give the Triton prefill's logits and state."""
    load_op_or_skip("mlp_2_dual_cuda")
    model = tiny_model("mlp_2_dual_triton", device="cuda", dtype=torch.float16)
    cuda_model = with_inner_net(model, "mlp_2_dual_cuda")
    g = torch.Generator().manual_seed(5)
    first, prompt = (torch.randint(0, 512, (3, n), generator=g).cuda() for n in (5, 40))
    lengths = torch.tensor([40, 17, 1])
    caches = [m.allocate_inference_cache(3) for m in (model, cuda_model)]
    logits = []
    for m, cache in zip((model, cuda_model), caches):
        m.prefill(first, cache)  # the prompts start at phase 5
        logits.append(m.prefill(prompt, cache, lengths))
    for b, n in enumerate(lengths.tolist()):
        assert rel_err(logits[1][b, :n], logits[0][b, :n]) < 1e-2
    assert_caches_close(caches[1], caches[0], tol=1e-2)


@pytest.mark.gpu
def test_compiled_step_matches_eager():
    model = tiny_model("mlp_2_dual_triton", device="cuda", dtype=torch.float16)
    prompt = torch.randint(0, 512, (4, 3), generator=torch.Generator().manual_seed(0)).cuda()
    eager = generate(model, prompt, 3 + 20, cg=False, output_scores=True)
    compiled = generate(model, prompt, 3 + 20, cg=True, use_compile=True, output_scores=True)
    # fused fp32 math may differ in the last bits: compare logits, not token streams
    torch.testing.assert_close(eager.scores[1], compiled.scores[1], rtol=2e-2, atol=2e-2)
