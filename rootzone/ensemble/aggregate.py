"""Aggregation of an ensemble experiment: every member's metrics.json into one table, the ensemble mean
prediction of each fold (mean over its seeds' best checkpoints) scored on the fold's test years, and a summary.

``EXP/ensemble_metrics.csv|.parquet``: one row per fold, seed, basin, split, target with the columns of
:data:`rootzone.metrics.METRICS`. ``EXP/summary.json``: median test NSE/KGE per target across members (each
member's median over basins) and for the ensemble mean (median over folds of its median over basins), the
cross-validation scheme (``cv``), for twin stores the S_max recovery of each basin from the members that held
it out (``truth_recovery_heldout``), and ``uncertainty``: CRPS, 90 % interval coverage and spread/RMSE of each
fold's seeds on that fold's test days and basins (daily targets; the seeds of one fold are the only members
that never trained on those days).
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

from rootzone.calibration import ResidualPool, classes, predictive_scores, residuals
from rootzone.data import schema
from rootzone.evaluation import TWSA_PARTS, monthly_mean, score_basins, smax_recovery_text, twsa_components
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
from rootzone.metrics import METRICS, ensemble_scores, median_metrics

COLUMNS = ["fold", "seed", "basin", "split", "target", *METRICS, "cv"]


def metrics_table(trials: list[TrialResult]) -> pd.DataFrame:
    """``EXP/ensemble_metrics.csv``: :func:`rootzone.experiment.metrics_rows` without the member name."""
    return pd.DataFrame(metrics_rows(trials), columns=["member", *COLUMNS]).drop(columns="member")


def ensemble_mean_scores(exp: ExperimentDir, trials: list[TrialResult], device: str = "cpu",
                         chunk: int = 256, uncertainty: dict | None = None) -> dict[int, dict[str, dict[str, dict]]]:
    """fold -> target -> basin -> metrics of the mean prediction of the fold's members on its test years (and
    test basins). ``uncertainty`` (a dict, filled when given): fold -> daily target -> basin ->
    :func:`rootzone.metrics.ensemble_scores` of the fold's members (its seeds) on the same test days."""
    from rootzone.data.folds import cv_fold
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
            split = cv_fold(ds, lm.cfg)
            data = StoreData(ds, lm.cfg.replace(device=device, progress=False), split, lm.normaliser)
            built.append((data, lm.model, torch.device(device)))
        probabilistic: dict[str, dict] = {}
        out[fold] = _score_mean(built, chunk, probabilistic)
        if uncertainty is not None:
            uncertainty[fold] = probabilistic
    return out


def _score_mean(built: list, chunk: int, probabilistic: dict | None = None) -> dict[str, dict[str, dict]]:
    """Score the mean of the members' whole-record series on the test split as
    :func:`rootzone.evaluation.evaluate_record` scores one member (spun-up storages, no warm-up days);
    ``probabilistic`` (filled when given): daily target -> basin -> ensemble scores of the members."""
    data0 = built[0][0]
    targets = [schema.target(t) for t in data0.targets]
    rq = _residual_quantiles(built, targets, chunk) if probabilistic is not None else {}
    min_obs = getattr(data0.cfg, "min_obs", None)
    has_twsa = "twsa" in data0.targets
    per: dict[str, dict[str, dict]] = {t: {} for t in [*data0.targets, *(TWSA_PARTS if has_twsa else ())]}
    by_output = {t.output: t for t in targets}  # each model series once, even if two targets share it
    with torch.no_grad():
        for lo in range(0, data0.n_basins, chunk):
            basins = np.arange(lo, min(lo + chunk, data0.n_basins))
            sums: dict[str, np.ndarray] = {}
            each: dict[str, list[np.ndarray]] = {}
            for data, model, dev in built:
                batch = data.load(basins, 0, data.n_days).to(dev)
                o = model.run_record(batch.x_dynamic, batch.x_static, batch.forcing, data.cfg.spinup_cycles)[0]
                for name, t in by_output.items():
                    series = t.model_series(o.buckets).double().cpu().numpy()
                    sums[name] = sums.get(name, 0.0) + series / len(built)
                    if probabilistic is not None and not t.monthly:
                        each.setdefault(name, []).append(series)
            batch = batch.to(torch.device("cpu"))
            day_mask, month_mask = (m.numpy() for m in data0.masks(batch, "test", 0))
            keep = data0.split.basin_mask("test", data0.n_basins)[basins]  # spatial folds: held-out basins
            if not keep.any():
                continue
            ids = [str(data0.basin_ids[b]) for b in basins[keep]]
            sims = {}
            for t in targets:
                obs = batch.obs[t.name].double().numpy()[keep]
                sim = t.model_series(sums)
                if t.monthly:
                    sim = monthly_mean(sim, batch.day_month.numpy(), batch.obs[t.name].shape[1])
                sim = sims[t.name] = sim[keep]
                per[t.name].update(score_basins(sim, obs, t, month_mask if t.monthly else day_mask, basins=ids,
                                                min_obs=min_obs))
                if probabilistic is not None and not t.monthly:
                    x = np.stack(each[t.output])[:, keep]
                    for i, b in enumerate(ids):
                        probabilistic.setdefault(t.name, {})[b] = {
                            **ensemble_scores(x[:, i], obs[i], day_mask),
                            **predictive_scores(x[:, i], rq[t.name][:, basins[keep][i]], obs[i], day_mask)}
            if has_twsa:
                calendar = data0.months[batch.months].month.to_numpy()
                parts = twsa_components(sims["twsa"], batch.obs["twsa"].double().numpy()[keep], calendar, month_mask,
                                        ids, min_obs)
                for name, scores in parts.items():
                    per[name].update(scores)
    return per


def _residual_quantiles(built: list, targets: list, chunk: int) -> dict[str, np.ndarray]:
    """Daily target -> [members, N, classes, K] residual quantiles of each member on its validation days and basins
    (:func:`rootzone.calibration.member_residual_quantiles`; a pass of the members over the whole record)."""
    data0 = built[0][0]
    daily = [t for t in targets if not t.monthly]
    pools = {t.name: [ResidualPool(data0.n_basins) for _ in built] for t in daily}
    with torch.no_grad():
        for lo in range(0, data0.n_basins, chunk):
            basins = np.arange(lo, min(lo + chunk, data0.n_basins))
            for m, (data, model, dev) in enumerate(built):
                batch = data.load(basins, 0, data.n_days).to(dev)
                o = model.run_record(batch.x_dynamic, batch.x_static, batch.forcing, data.cfg.spinup_cycles)[0]
                batch = batch.to(torch.device("cpu"))
                days = data.masks(batch, "validation", 0)[0].numpy()
                held = data.split.basin_mask("validation", data.n_basins)[basins]
                for t in daily:
                    sim = t.model_series(o.buckets).double().cpu().numpy()
                    obs = batch.obs[t.name].double().numpy()
                    pools[t.name][m].add(lo, residuals(sim, obs, days[None, :] & held[:, None]), classes(sim))
    return {name: np.stack([p.quantiles() for p in ps]) for name, ps in pools.items()}


def heldout_smax(members: list[TrialResult]) -> dict[str, float]:
    """Per basin, the mean S_max (metrics.json ``smax_mean``) over the members that held it out (their test
    split holds it: every member for temporal folds, the folds whose test basins it is for spatial ones)."""
    sums: dict[str, list[float]] = {}
    for m in members:
        held = m.metrics.cv.get("basins", {}).get("test") if m.metrics.scheme != "temporal" else None
        for b, v in m.metrics.smax_mean.items():
            if held is None or b in held:
                sums.setdefault(b, []).append(float(v))
    return {b: float(np.mean(v)) for b, v in sums.items()}


def heldout_recovery(members: list[TrialResult], store) -> dict[str, float] | None:
    """Truth recovery (:func:`rootzone.evaluation.recovery_figures`) of :func:`heldout_smax` against the twin
    store's true S_max; None without ``true_smax``. For spatial folds this is the ungauged figure: every basin's
    S_max comes from members that never saw it."""
    from rootzone.evaluation import recovery_figures

    if store is None or "true_smax" not in store:
        return None
    learned = heldout_smax(members)
    ids = [str(b) for b in store["basin"].values if str(b) in learned]
    if not ids:
        return None
    truth = store["true_smax"].sel(basin=ids).mean("time").values.astype(np.float64)
    out = recovery_figures("smax", truth, np.array([learned[b] for b in ids]))
    out["basins"] = len(ids)
    return out


def uncertainty_summary(uncertainty: dict) -> dict[str, dict[str, float]]:
    """Per daily target, over the folds' test basin-days (each scored by the seeds of the fold testing it):
    median CRPS and spread/RMSE over basins, coverage of the 90 % interval pooled over scored days, members
    per day and scored basin-days."""
    out = {}
    targets = sorted({t for per in uncertainty.values() for t in per})
    for t in targets:
        rows = [s for per in uncertainty.values() for s in per.get(t, {}).values() if s["n_scored"] > 0]
        if not rows:
            continue
        w = np.array([r["n_scored"] for r in rows], dtype=np.float64)
        out[t] = {"crps_median": _nanmedian([r["crps"] for r in rows]),
                  "coverage90": float(np.sum([r["coverage90"] for r in rows] * w) / w.sum()),
                  "spread_skill_median": _nanmedian([r["spread_skill"] for r in rows]),
                  "members_per_day": float(np.sum([r["members"] for r in rows] * w) / w.sum()),
                  "basin_days": int(w.sum())}
        pred = [r for r in rows if np.isfinite(r.get("crps_predictive", np.nan))]
        if pred:  # the calibrated predictive distribution (rootzone.calibration)
            wp = np.array([r["n_scored"] for r in pred], dtype=np.float64)
            out[t].update(crps_predictive_median=_nanmedian([r["crps_predictive"] for r in pred]),
                          coverage90_predictive=float(np.sum([r["coverage90_predictive"] for r in pred] * wp)
                                                      / wp.sum()),
                          width90_predictive_median=_nanmedian([r["width90_predictive"] for r in pred]))
    return out


def summarise(members: list[TrialResult], mean_scores: dict | None, missing: list[str],
              store=None, uncertainty: dict | None = None) -> dict[str, Any]:
    """Median test NSE/KGE per target across members (and across folds for the ensemble mean), the
    cross-validation scheme(s) that produced them and, for a twin store, the S_max recovery from the members
    that held each basin out (``truth_recovery_heldout``)."""
    targets = sorted({t for m in members for t in m.metrics.targets("test")})
    from rootzone.report.ablation import ablation_summary

    schemes = sorted({m.metrics.scheme for m in members})
    summary: dict[str, Any] = {"cv": schemes[0] if len(schemes) == 1 else schemes,
                               "members": {}, "ensemble_mean": {}, "n_members": len(members),
                               "trials": [m.name for m in sorted(members, key=lambda m: (m.fold, m.seed))],
                               "missing": missing}
    recovery = heldout_recovery(members, store)
    if recovery:
        summary["truth_recovery_heldout"] = recovery
    if uncertainty:
        summary["uncertainty"] = uncertainty_summary(uncertainty)
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
    table = Table(title=f"{title} ({summary.get('cv', 'temporal')} cross-validation)")
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
    rec = summary.get("truth_recovery_heldout")
    if rec and "smax_rmse" in rec:
        console.print(f"twin experiment, S_max of each basin from the members that held it out ({rec['basins']} "
                      f"basins): {smax_recovery_text(rec)}")
    for t, u in summary.get("uncertainty", {}).items():
        console.print(f"ensemble on test days, {t}: CRPS {u['crps_median']:.3g} (median over basins), 90 % interval "
                      f"coverage {u['coverage90']:.2f}, spread/RMSE {u['spread_skill_median']:.2f}, "
                      f"{u['members_per_day']:.1f} members per day")
        if "coverage90_predictive" in u:
            console.print(f"  predictive (members + validation residuals), {t}: CRPS {u['crps_predictive_median']:.3g} "
                          f"(median over basins), 90 % interval coverage {u['coverage90_predictive']:.2f}")
    if summary["missing"]:
        console.print(f"[yellow]missing trials ({len(summary['missing'])}): {', '.join(summary['missing'])}")


def _nanmedian(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmedian(arr)) if np.isfinite(arr).any() else float("nan")
