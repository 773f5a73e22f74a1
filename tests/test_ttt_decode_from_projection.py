"""``ttt_linear_decode_dual_from_projection``, whose programs make q, k, v and lr from the projection
themselves (the q/k convs, rotary and lr of ``ttt_step_inputs``): against the two launches it
replaces, and with the float64 references of both steps."""

import math

import pytest
import torch
from ttt_helpers import TOL, random_dual_state, random_layer, rel_err, to_float64

from ttt_kernels.ops.conv_rotary import TTTStepInputs, ttt_step_inputs, ttt_step_inputs_ref
from ttt_kernels.ops.triton_utils import interpreting
from ttt_kernels.ops.ttt_linear import (ttt_linear_decode_dual, ttt_linear_decode_dual_from_projection,
                                        ttt_linear_decode_dual_ref)

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
KC, PERIOD, LR_SCALE = 4, 16, 0.3


def step_inputs_layer(H, f, dtype, device, gen):
    """The layer-side tensors of a ``TTTStepInputs`` but the projection and the conv state."""
    D = H * f
    conv = [(0.5 * torch.randn(*s, generator=gen)).to(device, dtype) for s in [(D, KC), (D,), (D, KC), (D,)]]
    angles = torch.rand(PERIOD, f // 2, generator=gen, dtype=torch.float64) * 2 * math.pi
    return [*conv, angles.cos().float().to(device), angles.sin().float().to(device),
            torch.randn(H, generator=gen).to(device)]


def run_steps(B, H, f, state_dtype, act_dtype, pos, steps, device, seed):
    """``steps`` decode steps of the from-projection op against (a) ``ttt_step_inputs`` + the decode
    op on copies of the states, and (b) the float64 references of both, from fresh projection rows
    (row-strided views, as the layer's) and mixed positions; outputs poisoned."""
    gen = torch.Generator().manual_seed(seed)
    D = H * f
    params, ln_w, ln_b, tib = random_layer("mlp_1", H, f, gen=gen)
    params, ln_w, ln_b, tib = [p.to(device) for p in params], ln_w.to(device), ln_b.to(device), tib.to(device)
    state = random_dual_state(params, B, 16, state_dtype, act_dtype, gen=gen)
    state_2 = type(state)([w.clone() for w in state.weights], state.k_cache.clone(), state.v_cache.clone(),
                          state.lr_cache.clone())  # the two-launch path's copy
    ref_state = to_float64(state)
    ln = [x.float() for x in (ln_w, ln_b, tib)]
    layer = step_inputs_layer(H, f, act_dtype, device, gen)
    layer_ref = [x.double() for x in layer]
    conv_state = torch.randn(B, KC, D, generator=gen).to(device, act_dtype)
    conv_state_2, conv_state_ref = conv_state.clone(), conv_state.double()
    pos = pos.to(device)
    tol = TOL[state_dtype] if act_dtype == F32 else max(TOL[state_dtype], TOL[act_dtype])
    for step in range(steps):
        proj = torch.randn(B, 3 * D + H, generator=gen).to(device, act_dtype)
        xqk, _, v, logit = proj.split([D, D, D, H], dim=-1)
        out = torch.full((B, H, f), math.nan, dtype=act_dtype, device=device)
        inputs = TTTStepInputs(xqk, v, logit, conv_state, *layer[:6], layer[6], LR_SCALE, H)
        assert ttt_linear_decode_dual_from_projection(inputs, pos, *ln, state, out=out) is out
        assert not out.isnan().any(), "unwritten output elements"

        q, k, v_heads, lr = TTTStepInputs(xqk, v, logit, conv_state_2, *layer[:6], layer[6], LR_SCALE,
                                          H).apply(ttt_step_inputs, pos)
        out_2 = ttt_linear_decode_dual(q, k, v_heads, lr, pos, *ln, state_2)
        # the reference conv step (its q, k as test_fused_layer_ops checks them) steps conv_state_ref; the
        # reference TTT step gets the kernels' q, k, v, lr, whose roundings would otherwise add up with
        # its own (bf16 q and k: twice rounded, and truncated in the interpreter)
        TTTStepInputs(xqk.double(), v.double(), logit.double(), conv_state_ref, *layer_ref[:6], layer_ref[6],
                      LR_SCALE, H).apply(ttt_step_inputs_ref, pos)
        ref = ttt_linear_decode_dual_ref(q.double(), k.double(), v_heads.double(), lr.double(), pos, ln_w, ln_b, tib,
                                         ref_state)

        # the same arithmetic as the two launches: bitwise in the interpreter; on a GPU the
        # compiler may contract the rotary's products differently
        if interpreting():
            assert torch.equal(out, out_2), f"step {step}: differs from the two launches"
        else:
            assert rel_err(out, out_2) < 1e-2 * tol, f"step {step}: {rel_err(out, out_2)} from the two launches"
        # the layer's own contribution LN(z_bar): q passes through and would hide errors
        assert rel_err(out - q, ref - q.double()) < tol, (step, rel_err(out - q, ref - q.double()))
        assert torch.equal(conv_state, conv_state_2), f"step {step}: conv state"
        assert torch.equal(conv_state.double(), conv_state_ref), f"step {step}: conv state vs reference"
        pos += 1
    for w, w_2, w_ref in zip(state.weights, state_2.weights, ref_state.weights):
        assert rel_err(w, w_2) < 1e-2 * tol and rel_err(w, w_ref) < tol
    t = (pos % 16).tolist()  # cache rows j < t hold this mini-batch's inputs
    for b in range(B):
        for name in ("k_cache", "v_cache", "lr_cache"):
            torch.testing.assert_close(getattr(state, name)[b, :, : t[b]], getattr(state_2, name)[b, :, : t[b]],
                                       msg=name)


@pytest.mark.parametrize("state_dtype,act_dtype", [(F16, F16), (BF16, BF16), (F32, F16), (F32, F32)],
                         ids=lambda d: str(d).split(".")[-1])
def test_from_projection_matches_two_launches_and_reference(state_dtype, act_dtype, device):
    # 40 steps from mixed positions: every sequence crosses >= 2 mini-batch boundaries
    run_steps(3, 2, 64, state_dtype, act_dtype, torch.tensor([0, 7, 37]), 40, device, seed=20)


def test_from_projection_padded_head_dim(device):
    # f = 96: rotary pairs (c, c + 48) inside a 128-wide block with masked columns
    run_steps(2, 1, 96, F16, F16, torch.tensor([3, 14]), 20, device, seed=21)


@pytest.mark.gpu
def test_from_projection_1b_sizes():
    B = 512
    run_steps(B, 32, 64, F16, F16, torch.arange(B) * 7 % 100, 24, "cuda", seed=22)


def test_from_projection_errors_leave_every_state_alone(device):
    gen = torch.Generator().manual_seed(23)
    B, H, f = 2, 2, 64
    D = H * f
    params, ln_w, ln_b, tib = random_layer("mlp_1", H, f, gen=gen)
    state = random_dual_state([p.to(device) for p in params], B, 16, F16, F16, gen=gen)
    ln = [x.float().to(device) for x in (ln_w, ln_b, tib)]
    layer = step_inputs_layer(H, f, F16, device, gen)
    conv_state = torch.randn(B, KC, D, generator=gen).to(device, F16)
    xqk, _, v, logit = torch.randn(B, 3 * D + H, generator=gen).to(device, F16).split([D, D, D, H], dim=-1)
    pos = torch.tensor([3, 16], device=device)
    before = [t.clone() for t in (*state.tensors(), conv_state)]
    op = ttt_linear_decode_dual_from_projection

    def inputs(**kw):
        fields = dict(xqk=xqk, v=v, lr_logit=logit, conv_state=conv_state, q_weight=layer[0], q_bias=layer[1],
                      k_weight=layer[2], k_bias=layer[3], cos=layer[4], sin=layer[5], lr_bias=layer[6],
                      lr_scale=LR_SCALE, num_heads=H)
        return TTTStepInputs(**(fields | kw))

    with pytest.raises(TypeError, match="TTTStepInputs"):
        op((xqk, v, logit), pos, *ln, state)
    with pytest.raises(ValueError, match="xqk"):
        op(inputs(xqk=xqk[0]), pos, *ln, state)
    with pytest.raises(TypeError, match="v"):
        op(inputs(v=v.float()), pos, *ln, state)
    with pytest.raises(ValueError, match="conv_state"):
        op(inputs(conv_state=conv_state[:, :3]), pos, *ln, state)
    with pytest.raises(ValueError, match="positions"):
        op(inputs(), pos[:1], *ln, state)
    with pytest.raises(ValueError, match="num_heads"):
        op(inputs(num_heads=3), pos, *ln, state)
    with pytest.raises(ValueError, match="ln_weight"):
        op(inputs(), pos, ln[0][:1], *ln[1:], state)
    with pytest.raises(TypeError, match="TTTDualState"):
        op(inputs(), pos, *ln, object())
    # the conv state must not be the output, nor hold the TTT state
    shared = conv_state.clone()
    with pytest.raises(ValueError, match="share memory"):
        op(inputs(conv_state=shared), pos, *ln, state, out=shared.view(-1)[: B * D].view(B, H, f))
    with pytest.raises(ValueError, match="share memory"):
        op(inputs(conv_state=state.k_cache.view(-1)[: B * KC * D].view(B, KC, D)), pos, *ln, state)
    for a, b in zip(before, (*state.tensors(), conv_state)):
        assert torch.equal(a, b), "a rejected call wrote a state"
