"""ttt_kernels: fused decode kernels for TTT-Linear, TTT-MLP and Mamba.

Installs on any machine; the Triton kernels need a CUDA GPU to run (or Triton's
interpreter, TRITON_INTERPRET=1, on the CPU, which is how the tests run in CI).

The hand-written CUDA kernels (csrc/) are built into ``ttt_kernels._C`` when PyTorch is
importable at build time, is a CUDA build, and a CUDA toolkit is found, e.g.
``MAX_JOBS=16 pip install --no-build-isolation -e .``. Otherwise the package installs
without them and ``ttt_kernels.ops.cuda_backend.unavailable_reason()`` says why.
Targets: sm_90 plus the archs >= 9.0 in ``TORCH_CUDA_ARCH_LIST``; ``TTT_KERNELS_NO_CUDA=1``
skips the build.
"""

import glob
import os
import re

from setuptools import find_packages, setup

CSRC = "csrc"


def _arch_flags(arch_list: str) -> list[str]:
    """-gencode flags for sm_90 and the archs >= 9.0 of a TORCH_CUDA_ARCH_LIST value
    (the kernels use thread-block clusters, which older GPUs lack)."""
    flags = {"-gencode=arch=compute_90,code=sm_90"}
    for entry in re.split(r"[;,\s]+", arch_list.strip()):
        m = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", entry)
        if not m:
            continue
        num = f"{m.group(1)}{m.group(2)}{m.group(3)}"
        if int(m.group(1)) < 9:
            print(f"ttt_kernels: skipping CUDA arch {entry} (the kernels need sm_90 or newer)")
            continue
        flags.add(f"-gencode=arch=compute_{num},code=sm_{num}")
        if m.group(4):
            flags.add(f"-gencode=arch=compute_{num},code=compute_{num}")
    return sorted(flags)


def cuda_extension():
    """``(ext_modules, cmdclass, reason)``: the ``ttt_kernels._C`` build, or none and why not."""
    if os.environ.get("TTT_KERNELS_NO_CUDA", "0") not in ("", "0"):
        return [], {}, "TTT_KERNELS_NO_CUDA is set"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as e:  # e.g. pip's isolated build environment
        return [], {}, f"PyTorch is not importable at build time ({e})"
    if torch.version.cuda is None:
        return [], {}, f"torch {torch.__version__} is a CPU-only build"
    if CUDA_HOME is None:
        return [], {}, "no CUDA toolkit found (set CUDA_HOME)"
    sources = [os.path.join(CSRC, "binding.cpp")] + sorted(glob.glob(os.path.join(CSRC, "*.cu")))
    nvcc = ["-O3", "-std=c++17", "-lineinfo", *_arch_flags(os.environ.get("TORCH_CUDA_ARCH_LIST", ""))]
    ext = CUDAExtension("ttt_kernels._C", sources, include_dirs=[os.path.abspath(CSRC)],
                        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": nvcc})
    return [ext], {"build_ext": BuildExtension}, None


if __name__ == "__main__":
    ext_modules, cmdclass, reason = cuda_extension()
    if reason:
        print(f"ttt_kernels: not building the CUDA extension ttt_kernels._C: {reason}")
    setup(
        name="ttt_kernels",
        version="0.1.0",
        description="Fused Triton/CUDA decode kernels for TTT (test-time training) layers and Mamba",
        packages=find_packages(include=["ttt_kernels", "ttt_kernels.*"]),
        python_requires=">=3.10",
        install_requires=["torch>=2.4", "triton>=3.2", "numpy", "safetensors"],
        extras_require={
            "test": ["pytest>=7"],
            "bench": ["matplotlib", "pandas", "tqdm"],
            # optional cross-checks and benchmark lines; they build CUDA code from source
            "mamba": ["mamba-ssm", "causal-conv1d"],
        },
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )
