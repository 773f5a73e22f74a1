"""TTT mixer for decoding (no autograd): projections, q/k convs, rotary, the TTT op, gate and output.

Per token ``x`` (the block's normed hidden state):

    xqk, gate, v, lr_logit = in_proj(x)                 # one GEMM for all four
    q = conv_q(xqk), k = conv_k(xqk)                    # causal depthwise, kernel 4, own weights
    q, k = rotary(q, k, position mod K)                 # K = TTT mini-batch (16)
    lr = base_lr / f * sigmoid(lr_logit + lr_bias)      # per head
    z = TTT op(q, k, v, lr, ...)                        # q + LN(z_bar), per head
    out = o_proj(gelu(gate) * post_norm(z))

Decode and prefill use the *same* conv weights for k (the original inference code's
decode path convolved k with conv_q's weights). With a fused-kernel inner net the rest
of the decode step is fused too: both convs, the rotary, v's heads and the learning rate in
one launch (``ops.conv_rotary``; an inner net with ``from_projection`` runs them inside its TTT
kernel instead), the output's LayerNorm and gelu gate in another (``ops.norm``); the reference
inner nets run everything in PyTorch.

Which TTT op runs is the inner-net name, resolved in :data:`INNER_NETS`; ops are
imported on first use, so a missing kernel never breaks ``import``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.conv_rotary import (TTTStepInputs, causal_conv1d_prefill, causal_conv1d_prefill_ref, pre_conv_step,
                               pre_conv_step_ref, qk_conv_rotary_prefill, qk_conv_rotary_prefill_ref, ttt_lr_ref,
                               ttt_step_inputs, ttt_step_inputs_ref)
from ..ops.norm import gated_layer_norm, gated_layer_norm_ref
from ..ops.ttt_mlp import w1_hidden_major
from ..ops.ttt_mlp.decode_dual_cuda import check_row_major_w1
from ..ops.ttt_state import (STATE_DTYPES, TTTDualState, TTTPrimalState, _check_tensor, check_kernel_sizes,
                              check_module_input, check_state, inner_net_shapes)
from ..utils.generation import PrefillPlan, prefill_plan
from .rotary import Rotary

# ---------------------------------------------------------------- inner-net registry

@dataclass(frozen=True)
class InnerNet:
    inner: str  # the math: "mlp_1" (TTT-Linear) or "mlp_2" (TTT-MLP)
    form: str  # the state it runs on: "dual" (TTTDualState) or "primal" (TTTPrimalState)
    module: str  # package the op is exported from
    fn: str
    kernel: bool  # a fused kernel: takes check_positions=, stays outside torch.compile
    cuda: bool = False  # the hand-written CUDA kernels (their prefill too, where it covers the shape)
    # W1 stored hidden-major where ttt_kernels.ops.ttt_mlp.w1_hidden_major says the op reads it faster
    hidden_major_w1: bool = False
    # decode through the op's ``*_from_projection`` variant: its programs make q, k, v and lr from
    # the projection (the q/k convs, rotary and lr of ops.conv_rotary), one launch instead of two
    from_projection: bool = False

    def load(self, from_projection: bool = False):
        fn = self.fn + ("_from_projection" if from_projection else "")
        try:
            return getattr(importlib.import_module(self.module), fn)
        except (ImportError, AttributeError) as e:
            raise ImportError(f"TTT op {self.module}.{fn} is not available: {e}") from e


INNER_NETS = {
    # PyTorch per-token references (the dual one is the reference path of the model tests)
    "mlp_1_dual": InnerNet("mlp_1", "dual", "ttt_kernels.ops.ttt_linear", "ttt_linear_decode_dual_ref", False),
    "mlp_2_dual": InnerNet("mlp_2", "dual", "ttt_kernels.ops.ttt_mlp", "ttt_mlp_decode_dual_ref", False),
    "mlp_1_primal": InnerNet("mlp_1", "primal", "ttt_kernels.ops.ttt_linear", "ttt_linear_decode_primal_ref", False),
    "mlp_2_primal": InnerNet("mlp_2", "primal", "ttt_kernels.ops.ttt_mlp", "ttt_mlp_decode_primal_ref", False),
    # Triton kernels: this project's dual form, and the original algorithm as the baseline
    "mlp_1_dual_triton": InnerNet("mlp_1", "dual", "ttt_kernels.ops.ttt_linear", "ttt_linear_decode_dual", True,
                                  from_projection=True),
    "mlp_2_dual_triton": InnerNet("mlp_2", "dual", "ttt_kernels.ops.ttt_mlp", "ttt_mlp_decode_dual", True,
                                  hidden_major_w1=True),
    "mlp_1_primal_triton": InnerNet("mlp_1", "primal", "ttt_kernels.ops.ttt_linear", "ttt_linear_decode_primal", True),
    "mlp_2_primal_triton": InnerNet("mlp_2", "primal", "ttt_kernels.ops.ttt_mlp", "ttt_mlp_decode_primal", True),
    # hand-written CUDA (ttt_kernels._C), the Triton dual kernels' semantics and state layout (W1 row-major)
    "mlp_1_dual_cuda": InnerNet("mlp_1", "dual", "ttt_kernels.ops.ttt_linear", "ttt_linear_decode_dual_cuda", True,
                                cuda=True),
    "mlp_2_dual_cuda": InnerNet("mlp_2", "dual", "ttt_kernels.ops.ttt_mlp", "ttt_mlp_decode_dual_cuda", True,
                                cuda=True),
}

# whole mini-batches in matrix form, for prefill (valid for either state form: at a
# mini-batch start neither the dual cache nor the primal gradient sums are read)
_MINIBATCH_REFS = {"mlp_1": ("ttt_kernels.ops.ttt_linear", "ttt_linear_minibatch_dual_ref"),
                   "mlp_2": ("ttt_kernels.ops.ttt_mlp", "ttt_mlp_minibatch_dual_ref")}
# whole prompts in one launch, for the fused dual-form inner nets (any start, length, ragged)
_PREFILL_KERNELS = {"mlp_1": ("ttt_kernels.ops.ttt_linear", "ttt_linear_prefill"),
                    "mlp_2": ("ttt_kernels.ops.ttt_mlp", "ttt_mlp_prefill")}


def prefill_kernel(spec: InnerNet, q, k, v, state):
    """The fused prefill op for a dual-form kernel inner net: the CUDA TTT-MLP kernel for a CUDA
    inner net where it covers the call (f = 64, 16-bit state), else the inner net's Triton kernel."""
    if spec.cuda and spec.inner == "mlp_2":
        from ..ops.ttt_mlp import cuda_prefill_supported, ttt_mlp_prefill_cuda
        if cuda_prefill_supported(q, k, v, state) is None:
            return ttt_mlp_prefill_cuda
    module, fn = _PREFILL_KERNELS[spec.inner]
    return getattr(importlib.import_module(module), fn)


def get_inner_net(name: str) -> InnerNet:
    if name not in INNER_NETS:
        raise ValueError(f"unknown inner net {name!r}; known: {sorted(INNER_NETS)}")
    return INNER_NETS[name]


# ---------------------------------------------------------------- causal depthwise conv
# Decode state: the last k inputs as a ring ``[B, k, D]``, position p's input in slot p mod k
# (``ops.conv_rotary``: a step writes one slot instead of shifting k).

def conv_weight(conv: nn.Conv1d) -> torch.Tensor:
    """A depthwise conv's weight as the ``[D, k]`` the conv steps take."""
    return conv.weight.view(conv.weight.shape[0], -1)


def pre_conv_block_step(hidden, residual, state: torch.Tensor, positions: torch.Tensor, norm: nn.Module,
                        conv: nn.Conv1d, out_norm: nn.Module, fused: bool):
    """A TTT block's first sub-block at decode, the tokens at ``positions``: ``residual += hidden``,
    ``norm``, the causal ``conv`` (stepping ``state [B, k, D]`` in place), ``residual += conv``, ``out_norm`` ->
    ``(normed, residual)``. No host sync: graph-safe. ``fused``: one Triton launch
    (``ops.conv_rotary.pre_conv_step``), else its PyTorch reference."""
    if out_norm.eps != norm.eps:
        raise ValueError(f"the two norms must share eps, got {norm.eps} and {out_norm.eps}")
    fn = _fused_pre_conv_step if fused else pre_conv_step_ref
    return fn(hidden, residual, state, positions, norm.weight, conv_weight(conv), conv.bias, out_norm.weight,
              norm.eps)


# The fused decode pieces stay outside torch.compile: their launchers check arguments in Python.
_fused_pre_conv_step = torch.compiler.disable(pre_conv_step)
_fused_ttt_step_inputs = torch.compiler.disable(ttt_step_inputs)
_fused_gated_layer_norm = torch.compiler.disable(gated_layer_norm)


def conv_prefill(x: torch.Tensor, state: torch.Tensor, conv: nn.Conv1d, positions: torch.Tensor,
                 lengths: torch.Tensor, fused: bool) -> torch.Tensor:
    """Whole prompts ``x [B, T, D]`` from ``positions`` through a causal depthwise conv continuing
    from ``state`` (left holding each sequence's last inputs up to token ``lengths[b] - 1``) ->
    ``conv + bias`` ``[B, T, D]`` in ``x``'s dtype. ``fused``: the Triton kernel of ``ops.conv_rotary``."""
    fn = causal_conv1d_prefill if fused else causal_conv1d_prefill_ref
    return fn(x, state, conv_weight(conv), conv.bias, positions, lengths)


# ---------------------------------------------------------------- the mixer

@dataclass
class TTTLayerCache:
    ttt: TTTDualState | TTTPrimalState
    # [B, k, D]: the last k inputs of the q and k convs (they convolve the same xqk), a ring
    qk_conv: torch.Tensor
    # [B] int64: each sequence's absolute position. Shared with (and advanced by) the model's
    # cache: the layer reads it and never advances it.
    positions: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        """The tensors this layer owns (not the shared positions)."""
        return [*self.ttt.tensors(), self.qk_conv]


class TTTLayer(nn.Module):
    """TTT sequence mixer. The TTT-specific parameters (inner-net init, TTT norm,
    token-index bias, lr bias) are fp32 whatever the model dtype; the decode state
    is made from them in the state dtype."""

    def __init__(self, hidden_size: int, num_heads: int, inner_net: str = "mlp_2_dual", mini_batch: int = 16,
                 conv_kernel: int = 4, rope_theta: float = 10000.0, base_lr: float = 1.0, device=None, dtype=None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        D, H = hidden_size, num_heads
        f = D // H
        self.hidden_size, self.num_heads, self.head_dim = D, H, f
        self.mini_batch, self.conv_kernel, self.base_lr = mini_batch, conv_kernel, base_lr
        self.inner = get_inner_net(inner_net).inner
        self.set_inner_net(inner_net)

        fp32 = dict(device=device, dtype=torch.float32)
        self.in_proj = nn.Linear(D, 3 * D + H, bias=False, device=device, dtype=dtype)  # [xqk | gate | v | lr]
        self.lr_bias = nn.Parameter(torch.zeros(H, **fp32))
        self.conv_q = nn.Conv1d(D, D, conv_kernel, groups=D, bias=True, device=device, dtype=dtype)
        self.conv_k = nn.Conv1d(D, D, conv_kernel, groups=D, bias=True, device=device, dtype=dtype)
        self.rotary = Rotary(f, mini_batch, rope_theta, device=device)
        self.inner_names = ["W1", "b1", "W2", "b2"][: len(inner_net_shapes(self.inner, f))]
        for name, shape in zip(self.inner_names, inner_net_shapes(self.inner, f)):
            setattr(self, name, nn.Parameter(torch.zeros(H, *shape, **fp32)))
        self.ttt_norm_weight = nn.Parameter(torch.ones(H, f, **fp32))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(H, f, **fp32))
        self.token_idx_bias = nn.Parameter(torch.zeros(mini_batch, **fp32))
        self.post_norm = nn.LayerNorm(D, eps=1e-6, device=device, dtype=dtype)
        self.o_proj = nn.Linear(D, D, bias=False, device=device, dtype=dtype)

    def set_inner_net(self, name: str) -> None:
        """Switch the TTT op (same math family only: the weights stay); allocate a new cache after."""
        spec = get_inner_net(name)
        if spec.inner != self.inner:
            raise ValueError(f"{name} computes {spec.inner}, this layer's weights are for {self.inner}")
        if spec.kernel:  # here, not at the first step: the sizes are the layer's
            check_kernel_sizes(self.mini_batch, self.head_dim, dot=spec.form == "dual")
        if spec.cuda:
            from ..ops.cuda_backend import check_sizes
            check_sizes(self.head_dim, self.mini_batch)
        self.inner_net, self.spec, self._op, self._op_from_projection = name, spec, None, None

    @property
    def op(self):
        if self._op is None:
            self._op = self.spec.load()
        return self._op

    @property
    def op_from_projection(self):
        """The decode op of an inner net with ``from_projection``: takes a ``TTTStepInputs``."""
        if self._op_from_projection is None:
            self._op_from_projection = self.spec.load(from_projection=True)
        return self._op_from_projection

    def inner_params(self) -> list[torch.Tensor]:
        return [getattr(self, n) for n in self.inner_names]

    # ---- cache

    def allocate_inference_cache(self, batch: int, state_dtype: torch.dtype, act_dtype: torch.dtype,
                                 positions: torch.Tensor | None = None) -> TTTLayerCache:
        """Fresh state for ``batch`` sequences. ``positions [B]``: the model's shared position
        tensor (default: a new one at 0, which the caller advances)."""
        _ = self.op_from_projection if self.spec.from_projection else self.op  # fail here, not mid-step, if missing
        dtypes = STATE_DTYPES if self.spec.kernel else (*STATE_DTYPES, torch.float64)
        if state_dtype not in dtypes:
            raise TypeError(f"{self.inner_net} runs states in {[str(d) for d in dtypes]}, got {state_dtype}")
        params = [p.detach() for p in self.inner_params()]
        if self.spec.form == "dual":
            hidden_major = self.spec.hidden_major_w1 and w1_hidden_major(state_dtype, self.head_dim)
            ttt = TTTDualState.from_params(params, batch, self.mini_batch, state_dtype, act_dtype, hidden_major)
        else:
            ttt = TTTPrimalState.from_params(params, batch, state_dtype)
        dev = self.in_proj.weight.device
        qk_conv = torch.zeros(batch, self.conv_kernel, self.hidden_size, dtype=act_dtype, device=dev)
        if positions is None:
            positions = torch.zeros(batch, dtype=torch.int64, device=dev)
        return TTTLayerCache(ttt, qk_conv, positions)

    def check_cache(self, cache: TTTLayerCache, batch: int) -> None:
        """That ``cache`` is one this layer's ``allocate_inference_cache`` makes for ``batch``
        sequences: the current inner net's state form, shapes, dtypes, device and layout
        (host-side only). Checked before anything is written: the convs step before the TTT
        op would reject a bad state."""
        form = TTTDualState if self.spec.form == "dual" else TTTPrimalState
        ttt = getattr(cache, "ttt", None)
        if not isinstance(ttt, form):
            raise TypeError(f"the cache holds a {type(ttt).__name__}, {self.inner_net} runs on a {form.__name__}: "
                            "allocate the cache after set_inner_net")
        dev, act = self.in_proj.weight.device, self.in_proj.weight.dtype
        check_state(self.inner, form, ttt, batch, self.num_heads, self.head_dim, self.mini_batch, act, dev,
                    float64_ok=not self.spec.kernel)
        if self.spec.cuda and self.inner == "mlp_2":  # the op checks it too, but after the convs stepped
            check_row_major_w1(ttt)
        _check_tensor("cache.qk_conv", cache.qk_conv, (batch, self.conv_kernel, self.hidden_size), (act,), dev)
        _check_tensor("cache.positions", cache.positions, (batch,), (torch.int32, torch.int64), dev)

    def _check_call(self, x: torch.Tensor, cache: TTTLayerCache, dims: int) -> None:
        """A public step's (``dims`` 2) or prefill's (3) input and cache, before anything is written."""
        check_module_input("x", x, dims, self.hidden_size, self.in_proj.weight)
        if dims == 3:
            self.check_prompt_length(x.shape[1])
        self.check_cache(cache, x.shape[0])

    def check_prompt_length(self, T: int) -> None:
        """The fused prefill kernels address a prompt's rows of the in-projection (``3 D + H`` wide)
        with 32-bit offsets."""
        limit = (2**31 - 1) // (3 * self.hidden_size + self.num_heads)
        if self.spec.kernel and T > limit:
            raise ValueError(f"a prompt of {T} tokens is longer than the fused prefill takes at once ({limit}): "
                             "prefill it in chunks")

    def reset_inference_cache(self, cache: TTTLayerCache) -> None:
        """Back to a fresh sequence, in place (a captured graph keeps its buffers)."""
        for w, p in zip(cache.ttt.weights, self.inner_params()):
            w.copy_(p.unsqueeze(0).expand_as(w))
        if isinstance(cache.ttt, TTTPrimalState):
            others = cache.ttt.grads
        else:
            others = [cache.ttt.k_cache, cache.ttt.v_cache, cache.ttt.lr_cache]
        for t in [*others, cache.qk_conv]:
            t.zero_()

    # ---- pieces shared by step and prefill (any leading shape [...])

    def _project(self, x):
        """``xqk, gate, v, lr_logit``: views of one GEMM's output rows."""
        D, H = self.hidden_size, self.num_heads
        return F.linear(x, self.in_proj.weight).split([D, D, D, H], dim=-1)

    @property
    def lr_scale(self) -> float:
        return self.base_lr / self.head_dim

    def _heads(self, x):
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim)

    def _output(self, z, gate, fused: bool = False):
        z = z.reshape(*z.shape[:-2], self.hidden_size)
        gated_norm = _fused_gated_layer_norm if fused else gated_layer_norm_ref
        y = gated_norm(z, gate, self.post_norm.weight, self.post_norm.bias, self.post_norm.eps)
        return F.linear(y, self.o_proj.weight)

    def _ttt(self, q, k, v, lr, pos, state):
        if self.spec.kernel:
            return _run_kernel(self.op, q, k, v, lr, pos, self.ttt_norm_weight, self.ttt_norm_bias,
                               self.token_idx_bias, state)
        return self.op(q, k, v, lr, pos, self.ttt_norm_weight, self.ttt_norm_bias, self.token_idx_bias, state)

    # ---- decode

    @torch.no_grad()
    def step(self, x: torch.Tensor, cache: TTTLayerCache) -> torch.Tensor:
        """One token per sequence at ``cache.positions``: ``x [B, D] -> [B, D]``; updates the
        state in place, leaves the positions to their owner. No host sync (graph-safe)."""
        self._check_call(x, cache, 2)
        return self.step_checked(x, cache)

    def step_checked(self, x: torch.Tensor, cache: TTTLayerCache) -> torch.Tensor:
        """:meth:`step` for a caller that has checked ``x`` and ``cache`` (a model checks every
        layer's cache before the first layer writes)."""
        xqk, gate, v, lr_logit = self._project(x)
        fused = self.spec.kernel
        inputs = TTTStepInputs(xqk, v, lr_logit, cache.qk_conv, conv_weight(self.conv_q), self.conv_q.bias,
                               conv_weight(self.conv_k), self.conv_k.bias, self.rotary.cos, self.rotary.sin,
                               self.lr_bias, self.lr_scale, self.num_heads)
        if self.spec.from_projection:  # the TTT kernel's programs make q, k, v, lr themselves
            z = _run_kernel(self.op_from_projection, inputs, cache.positions, self.ttt_norm_weight,
                            self.ttt_norm_bias, self.token_idx_bias, cache.ttt)
        else:
            q, k, v, lr = inputs.apply(_fused_ttt_step_inputs if fused else ttt_step_inputs_ref, cache.positions)
            z = self._ttt(q, k, v, lr, cache.positions, cache.ttt)
        return self._output(z, gate, fused)

    # ---- prefill: one fused launch per layer for the dual-form kernels, else a reference path

    @torch.no_grad()
    def prefill(self, x: torch.Tensor, cache: TTTLayerCache, lengths=None, *,
                plan: PrefillPlan | None = None) -> torch.Tensor:
        """``x [B, T, D] -> [B, T, D]`` continuing from ``cache`` at ``cache.positions``; with
        ``lengths [B]`` sequence ``b`` uses its first ``lengths[b]`` tokens (the rest is
        padding: outputs there are garbage, state untouched). Leaves the positions to their
        owner, like :meth:`step`. ``plan``: the caller's :func:`prefill_plan` of these positions
        and lengths, instead of ``lengths`` (a model makes one for all its layers: no host sync here).

        A fused dual-form inner net runs every prompt whole in its prefill kernel. The
        reference inner nets run whole mini-batches that start at the same phase 0 for every
        sequence in matrix form, and everything else token by token through the decode op.
        """
        self._check_call(x, cache, 3)
        return self.prefill_checked(x, cache, lengths, plan=plan)

    def prefill_checked(self, x: torch.Tensor, cache: TTTLayerCache, lengths=None, *,
                        plan: PrefillPlan | None = None) -> torch.Tensor:
        """:meth:`prefill` for a caller that has checked ``x`` and ``cache``."""
        if plan is None:
            plan = prefill_plan(cache.positions, lengths, x.shape[1])
        else:
            plan.check_for(x, lengths)
        xqk, gate, v, lr_logit = self._project(x)
        lr = ttt_lr_ref(lr_logit, self.lr_bias, self.lr_scale)
        # both convs and the rotary: with a fused inner net one launch per conv, q and k token-major
        qk_conv_rotary = qk_conv_rotary_prefill if self.spec.kernel else qk_conv_rotary_prefill_ref
        q, k = qk_conv_rotary(xqk, cache.qk_conv, conv_weight(self.conv_q), self.conv_q.bias,
                              conv_weight(self.conv_k), self.conv_k.bias, self.rotary.cos, self.rotary.sin,
                              cache.positions, plan.lengths, self.num_heads)
        v = self._heads(v)
        if self.spec.kernel and self.spec.form == "dual":
            # positions and lengths were checked by prefill_plan: no second host sync
            z = prefill_kernel(self.spec, q, k, v, cache.ttt)(
                q, k, v, lr, cache.positions, self.ttt_norm_weight, self.ttt_norm_bias, self.token_idx_bias,
                cache.ttt, lengths=None if plan.full else plan.lengths, check_positions=False)
            return self._output(z, gate, fused=True)
        z = torch.zeros_like(q)  # padding tokens past every prompt stay 0
        K, T = self.mini_batch, x.shape[1]
        positions = cache.positions[:, None] + torch.arange(T, device=x.device)  # each token's, [B, T]
        lengths_host, start_phase = plan.lengths_host, plan.start_phase(K)
        min_len = min(lengths_host)
        i = 0
        while i < T:
            if start_phase is not None and (start_phase + i) % K == 0 and i + K <= min_len:
                z[:, i:i + K] = self._minibatch(q[:, i:i + K], k[:, i:i + K], v[:, i:i + K], lr[:, i:i + K],
                                                cache.ttt)
                i += K
                continue
            args = (q[:, i].contiguous(), k[:, i].contiguous(), v[:, i].contiguous(), lr[:, i].contiguous(),
                    positions[:, i].contiguous())
            done = [b for b, n in enumerate(lengths_host) if n <= i]
            if not done:
                z[:, i] = self._ttt(*args, cache.ttt)
            elif len(done) < len(lengths_host):
                # sequences already past their prompt keep their state: save and put back their rows
                idx = torch.tensor(done, device=x.device)
                saved = [t[idx].clone() for t in cache.ttt.tensors()]
                z[:, i] = self._ttt(*args, cache.ttt)
                for t, s in zip(cache.ttt.tensors(), saved):
                    t[idx] = s
            i += 1
        return self._output(z, gate)

    def _minibatch(self, q, k, v, lr, state):
        """One aligned mini-batch for every sequence: ``[B, K, H, f]`` in, outputs out."""
        module, fn = _MINIBATCH_REFS[self.inner]
        ref = getattr(importlib.import_module(module), fn)
        heads_first = [t.transpose(1, 2) for t in (q, k, v, lr)]  # [B, H, K, ...]
        out, new = ref(*heads_first, self.ttt_norm_weight, self.ttt_norm_bias, self.token_idx_bias,
                       state.weights)
        for w, nw in zip(state.weights, new):
            w.copy_(nw)
        return out.transpose(1, 2).to(q.dtype)


@torch.compiler.disable
def _run_kernel(op, *args):
    # Fused kernels stay out of torch.compile (their launchers check arguments in Python);
    # the positions are checked when a prefill starts (prefill_plan), so no per-step host sync here.
    return op(*args, check_positions=False)
