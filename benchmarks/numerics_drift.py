"""How far the Triton dual kernels drift from a float64 reference over a long generation.

    python benchmarks/numerics_drift.py                                  # both inner nets, 2048 steps, GPU
    python benchmarks/numerics_drift.py --device cpu --steps 48          # smoke check (interpreter, B=2, H=1)

One layer (B=8, H=4, f=64, K=16), decoding from position 0 with fresh random inputs
each step: q, k, v ~ N(0, 1), lr = base_lr * sigmoid(N(0, 1)) / f. Each precision
(state / activations: fp16/fp16, bf16/bf16, fp32/fp32, fp32/fp16) runs the Triton dual
kernel; next to it a float64 state runs the dual reference (``*_decode_dual_ref``,
same device) on the same inputs (the rounded activations, promoted) from the same
(rounded) initial weights, so what is measured is the state's and the kernel's
arithmetic, not the input rounding. Every 16 steps (and at the last) it records the
step's relative output error ||out - ref|| / ||ref||, its largest value over the
last 16 steps, and the relative error of each weight tensor. Writes
benchmarks/results/numerics_drift_<inner_net>.json and .png and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

K = 16
# (label, state dtype, activation dtype)
CONFIGS = [("fp16/fp16", "fp16", "fp16"), ("bf16/bf16", "bf16", "bf16"), ("fp32/fp32", "fp32", "fp32"),
           ("fp32/fp16", "fp32", "fp16")]
WEIGHT_NAMES = {"mlp_1": ["W", "b"], "mlp_2": ["W1", "b1", "W2", "b2"]}
TABLE_STEPS = (16, 128, 512, 1024, 2048)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inner_net", choices=["mlp_1", "mlp_2", "both"], default="both")
    p.add_argument("--batch", type=int, default=None, help="default 8 (2 with --device cpu)")
    p.add_argument("--heads", type=int, default=None, help="default 4 (1 with --device cpu)")
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=2048)
    p.add_argument("--every", type=int, default=16, help="record every this many steps")
    p.add_argument("--base_lr", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu runs the kernels in Triton's interpreter (slow: a smoke check at small sizes)")
    p.add_argument("--results_dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    cpu = args.device == "cpu"  # the interpreter runs a TTT-MLP program in ~0.1 s: keep the smoke check small
    args.batch = args.batch or (2 if cpu else 8)
    args.heads = args.heads or (1 if cpu else 4)
    return args


def rel(x, ref):
    """||x - ref|| / ||ref|| in float64, as a 0-d device tensor (no synchronisation)."""
    return (x.double() - ref).norm() / ref.norm()


def run_config(args, inner_net, label, sdt_name, adt_name):
    """Decode ``args.steps`` tokens with the kernel and the float64 reference; the records."""
    import torch

    from ttt_kernels.ops.ttt_state import TTTDualState
    from ttt_kernels.utils.benchmarking import as_dtype, random_layer, random_token
    if inner_net == "mlp_1":
        from ttt_kernels.ops.ttt_linear import ttt_linear_decode_dual as kernel
        from ttt_kernels.ops.ttt_linear import ttt_linear_decode_dual_ref as ref_fn
    else:
        from ttt_kernels.ops.ttt_mlp import ttt_mlp_decode_dual as kernel
        from ttt_kernels.ops.ttt_mlp import ttt_mlp_decode_dual_ref as ref_fn

    dev, B, H, f = args.device, args.batch, args.heads, args.head_dim
    sdt, adt = as_dtype(sdt_name), as_dtype(adt_name)
    gen = torch.Generator(device=dev).manual_seed(args.seed)  # same layer and draws for every precision
    params, *ln = random_layer(inner_net, H, f, K, dev, dtype=torch.float64, gen=gen)
    ln32 = [x.float() for x in ln]  # what the kernel gets; the reference gets them exactly, promoted
    ln64 = [x.double() for x in ln32]
    state = TTTDualState.from_params(params, B, K, sdt, adt)
    ref_state = TTTDualState([w.double() for w in state.weights], state.k_cache.double(),
                             state.v_cache.double(), state.lr_cache.double())
    pos = torch.zeros(B, dtype=torch.int64, device=dev)
    out = torch.empty(B, H, f, dtype=adt, device=dev)
    names = WEIGHT_NAMES[inner_net]
    records, window_max = [], torch.zeros((), dtype=torch.float64, device=dev)
    for step in range(1, args.steps + 1):
        q, k, v, lr = random_token(B, H, f, adt, dev, gen, args.base_lr)
        kernel(q, k, v, lr, pos, *ln32, state, out=out, check_positions=False)
        ref = ref_fn(q.double(), k.double(), v.double(), lr.double(), pos, *ln64, ref_state)
        err = rel(out, ref)
        window_max = torch.maximum(window_max, err)
        pos += 1
        if step % args.every == 0 or step == args.steps:
            rec = {"inner_net": inner_net, "config": label, "state_dtype": sdt_name, "act_dtype": adt_name,
                   "step": step, "out_rel_err": err.item(), "out_rel_err_max_window": window_max.item()}
            for n, w, w_ref in zip(names, state.weights, ref_state.weights):
                rec[f"{n}_rel_err"] = rel(w, w_ref).item()
            records.append(rec)
            window_max.zero_()
    return records


def report(args, inner_net, records):
    """The markdown table (steps x precision), the JSON and the plot of one inner net."""
    from ttt_kernels.utils.benchmarking import markdown_table, write_results
    matrices = [n for n in WEIGHT_NAMES[inner_net] if n.startswith("W")]
    labels = [c[0] for c in CONFIGS]
    steps = [s for s in TABLE_STEPS if s <= args.steps] + ([] if args.steps in TABLE_STEPS else [args.steps])
    by = {(r["config"], r["step"]): r for r in records}
    rows = []
    for s in steps:
        row = {"step": s}
        for lab in labels:
            r = by.get((lab, s))
            row[f"{lab} out"] = r and r["out_rel_err"]
            row[f"{lab} W"] = r and max(r[f"{m}_rel_err"] for m in matrices)
        rows.append(row)
    cols = ["step"] + [c for lab in labels for c in (f"{lab} out", f"{lab} W")]
    table = markdown_table(rows, cols, fmt=".2e")
    print(f"\n{inner_net}: relative error vs float64 (state/activations; out = that step's output, "
          f"W = worst of {', '.join(matrices)})\n{table}")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = write_results(f"numerics_drift_{inner_net}", records, sys.argv, results_dir=args.results_dir,
                         extra={"settings": {**settings, "inner_net": inner_net, "K": K},
                                "configs": [{"label": c[0], "state_dtype": c[1], "act_dtype": c[2]} for c in CONFIGS],
                                "table": table})
    print(f"wrote {path}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plot)")
        return
    fig, (ax_out, ax_w) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for i, lab in enumerate(labels):
        rs = [r for r in records if r["config"] == lab]
        x = [r["step"] for r in rs]
        ax_out.plot(x, [r["out_rel_err_max_window"] for r in rs], color=f"C{i}", label=lab)
        for m, ls in zip(matrices, ("-", "--")):
            ax_w.plot(x, [r[f"{m}_rel_err"] for r in rs], color=f"C{i}", ls=ls, label=f"{lab} {m}")
    ax_out.set_title(f"{inner_net}: output, worst step of each {args.every}")
    ax_w.set_title(f"{inner_net}: weights ({', '.join(matrices)})")
    for ax in (ax_out, ax_w):
        ax.set_yscale("log")
        ax.set_xlabel("decode step")
        ax.set_ylabel("relative error vs float64")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    png = Path(args.results_dir) / f"numerics_drift_{inner_net}.png"
    fig.savefig(png, dpi=120, bbox_inches="tight")
    print(f"wrote {png}")


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: use --device cpu (Triton interpreter, small sizes)", file=sys.stderr)
        return 2
    if args.device == "cuda":
        print(torch.cuda.get_device_name())
    nets = ["mlp_1", "mlp_2"] if args.inner_net == "both" else [args.inner_net]
    for inner_net in nets:
        records = []
        for label, sdt, adt in CONFIGS:
            print(f"{inner_net} {label}: {args.steps} steps, B={args.batch}, H={args.heads}, f={args.head_dim}",
                  flush=True)
            records += run_config(args, inner_net, label, sdt, adt)
        report(args, inner_net, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
