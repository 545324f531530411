"""Ensembles on Ray (DESIGN §7): ``rootzone ensemble`` runs a Ray Tune grid over fold × seed, each trial one
:func:`rootzone.train.train_trial` run reporting every epoch with a checkpoint; Ray retries failed trials
(``--max-failures``) from their last checkpoint, ``--resume`` restores an interrupted experiment (finished
trials are not rerun), fractional GPUs let trials share a GPU, and the same code runs on a laptop (local Ray)
and a cluster (``ray job submit``, see ``ray_jobs/ensemble.py`` and docs/ray.md). ``rootzone tune`` searches
lr, hidden_size, seq_len and target weights with ASHA (see :mod:`rootzone.ensemble_tune`).

Experiment folder: see :mod:`rootzone.ensemble_store`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from rootzone.config import Config
from rootzone.ensemble_aggregate import (
    ensemble_mean_scores,
    member_metrics,
    metrics_table,
    print_ensemble_summary,
    summarise,
    write_outputs,
)
from rootzone.ensemble_store import ExperimentDir, check_same_experiment, experiment_record, load_record
from rootzone.errors import RootzoneError

TUNE_NAME = "ensemble"  # EXP/ray/ensemble = Tune's experiment folder


def run_ensemble(cfg: Config, out: str, folds: int, seeds: int, gpus_per_trial: float | None = None,
                 cpus_per_trial: float = 2, max_failures: int = 3, resume: bool = False,
                 address: str | None = None, ensemble_mean: bool = True, resource_check: bool = True,
                 console: Console | None = None) -> dict[str, Any]:
    """Train every (fold, seed) of the experiment in ``out`` on Ray, aggregate, and return the summary."""
    from ray import tune

    from rootzone import ensemble_ray

    console = console or Console()
    if seeds < 1:
        raise RootzoneError("--seeds must be >= 1")
    base = prepare_base(cfg, folds)
    exp = ExperimentDir.open(out)
    seed_list = list(range(seeds))
    record = experiment_record(base, folds, seed_list)
    if exp.exists("experiment.json"):
        if not resume:
            raise RootzoneError(f"{exp.url()} already holds an experiment; pass --resume to continue it, "
                                "or choose another --out")
        check_same_experiment(load_record(exp), record, exp.url("experiment.json"))
    elif resume:
        raise RootzoneError(f"nothing to resume: {exp.url('experiment.json')} does not exist")

    ensemble_ray.connect(address)
    gpus = ensemble_ray.default_gpus_per_trial() if gpus_per_trial is None else gpus_per_trial
    if resource_check:
        ensemble_ray.check_resources(gpus, cpus_per_trial)
    if not resume:
        exp.write_text(_json(record), "experiment.json")

    trainable = ensemble_ray.make_trainable(base.to_dict(), exp, gpus, cpus_per_trial)
    if resume and ensemble_ray.restorable(exp, TUNE_NAME):
        console.print(f"resuming {exp.url('ray', TUNE_NAME)} (finished trials are kept)")
        tuner = tune.Tuner.restore(exp.url("ray", TUNE_NAME), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"fold": tune.grid_search(list(range(folds))), "seed": tune.grid_search(seed_list)},
            tune_config=tune.TuneConfig(trial_dirname_creator=ensemble_ray.trial_dirname),
            run_config=ensemble_ray.run_config(exp, TUNE_NAME, max_failures),
        )
    t0 = time.perf_counter()
    tuner.fit()
    elapsed = time.perf_counter() - t0
    summary = aggregate(exp, ensemble_mean=ensemble_mean, console=console)
    summary["seconds"] = elapsed
    if not summary["missing"]:
        ensemble_ray.prune_checkpoints(exp, TUNE_NAME)
    else:
        raise RootzoneError(f"{len(summary['missing'])} of {folds * seeds} trials did not finish "
                            f"({', '.join(summary['missing'])}); see {exp.url('ray', TUNE_NAME)}, "
                            "then rerun with --resume")
    return summary


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
    from rootzone.data.folds import temporal_fold
    from rootzone.data.schema import open_store

    ds = open_store(cfg.store)
    temporal_fold(ds.indexes["time"], cfg.folds, 0, cfg.validation_years)


def aggregate(exp: ExperimentDir | str, ensemble_mean: bool = True, device: str = "cpu",
              console: Console | None = None) -> dict[str, Any]:
    """Collect every member's metrics.json into EXP/ensemble_metrics.csv|.parquet, score the ensemble mean,
    write EXP/summary.json and print the summary table."""
    exp = ExperimentDir.open(exp) if isinstance(exp, str) else exp
    record = load_record(exp)
    members, missing = member_metrics(exp, record["folds"], record["seeds"])
    if not members:
        raise RootzoneError(f"no finished trial in {exp.url('trials')}")
    table = metrics_table(members)
    mean_scores = ensemble_mean_scores(exp, record["store"], members, device) if ensemble_mean else None
    summary = summarise(members, mean_scores, missing)
    write_outputs(exp, table, summary)
    print_ensemble_summary(summary, f"median test scores: {len(members)} members, {record['folds']} folds × "
                                    f"{len(record['seeds'])} seeds", console)
    (console or Console()).print(f"wrote {exp.url('ensemble_metrics.csv')}, .parquet and {exp.url('summary.json')}")
    return summary


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=1)


# ---------------------------------------------------------------------------------------------- CLI
def add_ray_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="rootzone Zarr store (absolute path or URL every Ray node can read)")
    p.add_argument("--out", metavar="EXP", required=True, help="experiment folder: local path, file:// or s3:// URL")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial; fractions share a GPU (default 0.25 when the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-trial", type=float, default=2, help="CPUs per trial (default 2)")
    p.add_argument("--max-failures", type=int, default=3, help="retries per trial from its last checkpoint (default 3)")
    p.add_argument("--address", help="Ray cluster: 'auto', 'host:port' or 'ray://host:port' "
                                     "(default: the job's cluster under `ray job submit`, else a local one)")
    p.add_argument("--epochs", type=int, help="maximum epochs per trial")
    p.add_argument("--physics", help="auto | fused | compiled | eager")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--no-resource-check", action="store_true",
                   help="do not refuse per-trial resources larger than any current node (autoscaling clusters)")


def register(sub: argparse._SubParsersAction) -> None:
    from rootzone.cli import add_config_options
    from rootzone.ensemble_tune import register_tune

    p = sub.add_parser(
        "ensemble", help="train a fold × seed ensemble on Ray (local or cluster)",
        description="Train every (fold, seed) trial as a Ray Tune grid with retries, checkpoints and resume; "
                    "write EXP/trials/fold{f}_seed{s}/, EXP/ensemble_metrics.csv|.parquet and EXP/summary.json "
                    "(median test NSE/KGE of the members and of the ensemble mean).",
    )
    add_ray_options(p)
    p.add_argument("--folds", type=int, help="temporal folds k (default: config value, 5)")
    p.add_argument("--seeds", type=int, default=10, help="seeds per fold: 0..N-1 (default 10)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment in EXP")
    p.add_argument("--no-ensemble-mean", action="store_true",
                   help="skip scoring the ensemble mean prediction (members' metrics only)")
    add_config_options(p)
    p.set_defaults(func=run_ensemble_command)
    register_tune(sub)


def config_for(args: argparse.Namespace) -> Config:
    from rootzone.cli import config_from_args

    return config_from_args(args, store=args.store, folds=getattr(args, "folds", None), epochs=args.epochs,
                            physics=args.physics, device=args.device)


def run_ensemble_command(args: argparse.Namespace) -> None:
    cfg = config_for(args)
    run_ensemble(cfg, args.out, folds=args.folds or cfg.folds, seeds=args.seeds,
                 gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                 max_failures=args.max_failures, resume=args.resume, address=args.address,
                 ensemble_mean=not args.no_ensemble_mean, resource_check=not args.no_resource_check)
