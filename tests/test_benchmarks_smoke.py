"""CPU smoke tests of the benchmark helpers and scripts (the timings themselves need a GPU)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ttt_kernels.utils.benchmarking import (decode_floor_bytes, environment_info, floor_bandwidth, markdown_table,
                                            write_results)

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args, timeout=120):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_decode_floor_bytes():
    # mlp_1, fp16 state and activations: (64*64 + 64) * 2 B of weights + 4 * 64 * 2 B of q, k, v, out per head
    assert decode_floor_bytes("mlp_1", 2, 3, 64, torch.float16, torch.float16) == 2 * 3 * (8320 + 512)
    # mlp_2, fp32 state, fp16 activations: (2*64*256 + 256 + 64) * 4 B + 512 B per head
    assert decode_floor_bytes("mlp_2", 1, 1, 64, "fp32", "fp16") == 132352 + 512
    # the design note: B=512, H=32, f=64, fp16 TTT-MLP weights 1.07 GB (358 µs) + q, k, v, out
    nbytes = decode_floor_bytes("mlp_2", 512, 32, 64, "fp16", "fp16")
    assert nbytes == 512 * 32 * (2 * (2 * 64 * 256 + 320) + 512)
    assert 1e6 * nbytes / floor_bandwidth(3.0) == pytest.approx(364.2, abs=0.1)  # the H100's 3.0 TB/s
    with pytest.raises(ValueError):
        decode_floor_bytes("mlp_3", 1, 1, 64, "fp16", "fp16")


def test_write_results_round_trip(tmp_path):
    rows = [{"batch": 1, "line": "dual", "us": 1.5}, {"batch": 2, "line": "dual", "us": math.nan}]
    path = write_results("unit", rows, ["bench.py", "--json"], extra={"notes": ["n"]}, results_dir=tmp_path)
    assert path == tmp_path / "unit.json"
    data = json.loads(path.read_text())
    assert data["command"] == "python bench.py --json"
    assert data["rows"] == [rows[0], {"batch": 2, "line": "dual", "us": None}]  # NaN -> null: strict JSON
    assert data["notes"] == ["n"] and data["timestamp"]
    assert data["environment"]["torch"] == torch.__version__
    assert set(environment_info()) >= {"gpu", "torch", "triton", "cuda", "python"}
    # a path ending in .json is written as given (mamba_step_benchmark's --json PATH)
    p2 = write_results(str(tmp_path / "sub" / "x.json"), {"meta": {}, "rows": []})
    assert json.loads(p2.read_text())["rows"] == {"meta": {}, "rows": []}


def test_markdown_table():
    t = markdown_table([{"B": 1, "us": 2.0}, {"B": 4, "us": math.nan}], ["B", ("us", "µs")], fmt=".1f")
    assert t.splitlines() == ["| B | µs |", "|---:|---:|", "| 1 | 2.0 |", "| 4 | – |"]


def test_micro_benchmark_result_names(benchmark_module, tmp_path):
    """Default names say op and dtypes; --name / --results_dir keep A/B runs from overwriting them."""
    parse = benchmark_module("micro_benchmark").parse_args
    assert parse([]).name == "micro_mlp_2_fp16"
    assert parse(["--op", "mamba"]).name == "micro_mamba_fp32"
    mixed = parse(["--inner_net", "mlp_1", "--state_dtype", "bf16", "--dtype", "fp32"])
    assert mixed.name == "micro_mlp_1_bf16_act_fp32"
    args = parse(["--name", "micro_mlp_2_head_r1", "--results_dir", str(tmp_path)])
    assert args.name == "micro_mlp_2_head_r1" and args.results_dir == tmp_path
    assert parse([]).results_dir == ROOT / "benchmarks" / "results"


def test_micro_benchmark_help():
    r = run_script("benchmarks/micro_benchmark.py", "--help")
    assert r.returncode == 0, r.stderr
    assert "nsys profile --capture-range=cudaProfilerApi" in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_micro_benchmark_without_gpu_exits_2():
    r = run_script("benchmarks/micro_benchmark.py", "--batch", "1")
    assert r.returncode == 2 and "CUDA" in r.stderr


def test_bandwidth_must_be_positive():
    for script in ("micro_benchmark.py", "benchmark_prefill_decode.py"):
        for bad in ("0", "-3", "nan"):
            r = run_script(f"benchmarks/{script}", "--bandwidth", bad)
            assert r.returncode == 2 and f"argument --bandwidth: must be > 0 TB/s, got {bad}" in r.stderr, \
                (script, bad, r.stderr)


@pytest.mark.gpu
def test_copy_bandwidth_measured_once():
    from ttt_kernels.utils.benchmarking import copy_bandwidth

    bw = copy_bandwidth()
    assert 1e11 < bw < 1e14  # bytes read + written per second: a GPU's HBM, not a unit slip
    assert floor_bandwidth() == bw == copy_bandwidth()  # cached: one measurement per process


def test_numerics_drift_cpu(tmp_path):
    try:
        from ttt_kernels.ops.ttt_linear import ttt_linear_decode_dual  # noqa: F401
    except ImportError as e:
        pytest.skip(f"dual kernel not importable yet: {e}")
    r = run_script("benchmarks/numerics_drift.py", "--device", "cpu", "--steps", 17, "--batch", 1, "--heads", 1,
                   "--inner_net", "mlp_1", "--results_dir", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads((tmp_path / "numerics_drift_mlp_1.json").read_text())
    assert {(r["config"], r["step"]) for r in data["rows"]} == {(c, s) for c in ("fp16/fp16", "bf16/bf16",
                                                                                 "fp32/fp32", "fp32/fp16")
                                                                for s in (16, 17)}
    for row in data["rows"]:
        assert 0 <= row["out_rel_err"] < 2e-2 and 0 <= row["W_rel_err"] < 2e-2, row
    assert "| 16 |" in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_micro_benchmark_mamba_without_gpu_exits_2():
    r = run_script("benchmarks/micro_benchmark.py", "--op", "mamba", "--batch", "1")
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr
    r = run_script("benchmarks/micro_benchmark.py", "--op", "mamba", "--lines", "dual")
    assert r.returncode == 2 and "--op mamba has no line(s) dual" in r.stderr


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's import, for the TTT ref compile line
def test_micro_benchmark_lines_run_at_toy_sizes(benchmark_module, monkeypatch, capsys, device):
    """The timing needs CUDA, but each line's 16 steps and the Mamba cross-check run anywhere:
    at toy sizes, on the CPU through Triton's interpreter or on the GPU where there is one (the
    interpreter is off there, so compiled kernels cannot take CPU tensors). A stand-in for
    mamba-ssm's two kernels (our references, which follow its definitions) exercises its line's
    plumbing."""
    mb = benchmark_module("micro_benchmark")
    from ttt_kernels.ops.mamba import causal_conv1d_update_ref, selective_state_update_ref
    monkeypatch.setattr(mb, "DEVICE", device)

    def ssu(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
        return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus).to(x.dtype)

    def ccu(x, conv_state, weight, bias=None, activation=None):
        return causal_conv1d_update_ref(x, conv_state, weight, bias, silu=activation == "silu").to(x.dtype)

    monkeypatch.setattr(mb, "load_mamba_ssm", lambda: (ssu, ccu))
    bench = mb.MambaBench(mb.parse_args(["--op", "mamba", "--d_model", "32", "--batch", "3"]))
    for line in ("fused", "ref", "mamba_ssm"):
        for step in bench.steps(line, 3):
            step()
    assert [c["against"] for c in bench.checks] == ["ref", "mamba_ssm"]
    for c in bench.checks:
        assert c["batch"] == 3 and c["conv_state"] == 0 and c["y"] < 1e-2 and c["ssm_state"] < 1e-4, c
    assert "cross-check, fused vs mamba_ssm" in capsys.readouterr().err
    # d_inner 64, dt_rank 2: per sequence the SSM state twice, the conv ring once (3 slots read, 1
    # written), x, z, y, dt_low/B/C; the weights
    m = bench.mixer
    weights = 64 * 4 * 2 + 64 * 2 + 34 * 64 * 2 + 64 * 2 * 2 + 64 * 2 + 64 * 16 * 4 + 64 * 4
    assert bench.floor_bytes(3) == m.step_bytes(3) == 3 * (2 * 64 * 16 * 4 + 64 * 4 * 2 + 3 * 64 * 2 + 34 * 2) + weights

    ttt = mb.TTTBench(mb.parse_args(["--inner_net", "mlp_1", "--heads", "1", "--head_dim", "16"]))
    for line in ("dual", "primal"):
        steps = ttt.steps(line, 2)
        ttt.out.fill_(float("nan"))
        for step in steps:
            step()
        assert torch.isfinite(ttt.out).all(), line
    assert ttt.floor_bytes(2) == decode_floor_bytes("mlp_1", 2, 1, 16, "fp16", "fp16")
