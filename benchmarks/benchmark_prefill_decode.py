"""Whole-model prefill / decode throughput of the TTT LMs (greedy decoding, random weights).

    python benchmarks/benchmark_prefill_decode.py --model-name ttt-1b --mode decode \\
        --inner_net mlp_2_dual_triton mlp_2_primal_triton --batch 64 128 256 512 --json
    python benchmarks/benchmark_prefill_decode.py --model-name ttt-1b --mode decode --no_cg --batch 512
    python benchmarks/benchmark_prefill_decode.py --model-name ttt-profile --batch 512 --genlen 32 --profile
    python benchmarks/benchmark_prefill_decode.py --device cpu --model-name ttt-tiny --batch 2 --genlen 20

Decode: the prompt (``--promptlen`` random tokens) is prefilled untimed, the decode step is
warmed up and captured in a CUDA graph (unless ``--no_cg``), then ``--genlen`` greedy steps
are timed (synchronised), ``--repeats`` times, each continuing the same sequences; the
median counts. Throughput counts generated tokens only: total tok/s = batch * genlen /
decode_s, per-stream tok/s = genlen / decode_s. ``roofline %`` = (bytes a step must move /
3.0 TB/s) / measured step time, the bytes being each layer's TTT weights read once per
(sequence, head) plus q, k, v, out, the mini-batch-end weight write amortised over 16
steps, and the model's weights. Prefill: ``--promptlen`` tokens per sequence from a
fresh cache, timed the same way (prefill is the reference path, not a fast kernel).

A batch that runs out of GPU memory is reported as ``oom`` and the sweep goes on; each
run states its max stable batch. ``--profile`` writes a PyTorch profiler trace per batch
into ``--logdir`` (``.json``: open in https://ui.perfetto.dev, summarise with
``benchmarks/trace_summary.py``) and flame stacks (``.stacks``, for flamegraph.pl).
``--device cpu`` runs the same code path as a functional check (Triton in its
interpreter): its figures are not performance figures.
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

# Model families by name prefix -> (module, class). Each class offers from_name(name, device=, dtype=),
# config.vocab_size and the allocate_inference_cache / prefill / step API of ttt_kernels.utils.generation
# (optional: set_inner_net(name), decode_bytes_per_step(batch, state_dtype) for the roofline column).
MODEL_FAMILIES = {
    "ttt-": ("ttt_kernels.models.ttt_lm", "TTTLM"),
}


def model_class(name: str):
    for prefix, (module, cls) in MODEL_FAMILIES.items():
        if name.startswith(prefix):
            return getattr(importlib.import_module(module), cls)
    raise SystemExit(f"unknown model {name!r}: known prefixes {sorted(MODEL_FAMILIES)}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-name", "--model_name", dest="model_name", default="ttt-1b")
    p.add_argument("--mode", choices=["prefill", "decode"], default="decode")
    p.add_argument("--inner_net", nargs="+", default=["mlp_2_dual_triton"],
                   help="TTT op(s) to run, each a separate run on the same weights (ignored by non-TTT models)")
    p.add_argument("--dtype", choices=DTYPES, default="fp16", help="weights and activations")
    p.add_argument("--state_dtype", choices=DTYPES, default=None, help="TTT state (default: --dtype)")
    p.add_argument("--batch", type=int, nargs="+", default=[64], help="one value, or several to sweep")
    p.add_argument("--promptlen", type=int, default=1)
    p.add_argument("--genlen", type=int, default=512)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (3; CPU 1)")
    p.add_argument("--use_compile", action="store_true", help="torch.compile the decode step (kernels excluded)")
    p.add_argument("--no_cg", action="store_true", help="decode eagerly instead of replaying a CUDA graph")
    p.add_argument("--profile", action="store_true", help="also write a profiler trace + flame stacks per batch")
    p.add_argument("--profile_steps", type=int, default=16, help="decode steps in a trace (16 = one mini-batch)")
    p.add_argument("--logdir", default="benchmarks/logs")
    p.add_argument("--json", action="store_true", help="write benchmarks/results/<name>.json")
    p.add_argument("--name", default=None, help="results file name (default from model, mode, dtype, cg)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.device == "cpu" else 3
    if min(args.batch) < 1 or args.promptlen < 1 or args.genlen < 1:
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


def profile_to(path_stem: Path, fn, device):
    """Run ``fn`` under the profiler: ``<stem>.json`` (Chrome/Perfetto trace), ``<stem>.stacks``."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    kw = {}
    try:  # Python stacks for export_stacks need the verbose experimental config on recent torch
        kw["experimental_config"] = torch._C._profiler._ExperimentalConfig(verbose=True)
    except AttributeError:
        pass
    with profile(activities=acts, with_stack=True, **kw) as prof:
        fn()
        synchronize(device)
    prof.export_chrome_trace(str(path_stem) + ".json")
    metric = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    prof.export_stacks(str(path_stem) + ".stacks", metric)
    return str(path_stem) + ".json"


def run_one(model, args, batch, label, device, state_dtype, logdir: Path) -> dict:
    """One (run, batch) measurement; raises on OOM (the caller reports it)."""
    import torch
    from ttt_kernels.utils.generation import DecodeStep

    row = {"run": label, "batch": batch}
    g = torch.Generator(device=device).manual_seed(args.seed)
    prompt = torch.randint(0, model.config.vocab_size, (batch, args.promptlen), generator=g, device=device)
    cache = model.allocate_inference_cache(batch, state_dtype=state_dtype)
    row["state_gib_per_seq"] = cache.nbytes() / batch / 2**30
    trace_stem = logdir / f"trace_{label.replace(' ', '_')}_b{batch}"

    if args.mode == "prefill":
        def prefill():
            model.prefill(prompt, cache)
        times = []
        for _ in range(args.repeats + 1):  # the first is a warm-up (kernel compilation, GEMM algorithm choice)
            cache.reset()  # a fresh cache each time, refilled outside the timed region
            times.append(timed(prefill, device))
        times = times[1:]
        secs = statistics.median(times)
        row.update(prefill_s=secs, total_tok_s=batch * args.promptlen / secs, per_stream_tok_s=args.promptlen / secs)
        if args.profile:
            cache.reset()
            row["trace"] = profile_to(trace_stem, prefill, device)
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
        from ttt_kernels.utils.benchmarking import HBM_BYTES_PER_S
        nbytes = model.decode_bytes_per_step(batch, state_dtype)
        row["bytes_per_step_gb"] = nbytes / 1e9
        if device.type == "cuda":
            row["roofline_pct"] = 100 * (nbytes / HBM_BYTES_PER_S) / (secs / args.genlen)
    if args.profile:
        row["trace"] = profile_to(trace_stem, lambda: decode(args.profile_steps), device)
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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        # the Triton kernels run in Triton's interpreter; must be set before triton is imported
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmark_prefill_decode: no CUDA GPU found. This benchmark measures GPU throughput; "
              "run it on a GPU machine, or pass --device cpu for a functional check (not a performance "
              "figure) with a small config such as --model-name ttt-tiny.", file=sys.stderr)
        return 2

    from ttt_kernels.utils.benchmarking import as_dtype, markdown_table, write_results

    device = torch.device(args.device)
    dtype = as_dtype(args.dtype)
    state_dtype = as_dtype(args.state_dtype or args.dtype)
    logdir = Path(args.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    cls = model_class(args.model_name)
    ttt = hasattr(cls, "set_inner_net")
    variants = args.inner_net if ttt else [None]
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

    rows, model = [], None
    progress = Progress(len(variants) * len(args.batch))
    for variant in variants:
        if model is not None and variant is not None:
            try:
                model.set_inner_net(variant)  # same weights, another op
            except ValueError:  # another inner-net family: new weights
                model = None
                free_memory()
        if model is None:
            kw = {"inner_net": variant} if variant is not None else {}
            model = cls.from_name(args.model_name, device=device, dtype=dtype, **kw)
        label = " ".join(x for x in (args.model_name, variant, mode_tag) if x)
        for batch in sorted(args.batch):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                row = run_one(model, args, batch, label, device, state_dtype, logdir)
                row["status"] = "ok" if device.type == "cuda" else "ok (cpu)"
            except Exception as e:  # only out-of-memory is reported and survived
                if not is_oom(e):
                    raise
                row = {"run": label, "batch": batch, "status": "oom"}
            free_memory()
            if device.type == "cuda":
                row["mem_used_gib"] = torch.cuda.max_memory_allocated() / 2**30
            rows.append(row)
            progress.update(f"{label} B={batch}: {row['status']}")
    progress.close()

    time_col = ("prefill_s", "prefill_s") if args.mode == "prefill" else ("decode_s", "decode_s")
    columns = [("run", "run"), ("batch", "batch"), ("total_tok_s", "total tok/s"),
               ("per_stream_tok_s", "per-stream tok/s"), time_col, ("mem_used_gib", "mem_used_gib")]
    if args.mode == "decode":
        columns += [("step_ms", "step ms"), ("roofline_pct", "roofline %")]
    columns.append(("status", "status"))
    table = markdown_table(rows, columns, fmt=".4g")
    summary = []
    for label in dict.fromkeys(r["run"] for r in rows):
        ok = [r["batch"] for r in rows if r["run"] == label and r["status"].startswith("ok")]
        oom = [r["batch"] for r in rows if r["run"] == label and r["status"] == "oom"]
        summary.append(f"{label}: max stable batch {max(ok) if ok else 'none'}"
                       + (f" (oom from {min(oom)})" if oom else ""))
    summary += speedups(rows)
    header = (f"{args.model_name} {args.mode} dtype={args.dtype} state_dtype={args.state_dtype or args.dtype} "
              f"promptlen={args.promptlen} genlen={args.genlen} repeats={args.repeats} "
              f"cg={not args.no_cg and device.type == 'cuda'} compile={args.use_compile} device={args.device}")
    if device.type == "cpu":
        header += f"\n** {CPU_NOTE} **"
    text = "\n\n".join([header, table, "\n".join(summary)])
    print(text)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = logdir / f"{args.model_name}_{args.mode}_{mode_tag.replace('+', '_')}_{stamp}.log"
    log.write_text(" ".join(["python", *sys.argv]) + "\n\n" + text + "\n")
    print(f"log: {log}")
    if args.json:
        batches = f"b{min(args.batch)}" + (f"-{max(args.batch)}" if len(args.batch) > 1 else "")
        name = args.name or "_".join([args.mode, args.model_name, "+".join(v for v in variants if v) or "model",
                                      args.dtype, mode_tag.replace("+", "_"), batches])
        extra = {"settings": vars(args), "summary": summary}
        if device.type == "cpu":
            extra["note"] = CPU_NOTE
        print(f"results: {write_results(name, rows, extra=extra)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
