"""``rootzone ensemble`` and ``rootzone tune`` (Ray)."""

from __future__ import annotations

import argparse

from rootzone.cli.options import add_config_options, add_ray_options, add_verb, ray_config, ray_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(sub, "ensemble", "train a fold × seed ensemble on Ray (local or cluster)", run_ensemble_command)
    add_ray_options(p)
    p.add_argument("--folds", type=int, help="folds k (default: config value, 5)")
    p.add_argument("--seeds", type=int, default=10, help="seeds per fold: 0..N-1 (default 10)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment in EXP")
    p.add_argument("--models", default=None,
                   help="kinds of model to train for every fold and seed, comma-separated, e.g. hybrid,lstm for "
                        "the hybrid-vs-LSTM ablation (default: the config's model); LSTM trials are "
                        "EXP/trials/fold{f}_seed{s}_lstm")
    p.add_argument("--no-ensemble-mean", action="store_true",
                   help="skip scoring the ensemble mean prediction (members' metrics only)")
    add_config_options(p)

    p = sub.add_parser(
        "tune", help="search lr, hidden_size, seq_len and target weights with ASHA on Ray",
        description="ASHA search on one fold (same trainable as `rootzone ensemble`); writes EXP/best_config.toml "
                    "for `rootzone ensemble --config`, EXP/tune_results.csv and EXP/tune_selection.json. "
                    "The search trains on fold F's training years and selects on its validation years, so the "
                    "chosen hyper-parameters are honest only for fold F's test block: every other fold's test "
                    "years were seen by the selection. For honest cross-validated scores tune each fold "
                    "(--fold F, one --out each) and score fold F with its own config, or report fold F's test "
                    "scores only (see docs/ray.md).",
    )
    add_ray_options(p)
    p.add_argument("--samples", type=int, default=16, help="configurations to try (default 16)")
    p.add_argument("--fold", type=int, default=0,
                   help="fold to tune on, the only fold whose test scores stay honest (default 0)")
    p.add_argument("--folds", type=int, help="folds k (default: config value, 5)")
    add_config_options(p)
    p.set_defaults(func=run_tune_command)


def run_ensemble_command(args: argparse.Namespace) -> None:
    """Train every (fold, seed) trial as a Ray Tune grid with retries, checkpoints and resume; write
    EXP/trials/fold{f}_seed{s}/, EXP/ensemble_metrics.csv|.parquet and EXP/summary.json (median test NSE/KGE of
    the members and of the ensemble mean)."""
    from rootzone.ensemble.run import run_ensemble

    cfg = ray_config(args)
    run_ensemble(cfg, args.out, folds=args.folds or cfg.folds, seeds=args.seeds, ray=ray_settings(args),
                 resume=args.resume, ensemble_mean=not args.no_ensemble_mean,
                 models=[m.strip() for m in args.models.split(",")] if args.models else None)


def run_tune_command(args: argparse.Namespace) -> None:
    from rootzone.ensemble.tune import run_tune

    run_tune(ray_config(args), args.out, samples=args.samples, fold=args.fold, ray=ray_settings(args))
