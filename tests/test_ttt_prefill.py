"""Fused dual-form Triton prefill (whole prompts) vs the float64 per-token dual reference,
and prefill followed by decode vs decode of every token."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ttt_helpers import DUAL_REFS, LR_SCALE, TOL, random_dual_state, random_layer, rel_err, to_float64

from ttt_kernels.ops.ttt_linear import ttt_linear_decode_dual, ttt_linear_prefill
from ttt_kernels.ops.ttt_mlp import ttt_mlp_decode_dual, ttt_mlp_prefill
from ttt_kernels.ops.ttt_state import TTTDualState

PREFILL = {"mlp_1": ttt_linear_prefill, "mlp_2": ttt_mlp_prefill}
DECODE = {"mlp_1": ttt_linear_decode_dual, "mlp_2": ttt_mlp_decode_dual}
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
K = 16


def make_case(inner_net, B, H, f, T, state_dtype, act_dtype, device, seed):
    """A random layer, a dual state with random cache rows (valid at any start position) and a prompt."""
    gen = torch.Generator().manual_seed(seed)
    params, ln_w, ln_b, tib = random_layer(inner_net, H, f, K, gen=gen)
    tib[3] = -0.5  # eta_3 = max(0, 1/4 - 0.5) = 0: the clamp is exercised
    params, ln_w, ln_b, tib = [p.to(device) for p in params], ln_w.to(device), ln_b.to(device), tib.to(device)
    state = random_dual_state(params, B, K, state_dtype, act_dtype, gen=gen)
    q, k, v = (torch.randn(B, T, H, f, generator=gen, dtype=torch.float64).to(device, act_dtype) for _ in range(3))
    lr = (LR_SCALE * torch.rand(B, T, H, generator=gen, dtype=torch.float64)).to(device, F32)
    return (ln_w, ln_b, tib), state, (q, k, v, lr)


def per_token_reference(inner_net, tokens, pos, lengths, ln, state):
    """The float64 dual reference token by token; sequence ``b`` stops after ``lengths[b]``
    tokens (its state then stays as it is). Updates ``state``, returns the outputs."""
    q, k, v, lr = (x.double() for x in tokens)
    pos = pos.clone()
    outs = []
    for i in range(q.shape[1]):
        active = (lengths > i).to(pos.device)
        before = [t.clone() for t in state.tensors()]
        outs.append(DUAL_REFS[inner_net](q[:, i], k[:, i], v[:, i], lr[:, i], pos, *ln, state))
        for t, t0 in zip(state.tensors(), before):
            t.copy_(torch.where(active.view(-1, *[1] * (t.dim() - 1)), t, t0))
        pos += active.long()
    return torch.stack(outs, 1), pos


def assert_prefill_matches(inner_net, B, H, f, T, pos, lengths, state_dtype, act_dtype, device, seed, config=None,
                           prefill=None, ln_dtype=F32):
    """``prefill`` (default: the Triton op of ``inner_net``) vs the float64 per-token reference;
    the output poisoned with NaN first, so unwritten rows of a prompt fail."""
    ln, state, tokens = make_case(inner_net, B, H, f, T, state_dtype, act_dtype, device, seed)
    ln = [x.to(ln_dtype) for x in ln[:2]] + [ln[2]]  # the reference gets the same rounded values
    ref_state = to_float64(state)
    pos = pos.to(device)
    n = torch.full((B,), T) if lengths is None else torch.as_tensor(lengths)
    kwargs = {} if config is None else {"config": config}
    out = torch.full_like(tokens[0], float("nan"))
    for b in range(B):  # the contract for a given out buffer: rows past a prompt are left as they are
        out[b, int(n[b]):] = 0
    out = (prefill or PREFILL[inner_net])(*tokens, pos, *ln[:2], ln[2].float(), state,
                                          lengths=None if lengths is None else n.to(device), out=out, **kwargs)
    ref, end = per_token_reference(inner_net, tokens, pos, n, ln, ref_state)
    tol = TOL[state_dtype] if act_dtype == F32 else max(TOL[state_dtype], TOL[act_dtype])
    q = tokens[0]
    for b in range(B):
        nb = int(n[b])
        assert out[b, nb:].eq(0).all(), "rows past a ragged prompt must stay untouched (zeros)"
        if nb:  # compare the layer's own contribution LN(z_bar): q passes through and would hide errors
            err = rel_err(out[b, :nb] - q[b, :nb], ref[b, :nb] - q[b, :nb].double())
            assert err < tol, (b, err)
    for w, w_ref in zip(state.weights, ref_state.weights):
        assert rel_err(w, w_ref) < tol
    for b, t in enumerate((end % K).tolist()):  # the mini-batch so far: cache rows j < t, exactly
        torch.testing.assert_close(state.k_cache[b, :, :t].double(), ref_state.k_cache[b, :, :t])
        torch.testing.assert_close(state.v_cache[b, :, :t].double(), ref_state.v_cache[b, :, :t])
        torch.testing.assert_close(state.lr_cache[b, :, :t].double(), ref_state.lr_cache[b, :, :t])


# TTT-MLP runs its weights on-chip (the f = 64, 16-bit state default) or streamed from the
# state in hidden chunks (larger heads, fp32 states); in fp32 both are checked tightly
NETS = [("mlp_1", None), ("mlp_2", {"on_chip": True, "num_warps": 8}), ("mlp_2", {"on_chip": False, "num_warps": 4})]
NET_IDS = ["mlp_1", "mlp_2-on_chip", "mlp_2-streamed"]


@pytest.mark.parametrize("inner_net,config", NETS, ids=NET_IDS)
@pytest.mark.parametrize("T", [1, 15, 16, 17, 40])
def test_prefill_matches_reference(inner_net, config, T, device):
    # one prompt from a mini-batch start, one from the middle of a mini-batch (cache rows in use)
    assert_prefill_matches(inner_net, 2, 2, 64, T, torch.tensor([0, 7]), None, F32, F32, device, seed=T,
                           config=config)


@pytest.mark.parametrize("inner_net,config", NETS, ids=NET_IDS)
def test_prefill_ragged(inner_net, config, device):
    # ends: a full window, mid-window, one token finishing a mini-batch, none at all
    assert_prefill_matches(inner_net, 4, 1, 64, 40, torch.tensor([0, 7, 15, 3]), [40, 17, 1, 0], F32, F32, device,
                           seed=1, config=config)


@pytest.mark.parametrize("inner_net", ["mlp_1", "mlp_2"])
@pytest.mark.parametrize("state_dtype,act_dtype", [(F16, F16), (BF16, BF16), (F32, F16)],
                         ids=["float16", "bfloat16", "float32-float16"])
def test_prefill_state_dtypes(inner_net, state_dtype, act_dtype, device):
    assert_prefill_matches(inner_net, 2, 2, 64, 40, torch.tensor([0, 7]), None, state_dtype, act_dtype, device,
                           seed=2)


@pytest.mark.parametrize("inner_net", ["mlp_1", "mlp_2"])
def test_prefill_padded_head_dim(inner_net, device):
    # f = 96 (the 760M config) runs in 128-wide blocks; TTT-MLP streams its 384 hidden units in chunks
    assert_prefill_matches(inner_net, 2, 1, 96, 20, torch.tensor([0, 7]), [20, 12], F32, F32, device, seed=3)


def assert_prefill_then_decode_equals_decode(inner_net, n_prompt, n_steps, B, H, state_dtype, device, tol,
                                             prefill=None, decode=None, weight_tol=None):
    """Prefill of a prompt then decode steps == the decode kernel over every token, state included
    (``prefill``, ``decode``: default the Triton ops of ``inner_net``; ``weight_tol``: the weights'
    tolerance, default ``tol``)."""
    prefill, decode = prefill or PREFILL[inner_net], decode or DECODE[inner_net]
    ln, state, tokens = make_case(inner_net, B, H, 64, n_prompt + n_steps, state_dtype, state_dtype, device, seed=4)
    ln = [x.float() for x in ln]
    step_state = TTTDualState([w.clone() for w in state.weights], state.k_cache.clone(), state.v_cache.clone(),
                              state.lr_cache.clone())
    start = torch.arange(B, device=device) * 5  # aligned and mid-mini-batch starts
    prompt = [x[:, :n_prompt].contiguous() for x in tokens]
    out = [prefill(*prompt, start, *ln, state)]
    pos = start + n_prompt
    for i in range(n_prompt, n_prompt + n_steps):
        out.append(decode(*(x[:, i].contiguous() for x in tokens), pos, *ln, state)[:, None])
        pos += 1
    ref, pos = [], start.clone()
    for i in range(n_prompt + n_steps):
        ref.append(decode(*(x[:, i].contiguous() for x in tokens), pos, *ln, step_state)[:, None])
        pos += 1
    assert rel_err(torch.cat(out, 1) - tokens[0], torch.cat(ref, 1) - tokens[0]) < tol
    t = (pos % K).tolist()
    for w, w_ref in zip(state.weights, step_state.weights):
        assert rel_err(w, w_ref) < (tol if weight_tol is None else weight_tol)
    for b in range(B):
        assert torch.equal(state.k_cache[b, :, :t[b]], step_state.k_cache[b, :, :t[b]])
        assert torch.equal(state.lr_cache[b, :, :t[b]], step_state.lr_cache[b, :, :t[b]])


@pytest.mark.parametrize("inner_net", ["mlp_1", "mlp_2"])
def test_prefill_then_decode_equals_decode(inner_net, device):
    assert_prefill_then_decode_equals_decode(inner_net, 21, 11, 2, 1, F32, device, tol=1e-5)


@pytest.mark.parametrize("inner_net", ["mlp_1", "mlp_2"])
def test_prefill_then_decode_rounds_a_16_bit_state_as_decode(inner_net, device):
    # fp16 outputs differ by a rounding here and there (other summation orders), but the weights are
    # rounded to the state dtype at every mini-batch end in both paths: over a 40-token prompt (two
    # ends or more), prefill keeping them in fp32 between windows made them differ by 4e-4
    assert_prefill_then_decode_equals_decode(inner_net, 40, 8, 2, 1, F16, device, tol=2e-3, weight_tol=1e-4)


def test_prefill_bad_arguments(device):
    ln, state, (q, k, v, lr) = make_case("mlp_1", 2, 2, 64, 5, F32, F32, device, seed=5)
    ln = [x.float() for x in ln]
    pos = torch.zeros(2, dtype=torch.int64, device=device)
    before = [t.clone() for t in state.tensors()]
    with pytest.raises(ValueError, match="q must be"):
        ttt_linear_prefill(q[:, 0], k, v, lr, pos, *ln, state)
    with pytest.raises(ValueError, match="contiguous"):  # each token's heads must be one block
        ttt_linear_prefill(q.transpose(2, 3).contiguous().transpose(2, 3), k, v, lr, pos, *ln, state)
    with pytest.raises(TypeError):
        ttt_linear_prefill(q, k.half(), v, lr, pos, *ln, state)
    with pytest.raises(ValueError, match="lengths"):
        ttt_linear_prefill(q, k, v, lr, pos, *ln, state, lengths=torch.tensor([5, 6], device=device))
    with pytest.raises(ValueError, match=r"lengths must be in 0\.\.5"):
        ttt_linear_prefill(q, k, v, lr, pos, *ln, state, lengths=torch.tensor([-1, 5], device=device))
    with pytest.raises(ValueError, match="mini-batch"):  # tl.dot needs 16 rows
        small = TTTDualState(state.weights, *(t[:, :, :8].contiguous() for t in state.tensors()[2:]))
        ttt_linear_prefill(q, k, v, lr, pos, ln[0], ln[1], ln[2][:8], small)
    with pytest.raises(ValueError, match="state"):  # a TTT-Linear state for the TTT-MLP kernel
        ttt_mlp_prefill(q, k, v, lr, pos, *ln, state)
    assert all(torch.equal(t, t0) for t, t0 in zip(state.tensors(), before))


# ------------------------------------------------------------------ GPU: 1B sizes

@pytest.mark.gpu
@pytest.mark.parametrize("inner_net", ["mlp_1", "mlp_2"])
@pytest.mark.parametrize("state_dtype", [F16, F32], ids=["float16", "float32"])
def test_prefill_1b_sizes(inner_net, state_dtype):
    # ~1000-token ragged prompts from every kind of start, H = 32, f = 64, fp16 activations
    assert_prefill_matches(inner_net, 4, 32, 64, 1000, torch.tensor([0, 3, 16, 100]), [1000, 999, 517, 16],
                           state_dtype, F16, "cuda", seed=6)


@pytest.mark.gpu
@pytest.mark.parametrize("inner_net", ["mlp_1", "mlp_2"])
def test_prefill_then_decode_1b_sizes(inner_net):
    assert_prefill_then_decode_equals_decode(inner_net, 1000, 40, 4, 32, F16, "cuda", tol=TOL[F16])


# ------------------------------------------------------------------ the benchmark script

def run_benchmark(*args):
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "benchmarks/prefill_benchmark.py", *args], cwd=root, capture_output=True,
                          text=True, timeout=120)


def test_prefill_benchmark_cli():
    r = run_benchmark("--help")
    assert r.returncode == 0 and "chunk_ttt_linear" in r.stdout, r.stderr
    if not torch.cuda.is_available():
        r = run_benchmark("--batch", "1", "--seqlen", "16")
        assert r.returncode == 2 and "CUDA" in r.stderr


# ------------------------------------------------------------------ the model's prefill path

@pytest.mark.parametrize("inner_net", ["mlp_1_dual_triton", "mlp_2_dual_triton"])
def test_model_prefill_ragged_and_chunked(inner_net, device):
    """TTTLM.prefill through the kernels (ragged, then a second chunk that starts mid-mini-batch)
    equals the PyTorch reference path, logits and decode state."""
    from test_ttt_model import assert_caches_close, reference_for, rel_err as rel, tiny_model, with_inner_net
    model = tiny_model(inner_net, device=device)
    ref_model = with_inner_net(model, reference_for(inner_net))
    prompt = torch.randint(0, 512, (3, 37), generator=torch.Generator().manual_seed(7)).to(device)
    cache, ref_cache = model.allocate_inference_cache(3), ref_model.allocate_inference_cache(3)
    for chunk, lengths in ((prompt[:, :21], [21, 5, 16]), (prompt[:, 21:], None)):
        logits, ref_logits = model.prefill(chunk, cache, lengths), ref_model.prefill(chunk, ref_cache, lengths)
        assert rel(logits, ref_logits) < 1e-4
    assert_caches_close(cache, ref_cache, tol=1e-4)
