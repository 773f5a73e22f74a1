"""Rejected decode calls raise a clear error naming the argument, before anything is
written: the state stays bit-identical. Same checks for every TTT kernel."""

import copy
import re

import pytest
import torch
from ttt_helpers import random_dual_state, random_layer, random_primal_state, random_token

from ttt_kernels.ops.ttt_linear import ttt_linear_decode_dual, ttt_linear_decode_primal
from ttt_kernels.ops.ttt_mlp import ttt_mlp_decode_dual, ttt_mlp_decode_primal
from ttt_kernels.ops.ttt_state import TTTDualState, TTTPrimalState

F16, F32 = torch.float16, torch.float32
K = 16
KERNELS = {("mlp_1", "dual"): ttt_linear_decode_dual, ("mlp_2", "dual"): ttt_mlp_decode_dual,
           ("mlp_1", "primal"): ttt_linear_decode_primal, ("mlp_2", "primal"): ttt_mlp_decode_primal}

# case -> (error type, text the message must contain)
CASES = {
    "k_shape": (ValueError, "k must have shape"),
    "lr_shape": (ValueError, "lr must have shape"),
    "v_dtype": (TypeError, "v must have dtype"),
    "pos_dtype": (TypeError, "pos must have dtype"),
    "negative_pos": (ValueError, "pos must be >= 0"),
    "pos_too_large": (ValueError, "pos must be < 2**31 - 1"),
    "ln_weight_device": (ValueError, "ln_weight must be on"),
    "wrong_state_kind": (TypeError, "state must be a"),
    "state_heads": (ValueError, "state.weights[0] must have shape"),
    "state_not_contiguous": (ValueError, "state.weights[0] must be contiguous"),
    # the transposed view of contiguous storage: a valid layout only for the dual mlp_2 W1
    "state_transposed": (ValueError, "state.weights[0] must be contiguous"),
    "state_mixed_dtypes": (TypeError, "state.weights[0] is torch.float16, state.weights[1] torch.float32"),
    "state_aliased": (ValueError, "share memory"),
    "lr_cache_dtype": (TypeError, "state.lr_cache must have dtype"),
    "dual_minibatch_8": (ValueError, "need a mini-batch K >= 16"),
    "empty_batch": (ValueError, "q holds no sequences"),
    "out_dtype": (TypeError, "out must have dtype"),
    "out_strided": (ValueError, "out must be contiguous"),
    "out_is_state": (ValueError, "out and state.weights"),
}
DUAL_ONLY = ("lr_cache_dtype", "dual_minibatch_8")


def make_call(inner_net, form, B=2, H=2, f=64, device="cpu"):
    gen = torch.Generator().manual_seed(30)
    params, ln_w, ln_b, tib = (x.to(device) if isinstance(x, torch.Tensor) else [p.to(device) for p in x]
                               for x in random_layer(inner_net, H, f, K, gen=gen))  # drawn on the CPU
    state = (random_dual_state(params, B, K, F16, F16, gen=gen) if form == "dual"
             else random_primal_state(params, B, F16, gen=gen))
    q, k, v, lr = random_token(B, H, f, F16, device=device, gen=gen)
    return dict(q=q, k=k, v=v, lr=lr, pos=torch.tensor([3, 20], device=device), ln_weight=ln_w.float(),
                ln_bias=ln_b.float(), token_idx_bias=tib.float(), state=state, out=None), params


def break_call(case, a, params, form):
    B, H, f = a["q"].shape
    st = a["state"]
    if case == "k_shape":
        a["k"] = a["k"][:, :, :32].contiguous()
    elif case == "lr_shape":
        a["lr"] = a["lr"][:, :1].contiguous()
    elif case == "v_dtype":
        a["v"] = a["v"].float()
    elif case == "pos_dtype":
        a["pos"] = a["pos"].float()
    elif case == "negative_pos":
        a["pos"] = torch.tensor([3, -1])
    elif case == "pos_too_large":  # the kernels' 32-bit position arithmetic
        a["pos"] = torch.tensor([3, 2**31 - 1])
    elif case == "ln_weight_device":
        a["ln_weight"] = a["ln_weight"].to("meta")
    elif case == "wrong_state_kind":  # right shapes, the other form's state
        a["state"] = (TTTPrimalState.from_params(params, B, F16) if form == "dual"
                      else TTTDualState.from_params(params, B, K, F16, F16))
    elif case == "state_heads":
        st.weights[0] = st.weights[0][:, :1].contiguous()
    elif case == "state_not_contiguous":
        w = st.weights[0]
        st.weights[0] = torch.empty(*w.shape[:-1], 2 * w.shape[-1], dtype=w.dtype)[..., ::2]
        st.weights[0].copy_(w)
    elif case == "state_transposed":
        st.weights[0] = st.weights[0].transpose(-1, -2).contiguous().transpose(-1, -2)
    elif case == "state_mixed_dtypes":
        st.weights[1] = st.weights[1].float()
    elif case == "state_aliased":  # in-place updates of one would change the other
        if form == "dual":
            st.v_cache = st.k_cache
        else:
            st.grads[0] = st.weights[0]
    elif case == "lr_cache_dtype":
        st.lr_cache = st.lr_cache.double()
    elif case == "dual_minibatch_8":  # a consistent state, but below the kernels' 16-row tiles
        a["token_idx_bias"] = a["token_idx_bias"][:8].contiguous()
        for name in ("k_cache", "v_cache", "lr_cache"):
            setattr(st, name, getattr(st, name)[:, :, :8].contiguous())
    elif case == "empty_batch":
        for name in ("q", "k", "v", "lr", "pos"):
            a[name] = a[name][:0]
    elif case == "out_dtype":
        a["out"] = torch.empty_like(a["q"], dtype=F32)
    elif case == "out_strided":
        a["out"] = torch.empty(B, H, 2 * f, dtype=a["q"].dtype)[..., ::2]
    elif case == "out_is_state":  # the last bias has q's shape and dtype
        a["out"] = st.weights[-1]


@pytest.mark.parametrize("inner_net,form", list(KERNELS), ids=lambda x: str(x))
@pytest.mark.parametrize("case", list(CASES))
def test_rejected_call_leaves_state_untouched(inner_net, form, case):
    if case in DUAL_ONLY and form != "dual":
        pytest.skip("a dual-state case")
    if case == "state_transposed" and (inner_net, form) == ("mlp_2", "dual"):
        pytest.skip("a hidden-major W1 is valid here (test_ttt_decode_dual.py runs it)")
    a, params = make_call(inner_net, form)
    break_call(case, a, params, form)
    before = [x.clone() for x in a["state"].tensors()]
    err, text = CASES[case]
    with pytest.raises(err, match=re.escape(text)):
        KERNELS[inner_net, form](**a)
    for x, x0 in zip(a["state"].tensors(), before):
        assert torch.equal(x, x0)


@pytest.mark.parametrize("inner_net", ["mlp_1", "mlp_2"])
def test_dual_kernels_reject_head_dims_below_their_tiles(inner_net):
    a, _ = make_call(inner_net, "dual", f=8)  # tl.dot needs 16-wide blocks; the primal kernels take f = 8
    before = [x.clone() for x in a["state"].tensors()]
    with pytest.raises(ValueError, match="head dim > 8"):
        KERNELS[inner_net, "dual"](**a)
    assert all(torch.equal(x, x0) for x, x0 in zip(a["state"].tensors(), before))


@pytest.mark.parametrize("inner_net,form", list(KERNELS), ids=lambda x: str(x))
def test_unchecked_negative_position_stays_inside_the_state(inner_net, form, device):
    """``check_positions=False`` trusts the caller; a negative position (only a hand-written one
    can be) is still taken modulo K, as the references and the CUDA kernels take it, so the
    call is the one at ``pos + K`` and writes nowhere else (Triton's ``%`` keeps the sign:
    ``-5 % 16`` indexed row -5)."""
    a, _ = make_call(inner_net, form, device=device)
    b = {**a, "state": copy.deepcopy(a["state"]), "pos": torch.tensor([K - 5, 3], device=device)}
    out_a = KERNELS[inner_net, form](**{**a, "pos": torch.tensor([-5, 3], device=device)}, check_positions=False)
    out_b = KERNELS[inner_net, form](**b)
    assert torch.equal(out_a, out_b)
    for x, y in zip(a["state"].tensors(), b["state"].tensors(), strict=True):
        assert torch.equal(x, y)
