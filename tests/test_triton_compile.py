"""Every Triton kernel the models launch compiles for sm_90 (the H100), on any machine.

The interpreter that runs the other CPU tests never calls Triton's compiler, which is stricter
(the types of loop-carried values, layouts, constexpr-only arguments) and places the shared
memory. Here the models step and prefill on the CPU with Triton's launcher replaced by a
compile-only stand-in, in a subprocess without ``TRITON_INTERPRET`` (set for this process
before triton was imported); each distinct specialization is compiled once, and its shared
memory is held to what one H100 CTA may have. Every launch must ask for FMA contraction itself
(``triton_utils.FP_FUSION``).
"""

import os
import subprocess
import sys

import torch

H100_SMEM_PER_CTA = 227 * 1024
TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
         torch.int64: "i64", torch.int32: "i32", torch.bool: "i1"}
# (inner net, state dtype, config overrides): every Triton inner net and state dtype at f = 64,
# and the dual kernels at f = 128 and f = 96 (a 128-wide block, masked)
TTT_CASES = [(net, state, {}) for net in ("mlp_1_dual_triton", "mlp_2_dual_triton", "mlp_1_primal_triton",
                                          "mlp_2_primal_triton")
             for state in (torch.float16, torch.bfloat16, torch.float32)]
TTT_CASES += [(net, torch.float16, {"hidden_size": 2 * f, "intermediate_size": 4 * f})
              for net in ("mlp_1_dual_triton", "mlp_2_dual_triton") for f in (96, 128)]


def _arg_type(v) -> str:
    if isinstance(v, torch.Tensor):
        return "*" + TYPES[v.dtype]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -2**31 <= v < 2**31 else "i64"
    if isinstance(v, float):
        return "fp32"
    raise TypeError(f"no Triton type for an argument of type {type(v).__name__}")


def compile_all() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from ttt_kernels.models import MambaLM, TTTLM

    seen = set()

    def compile_only(self, *args, grid, warmup, **kwargs):
        opts = {k: kwargs.pop(k) for k in list(kwargs) if k not in self.arg_names}  # launch options
        # asked for, not left to Triton's default (which turns FMA contraction off in 3.10)
        assert opts.get("enable_fp_fusion") is True, (self.fn.__name__, opts)
        bound = {**dict(zip(self.arg_names, args)), **kwargs}
        sig, consts = {}, {}
        for i, p in enumerate(self.params):
            v = bound.get(p.name, p.default)
            if p.is_constexpr or v is None:
                sig[p.name], consts[(i,)] = "constexpr", v
            else:
                sig[p.name] = _arg_type(v)
        key = (self.fn.__name__, repr(sig), repr(consts), repr(opts))
        if key in seen:
            return
        seen.add(key)
        c = triton.compile(ASTSource(fn=self, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                           options=opts)
        print(f"{self.fn.__name__} shared={c.metadata.shared} {opts}", flush=True)
        assert c.metadata.shared <= H100_SMEM_PER_CTA, (self.fn.__name__, c.metadata.shared, consts, opts)

    JITFunction.run = compile_only
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        runs = [(TTTLM.from_name("ttt-tiny", dtype=torch.float16, inner_net=net, **over), state)
                for net, state, over in TTT_CASES]
        runs.append((MambaLM.from_name("mamba-tiny", dtype=torch.float16), None))
        for model, state in runs:
            cache = model.allocate_inference_cache(2, state_dtype=state)
            ids = torch.randint(0, 100, (2, 21), generator=gen)
            model.prefill(ids, cache)
            model.step(ids[:, 0], cache)
    print(f"compiled {len(seen)} specializations")


def test_every_triton_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    names = {line.split()[0] for line in r.stdout.splitlines()[:-1]}
    # every kernel of the package: a launcher that stopped reaching Triton would drop one
    assert names == {"ttt_linear_decode_dual_kernel", "ttt_mlp_decode_dual_kernel", "ttt_linear_decode_primal_kernel",
                     "ttt_mlp_decode_primal_kernel", "ttt_linear_prefill_kernel", "ttt_mlp_prefill_kernel",
                     "_ttt_step_inputs_kernel", "_pre_conv_step_kernel", "_conv_prefill_kernel", "_add_rms_norm_kernel",
                     "_gated_layer_norm_kernel", "_silu_mul_kernel", "_conv_step_kernel", "_ssm_step_kernel"}, names


if __name__ == "__main__":
    compile_all()
