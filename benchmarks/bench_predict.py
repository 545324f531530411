"""Prediction benchmark: throughput (basin-days/s) and peak host memory (RSS) of ``rootzone predict`` for
synthetic stores of growing basin counts, on CPU or on a GPU.

    python benchmarks/bench_predict.py                         # CPU: 200 and 1,000 basins x 30 years
    python benchmarks/bench_predict.py --basins 200 1000 10000 --members 2 --hidden 128
    python benchmarks/bench_predict.py --device cuda --physics auto --basins 1000 10000 --chunk-basins 256

Each store is written block by block (``schema.StoreWriter``), so building it never holds all basins either.
The experiment has ``--members`` randomly initialised members (weights do not change the cost). Each
prediction runs in its own process; its peak RSS comes from ``os.wait4`` (ru_maxrss). The claim checked:
peak RSS is roughly independent of the basin count, because basins stream through ``--chunk-basins`` at a
time. Results go to benchmarks/results/predict_<device>.json; on CUDA the JSON also holds the GPU's name and
its peak allocated memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from child import run_child
from provenance import provenance

ROOT = Path(__file__).resolve().parents[1]


def make_store(url: str, n_basins: int, years: int, block: int = 256) -> None:
    """Synthetic forcing-only store (precipitation, temperature, pet, lai) of the demo's climates."""
    from rootzone.data.demo import random_attributes, synthetic_forcing
    from rootzone.data.schema import StoreWriter, VariableSpec, make_template

    rng = np.random.default_rng(0)
    time_index = pd.date_range("1990-01-01", periods=int(round(years * 365.25)), freq="D")
    att = random_attributes(rng, n_basins)
    specs = [VariableSpec("precipitation", "forcing", "mm/d"), VariableSpec("temperature", "forcing", "degC"),
             VariableSpec("pet", "forcing", "mm/d"), VariableSpec("lai", "forcing", "m2/m2")]
    template = make_template(att.index, time_index, specs, att, source="bench_predict synthetic")
    import xarray as xr

    with StoreWriter(url, template, overwrite=True, basin_chunk=block) as writer:
        for lo in range(0, n_basins, block):
            sub = att.iloc[lo : lo + block]
            forcing = synthetic_forcing(rng, sub, time_index)
            ds = xr.Dataset({k: (("basin", "time"), v.astype(np.float32)) for k, v in forcing.items()})
            writer.write(ds, lo)


def make_experiment(root: Path, store: str, members: int, hidden: int) -> None:
    """EXP with ``members`` folds of one random-weight member each (best.pt + metrics.json)."""
    import torch

    from rootzone.config import Config
    from rootzone.data.loader import Normaliser
    from rootzone.data.schema import open_store
    from rootzone.model import HybridModel

    ds = open_store(store)
    att = ds["attributes"].values.astype(np.float64)
    names = ["precipitation", "temperature", "pet", "lai"]
    first = ds[names].isel(basin=slice(0, 64)).compute()
    norm = Normaliser(names, np.array([float(first[v].mean()) for v in names]),
                      np.array([float(first[v].std()) for v in names]), [str(a) for a in ds["attribute"].values],
                      att.mean(0), att.std(0) + 1e-6, att.min(0), att.max(0))
    for m in range(members):
        cfg = Config(store=store, folds=max(2, members), fold=m, hidden_size=hidden, progress=False)
        torch.manual_seed(m)
        model = HybridModel(len(names), att.shape[1], cfg)
        out = root / "trials" / f"fold{m}_seed0"
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "normaliser": norm.to_dict(), "config": cfg.to_dict(),
                    "epoch": 1}, out / "best.pt")
        (out / "metrics.json").write_text(json.dumps({"fold": m, "seed": 0, "best_validation_loss": 1.0}))
    (root / "experiment.json").write_text(json.dumps({"store": store, "folds": max(2, members), "seeds": [0]}))


def child(args: argparse.Namespace) -> None:
    """Run one prediction in this process and print its timing as JSON."""
    import torch

    from rootzone.predict import predict

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    summary = predict(args.experiment, args.store, args.out, members="all", chunk_basins=args.chunk_basins,
                      overwrite=True, device=args.device, physics=args.physics)
    gpu_peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else None
    print(json.dumps({"seconds": time.perf_counter() - t0, "members": len(summary["members"]),
                      "gpu_peak_mb": None if gpu_peak is None else round(gpu_peak / 2**20)}))


def run_size(work: Path, n: int, args: argparse.Namespace) -> dict:
    store, exp, out = str(work / f"store{n}.zarr"), work / f"exp{n}", str(work / f"pred{n}.zarr")
    t0 = time.perf_counter()
    make_store(store, n, args.years)
    build = time.perf_counter() - t0
    make_experiment(exp, store, args.members, args.hidden)
    cmd = [sys.executable, __file__, "--child", "--experiment", str(exp), "--store", store, "--out", out,
           "--chunk-basins", str(args.chunk_basins), "--physics", args.physics, "--threads", str(args.threads),
           "--device", args.device]
    stdout, _, peak_mb = run_child(cmd, f"prediction of {n} basins")
    timing = json.loads(stdout.strip().splitlines()[-1])
    days = int(round(args.years * 365.25))
    return {"basins": n, "days": days, "members": timing["members"], "store_build_s": round(build, 1),
            "predict_s": round(timing["seconds"], 1),
            "basin_days_per_s": round(n * days * timing["members"] / timing["seconds"]),
            "peak_rss_mb": round(peak_mb), "gpu_peak_mb": timing["gpu_peak_mb"]}


def main() -> None:
    if "--child" in sys.argv:
        cp = argparse.ArgumentParser()
        for flag in ("--experiment", "--store", "--out", "--physics", "--device"):
            cp.add_argument(flag)
        cp.add_argument("--chunk-basins", type=int)
        cp.add_argument("--threads", type=int)
        cp.add_argument("--child", action="store_true")
        child(cp.parse_args())
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--basins", type=int, nargs="+", default=[200, 1000], help="basin counts (default 200 1000)")
    p.add_argument("--years", type=float, default=30, help="record length in years (default 30)")
    p.add_argument("--members", type=int, default=1, help="ensemble members (default 1)")
    p.add_argument("--hidden", type=int, default=128, help="LSTM hidden size (default 128)")
    p.add_argument("--chunk-basins", type=int, default=64, help="basins per chunk (default 64)")
    p.add_argument("--physics", default="eager", help="eager | compiled | auto (default eager)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: on a shared machine more "
                                                          "threads contend and run slower)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the prediction runs")
    p.add_argument("--out", help="JSON file (default benchmarks/results/predict_<device>.json)")
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    args = p.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible")
        gpu = torch.cuda.get_device_name()
    else:
        gpu = None
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"predict_{args.device}.json")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        rows = []
        for n in args.basins:
            rows.append(run_size(Path(tmp), n, args))
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "benchmark": f"rootzone predict, {args.device}", **provenance(), "gpu": gpu,
        "settings": {"years": args.years, "members": args.members, "hidden_size": args.hidden,
                     "chunk_basins": args.chunk_basins, "physics": args.physics, "threads": args.threads,
                     "device": args.device},
        "results": rows,
        "note": "basin_days_per_s counts every member (basins x days x members / wall seconds of the whole "
                "prediction, store reads and Zarr writes included); peak_rss_mb is the predicting process's "
                "maximum resident set size.",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
