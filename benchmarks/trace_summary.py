"""Top kernels by GPU time in a PyTorch profiler trace (the ``.json`` that
``benchmark_prefill_decode.py --profile`` writes; Chrome trace format).

    python benchmarks/trace_summary.py benchmarks/logs/trace_ttt-1b_mlp_2_dual_triton_cg_b512.json
    python benchmarks/trace_summary.py TRACE.json --top 30 --width 100

Sums the duration of every GPU kernel event (``cat`` "kernel"; memcpy/memset events
are listed as such) by name and prints calls, total, share of all GPU time and mean.
A trace without GPU events (a CPU run) is summarised by its CPU operators instead.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict

GPU_CATS = {"kernel": "", "gpu_memcpy": "[memcpy] ", "gpu_memset": "[memset] "}


def load_events(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as fh:
        data = json.load(fh)
    return data["traceEvents"] if isinstance(data, dict) else data


def summarize(events: list[dict]):
    """``(kind, total_us, [(name, calls, total_us), ...] sorted by total)``; kind is "GPU" or "CPU"."""
    by_name = defaultdict(lambda: [0, 0.0])
    kind = "GPU"
    picked = [e for e in events if e.get("ph") == "X" and str(e.get("cat", "")).lower() in GPU_CATS]
    if not picked:
        kind = "CPU"
        picked = [e for e in events if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    for e in picked:
        name = GPU_CATS.get(str(e.get("cat", "")).lower(), "") + e.get("name", "?")
        by_name[name][0] += 1
        by_name[name][1] += float(e.get("dur", 0.0))
    rows = sorted(((n, c, t) for n, (c, t) in by_name.items()), key=lambda r: -r[2])
    # CPU operators nest, so their sum over-counts; the share is still of the summed time
    return kind, sum(t for _, _, t in rows), rows


def format_table(kind, total, rows, top: int, width: int) -> str:
    nested = " (CPU operators: nested, so shares over-count)" if kind == "CPU" else ""
    lines = [f"{kind} time in trace: {total / 1e3:.3f} ms over {sum(c for _, c, _ in rows)} events, "
             f"{len(rows)} distinct names" + nested,
             f"{'total ms':>10} {'share':>7} {'calls':>7} {'mean us':>9}  name"]
    for name, calls, t in rows[:top]:
        short = name if len(name) <= width else name[: width - 3] + "..."
        lines.append(f"{t / 1e3:10.3f} {100 * t / total if total else 0:6.1f}% {calls:7d} {t / calls:9.1f}  {short}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", help="profiler trace .json (or .json.gz)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--width", type=int, default=80, help="longest kernel name printed")
    args = p.parse_args(argv)
    kind, total, rows = summarize(load_events(args.trace))
    if not rows:
        print(f"{args.trace}: no kernel or operator events", file=sys.stderr)
        return 1
    print(format_table(kind, total, rows, args.top, args.width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
