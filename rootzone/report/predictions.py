"""Basin-chunk-streamed summaries of a prediction store for ``rootzone report`` (never all basins' series in
memory at once).

The *cross-validated ensemble series* of a basin is, on each day, the mean of the members whose test block
(metrics.json ``years.test``) holds that day: out-of-sample everywhere, NaN on days no member tests (and in
the spin-up days ``in_warmup``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from rootzone.data.schema import open_store
from rootzone.errors import RootzoneError
from rootzone.experiment import TrialResult
from rootzone.metrics import basin_metrics

DAILY = {"q": "q", "et": "et", "swe": "swe"}  # target -> prediction variable
SEASONAL_TARGETS = ("q", "et", "swe", "twsa")


@dataclass
class PredictionSummary:
    """Aggregates of a prediction store (basins in store order)."""

    basins: list[str]
    smax: np.ndarray  # [N] time mean (after spin-up) of the ensemble-mean S_max, mm
    smax_member_std: np.ndarray  # [N] std over members of each member's time-mean S_max, mm
    smax_month: np.ndarray  # [N, 12] S_max climatology by calendar month / basin mean, -
    seasonal: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # target -> obs/model [N, 12]
    ensemble_metrics: pd.DataFrame = field(default_factory=pd.DataFrame)  # basin, target, METRICS


def open_predictions(url: str) -> xr.Dataset:
    try:
        pred = xr.open_zarr(url, consolidated=None)
    except Exception as exc:  # zarr/xarray raise many kinds
        raise RootzoneError(f"cannot open predictions '{url}' ({type(exc).__name__}: {exc})") from None
    if not pred.attrs.get("prediction_complete"):
        raise RootzoneError(f"predictions '{url}' are incomplete; rerun `rootzone predict` to finish them")
    return pred


def member_test_masks(pred: xr.Dataset, trials: list[TrialResult]) -> np.ndarray:
    """[members, T] bool: the member's test years, outside the spin-up."""
    years = pd.DatetimeIndex(pred["time"].values).year
    by_name = {t.name: t for t in trials}
    masks = []
    for name in pred["member"].values:
        t = by_name.get(str(name))
        test_years = t.metrics.years.get("test", []) if t else []
        masks.append(np.isin(years, test_years))
    return np.array(masks) & ~pred["in_warmup"].values[None, :]


def cv_series(members: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """[M, B, T] member series and [M, T] test masks -> [B, T] mean over the members testing each day."""
    w = masks[:, None, :].astype(np.float64)
    total = np.nansum(members * w, axis=0)
    count = (np.isfinite(members) * w).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def monthly(values: np.ndarray, month_of_day: np.ndarray, n_months: int) -> np.ndarray:
    """[B, T] daily -> [B, n_months] means of months whose days are all finite (NaN otherwise)."""
    out = np.full((values.shape[0], n_months), np.nan)
    for m in range(n_months):
        day = month_of_day == m
        if day.any():
            block = values[:, day]
            out[:, m] = np.where(np.isfinite(block).all(axis=1), block.mean(axis=1), np.nan)
    return out


def climatology(values: np.ndarray, calendar_month: np.ndarray) -> np.ndarray:
    """[B, K] values with calendar month (1..12) of each column -> [B, 12] NaN-aware means."""
    out = np.full((values.shape[0], 12), np.nan)
    for m in range(1, 13):
        sel = values[:, calendar_month == m]
        if sel.size:
            with _quiet():
                out[:, m - 1] = np.nanmean(sel, axis=1)
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's all-NaN-slice warnings (NaN is the intended answer there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def summarise_predictions(pred: xr.Dataset, trials: list[TrialResult], chunk: int | None = None) -> PredictionSummary:
    """Stream over basin chunks of ``pred`` (and its source store's observations)."""
    obs_store = open_store(pred.attrs["source_store"])
    time = pd.DatetimeIndex(pred["time"].values)
    months = pd.DatetimeIndex(obs_store["month"].values)
    month_of_day = months.get_indexer(time.to_period("M").to_timestamp())
    masks = member_test_masks(pred, trials)
    spin = pred["in_warmup"].values
    chunk = chunk or int(pred.attrs.get("prediction_job", {}).get("chunk_basins", 256))
    targets = [t for t in SEASONAL_TARGETS if t in obs_store and ("tws" if t == "twsa" else DAILY[t]) in pred]
    smax, smax_std, smax_month, rows = [], [], [], []
    seasonal = {t: {"obs": [], "model": []} for t in targets}
    n = pred.sizes["basin"]
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        ids = [str(b) for b in pred["basin"].values[sl]]
        p = pred.isel(basin=sl)
        sm = p["smax_mean"].values[:, ~spin].astype(np.float64)
        with _quiet():
            smax.append(np.nanmean(sm, axis=1))
            smax_std.append(np.nanstd(np.nanmean(p["smax"].values[:, :, ~spin], axis=2), axis=0))
            clim = climatology(sm, time.month[~spin])
            smax_month.append(clim / np.nanmean(clim, axis=1, keepdims=True))
        o = obs_store.sel(basin=ids)
        for t in targets:
            if t == "twsa":
                model_m = monthly(cv_series(p["tws"].values, masks), month_of_day, len(months))
                obs_m = o["twsa"].values.astype(np.float64)
                valid = np.isfinite(model_m) & np.isfinite(obs_m)
                model_a = _centre(model_m, valid)
                obs_a = _centre(obs_m, valid)
                sim, ob, cal = model_a, obs_a, months.month
            else:
                sim = cv_series(p[DAILY[t]].values, masks)
                ob = o[t].values.astype(np.float64)
                valid = np.isfinite(sim) & np.isfinite(ob)
                sim, ob, cal = np.where(valid, sim, np.nan), np.where(valid, ob, np.nan), time.month
            seasonal[t]["model"].append(climatology(sim, cal))
            seasonal[t]["obs"].append(climatology(ob, cal))
            for i, b in enumerate(ids):
                rows.append({"basin": b, "target": t, **basin_metrics(sim[i], ob[i], anomaly=t == "twsa")})
    return PredictionSummary(
        basins=[str(b) for b in pred["basin"].values], smax=np.concatenate(smax),
        smax_member_std=np.concatenate(smax_std), smax_month=np.concatenate(smax_month),
        seasonal={t: {k: np.concatenate(v) for k, v in d.items()} for t, d in seasonal.items()},
        ensemble_metrics=pd.DataFrame(rows))


def _centre(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Anomalies about the mean over ``valid`` months, NaN elsewhere ([B, M])."""
    v = np.where(valid, values, np.nan)
    with _quiet():
        return v - np.nanmean(v, axis=1, keepdims=True)
