"""ttt_kernels: fused decode kernels for TTT-Linear, TTT-MLP and Mamba.

Installs on any machine; the Triton kernels need a CUDA GPU to run (or Triton's
interpreter, TRITON_INTERPRET=1, on the CPU, which is how the tests run in CI).
"""

from setuptools import find_packages, setup

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
)
