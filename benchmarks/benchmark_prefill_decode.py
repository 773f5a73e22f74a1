"""Whole-model prefill / decode throughput of the TTT LMs and the Mamba baseline (greedy
decoding, random weights).

    python benchmarks/benchmark_prefill_decode.py --model-name ttt-1b --mode decode \\
        --inner_net mlp_2_dual_triton mlp_2_primal_triton --batch 64 128 256 512 --json
    python benchmarks/benchmark_prefill_decode.py --model-name ttt-1b --mode decode --no_cg --batch 512
    python benchmarks/benchmark_prefill_decode.py --model-name mamba-1.4b --batch 64 256 512 1024
    python benchmarks/benchmark_prefill_decode.py --model-name ttt-1b mamba-1.4b \\
        --inner_net mlp_1_dual_triton mlp_2_dual_triton --batch 64 128 256 512 1024 2048 --json --plot
    python benchmarks/benchmark_prefill_decode.py --model-name ttt-1b --mode prefill --inner_net mlp_1_dual_triton \\
        --batch 1 4 16 --promptlen 512 4096 32768 --json
    python benchmarks/benchmark_prefill_decode.py --model-name ttt-profile --batch 512 --genlen 32 --profile
    python benchmarks/benchmark_prefill_decode.py --device cpu --model-name ttt-tiny --batch 2 --genlen 20

Decode: the prompt (``--promptlen`` random tokens) is prefilled (timed as for ``--mode prefill``
when longer than one token: the ``prefill tok/s`` column), the decode step is warmed up and
captured in a CUDA graph (unless ``--no_cg``), then ``--genlen`` greedy steps are timed
(synchronised), ``--repeats`` times, each continuing the same sequences; the median counts.
Throughput counts generated tokens only: total tok/s = batch * genlen /
decode_s, per-stream tok/s = genlen / decode_s. ``roofline %`` = (bytes a step must move / the
bandwidth) / measured step time, the bandwidth being this GPU's measured device-to-device
copy rate (an H100's is ~3.0 TB/s, the issues' figure) or ``--bandwidth`` TB/s, the bytes
being each layer's TTT weights read once per (sequence, head) plus q, k, v, out, the
mini-batch-end weight write amortised over 16 steps, and the model's weights; for Mamba,
each layer's conv and SSM states read and written (13.5 MiB per sequence for mamba-1.4b with
its fp32 SSM state, so 28.3 MB moved per sequence and step), x, z and y, and the weights.
Prefill: ``--promptlen`` tokens per sequence from a fresh cache, timed the same way after
one untimed warm-up (the TTT layers of the fused inner nets prefill with the chunked kernels
of ``ops/ttt_*/chunk.py``, ``mlp_2_dual_cuda`` with the CUDA one of
``ops/ttt_mlp/chunk_cuda.py`` where it fits; Mamba prefills with the reference scan).

Several ``--model-name`` values run one after the other, each ``ttt-*`` model with every
``--inner_net`` (other families have none). ``--batch`` and ``--promptlen`` take several values
to sweep; with several prompt lengths each run's label ends in ``T=<promptlen>``, so the max
stable batch and the plot's lines are per prompt length. The state dtype defaults to each model's own:
the activation dtype for TTT, fp32 for Mamba's SSM state.

A batch that runs out of GPU memory is reported as ``oom`` and the sweep goes on; each
run states its max stable batch. ``--plot`` draws total tok/s over batch size, a line
per run with its max stable batch and out-of-memory batches marked, into
``--results_dir`` (matplotlib, from the ``[bench]`` extra). ``--profile`` writes a
PyTorch profiler trace per batch into ``--logdir`` (``.json``: open in
https://ui.perfetto.dev, summarise with ``benchmarks/trace_summary.py``) and flame
stacks (``.stacks``, for flamegraph.pl). ``--device cpu`` runs the same code path as a
functional check (Triton in its interpreter): its figures are not performance figures, and
its traces of Triton inner nets come without Python stacks (the interpreter's calls would
fill the memory).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

DTYPES = ("fp16", "bf16", "fp32")
CPU_NOTE = "functional check, not a performance figure (CPU; Triton kernels in the interpreter)"

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Model families by name prefix -> (module, class). Each class offers from_name(name, device=, dtype=),
# config.vocab_size and the allocate_inference_cache / prefill / step API of ttt_kernels.utils.generation
# (optional: set_inner_net(name), decode_bytes_per_step(batch, state_dtype) for the roofline column).
MODEL_FAMILIES = {
    "ttt-": ("ttt_kernels.models.ttt_lm", "TTTLM"),
    "mamba-": ("ttt_kernels.models.mamba_lm", "MambaLM"),
}


def model_class(name: str):
    for prefix, (module, cls) in MODEL_FAMILIES.items():
        if name.startswith(prefix):
            return getattr(importlib.import_module(module), cls)
    raise SystemExit(f"unknown model {name!r}: known prefixes {sorted(MODEL_FAMILIES)}")


def parse_args(argv=None):
    from ttt_kernels.utils.benchmarking import add_bandwidth_argument  # imports no Triton

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-name", "--model_name", dest="model_name", nargs="+", default=["ttt-1b"],
                   help="one model, or several run one after the other (e.g. ttt-1b mamba-1.4b)")
    p.add_argument("--mode", choices=["prefill", "decode"], default="decode")
    p.add_argument("--inner_net", nargs="+", default=["mlp_2_dual_triton"],
                   help="TTT op(s) to run, each a separate run on the same weights (ttt-* models only)")
    p.add_argument("--dtype", choices=DTYPES, default="fp16", help="weights and activations")
    p.add_argument("--state_dtype", choices=DTYPES, default=None,
                   help="recurrent state (default: the model's: --dtype for TTT, fp32 for Mamba)")
    p.add_argument("--batch", type=int, nargs="+", default=[64], help="one value, or several to sweep")
    p.add_argument("--promptlen", type=int, nargs="+", default=[1], help="one value, or several to sweep")
    p.add_argument("--genlen", type=int, default=512)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (3; CPU 1)")
    p.add_argument("--use_compile", action="store_true", help="torch.compile the decode step (kernels excluded)")
    p.add_argument("--no_cg", action="store_true", help="decode eagerly instead of replaying a CUDA graph")
    p.add_argument("--profile", action="store_true", help="also write a profiler trace + flame stacks per batch")
    p.add_argument("--profile_steps", type=int, default=16, help="decode steps in a trace (16 = one mini-batch)")
    p.add_argument("--logdir", default="benchmarks/logs")
    p.add_argument("--json", action="store_true", help="write <results_dir>/<name>.json")
    p.add_argument("--plot", action="store_true",
                   help="write <results_dir>/<name>.png: total tok/s over batch, a line per run (needs matplotlib)")
    p.add_argument("--name", default=None, help="results file name (default from models, mode, dtype, cg)")
    p.add_argument("--results_dir", type=Path, default=RESULTS_DIR)
    add_bandwidth_argument(p)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.device == "cpu" else 3
    if min(args.batch) < 1 or min(args.promptlen) < 1 or args.genlen < 1:
        p.error("--batch, --promptlen and --genlen must be >= 1")
    return args


class Progress:
    """tqdm when installed, else one line per item."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="run", file=sys.stderr)
        except ImportError:
            self.bar, self.total, self.done = None, total, 0

    def update(self, desc: str):
        if self.bar is not None:
            self.bar.set_description(desc)
            self.bar.update(1)
        else:
            self.done += 1
            print(f"[{self.done}/{self.total}] {desc}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def is_oom(e: BaseException) -> bool:
    """Out of memory, also when it surfaced as another error (a CUDA-graph capture that an
    allocation failure broke fails again when the capture ends)."""
    import torch
    while e is not None:
        if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


def free_memory():
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def synchronize(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def profile_to(path_stem: Path, fn, device, stacks: bool = True):
    """Run ``fn`` under the profiler: ``<stem>.json`` (Chrome/Perfetto trace) and, with ``stacks``
    (Python stacks recorded), ``<stem>.stacks``."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    kw = {}
    try:  # Python stacks for export_stacks need the verbose experimental config on recent torch
        kw["experimental_config"] = torch._C._profiler._ExperimentalConfig(verbose=True)
    except AttributeError:
        pass
    with profile(activities=acts, with_stack=stacks, **kw) as prof:
        fn()
        synchronize(device)
    prof.export_chrome_trace(str(path_stem) + ".json")
    if stacks:
        metric = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        prof.export_stacks(str(path_stem) + ".stacks", metric)
    return str(path_stem) + ".json"


def interpreted_kernels(model, device) -> bool:
    """Whether ``model``'s steps run Triton kernels in the interpreter (on the CPU): its Python
    calls, one per program and op, are too many to record as stacks (one step of ttt-tiny
    filled 8 GB), so such a trace is written without them."""
    return device.type != "cuda" and any(blk.fused for blk in model.layers)


def time_prefill(model, prompt, cache, repeats: int, device) -> float:
    """Median seconds of a whole-prompt prefill from a fresh cache over ``repeats``, after one
    untimed warm-up (kernel compilation, GEMM algorithm choice)."""
    times = []
    for _ in range(repeats + 1):
        cache.reset()  # outside the timed region
        times.append(timed(lambda: model.prefill(prompt, cache), device))
    return statistics.median(times[1:])


def run_one(model, args, batch, promptlen, label, device, state_dtype, logdir: Path, bandwidth) -> dict:
    """One (run, batch, prompt length) measurement; raises on OOM (the caller reports it).
    ``bandwidth``: bytes per second of the roofline (None on the CPU)."""
    import torch

    from ttt_kernels.utils.generation import DecodeStep

    row = {"run": label, "batch": batch, "promptlen": promptlen}
    g = torch.Generator(device=device).manual_seed(args.seed)
    prompt = torch.randint(0, model.config.vocab_size, (batch, promptlen), generator=g, device=device)
    cache = model.allocate_inference_cache(batch, state_dtype=state_dtype)
    row["state_gib_per_seq"] = cache.nbytes() / batch / 2**30
    trace_stem = logdir / f"trace_{label.replace(' ', '_').replace('=', '')}_b{batch}"

    if args.mode == "prefill" or promptlen > 1:
        secs = time_prefill(model, prompt, cache, args.repeats, device)
        row.update(prefill_s=secs, prefill_tok_s=batch * promptlen / secs)
    if args.mode == "prefill":
        row.update(total_tok_s=row["prefill_tok_s"], per_stream_tok_s=promptlen / secs)
        if args.profile:
            cache.reset()
            row["trace"] = profile_to(trace_stem, lambda: model.prefill(prompt, cache), device,
                                      stacks=not interpreted_kernels(model, device))
        return row

    cg = not args.no_cg and device.type == "cuda"
    stepper = DecodeStep(model, cache, cg=cg, use_compile=args.use_compile)  # leaves the cache fresh
    stepper.ids.copy_(model.prefill(prompt, cache).argmax(-1))

    def decode(n=args.genlen):
        for _ in range(n):
            stepper()
    times = [timed(decode, device) for _ in range(args.repeats)]
    secs = statistics.median(times)
    row.update(decode_s=secs, total_tok_s=batch * args.genlen / secs, per_stream_tok_s=args.genlen / secs,
               step_ms=1e3 * secs / args.genlen, repeats_s=times)
    if hasattr(model, "decode_bytes_per_step"):
        nbytes = model.decode_bytes_per_step(batch, state_dtype)
        row["bytes_per_step_gb"] = nbytes / 1e9
        if bandwidth:
            row["roofline_pct"] = 100 * (nbytes / bandwidth) / (secs / args.genlen)
    if args.profile:
        row["trace"] = profile_to(trace_stem, lambda: decode(args.profile_steps), device,
                                  stacks=not interpreted_kernels(model, device))
    return row


def speedups(rows) -> list[str]:
    """``X dual`` over ``X primal`` total tok/s at each batch both ran (the issue's criterion)."""
    tok = {(r["run"], r["batch"]): r["total_tok_s"] for r in rows if r["status"].startswith("ok")}
    lines = []
    for (run, batch), t in tok.items():
        base = run.replace("_dual", "_primal")
        if base != run and (base, batch) in tok:
            lines.append(f"{run} / {base} at batch {batch}: {t / tok[base, batch]:.2f}x tok/s")
    return lines


def run_points(rows, label):
    """One run's ``[(batch, total tok/s)]`` that ran and its batches out of memory, by batch;
    the last that ran is the max stable batch."""
    mine = sorted((r for r in rows if r["run"] == label), key=lambda r: r["batch"])
    return ([(r["batch"], r["total_tok_s"]) for r in mine if r["status"].startswith("ok")],
            [r["batch"] for r in mine if r["status"] == "oom"])


def plot_throughput(rows, path: Path, title: str) -> Path:
    """Total tok/s over batch size (log2), one line per run; the max stable batch is ringed,
    batches that ran out of memory are crosses in the run's colour along the batch axis
    (stacked, a height per run, so runs that failed at the same batch stay visible)."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    oom_runs = 0
    for label in dict.fromkeys(r["run"] for r in rows):
        pts, oom = run_points(rows, label)
        if pts:
            (line,) = ax.plot(*zip(*pts), marker="o", label=f"{label} (max stable batch {pts[-1][0]})")
            color = line.get_color()
            ax.plot(*pts[-1], marker="o", markersize=13, mfc="none", mew=1.5, color=color)
        else:
            (line,) = ax.plot([], [], marker="o", label=f"{label} (no batch ran)")
            color = line.get_color()
        if oom:
            ax.plot(oom, [0.03 + 0.04 * oom_runs] * len(oom), "x", color=color, ms=10, mew=2.5, clip_on=False,
                    transform=ax.get_xaxis_transform())  # x in data, y in axes units: on the axis
            oom_runs += 1
    if oom_runs:
        ax.plot([], [], "x", color="gray", ms=10, mew=2.5, label="out of memory")
    batches = sorted({r["batch"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("batch size")
    ax.set_ylabel("total tok/s")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plot:
        try:  # before any model is built: a sweep must not end in a missing plotting library
            import matplotlib  # noqa: F401
        except ImportError:
            print("benchmark_prefill_decode: --plot needs matplotlib: pip install -e '.[bench]'", file=sys.stderr)
            return 2
    if args.device == "cpu":
        # the Triton kernels run in Triton's interpreter; must be set before triton is imported
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmark_prefill_decode: no CUDA GPU found. This benchmark measures GPU throughput; "
              "run it on a GPU machine, or pass --device cpu for a functional check (not a performance "
              "figure) with a small config such as --model-name ttt-tiny.", file=sys.stderr)
        return 2

    from ttt_kernels.utils.benchmarking import as_dtype, floor_bandwidth, markdown_table, write_results

    device = torch.device(args.device)
    # measured before any model takes memory; the CPU check has no roofline
    bandwidth = floor_bandwidth(args.bandwidth) if device.type == "cuda" and args.mode == "decode" else None
    dtype = as_dtype(args.dtype)
    state_dtype = as_dtype(args.state_dtype) if args.state_dtype else None  # None: each model's default
    logdir = Path(args.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    # (model, inner net) runs; every name is resolved before the first model is built
    runs = [(name, variant) for name in args.model_name
            for variant in (args.inner_net if hasattr(model_class(name), "set_inner_net") else [None])]
    variants = list(dict.fromkeys(v for _, v in runs if v))
    mode_tag = "cg" if not args.no_cg and device.type == "cuda" else "eager"
    if args.use_compile:
        mode_tag += "+compile"
    if args.mode == "prefill":
        mode_tag = "prefill"
    if args.use_compile:
        # every batch size and inner net is a recompile of the same step code
        import torch._dynamo
        key = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, key, max(64, getattr(torch._dynamo.config, key)))

    rows, model, loaded = [], None, None
    promptlens = sorted(set(args.promptlen))
    progress = Progress(len(runs) * len(args.batch) * len(promptlens))
    for name, variant in runs:
        if model is not None and name == loaded and variant is not None:
            try:
                model.set_inner_net(variant)  # same weights, another op
            except ValueError:  # another inner-net family: new weights
                model = None
        else:
            model = None  # another model
        if model is None:
            free_memory()
            kw = {"inner_net": variant} if variant is not None else {}
            model, loaded = model_class(name).from_name(name, device=device, dtype=dtype, **kw), name
        for promptlen, batch in ((t, b) for t in promptlens for b in sorted(args.batch)):
            label = " ".join(x for x in (name, variant, mode_tag) if x)
            if len(promptlens) > 1:
                label += f" T={promptlen}"
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                row = run_one(model, args, batch, promptlen, label, device, state_dtype, logdir, bandwidth)
                row["status"] = "ok" if device.type == "cuda" else "ok (cpu)"
            except Exception as e:  # only out-of-memory is reported and survived
                if not is_oom(e):
                    raise
                row = {"run": label, "batch": batch, "promptlen": promptlen, "status": "oom"}
            free_memory()
            if device.type == "cuda":
                row["mem_used_gib"] = torch.cuda.max_memory_allocated() / 2**30
            rows.append(row)
            progress.update(f"{label} B={batch}: {row['status']}")
    progress.close()
    del model
    free_memory()

    time_col = ("prefill_s", "prefill_s") if args.mode == "prefill" else ("decode_s", "decode_s")
    columns = [("run", "run"), ("batch", "batch")]
    if args.mode == "prefill" or len(promptlens) > 1:
        columns.append(("promptlen", "promptlen"))
    columns += [("total_tok_s", "total tok/s"), ("per_stream_tok_s", "per-stream tok/s"), time_col,
                ("mem_used_gib", "mem_used_gib")]
    if args.mode == "decode":
        columns += [("step_ms", "step ms"), ("roofline_pct", "roofline %")]
        if any("prefill_s" in r for r in rows):  # the prompt's prefill, measured before the decode
            columns += [("prefill_s", "prefill_s"), ("prefill_tok_s", "prefill tok/s")]
    columns.append(("status", "status"))
    table = markdown_table(rows, columns, fmt=".4g")
    summary = []
    for label in dict.fromkeys(r["run"] for r in rows):
        ok, oom = run_points(rows, label)
        summary.append(f"{label}: max stable batch {ok[-1][0] if ok else 'none'}"
                       + (f" (oom from {oom[0]})" if oom else ""))
    summary += speedups(rows)
    models = " + ".join(args.model_name)
    header = (f"{models} {args.mode} dtype={args.dtype} "
              f"state_dtype={args.state_dtype or 'per model (TTT: --dtype, Mamba: fp32)'} "
              f"promptlen={' '.join(map(str, promptlens))} genlen={args.genlen} repeats={args.repeats} "
              f"cg={not args.no_cg and device.type == 'cuda'} compile={args.use_compile} device={args.device}")
    if bandwidth:
        header += (f" roofline at {bandwidth / 1e12:.2f} TB/s "
                   f"({'--bandwidth' if args.bandwidth else 'measured device-to-device copy'})")
    if device.type == "cpu":
        header += f"\n** {CPU_NOTE} **"
    text = "\n\n".join([header, table, "\n".join(summary)])
    print(text)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    tag = "+".join(args.model_name)
    log = logdir / f"{tag}_{args.mode}_{mode_tag.replace('+', '_')}_{stamp}.log"
    log.write_text(" ".join(["python", *sys.argv]) + "\n\n" + text + "\n")
    print(f"log: {log}")
    batches = f"b{min(args.batch)}" + (f"-{max(args.batch)}" if len(args.batch) > 1 else "")
    if len(promptlens) > 1:
        batches += f"_t{promptlens[0]}-{promptlens[-1]}"
    name = args.name or "_".join([args.mode, tag, "+".join(variants) or "model", args.dtype,
                                  mode_tag.replace("+", "_"), batches])
    if args.json:
        extra = {"settings": vars(args), "summary": summary, "roofline_bytes_per_s": bandwidth}
        if device.type == "cpu":
            extra["note"] = CPU_NOTE
        print(f"results: {write_results(name, rows, extra=extra, results_dir=args.results_dir)}")
    if args.plot:
        where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU: {CPU_NOTE}"
        lengths = " ".join(map(str, promptlens))
        title = f"{args.mode}: {models}, {args.dtype}, promptlen {lengths}, genlen {args.genlen}, {mode_tag}\n{where}"
        print(f"plot: {plot_throughput(rows, args.results_dir / f'{name}.png', title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
