"""Micro-benchmark of one decode step (one layer) over batch size, on the GPU: a TTT
layer's inner-net op, or (``--op mamba``) the Mamba mixer's conv + SSM step.

    python benchmarks/micro_benchmark.py --inner_net mlp_2 --json --plot     # TTT-MLP, fp16 state
    python benchmarks/micro_benchmark.py --inner_net mlp_1 --state_dtype fp32
    python benchmarks/micro_benchmark.py --inner_net mlp_2 --lines dual dual_CG --batch 512 1024
    python benchmarks/micro_benchmark.py --op mamba --json --plot              # mamba-1.4b layer, fp32 state

Lines (``--lines``; spaces or underscores): ``ref`` the PyTorch reference, eager (TTT: the
dual form); ``ref compile`` the same under torch.compile (TTT only); ``primal`` / ``dual``
the TTT Triton kernels (original algorithm / this project's); ``cuda`` this project's
dual form as hand-written CUDA (``ttt_kernels._C``; a note when it is not built); ``fused`` our Mamba step
(conv kernel, x_proj GEMM, SSM kernel with dt_proj fused); ``mamba_ssm`` mamba-ssm's step
kernels (``causal_conv1d_update``, x_proj and dt_proj GEMMs, ``selective_state_update``)
when ``mamba_ssm`` and ``causal_conv1d`` import (the ``[mamba]`` extra), skipped with a
note otherwise. ``<line> CG`` replays the same 16 steps from one CUDA graph.

Mamba (``--op mamba``): d_model 2048 (d_inner 4096, dt_rank 128), d_state 16 by default,
fp32 state and fp16 activations; the weights are a seeded ``Mamba`` mixer's. The step
runs between in_proj and out_proj. Before the timings of each batch size our fused step
is cross-checked against the reference and against mamba-ssm's kernels (where they
import) from the same state and input: the relative errors are printed and kept in the
JSON. The floor counts per sequence the SSM state read and written, the conv ring's
three earlier inputs read and one slot written, x and z read, y written and x_proj's
output read, plus the step's weights once (``Mamba.step_bytes``). mamba-ssm's line keeps
its own conv state layout (the window ``[B, d_inner, d_conv]``, shifted each step).

A step's time is the mean over one whole mini-batch cycle: 16 consecutive steps (so
the 1-in-16 TTT weight update is in), each with its own pre-built position tensor
``pos_i = base + i`` and pre-generated q, k, v, lr (Mamba: x, z), the state updated in
place; ``triton.testing.do_bench`` (median, L2 flushed before each cycle) of the 16-step
function, divided by 16. GB/s = floor bytes / time (TTT: decode_floor_bytes, the
weights read once plus q, k, v, out); %floor = (floor bytes at the bandwidth) / time, the
bandwidth being this GPU's measured device-to-device copy rate (an H100's is ~3.0 TB/s, the
issues' figure) or ``--bandwidth`` TB/s. Where
the state fits in L2 (small B) steps 2..16 of a cycle may read it from L2, so %floor can
pass 100%.

Profiling (no timing; NVTX ranges per line, cycle and step):
    nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop -t cuda,nvtx \\
        -o ttt_decode_mlp_2 python benchmarks/micro_benchmark.py --inner_net mlp_2 --profile
    ncu --profile-from-start off --kernel-name regex:decode_dual --launch-skip 15 --launch-count 1 \\
        python benchmarks/micro_benchmark.py --inner_net mlp_2 --lines cuda --profile \\
        --profile_batch 512 --profile_cycles 1
    (launch 16 of the loop is t = 15 of the first cycle)
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ttt_kernels.utils.benchmarking import (add_bandwidth_argument, as_dtype, decode_floor_bytes,  # noqa: E402
                                            floor_bandwidth, markdown_table, random_layer, random_lr,
                                            random_token, write_results)

K = 16
DEVICE = "cuda"
LINES = {
    "ttt": ["ref", "ref CG", "ref compile", "ref compile CG", "primal", "primal CG", "dual", "dual CG",
            "cuda", "cuda CG"],
    "mamba": ["ref", "ref CG", "fused", "fused CG", "mamba_ssm", "mamba_ssm CG"],
}
EAGER_REF = ("ref",)  # the lines --max_ref_batch limits
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_COLORS = {"ref": "tab:gray", "ref compile": "tab:orange", "primal": "tab:red", "dual": "tab:blue",
           "cuda": "tab:purple", "fused": "tab:blue", "mamba_ssm": "tab:green"}


def line_name(s: str) -> str:
    """'dual_CG', 'dual-cg', 'dual CG' -> 'dual CG'; 'mamba_ssm_CG' -> 'mamba_ssm CG'."""
    words = s.replace("-", " ").replace("_", " ").split()
    name = " ".join(w.upper() if w.lower() == "cg" else w.lower() for w in words).replace("mamba ssm", "mamba_ssm")
    if not any(name in lines for lines in LINES.values()):
        known = sorted({l for lines in LINES.values() for l in lines})
        raise argparse.ArgumentTypeError(f"unknown line {s!r}; lines: {', '.join(known)}")
    return name


def first_line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0][:200]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", choices=list(LINES), default="ttt", help="a TTT layer's op, or the Mamba mixer's step")
    p.add_argument("--inner_net", choices=["mlp_1", "mlp_2"], default="mlp_2", help="TTT")
    p.add_argument("--state_dtype", choices=["fp16", "bf16", "fp32"], default=None,
                   help="default: fp16 for TTT, fp32 for Mamba")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16",
                   help="activations (TTT: q, k, v, out; Mamba: x, z, y and the weights)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 64, 128, 256, 512, 1024])
    p.add_argument("--heads", type=int, default=32, help="TTT")
    p.add_argument("--head_dim", type=int, default=64, help="TTT")
    p.add_argument("--d_model", type=int, default=2048, help="Mamba (d_inner = 2 d_model, dt_rank = d_model / 16)")
    p.add_argument("--d_state", type=int, default=16, help="Mamba")
    p.add_argument("--lines", type=line_name, nargs="+", default=None, metavar="LINE",
                   help="subset of the op's lines (default: all): "
                        + "; ".join(f"{op}: {', '.join(l.replace(' ', '_') for l in ls)}" for op, ls in LINES.items()))
    p.add_argument("--max_ref_batch", type=int, default=256, help="largest batch for the eager ref lines")
    p.add_argument("--ragged", action="store_true",
                   help="TTT: each sequence at its own place in the mini-batch (default: all aligned, t = i)")
    p.add_argument("--warmup", type=float, default=10, help="do_bench warmup, ms")
    p.add_argument("--rep", type=float, default=40, help="do_bench repetition time, ms")
    add_bandwidth_argument(p)
    p.add_argument("--json", action="store_true", help="write <results_dir>/<name>.json")
    p.add_argument("--plot", action="store_true", help="save perf_report's plot next to the JSON (.png)")
    p.add_argument("--name", default=None,
                   help="results file name (default micro_<inner_net or mamba>_<state_dtype>[_act_<dtype>])")
    p.add_argument("--results_dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--profile", action="store_true",
                   help="no timing: 3 cycles of each selected kernel line between cudaProfilerStart/Stop")
    p.add_argument("--profile_batch", type=int, default=256)
    p.add_argument("--profile_cycles", type=int, default=3)
    args = p.parse_args(argv)
    if args.lines is None:
        args.lines = list(LINES[args.op])
    wrong = [l for l in args.lines if l not in LINES[args.op]]
    if wrong:
        p.error(f"--op {args.op} has no line(s) {', '.join(wrong)}; its lines: {', '.join(LINES[args.op])}")
    if args.state_dtype is None:
        args.state_dtype = "fp32" if args.op == "mamba" else "fp16"
    if args.name is None:
        args.name = f"micro_{args.inner_net if args.op == 'ttt' else 'mamba'}_{args.state_dtype}"
        args.name += "" if args.dtype == "fp16" else f"_act_{args.dtype}"
    return args


# the TTT ops of each line, by their exact names
OP_NAMES = {
    "mlp_1": ("ttt_kernels.ops.ttt_linear", {"ref": "ttt_linear_decode_dual_ref", "primal": "ttt_linear_decode_primal",
                                             "dual": "ttt_linear_decode_dual", "cuda": "ttt_linear_decode_dual_cuda"}),
    "mlp_2": ("ttt_kernels.ops.ttt_mlp", {"ref": "ttt_mlp_decode_dual_ref", "primal": "ttt_mlp_decode_primal",
                                          "dual": "ttt_mlp_decode_dual", "cuda": "ttt_mlp_decode_dual_cuda"}),
}


def load_ops(inner_net: str) -> dict:
    """line base name -> callable, or the ImportError that says why it is missing."""
    import importlib
    mod_name, names = OP_NAMES[inner_net]
    mod = importlib.import_module(mod_name)
    return {base: getattr(mod, name, None) or ImportError(f"cannot import {name} from {mod_name}")
            for base, name in names.items()}


def load_mamba_ssm():
    """mamba-ssm's ``(selective_state_update, causal_conv1d_update)``, or the ImportError
    saying why not."""
    try:
        from causal_conv1d import causal_conv1d_update
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    except ImportError as e:
        return ImportError(f"mamba_ssm / causal_conv1d not importable ({e.name or e}); pip install -e '.[mamba]'")
    return selective_state_update, causal_conv1d_update


class Bench:
    """The timing shared by every op: a subclass builds the per-batch inputs and the steps
    of each line (fresh state for each) and says what the floor is."""

    kernel_lines: tuple[str, ...]  # line bases --profile traces

    def __init__(self, args):
        self.args = args
        self.sdt, self.adt = as_dtype(args.state_dtype), as_dtype(args.dtype)
        self.gen = torch.Generator(device=DEVICE).manual_seed(0)
        self.ops = {}  # line base -> callable, or the exception saying why it is missing
        self.batch = None
        self.us = {}  # (B, line) -> µs per step (NaN when skipped)
        self.notes = []
        self.checks = []  # cross-checks of a kernel against other implementations, per batch size

    def steps(self, line, B):
        """The 16 step closures of ``line`` at batch ``B``."""
        raise NotImplementedError

    def op(self, line):
        """The callable of ``line`` (CG or not); raises what made it unavailable."""
        fn = self.ops[line.removesuffix(" CG")]
        if isinstance(fn, Exception):
            raise fn
        return fn

    def floor_bytes(self, B) -> int:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def runner(self, line, B):
        """A callable running one 16-step cycle of ``line``: the steps, or a graph replay."""
        steps = self.steps(line, B)

        def cycle():
            for s in steps:
                s()
        side = torch.cuda.Stream()  # warm up (JIT, torch.compile, allocator) off the capture stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            cycle()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        if not line.endswith(" CG"):
            return cycle, steps
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            cycle()
        return graph.replay, steps

    def measure(self, B, line) -> float:
        """µs per step of ``line`` at batch ``B`` (NaN, with a note, when it cannot run)."""
        import triton.testing
        us = math.nan
        if line.removesuffix(" CG") in EAGER_REF and B > self.args.max_ref_batch:
            self.notes.append(f"{line} B={B}: skipped (> --max_ref_batch {self.args.max_ref_batch})")
        else:
            try:
                ms = triton.testing.do_bench(self.runner(line, B)[0], warmup=self.args.warmup,
                                             rep=self.args.rep, return_mode="median")
                us = 1e3 * ms / K
            except torch.cuda.OutOfMemoryError:
                self.notes.append(f"{line} B={B}: out of memory")
            except Exception as e:  # a missing or failing line must not lose the others' numbers
                self.notes.append(f"{line} B={B}: {type(e).__name__}: {first_line(e)}")
            torch.cuda.empty_cache()  # this line's state and graph are gone: free them for the next
        self.us[(B, line)] = us
        print(f"  B={B:<5} {line:<15} {us:9.2f} µs/step", file=sys.stderr, flush=True)
        return us


class TTTBench(Bench):
    """One TTT layer's inner-net op: H heads of dimension f."""

    kernel_lines = ("primal", "dual", "cuda")

    def __init__(self, args):
        super().__init__(args)
        self.H, self.f = args.heads, args.head_dim
        self.params, *ln = random_layer(args.inner_net, self.H, self.f, K, DEVICE, gen=self.gen)
        self.ln = tuple(ln)  # ln_weight, ln_bias, token_idx_bias (fp32)
        self.ops = load_ops(args.inner_net)
        if not isinstance(self.ops["ref"], Exception):
            self.ops["ref compile"] = torch.compile(self.ops["ref"])

    def describe(self) -> str:
        a = self.args
        return (f"{a.inner_net}, H={self.H}, f={self.f}, K={K}, {a.state_dtype} state, {a.dtype} activations, "
                f"{'ragged' if a.ragged else 'aligned'} positions")

    def inputs(self, B):
        """16 steps' pre-generated q, k, v, lr and positions (kept for the current batch size)."""
        if self.batch != B:
            self.batch = None
            self.tokens = [random_token(B, self.H, self.f, self.adt, DEVICE, self.gen) for _ in range(K)]
            base = torch.full((B,), 2048, dtype=torch.int64, device=DEVICE)
            if self.args.ragged:
                base += torch.randint(0, K, (B,), generator=self.gen, device=DEVICE)
            self.pos = [base + i for i in range(K)]
            self.out = torch.empty_like(self.tokens[0][0])
            self.batch = B
        return self.tokens, self.pos

    def state(self, line_base, B):
        from ttt_kernels.ops.ttt_mlp import w1_hidden_major
        from ttt_kernels.ops.ttt_state import TTTDualState, TTTPrimalState
        H, f = self.H, self.f
        if line_base == "primal":
            st = TTTPrimalState.from_params(self.params, B, self.sdt)
            for g in st.grads:
                g.normal_(0.0, 0.01, generator=self.gen)
        else:  # random cache rows: valid at any position; W1 laid out as the model lays it out for the line
            hidden_major = line_base == "dual" and self.args.inner_net == "mlp_2" and w1_hidden_major(self.sdt, f)
            st = TTTDualState.from_params(self.params, B, K, self.sdt, self.adt, hidden_major)
            st.k_cache.normal_(generator=self.gen)
            st.v_cache.normal_(generator=self.gen)
            st.lr_cache.copy_(random_lr(B, H * K, f, DEVICE, self.gen).view(B, H, K))
        return st

    def steps(self, line, B):
        base, fn = line.removesuffix(" CG"), self.op(line)
        tokens, pos = self.inputs(B)
        st = self.state(base, B)
        if base in self.kernel_lines:
            def step(i):
                fn(*tokens[i], pos[i], *self.ln, st, out=self.out, check_positions=False)
        else:  # the references take no keyword arguments and return a new tensor
            def step(i):
                fn(*tokens[i], pos[i], *self.ln, st)
        return [lambda i=i: step(i) for i in range(K)]

    def floor_bytes(self, B) -> int:
        return decode_floor_bytes(self.args.inner_net, B, self.H, self.f, self.sdt, self.adt)


class MambaBench(Bench):
    """The Mamba mixer's step between in_proj and out_proj: conv, x_proj, SSM."""

    kernel_lines = ("fused", "mamba_ssm")

    def __init__(self, args):
        super().__init__(args)
        from ttt_kernels.modules.mamba import Mamba
        from ttt_kernels.ops.mamba import mamba_step, mamba_step_ref
        self.mixer = Mamba(args.d_model, args.d_state, device=DEVICE, dtype=self.adt)
        self.ops = {"ref": mamba_step_ref, "fused": mamba_step, "mamba_ssm": load_mamba_ssm()}

    def describe(self) -> str:
        m, a = self.mixer, self.args
        return (f"mamba step: d_model {m.d_model} (d_inner {m.d_inner}, dt_rank {m.dt_rank}), d_state {m.d_state}, "
                f"d_conv {m.d_conv}, {a.state_dtype} state, {a.dtype} activations")

    def inputs(self, B):
        """16 steps' pre-generated ``xz [B, 2 d_inner]`` (x and z are its column halves, as
        in_proj leaves them) and positions (ragged: the conv rings wrap at different steps),
        kept for the current batch size; a new size is cross-checked."""
        if self.batch != B:
            self.batch = None
            d, k = self.mixer.d_inner, self.mixer.d_conv
            self.xz = [torch.randn(B, 2 * d, generator=self.gen, device=DEVICE).to(self.adt) for _ in range(K)]
            base = 2048 + torch.randint(0, k, (B,), generator=self.gen, device=DEVICE)
            self.pos = [base + i for i in range(K)]
            self.out = torch.empty(B, d, dtype=self.adt, device=DEVICE)
            self.cross_check(B)
            self.batch = B
        return self.xz, self.pos

    def state(self, B):
        """Random conv ring and SSM state (every value reachable by decoding)."""
        cache = self.mixer.allocate_inference_cache(B, state_dtype=self.sdt)
        for t in cache.tensors():
            t.normal_(generator=self.gen)
        return cache.conv_state, cache.ssm_state

    def mamba_ssm_step(self):
        """mamba-ssm's step on our arguments (its kernels want contiguous x and z, and dt
        already projected: its x_proj and dt_proj run as two GEMMs)."""
        ssu, ccu = self.ops["mamba_ssm"]
        conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D = self.mixer.step_weights()
        A = -torch.exp(A_log)  # once, not per step (mamba-ssm's Mamba.step recomputes it)
        R, N = self.mixer.dt_rank, self.mixer.d_state

        def step(x, z, cs, h):
            xc = ccu(x, cs, conv_w, conv_b, "silu")
            dt_low, Bm, Cm = F.linear(xc, x_proj_w).split([R, N, N], dim=-1)
            return ssu(h, xc, F.linear(dt_low, dt_w), A, Bm, Cm, D, z=z, dt_bias=dt_b, dt_softplus=True)
        return step

    def steps(self, line, B):
        from ttt_kernels.ops.mamba import ring_window
        base, fn = line.removesuffix(" CG"), self.op(line)
        (xz, pos), d = self.inputs(B), self.mixer.d_inner
        cs, h = self.state(B)
        w = self.mixer.step_weights()
        if base == "fused":
            def step(i):
                fn(xz[i][:, :d], xz[i][:, d:], cs, h, pos[i], *w, out=self.out)
        elif base == "ref":  # computes in fp32 and returns a new tensor
            def step(i):
                fn(xz[i][:, :d], xz[i][:, d:], cs, h, pos[i], *w)
        else:  # mamba-ssm's conv state is the window [B, d_inner, d_conv]
            theirs = self.mamba_ssm_step()
            xs, zs = [t[:, :d].contiguous() for t in xz], [t[:, d:].contiguous() for t in xz]
            window = ring_window(cs, pos[0] - 1).contiguous()

            def step(i):
                theirs(xs[i], zs[i], window, h)
        return [lambda i=i: step(i) for i in range(K)]

    def cross_check(self, B):
        """Our fused step against the reference and mamba-ssm's kernels: one step from the
        same state and input; max |error| / max |reference| of y and both states."""
        from ttt_kernels.ops.mamba import mamba_step, mamba_step_ref, ring_window

        def rel(a, ref):
            return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()
        d, w = self.mixer.d_inner, self.mixer.step_weights()
        x, z, pos = self.xz[0][:, :d], self.xz[0][:, d:], self.pos[0]
        cs, h = self.state(B)
        states = {name: (cs.clone(), h.clone()) for name in ("fused", "ref")}
        # mamba-ssm's conv state is the window [B, d_inner, d_conv]: compared as such
        states["mamba_ssm"] = (ring_window(cs, pos - 1).contiguous(), h.clone())
        y = {"fused": mamba_step(x, z, *states["fused"], pos, *w),
             "ref": mamba_step_ref(x, z, *states["ref"], pos, *w)}
        if not isinstance(self.ops["mamba_ssm"], Exception):
            try:  # theirs failing must not cost our lines
                y["mamba_ssm"] = self.mamba_ssm_step()(x.contiguous(), z.contiguous(), *states["mamba_ssm"])
            except Exception as e:
                self.notes.append(f"mamba_ssm cross-check B={B}: {type(e).__name__}: {first_line(e)}")
        for name in ("fused", "ref"):
            states[name] = (ring_window(states[name][0], pos), states[name][1])
        for other in [k for k in y if k != "fused"]:
            errs = {"y": rel(y["fused"], y[other]), "conv_state": rel(states["fused"][0], states[other][0]),
                    "ssm_state": rel(states["fused"][1], states[other][1])}
            self.checks.append({"batch": B, "against": other, **errs})
            print(f"  B={B:<5} cross-check, fused vs {other}: "
                  + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()), file=sys.stderr, flush=True)
        del states
        torch.cuda.empty_cache()

    def floor_bytes(self, B) -> int:
        return self.mixer.step_bytes(B, self.sdt)


def run_perf_report(bench: Bench, name: str, save_png: Path | None):
    """Time every (batch, line) through triton.testing.perf_report; it prints the µs table."""
    import triton.testing
    args = bench.args
    try:
        import matplotlib
        import pandas  # noqa: F401  (perf_report builds its table with pandas)
        matplotlib.use("Agg")
    except ImportError as e:
        print(f"({e.name} missing, so no perf_report table or plot: pip install -e '.[bench]')")
        for B in args.batch:
            for line in args.lines:
                bench.measure(B, line)
        rows = [{"batch": B, **{l: bench.us[(B, l)] for l in args.lines}} for B in args.batch]
        print(markdown_table(rows, ["batch", *args.lines], fmt=".2f"))
        return
    config = triton.testing.Benchmark(
        x_names=["B"], x_vals=args.batch, x_log=True, xlabel="batch size",
        line_arg="line", line_vals=args.lines, line_names=args.lines,
        styles=[(_COLORS[l.removesuffix(" CG")], "--" if l.endswith("CG") else "-") for l in args.lines],
        ylabel="µs/step", y_log=True, plot_name=name, args={})

    @triton.testing.perf_report(config)
    def step_time(B, line):
        return bench.measure(B, line)

    step_time.run(print_data=True, show_plots=False)
    if save_png is not None:
        import matplotlib.pyplot as plt
        plt.title(bench.describe(), fontsize=9)
        save_png.parent.mkdir(parents=True, exist_ok=True)
        plt.savefig(save_png, dpi=120, bbox_inches="tight")
        print(f"wrote {save_png}")


def profile(bench: Bench):
    """A few cycles of each kernel line at one batch size, between cudaProfilerStart/Stop."""
    args, B = bench.args, bench.args.profile_batch
    lines = [l for l in args.lines if l.removesuffix(" CG") in bench.kernel_lines]
    prepared = {}
    for line in lines:  # JIT, warm-up and graph capture stay outside the capture range
        try:
            prepared[line] = bench.runner(line, B)
        except Exception as e:
            print(f"{line}: not profiled ({type(e).__name__}: {first_line(e)})")
    torch.cuda.synchronize()
    nvtx = torch.cuda.nvtx
    torch.cuda.profiler.start()
    for line, (run, steps) in prepared.items():
        nvtx.range_push(f"{line} B={B}")
        for c in range(args.profile_cycles):
            if line.endswith(" CG"):
                nvtx.range_push(f"{line} cycle {c} (16 steps)")
                run()
                nvtx.range_pop()
            else:
                for i, s in enumerate(steps):
                    nvtx.range_push(f"{line} cycle {c} step {i}")
                    s()
                    nvtx.range_pop()
        torch.cuda.synchronize()
        nvtx.range_pop()
    torch.cuda.profiler.stop()
    print(f"profiled {', '.join(prepared)} at B={B}, {args.profile_cycles} cycles of {K} steps each")


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("micro_benchmark.py needs a CUDA GPU (the kernels' correctness runs on the CPU: "
              "python -m pytest tests)", file=sys.stderr)
        return 2
    import triton
    bench = MambaBench(args) if args.op == "mamba" else TTTBench(args)
    env = f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}"
    print(f"{env}\n{bench.describe()}")
    for base, op in bench.ops.items():
        if isinstance(op, Exception):
            print(f"({base} lines skipped: {op})")
    if args.profile:
        profile(bench)
        return 0

    bw = floor_bandwidth(args.bandwidth)  # before the timings: a failure here must not lose them
    run_perf_report(bench, args.name, args.results_dir / f"{args.name}.png" if args.plot else None)

    rows, table = [], []
    for B in args.batch:
        nbytes = bench.floor_bytes(B)
        floor_us = 1e6 * nbytes / bw
        trow = {"batch": B, "floor µs": f"{floor_us:.3g}"}
        for line in args.lines:
            us = bench.us[(B, line)]
            gbps, pct = nbytes / (us * 1e-6) / 1e9, 100 * floor_us / us
            rows.append({"batch": B, "line": line, "us_per_step": us, "GBps": gbps, "pct_floor": pct,
                         "floor_bytes": nbytes, "floor_us": floor_us})
            trow[line] = "–" if math.isnan(us) else f"{gbps:.0f} ({pct:.0f}%)"
        table.append(trow)
    bw_source = "--bandwidth" if args.bandwidth else "this GPU's measured copy rate"
    print(f"\nGB/s of the floor bytes (% of the floor at {bw / 1e12:.2f} TB/s, {bw_source}):")
    print(markdown_table(table, ["batch", "floor µs", *args.lines]))
    if bench.checks:
        print("\ncross-checks of the fused step (max |error| / max |reference|):")
        print(markdown_table(bench.checks, ["batch", "against", "y", "conv_state", "ssm_state"], fmt=".1e"))
    if bench.notes:
        print("\nnotes:\n" + "\n".join(f"  {n}" for n in bench.notes))
    if args.json:
        skip = ("json", "plot", "profile", "name", "results_dir")
        settings = {k: v for k, v in vars(args).items() if k not in skip}
        extra = {"settings": {**settings, "K": K}, "floor_bytes_per_s": bw, "floor_bandwidth": bw_source,
                 "timing": "do_bench median of a 16-step cycle / 16", "notes": bench.notes}
        if bench.checks:
            extra["cross_checks"] = bench.checks
        path = write_results(args.name, rows, sys.argv, results_dir=args.results_dir, extra=extra)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
