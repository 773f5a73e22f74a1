"""Time the fused Mamba (v1) decode step per layer (conv + SSM) on the GPU.

    python benchmarks/mamba_step_benchmark.py                      # B = 64, 256, 512, 1024
    python benchmarks/mamba_step_benchmark.py --batch 512 --sweep  # also try SSM and conv tile configs
    python benchmarks/mamba_step_benchmark.py --json benchmarks/results/mamba_step_h100.json

d_inner 4096, d_state 16, dt_rank 128 (mamba-1.4b), fp16 activations, fp32 state by
default. Each line is timed with triton.testing.do_bench (median; L2 flushed before each
run), eagerly and as a CUDA-graph replay. GB/s counts the bytes the line must move:
for the whole step the SSM state (read + written), the conv ring (three earlier inputs
read, one slot written), x, z, dt_low/B/C in and y out (our
x_conv round trip through the x_proj GEMM is overhead, not counted); ``floor`` is those
bytes at the device-to-device copy bandwidth measured at start-up.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform

import torch
import torch.nn.functional as F

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def bench(fn, graph: bool) -> float:
    """Median µs of ``fn`` (eager) or of a CUDA-graph replay of it."""
    import triton.testing
    fn()  # compile / pick GEMM algorithms outside the capture
    torch.cuda.synchronize()
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        run = g.replay
    else:
        run = fn
    return 1e3 * triton.testing.do_bench(run, return_mode="median")


def make_case(B, d, N, R, K, act, state, device="cuda"):
    from ttt_kernels.ops.mamba import split_x_db
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale=1.0, dtype=act):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    c = dict(
        xz=randn(B, 2 * d), conv_state=randn(B, K, d), ssm_state=randn(B, d, N, dtype=state),
        positions=torch.randint(0, 4096, (B,), generator=g, device=device),
        conv_weight=randn(d, K, scale=0.5), conv_bias=randn(d, scale=0.5),
        x_proj_weight=randn(R + 2 * N, d, scale=d ** -0.5),
        dt_proj_weight=randn(d, R, scale=R ** -0.5), dt_proj_bias=torch.full((d,), -4.0, device=device, dtype=act),
        A_log=torch.log(torch.arange(1, N + 1, device=device, dtype=torch.float32)).repeat(d, 1),
        D=torch.ones(d, device=device), xc=randn(B, d), y=torch.empty(B, d, dtype=act, device=device),
    )
    c["x"], c["z"] = c["xz"][:, :d], c["xz"][:, d:]
    c["A"] = -torch.exp(c["A_log"])
    c["x_db"] = F.linear(c["xc"], c["x_proj_weight"])
    c["dt_low"], c["B"], c["C"] = split_x_db(c["x_db"], R, N)
    return c


def lines_for(c, B, d, N, R, K, act, state, ssm_config):
    """name -> (fn, bytes it must move)."""
    from ttt_kernels.ops.mamba import causal_conv1d_update, mamba_step, selective_state_update
    a, s = act.itemsize, state.itemsize
    # the ring conv state: K - 1 earlier inputs read, one slot written
    ssm_rw, conv_rw, vec = 2 * B * d * N * s, B * d * K * a, B * d * a
    xdb = B * (R + 2 * N) * a
    must = ssm_rw + conv_rw + 3 * vec + xdb  # states, x and z in, y out, dt_low/B/C in

    def conv():
        causal_conv1d_update(c["x"], c["conv_state"], c["positions"], c["conv_weight"], c["conv_bias"], out=c["xc"])

    def ssm():
        selective_state_update(c["ssm_state"], c["xc"], c["dt_low"], c["A"], c["B"], c["C"], c["D"], c["z"],
                               c["dt_proj_bias"], dt_proj_weight=c["dt_proj_weight"], out=c["y"],
                               ssm_config=ssm_config)

    def step():
        mamba_step(c["x"], c["z"], c["conv_state"], c["ssm_state"], c["positions"], c["conv_weight"], c["conv_bias"],
                   c["x_proj_weight"], c["dt_proj_weight"], c["dt_proj_bias"], c["A_log"], c["D"], out=c["y"],
                   ssm_config=ssm_config)

    lines = {
        "conv kernel": (conv, conv_rw + 2 * vec),
        "x_proj GEMM": (lambda: F.linear(c["xc"], c["x_proj_weight"]), vec + (R + 2 * N) * d * a + xdb),
        "ssm kernel (+dt_proj)": (ssm, ssm_rw + 3 * vec + xdb),
        "conv+ssm kernels": (lambda: (conv(), ssm()), must),
        "full step (conv, x_proj, ssm)": (step, must),
    }
    lines.update(mamba_ssm_lines(c, B, d, N, R, K, act, state, must, ssm_rw, vec, xdb))
    return lines


def mamba_ssm_lines(c, B, d, N, R, K, act, state, must, ssm_rw, vec, xdb):
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update as ssu
    except ImportError:
        return {}
    try:
        from causal_conv1d import causal_conv1d_update as ccu
    except ImportError:
        ccu = None
    # mamba-ssm takes dt already projected to [B, d_inner]
    dt = F.linear(c["dt_low"], c["dt_proj_weight"])
    from ttt_kernels.ops.mamba import ring_window
    cs = ring_window(c["conv_state"], c["positions"] - 1).contiguous()  # mamba-ssm's window [B, d_inner, d_conv]
    h = c["ssm_state"].clone()
    x, z = c["x"].contiguous(), c["z"].contiguous()

    def ssm_only():
        ssu(h, c["xc"], dt, c["A"], c["B"], c["C"], c["D"], z=z, dt_bias=c["dt_proj_bias"], dt_softplus=True)

    lines = {"mamba_ssm selective_state_update": (ssm_only, ssm_rw + 4 * vec + xdb)}
    if ccu is not None:
        def step():
            xc = ccu(x, cs, c["conv_weight"], c["conv_bias"], "silu")
            dt_low, Bm, Cm = F.linear(xc, c["x_proj_weight"]).split([R, N, N], dim=-1)
            return ssu(h, xc, F.linear(dt_low, c["dt_proj_weight"]), c["A"], Bm, Cm, c["D"], z=z,
                       dt_bias=c["dt_proj_bias"], dt_softplus=True)
        lines["mamba_ssm step (causal_conv1d, x_proj, dt_proj, ssu)"] = (step, must)
    return lines


def sweep(c, B, d, N, R, K, act, state):
    """Eager time of the SSM kernel per tile config (rows, channels, warps, register cap); best first."""
    from ttt_kernels.ops.mamba import selective_state_update
    res = []
    for BB in (16, 32):
        for BD in (16, 32, 64, 128):
            if BB * BD * N > 16384:  # larger tiles spill registers
                continue
            for warps, cap in itertools.product((2, 4, 8), (0, 128)):
                cfg = (BB, BD, warps, cap)
                fn = lambda: selective_state_update(  # noqa: E731
                    c["ssm_state"], c["xc"], c["dt_low"], c["A"], c["B"], c["C"], c["D"], c["z"], c["dt_proj_bias"],
                    dt_proj_weight=c["dt_proj_weight"], out=c["y"], ssm_config=cfg)
                res.append((bench(fn, graph=False), cfg))
    return sorted(res)


def sweep_conv(c):
    """CUDA-graph time of the conv kernel per config (rows, channels, warps); best first."""
    from ttt_kernels.ops.mamba import causal_conv1d_update, decode
    res, default = [], decode.CONV_CONFIG
    try:
        for cfg in itertools.product((1, 2, 4, 8), (128, 256, 512, 1024), (2, 4, 8)):
            if cfg[0] * cfg[1] > 4096 or cfg[0] * cfg[1] < 32 * cfg[2]:
                continue
            decode.CONV_CONFIG = cfg
            res.append((bench(lambda: causal_conv1d_update(c["x"], c["conv_state"], c["positions"], c["conv_weight"],
                                                           c["conv_bias"], out=c["xc"]), graph=True), cfg))
    finally:
        decode.CONV_CONFIG = default
    return sorted(res)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256, 512, 1024])
    p.add_argument("--d-inner", type=int, default=4096)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--dt-rank", type=int, default=128)
    p.add_argument("--d-conv", type=int, default=4)
    p.add_argument("--dtype", choices=DTYPES, default="fp16")
    p.add_argument("--state-dtype", choices=DTYPES, default="fp32")
    p.add_argument("--ssm-config", type=int, nargs=4, metavar=("ROWS", "CHANNELS", "WARPS", "MAXNREG"), default=None,
                   help="SSM kernel tile and register cap, 0 for none "
                        "(default: ttt_kernels.ops.mamba.decode.SSM_CONFIG)")
    p.add_argument("--sweep", action="store_true", help="also time the SSM and conv kernels over tile configs")
    p.add_argument("--json", metavar="PATH", help="write the results with ttt_kernels.utils.benchmarking.write_results")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("mamba_step_benchmark needs a CUDA GPU (the kernels' correctness runs on the CPU: "
                         "pytest tests/test_mamba_ops.py)")
    import triton
    from ttt_kernels.ops.mamba import decode
    from ttt_kernels.utils.benchmarking import copy_bandwidth

    act, state = DTYPES[args.dtype], DTYPES[args.state_dtype]
    d, N, R, K = args.d_inner, args.d_state, args.dt_rank, args.d_conv
    ssm_config = tuple(args.ssm_config) if args.ssm_config else decode.SSM_CONFIG
    copy_bps = copy_bandwidth()
    gpu = torch.cuda.get_device_name()
    print(f"{gpu} | torch {torch.__version__} | triton {triton.__version__} | copy {copy_bps / 1e9:.0f} GB/s")
    print(f"d_inner {d}, d_state {N}, dt_rank {R}, d_conv {K}, {args.dtype} activations, {args.state_dtype} state, "
          f"ssm tile {ssm_config}")
    try:
        import mamba_ssm  # noqa: F401
    except ImportError:
        print("(mamba_ssm not importable: its lines are skipped)")

    rows = []
    hdr = f"{'B':>5} | {'line':<55} | {'eager µs':>9} | {'graph µs':>9} | {'MB':>7} | {'GB/s':>6} | {'floor µs':>8}"
    print(hdr + "\n" + "-" * len(hdr))
    for B in args.batch:
        c = make_case(B, d, N, R, K, act, state)
        for name, (fn, nbytes) in lines_for(c, B, d, N, R, K, act, state, ssm_config).items():
            eager, graph = bench(fn, graph=False), bench(fn, graph=True)
            row = dict(B=B, line=name, eager_us=eager, graph_us=graph, bytes=nbytes,
                       GBps=nbytes / (graph * 1e-6) / 1e9, floor_us=nbytes / copy_bps * 1e6)
            rows.append(row)
            print(f"{B:>5} | {name:<55} | {eager:>9.1f} | {graph:>9.1f} | {nbytes / 1e6:>7.1f} | "
                  f"{row['GBps']:>6.0f} | {row['floor_us']:>8.1f}")
        if args.sweep:
            best = sweep(c, B, d, N, R, K, act, state)
            print(f"{B:>5} | ssm tile sweep (rows, channels, warps, register cap), eager µs: "
                  + ", ".join(f"{cfg}: {us:.1f}" for us, cfg in best[:6]))
            rows.append(dict(B=B, line="ssm tile sweep", results=[dict(config=cfg, eager_us=us) for us, cfg in best]))
            best = sweep_conv(c)
            print(f"{B:>5} | conv sweep (rows, channels, warps), graph µs: "
                  + ", ".join(f"{cfg}: {us:.1f}" for us, cfg in best[:6]))
            rows.append(dict(B=B, line="conv sweep", results=[dict(config=cfg, graph_us=us) for us, cfg in best]))
        del c
        torch.cuda.empty_cache()

    if args.json:
        meta = dict(benchmark="mamba_step", gpu=gpu, torch=torch.__version__, triton=triton.__version__,
                    python=platform.python_version(), copy_GBps=copy_bps / 1e9, d_inner=d, d_state=N, dt_rank=R,
                    d_conv=K, dtype=args.dtype, state_dtype=args.state_dtype, ssm_config=list(ssm_config))
        try:
            from ttt_kernels.utils.benchmarking import write_results  # imported only when asked for
        except ImportError:  # the shared writer is not there yet: plain JSON keeps the numbers
            def write_results(path, payload):
                with open(path, "w") as f:
                    json.dump(payload, f, indent=1)
        write_results(args.json, dict(meta=meta, rows=rows))
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
