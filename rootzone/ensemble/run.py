"""Ensembles on Ray (DESIGN §7): ``rootzone ensemble`` runs a Ray Tune grid over fold × seed, each trial one
:func:`rootzone.train.train_trial` run reporting every epoch with a checkpoint; Ray retries failed trials
(``--max-failures``) from their last checkpoint, ``--resume`` restores an interrupted experiment (finished
trials are not rerun), fractional GPUs let trials share a GPU, and the same code runs on a laptop (local Ray)
and a cluster (``ray job submit``, see ``ray_jobs/ensemble.py`` and docs/ray.md). ``rootzone tune`` searches
lr, hidden_size, seq_len and target weights with ASHA (see :mod:`rootzone.ensemble.tune`).

Experiment folder: see :mod:`rootzone.experiment`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from rootzone.config import Config
from rootzone.ensemble.aggregate import (
    ensemble_mean_scores,
    metrics_table,
    print_ensemble_summary,
    summarise,
    write_outputs,
)
from rootzone.ensemble.settings import RaySettings
from rootzone.errors import RootzoneError
from rootzone.experiment import (
    ENSEMBLE_CSV,
    EXPERIMENT_JSON,
    RAY,
    SUMMARY_JSON,
    TRIALS,
    ExperimentDir,
    check_same_experiment,
    experiment_record,
    record_models,
    trial_name,
)

TUNE_NAME = "ensemble"  # EXP/ray/ensemble = Tune's experiment folder


def run_ensemble(cfg: Config, out: str, folds: int, seeds: int, ray: RaySettings | None = None,
                 resume: bool = False, ensemble_mean: bool = True, console: Console | None = None,
                 wrap_trainable: Callable | None = None, models: list[str] | None = None) -> dict[str, Any]:
    """Train every (fold, seed) of the experiment in ``out`` on Ray, aggregate, and return the summary.
    ``models``: the kinds (Config.model) to train for every (fold, seed), e.g. ["hybrid", "lstm"] for the
    ablation (default: the config's). ``wrap_trainable`` (tests: fault injection) wraps the Tune function
    trainable before it is registered."""
    from ray import tune

    from rootzone.ensemble import cluster

    console = console or Console()
    if seeds < 1:
        raise RootzoneError("--seeds must be >= 1")
    base = prepare_base(cfg, folds)
    models = check_models(models or [base.model])
    exp = ExperimentDir.open(out)
    seed_list = list(range(seeds))
    record = experiment_record(base, folds, seed_list, models)
    if exp.exists(EXPERIMENT_JSON):
        if not resume:
            raise RootzoneError(f"{exp.url()} already holds an experiment; pass --resume to continue it, "
                                "or choose another --out")
        check_same_experiment(exp.record(), record, exp.url(EXPERIMENT_JSON))
    elif resume:
        raise RootzoneError(f"nothing to resume: {exp.url(EXPERIMENT_JSON)} does not exist")

    ray = ray or RaySettings()
    gpus, cpus = cluster.start(ray)
    if not resume:
        exp.write_record(record)

    trainable = cluster.make_trainable(base.to_dict(), exp, gpus, cpus, wrap=wrap_trainable)
    if resume and cluster.restorable(exp, TUNE_NAME):
        console.print(f"resuming {exp.url(RAY, TUNE_NAME)} (finished trials are kept)")
        tuner = tune.Tuner.restore(exp.url(RAY, TUNE_NAME), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"fold": tune.grid_search(list(range(folds))), "seed": tune.grid_search(seed_list),
                         **({"model": tune.grid_search(models)} if models != [base.model] else {})},
            tune_config=tune.TuneConfig(trial_dirname_creator=cluster.trial_dirname),
            run_config=cluster.run_config(exp, TUNE_NAME, ray.max_failures),
        )
    t0 = time.perf_counter()
    tuner.fit()
    elapsed = time.perf_counter() - t0
    summary = aggregate(exp, ensemble_mean=ensemble_mean, console=console)
    summary["seconds"] = elapsed
    if not summary["missing"]:
        cluster.prune_checkpoints(exp, TUNE_NAME)
    else:
        raise RootzoneError(f"{len(summary['missing'])} of {folds * seeds * len(models)} trials did not finish "
                            f"({', '.join(summary['missing'])}); see {exp.url(RAY, TUNE_NAME)}, "
                            "then rerun with --resume")
    return summary


def check_models(models: list[str]) -> list[str]:
    """``--models``: known kinds (Config.model), each once."""
    from rootzone.config import MODEL_CHOICES

    bad = [m for m in models if m not in MODEL_CHOICES]
    if bad or not models or len(set(models)) != len(models):
        raise RootzoneError(f"--models: give distinct kinds among {', '.join(MODEL_CHOICES)}, got {','.join(models)}")
    return list(models)


def prepare_base(cfg: Config, folds: int) -> Config:
    """The experiment's base config: ``folds`` set, a local store path made absolute (workers run elsewhere)."""
    if not cfg.store:
        raise RootzoneError("no store given: pass --store PATH (e.g. one written by `rootzone data demo`)")
    store = cfg.store if "://" in cfg.store else str(Path(cfg.store).expanduser().resolve())
    base = cfg.replace(store=store, folds=folds, fold=0, seed=0, progress=False)
    _check_store(base)
    return base


def _check_store(cfg: Config) -> None:
    """Open the store and cut fold 0 in the driver, so a bad store fails once, clearly, before Ray starts."""
    from rootzone.data.folds import cv_fold
    from rootzone.data.schema import open_store

    ds = open_store(cfg.store)
    cv_fold(ds, cfg, 0)


def aggregate(exp: ExperimentDir | str, ensemble_mean: bool = True, device: str = "cpu",
              console: Console | None = None) -> dict[str, Any]:
    """Collect every member's metrics.json into EXP/ensemble_metrics.csv|.parquet, score the ensemble mean,
    write EXP/summary.json and print the summary table."""
    exp = ExperimentDir.open(exp) if isinstance(exp, str) else exp
    record = exp.record()
    expected = [trial_name(f, s, m) for m in record_models(record) for f in range(record["folds"])
                for s in record["seeds"]]
    members = [t for t in exp.trials() if t.name in expected]
    missing = [n for n in expected if n not in {t.name for t in members}]
    if not members:
        raise RootzoneError(f"no finished trial in {exp.url(TRIALS)}")
    table = metrics_table(members)
    uncertainty: dict = {}
    mean_scores = ensemble_mean_scores(exp, members, device, uncertainty=uncertainty) if ensemble_mean else None
    summary = summarise(members, mean_scores, missing, _open_store(exp.recorded_store()), uncertainty)
    write_outputs(exp, table, summary)
    print_ensemble_summary(summary, f"median test scores: {len(members)} members, {record['folds']} folds × "
                                    f"{len(record['seeds'])} seeds", console)
    (console or Console()).print(f"wrote {exp.url(ENSEMBLE_CSV)}, .parquet and {exp.url(SUMMARY_JSON)}")
    return summary


def _open_store(url: str | None):
    """The experiment's store for the summary's truth recovery (None when it is gone or unreadable)."""
    from rootzone.data.schema import open_store

    if not url:
        return None
    try:
        return open_store(url)
    except RootzoneError:
        return None
