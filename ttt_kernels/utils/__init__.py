"""Benchmark helpers shared by the scripts under ``benchmarks/``."""
