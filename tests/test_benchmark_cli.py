"""The whole-model benchmark, parity and trace-summary scripts, run as a user runs them (CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run(script, *args, env=None, cwd=None):
    return subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, cwd=cwd, timeout=300)


def test_decode_benchmark_cpu_smoke(tmp_path):
    r = run("benchmark_prefill_decode.py", "--device", "cpu", "--model-name", "ttt-tiny", "--mode", "decode",
            "--batch", "2", "--genlen", "20", "--inner_net", "mlp_2_dual", "--logdir", tmp_path, "--profile",
            "--profile_steps", "2")
    assert r.returncode == 0, r.stderr
    assert "not a performance figure" in r.stdout
    assert "| run | batch | total tok/s | per-stream tok/s | decode_s | mem_used_gib |" in r.stdout
    row = next(line for line in r.stdout.splitlines() if line.startswith("| ttt-tiny mlp_2_dual eager | 2 |"))
    assert row.rstrip().endswith("| ok (cpu) |")
    assert "max stable batch 2" in r.stdout
    for pattern in ("*.log", "trace_*.json", "trace_*.stacks"):
        assert list(tmp_path.glob(pattern)), pattern
    # the trace it wrote (CPU operators only) summarises too
    s = run("trace_summary.py", next(tmp_path.glob("trace_*.json")), "--top", "5")
    assert s.returncode == 0, s.stderr
    assert "CPU time in trace" in s.stdout


def test_profile_of_interpreted_kernels_has_no_stacks(tmp_path):
    """Triton's interpreter makes a Python call per program and op: recording them as stacks
    filled 8 GB for one step of ttt-tiny, so such a trace comes without them."""
    r = run("benchmark_prefill_decode.py", "--device", "cpu", "--model-name", "ttt-tiny", "--mode", "decode",
            "--batch", "1", "--genlen", "2", "--repeats", "1", "--inner_net", "mlp_1_dual_triton", "--logdir",
            tmp_path, "--profile", "--profile_steps", "1")
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.glob("trace_*.json")) and not list(tmp_path.glob("trace_*.stacks"))


def test_kernel_resources_reads_registers_of_compiled_kernels(tmp_path):
    r = run("kernel_resources.py", "--model-name", "ttt-tiny", "--inner_net", "mlp_1_primal_triton", "--json",
            "--results_dir", tmp_path, env={"TRITON_INTERPRET": "1"})  # the script compiles anyway
    assert r.returncode == 0, r.stderr
    rows = json.loads(next(tmp_path.glob("kernel_resources.json")).read_text())["rows"]
    primal = next(row for row in rows if row["kernel"] == "ttt_linear_decode_primal_kernel")
    assert primal["warps"] == 4 and 0 < primal["registers"] <= 255 and primal["shared_bytes"] > 0, primal
    assert "| ttt-tiny mlp_1_primal_triton fp16 | ttt_linear_decode_primal_kernel | F=64 BF=64 K=16 | 4 |" in r.stdout


def test_prefill_benchmark_and_parity_cpu_smoke(tmp_path):
    # a sweep over batch and prompt length: a row each, the max stable batch per prompt length
    r = run("benchmark_prefill_decode.py", "--device", "cpu", "--model-name", "ttt-tiny", "--mode", "prefill",
            "--batch", "1", "2", "--promptlen", "18", "5", "--inner_net", "mlp_1_dual", "--logdir", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| run | batch | promptlen | total tok/s | per-stream tok/s | prefill_s |" in r.stdout
    assert r.stdout.count("| ok (cpu) |") == 4
    for t in (5, 18):
        assert f"ttt-tiny mlp_1_dual prefill T={t}: max stable batch 2" in r.stdout
        for b in (1, 2):
            assert f"| ttt-tiny mlp_1_dual prefill T={t} | {b} | {t} |" in r.stdout
    p = run("parity.py", "--device", "cpu", "--model-name", "ttt-tiny", "--batch", "2", "--genlen", "6",
            "--inner_net", "mlp_2_primal")
    assert p.returncode == 0, p.stderr
    assert "| mlp_2_primal | mlp_2_dual |" in p.stdout and "teacher-forced" in p.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_benchmark_without_gpu_says_so():
    r = run("benchmark_prefill_decode.py", "--model-name", "ttt-tiny")
    assert r.returncode == 2
    assert "no CUDA GPU" in r.stderr and "--device cpu" in r.stderr


def test_trace_summary_synthetic(tmp_path):
    events = [
        {"ph": "X", "cat": "kernel", "name": "ttt_mlp_decode_dual_kernel", "ts": 0, "dur": 300.0},
        {"ph": "X", "cat": "kernel", "name": "ttt_mlp_decode_dual_kernel", "ts": 400, "dur": 300.0},
        {"ph": "X", "cat": "kernel", "name": "sm90_xmma_gemm_f16f16_f32" + "x" * 200, "ts": 800, "dur": 150.0},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoD (Device -> Device)", "ts": 1000, "dur": 50.0},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 9999.0},  # ignored: GPU events exist
        {"ph": "i", "cat": "kernel", "name": "instant", "ts": 5},  # not a duration event
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    r = run("trace_summary.py", path, "--width", "40")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("GPU time in trace: 0.800 ms over 4 events, 3 distinct names")
    assert "75.0%" in lines[2] and "2" in lines[2].split() and lines[2].endswith("ttt_mlp_decode_dual_kernel")
    assert "18.8%" in lines[3] and lines[3].endswith("...") and len(lines[3].split("  ")[-1]) <= 40
    assert lines[4].endswith("[memcpy] Memcpy DtoD (Device -> Device)")


def test_oom_is_recognised_through_a_failed_capture(benchmark_module):
    bench = benchmark_module("benchmark_prefill_decode")
    import torch
    assert bench.is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    try:  # an allocation failure inside a graph capture resurfaces as another error at capture end
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        except torch.cuda.OutOfMemoryError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
    except RuntimeError as e:
        assert bench.is_oom(e)
    assert not bench.is_oom(ValueError("bad shape"))


def test_mamba_next_to_ttt_cpu_smoke(tmp_path):
    """Several --model-name values in one run, the Mamba family among them: inner nets apply to
    the TTT model only, every run gets its table row, max stable batch and JSON rows."""
    r = run("benchmark_prefill_decode.py", "--device", "cpu", "--model-name", "ttt-tiny", "mamba-tiny",
            "--inner_net", "mlp_1_dual", "--batch", "1", "2", "--genlen", "4", "--promptlen", "3", "--logdir",
            tmp_path, "--json", "--results_dir", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ttt-tiny + mamba-tiny decode")
    assert "| prefill_s | prefill tok/s | status |" in r.stdout  # a prompt: its prefill is timed too
    for label in ("ttt-tiny mlp_1_dual eager", "mamba-tiny eager"):
        assert f"{label}: max stable batch 2" in r.stdout
        for b in (1, 2):
            row = next(line for line in r.stdout.splitlines() if line.startswith(f"| {label} | {b} |"))
            assert row.rstrip().endswith("| ok (cpu) |")
    assert "mamba-tiny mlp_1_dual" not in r.stdout
    data = json.loads((tmp_path / "decode_ttt-tiny+mamba-tiny_mlp_1_dual_fp16_eager_b1-2.json").read_text())
    mamba = [row for row in data["rows"] if row["run"] == "mamba-tiny eager"]
    assert [row["batch"] for row in mamba] == [1, 2]
    # 2 layers x 256 channels: the fp32 SSM state (16) read and written, the fp16 conv ring (4) three
    # slots read and one written, plus x, z, y, dt_low/B/C
    per_seq = 2 * (2 * 256 * 16 * 4 + 256 * 4 * 2 + 3 * 256 * 2 + (8 + 32) * 2)
    assert mamba[1]["bytes_per_step_gb"] - mamba[0]["bytes_per_step_gb"] == pytest.approx(per_seq / 1e9)


def test_plot_of_a_batch_sweep(benchmark_module, tmp_path):
    """--plot on a tiny CPU sweep writes the PNG; the plotting itself draws OOM batches too."""
    pytest.importorskip("matplotlib")
    r = run("benchmark_prefill_decode.py", "--device", "cpu", "--model-name", "mamba-tiny", "--batch", "1", "2",
            "--genlen", "2", "--logdir", tmp_path, "--plot", "--results_dir", tmp_path, "--name", "sweep")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
    bench = benchmark_module("benchmark_prefill_decode")
    rows = [{"run": "a", "batch": 64, "total_tok_s": 1e3, "status": "ok"},
            {"run": "a", "batch": 128, "status": "oom"},
            {"run": "b", "batch": 64, "status": "oom"}]
    assert bench.run_points(rows, "a") == ([(64, 1e3)], [128])
    path = bench.plot_throughput(rows, tmp_path / "sub" / "synthetic.png", "title")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_plot_without_matplotlib_says_so(benchmark_module, monkeypatch, capsys):
    bench = benchmark_module("benchmark_prefill_decode")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert bench.main(["--device", "cpu", "--model-name", "mamba-tiny", "--plot"]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
