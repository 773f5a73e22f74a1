"""Decode state of a TTT layer and the argument checks shared by every backend.

Dual state (what the fused kernels use), per (sequence, head):
  * ``weights``: the inner net's weights at the start of the current mini-batch
    (``mlp_1``: ``W [f, f], b [f]``; ``mlp_2``: ``W1 [f, 4f], b1 [4f], W2 [4f, f], b2 [f]``),
    in the *state dtype*;
  * the mini-batch cache: the raw inputs ``k_j, v_j`` (activation dtype) and ``lr_j``
    (fp32; float64 for a float64 reference state) of the tokens ``j < t`` already seen in this mini-batch. Gradients are
    recomputed from them at ``W0`` each step: that moves fewer bytes than caching
    the gradients (for ``mlp_2`` those rows would be 640 values instead of 129).

Primal state (the original algorithm, kept as a baseline): ``weights`` at the
mini-batch start plus ``grads`` = sum of ``lr_j k_j^T g_j`` so far, same shapes and dtype.

Positions live outside the state, in a ``[B]`` integer tensor on the device: the
token at position ``p`` is token ``t = p mod K`` of its mini-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INNER_NETS = ("mlp_1", "mlp_2")
STATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def inner_net_shapes(inner_net: str, head_dim: int) -> list[tuple[int, ...]]:
    """Per-head shapes of the inner net's weights, in state order."""
    f = head_dim
    if inner_net == "mlp_1":
        return [(f, f), (f,)]
    if inner_net == "mlp_2":
        return [(f, 4 * f), (4 * f,), (4 * f, f), (f,)]
    raise ValueError(f"inner_net must be one of {INNER_NETS}, got {inner_net!r}")


def lr_cache_dtype(state_dtype: torch.dtype) -> torch.dtype:
    """The cached learning rates are fp32 (float64 for a float64 reference state)."""
    return torch.float64 if state_dtype == torch.float64 else torch.float32


def _expand_params(params, batch: int, dtype: torch.dtype) -> list[torch.Tensor]:
    # one private copy per sequence: the state is updated in place
    return [p.detach().to(dtype).unsqueeze(0).repeat(batch, *([1] * p.dim())).contiguous() for p in params]


@dataclass
class TTTDualState:
    weights: list[torch.Tensor]  # [B, H, ...] each, state dtype
    k_cache: torch.Tensor  # [B, H, K, f], activation dtype
    v_cache: torch.Tensor  # [B, H, K, f], activation dtype
    lr_cache: torch.Tensor  # [B, H, K], fp32

    @classmethod
    def from_params(cls, params, batch: int, mini_batch: int, state_dtype: torch.dtype,
                    act_dtype: torch.dtype, w1_hidden_major: bool = False) -> "TTTDualState":
        """State for ``batch`` fresh sequences from per-head params (``[H, ...]`` each).
        ``w1_hidden_major`` (``mlp_2``): ``weights[0]`` is then the ``[B, H, f, 4f]`` transposed view
        of contiguous ``[B, H, 4f, f]`` storage, the layout the Triton TTT-MLP kernels read fastest
        (``ttt_kernels.ops.ttt_mlp.decode_dual.w1_hidden_major``)."""
        weights = _expand_params(params, batch, state_dtype)
        if w1_hidden_major:
            if len(weights) != 4:
                raise ValueError("w1_hidden_major applies to mlp_2 states (W1, b1, W2, b2)")
            weights[0] = weights[0].transpose(-1, -2).contiguous().transpose(-1, -2)
        H, f = params[-1].shape
        dev = params[0].device
        return cls(weights,
                   torch.zeros(batch, H, mini_batch, f, dtype=act_dtype, device=dev),
                   torch.zeros(batch, H, mini_batch, f, dtype=act_dtype, device=dev),
                   torch.zeros(batch, H, mini_batch, dtype=lr_cache_dtype(state_dtype), device=dev))

    def tensors(self) -> list[torch.Tensor]:
        return [*self.weights, self.k_cache, self.v_cache, self.lr_cache]


@dataclass
class TTTPrimalState:
    weights: list[torch.Tensor]  # [B, H, ...] each, state dtype
    grads: list[torch.Tensor]  # same shapes and dtype as weights

    @classmethod
    def from_params(cls, params, batch: int, state_dtype: torch.dtype) -> "TTTPrimalState":
        weights = _expand_params(params, batch, state_dtype)
        return cls(weights, [torch.zeros_like(w) for w in weights])

    def tensors(self) -> list[torch.Tensor]:
        return [*self.weights, *self.grads]


def _check_tensor(name: str, t, shape, dtypes, device, contiguous: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_module_input(name: str, x, dims: int, width: int, weight: torch.Tensor) -> None:
    """A module's input ``x``: ``[B, width]`` (``dims`` 2) or ``[B, T, width]`` (3), in ``weight``'s
    dtype and on its device (any strides)."""
    if not isinstance(x, torch.Tensor) or x.dim() != dims or x.shape[-1] != width:
        want = "[B, D]" if dims == 2 else "[B, T, D]"
        raise ValueError(f"{name} must be a {want} tensor with D = {width}, got {getattr(x, 'shape', x)}")
    _check_tensor(name, x, tuple(x.shape), (weight.dtype,), weight.device, contiguous=False)


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
ACT_DTYPES = FLOAT_DTYPES[:3]  # what the kernels take for activations: fp32, fp16, bf16


def check_kernel_sizes(K: int, f: int, dot: bool) -> None:
    """Sizes the fused kernels take: a power-of-two mini-batch ``K``; with ``dot`` (the dual
    kernels' 16-row tensor-core products) also ``K >= 16`` and ``f > 8`` (a block of 16 or more)."""
    if K < 1 or K & (K - 1):
        raise ValueError(f"the mini-batch size K must be a power of two, got {K}")
    if dot and (K < 16 or f <= 8):
        raise ValueError("the dual-form kernels' tensor-core products (Triton decode, every prefill) need a "
                         f"mini-batch K >= 16 and a head dim > 8, got K={K}, f={f}")


def check_disjoint(named) -> None:
    """No two of the ``(name, tensor)`` pairs share memory (contiguous tensors): an in-place update
    of one would change what the kernel reads from another. Skipped while torch.compile traces (it
    cannot trace ``data_ptr``): the fused ops, never traced, check again when they run, but a
    compiled reference-path step is not checked for aliased state."""
    if torch.compiler.is_compiling():
        return
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), name) for name, t in named if t.numel())
    end, last = 0, None
    for start, stop, name in spans:
        if start < end:
            raise ValueError(" and ".join(sorted((name, last))) + " share memory")
        if stop > end:
            end, last = stop, name


def _named_tensors(state) -> list[tuple[str, torch.Tensor]]:
    named = [(f"state.weights[{i}]", w) for i, w in enumerate(state.weights)]
    if isinstance(state, TTTPrimalState):
        return named + [(f"state.grads[{i}]", g) for i, g in enumerate(state.grads)]
    return named + [("state.k_cache", state.k_cache), ("state.v_cache", state.v_cache),
                    ("state.lr_cache", state.lr_cache)]


def check_state(inner_net: str, state_type: type, state, B: int, H: int, f: int, K: int, act_dtype: torch.dtype,
                device: torch.device, float64_ok: bool = False) -> list[tuple[str, torch.Tensor]]:
    """That ``state`` is a ``state_type`` for ``B`` sequences of ``H`` heads of dim ``f``, mini-batch
    ``K`` and activations in ``act_dtype``, on ``device``: shapes, one state dtype (``float64_ok``:
    float64 too, for the references), contiguous tensors (a dual ``mlp_2`` W1 may be hidden-major
    instead) that share no memory. Returns them named."""
    if not isinstance(state, state_type):
        raise TypeError(f"state must be a {state_type.__name__}, got {type(state).__name__}")
    named = _named_tensors(state)
    shapes = [(B, H, *s) for s in inner_net_shapes(inner_net, f)]
    if isinstance(state, TTTPrimalState):
        shapes += shapes
    else:
        shapes += [(B, H, K, f), (B, H, K, f), (B, H, K)]
    n_weights = len(shapes) - (3 if isinstance(state, TTTDualState) else 0)
    if len(named) != len(shapes):
        have = len(state.weights) + len(getattr(state, "grads", ()))
        raise ValueError(f"state holds {have} weight tensors, {inner_net} needs {n_weights}")
    state_dtypes = STATE_DTYPES + ((torch.float64,) if float64_ok else ())
    first, w0 = named[0]
    if not isinstance(w0, torch.Tensor) or w0.dtype not in state_dtypes:
        raise TypeError(f"{first}: the state dtype must be one of {[str(d) for d in state_dtypes]}, "
                        f"got {getattr(w0, 'dtype', type(w0).__name__)}")
    for i, ((name, t), shape) in enumerate(zip(named, shapes)):
        if i < n_weights:
            if isinstance(t, torch.Tensor) and t.dtype != w0.dtype:
                raise TypeError(f"the state's weights must share one dtype: {first} is {w0.dtype}, {name} {t.dtype}")
            dtypes = (w0.dtype,)
        else:  # the dual state's k, v and lr caches
            dtypes = (lr_cache_dtype(w0.dtype),) if name == "state.lr_cache" else (act_dtype,)
        hidden_major_ok = i == 0 and inner_net == "mlp_2" and isinstance(state, TTTDualState)
        _check_tensor(name, t, shape, dtypes, device, contiguous=not hidden_major_ok)
        if hidden_major_ok and not (t.is_contiguous() or t.transpose(-1, -2).is_contiguous()):
            raise ValueError(f"{name} must be contiguous, or hidden-major: the transposed view of a contiguous "
                             f"[B, H, 4f, f] tensor (TTTDualState.from_params(..., w1_hidden_major=True))")
    check_disjoint(named)
    return named


def check_decode_args(inner_net: str, state_type: type, q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias,
                      state, out, check_positions: bool):
    """Validate a decode step's arguments before anything is written.

    Returns ``(B, H, f, K, out)``, ``out`` being the given output buffer or a new one.

    ``check_positions`` reads ``pos`` back to the host (a synchronisation), so callers
    that own the positions (the modules, CUDA-graph replays) check them once and pass False.
    """
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        raise ValueError(f"q must be a [B, H, f] tensor, got {getattr(q, 'shape', type(q).__name__)}")
    B, H, f = q.shape
    if B == 0:
        raise ValueError("q holds no sequences (B = 0)")
    dev = q.device
    _check_tensor("q", q, (B, H, f), ACT_DTYPES, dev)
    _check_tensor("k", k, (B, H, f), (q.dtype,), dev)
    _check_tensor("v", v, (B, H, f), (q.dtype,), dev)
    _check_tensor("lr", lr, (B, H), FLOAT_DTYPES, dev)
    return _check_decode_rest(inner_net, state_type, B, H, f, q.dtype, dev, pos, ln_weight, ln_bias, token_idx_bias,
                              state, out, check_positions)


def check_decode_args_from_projection(inner_net: str, state_type: type, inputs, pos, ln_weight, ln_bias,
                                      token_idx_bias, state, out, check_positions: bool):
    """:func:`check_decode_args` for a decode op's ``*_from_projection`` variant: ``inputs`` a
    :class:`~ttt_kernels.ops.conv_rotary.TTTStepInputs` in place of ``q, k, v, lr``. Its conv state
    must share no memory with the TTT state or ``out``."""
    from .conv_rotary import TTTStepInputs  # here: ops.conv_rotary imports this module
    if not isinstance(inputs, TTTStepInputs):
        raise TypeError(f"inputs must be a TTTStepInputs, got {type(inputs).__name__}")
    B, H, f, _, _ = inputs.check(pos)
    if B == 0:
        raise ValueError("xqk holds no sequences (B = 0)")
    return _check_decode_rest(inner_net, state_type, B, H, f, inputs.xqk.dtype, inputs.xqk.device, pos, ln_weight,
                              ln_bias, token_idx_bias, state, out, check_positions,
                              also_disjoint=(("conv_state", inputs.conv_state),))


def _check_decode_rest(inner_net, state_type, B, H, f, act_dtype, dev, pos, ln_weight, ln_bias, token_idx_bias, state,
                       out, check_positions, also_disjoint=()):
    """The checks after a decode step's token inputs (shape ``[B, H, f]`` in ``act_dtype`` on ``dev``)."""
    _check_tensor("pos", pos, (B,), (torch.int32, torch.int64), dev)
    _check_tensor("ln_weight", ln_weight, (H, f), FLOAT_DTYPES, dev)
    _check_tensor("ln_bias", ln_bias, (H, f), FLOAT_DTYPES, dev)
    if not isinstance(token_idx_bias, torch.Tensor) or token_idx_bias.dim() != 1:
        raise ValueError("token_idx_bias must be a 1-D tensor of length K (the mini-batch size)")
    K = token_idx_bias.shape[0]
    try:
        check_kernel_sizes(K, f, dot=False)
    except ValueError as e:
        raise ValueError(f"token_idx_bias: {e}") from None
    _check_tensor("token_idx_bias", token_idx_bias, (K,), FLOAT_DTYPES, dev)
    named = [*check_state(inner_net, state_type, state, B, H, f, K, act_dtype, dev), *also_disjoint]
    if also_disjoint:
        check_disjoint(named)

    capturing = pos.is_cuda and torch.cuda.is_current_stream_capturing()
    if check_positions and not capturing:
        lo, hi = pos.aminmax()
        if lo.item() < 0:
            raise ValueError(f"pos must be >= 0, got min {lo.item()}")
        if hi.item() >= 2**31 - 1:
            raise ValueError(f"pos must be < 2**31 - 1, got max {hi.item()}")
    return B, H, f, K, check_out_buffer(out, (B, H, f), act_dtype, dev, named)


def check_out(out, like: torch.Tensor, state=()) -> torch.Tensor:
    """The output buffer: ``out`` if it matches ``like`` (shape, dtype, device, contiguous) and shares
    no memory with the ``(name, tensor)`` pairs of ``state``, else a new one when ``out`` is None."""
    return check_out_buffer(out, tuple(like.shape), like.dtype, like.device, state)


def check_out_buffer(out, shape: tuple, dtype: torch.dtype, device, state=()) -> torch.Tensor:
    """:func:`check_out` for an output of ``shape`` and ``dtype`` on ``device``."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    _check_tensor("out", out, shape, (dtype,), device)
    check_disjoint([*state, ("out", out)])
    return out


def check_prefill_args(inner_net: str, q, k, v, lr, pos, ln_weight, ln_bias, token_idx_bias, state, lengths, out,
                       check_positions: bool):
    """Validate a prefill's arguments before anything is written (shared by both inner nets).

    Returns ``(B, T, H, f, K, lengths, out)``: ``lengths`` as a device tensor (``T`` for every
    sequence when None), ``out`` the given buffer or a new one (zeros past ragged prompts).
    ``check_positions`` reads ``pos`` and ``lengths`` back to the host (a synchronisation).
    """
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q must be a [B, T, H, f] tensor, got {getattr(q, 'shape', type(q).__name__)}")
    B, T, H, f = q.shape
    dev = q.device
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, x, (B, T, H, f), ACT_DTYPES if name == "q" else (q.dtype,), dev, contiguous=False)
        if x.stride(3) != 1 or (H > 1 and x.stride(2) != f):
            raise ValueError(f"{name}: each token's [H, f] block must be contiguous, got strides {x.stride()}")
    _check_tensor("lr", lr, (B, T, H), FLOAT_DTYPES, dev)
    if T * max(x.stride(1) for x in (q, k, v)) >= 2**31 or T * H * f >= 2**31:
        raise ValueError("one sequence of q, k, v or out spans 2**31 elements or more (the kernels' offsets)")
    # the state, the positions and the norm parameters: the decode step's checks on one token's shapes
    probe = q.new_empty((B, H, f))
    check_decode_args(inner_net, TTTDualState, probe, probe, probe, lr.new_empty((B, H)), pos, ln_weight, ln_bias,
                      token_idx_bias, state, probe, check_positions)
    check_kernel_sizes(token_idx_bias.shape[0], f, dot=True)
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.int32, device=dev)
        new_out = torch.empty
    else:
        _check_tensor("lengths", lengths, (B,), (torch.int32, torch.int64), dev)
        if check_positions and B:
            lo, hi = lengths.aminmax()
            if lo.item() < 0 or hi.item() > T:
                raise ValueError(f"lengths must be in 0..{T}, got {lo.item()}..{hi.item()}")
        new_out = torch.zeros  # rows past a prompt are never written
    if out is None:
        out = new_out((B, T, H, f), dtype=q.dtype, device=dev)
    else:
        _check_tensor("out", out, (B, T, H, f), (q.dtype,), dev)
        check_disjoint([*_named_tensors(state), ("out", out)])
    return B, T, H, f, token_idx_bias.shape[0], lengths, out


def prefill_strides(q, k, v) -> tuple:
    """Batch and token strides of ``q, k, v`` (``v`` may be a slice of a wider projection)."""
    return tuple(s for x in (q, k, v) for s in x.stride()[:2])
