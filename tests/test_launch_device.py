"""Triton launches on the current CUDA device, not on its arguments' device: every Python
launcher of a Triton kernel must switch to its inputs' device first (``on_input_device``).
The GPU check that a model on cuda:1 runs there is in test_ttt_model.py (needs two GPUs)."""

import importlib
import inspect
import pkgutil
import re

import ttt_kernels.ops
from ttt_kernels.ops.triton_utils import on_input_device

_GUARDED = on_input_device(lambda: None).__code__


def _launchers():
    for info in pkgutil.walk_packages(ttt_kernels.ops.__path__, "ttt_kernels.ops."):
        mod = importlib.import_module(info.name)
        for name, fn in vars(mod).items():
            if inspect.isfunction(fn) and inspect.unwrap(fn).__module__ == mod.__name__:
                if re.search(r"\b\w+_kernel\[", inspect.getsource(inspect.unwrap(fn))):
                    yield f"{mod.__name__}.{name}", fn


def test_every_triton_launcher_runs_on_its_inputs_device():
    launchers = dict(_launchers())
    assert len(launchers) >= 12  # the walk finds them (decode, prefill, norms, convs, Mamba)
    unguarded = [name for name, fn in launchers.items() if fn.__code__ is not _GUARDED]
    assert not unguarded, f"launch Triton kernels without @on_input_device: {unguarded}"
