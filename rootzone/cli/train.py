"""``rootzone train``: one (fold, seed) trial."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rootzone.cli.options import add_config_options, add_cv_options, add_verb, config_from_args, cv_flags


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(sub, "train", "train and evaluate one trial (one fold, one seed)", run_train_command)
    p.add_argument("--store", help="rootzone Zarr store (path or fsspec URL), e.g. from `rootzone data demo`")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/trial)")
    p.add_argument("--folds", type=int, help="number of folds k (default 5)")
    add_cv_options(p)
    p.add_argument("--fold", type=int, help="test fold, 0..k-1 (default 0)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--epochs", type=int, help="maximum epochs, each one pass over the training basins "
                                              "(default 40; early stopping may end sooner)")
    p.add_argument("--physics", help="physics implementation: auto | fused | compiled | eager (default auto)")
    p.add_argument("--device", help="auto | cpu | cuda (default auto)")
    p.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR/checkpoint.pt if present (the store and config must be the ones "
                        "recorded in RUN_DIR/config.toml; --epochs, --device, --physics may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a RUN_DIR that already holds a run: removes its best.pt, checkpoint.pt, "
                        "metrics.json, config.toml and train.log (nothing else)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_options(p)


def run_train_command(args: argparse.Namespace) -> None:
    """Train one (fold, seed) trial with early stopping on the validation year, keep the best checkpoint,
    evaluate every basin's whole record and write RUN_DIR/metrics.json (per split, target and basin, plus
    medians), config.toml and train.log."""
    from rootzone.evaluation import print_summary
    from rootzone.experiment import METRICS_JSON
    from rootzone.train import train_run

    cfg = config_from_args(args, store=args.store, out=args.out, folds=args.folds, fold=args.fold,
                           seed=args.seed, epochs=args.epochs, physics=args.physics, device=args.device,
                           progress=False if args.quiet else None, **cv_flags(args))
    t0 = time.perf_counter()
    metrics = train_run(cfg, resume=args.resume, overwrite=args.overwrite)
    print_summary(metrics.to_dict(), title=f"test metrics ({cfg.cv} CV), fold {cfg.fold}, seed {cfg.seed} "
                                 f"({time.perf_counter() - t0:.0f} s, best epoch {metrics.best_epoch})")
    print(f"wrote {Path(cfg.out) / METRICS_JSON}")
