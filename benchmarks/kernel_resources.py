"""Registers, stack frame (spills) and shared memory of every Triton kernel as a model launches it,
compiled for sm_90 on this machine: no GPU needed, and no kernel runs.

    python benchmarks/kernel_resources.py                             # ttt-profile (one ttt-1b layer) + mamba-1.4b
    python benchmarks/kernel_resources.py --model-name ttt-profile --inner_net mlp_1_dual_triton --state_dtype fp32
    python benchmarks/kernel_resources.py --json                      # benchmarks/results/kernel_resources.json

One layer of each model steps and prefills on CPU tensors while ``utils.offline_compile`` turns
each Triton launch into a compile; ``cuobjdump -res-usage`` (shipped with Triton) reads the
binaries. These kernels keep no arrays in local memory, so a stack frame is register spills:
a kernel that ptxas could not fit shows hundreds of bytes, or 32 registers and kilobytes.
What Triton's compiler makes of a kernel changes between versions: read the table under the
version a GPU runs (the figures in README were taken with Triton 3.6).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # the compiler is the point: before triton is imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402

from ttt_kernels.models import MambaLM, TTTLM, get_config  # noqa: E402
from ttt_kernels.models.config import TTTConfig  # noqa: E402
from ttt_kernels.utils.benchmarking import as_dtype, markdown_table, write_results  # noqa: E402
from ttt_kernels.utils.offline_compile import compile_launches, resource_usage  # noqa: E402

TRITON_INNER_NETS = ["mlp_2_dual_triton", "mlp_1_dual_triton", "mlp_2_primal_triton", "mlp_1_primal_triton"]
# constexprs that name a kernel's shape and tiling (the rest follow from them or are flags)
SHAPE_KEYS = ("F", "BF", "FH", "BH", "K", "BLOCK", "BLOCK_B", "BLOCK_D", "N", "R", "RP", "HALF", "BT", "KC", "KP",
              "PERIOD", "ON_CHIP", "DOT_DTYPE")


def one_layer(name: str, inner_net: str | None, dtype: torch.dtype):
    """The named model cut to one layer and a small vocabulary: the kernels are those of every layer."""
    if isinstance(get_config(name), TTTConfig):
        return TTTLM.from_name(name, dtype=dtype, inner_net=inner_net, num_hidden_layers=1, vocab_size=512)
    return MambaLM.from_name(name, dtype=dtype, n_layer=1, vocab_size=512)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-name", nargs="+", default=["ttt-profile", "mamba-1.4b"])
    p.add_argument("--inner_net", nargs="+", default=TRITON_INNER_NETS, choices=TRITON_INNER_NETS)
    p.add_argument("--state_dtype", nargs="+", default=["fp16"], choices=["fp16", "bf16", "fp32"])
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help="activations")
    p.add_argument("--promptlen", type=int, default=21, help="the prefill that reaches the prefill kernels")
    p.add_argument("--json", action="store_true")
    p.add_argument("--name", default="kernel_resources")
    p.add_argument("--results_dir", default=None)
    args = p.parse_args(argv)

    rows, where = [], {}

    def report(name, constexprs, options, compiled):
        shape = [f"{k}={getattr(v, 'name', v)}" for k, v in constexprs.items() if k in SHAPE_KEYS]
        flags = [k for k, v in constexprs.items() if v is True and k not in SHAPE_KEYS]  # HAS_RES, ROTARY, ...
        rows.append(dict(model=where["model"], kernel=name, shape=" ".join(shape + flags),
                         warps=options.get("num_warps", 4), stages=options.get("num_stages", ""),
                         reg_cap=options.get("maxnreg", ""), **resource_usage(compiled.asm["cubin"]),
                         shared_bytes=compiled.metadata.shared))

    ids = torch.randint(0, 512, (2, args.promptlen), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), compile_launches(report):
        for model_name in args.model_name:
            ttt = isinstance(get_config(model_name), TTTConfig)
            for net in args.inner_net if ttt else [None]:
                for state in args.state_dtype if ttt else ["fp32"]:
                    where["model"] = f"{model_name} {net} {state}" if ttt else f"{model_name} {state}"
                    model = one_layer(model_name, net, as_dtype(args.dtype))
                    cache = model.allocate_inference_cache(2, state_dtype=as_dtype(state))
                    model.prefill(ids, cache)
                    model.step(ids[:, 0], cache)
    if not rows:
        sys.exit("no Triton kernel was compiled: is Triton's interpreter on (TRITON_INTERPRET)?")
    columns = ["model", "kernel", "shape", "warps", "stages", "reg_cap", "registers", "stack_bytes", "shared_bytes"]
    print(f"Triton {triton.__version__}, sm_90, activations {args.dtype}; "
          "each specialization once, in the first model that launched it")
    print(markdown_table(rows, columns))
    if args.json:
        path = write_results(args.name, rows, extra={"settings": vars(args), "target": "sm_90"},
                             results_dir=args.results_dir)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
