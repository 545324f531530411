"""``rootzone tune``: ASHA search over lr, hidden_size, seq_len and target weights on one fold, with the same
trainable as the ensemble. The objective is ``validation_unweighted``: the mean over targets of the
*unweighted* validation loss, so that trials with different target weights are compared fairly. The best
config is written as TOML (EXP/best_config.toml) for ``rootzone ensemble --config``.

Test leakage (science review m3): the search selects on the validation years of fold ``--fold`` after training
on that fold's training years, so the chosen hyper-parameters are honest only for that fold's test block; every
other fold's test years were seen by the selection (as training or as validation years). ``run_tune`` says so,
records it in EXP/tune_selection.json (:func:`selection_record`) and marks it in best_config.toml, which is set
to that fold. Honest cross-validated scores of a tuned model: tune each fold (``rootzone tune --fold f`` per
fold, one EXP each) and score fold f only with fold f's config, or report the tuned fold's test scores only."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import numpy as np
from rich.console import Console

from rootzone.config import Config
from rootzone.ensemble.settings import RaySettings
from rootzone.errors import RootzoneError
from rootzone.experiment import BEST_CONFIG_TOML, RAY, TUNE_RESULTS_CSV, ExperimentDir

TUNE_NAME = "tune"
METRIC = "validation_unweighted"
TUNE_SELECTION_JSON = "tune_selection.json"


def selection_record(time, folds: int, fold: int, validation_years: int) -> dict[str, Any]:
    """Which years a search on ``fold`` used and whose test blocks that leaks into: ``selected_on`` (the
    validation years it minimises the loss on), ``trained_on``, ``honest_for_fold`` / ``honest_test_years``
    (the only test block the selection never saw), and ``leaks_into`` {other fold: its test years that the
    selection saw}, with ``selected_on_test_of`` the folds whose test block holds the selection years."""
    from rootzone.data.folds import temporal_fold

    split = temporal_fold(time, folds, fold, validation_years)
    seen = set(split.years["train"]) | set(split.years["validation"])
    leaks, selected_in = {}, []
    for g in range(folds):
        if g == fold:
            continue
        test_g = temporal_fold(time, folds, g, validation_years).years["test"]
        leaks[g] = sorted(seen & set(test_g))
        if set(split.years["validation"]) & set(test_g):
            selected_in.append(g)
    return {"fold": fold, "folds": folds, "selected_on": split.years["validation"],
            "trained_on": split.years["train"], "honest_for_fold": fold, "honest_test_years": split.years["test"],
            "leaks_into": leaks, "selected_on_test_of": selected_in}


def spatial_selection_record(ds, cfg: Config, fold: int) -> dict[str, Any]:
    """:func:`selection_record` for the spatial schemes: the search selects on fold ``fold``'s validation basins
    (and trains on its training basins), which are other folds' test basins: ``selected_on`` / ``trained_on``
    (basin ids), ``honest_for_fold``, ``honest_test_basins``, ``leaks_into`` {other fold: its test basins
    the search saw}."""
    from rootzone.data.folds import cv_fold

    ids = [str(b) for b in ds["basin"].values]
    n = len(ids)

    def basins(split, s: str) -> list[str]:
        return [ids[i] for i in np.flatnonzero(split.basin_mask(s, n))]

    split = cv_fold(ds, cfg, fold)
    seen = set(basins(split, "train")) | set(basins(split, "validation"))
    leaks, selected_in = {}, []
    for g in range(cfg.folds):
        if g == fold:
            continue
        test_g = set(basins(cv_fold(ds, cfg, g), "test"))
        leaks[g] = sorted(seen & test_g)
        if set(basins(split, "validation")) & test_g:
            selected_in.append(g)
    return {"fold": fold, "folds": cfg.folds, "cv": cfg.cv, "selected_on": basins(split, "validation"),
            "trained_on": basins(split, "train"), "honest_for_fold": fold,
            "honest_test_basins": basins(split, "test"), "honest_test_years": split.years["test"],
            "leaks_into": leaks, "selected_on_test_of": selected_in}


def selection_note(record: dict[str, Any]) -> str:
    """One paragraph (also the header of best_config.toml) saying for which test block the tuned config is
    honest."""
    if record.get("cv", "temporal") != "temporal":
        leaky = ", ".join(str(g) for g in record["leaks_into"]) or "none"
        return (f"tuned on fold {record['fold']} of {record['folds']} ({record['cv']} CV): selected on "
                f"{len(record['selected_on'])} validation basins; honest only for fold {record['fold']}'s "
                f"{len(record['honest_test_basins'])} test basins. Applied to folds {leaky} it was selected with "
                f"their test basins in view (tune each fold with --fold, or report fold {record['fold']}'s test "
                "scores only).")
    leaky = ", ".join(str(g) for g in record["leaks_into"]) or "none"
    return (f"tuned on fold {record['fold']} of {record['folds']}: selected on validation years "
            f"{record['selected_on']}; honest only for fold {record['fold']}'s test years "
            f"{record['honest_test_years']}. Applied to folds {leaky} it was selected with their test years in "
            f"view (tune each fold with --fold, or report fold {record['fold']}'s test scores only).")


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
    record = _selection(base, fold)
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
    best_cfg = base.replace(**chosen, fold=fold, out=Config().out)
    note = selection_note(record)
    exp.write_text("".join(f"# {line}\n" for line in textwrap.wrap(note, 110)) + best_cfg.to_toml(),
                   BEST_CONFIG_TOML)
    exp.write_text(json.dumps(record, indent=1), TUNE_SELECTION_JSON)
    frame = results.get_dataframe(filter_metric=METRIC, filter_mode="min")
    exp.write_text(frame.to_csv(index=False), TUNE_RESULTS_CSV)
    console.print(f"best of {samples} trials ({METRIC} = {best.metrics_dataframe[METRIC].min():.4f}): "
                  + ", ".join(f"{k}={v}" for k, v in chosen.items()))
    path = exp.url(BEST_CONFIG_TOML)
    console.print(f"wrote {path} (use: rootzone ensemble --config {path})")
    console.print(f"[yellow]{note}")
    return best_cfg


def _selection(cfg: Config, fold: int) -> dict[str, Any]:
    from rootzone.data.schema import open_store

    ds = open_store(cfg.store)
    if cfg.cv != "temporal":
        return spatial_selection_record(ds, cfg, fold)
    return selection_record(ds.indexes["time"], cfg.folds, fold, cfg.validation_years)
