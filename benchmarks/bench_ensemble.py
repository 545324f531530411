"""Ensemble throughput.

``--mode cpu`` (default): tiny trials on this machine, run (1) one after another in plain processes
(``rootzone train``) and (2) as a ``rootzone ensemble`` on a local Ray cluster with the same concurrency;
reports trials per hour and Ray's overhead per trial. Writes benchmarks/results/ensemble_cpu.json.

``--mode gpu``: 1, 2 and 4 concurrent plain training processes (no Ray) on one GPU, each a full-size trial;
reports aggregate basin-days per second (training windows × basins per batch / wall time).

    python benchmarks/bench_ensemble.py --mode cpu --trials 4 --concurrency 2
    python benchmarks/bench_ensemble.py --mode gpu --basins 512 --years 12 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from child import child_env
from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
TINY = ["--physics", "eager", "--set", "batches_per_epoch=1", "--set", "seq_len=300", "--set", "warmup_days=90",
        "--set", "hidden_size=4", "--set", "batch_size=3"]


def env() -> dict[str, str]:
    """The children's environment: no RAY_ADDRESS, so `rootzone ensemble` starts its own local Ray instance,
    which listens on 127.0.0.1 only, with token authentication (the token in ~/.ray/auth_token, mode 0600)."""
    e = child_env({k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    e.update(OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")
    return e


def rootzone(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rootzone.cli", *args], cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def wait_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"benchmark command failed: {err[-2000:]}")


def make_store(path: Path, basins: int, years: int) -> None:
    from rootzone.data.demo import build_demo
    from rootzone.data.schema import write_store

    write_store(build_demo(basins=basins, years=years, seed=1), str(path))


def bench_cpu(args: argparse.Namespace, work: Path) -> dict:
    store = work / "store.zarr"
    make_store(store, 3, 4)
    folds, seeds = 2, max(1, args.trials // 2)
    n = folds * seeds
    common = ["--store", str(store), "--epochs", str(args.epochs), *TINY]
    # plain processes, `concurrency` at a time
    t0 = time.perf_counter()
    jobs = [(f, s) for f in range(folds) for s in range(seeds)]
    for i in range(0, n, args.concurrency):
        wait_all([rootzone("train", *common, "--folds", str(folds), "--fold", str(f), "--seed", str(s), "--quiet",
                           "--set", "threads=1", "--out", str(work / "plain" / f"fold{f}_seed{s}"))
                  for f, s in jobs[i:i + args.concurrency]])
    plain = time.perf_counter() - t0
    # the same trials on a local Ray cluster
    t0 = time.perf_counter()
    wait_all([rootzone("ensemble", *common, "--folds", str(folds), "--seeds", str(seeds), "--out",
                       str(work / "ray"), "--cpus-per-trial", str(args.cpus // args.concurrency),
                       "--gpus-per-trial", "0", "--no-ensemble-mean")])
    ray_wall = time.perf_counter() - t0
    assert json.loads((work / "ray" / "summary.json").read_text())["n_members"] == n
    return {
        "trials": n, "concurrency": args.concurrency, "epochs": args.epochs,
        "trial_settings": "3 basins x 4 years, eager physics, hidden 4, 1 batch/epoch, seq_len 300",
        "plain_wall_s": round(plain, 1), "ray_wall_s": round(ray_wall, 1),
        "plain_trials_per_hour": round(3600 * n / plain, 1), "ray_trials_per_hour": round(3600 * n / ray_wall, 1),
        "ray_overhead_per_trial_s": round((ray_wall - plain) * args.concurrency / n, 2),
        "note": "ray_wall includes starting the local Ray cluster and aggregation. Plain runs go in batches of "
                "`concurrency` (each waits for its slowest) and import torch per trial; Ray keeps every slot busy "
                "and reuses worker processes, so the overhead can come out negative. Shared 2-core machine: noisy.",
    }


def bench_gpu(args: argparse.Namespace, work: Path) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--mode gpu: no CUDA device is visible")
    gpu = torch.cuda.get_device_name()
    store = work / "store.zarr"
    make_store(store, args.basins, args.years)
    from rootzone.config import Config

    c = Config()  # the default (full-size) trial
    out = {}
    for k in (1, 2, 4):
        t0 = time.perf_counter()
        wait_all([rootzone("train", "--store", str(store), "--epochs", str(args.epochs), "--device", "cuda",
                           "--quiet", "--seed", str(i), "--out", str(work / f"gpu{k}_{i}"), "--set", "patience=1000")
                  for i in range(k)])
        wall = time.perf_counter() - t0
        days = k * args.epochs * c.batches_per_epoch * min(c.batch_size, args.basins) * c.seq_len
        out[f"{k}_processes"] = {"wall_s": round(wall, 1), "basin_days_per_s": round(days / wall)}
    return {"gpu": gpu, "basins": args.basins, "years": args.years, "epochs": args.epochs, "results": out,
            "note": "training windows only (validation and evaluation time included in wall time)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="CPUs Ray may use (cpu mode)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--basins", type=int, default=512)
    p.add_argument("--years", type=int, default=12)
    p.add_argument("--output", help="JSON file (default benchmarks/results/ensemble_{mode}.json)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ens-") as tmp:
        figures = bench_cpu(args, Path(tmp)) if args.mode == "cpu" else bench_gpu(args, Path(tmp))
    result = {"benchmark": f"ensemble_{args.mode}", **provenance(), "figures": figures}
    path = Path(args.output or REPO / "benchmarks" / "results" / f"ensemble_{args.mode}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
