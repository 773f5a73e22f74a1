"""The hand-written CUDA kernels (``csrc/``, built into ``ttt_kernels._C`` by setup.py).

Importing this module never fails: without the extension, :func:`is_available` is False
and :func:`unavailable_reason` says why; calling a CUDA op then raises a RuntimeError
with that reason.
"""

from __future__ import annotations

import functools

import torch

try:
    from ttt_kernels import _C
    _IMPORT_ERROR = None
except (ImportError, OSError) as e:  # not built, or built against another torch
    _C = None
    _IMPORT_ERROR = e

HEAD_DIMS = (64, 128)
MAX_MINI_BATCH = 16


@functools.cache  # checked on every op call; what it depends on does not change in a process
def unavailable_reason(device: int | None = None) -> str | None:
    """Why the CUDA kernels cannot run here (on CUDA device ``device``, the current one if None),
    or None when they can."""
    if _C is None:
        return (f"the extension ttt_kernels._C is not built ({_IMPORT_ERROR}); setup.py builds it when a CUDA "
                "toolkit and a CUDA build of PyTorch are present: pip install --no-build-isolation -e .")
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 9:
        return f"the kernels need compute capability 9.0 or newer, the GPU has {major}.{minor}"
    return None


def is_available() -> bool:
    return unavailable_reason() is None


def extension(device: int | None = None):
    """The loaded ``ttt_kernels._C``; RuntimeError with the reason when it cannot run (on ``device``)."""
    reason = unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"CUDA backend unavailable: {reason}")
    return _C


def check_sizes(f: int, K: int) -> None:
    """Head dim ``f`` and mini-batch ``K`` the CUDA kernels support (beyond ``check_kernel_sizes``)."""
    if f not in HEAD_DIMS:
        raise ValueError(f"the CUDA kernels support head dims {HEAD_DIMS}, got {f}")
    if K > MAX_MINI_BATCH:
        raise ValueError(f"the CUDA kernels support mini-batches of at most {MAX_MINI_BATCH} tokens, got {K}")


def check_supported(q: torch.Tensor, K: int):
    """The extension, once the call is one the CUDA kernels support beyond ``check_decode_args``
    (head dim, mini-batch size, CUDA tensors)."""
    check_sizes(q.shape[-1], K)
    ext = extension(q.device.index if q.is_cuda else None)  # the capability of q's GPU, not the current one's
    if not q.is_cuda:
        raise ValueError(f"the CUDA kernels need CUDA tensors, got {q.device}")
    return ext
