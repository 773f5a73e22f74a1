"""Prefill of one TTT layer's inner-net op over prompt length and batch size, on the GPU.

    python benchmarks/prefill_benchmark.py --json                       # the default grid, every line
    python benchmarks/prefill_benchmark.py --batch 16 --seqlen 4096     # the issue's comparison point
    python benchmarks/prefill_benchmark.py --sweep --batch 16 --seqlen 4096   # launch configs of our kernels

Lines (``--lines``): ``mlp_1`` / ``mlp_2`` our fused dual-form prefill kernels (TTT-Linear /
TTT-MLP, ``ttt_linear_prefill`` / ``ttt_mlp_prefill``, Triton); ``mlp_2_cuda`` the TTT-MLP one on
the hand-written CUDA kernel (``ttt_mlp_prefill_cuda``: f = 64, 16-bit states); ``ref_mlp_1`` / ``ref_mlp_2`` the
PyTorch reference (the whole-mini-batch dual form looped over the prompt's mini-batches,
as the module's reference path runs an aligned prompt; only up to ``--ref_max_seqlen``);
``fla`` flash-linear-attention's ``chunk_ttt_linear`` (TTT-Linear, chunk 16) where ``fla``
imports (the ``fla-core`` wheel, with ``einops``), a note otherwise. fla's TTT-Linear differs
in details (per-token eta, no mini-batch token index, its own scale), so it is a speed
comparison at equal shapes, not an output comparison; it is given the same initial state
and returns its final state, as ours does.

Each call runs whole prompts of ``T`` tokens for ``B`` sequences (``H`` heads of dimension
``f``; fp16 state and activations by default) from a fresh-sequence state; the state is
updated in place, so repeated calls keep training it (timing does not depend on values).
Time: ``triton.testing.do_bench`` median (L2 flushed before each call). tokens/s = B*T /
time. TFLOP/s counts the dual form's useful matrix products per token and head
(TTT-Linear ``6 f^2 + 4 K f``; TTT-MLP ``14 f f' + 2 K (2 f + 2 f')``, ``f' = 4 f``, ``K = 16``;
fla is counted as TTT-Linear). GB/s counts the bytes any prefill must move: q, k, v read and
out written (activation dtype), lr read (fp32; fla: its eta in the activation dtype), and the
inner net's weights read and written once per (sequence, head) in the state dtype (fp32 for fla).

``--sweep``: instead of the grid, our kernels under each candidate launch config at the first
``--batch`` and ``--seqlen`` (the table the defaults in ``ttt_*/chunk.py`` are chosen from).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from ttt_kernels.utils.benchmarking import (as_dtype, inner_net_elements, markdown_table,  # noqa: E402
                                            random_layer, random_lr, write_results)

K = 16
DEVICE = "cuda"
LINES = ["mlp_1", "mlp_2", "mlp_2_cuda", "ref_mlp_1", "ref_mlp_2", "fla"]
OURS = {"mlp_1": ("ttt_kernels.ops.ttt_linear", "ttt_linear_prefill"),
        "mlp_2": ("ttt_kernels.ops.ttt_mlp", "ttt_mlp_prefill"),
        "mlp_2_cuda": ("ttt_kernels.ops.ttt_mlp", "ttt_mlp_prefill_cuda")}
# candidate launch configs of our kernels for --sweep (None: the launcher's default)
SWEEP = {
    "mlp_1": [None, {"num_warps": 4, "num_stages": 1, "maxnreg": 168},
              {"num_warps": 4, "num_stages": 1, "maxnreg": 128}, {"num_warps": 8, "num_stages": 1},
              {"num_warps": 8, "num_stages": 1, "maxnreg": 128}, {"num_warps": 4, "num_stages": 2, "maxnreg": 128}],
    "mlp_2": [None, {"num_warps": 16, "num_stages": 1},
              {"on_chip": False, "hidden_chunk": 256, "num_warps": 8, "num_stages": 1},
              {"on_chip": False, "hidden_chunk": 256, "num_warps": 16, "num_stages": 1},
              {"on_chip": False, "hidden_chunk": 64, "num_warps": 4, "num_stages": 1},
              {"on_chip": False, "hidden_chunk": 64, "num_warps": 4, "num_stages": 1, "maxnreg": 128}],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", nargs="+", choices=LINES, default=LINES)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seqlen", type=int, nargs="+", default=[512, 2048, 4096, 8192, 32768])
    p.add_argument("--max_tokens", type=int, default=2**19, help="skip shapes with B*T above this")
    p.add_argument("--ref_max_seqlen", type=int, default=2048, help="longest prompt for the PyTorch reference")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--state_dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16", help="activations (q, k, v, out)")
    p.add_argument("--warmup", type=float, default=25, help="do_bench warmup, ms")
    p.add_argument("--rep", type=float, default=100, help="do_bench repetition time, ms")
    p.add_argument("--sweep", action="store_true", help="time our kernels' candidate launch configs instead")
    p.add_argument("--json", action="store_true", help="write benchmarks/results/prefill_<H>x<f>_<dtype>.json")
    return p.parse_args(argv)


def flops_per_token_head(inner_net: str, f: int) -> int:
    if inner_net == "mlp_1":
        return 6 * f * f + 4 * K * f
    fh = 4 * f
    return 14 * f * fh + 2 * K * (2 * f + 2 * fh)


def inner_of(line: str) -> str:
    """The inner net a line computes ("mlp_1" or "mlp_2"; fla's is TTT-Linear)."""
    return "mlp_1" if line == "fla" else line.removeprefix("ref_").removesuffix("_cuda")


def first_line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0][:200]


class PrefillBench:
    def __init__(self, args):
        self.args = args
        self.H, self.f = args.heads, args.head_dim
        self.sdt, self.adt = as_dtype(args.state_dtype), as_dtype(args.dtype)
        self.gen = torch.Generator(device=DEVICE).manual_seed(0)
        self.layers = {n: random_layer(n, self.H, self.f, K, DEVICE, gen=self.gen) for n in ("mlp_1", "mlp_2")}
        self.notes = []
        self.fla = self._load_fla()

    def _load_fla(self):
        try:
            from fla.ops.ttt import chunk_ttt_linear
            return chunk_ttt_linear
        except Exception as e:  # ImportError, or fla failing at import on this platform
            return e

    def inputs(self, B, T):
        """q, k, v ``[B, T, H, f]`` ~ N(0, 1) and lr ``[B, T, H]`` (the TTT gate's range)."""
        q, k, v = (torch.randn(B, T, self.H, self.f, generator=self.gen, device=DEVICE, dtype=self.adt)
                   for _ in range(3))
        return q, k, v, random_lr(B, T * self.H, self.f, DEVICE, self.gen).view(B, T, self.H)

    def runner(self, line, B, T, x, config=None):
        """A no-argument callable running one prefill of ``line``."""
        from ttt_kernels.ops.ttt_mlp import w1_hidden_major
        from ttt_kernels.ops.ttt_state import TTTDualState
        q, k, v, lr = x
        inner = inner_of(line)
        params, *ln = self.layers[inner]
        pos = torch.zeros(B, dtype=torch.int64, device=DEVICE)
        if line in OURS:
            import importlib
            module, fn = OURS[line]
            op = getattr(importlib.import_module(module), fn)
            # W1 laid out as the model lays it out for the line's inner net
            hidden_major = line == "mlp_2" and w1_hidden_major(self.sdt, self.f)
            state = TTTDualState.from_params(params, B, K, self.sdt, self.adt, hidden_major)
            out = torch.empty_like(q)
            kw = {} if line == "mlp_2_cuda" else {"config": config}  # launch configs are the Triton kernels'
            return lambda: op(q, k, v, lr, pos, *ln, state, out=out, check_positions=False, **kw)
        if line.startswith("ref_"):
            return self._reference(inner, params, ln, x)
        if isinstance(self.fla, Exception):
            raise self.fla
        W, b = (p.float().unsqueeze(0).repeat(B, *([1] * p.dim())) for p in params)
        eta = lr.to(self.adt).unsqueeze(-1)  # fla: [B, T, H, 1], per-token learning rate
        ln_w, ln_b = ln[0], ln[1]
        return lambda: self.fla(q, k, v, ln_w, ln_b, eta, chunk_size=K, initial_state=W,
                                initial_state_bias=b.unsqueeze(2), output_final_state=True)

    def _reference(self, inner, params, ln, x):
        """The whole-mini-batch dual reference looped over the prompt (T a multiple of K)."""
        import importlib
        mod = importlib.import_module("ttt_kernels.ops.ttt_linear" if inner == "mlp_1" else "ttt_kernels.ops.ttt_mlp")
        ref = getattr(mod, "ttt_linear_minibatch_dual_ref" if inner == "mlp_1" else "ttt_mlp_minibatch_dual_ref")
        B, T = x[0].shape[:2]
        heads_first = [t.transpose(1, 2) for t in x]  # [B, H, T, ...] views
        weights = [p.to(self.sdt).unsqueeze(0).repeat(B, *([1] * p.dim())) for p in params]

        def run():
            ws = weights
            outs = []
            for i in range(0, T, K):
                o, ws = ref(*(t[:, :, i:i + K] for t in heads_first), *ln, ws)
                ws = [w.to(self.sdt) for w in ws]  # the state dtype after every mini-batch, as the module
                outs.append(o)
            return torch.cat(outs, 2)
        return run

    def bytes_moved(self, line, B, T) -> int:
        a = self.adt.itemsize
        inner = inner_of(line)
        state = 4 if line == "fla" else self.sdt.itemsize
        lr = a if line == "fla" else 4
        per_token = self.H * (4 * self.f * a + lr)
        return B * T * per_token + 2 * B * self.H * inner_net_elements(inner, self.f) * state

    def measure(self, line, B, T, x, config=None) -> dict:
        import triton.testing
        row = {"line": line, "B": B, "T": T, "config": config, "ms": math.nan}
        inner = inner_of(line)
        if line.startswith("ref_") and T > self.args.ref_max_seqlen:
            return row
        try:
            fn = self.runner(line, B, T, x, config)
            fn()
            torch.cuda.synchronize()
            ms = triton.testing.do_bench(fn, warmup=self.args.warmup, rep=self.args.rep, return_mode="median")
            out = fn()
            out = out[0] if isinstance(out, tuple) else out
            if not torch.isfinite(out).all():
                self.notes.append(f"{line} B={B} T={T} {config}: non-finite outputs")
            row["ms"] = ms
        except torch.cuda.OutOfMemoryError:
            self.notes.append(f"{line} B={B} T={T}: out of memory")
        except Exception as e:  # a missing or failing line must not lose the others' numbers
            self.notes.append(f"{line} B={B} T={T} {config}: {type(e).__name__}: {first_line(e)}")
        torch.cuda.empty_cache()
        s = row["ms"] / 1e3
        row.update(tok_per_s=B * T / s, tflops=B * T * self.H * flops_per_token_head(inner, self.f) / s / 1e12,
                   gb_per_s=self.bytes_moved(line, B, T) / s / 1e9)
        print(f"  {line:<10} B={B:<3} T={T:<6} {'' if config is None else config} {row['ms']:9.3f} ms "
              f"{row['tok_per_s'] / 1e6:8.2f} Mtok/s", file=sys.stderr, flush=True)
        return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("prefill_benchmark: no CUDA GPU found; the timings need one.", file=sys.stderr)
        return 2
    bench = PrefillBench(args)
    if isinstance(bench.fla, Exception) and "fla" in args.lines:
        bench.notes.append(f"fla: not importable ({type(bench.fla).__name__}: {first_line(bench.fla)})")
    rows = []
    if args.sweep:
        B, T = args.batch[0], args.seqlen[0]
        x = bench.inputs(B, T)
        for line in [n for n in ("mlp_1", "mlp_2") if n in args.lines]:
            rows += [bench.measure(line, B, T, x, cfg) for cfg in SWEEP[line]]
        if "fla" in args.lines:
            rows.append(bench.measure("fla", B, T, x))
    else:
        for B in args.batch:
            for T in args.seqlen:
                if B * T > args.max_tokens:
                    bench.notes.append(f"B={B} T={T}: skipped (B*T > --max_tokens {args.max_tokens})")
                    continue
                x = bench.inputs(B, T)
                rows += [bench.measure(line, B, T, x) for line in args.lines]
                del x
                torch.cuda.empty_cache()

    print(f"\nTTT prefill, one layer: H={args.heads}, f={args.head_dim}, {args.state_dtype} state, "
          f"{args.dtype} activations, do_bench median\n")
    cols = ["line", "B", "T", ("ms", "ms"), ("tok_per_s", "tokens/s"), ("tflops", "TFLOP/s"), ("gb_per_s", "GB/s")]
    if args.sweep:
        cols.insert(3, "config")
    print(markdown_table(rows, cols))
    ms = {(r["line"], r["B"], r["T"]): r["ms"] for r in rows if r["config"] is None}
    for (line, B, T), t in ms.items():
        if line in ("mlp_2", "mlp_2_cuda") and ("mlp_1", B, T) in ms:
            print(f"B={B} T={T}: {line} / mlp_1 = {t / ms[('mlp_1', B, T)]:.2f}", end="")
            if ("fla", B, T) in ms:
                print(f", mlp_1 / fla chunk_ttt_linear = {ms[('mlp_1', B, T)] / ms[('fla', B, T)]:.2f}", end="")
            print()
    for n in bench.notes:
        print("note:", n)
    if args.json:
        name = f"prefill_{'sweep_' if args.sweep else ''}h{args.heads}_f{args.head_dim}_{args.state_dtype}"
        path = write_results(name, rows, extra={"settings": vars(args), "notes": bench.notes})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
