"""Host copy of the CUDA sources for the SIMT emulator (see emu_core.h).

The inline-PTX wrappers of ttt_decode_dual.cuh are removed (emu_ptx.h implements them
from the PTX ISA's fragment layouts) and the two CUDA-only constructs of the kernels,
dynamic shared memory and the <<<>>> launch, are rewritten; everything else compiles
as it is with a host C++ compiler.
"""

import re
from pathlib import Path

PTX_WRAPPERS = ["uint32_t smem_u32(", "void ldsm4(uint32_t (&r)[4], uint32_t addr)",
                "void ldsm4_t(uint32_t (&r)[4], uint32_t addr)", "void stsm4(",
                "void cp_async16(", "void cp_async_commit(",
                "void cp_async_wait(", "uint4 ld_nc16(", "uint32_t movt(", "void mma1(__half,",
                "void mma1(__nv_bfloat16,", "float tanh_approx("]


def _drop_function(src: str, signature: str) -> str:
    """``src`` without the definition containing ``signature`` (and its template line)."""
    i = src.index(signature)
    start = src.rindex("\n", 0, i) + 1
    prev = src.rindex("\n", 0, start - 1) + 1
    if src[prev:start].startswith("template"):
        start = prev
    j, depth = src.index("{", i), 0
    while True:
        depth += {"{": 1, "}": -1}.get(src[j], 0)
        if depth == 0:
            return src[:start] + src[j + 1:]
        j += 1


def transform(csrc: Path, dst: Path) -> list[Path]:
    """Writes the host copies of ``csrc``'s sources into ``dst``; returns the .cu files."""
    dst.mkdir(parents=True, exist_ok=True)
    units = []
    for f in sorted(csrc.iterdir()):
        if f.suffix not in (".cu", ".cuh", ".h"):
            continue
        s = f.read_text()
        if f.name == "ttt_decode_dual.cuh":
            for sig in PTX_WRAPPERS:
                s = _drop_function(s, sig)
        s = s.replace("extern __shared__ __align__(128) char smem[];", "char* smem = ttt_emu::smem_base();")
        s = re.sub(r"(\w+)<<<(.*?)>>>\((.*?)\);", r"emu_chevron(\1, \3, \2);", s)
        if "asm(" in s or "asm volatile" in s:
            raise ValueError(f"{f.name}: inline PTX outside the emulated wrappers")
        (dst / f.name).write_text(s)
        if f.suffix == ".cu":
            units.append(dst / f.name)
    return units
