"""Compile the package's Triton kernels for a GPU without having one.

Inside ``compile_launches(report)``, every Triton launch compiles its kernel for sm_90 (or the
``arch`` given) instead of running it, so the ops and models can run on CPU tensors to reach
every launch (their outputs stay unwritten). Each distinct specialization is compiled once and
handed to ``report(name, constexprs, options, compiled)``. The tests use it to compile every
kernel as the models launch it (Triton's interpreter never compiles), and
``benchmarks/kernel_resources.py`` to read registers and spills from the binaries
(``resource_usage``).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch

_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
          torch.int64: "i64", torch.int32: "i32", torch.bool: "i1"}


def _arg_type(v) -> str:
    if isinstance(v, torch.Tensor):
        return "*" + _TYPES[v.dtype]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -2**31 <= v < 2**31 else "i64"
    if isinstance(v, float):
        return "fp32"
    raise TypeError(f"no Triton type for an argument of type {type(v).__name__}")


@contextlib.contextmanager
def compile_launches(report, arch: int = 90):
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_launches needs Triton's compiler: unset TRITON_INTERPRET before triton is imported")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    seen = set()

    def compile_only(self, *args, grid, warmup, **kwargs):
        options = {k: kwargs.pop(k) for k in list(kwargs) if k not in self.arg_names}  # num_warps, ...
        bound = {**dict(zip(self.arg_names, args)), **kwargs}
        signature, constexprs = {}, {}
        for i, p in enumerate(self.params):
            v = bound.get(p.name, p.default)
            if p.is_constexpr or v is None:
                signature[p.name], constexprs[(i,)] = "constexpr", v
            else:
                signature[p.name] = _arg_type(v)
        key = (self.fn.__name__, repr(signature), repr(constexprs), repr(options))
        if key in seen:
            return
        seen.add(key)
        compiled = triton.compile(ASTSource(fn=self, signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", arch, 32), options=options)
        report(self.fn.__name__, {self.arg_names[i]: v for (i,), v in constexprs.items()}, options, compiled)

    run = JITFunction.run
    JITFunction.run = compile_only
    try:
        yield
    finally:
        JITFunction.run = run


def resource_usage(cubin: bytes) -> dict:
    """``{"registers", "stack_bytes"}`` of a compiled kernel, read by the ``cuobjdump`` that
    ships with Triton. The package's kernels keep no arrays in local memory, so their stack
    frame is register spills."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    if m is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no resource line:\n{out}")
    return {"registers": int(m.group(1)), "stack_bytes": int(m.group(2))}
