"""Parity of a fused TTT decode path with the PyTorch reference path over a long generation.

    python benchmarks/parity.py                         # ttt-1b, mlp_2_dual_triton vs mlp_2_dual, B=32, 512 steps, fp16
    python benchmarks/parity.py --inner_net mlp_2_dual_triton mlp_2_primal_triton --json
    python benchmarks/parity.py --device cpu --model-name ttt-tiny --batch 2 --genlen 8 --inner_net mlp_2_primal

Both paths run the same weights in the same dtype from the same prompt. By default the
reference path decodes greedily and its tokens are fed to *both* paths (teacher forcing), so
every step compares the two next-token distributions on the same context and one flipped
token does not send the paths down different continuations; ``--free_run`` lets each path
feed back its own tokens instead. Per step, with ``p, p'`` the two softmaxes (fp32):

* total-variation distance ``0.5 * sum_v |p - p'|`` (mean and max over the batch);
* ``max_v |p - p'|`` averaged over the batch: what the original TTT kernels' README
  (test-time-training/ttt-lm-kernels, "Numerical Difference") plots as its TV distance;
* argmax disagreement: the fraction of sequences whose greedy token differs.

At the end, the relative difference of the TTT weights of the two states (all layers).
Both steps are replayed from CUDA graphs on the GPU (``--no_cg`` for eager).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-name", "--model_name", dest="model_name", default="ttt-1b")
    p.add_argument("--inner_net", nargs="+", default=["mlp_2_dual_triton"], help="path(s) to check")
    p.add_argument("--reference", default=None, help="reference path (default: mlp_1_dual / mlp_2_dual, by family)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--state_dtype", choices=["fp16", "bf16", "fp32"], default=None)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--promptlen", type=int, default=1)
    p.add_argument("--genlen", type=int, default=512)
    p.add_argument("--no_cg", action="store_true")
    p.add_argument("--free_run", action="store_true", help="each path feeds back its own greedy tokens")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=64, help="print a row every this many steps")
    p.add_argument("--json", action="store_true", help="write benchmarks/results/<name>.json")
    p.add_argument("--name", default=None)
    return p.parse_args(argv)


def compare_paths(model, ref_name, name, args, device, state_dtype):
    """Per-step TV distance / argmax disagreement of ``name`` against ``ref_name`` (teacher-forced)."""
    import torch
    from ttt_kernels.utils.generation import DecodeStep

    cg = not args.no_cg and device.type == "cuda"
    g = torch.Generator(device=device).manual_seed(args.seed)
    prompt = torch.randint(0, model.config.vocab_size, (args.batch, args.promptlen), generator=g, device=device)
    runs = {}
    for n in (ref_name, name):
        # a captured graph keeps the op it was captured with, whatever the model is switched to after
        model.set_inner_net(n)
        cache = model.allocate_inference_cache(args.batch, state_dtype=state_dtype)
        stepper = DecodeStep(model, cache, cg=cg)
        runs[n] = (cache, stepper, model.prefill(prompt, cache))

    def step(n):
        if not cg:
            model.set_inner_net(n)  # eager: the op is looked up at call time
        return runs[n][1]()

    rows = []
    (ref_cache, ref_step, ref_logits), (cache, x_step, logits) = runs[ref_name], runs[name]
    ref_step.ids.copy_(ref_logits.argmax(-1))
    for i in range(args.genlen):
        p, q = torch.softmax(ref_logits.float(), -1), torch.softmax(logits.float(), -1)
        diff = (p - q).abs()
        tv = 0.5 * diff.sum(-1)
        disagree = (ref_logits.argmax(-1) != logits.argmax(-1)).float()
        rows.append({"step": i, "tv_mean": tv.mean().item(), "tv_max": tv.max().item(),
                     "max_abs_dp": diff.amax(-1).mean().item(), "argmax_disagree": disagree.mean().item()})
        if i + 1 == args.genlen:
            break
        if args.free_run:
            x_step.ids.copy_(logits.argmax(-1))
        else:
            x_step.ids.copy_(ref_step.ids)  # the reference's token goes into both
        ref_logits = step(ref_name).clone()
        logits = step(name).clone()

    num, den = 0.0, 0.0
    for c, rc in zip(cache.layers, ref_cache.layers):
        for w, rw in zip(c.mixer.ttt.weights, rc.mixer.ttt.weights):
            num += (w.double() - rw.double()).pow(2).sum().item()
            den += rw.double().pow(2).sum().item()
    return rows, (num / den) ** 0.5


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("parity: no CUDA GPU found; pass --device cpu (with a small config) for a functional check",
              file=sys.stderr)
        return 2
    from ttt_kernels.models.ttt_lm import TTTLM
    from ttt_kernels.modules.ttt_layer import get_inner_net
    from ttt_kernels.utils.benchmarking import as_dtype, markdown_table, write_results

    device = torch.device(args.device)
    dtype = as_dtype(args.dtype)
    state_dtype = as_dtype(args.state_dtype or args.dtype)
    all_rows, summary, model = [], [], None
    for name in args.inner_net:
        family = get_inner_net(name).inner
        ref_name = args.reference or f"{family}_dual"
        if model is None or model.layers[0].mixer.inner != family:
            model = None
            model = TTTLM.from_name(args.model_name, device=device, dtype=dtype, inner_net=ref_name)
        rows, state_rel = compare_paths(model, ref_name, name, args, device, state_dtype)
        for r in rows:
            r["path"] = name
        all_rows += rows
        n = len(rows)
        s = {"path": name, "reference": ref_name, "steps": n,
             "tv_mean": sum(r["tv_mean"] for r in rows) / n, "tv_max": max(r["tv_max"] for r in rows),
             "max_abs_dp_mean": sum(r["max_abs_dp"] for r in rows) / n,
             "argmax_disagree_mean": sum(r["argmax_disagree"] for r in rows) / n,
             "steps_with_disagreement": sum(r["argmax_disagree"] > 0 for r in rows),
             "final_state_rel_diff": state_rel}
        summary.append(s)
        shown = [r for r in rows if r["step"] % args.every == 0 or r["step"] == n - 1]
        print(f"\n{name} vs {ref_name}: {args.model_name}, B={args.batch}, promptlen={args.promptlen}, "
              f"{n} steps, {args.dtype} (state {args.state_dtype or args.dtype}), "
              + ("free-running" if args.free_run else "teacher-forced"))
        print(markdown_table(shown, [("step", "step"), ("tv_mean", "TV mean"), ("tv_max", "TV max"),
                                     ("max_abs_dp", "max abs dp (mean)"), ("argmax_disagree", "argmax disagreement")],
                             fmt=".3g"))
    print()
    print(markdown_table(summary, [("path", "path"), ("reference", "reference"), ("tv_mean", "TV mean"),
                                   ("tv_max", "TV max"), ("max_abs_dp_mean", "max abs dp (mean)"),
                                   ("argmax_disagree_mean", "argmax disagreement"),
                                   ("steps_with_disagreement", "steps with any"),
                                   ("final_state_rel_diff", "final TTT-state rel. diff")], fmt=".3g"))
    if device.type == "cpu":
        print("(CPU: a functional check; the figures that count come from the GPU)")
    if args.json:
        name = args.name or f"parity_{args.model_name}_{args.dtype}_b{args.batch}"
        print(f"results: {write_results(name, all_rows, extra={'settings': vars(args), 'summary': summary})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
