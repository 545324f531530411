"""``rootzone tune``: ASHA search over lr, hidden_size, seq_len and target weights on one fold, with the same
trainable as the ensemble. The objective is ``validation_unweighted``: the mean over targets of the
*unweighted* validation loss, so that trials with different target weights are compared fairly. The best
config is written as TOML (EXP/best_config.toml) for ``rootzone ensemble --config``."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from rootzone.config import Config
from rootzone.ensemble_store import ExperimentDir
from rootzone.errors import RootzoneError

TUNE_NAME = "tune"
METRIC = "validation_unweighted"


def search_space(cfg: Config, fold: int, seed: int) -> dict[str, Any]:
    from ray import tune

    warm = cfg.warmup_days
    return {
        "fold": fold, "seed": seed,
        "lr": tune.loguniform(1e-4, 2e-2),
        "hidden_size": tune.choice(sorted({max(8, cfg.hidden_size // 2), cfg.hidden_size, cfg.hidden_size * 2})),
        "seq_len": tune.choice([warm + 180, warm + 365, warm + 730]),
        "target_weights": {t: tune.uniform(0.25, 2.0) for t in cfg.targets},
    }


def run_tune(cfg: Config, out: str, samples: int = 16, fold: int = 0, gpus_per_trial: float | None = None,
             cpus_per_trial: float = 2, max_failures: int = 3, address: str | None = None,
             resource_check: bool = True, console: Console | None = None) -> Config:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from rootzone import ensemble_ray
    from rootzone.ensemble import prepare_base

    console = console or Console()
    if samples < 1:
        raise RootzoneError("--samples must be >= 1")
    base = prepare_base(cfg, cfg.folds)
    exp = ExperimentDir.open(out)
    if exp.exists("ray", TUNE_NAME) or exp.exists("best_config.toml"):
        raise RootzoneError(f"{exp.url()} already holds a tuning run; choose another --out")
    ensemble_ray.connect(address)
    gpus = ensemble_ray.default_gpus_per_trial() if gpus_per_trial is None else gpus_per_trial
    if resource_check:
        ensemble_ray.check_resources(gpus, cpus_per_trial)
    # max_t one beyond the epochs: a trial that survives every rung ends on its own and gets evaluated.
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=base.epochs + 1,
                              grace_period=min(2, base.epochs), reduction_factor=3)
    tuner = tune.Tuner(
        ensemble_ray.make_trainable(base.to_dict(), exp, gpus, cpus_per_trial, tag=True),
        param_space=search_space(base, fold, base.seed),
        tune_config=tune.TuneConfig(metric=METRIC, mode="min", scheduler=scheduler, num_samples=samples),
        run_config=ensemble_ray.run_config(exp, TUNE_NAME, max_failures),
    )
    results = tuner.fit()
    try:
        best = results.get_best_result(metric=METRIC, mode="min", scope="all")
    except RuntimeError as exc:
        raise RootzoneError(f"no tuning trial reported {METRIC}: {exc}") from None
    chosen = {k: v for k, v in best.config.items() if k not in ("fold", "seed")}
    best_cfg = base.replace(**chosen, out=Config().out)
    exp.write_text(best_cfg.to_toml(), "best_config.toml")
    frame = results.get_dataframe(filter_metric=METRIC, filter_mode="min")
    exp.write_text(frame.to_csv(index=False), "tune_results.csv")
    console.print(f"best of {samples} trials ({METRIC} = {best.metrics_dataframe[METRIC].min():.4f}): "
                  + ", ".join(f"{k}={v}" for k, v in chosen.items()))
    path = exp.url("best_config.toml")
    console.print(f"wrote {path} (use: rootzone ensemble --config {path})")
    return best_cfg


def register_tune(sub: argparse._SubParsersAction) -> None:
    from rootzone.cli import add_config_options
    from rootzone.ensemble import add_ray_options

    p = sub.add_parser(
        "tune", help="search lr, hidden_size, seq_len and target weights with ASHA on Ray",
        description="ASHA search on one fold (same trainable as `rootzone ensemble`); writes EXP/best_config.toml "
                    "for `rootzone ensemble --config` and EXP/tune_results.csv.",
    )
    add_ray_options(p)
    p.add_argument("--samples", type=int, default=16, help="configurations to try (default 16)")
    p.add_argument("--fold", type=int, default=0, help="fold to tune on (default 0)")
    p.add_argument("--folds", type=int, help="temporal folds k (default: config value, 5)")
    add_config_options(p)
    p.set_defaults(func=run_tune_command)


def run_tune_command(args: argparse.Namespace) -> None:
    from rootzone.ensemble import config_for

    run_tune(config_for(args), args.out, samples=args.samples, fold=args.fold,
             gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
             max_failures=args.max_failures, address=args.address, resource_check=not args.no_resource_check)
