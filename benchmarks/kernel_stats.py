"""Read the generated kernels as the hardware will, without a GPU: per kernel of every example,
the registers, spills and shared memory that ptxas reports for sm_90, and for every GEMM its main
loop's ratio of FMA to shared-memory load instructions in the SASS; at --precision tf32 or bf16,
the tensor-core instructions (HMMA) each product kernel issues instead.

    python benchmarks/kernel_stats.py [-O 2] [--example mlp ...] [--arch sm_90] [--precision tf32]

Needs nvcc (CUDA 12/13, e.g. /usr/local/bin/nvcc) and cuobjdump (the pip package
nvidia-cuda-cuobjdump puts it under site-packages/nvidia/cu13/bin). The FMA:LDS ratio bounds how
much of the FMA pipes a GEMM can keep busy: the 16x16-tile kernel that one output per thread
computed had 0.5; register blocking (8x8 outputs per thread, float4 shared loads) gives 16.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("mlp", "logreg", "xor", "deep_mlp", "lenet", "inception")


def tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    try:
        import nvidia
        for base in nvidia.__path__:
            for p in Path(base).glob(f"*/bin/{name}"):
                return str(p)
    except ImportError:
        pass
    return None


def ptxas_info(log: str) -> dict[str, dict]:
    """kernel -> {registers, spill_stores, spill_loads, smem} from `-Xptxas -v` output."""
    out, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = out.setdefault(m.group(1), {"registers": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["spill_stores"], current["spill_loads"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(s.group(1)) if s else 0
    return out


PRODUCT_TEMPLATES = ("matmul.cu.j2", "matmul_mma.cu.j2")   # CUDA cores (fp32), tensor cores (tf32, bf16)


def sass_counts(cuobjdump: str, cubin: Path, kernel: str) -> tuple[int, int, int]:
    """(FFMA, LDS, HMMA) instructions in a kernel's SASS (HMMA: the tensor cores' products, of
    any shape and type, e.g. HMMA.1688.F32.TF32 or HMMA.16816.F32.BF16)."""
    env = dict(os.environ)
    nvdisasm = tool("nvdisasm")
    if nvdisasm:  # cuobjdump -sass runs nvdisasm; pip puts both in site-packages/nvidia/cu13/bin
        env["PATH"] = str(Path(nvdisasm).parent) + os.pathsep + env.get("PATH", "")
    r = subprocess.run([cuobjdump, "-sass", "-fun", kernel, str(cubin)], capture_output=True, text=True, env=env)
    if r.returncode or "Function" not in r.stdout:
        raise RuntimeError(f"cuobjdump could not disassemble {kernel}: {(r.stderr or r.stdout).strip()[-300:]} "
                           "(pip install nvidia-cuda-nvdisasm)")
    return (len(re.findall(r"\bFFMA\b", r.stdout)), len(re.findall(r"\bLDS(\.\w+)*\b", r.stdout)),
            len(re.findall(r"\bHMMA\b", r.stdout)))


def stats(example: str, level: int, arch: str, nvcc: str, cuobjdump: str | None, precision: str = "fp32") -> list[dict]:
    import dlc
    from dlc.codegen import generate
    mod = generate(dlc.build(ROOT / "examples" / f"{example}.dln", opt_level=level, precision=precision).graph)
    with tempfile.TemporaryDirectory() as tmp:
        cu, cubin = Path(tmp) / "m.cu", Path(tmp) / "m.cubin"
        cu.write_text(mod.source)
        r = subprocess.run([nvcc, f"-arch={arch}", "-cubin", "-Xptxas", "-v", "-o", str(cubin), str(cu)],
                           capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"nvcc failed on {example}:\n{r.stderr[-2000:]}")
        info = ptxas_info(r.stderr + r.stdout)
        rows = []
        for k in mod.kernels:
            row = {"kernel": k.name, "template": k.template, **info.get(k.name, {})}
            if k.template in PRODUCT_TEMPLATES and cuobjdump:
                row["ffma"], row["lds"], row["hmma"] = sass_counts(cuobjdump, cubin, k.name)
            rows.append(row)
        return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-O", type=int, default=2)
    ap.add_argument("--example", nargs="*", default=list(EXAMPLES))
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"))
    args = ap.parse_args(argv)
    nvcc, cuobjdump = tool("nvcc"), tool("cuobjdump")
    if not nvcc:
        print("kernel_stats: nvcc not found (CUDA toolkit needed to read kernels as ptxas does)", file=sys.stderr)
        return 2
    worst_ratio, spills, products, without_hmma = None, 0, 0, []
    for ex in args.example:
        rows = stats(ex, args.O, args.arch, nvcc, cuobjdump, args.precision)
        print(f"\n{ex} (-O{args.O}, {args.arch}, {args.precision}): {len(rows)} kernels")
        print(f"  {'kernel':<40} {'regs':>4} {'spill B':>7} {'smem B':>6} {'FFMA':>5} {'LDS':>4} {'FMA/LDS':>7} {'HMMA':>5}")
        for r in rows:
            ratio = ""
            if r["template"] == "matmul.cu.j2" and "ffma" in r:
                q = r["ffma"] / max(1, r["lds"])
                ratio = f"{q:.1f}"
                worst_ratio = q if worst_ratio is None else min(worst_ratio, q)
            if r["template"] == "matmul_mma.cu.j2":
                products += 1
                if not r.get("hmma"):
                    without_hmma.append(r["kernel"])
            spills += r.get("spill_stores", 0) + r.get("spill_loads", 0)
            print(f"  {r['kernel'][:40]:<40} {r.get('registers', '?'):>4} "
                  f"{r.get('spill_stores', 0) + r.get('spill_loads', 0):>7} {r.get('smem', 0):>6} "
                  f"{r.get('ffma', ''):>5} {r.get('lds', ''):>4} {ratio:>7} {r.get('hmma', ''):>5}")
    if args.precision == "fp32":
        print(f"\nGEMM FMA:LDS, lowest over all GEMM kernels: "
              f"{'n/a (no cuobjdump)' if worst_ratio is None else f'{worst_ratio:.1f}'} (goal >= 4); ", end="")
    else:
        print(f"\ntensor-core product kernels: {products}, of which without HMMA in the SASS: "
              f"{'n/a (no cuobjdump)' if cuobjdump is None else len(without_hmma)} (goal 0)"
              f"{': ' + ', '.join(without_hmma) if without_hmma and cuobjdump else ''}; ", end="")
    print(f"spilled bytes over all kernels: {spills} (goal 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
