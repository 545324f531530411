"""Static view of the fused kernels as an H100 runs them: both Triton kernels built ahead of time for sm_90
(no GPU needed: Triton ships ptxas and cuobjdump) and their machine code (SASS) read.

    python benchmarks/kernel_sass.py                          # stages 1 and the default, block 128
    python benchmarks/kernel_sass.py --stages 1,2,3,4 --blocks 64,128,256 --out /tmp/k.json

Per kernel (forward; backward with the forcing gradient) and launch config (basins per program, pipeline
stages of the time loop, layout): registers per thread, local-memory spills, shared memory, and the SASS of
the time loop (the body between the loop's backward branch and its target), i.e. per simulated day:
instructions, global loads (``LDG`` = the thread waits for memory on the day it uses the value; ``LDGSTS`` =
``cp.async`` into shared memory issued ``stages - 1`` days ahead by Triton's software pipeliner), stores and
special-function ops (``MUFU``: exp2, reciprocal) and block barriers (``BAR``: the pipeliner's per-day
synchronisation of a program's warps). The three loads of the initial storages ``state0 [3, B]`` happen once per
basin before the loop and are not part of it. The launchers give each basin one thread, so every load or store
instruction moves one float32 of one basin and 4 bytes times their count is the traffic per basin-day; with
it, the bandwidth ceiling on an H100 SXM (3.35 TB/s HBM3). Layout ``time_major`` specialises the basin
stride to 1 as Triton does at run time for time-major planes; ``batch_first`` keeps every stride generic (the
[B, T, C] views the model passes).

This is a static reading, not a timing: the throughput figures come from bench_physics.py on a GPU.
Writes benchmarks/results/kernel_sm90_static.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from provenance import provenance  # noqa: E402

H100_SXM_HBM_BYTES_PER_S = 3.35e12  # NVIDIA H100 SXM5 datasheet
H100_SMS = 132
BYTES_PER_ACCESS = 4  # one float32 of one basin per thread and instruction
_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def cuobjdump() -> Path:
    """The cuobjdump that ships with Triton's NVIDIA backend."""
    import triton.backends.nvidia as nv

    path = Path(nv.__file__).parent / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"no cuobjdump in this triton install ({path})")
    return path


def build(kernel_name: str, block: int, stages: int, layout: str = "time_major") -> tuple[bytes, int]:
    """sm_90 cubin of ``fused_kernels.<kernel_name>`` and its shared memory in bytes, with the warps the
    launchers use (one thread per basin)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from rootzone.physics import fused_kernels as fk

    kernel = getattr(fk, kernel_name)
    consts: dict[str, object] = {"T_S": 0.0, "TAU": 1.0, "EPS": 1e-4, "BLOCK": block, "STAGES": stages}
    if "NEED_FORCING" in kernel.arg_names:
        consts["NEED_FORCING"] = True
    if layout == "time_major":  # basin strides are 1: Triton specialises integer arguments equal to 1
        consts.update({n: 1 for n in kernel.arg_names if n.startswith("s") and n.endswith("_b")})
    elif layout != "batch_first":
        raise ValueError(f"layout must be time_major or batch_first, got {layout!r}")
    sig = {n: ("*fp32" if n.endswith("_ptr") else "constexpr" if n in consts else "i32") for n in kernel.arg_names}
    src = ASTSource(kernel, sig, constexprs={(kernel.arg_names.index(n),): v for n, v in consts.items()})
    compiled = compile(src, target=GPUTarget("cuda", 90, 32),
                       options={"enable_fp_fusion": False, "num_warps": fk.warps_for(block)})
    return compiled.asm["cubin"], int(compiled.metadata.shared)


def read_cubin(cubin: bytes) -> tuple[dict[str, int], list[tuple[int, str, str]]]:
    """Resource usage (REG, LOCAL, SHARED, ...) and the executable SASS as (address, opcode, operands)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([cuobjdump(), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([cuobjdump(), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    usage = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", res)}
    code = [(int(a, 16), op, args.strip()) for a, pred, op, args in _SASS_LINE.findall(sass)
            if pred.strip() != "@!PT"]  # @!PT: never executed (padding)
    return usage, code


def time_loop(code: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """Instructions of the largest loop: from a backward branch's target to the branch itself."""
    best: list[tuple[int, str, str]] = []
    for addr, op, args in code:
        target = re.search(r"0x([0-9a-f]+)", args)
        if op == "BRA" and target and int(target.group(1), 16) < addr:
            body = [c for c in code if int(target.group(1), 16) <= c[0] <= addr]
            best = max(best, body, key=len)
    if not best:
        raise ValueError("no loop found in the SASS")
    return best


def analyse(kernel_name: str, block: int, stages: int, layout: str) -> dict:
    """Registers, spills, shared memory and the per-day instruction mix of one kernel build."""
    from rootzone.physics.fused_kernels import warps_for

    cubin, shared = build(kernel_name, block, stages, layout)
    usage, code = read_cubin(cubin)
    loop = time_loop(code)
    ops = Counter(op.split(".")[0] for _, op, _ in loop)
    loads = ops["LDG"] + ops["LDGSTS"]
    warps = warps_for(block)
    basins_per_thread = block / (32 * warps)
    return {"kernel": kernel_name.strip("_").replace("_kernel", ""), "block": block, "stages": stages,
            "layout": layout, "warps": warps, "registers": usage.get("REG"),
            "spill_bytes": usage.get("LOCAL", 0),
            "shared_bytes": shared, "per_day": {"instructions": len(loop), "LDG": ops["LDG"],
                                                 "LDGSTS": ops["LDGSTS"], "shared_loads": ops["LDS"] + ops["LDSM"],
                                                 "STG": ops["STG"], "MUFU": ops["MUFU"], "BAR": ops["BAR"]},
            "bytes_per_basin_day": BYTES_PER_ACCESS * (loads + ops["STG"]) / basins_per_thread}


def occupancy(block: int, sizes=(256, 2048, 16384)) -> list[dict]:
    """Programs per launch and the share of the H100's SMs that hold one, at each number of basins."""
    from rootzone.physics.fused_kernels import warps_for

    return [{"B": b, "programs": -(-b // block), "warps": -(-b // block) * warps_for(block),
             "sm_share": min(1.0, -(-b // block) / H100_SMS)} for b in sizes]


def main(argv: list[str] | None = None) -> None:
    from rootzone.physics import fused_kernels as fk

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default=f"1,{fk.NUM_STAGES}", help="comma list of pipeline stages")
    ap.add_argument("--blocks", default=str(fk.BLOCK_B), help="comma list of basins per program")
    ap.add_argument("--layouts", default="time_major,batch_first")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kernel_sm90_static.json"))
    args = ap.parse_args(argv)
    rows = []
    for layout in args.layouts.split(","):
        for block in (int(b) for b in args.blocks.split(",")):
            for stages in (int(s) for s in args.stages.split(",")):
                for name in ("_forward_kernel", "_backward_kernel"):
                    rows.append(analyse(name, block, stages, layout))
                    r = rows[-1]
                    print(f"{r['kernel']:8s} {layout:11s} block {block:4d} stages {stages}: {r['registers']} regs, "
                          f"{r['spill_bytes']} B spilled, {r['shared_bytes']} B shared; per day "
                          f"{json.dumps(r['per_day'])}, {r['bytes_per_basin_day']} B/basin-day", flush=True)
    default = [r for r in rows if r["stages"] == fk.NUM_STAGES and r["block"] == fk.BLOCK_B
               and r["layout"] == "time_major"]
    traffic = sum(r["bytes_per_basin_day"] for r in default) if len(default) == 2 else None
    import triton

    result = {"benchmark": "fused kernels, static sm_90 build (no GPU)", **provenance(), "triton": triton.__version__,
              "target": "sm_90 (H100)", "default": {"block": fk.BLOCK_B, "stages": fk.NUM_STAGES},
              "builds": rows, "occupancy_at_default_block": occupancy(fk.BLOCK_B),
              "forward_backward_bytes_per_basin_day": traffic,
              "h100_sxm_bandwidth_ceiling_basin_days_per_s": traffic and H100_SXM_HBM_BYTES_PER_S / traffic}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if traffic:
        print(f"forward+backward: {traffic} B per basin-day -> H100 bandwidth ceiling "
              f"{H100_SXM_HBM_BYTES_PER_S / traffic:.3g} basin-days/s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
