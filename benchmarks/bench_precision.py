"""Twin-experiment skill under ``precision="bf16"`` against ``"fp32"``: does bf16 autocast of the network
change what the hybrid learns?

    python benchmarks/bench_precision.py --device cuda                  # demo store (64 basins x 15 years)
    python benchmarks/bench_precision.py --device cpu --basins 8 --years 4 --epochs 1   # smoke run

Builds the demo store (the README's main job), trains the same (fold, seed) trials once per precision with
the default config and compares the median test NSE per target and the recovery of the true S_max (Pearson
r, RMSE). bf16 applies to the network on CUDA only (the physics and its states are always fp32); on CPU both
runs are fp32 and the JSON says so. Verdict: ``skill_unchanged`` when, for every target, the mean NSE over
seeds of bf16 is within ``--tolerance`` (default 0.02) of fp32's, or within the spread between seeds.
Results go to benchmarks/results/precision_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from provenance import provenance  # noqa: E402

TARGETS = ("q", "et", "swe", "twsa")


def train(store: str, out: Path, precision: str, seed: int, args: argparse.Namespace) -> dict:
    from rootzone.config import Config
    from rootzone.train import train_trial

    overrides = {"epochs": args.epochs} if args.epochs else {}
    cfg = Config(store=store, out=str(out), seed=seed, device=args.device, precision=precision, progress=False,
                 **overrides)
    t0 = time.perf_counter()
    metrics = train_trial(cfg)
    test = metrics.splits["test"]
    row = {"precision": precision, "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
           "best_epoch": metrics.best_epoch, "epochs_run": metrics.epochs_run,
           "nse": {t: test[t]["median"]["nse"] for t in TARGETS if t in test}}
    row.update({k: (metrics.truth_recovery or {}).get(k) for k in ("smax_pearson_r", "smax_rmse")})
    return row


def verdict(rows: list[dict], tolerance: float) -> dict:
    """Per target: mean NSE of each precision over seeds, their difference, the seed spread, and whether
    the difference is within max(tolerance, spread)."""
    out: dict = {}
    for target in TARGETS:
        by = {p: [r["nse"][target] for r in rows if r["precision"] == p and target in r["nse"]]
              for p in ("fp32", "bf16")}
        if not by["fp32"] or not by["bf16"]:
            continue
        spread = float(max(np.ptp(by["fp32"]), np.ptp(by["bf16"])))
        diff = float(np.mean(by["bf16"]) - np.mean(by["fp32"]))
        out[target] = {"fp32": float(np.mean(by["fp32"])), "bf16": float(np.mean(by["bf16"])), "diff": diff,
                       "seed_spread": spread, "ok": abs(diff) <= max(tolerance, spread)}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--basins", type=int, default=64, help="demo store basins (default 64, the README's)")
    p.add_argument("--years", type=int, default=15, help="demo store years (default 15)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per precision (default 2)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default: the config default)")
    p.add_argument("--tolerance", type=float, default=0.02, help="allowed |NSE difference| (default 0.02)")
    p.add_argument("--out", help="JSON file (default benchmarks/results/precision_<device>.json)")
    args = p.parse_args(argv)

    import torch

    from rootzone.data.demo import build_demo
    from rootzone.data.schema import write_store

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        store = str(Path(tmp) / "demo.zarr")
        write_store(build_demo(basins=args.basins, years=args.years, seed=0), store)
        for seed in range(args.seeds):
            for precision in ("fp32", "bf16"):
                rows.append(train(store, Path(tmp) / f"{precision}_{seed}", precision, seed, args))
                print(json.dumps(rows[-1]), flush=True)
    per_target = verdict(rows, args.tolerance)
    result = {"benchmark": "twin-experiment skill, bf16 vs fp32", **provenance(),
              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "bf16_applied": args.device == "cuda", "torch": torch.__version__,
              "settings": {"basins": args.basins, "years": args.years, "seeds": args.seeds, "epochs": args.epochs,
                           "tolerance": args.tolerance},
              "runs": rows, "per_target": per_target,
              "skill_unchanged": bool(per_target) and all(v["ok"] for v in per_target.values())}
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"precision_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for target, v in per_target.items():
        print(f"{target:5s} NSE fp32 {v['fp32']:.3f}  bf16 {v['bf16']:.3f}  diff {v['diff']:+.3f}  "
              f"seed spread {v['seed_spread']:.3f}  {'ok' if v['ok'] else 'CHANGED'}")
    print(f"skill unchanged under bf16: {result['skill_unchanged']} (bf16 applied: {result['bf16_applied']}); "
          f"wrote {out}")


if __name__ == "__main__":
    main()
