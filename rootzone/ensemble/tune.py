"""``rootzone tune``: ASHA search over lr, hidden_size, seq_len and target weights on one fold, with the same
trainable as the ensemble. The objective is ``validation_unweighted``: the mean over targets of the
*unweighted* validation loss, so that trials with different target weights are compared fairly. The best
config is written as TOML (EXP/best_config.toml) for ``rootzone ensemble --config``."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from rootzone.config import Config
from rootzone.ensemble.settings import RaySettings
from rootzone.errors import RootzoneError
from rootzone.experiment import BEST_CONFIG_TOML, RAY, TUNE_RESULTS_CSV, ExperimentDir

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


def run_tune(cfg: Config, out: str, samples: int = 16, fold: int = 0, ray: RaySettings | None = None,
             console: Console | None = None) -> Config:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from rootzone.ensemble import cluster
    from rootzone.ensemble.run import prepare_base

    console = console or Console()
    if samples < 1:
        raise RootzoneError("--samples must be >= 1")
    base = prepare_base(cfg, cfg.folds)
    exp = ExperimentDir.open(out)
    if exp.exists(RAY, TUNE_NAME) or exp.exists(BEST_CONFIG_TOML):
        raise RootzoneError(f"{exp.url()} already holds a tuning run; choose another --out")
    ray = ray or RaySettings()
    gpus, cpus = cluster.start(ray)
    # max_t one beyond the epochs: a trial that survives every rung ends on its own and gets evaluated.
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=base.epochs + 1,
                              grace_period=min(2, base.epochs), reduction_factor=3)
    tuner = tune.Tuner(
        cluster.make_trainable(base.to_dict(), exp, gpus, cpus, tag=True),
        param_space=search_space(base, fold, base.seed),
        tune_config=tune.TuneConfig(metric=METRIC, mode="min", scheduler=scheduler, num_samples=samples),
        run_config=cluster.run_config(exp, TUNE_NAME, ray.max_failures),
    )
    results = tuner.fit()
    try:
        best = results.get_best_result(metric=METRIC, mode="min", scope="all")
    except RuntimeError as exc:
        raise RootzoneError(f"no tuning trial reported {METRIC}: {exc}") from None
    chosen = {k: v for k, v in best.config.items() if k not in ("fold", "seed")}
    best_cfg = base.replace(**chosen, out=Config().out)
    exp.write_text(best_cfg.to_toml(), BEST_CONFIG_TOML)
    frame = results.get_dataframe(filter_metric=METRIC, filter_mode="min")
    exp.write_text(frame.to_csv(index=False), TUNE_RESULTS_CSV)
    console.print(f"best of {samples} trials ({METRIC} = {best.metrics_dataframe[METRIC].min():.4f}): "
                  + ", ".join(f"{k}={v}" for k, v in chosen.items()))
    path = exp.url(BEST_CONFIG_TOML)
    console.print(f"wrote {path} (use: rootzone ensemble --config {path})")
    return best_cfg
