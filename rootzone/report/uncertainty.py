"""Is the ensemble calibrated? Probabilistic scores of the cross-validated ensemble for ``rootzone report``.

Which members and days are scored: on each basin-day the ensemble is the members that did *not* train on it,
i.e. whose test years hold the day (temporal folds) and whose held-out basins hold the basin (spatial and
spatio-temporal folds); spin-up days (``in_warmup``) are left out. With ``predict --members all`` (folds ×
seeds) that is the seeds of the fold testing the basin-day; with the default ``best`` (one member per fold) it
is a single member, whose CRPS is its absolute error and whose interval is a point (coverage then ~0; the
table says how many members each score used). Daily targets (Q, ET, SWE) are scored against the store's
observations: per basin and target the mean CRPS, the coverage of the members' 5-95 % interval, the spread
(root mean ensemble variance) and the RMSE of the ensemble mean (:func:`rootzone.metrics.ensemble_scores`).
TWSA is an anomaly target (each member is re-centred on its own months) and is not scored here.

Reading them: coverage of the 90 % interval near 0.9 and spread/RMSE near 1 mean a calibrated ensemble; lower
values mean an over-confident ensemble (the members agree more than they are right), as is usual for a seed
ensemble, which samples training noise but neither forcing nor observation error.

Predictive interval (:mod:`rootzone.calibration`): the same test basin-days and members, each member's
simulation plus its residual quantiles from its validation days/basins (never test data); per basin and
target its exact CRPS, the coverage and mean width of its 5-95 % interval (:data:`PREDICTIVE_SCORES` columns).

Outputs: ``uncertainty.csv`` (basin, target, :data:`rootzone.metrics.ENSEMBLE_SCORES`, predictive scores),
``spread_skill.png``
and an HTML section with the medians per target.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from rootzone.calibration import PREDICTIVE_SCORES, member_residual_quantiles, predictive_scores  # noqa: E402
from rootzone.data.schema import TARGETS, open_store  # noqa: E402
from rootzone.experiment import TrialResult  # noqa: E402
from rootzone.metrics import ENSEMBLE_SCORES, ensemble_scores  # noqa: E402
from rootzone.report.predictions import (  # noqa: E402
    member_test_basins,
    member_test_masks,
    member_validation_basins,
    member_validation_masks,
)
from rootzone.report.tables import spreadsheet_safe  # noqa: E402
from rootzone.safety import atomic_write_text  # noqa: E402

UNCERTAINTY_CSV = "uncertainty.csv"
SPREAD_SKILL_PNG = "spread_skill.png"


def uncertainty_table(pred: xr.Dataset, trials: list[TrialResult], chunk: int = 64) -> pd.DataFrame:
    """One row per basin and daily target: :func:`rootzone.metrics.ensemble_scores` of the members that held
    out each basin-day (the module docstring says which), streamed over basin chunks."""
    store = open_store(pred.attrs["source_store"])
    days = member_test_masks(pred, trials)  # [M, T]
    held = member_test_basins(pred, trials)  # [M, N]
    targets = [t for t in TARGETS if not t.monthly and t.name in store and t.output in pred]
    rows = []
    n = pred.sizes["basin"]
    vdays, vbasins = member_validation_masks(pred, trials), member_validation_basins(pred, trials)
    ids_all = [str(b) for b in pred["basin"].values]
    rq = {t.name: member_residual_quantiles(
        lambda lo, hi, t=t: pred[t.output].isel(basin=slice(lo, hi)).values.astype(np.float64),
        lambda lo, hi, t=t: store[t.name].sel(basin=ids_all[lo:hi]).values.astype(np.float64),
        n, vdays, vbasins, chunk) for t in targets}
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        ids = [str(b) for b in pred["basin"].values[sl]]
        mask = days[:, None, :] & held[:, sl, None]  # [M, B, T]
        obs = store.sel(basin=ids)
        for t in targets:
            x = np.where(mask, pred[t.output].isel(basin=sl).values.astype(np.float64), np.nan)
            y = obs[t.name].values.astype(np.float64)
            for i, b in enumerate(ids):
                rows.append({"basin": b, "target": t.name, **ensemble_scores(x[:, i], y[i]),
                             **predictive_scores(x[:, i], rq[t.name][:, lo + i], y[i])})
    return pd.DataFrame(rows, columns=["basin", "target", *ENSEMBLE_SCORES, *PREDICTIVE_SCORES])


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per target: median over basins of CRPS, spread/RMSE; coverage pooled over every scored basin-day; the
    mean members per scored day and the scored basin-days."""
    rows = {}
    for t, g in table.dropna(subset=["crps"]).groupby("target"):
        w = g["n_scored"].to_numpy(dtype=np.float64)
        rows[t] = {"median CRPS": g["crps"].median(), "coverage 90 %": float(np.sum(g["coverage90"] * w) / w.sum()),
                   "median spread/RMSE": g["spread_skill"].median(),
                   "members per day": float(np.sum(g["members"] * w) / w.sum()), "basin-days": int(w.sum())}
        if "crps_predictive" in g and g["crps_predictive"].notna().any():
            p = g.dropna(subset=["crps_predictive"])
            wp = p["n_scored"].to_numpy(dtype=np.float64)
            rows[t].update({"median CRPS (predictive)": p["crps_predictive"].median(),
                            "coverage 90 % (predictive)": float(np.sum(p["coverage90_predictive"] * wp) / wp.sum())})
    return pd.DataFrame.from_dict(rows, orient="index")


def spread_skill_figure(path: Path, table: pd.DataFrame) -> Path:
    """Left: per basin, spread (root mean ensemble variance) against the RMSE of the ensemble mean, per target
    (on the 1:1 line a calibrated spread); middle: the coverage of the members' 90 % interval per basin and
    target; right: the coverage of the predictive 90 % interval (:mod:`rootzone.calibration`)."""
    ok = table.dropna(subset=["crps"])
    targets = list(dict.fromkeys(ok["target"]))
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.5))
    for t in targets:
        g = ok[ok["target"] == t]
        scale = max(float(g["rmse_mean"].max()), 1e-12)
        a.scatter(g["rmse_mean"] / scale, g["spread"] / scale, s=14, alpha=0.7, label=t)
    a.plot([0, 1], [0, 1], "k--", lw=1, label="1:1 (calibrated)")
    a.set_xlabel("RMSE of the ensemble mean (÷ largest basin RMSE of the target)")
    a.set_ylabel("ensemble spread (same scale)")
    a.set_title("spread-skill per basin")
    a.legend(fontsize=8)
    _coverage_panel(b, ok, targets, "coverage90", "members' 90 % interval: coverage per basin")
    _coverage_panel(c, ok, targets, "coverage90_predictive", "predictive 90 % interval (members + validation "
                    "residuals)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _coverage_panel(ax, table: pd.DataFrame, targets: list[str], column: str, title: str) -> None:
    """Box per target of the per-basin coverage in ``column`` (skipped when absent), with the nominal 0.9 and
    the 0.8-0.98 band."""
    data = [table.loc[table["target"] == t, column].dropna().to_numpy() if column in table else np.empty(0)
            for t in targets]
    if any(len(d) for d in data):
        ax.boxplot(data, tick_labels=targets)
    ax.axhline(0.9, color="k", ls="--", lw=1)
    ax.axhspan(0.8, 0.98, color="green", alpha=0.08)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("fraction of observations inside the 5-95 % interval")
    ax.set_title(title)


def add_uncertainty(out: Path, pred: xr.Dataset | None, trials: list[TrialResult]) -> tuple[
        list[tuple[str, str]], list[str], list[str], list[str]]:
    """Write ``uncertainty.csv`` and ``spread_skill.png`` into the report folder ``out`` (with predictions).
    Returns (figures [(file, caption)], tables, HTML parts, skipped lines) for the index."""
    if pred is None:
        return [], [], [], ["ensemble calibration (CRPS, 90 % interval coverage, spread-skill): pass --predictions"]
    table = uncertainty_table(pred, trials)
    if table["crps"].notna().sum() == 0:
        return [], [], [], ["ensemble calibration: no basin-day has an observation and a member that held it out"]
    atomic_write_text(str(out / UNCERTAINTY_CSV), spreadsheet_safe(table).to_csv(index=False))
    spread_skill_figure(out / SPREAD_SKILL_PNG, table)
    med = summary(table)
    caption = ("Spread-skill and 90 % interval coverage of the cross-validated ensemble (members that held out "
               "each basin-day; spin-up days excluded). Points below the 1:1 line and coverage under 0.9 mean an "
               "over-confident ensemble.")
    part = ("<h2>Ensemble calibration (cross-validated members, test days)</h2><p>On each basin-day the ensemble "
            "is the members that did not train on it (their test years and held-out basins); daily targets "
            "only. CRPS in the target's units (lower is better; one member: the absolute error); coverage near "
            "0.9 and spread/RMSE near 1 mean a calibrated ensemble. The predictive columns score the calibrated "
            "predictive distribution: each member's simulation plus its residuals on its validation data "
            "(square-root space; rootzone.calibration), which includes the error of the model, not only "
            "the disagreement of the members.</p>" + med.round(3).to_html())
    return [(SPREAD_SKILL_PNG, caption)], [UNCERTAINTY_CSV], [part], []
