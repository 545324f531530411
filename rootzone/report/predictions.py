"""Basin-chunk-streamed summaries of a prediction store for ``rootzone report`` (never all basins' series in
memory at once).

The *cross-validated ensemble series* of a basin is, on each day, the mean of the members whose test block
(metrics.json ``years.test``) holds that day and, for spatial schemes, whose held-out basins
(``cv.basins.test``) hold that basin: out-of-sample everywhere, NaN on days no member tests (and in
the spin-up days ``in_warmup``). A monthly target (TWSA) is stitched from anomalies, not storages: each
member's monthly model series and the observation are re-centred over that member's own test months (as
:mod:`rootzone.evaluation` scores the test split), then the anomalies of the members testing a month are
averaged (:func:`cv_anomalies`), so level offsets between fold models never become anomalies.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from rootzone.data.schema import TARGETS, open_store
from rootzone.errors import RootzoneError
from rootzone.evaluation import anomalies, monthly_mean, score_basins
from rootzone.experiment import TrialResult


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


def member_split_basins(pred: xr.Dataset, trials: list[TrialResult], split: str) -> np.ndarray:
    """[members, N] bool: the basins of each member's ``split`` ("test": the basins it held out; "validation":
    its early-stopping basins), from metrics.json ``cv.basins`` for spatial schemes; every basin for temporal
    folds, whose members hold out years, not basins. Members without a finished trial: none."""
    ids = [str(b) for b in pred["basin"].values]
    by_name = {t.name: t for t in trials}
    rows = []
    for name in pred["member"].values:
        t = by_name.get(str(name))
        if t is None or t.metrics.scheme == "temporal":
            rows.append(np.full(len(ids), t is not None))
        else:
            held = set(t.metrics.cv.get("basins", {}).get(split, []))
            rows.append(np.array([b in held for b in ids]))
    return np.array(rows).reshape(len(rows), len(ids))


def member_test_basins(pred: xr.Dataset, trials: list[TrialResult]) -> np.ndarray:
    """[members, N] bool: the basins each member held out (:func:`member_split_basins`)."""
    return member_split_basins(pred, trials, "test")


def member_validation_masks(pred: xr.Dataset, trials: list[TrialResult]) -> np.ndarray:
    """[members, T] bool: the member's validation years (early stopping), outside the spin-up."""
    years = pd.DatetimeIndex(pred["time"].values).year
    by_name = {t.name: t for t in trials}
    masks = [np.isin(years, by_name[str(n)].metrics.years.get("validation", []) if str(n) in by_name else [])
             for n in pred["member"].values]
    return np.array(masks).reshape(len(masks), -1) & ~pred["in_warmup"].values[None, :]


def member_validation_basins(pred: xr.Dataset, trials: list[TrialResult]) -> np.ndarray:
    """[members, N] bool: each member's validation basins (:func:`member_split_basins`)."""
    return member_split_basins(pred, trials, "validation")


def cv_series(members: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """[M, B, T] member series and [M, T] (or per basin [M, B, T]) test masks -> [B, T] mean over the members
    testing each day."""
    w = (masks[:, None, :] if masks.ndim == 2 else masks).astype(np.float64)
    total = np.nansum(members * w, axis=0)
    count = (np.isfinite(members) * w).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def month_masks(masks: np.ndarray, month_of_day: np.ndarray, n_months: int) -> np.ndarray:
    """[members, T] day masks -> [members, n_months]: months with days, every one of them in the mask."""
    keep = (month_of_day >= 0) & (month_of_day < n_months)
    slots = month_of_day[keep]
    days = np.bincount(slots, minlength=n_months)[:n_months]
    out = np.stack([np.bincount(slots, weights=m[keep].astype(np.float64), minlength=n_months)[:n_months]
                    for m in np.asarray(masks, dtype=bool)]) if len(masks) else np.zeros((0, n_months))
    return (days > 0)[None, :] & (out == days[None, :])


def cv_anomalies(members: np.ndarray, obs: np.ndarray, month_masks: np.ndarray, month_of_day: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Cross-validated anomalies of a monthly target: [M, B, T] daily member series (e.g. TWS), [B, K]
    observed monthly values and [M, K] (or per basin [M, B, K]) each member's test months -> (model, observed)
    anomalies [B, K].

    Each member's monthly means and the observation are re-centred over the member's own test months where
    both are finite (:func:`rootzone.evaluation.anomalies`); a month is the mean of the anomalies of the
    members testing it, NaN where none does."""
    obs = np.asarray(obs, dtype=np.float64)
    n_months = obs.shape[1]
    sim_sum, obs_sum = np.zeros_like(obs), np.zeros_like(obs)
    count = np.zeros(obs.shape)
    for series, mask in zip(members, month_masks, strict=True):
        sim_a, obs_a, used = anomalies(monthly_mean(series, month_of_day, n_months), obs, mask)
        sim_sum += np.where(used, sim_a, 0.0)
        obs_sum += np.where(used, obs_a, 0.0)
        count += used
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, sim_sum / count, np.nan), np.where(count > 0, obs_sum / count, np.nan)


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
    held = member_test_basins(pred, trials)  # [M, N]: spatial members test only the basins they held out
    spin = pred["in_warmup"].values
    chunk = chunk or int(pred.attrs.get("prediction_job", {}).get("chunk_basins", 256))
    month_test = month_masks(masks, month_of_day, len(months))
    targets = [t for t in TARGETS if t.name in obs_store and t.output in pred]
    smax, smax_std, smax_month, rows = [], [], [], []
    seasonal = {t.name: {"obs": [], "model": []} for t in targets}
    n = pred.sizes["basin"]
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        ids = [str(b) for b in pred["basin"].values[sl]]
        p = pred.isel(basin=sl)
        if "smax_mean" in p:
            sm = p["smax_mean"].values[:, ~spin].astype(np.float64)
            members_smax = p["smax"].values[:, :, ~spin]
        else:  # plain LSTM members only: no S_max (NaN, the report skips its figures)
            sm = np.full((len(ids), int((~spin).sum())), np.nan)
            members_smax = sm[None]
        with _quiet():
            smax.append(np.nanmean(sm, axis=1))
            smax_std.append(np.nanstd(np.nanmean(members_smax, axis=2), axis=0))
            clim = climatology(sm, time.month[~spin])
            smax_month.append(clim / np.nanmean(clim, axis=1, keepdims=True))
        o = obs_store.sel(basin=ids)
        h = held[:, sl]
        day_b = masks[:, None, :] & h[:, :, None]  # [M, B, T]
        month_b = month_test[:, None, :] & h[:, :, None]
        for t in targets:
            ob = o[t.name].values.astype(np.float64)
            if t.monthly:  # stitched anomalies, centred already: score_basins' re-centring changes nothing
                sim, ob = cv_anomalies(p[t.output].values, ob, month_b, month_of_day)
                scores, cal = score_basins(sim, ob, t, basins=ids), months.month
            else:  # scored on the days some member tests (a non-finite simulation there fails the basin)
                sim = cv_series(p[t.output].values, day_b)
                scores, cal = score_basins(sim, ob, t, day_b.any(axis=0), basins=ids), time.month
            shown = np.isfinite(sim) & np.isfinite(ob)
            seasonal[t.name]["model"].append(climatology(np.where(shown, sim, np.nan), cal))
            seasonal[t.name]["obs"].append(climatology(np.where(shown, ob, np.nan), cal))
            rows.extend({"basin": b, "target": t.name, **m} for b, m in scores.items())
    return PredictionSummary(
        basins=[str(b) for b in pred["basin"].values], smax=np.concatenate(smax),
        smax_member_std=np.concatenate(smax_std), smax_month=np.concatenate(smax_month),
        seasonal={t: {k: np.concatenate(v) for k, v in d.items()} for t, d in seasonal.items()},
        ensemble_metrics=pd.DataFrame(rows))

