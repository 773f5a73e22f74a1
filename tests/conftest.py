import importlib
import os
import sys
from pathlib import Path

import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; the
# variable must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA (1B-sized checks); skipped without it")
    from ttt_kernels.ops.triton_utils import interpreting
    if interpreting():
        import numpy
        import triton
        # the prefill kernels loop over a loaded count, which Triton's interpreter before 3.7
        # turns into a Python int in a way numpy 2.4 rejects (triton-lang/triton#9171)
        if _minor(triton.__version__) < (3, 7) and _minor(numpy.__version__) >= (2, 4):
            raise pytest.UsageError(f"Triton {triton.__version__}'s interpreter fails with numpy {numpy.__version__} "
                                    "(triton-lang/triton#9171): pip install 'numpy<2.4', or triton>=3.7")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def poison_alloc(monkeypatch):
    """Ops that allocate their outputs get NaN-filled memory, so an element a kernel fails
    to write shows up as NaN instead of whatever the allocator left there."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poisoned(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poisoned(empty_like(*a, **k)))


@pytest.fixture
def benchmark_module():
    """``load(name)``: the script ``benchmarks/<name>.py`` imported as a module (benchmarks/ is
    not a package), for tests of its helpers."""
    bench_dir = str(Path(__file__).resolve().parents[1] / "benchmarks")

    def load(name):
        sys.path.insert(0, bench_dir)
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(bench_dir)
    return load
