"""Aggregation of an ensemble experiment: every member's metrics.json into one table, the ensemble mean
prediction of each fold (mean over its seeds' best checkpoints) scored on the fold's test years, and a summary.

``EXP/ensemble_metrics.csv|.parquet``: one row per fold, seed, basin, split, target with the columns of
:data:`rootzone.metrics.METRICS`. ``EXP/summary.json``: median test NSE/KGE per target across members (each
member's median over basins) and for the ensemble mean (median over folds of its median over basins).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from rootzone.data import schema
from rootzone.evaluation import TWSA_PARTS, monthly_mean, score_basins, twsa_components
from rootzone.experiment import (
    BEST_PT,
    ENSEMBLE_CSV,
    ENSEMBLE_PARQUET,
    SUMMARY_JSON,
    TRIALS,
    ExperimentDir,
    Member,
    TrialResult,
    load_member,
    metrics_rows,
)
from rootzone.metrics import METRICS, median_metrics

COLUMNS = ["fold", "seed", "basin", "split", "target", *METRICS]


def metrics_table(trials: list[TrialResult]) -> pd.DataFrame:
    """``EXP/ensemble_metrics.csv``: :func:`rootzone.experiment.metrics_rows` without the member name."""
    return pd.DataFrame(metrics_rows(trials), columns=["member", *COLUMNS]).drop(columns="member")


def ensemble_mean_scores(exp: ExperimentDir, trials: list[TrialResult], device: str = "cpu",
                         chunk: int = 256) -> dict[int, dict[str, dict[str, dict]]]:
    """fold -> target -> basin -> metrics of the mean prediction of the fold's members on its test years."""
    from rootzone.data.folds import temporal_fold
    from rootzone.data.loader import StoreData
    from rootzone.data.schema import open_store

    store = exp.store
    out: dict[int, dict[str, dict[str, dict]]] = {}
    for fold in sorted({t.fold for t in trials}):
        built = []
        for t in sorted((t for t in trials if t.fold == fold), key=lambda t: t.seed):
            member = Member(t.name, t.fold, t.seed, exp.url(TRIALS, t.name, BEST_PT), t.metrics.best_validation_loss)
            lm = load_member(member, device, physics=None, store=store)  # the physics it was trained with
            ds = open_store(store)
            split = temporal_fold(ds.indexes["time"], lm.cfg.folds, lm.cfg.fold, lm.cfg.validation_years)
            data = StoreData(ds, lm.cfg.replace(device=device, progress=False), split, lm.normaliser)
            built.append((data, lm.model, torch.device(device)))
        out[fold] = _score_mean(built, chunk)
    return out


def _score_mean(built: list, chunk: int) -> dict[str, dict[str, dict]]:
    """Score the mean of the members' whole-record series on the test split as
    :func:`rootzone.evaluation.evaluate_record` scores one member (spun-up storages, no warm-up days)."""
    data0 = built[0][0]
    targets = [schema.target(t) for t in data0.targets]
    min_obs = getattr(data0.cfg, "min_obs", None)
    has_twsa = "twsa" in data0.targets
    per: dict[str, dict[str, dict]] = {t: {} for t in [*data0.targets, *(TWSA_PARTS if has_twsa else ())]}
    by_output = {t.output: t for t in targets}  # each model series once, even if two targets share it
    with torch.no_grad():
        for lo in range(0, data0.n_basins, chunk):
            basins = np.arange(lo, min(lo + chunk, data0.n_basins))
            sums: dict[str, np.ndarray] = {}
            for data, model, dev in built:
                batch = data.load(basins, 0, data.n_days).to(dev)
                o = model.run_record(batch.x_dynamic, batch.x_static, batch.forcing, data.cfg.spinup_cycles)[0]
                for name, t in by_output.items():
                    sums[name] = sums.get(name, 0.0) + t.model_series(o.buckets).double().cpu().numpy() / len(built)
            batch = batch.to(torch.device("cpu"))
            day_mask, month_mask = (m.numpy() for m in data0.masks(batch, "test", 0))
            ids = [str(data0.basin_ids[b]) for b in basins]
            sims = {}
            for t in targets:
                obs = batch.obs[t.name].double().numpy()
                sim = t.model_series(sums)
                if t.monthly:
                    sim = monthly_mean(sim, batch.day_month.numpy(), obs.shape[1])
                sims[t.name] = sim
                per[t.name].update(score_basins(sim, obs, t, month_mask if t.monthly else day_mask, basins=ids,
                                                min_obs=min_obs))
            if has_twsa:
                calendar = data0.months[batch.months].month.to_numpy()
                parts = twsa_components(sims["twsa"], batch.obs["twsa"].double().numpy(), calendar, month_mask, ids,
                                        min_obs)
                for name, scores in parts.items():
                    per[name].update(scores)
    return per


def summarise(members: list[TrialResult], mean_scores: dict | None, missing: list[str]) -> dict[str, Any]:
    """Median test NSE/KGE per target across members (and across folds for the ensemble mean)."""
    targets = sorted({t for m in members for t in m.metrics.targets("test")})
    from rootzone.report.ablation import ablation_summary

    summary: dict[str, Any] = {"members": {}, "ensemble_mean": {}, "n_members": len(members),
                               "trials": [m.name for m in sorted(members, key=lambda m: (m.fold, m.seed))],
                               "missing": missing}
    for t in targets:
        summary["members"][t] = {k: _nanmedian([m.metrics.median("test", t, k) for m in members
                                                if t in m.metrics.targets("test")]) for k in ("nse", "kge")}
        if mean_scores:
            per_fold = [median_metrics(scores[t]) for scores in mean_scores.values() if t in scores]
            summary["ensemble_mean"][t] = {k: _nanmedian([p[k] for p in per_fold]) for k in ("nse", "kge")}
    ablation = ablation_summary(members)  # hybrid vs LSTM: only when the members hold both kinds
    if ablation:
        summary["ablation"] = ablation
    return summary


def write_outputs(exp: ExperimentDir, table: pd.DataFrame, summary: dict[str, Any]) -> None:
    exp.write_text(table.to_csv(index=False), ENSEMBLE_CSV)
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    exp.write_bytes(buf.getvalue(), ENSEMBLE_PARQUET)
    exp.write_text(json.dumps(summary, indent=1, allow_nan=True), SUMMARY_JSON)


def print_ensemble_summary(summary: dict[str, Any], title: str, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=title)
    table.add_column("target")
    for col in ("members NSE", "members KGE", "ens. mean NSE", "ens. mean KGE"):
        table.add_column(col, justify="right")
    for t, m in summary["members"].items():
        e = summary["ensemble_mean"].get(t, {})
        table.add_row(t, *(f"{v:.3f}" for v in (m["nse"], m["kge"], e.get("nse", np.nan), e.get("kge", np.nan))))
    console.print(table)
    if summary.get("ablation"):
        abl = Table(title="hybrid vs LSTM: median over basins of test NSE (per basin: median over members)")
        for col in ("target", "hybrid", "LSTM", "hybrid - LSTM", "hybrid better"):
            abl.add_column(col, justify="right")
        for t, a in summary["ablation"].items():
            abl.add_row(t, f"{a['nse_hybrid']:.3f}", f"{a['nse_lstm']:.3f}", f"{a['diff_nse']:+.3f}",
                        f"{a['hybrid_better_nse']}/{a['basins']}")
        console.print(abl)
    if summary["missing"]:
        console.print(f"[yellow]missing trials ({len(summary['missing'])}): {', '.join(summary['missing'])}")


def _nanmedian(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmedian(arr)) if np.isfinite(arr).any() else float("nan")
