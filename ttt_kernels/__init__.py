"""Fused decode kernels for recurrent-state models: TTT-Linear, TTT-MLP and Mamba."""

__version__ = "0.1.0"
