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
import re
import subprocess
import tempfile
from pathlib import Path


@contextlib.contextmanager
def compile_launches(report, arch: int = 90):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    from ..ops.triton_utils import interpreting

    if interpreting():  # the kernels are then InterpretedFunctions, never compiled
        raise RuntimeError("compile_launches needs Triton's compiler: unset TRITON_INTERPRET before triton is imported")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binders, seen = {}, set()

    def compile_only(self, *args, grid, warmup, **kwargs):
        # Triton's own binder, as its launcher on a GPU: the signature, the constexprs and the
        # specialization attributes (16-byte aligned pointers, ints divisible by 16), without which
        # the compiler vectorizes less and reports very different registers and spills
        if "launch_pdl" in kwargs:  # a pdl_options launch, as it is made on the target (CPU tensors say off)
            kwargs["PDL"] = kwargs["launch_pdl"] = arch >= 90
        if self not in binders:
            binders[self] = create_function_from_signature(self.signature, self.params, backend)
        bound, specialization, _ = binders[self](*args, **kwargs)
        options = {k: v for k, v in kwargs.items() if k not in self.arg_names}  # num_warps, ...
        _, signature, constexprs, attrs = self._pack_args(backend, dict(kwargs), bound, specialization, None)
        key = (self.fn.__name__, repr(signature), repr(constexprs), repr(attrs), repr(options))
        if key in seen:
            return
        seen.add(key)
        compiled = triton.compile(ASTSource(fn=self, signature=signature, constexprs=constexprs, attrs=attrs),
                                  target=target, options=options)
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
