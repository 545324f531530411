"""Evaluation: run every basin's whole record in one pass from spun-up storages
(:meth:`rootzone.model.HybridModel.run_record`: the first year cycled until the storages change by < 1 mm),
score each split's days (months for TWSA anomalies) per basin and target, and compare with the truth of a twin
experiment. TWSA is also scored on its seasonal cycle (``twsa_seasonal``: the 12-month climatology of the
anomalies) and on its interannual anomalies (``twsa_interannual``: anomalies minus that climatology).

:func:`record_pass` is the no-grad whole-record pass that training keeps: the daily storages of every basin
(3 float32 per basin-day on the CPU: 10k basins × 15k days = 1.8 GB) and the TWSA reference levels.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

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


def _metrics(sim: np.ndarray, obs: np.ndarray, anomaly: bool, min_obs: int | None) -> dict[str, float]:
    if min_obs is not None and _TAKES_MIN_OBS:
        return basin_metrics(sim, obs, anomaly=anomaly, min_obs=min_obs)
    return basin_metrics(sim, obs, anomaly=anomaly)


_TAKES_MIN_OBS = "min_obs" in inspect.signature(basin_metrics).parameters


def score_basins(sim: np.ndarray, obs: np.ndarray, target: Target, valid: np.ndarray | None = None,
                 basins: Sequence[Hashable] | None = None, min_obs: int | None = None
                 ) -> dict[Hashable, dict[str, float]]:
    """Metrics (:func:`rootzone.metrics.basin_metrics`) of every basin for one target.

    sim, obs: [B, N] at the target's cadence: days for a daily target (sim = the model series
    ``target.model_series(outputs)``), months for a monthly one (sim = the monthly means of the model series,
    e.g. :func:`monthly_mean`). valid: [B, N] or [N], which entries are scored (the split, past the warm-up;
    default all); entries where sim or obs is not finite are never scored. A monthly target is scored as
    anomalies: model and observation re-centred on their means over the same scored months (:func:`anomalies`).
    min_obs: passed to :func:`rootzone.metrics.basin_metrics` (when it takes it).
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
    return {k: _metrics(sim[i], obs[i], target.monthly, min_obs) for i, k in enumerate(keys)}


TWSA_PARTS = ("twsa_seasonal", "twsa_interannual")


def twsa_components(sim: np.ndarray, obs: np.ndarray, calendar_month: np.ndarray, valid: np.ndarray | None = None,
                    basins: Sequence[Hashable] | None = None, min_obs: int | None = None
                    ) -> dict[str, dict[Hashable, dict[str, float]]]:
    """TWSA skill on the seasonal cycle and on interannual anomalies (review M1), per basin.

    sim, obs: monthly values [B, M]; calendar_month: [M] month of year (1..12); valid as in
    :func:`score_basins`. Both are re-centred on the same scored months (:func:`anomalies`); the climatology
    is each one's mean anomaly per calendar month over the scored months. ``twsa_seasonal`` scores the two
    12-month climatologies against each other, ``twsa_interannual`` the anomalies minus their climatology.
    (A split of one or two years has little interannual signal: its scores are then noisy or NaN.)"""
    sim_a, obs_a, used = anomalies(sim, obs, valid)
    cal = np.asarray(calendar_month) - 1
    clim_sim = np.full((len(sim_a), 12), np.nan)
    clim_obs = np.full((len(sim_a), 12), np.nan)
    for m in range(12):
        cols = cal == m
        n = used[:, cols].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            clim_sim[:, m] = np.where(n > 0, np.nansum(sim_a[:, cols], axis=1) / n, np.nan)
            clim_obs[:, m] = np.where(n > 0, np.nansum(obs_a[:, cols], axis=1) / n, np.nan)
    inter_sim, inter_obs = sim_a - clim_sim[:, cal], obs_a - clim_obs[:, cal]
    keys = range(len(sim_a)) if basins is None else basins
    seasonal_min = None if min_obs is None else min(min_obs, 12)
    return {"twsa_seasonal": {k: _metrics(clim_sim[i], clim_obs[i], True, seasonal_min) for i, k in enumerate(keys)},
            "twsa_interannual": {k: _metrics(inter_sim[i], inter_obs[i], True, min_obs) for i, k in enumerate(keys)}}


@dataclass
class Record:
    """Whole-record results of all basins. scores[split][target] = {"median": {...}, "basins": {id: {...}}};
    the targets include ``twsa_seasonal`` and ``twsa_interannual`` when the store has TWSA."""

    scores: dict
    smax_mean: np.ndarray  # [n_basins] mean learned S_max over the record, mm
    param_mean: np.ndarray  # [n_basins, 8] mean of every learned parameter over the record
    spinup_cycles: int = 0  # most spin-up cycles any chunk needed
    spinup_unconverged: int = 0  # basins in chunks whose spin-up still changed by >= 1 mm after the last cycle
    smax_components: np.ndarray | None = None  # components > 1: [n_basins, N] mean S_max of each bucket set, mm
    component_weights: np.ndarray | None = None  # components > 1: [n_basins, N] area share of each set


@dataclass
class RecordPass:
    """The no-grad whole-record pass training keeps (:func:`record_pass`)."""

    states: np.ndarray  # [3, n_basins, n_days + 1] float32 storages (W, S, G mm) at the START of each day;
    #                     index 0 = the spun-up state, index d = end of day d - 1
    tws_monthly: np.ndarray  # [n_basins, n_months] float64 model monthly mean TWS (NaN: month not whole)
    twsa_ref: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # monthly target ->
    #     (model level, observed level) [n_basins]: means over the observed training months (NaN: none)
    spinup_cycles: int = 0
    seconds: float = 0.0
    components: int = 1  # bucket sets per basin (Config.components): states rows are basin·N + set

    def state0(self, basins: np.ndarray, start: int) -> torch.Tensor:
        """Storages [3, B] (with N bucket sets: [3, B·N], basin-major) at the start of day ``start`` of
        ``basins`` (float32, CPU)."""
        return torch.from_numpy(np.ascontiguousarray(self.states[:, component_rows(basins, self.components),
                                                                 start]))

    def reference(self, basins: np.ndarray) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``twsa_ref`` of ``basins`` as tensors, for :func:`rootzone.loss.hybrid_loss`."""
        idx = np.asarray(basins)
        return {k: (torch.from_numpy(m[idx]), torch.from_numpy(o[idx])) for k, (m, o) in self.twsa_ref.items()}


def component_rows(basins: np.ndarray, n: int) -> np.ndarray:
    """Rows of the N bucket sets of ``basins`` in a basin-major [n_basins·N] layout (``basins`` for N = 1)."""
    basins = np.asarray(basins)
    return basins if n == 1 else (basins[:, None] * n + np.arange(n)).ravel()


def record_pass(model, data: StoreData, device: torch.device, chunk: int = 256) -> RecordPass:
    """Run every basin's whole record from spun-up storages, no gradient, in chunks of basins; keep the daily
    storages (CPU, float32) and the TWSA reference levels: per basin, the means of model monthly TWS and of the
    observation over the months that are training months, whole in the record and observed."""
    import time

    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    cycles = data.cfg.spinup_cycles
    stateful = getattr(model, "stateful", True)  # the plain LSTM keeps no storages: only the TWSA levels
    n_sets = getattr(model, "n_components", 1)
    states = np.zeros((3, data.n_basins * n_sets, data.n_days + 1 if stateful else 0), dtype=np.float32)
    monthly = [t for t in data.targets if schema.target(t).monthly]
    tws_monthly = np.full((data.n_basins, len(data.months)), np.nan)
    ref = {t: (np.full(data.n_basins, np.nan), np.full(data.n_basins, np.nan)) for t in monthly}
    train_months = data.split.month_mask("train", data.time, data.months)
    most = 0
    try:
        with torch.no_grad():
            for lo in range(0, data.n_basins, chunk):
                basins = np.arange(lo, min(lo + chunk, data.n_basins))
                batch = data.load(basins, 0, data.n_days).to(device)
                out, spun = model.run_record(batch.x_dynamic, batch.x_static, batch.forcing, cycles)
                most = max(most, spun.cycles)
                bk = out.buckets
                if stateful:
                    rows, sets = component_rows(basins, n_sets), (bk if out.storages is None else out.storages)
                    states[:, rows, 0] = spun.state.float().cpu().numpy()
                    states[:, rows, 1:] = torch.stack([sets.w, sets.s, sets.g]).float().cpu().numpy()
                tws = loss.monthly_mean(bk.tws.double(), batch.day_month, len(batch.months)).cpu().numpy()
                tws_monthly[np.ix_(basins, batch.months)] = tws
                for t in monthly:  # (every monthly target is scored on TWS)
                    obs = batch.obs[t].double().cpu().numpy()
                    used = np.isfinite(obs) & np.isfinite(tws) & train_months[batch.months][None, :]
                    n = used.sum(axis=1)
                    with np.errstate(invalid="ignore", divide="ignore"):
                        ref[t][0][basins] = np.where(n > 0, np.where(used, tws, 0).sum(1) / n, np.nan)
                        ref[t][1][basins] = np.where(n > 0, np.where(used, obs, 0).sum(1) / n, np.nan)
    finally:
        model.train(was_training)
    return RecordPass(states, tws_monthly, ref, most, time.perf_counter() - t0, n_sets)


def evaluate_record(model, data: StoreData, device: torch.device, chunk: int = 256) -> Record:
    """Score every basin's whole record, run from spun-up storages, on each split. Every day of a split is
    scored, from the record's first day on (no warm-up: the storages are spun up, so the first test year of
    fold 0 counts; the LSTM starts that day from a zero state, as in every window). A split holding only some
    basins (spatial folds) scores only those."""
    model.eval()
    warmup = 0
    min_obs = getattr(data.cfg, "min_obs", None)
    has_twsa = "twsa" in data.targets
    names = list(data.targets) + (list(TWSA_PARTS) if has_twsa else [])
    per: dict[str, dict[str, dict[str, dict[str, float]]]] = {s: {t: {} for t in names} for s in SPLITS}
    param_mean = np.full((data.n_basins, len(PARAM_NAMES)), np.nan)  # stays NaN for the plain LSTM
    targets = [schema.target(t) for t in data.targets]
    most, unconverged = 0, 0
    smax_sets = shares = None
    with torch.no_grad():
        for lo in range(0, data.n_basins, chunk):
            basins = np.arange(lo, min(lo + chunk, data.n_basins))
            ids = [str(data.basin_ids[b]) for b in basins]
            batch = data.load(basins, 0, data.n_days).to(device)
            out, spun = model.run_record(batch.x_dynamic, batch.x_static, batch.forcing, data.cfg.spinup_cycles)
            most = max(most, spun.cycles)
            unconverged += 0 if spun.converged else len(basins)
            if out.params is not None:
                param_mean[basins] = out.params.mean(dim=1).double().cpu().numpy()
            if out.components is not None:
                if smax_sets is None:
                    smax_sets = np.full((data.n_basins, out.weights.shape[1]), np.nan)
                    shares = np.full_like(smax_sets, np.nan)
                smax_sets[basins] = out.components[..., 0].mean(dim=1).double().cpu().numpy()
                shares[basins] = out.weights.double().cpu().numpy()
            sims = {}
            for t in targets:
                series = t.model_series(out.buckets).double()
                if t.monthly:
                    series = loss.monthly_mean(series, batch.day_month, batch.obs[t.name].shape[1])
                sims[t.name] = series.cpu().numpy()
            obs = {t.name: batch.obs[t.name].double().cpu().numpy() for t in targets}
            calendar = data.months[batch.months].month.to_numpy()
            for split in SPLITS:
                day_mask, month_mask = (m.numpy() for m in data.masks(batch, split, warmup))
                keep = data.split.basin_mask(split, data.n_basins)[basins]
                if not keep.any():
                    continue
                kept = [i for i, k in zip(ids, keep) if k]
                for t in targets:
                    scored = month_mask if t.monthly else day_mask
                    per[split][t.name].update(score_basins(sims[t.name][keep], obs[t.name][keep], t, scored,
                                                           basins=kept, min_obs=min_obs))
                if has_twsa:
                    parts = twsa_components(sims["twsa"][keep], obs["twsa"][keep], calendar, month_mask, kept,
                                            min_obs)
                    for name, scores in parts.items():
                        per[split][name].update(scores)
    scores = {s: {t: {"median": median_metrics(per[s][t]), "basins": per[s][t]} for t in names} for s in SPLITS}
    return Record(scores=scores, smax_mean=param_mean[:, 0], param_mean=param_mean, spinup_cycles=most,
                  spinup_unconverged=unconverged, smax_components=smax_sets, component_weights=shares)


def truth_recovery(ds: xr.Dataset, record: Record, basins: np.ndarray | None = None) -> dict[str, float]:
    """How well the learned mean parameter of each basin recovers the true one, where the store holds
    ``true_*`` variables (the demo twin experiment); empty dict otherwise. ``basins`` (store positions):
    only those (e.g. the held-out basins of a spatial fold); default every basin.

    Per parameter ``p`` (learned and true means over the record, one value per basin): ``p_pearson_r``,
    ``p_rmse`` (physical units), ``p_median_abs_log_ratio`` (median over basins of |log(learned / true)|:
    0.15 is about 16 % off) and ``p_log_slope`` (least-squares slope of log learned on log true: 1 = the
    spread across basins is recovered, < 1 = it is flattened). Log figures skip non-positive values.
    """
    out: dict[str, float] = {}
    for i, name in enumerate(PARAM_NAMES):
        key = f"true_{name}"
        if key not in ds:
            continue
        truth = ds[key].mean("time").values.astype(np.float64)
        learned = record.param_mean[:, i].astype(np.float64)
        if basins is not None:
            truth, learned = truth[basins], learned[basins]
        out.update(recovery_figures(name, truth, learned))
    return out


def recovery_figures(name: str, truth: np.ndarray, learned: np.ndarray) -> dict[str, float]:
    """:func:`truth_recovery`'s figures of parameter ``name`` from per-basin true and learned values [N]."""
    out: dict[str, float] = {}
    if len(truth) > 2 and np.std(truth) > 0 and np.std(learned) > 0:
        out[f"{name}_pearson_r"] = float(np.corrcoef(truth, learned)[0, 1])
    out[f"{name}_rmse"] = float(np.sqrt(np.mean((truth - learned) ** 2)))
    pos = (truth > 0) & (learned > 0) & np.isfinite(learned)
    if pos.sum() > 2:
        lt, ll = np.log(truth[pos]), np.log(learned[pos])
        out[f"{name}_median_abs_log_ratio"] = float(np.median(np.abs(ll - lt)))
        if np.std(lt) > 0:
            out[f"{name}_log_slope"] = float(np.polyfit(lt, ll, 1)[0])
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
    scheme = (metrics.get("cv") or {}).get("scheme", "temporal")
    for key, which in (("truth_recovery", "every basin"), ("truth_recovery_test", "held-out (test) basins")):
        rec = metrics.get(key)
        if rec and "smax_rmse" in rec:
            console.print(f"twin experiment ({scheme} CV, {which}): learned vs true mean S_max per basin: "
                          + smax_recovery_text(rec))


def smax_recovery_text(rec: dict[str, float]) -> str:
    """The S_max figures of a :func:`truth_recovery` record, for a console line."""
    nan = float("nan")
    return (f"Pearson r = {rec.get('smax_pearson_r', nan):.3f}, RMSE = {rec['smax_rmse']:.1f} mm, median |log "
            f"ratio| = {rec.get('smax_median_abs_log_ratio', nan):.3f}, log slope = "
            f"{rec.get('smax_log_slope', nan):.3f}")
