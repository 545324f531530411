"""Evaluation: run every basin's whole record in one pass (states spun up), score each split's days
(months for TWSA anomalies) per basin and target, and compare with the truth of a twin experiment."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from rich.console import Console
from rich.table import Table

from rootzone import loss
from rootzone.data import schema
from rootzone.data.folds import SPLITS
from rootzone.data.loader import StoreData
from rootzone.data.schema import Target
from rootzone.metrics import METRICS, basin_metrics, median_metrics
from rootzone.physics.equations import PARAM_NAMES


def monthly_mean(daily: np.ndarray, day_month: np.ndarray, n_months: int) -> np.ndarray:
    """Average daily values [B, T] into month slots [B, n_months] (float64); ``day_month`` [T] is each day's
    slot (-1: skip the day). A slot without days, or with any non-finite day, is NaN. The numpy twin of
    :func:`rootzone.loss.monthly_mean` (equal where every slot has days and every value is finite)."""
    daily = np.asarray(daily, dtype=np.float64)
    day_month = np.asarray(day_month)
    keep = (day_month >= 0) & (day_month < n_months)
    slots = day_month[keep]
    values = daily[:, keep]
    finite = np.isfinite(values)
    sums = np.zeros((daily.shape[0], n_months))
    bad = np.zeros((daily.shape[0], n_months))
    np.add.at(sums.T, slots, np.where(finite, values, 0.0).T)
    np.add.at(bad.T, slots, (~finite).T.astype(np.float64))
    counts = np.bincount(slots, minlength=n_months)[:n_months]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
    return np.where((counts > 0)[None, :] & (bad == 0), mean, np.nan)


def anomalies(sim: np.ndarray, obs: np.ndarray, valid: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-centre model ``sim`` [B, M] and observed ``obs`` [B, M] monthly values on their means over the
    same months: those ``valid`` ([B, M] or [M], default all) where both are finite. Returns (model anomaly,
    observed anomaly, used [B, M]); both anomalies are NaN where not used. The numpy twin of
    :func:`rootzone.loss.anomalies` (DESIGN §6: model and observation re-centred on the same valid months)."""
    sim = np.asarray(sim, dtype=np.float64)
    obs = np.asarray(obs, dtype=np.float64)
    used = np.isfinite(sim) & np.isfinite(obs)
    if valid is not None:
        used &= np.broadcast_to(np.asarray(valid, dtype=bool), obs.shape)
    n = np.maximum(used.sum(axis=1, keepdims=True), 1)
    sim_mean = np.where(used, sim, 0.0).sum(axis=1, keepdims=True) / n
    obs_mean = np.where(used, obs, 0.0).sum(axis=1, keepdims=True) / n
    return np.where(used, sim - sim_mean, np.nan), np.where(used, obs - obs_mean, np.nan), used


def score_basins(sim: np.ndarray, obs: np.ndarray, target: Target, valid: np.ndarray | None = None,
                 basins: Sequence[Hashable] | None = None) -> dict[Hashable, dict[str, float]]:
    """Metrics (:func:`rootzone.metrics.basin_metrics`) of every basin for one target.

    sim, obs: [B, N] at the target's cadence: days for a daily target (sim = the model series
    ``target.model_series(outputs)``), months for a monthly one (sim = the monthly means of the model series,
    e.g. :func:`monthly_mean`). valid: [B, N] or [N], which entries are scored (the split, past the warm-up;
    default all); entries where sim or obs is not finite are never scored. A monthly target is scored as
    anomalies: model and observation re-centred on their means over the same scored months (:func:`anomalies`).
    Returns {basins[i] (or i when ``basins`` is None): metrics}.
    """
    sim = np.asarray(sim, dtype=np.float64)
    obs = np.asarray(obs, dtype=np.float64)
    if sim.shape != obs.shape or sim.ndim != 2:
        raise ValueError(f"sim and obs must both be [B, N], got {sim.shape} and {obs.shape}")
    if target.monthly:
        sim, obs, _ = anomalies(sim, obs, valid)
    elif valid is not None:
        obs = np.where(np.broadcast_to(np.asarray(valid, dtype=bool), obs.shape), obs, np.nan)
    keys = range(len(sim)) if basins is None else basins
    if len(keys) != len(sim):
        raise ValueError(f"{len(keys)} basin ids for {len(sim)} basins")
    return {k: basin_metrics(sim[i], obs[i], anomaly=target.monthly) for i, k in enumerate(keys)}


@dataclass
class Record:
    """Whole-record results of all basins. scores[split][target] = {"median": {...}, "basins": {id: {...}}}."""

    scores: dict
    smax_mean: np.ndarray  # [n_basins] mean learned S_max over the record, mm
    param_mean: np.ndarray  # [n_basins, 8] mean of every learned parameter over the record


def evaluate_record(model, data: StoreData, device: torch.device, chunk: int = 256) -> Record:
    model.eval()
    warmup = data.cfg.warmup_days
    per: dict[str, dict[str, dict[str, dict[str, float]]]] = {s: {t: {} for t in data.targets} for s in SPLITS}
    param_mean = np.zeros((data.n_basins, len(PARAM_NAMES)))
    targets = [schema.target(t) for t in data.targets]
    with torch.no_grad():
        for lo in range(0, data.n_basins, chunk):
            basins = np.arange(lo, min(lo + chunk, data.n_basins))
            ids = [str(data.basin_ids[b]) for b in basins]
            batch = data.load(basins, 0, data.n_days).to(device)
            out = model(batch.x_dynamic, batch.x_static, batch.forcing)
            param_mean[basins] = out.params.mean(dim=1).double().cpu().numpy()
            sims = {}
            for t in targets:
                series = t.model_series(out.buckets).double()
                if t.monthly:
                    series = loss.monthly_mean(series, batch.day_month, batch.obs[t.name].shape[1])
                sims[t.name] = series.cpu().numpy()
            obs = {t.name: batch.obs[t.name].double().cpu().numpy() for t in targets}
            for split in SPLITS:
                day_mask, month_mask = (m.numpy() for m in data.masks(batch, split, warmup))
                for t in targets:
                    scored = month_mask if t.monthly else day_mask
                    per[split][t.name].update(score_basins(sims[t.name], obs[t.name], t, scored, basins=ids))
    scores = {s: {t: {"median": median_metrics(per[s][t]), "basins": per[s][t]} for t in data.targets}
              for s in SPLITS}
    return Record(scores=scores, smax_mean=param_mean[:, 0], param_mean=param_mean)


def truth_recovery(ds: xr.Dataset, record: Record) -> dict[str, float]:
    """Pearson r (and RMSE) between learned and true mean parameters across basins, where the store holds
    ``true_*`` variables (the demo twin experiment). Empty dict otherwise."""
    out: dict[str, float] = {}
    for i, name in enumerate(PARAM_NAMES):
        key = f"true_{name}"
        if key not in ds:
            continue
        truth = ds[key].mean("time").values.astype(np.float64)
        learned = record.param_mean[:, i]
        if len(truth) > 2 and np.std(truth) > 0 and np.std(learned) > 0:
            out[f"{name}_pearson_r"] = float(np.corrcoef(truth, learned)[0, 1])
        out[f"{name}_rmse"] = float(np.sqrt(np.mean((truth - learned) ** 2)))
    return out


def print_summary(metrics: dict, title: str, split: str = "test", console: Console | None = None) -> None:
    """Median metrics of ``split`` per target as a table (plus S_max recovery for twin experiments)."""
    console = console or Console()
    table = Table(title=title)
    table.add_column("target")
    for m in METRICS:
        table.add_column(m.upper() if m in ("nse", "kge", "rmse") else m, justify="right")
    for target, entry in metrics["splits"][split].items():
        table.add_row(target, *(f"{entry['median'][m]:.3f}" for m in METRICS))
    console.print(table)
    rec = metrics.get("truth_recovery")
    if rec and "smax_pearson_r" in rec:
        console.print(f"twin experiment: learned vs true mean S_max per basin: Pearson r = "
                      f"{rec['smax_pearson_r']:.3f}, RMSE = {rec['smax_rmse']:.1f} mm")
