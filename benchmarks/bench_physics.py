"""Physics throughput benchmark: basin-days per second of the bucket recursion (eager, compiled, fused),
forward and forward+backward, and of one training step of the hybrid (LSTM + physics) against the LSTM alone.

    python benchmarks/bench_physics.py                   # B in {256, 2048, 16384} x T in {365, 730, 3650}
    python benchmarks/bench_physics.py --quick           # small sizes (CPU-friendly)
    python benchmarks/bench_physics.py --impl fused,eager --out /tmp/p.json
    python benchmarks/bench_physics.py --quick --interpret   # fused Triton kernels under the CPU interpreter

Implementations (``--impl``): ``eager`` (equations.run_buckets), ``compiled`` (torch.compile of the daily
step, dispatch.run_physics) and ``fused`` (the rootzone::buckets op). The fused rows say what actually ran:
``fused`` = Triton on CUDA with batch-first [B, T, C] inputs read through strides, ``fused-tm`` = the same
with time-major planes (coalesced loads; measures the layout question), ``fused[cpu-op]`` = the op's CPU
implementation (reference forward + hand-written adjoint, not Triton), ``fused[interpreter]`` = the Triton
kernels under TRITON_INTERPRET=1 (slow; correctness, not speed). Peak memory is CUDA's max allocated.

The training step: nn.LSTM (hidden 128) over [forcing, 12 static attributes], a linear head, a sigmoid into
config.DEFAULT_PARAM_RANGES, the buckets, an MSE loss on q, backward and an Adam step; against the same LSTM
and head with the loss on the head output. The LSTM runs in fp32 or under bf16 autocast; the physics is fp32.

The spin-up pass (``spinup_share`` rows): what training's no-grad whole-record pass
(rootzone.evaluation.record_pass: the network over a record of ``--record-days`` days, the storages spun up by
cycling its first year, at most ``spinup_cycles`` = 10 cycles, then the physics over the record) costs as a
share of one epoch (one training step of ``--seq-len`` days, forward+backward+Adam, per ``batch`` basins), for
the same basins, with rootzone.model.HybridModel (hidden 128) and each physics implementation. With
``spinup_refresh`` = k the pass costs share / k of the training time.

Every run starts from given initial storages ``state0`` [3, B] (:func:`initial_storages`: fixed, plausible
values, as a spin-up would give; the spin-up itself is not timed), as the model runs them.

Before any fused row is timed, the fused op is checked at that size against the float64 eager reference on
fresh random inputs (from the legacy cold start, ``run_buckets_fused(forcing, params)``, whose two-argument
form tests/test_benchmarks.py swaps for a wrong op; the kernels read the initial storages from the same
``[3, B]`` input either way): values, and gradients under random cotangents, measured as the tests measure them
(rootzone.physics.verify: per channel against its own scale; targets 1e-5 and 1e-4), with the float32 eager
path's own error beside it. On CUDA the caching allocator is first filled with NaN, so an output element the
kernels never write shows up as NaN. The checks go into the JSON (``checks``) and a failed one makes the
script exit non-zero after writing it.

    python benchmarks/bench_physics.py --sizes 2048x730 --impl fused     # one size, fused only
    python benchmarks/bench_physics.py --sizes 2048x730 --impl fused --no-train --tune 2048x730,16384x730

``--tune`` sweeps the fused kernels' launch configs (basins per program x pipeline stages of the time loop,
fused_kernels.BLOCK_B / NUM_STAGES are the defaults) and checks each config's results against the default's.

GPU figures are PENDING: no GPU was lent to the session that wrote this file, so only CPU results
(benchmarks/results/physics_cpu_quick.json) exist. The H100 figures quoted in DESIGN §8 come from an earlier
prototype and are not reproduced by this script yet; do not cite them as results of this code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if "--interpret" in sys.argv:  # must precede the first import of triton kernels
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from provenance import git_state  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from rootzone.config import DEFAULT_PARAM_RANGES  # noqa: E402
from rootzone.physics import fused, verify  # noqa: E402
from rootzone.physics.dispatch import run_physics  # noqa: E402
from rootzone.physics.equations import PARAM_NAMES, run_buckets  # noqa: E402

FULL_B, FULL_T = (256, 2048, 16384), (365, 730, 3650)
QUICK_B, QUICK_T = (64, 256), (90, 365)
N_STATIC = 12


def make_inputs(b: int, t: int, device: torch.device, time_major: bool = False, seed: int = 0
                ) -> tuple[Tensor, Tensor]:
    """Synthetic forcing [B, T, 4] and params [B, T, 8] (physical units, float32); with ``time_major`` the
    memory is laid out as planes [C, T, B] and the returned tensors are [B, T, C] views of it."""
    g = torch.Generator().manual_seed(seed)
    forcing = torch.stack([torch.rand(b, t, generator=g) * 30 * (torch.rand(b, t, generator=g) < 0.4),
                           torch.rand(b, t, generator=g) * 40 - 15, torch.rand(b, t, generator=g) * 6,
                           torch.rand(b, t, generator=g) * 5], -1)
    low = torch.tensor([DEFAULT_PARAM_RANGES[n][0] for n in PARAM_NAMES])
    high = torch.tensor([DEFAULT_PARAM_RANGES[n][1] for n in PARAM_NAMES])
    params = low + (high - low) * torch.rand(b, t, 8, generator=g)
    if time_major:
        forcing = forcing.permute(2, 1, 0).contiguous().permute(2, 1, 0)
        params = params.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    return forcing.to(device), params.to(device)


def initial_storages(params: Tensor) -> Tensor:
    """Initial storages [3, B] (W, S, G in mm) for the timed runs: no snow, half the mean S_max, 100 mm of
    groundwater; detached, like the spun-up or stored states the model passes."""
    smax = params[..., 0].detach().mean(dim=1)
    return torch.stack([torch.zeros_like(smax), 0.5 * smax, torch.full_like(smax, 100.0)])


def poison_allocator(device: torch.device, nbytes: int) -> None:
    """Fill ``nbytes`` of CUDA's caching allocator with NaN and free it, so that the next allocations of the
    op reuse NaN memory: an element the kernels never write is then NaN instead of a plausible stale value."""
    if device.type == "cuda":
        torch.empty(max(nbytes // 4, 1), device=device).fill_(float("nan"))
        torch.cuda.synchronize(device)


def check_fused(b: int, t: int, device: torch.device, seed: int = 1) -> dict:
    """Errors (rootzone.physics.verify) of the fused op and of the float32 eager path against float64 eager,
    values and gradients, on fresh random inputs of size b x t (seed differs from the timing inputs')."""
    forcing, params = (x.double() for x in make_inputs(b, t, device, seed=seed))
    cotangents = verify.draw_cotangents(forcing, torch.Generator(device=device).manual_seed(seed))
    ref = verify.reference(forcing, params, cotangents)
    result = {"B": b, "T": t}
    for name, run in (("fused", fused.run_buckets_fused), ("eager_fp32", run_buckets)):
        result[name] = verify.errors_against(run, forcing, params, cotangents, ref,
                                             before_run=lambda: poison_allocator(device, 4 * b * t * 64))
    result["ok"] = verify.within_targets(result["fused"])
    return result


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'2048x730,256x365' -> [(2048, 730), (256, 365)]."""
    try:
        return [(int(b), int(t)) for b, t in (item.lower().split("x") for item in text.split(",") if item)]
    except ValueError:
        raise SystemExit(f"--sizes: expected BxT[,BxT...] such as 2048x730, got {text!r}") from None


def physics_fn(impl: str):
    """``run(forcing, params, state0) -> BucketOutputs`` of one implementation."""
    if impl.startswith("fused"):
        return lambda f, p, s0: fused.run_buckets_fused(f, p, s0)
    return lambda f, p, s0: run_physics(f, p, impl, s0)


def fused_label(device: torch.device) -> str:
    if device.type == "cuda":
        return "fused"
    return "fused[interpreter]" if fused.interpreting() else "fused[cpu-op]"


def timed(fn, device: torch.device, min_time: float, max_reps: int) -> tuple[float, int | None]:
    """Median seconds per call after one warm-up call, and peak CUDA memory (bytes) of one call.

    Dynamo's caches are reset first: dispatch's compiled step recompiles for every new shape and grad mode,
    and would otherwise hit torch._dynamo's recompile limit (a hard error under fullgraph=True) mid-benchmark;
    compilation happens in the untimed warm-up call."""
    torch._dynamo.reset()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    while len(times) < max_reps and (sum(times) < min_time or len(times) < 1):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return sorted(times)[len(times) // 2], peak


def bench_physics(impl: str, b: int, t: int, mode: str, device: torch.device, args) -> dict:
    forcing, params = make_inputs(b, t, device, time_major=impl == "fused-tm")
    state0 = initial_storages(params)
    run = physics_fn(impl)

    def step() -> None:
        if mode == "forward":
            with torch.no_grad():
                run(forcing, params, state0)
            return
        p = params.detach().requires_grad_()
        out = run(forcing, p, state0)
        (out.q.sum() + out.et.sum() + out.tws.sum()).backward()

    seconds, peak = timed(step, device, args.min_time, args.max_reps)
    label = fused_label(device) + ("-tm" if impl == "fused-tm" else "") if impl.startswith("fused") else impl
    return {"kind": "physics", "impl": label, "mode": mode, "B": b, "T": t, "seconds": seconds,
            "basin_days_per_s": b * t / seconds, "peak_mem_bytes": peak}


def tune_fused(b: int, t: int, device: torch.device, blocks: list[int], stages: list[int], args) -> list[dict]:
    """Launch configs of the fused kernels at one size: basin-days/s of the forward and of forward + backward
    per (basins per program, pipeline stages), run on time-major planes straight through
    ``fused_kernels.launch_*``. Each config's outputs and gradients are compared with the default config's
    (``max_rel_diff``, rootzone.physics.verify.rel_error; a config reorders loads and work, not arithmetic,
    so anything above 1e-6 fails), so a faster config is also a correct one."""
    from rootzone.physics import fused_kernels as fk

    forcing, params = make_inputs(b, t, device, time_major=True)
    fp, pp = forcing.permute(2, 1, 0), params.permute(2, 1, 0)  # contiguous [C, T, B] planes
    s0 = initial_storages(params)
    cot = torch.randn(5, t, b, generator=torch.Generator().manual_seed(2)).to(device)

    def run(block: int, n_stages: int, backward: bool = True) -> tuple[Tensor, ...]:
        out = torch.empty(5, t, b, device=device)
        fk.launch_forward(fp, pp, s0, out, block=block, stages=n_stages)
        if not backward:
            return (out,)
        gf, gp = torch.empty_like(fp), torch.empty_like(pp)
        fk.launch_backward(fp, pp, s0, out, cot, gf, gp, block=block, stages=n_stages)
        return out, gf, gp

    poison_allocator(device, 4 * b * t * 64)
    default = run(fk.BLOCK_B, fk.NUM_STAGES)
    rows = []
    for block in blocks:
        for n_stages in stages:
            poison_allocator(device, 4 * b * t * 64)
            got = run(block, n_stages)
            diff = max(verify.rel_error(g.permute(2, 1, 0), d.permute(2, 1, 0)) for g, d in zip(got, default))
            for mode in ("forward", "forward+backward"):
                seconds, peak = timed(lambda bl=block, st=n_stages, bw=mode != "forward": run(bl, st, bw), device,
                                      args.min_time, args.max_reps)
                rows.append({"kind": "fused-config", "impl": f"{fused_label(device)}-tm b{block} s{n_stages}",
                             "mode": mode, "B": b, "T": t, "block": block, "stages": n_stages,
                             "default": (block, n_stages) == (fk.BLOCK_B, fk.NUM_STAGES), "seconds": seconds,
                             "basin_days_per_s": b * t / seconds, "peak_mem_bytes": peak,
                             "max_rel_diff_vs_default": diff, "ok": diff <= 1e-6})
                print(json.dumps(rows[-1]), flush=True)
    return rows


class Net(nn.Module):
    """Minimal parameter network: LSTM over [forcing, statics] -> linear head -> sigmoid into the ranges."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4 + N_STATIC, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 8)
        self.register_buffer("low", torch.tensor([DEFAULT_PARAM_RANGES[n][0] for n in PARAM_NAMES]))
        self.register_buffer("high", torch.tensor([DEFAULT_PARAM_RANGES[n][1] for n in PARAM_NAMES]))

    def forward(self, x: Tensor, bf16: bool) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            raw = self.head(self.lstm(x)[0])
        return self.low + (self.high - self.low) * torch.sigmoid(raw.float())


def bench_train(model: str, b: int, t: int, precision: str, device: torch.device, args) -> dict:
    """One optimiser step of the LSTM alone (``model='lstm'``) or the hybrid with physics ``model``."""
    torch.manual_seed(0)
    net = Net().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    forcing, _ = make_inputs(b, t, device)
    x = torch.cat([forcing, torch.randn(b, 1, N_STATIC, device=device).expand(b, t, N_STATIC)], -1)
    target = torch.rand(b, t, device=device)
    run = None if model == "lstm" else physics_fn(model)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        params = net(x, precision == "bf16")
        pred = params[..., 0] * 1e-3 if run is None else run(forcing, params, initial_storages(params)).q
        ((pred - target) ** 2).mean().backward()
        opt.step()

    label = "lstm" if model == "lstm" else "hybrid-" + (fused_label(device) if model == "fused" else model)
    row = {"kind": "train_step", "impl": label, "mode": f"train[{precision}]", "B": b, "T": t}
    try:
        seconds, peak = timed(step, device, args.min_time, args.max_reps)
    except RuntimeError as exc:  # e.g. no bf16 LSTM kernel on this CPU (oneDNN)
        return {**row, "seconds": None, "basin_days_per_s": None, "peak_mem_bytes": None,
                "skipped": str(exc).splitlines()[0][:200]}
    return {**row, "seconds": seconds, "basin_days_per_s": b * t / seconds, "peak_mem_bytes": peak}


def bench_spinup_share(impl: str, b: int, record_days: int, seq_len: int, device: torch.device, args) -> dict:
    """Seconds of the whole-record pass of ``b`` basins against one epoch over them (one batch of ``b``)."""
    from rootzone.config import Config
    from rootzone.model import HybridModel

    torch.manual_seed(0)
    cfg = Config(hidden_size=128, physics=impl)
    model = HybridModel(4, N_STATIC, cfg, impl).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    forcing, _ = make_inputs(b, record_days, device)
    x_dyn = torch.randn(b, record_days, 4, device=device)
    x_stat = torch.randn(b, N_STATIC, device=device)
    cycles = []

    def record_pass() -> None:
        model.eval()
        _, spun = model.run_record(x_dyn, x_stat, forcing, cfg.spinup_cycles)
        cycles.append(spun.cycles)

    window = (x_dyn[:, :seq_len].contiguous(), x_stat, forcing[:, :seq_len].contiguous())
    state0 = torch.zeros(3, b, device=device)
    target = torch.rand(b, seq_len, device=device)

    def train_step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        ((model(*window, state0).buckets.q - target) ** 2).mean().backward()
        opt.step()

    pass_s, _ = timed(record_pass, device, args.min_time, max(1, args.max_reps // 4))
    step_s, _ = timed(train_step, device, args.min_time, args.max_reps)
    return {"kind": "spinup_share", "impl": impl, "mode": f"record {record_days} d / epoch of {seq_len}-d windows",
            "B": b, "T": record_days, "seconds": pass_s, "basin_days_per_s": b * record_days / pass_s,
            "peak_mem_bytes": None, "epoch_seconds": step_s, "share_of_epoch": pass_s / step_s,
            "spinup_cycles": max(cycles)}


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit, dirty = git_state()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": {"kind": device.type, "name": name, "cpu_count": os.cpu_count(),
                       "torch_threads": torch.get_num_threads()},
            "torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
            "commit": commit, "dirty_tree": dirty, "date": datetime.now(timezone.utc).isoformat()}


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="rootzone physics throughput (basin-days / s)")
    for col in ("kind", "impl", "mode", "B", "T", "ms", "basin-days/s", "peak MiB"):
        table.add_column(col, justify="left" if col in ("kind", "impl", "mode") else "right")
    for r in rows:
        peak = "-" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**20:.0f}"
        if r["seconds"] is None:
            table.add_row(r["kind"], escape(r["impl"]), escape(r["mode"]), str(r["B"]), str(r["T"]),
                          "skipped", "-", peak)
            continue
        table.add_row(r["kind"], escape(r["impl"]), escape(r["mode"]), str(r["B"]), str(r["T"]),
                      f"{r['seconds'] * 1e3:.1f}", f"{r['basin_days_per_s']:.3g}", peak)
    Console(width=150).print(table)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"sizes B {QUICK_B} x T {QUICK_T}")
    ap.add_argument("--impl", default="eager,compiled,fused", help="comma list of eager, compiled, fused")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--interpret", action="store_true", help="run fused on CPU under Triton's interpreter")
    ap.add_argument("--no-train", action="store_true", help="skip the training-step comparison")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. 'shared machine')")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timed repeats per row")
    ap.add_argument("--max-reps", type=int, default=20)
    ap.add_argument("--sizes", help="comma list of BxT for the physics rows, replacing the grid (e.g. 2048x730)")
    ap.add_argument("--train-size", default=None, help="BxT of the training-step rows (default 2048x730; "
                                                         "--quick: the largest quick B x the smallest T)")
    ap.add_argument("--record-days", type=int, default=None, help="days of the record in the spin-up pass rows "
                                                                   "(default 5475 = 15 years; --quick: 1825)")
    ap.add_argument("--seq-len", type=int, default=730, help="training window (days) of the spin-up share rows")
    ap.add_argument("--no-check", action="store_true", help="skip the fused-vs-float64 checks")
    ap.add_argument("--tune", help="comma list of BxT at which to sweep the fused kernels' launch configs "
                                   "(--tune-blocks x --tune-stages); CUDA or --interpret")
    ap.add_argument("--tune-blocks", default="32,64,128,256", help="basins per program to sweep")
    ap.add_argument("--tune-stages", default="1,2,3,4", help="pipeline stages of the time loop to sweep")
    ap.add_argument("--out", default=None,
                    help="JSON path (default benchmarks/results/physics_<device>_<quick|full>.json)")
    args = ap.parse_args(argv)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    impls = [i.strip() for i in args.impl.split(",") if i.strip()]
    unknown = set(impls) - {"eager", "compiled", "fused"}
    if unknown:
        ap.error(f"unknown --impl {sorted(unknown)}")
    if "fused" in impls and device.type == "cuda":
        impls.append("fused-tm")
    sizes_b, sizes_t = (QUICK_B, QUICK_T) if args.quick else (FULL_B, FULL_T)
    sizes = parse_sizes(args.sizes) if args.sizes else [(b, t) for b in sizes_b for t in sizes_t]
    rows: list[dict] = []
    checks: list[dict] = []
    for b, t in sizes:
        if "fused" in impls and not args.no_check:
            checks.append(check_fused(b, t, device))
            print(json.dumps({"check": checks[-1]}), flush=True)
        for impl in impls:
            for mode in ("forward", "forward+backward"):
                rows.append(bench_physics(impl, b, t, mode, device, args))
                print(json.dumps(rows[-1]), flush=True)
    if args.tune:
        if device.type != "cuda" and not fused.interpreting():
            ap.error("--tune times the Triton kernels: it needs CUDA, or --interpret for a dry run on CPU")
        blocks, stages = ([int(x) for x in text.split(",")] for text in (args.tune_blocks, args.tune_stages))
        for b, t in parse_sizes(args.tune):
            rows.extend(tune_fused(b, t, device, blocks, stages, args))
    if not args.no_train:
        if args.train_size:
            (b, t), = parse_sizes(args.train_size)
        else:
            b, t = (sizes_b[-1], sizes_t[0]) if args.quick else (2048, 730)
        for precision in ("fp32", "bf16"):
            for model in ["lstm", *[i for i in impls if i != "fused-tm"]]:
                rows.append(bench_train(model, b, t, precision, device, args))
                print(json.dumps(rows[-1]), flush=True)
        record_days = args.record_days or (1825 if args.quick else 5475)
        for impl in [i for i in impls if i != "fused-tm" and (i != "fused" or device.type == "cuda")]:
            rows.append(bench_spinup_share(impl, b, record_days, args.seq_len, device, args))
            print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    for r in rows:
        if r["kind"] == "spinup_share":
            print(f"spin-up pass ({r['impl']}, {r['B']} basins x {r['T']} d, {r['spinup_cycles']} cycles): "
                  f"{r['seconds']:.2f} s = {r['share_of_epoch']:.2f} x one epoch ({r['epoch_seconds']:.2f} s)")
    out = Path(args.out or ROOT / "benchmarks" / "results" /
               f"physics_{device.type}_{'quick' if args.quick else 'full'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    note = ("GPU figures pending: this file holds CPU results only." if device.type == "cpu"
            else "measured on the device named above") + (f" {args.note}" if args.note else "")
    out.write_text(json.dumps({"benchmark": "rootzone bucket physics throughput", **environment(device),
                               "quick": args.quick, "note": note, "checks": checks, "results": rows},
                              indent=2) + "\n")
    print(f"wrote {out}")
    failed = [c for c in checks if not c["ok"]]
    if failed:
        raise SystemExit(f"fused check failed at {[(c['B'], c['T']) for c in failed]}: see 'checks' in {out}")
    differing = sorted({r["impl"] for r in rows if r["kind"] == "fused-config" and not r["ok"]})
    if differing:
        raise SystemExit(f"launch configs {differing} differ from the default config by over 1e-6: see {out}")


if __name__ == "__main__":
    main()
