"""Helpers shared by the benchmarks: the byte floor of a decode step, the environment
record, result files and markdown tables, and random TTT layers and inputs.

Nothing here imports Triton at module level, so the scripts can set
``TRITON_INTERPRET`` after importing this module.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shlex
import sys
from pathlib import Path

import torch

_COPY_BYTES_PER_S: dict[int, float] = {}  # per CUDA device index

_DTYPE_NAMES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
_REPO_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def as_dtype(d) -> torch.dtype:
    """``torch.float16`` or ``"fp16"`` -> ``torch.float16`` (also bf16, fp32, fp64)."""
    return d if isinstance(d, torch.dtype) else _DTYPE_NAMES[d]


def inner_net_elements(inner_net: str, f: int) -> int:
    """Elements of the inner net's weights per head (``mlp_1``: W, b; ``mlp_2``: W1, b1, W2, b2)."""
    from ttt_kernels.ops.ttt_state import inner_net_shapes

    return sum(math.prod(shape) for shape in inner_net_shapes(inner_net, f))


def decode_floor_bytes(inner_net: str, B: int, H: int, f: int, state_dtype, act_dtype) -> int:
    """Bytes one decode step of one layer must move at the least: per (sequence, head)
    the inner net's weights read once (state dtype) plus q, k, v read and out written
    (activation dtype). The mini-batch cache, the 1-in-K weight write and the LayerNorm
    parameters are not counted."""
    s, a = as_dtype(state_dtype).itemsize, as_dtype(act_dtype).itemsize
    return B * H * (inner_net_elements(inner_net, f) * s + 4 * f * a)


def copy_bandwidth() -> float:
    """The current GPU's device-to-device copy rate, bytes read + written per second (median
    of a 512 MiB copy, measured once per process): what a streaming kernel can reach, so the
    denominator of the benchmarks' floors. An H100 80GB HBM3 measures ~3.0e12 (3017 GB/s, the
    design note's figure, which the issues' rooflines use)."""
    dev = torch.cuda.current_device()
    if dev not in _COPY_BYTES_PER_S:
        import triton.testing

        src = torch.empty(1 << 27, dtype=torch.float32, device="cuda")
        dst = torch.empty_like(src)
        ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
        _COPY_BYTES_PER_S[dev] = 2 * src.numel() * src.element_size() / (ms * 1e-3)
        del src, dst
        torch.cuda.empty_cache()  # give the 1 GiB back before the models are built
    return _COPY_BYTES_PER_S[dev]


def add_bandwidth_argument(parser) -> None:
    """The benchmarks' ``--bandwidth TB/s`` option (None: :func:`floor_bandwidth` measures it)."""
    def positive(text: str) -> float:
        value = float(text)
        if not value > 0:  # also NaN
            raise argparse.ArgumentTypeError(f"must be > 0 TB/s, got {text}")
        return value
    parser.add_argument("--bandwidth", type=positive, default=None, metavar="TB/s",
                        help="bandwidth that floors and roofline shares divide by "
                             "(default: this GPU's measured device-to-device copy rate)")


def floor_bandwidth(tb_per_s: float | None = None) -> float:
    """Bytes per second that floors and roofline shares divide by: ``tb_per_s`` (TB/s) when
    given (``--bandwidth 3.0`` reproduces the issues' H100 figures anywhere), else the current
    GPU's measured copy rate."""
    return tb_per_s * 1e12 if tb_per_s else copy_bandwidth()


def environment_info() -> dict:
    """GPU, library versions and platform (no host name) for a results file."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    try:
        import triton

        from ..ops.triton_utils import interpreting
        info.update(triton=triton.__version__, triton_interpret=interpreting())
    except ImportError:
        info.update(triton=None, triton_interpret=False)  # every record has both keys, as before interpreting()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_count=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
                    gpu_memory_GiB=round(p.total_memory / 2**30, 1))
    else:
        info["gpu"] = None
    return info


def _jsonable(x):
    """NaN and inf become null (strict JSON); tuples become lists; dtypes become strings (e.g. "float16")."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.dtype):
        return str(x).replace("torch.", "")
    return x


def write_results(name: str, rows, command=None, extra: dict | None = None, results_dir=None) -> Path:
    """Write ``benchmarks/results/<name>.json``: environment, command line, UTC timestamp,
    ``extra`` (settings, notes) and ``rows``. Returns the path.

    ``command``: the argv list (``sys.argv`` when None) or a string. ``name`` may also be
    a path ending in ``.json``, written as given. ``results_dir`` overrides the folder.
    """
    if command is None:
        command = sys.argv
    if not isinstance(command, str):
        command = shlex.join(["python", *map(str, command)])
    if name.endswith(".json"):
        path = Path(name)
    else:
        path = Path(results_dir) if results_dir is not None else _REPO_RESULTS
        path = path / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": path.stem,
        "command": command,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment_info(),
        **(extra or {}),
        "rows": rows,
    }
    with open(path, "w") as fh:
        json.dump(_jsonable(payload), fh, indent=1, allow_nan=False, default=str)  # Paths etc. as text
        fh.write("\n")
    return path


def _cell(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return format(v, fmt)
    return str(v)


def markdown_table(rows, columns, fmt: str = ".4g") -> str:
    """A markdown table of ``rows`` (dicts). ``columns``: keys, or ``(key, header)`` pairs.
    Floats use ``fmt``; missing values and NaN print as ``–``. Numbers align right."""
    cols = [(c, c) if isinstance(c, str) else tuple(c) for c in columns]
    body = [[_cell(r.get(k), fmt) for k, _ in cols] for r in rows]
    numeric = [all(isinstance(r.get(k), (int, float)) or r.get(k) is None for r in rows) for k, _ in cols]
    lines = ["| " + " | ".join(h for _, h in cols) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


# ---- random TTT layers and decode inputs (never zeros: zeros hide bugs and flatter timings)

def random_layer(inner_net: str, H: int, f: int, K: int = 16, device="cpu", dtype=torch.float32, gen=None):
    """Per-head inner-net params ``[H, ...]`` (matrices ~ N(0, 1/sqrt(fan_in)), biases
    ~ N(0, 0.1)), TTT-norm weight/bias ``[H, f]`` and token-index bias ``[K]``."""
    from ttt_kernels.ops.ttt_state import inner_net_shapes

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float64)

    params = [randn(H, *s) * (s[0] ** -0.5 if len(s) == 2 else 0.1) for s in inner_net_shapes(inner_net, f)]
    ln_w, ln_b, tib = 1.0 + 0.1 * randn(H, f), 0.1 * randn(H, f), 0.01 * randn(K)
    return [p.to(dtype) for p in params], ln_w.to(dtype), ln_b.to(dtype), tib.to(dtype)


def random_lr(B: int, H: int, f: int, device="cpu", gen=None, base_lr: float = 1.0) -> torch.Tensor:
    """``base_lr * sigmoid(N(0, 1)) / f``, fp32 ``[B, H]`` (the TTT learning-rate gate)."""
    x = torch.randn(B, H, generator=gen, device=device, dtype=torch.float64)
    return (base_lr * torch.sigmoid(x) / f).float()


def random_token(B: int, H: int, f: int, act_dtype, device="cpu", gen=None, base_lr: float = 1.0):
    """One decode step's ``q, k, v [B, H, f]`` ~ N(0, 1) in ``act_dtype`` and ``lr [B, H]`` fp32."""
    q, k, v = (torch.randn(B, H, f, generator=gen, device=device, dtype=torch.float64).to(as_dtype(act_dtype))
               for _ in range(3))
    return q, k, v, random_lr(B, H, f, device, gen, base_lr)
