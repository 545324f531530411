"""One chunk of basins: every member on it, written into its region of the prediction store."""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
import zarr

from rootzone.data.records import fill_outside, read_records
from rootzone.data.schema import open_store, stack_forcing
from rootzone.device import select_device
from rootzone.experiment import LoadedMember, load_member
from rootzone.predict import store as st
from rootzone.predict.store import ChunkResult, PredictionJob


def _outside_range(att: np.ndarray, names: list[str], loaded: list[LoadedMember]) -> np.ndarray:
    """[B, A] bool: attribute outside the training min..max of any member (A = ``names``)."""
    out = np.zeros(att.shape, dtype=bool)
    for lm in loaded:
        norm = lm.normaliser
        if len(norm.static_min) != len(norm.static_names):  # checkpoints without the range
            continue
        idx = [names.index(a) for a in norm.static_names]
        tol = 1e-6 * np.maximum(np.abs(norm.static_min), np.abs(norm.static_max)) + 1e-12
        x = att[:, idx]
        out[:, idx] |= (x < norm.static_min - tol) | (x > norm.static_max + tol)
    return out


def predict_chunk(job: PredictionJob, index: int, loaded: list[LoadedMember] | None = None) -> ChunkResult:
    """Run every member on chunk ``index`` of basins and write its region of the output store."""
    t0 = time.perf_counter()
    device = select_device(job.device)
    loaded = loaded or [load_member(m, device, job.physics) for m in job.members]
    lo, hi = job.bounds(index)
    ds = open_store(job.store)
    window = ds[job.inputs].isel(basin=slice(lo, hi)).compute()
    arr = {v: window[v].values.astype(np.float32) for v in job.inputs}  # [B, T]
    att = ds["attributes"].isel(basin=slice(lo, hi)).sel(attribute=job.attributes).values.astype(np.float64)
    # each basin's own record (data/records.py): missing forcing outside it is by design, not invalid; the
    # whole-axis run repeats the record's first/last year there and its outputs there are NaN
    records = read_records(ds)
    inside = records.inside(np.arange(lo, hi))
    counts = np.stack([(~np.isfinite(arr[v]) & inside).sum(axis=1) for v in job.inputs]
                      + [(~np.isfinite(att)).sum(axis=1)], axis=1).astype(np.int32)  # [B, inputs + 1]
    invalid = counts.sum(axis=1) > 0
    ids = [str(b) for b in window["basin"].values]
    reasons = {ids[i]: ", ".join(f"{n}: {c} NaN/inf" for n, c in zip([*job.inputs, "attributes"], counts[i]) if c)
               for i in np.flatnonzero(invalid)}
    if records.partial:
        valid = ~invalid
        filled = {v: a[valid] for v, a in arr.items()}
        fill_outside(filled, records.first[lo:hi][valid], records.last[lo:hi][valid])
        for v, a in filled.items():
            arr[v][valid] = a
    for v in arr:  # invalid basins run on zeros; their outputs are overwritten with NaN below
        arr[v][invalid] = 0.0
    att[invalid] = 0.0
    outside = _outside_range(att, job.attributes, loaded) & ~invalid[:, None]
    b, t = hi - lo, next(iter(arr.values())).shape[1]
    forcing = torch.from_numpy(stack_forcing(arr))
    group = zarr.open_group(job.out, mode="r+", use_consolidated=False)
    mean = {v: np.zeros((b, t)) for v in job.variables}
    m2 = {v: np.zeros((b, t)) for v in job.variables}
    seen = dict.fromkeys(job.variables, 0)  # members that produce each variable (the LSTM has no smax, s, g)
    for lm in loaded:
        series = _run_member(lm, arr, att, job.attributes, forcing, device)
        member = job.members.index(lm.member)
        for v in job.variables:
            x = series[v]
            x[invalid] = np.nan
            x[~inside] = np.nan
            group[v][member, lo:hi, :] = x.astype(np.float32)
            if v not in st.MODEL_VARIABLES[lm.cfg.model]:
                continue
            seen[v] += 1
            delta = x - mean[v]  # Welford's update over the members that produce v, float64
            mean[v] += delta / seen[v]
            m2[v] += delta * (x - mean[v])
    for v in job.variables:
        n = max(seen[v], 1)
        group[f"{v}_mean"][lo:hi, :] = np.where(seen[v] > 0, mean[v], np.nan).astype(np.float32)
        group[f"{v}_std"][lo:hi, :] = np.where(seen[v] > 0, np.sqrt(m2[v] / n), np.nan).astype(np.float32)
        _write_interval(group, v, lo, hi)
    group["invalid_values"][lo:hi, :] = counts
    group["invalid_inputs"][lo:hi] = invalid
    group["attribute_outside_range"][lo:hi, :] = outside
    group["outside_training_range"][lo:hi] = outside.any(axis=1)
    return ChunkResult(index, reasons, time.perf_counter() - t0)


def _write_interval(group: zarr.Group, v: str, lo: int, hi: int) -> None:
    """``<v>_q05`` / ``<v>_q95`` of basins lo..hi: quantiles over every member's series (read back from the
    store one variable at a time, [M, B, T] float32, so memory stays one variable's members)."""
    names = [f"{v}_{s}" for s in st.QUANTILE_SUFFIXES]
    if not all(n in group for n in names):  # a store started before the interval existed (resumed)
        return
    x = np.asarray(group[v][:, lo:hi, :], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # invalid basins: all members NaN
        qs = np.nanquantile(x, st.INTERVAL, axis=0)
    for name, q in zip(names, qs):
        group[name][lo:hi, :] = q.astype(np.float32)


def _run_member(lm: LoadedMember, arr: dict[str, np.ndarray], att: np.ndarray, att_names: list[str],
                forcing: torch.Tensor, device: torch.device) -> dict[str, np.ndarray]:
    """One member on one chunk: normalise with its saved statistics, run the whole record from spun-up storages
    (:meth:`rootzone.model.HybridModel.run_record`, at most the member's ``spinup_cycles`` cycles of the first
    year), return float64 [B, T] series."""
    x_dyn, x_stat = lm.normaliser.dynamic(arr), lm.normaliser.static(att, att_names)
    with torch.inference_mode():
        out, _ = lm.model.run_record(torch.from_numpy(x_dyn).to(device), torch.from_numpy(x_stat).to(device),
                                     forcing.to(device), lm.cfg.spinup_cycles)
        bk = out.buckets
        series = {"w": bk.w, "q": bk.q, "et": bk.et, "swe": bk.swe, "tws": bk.tws}
        if out.params is not None:  # the hybrid; the plain LSTM has no S_max and no separate storages
            series.update(smax=out.params[..., 0], s=bk.s, g=bk.g)
        result = {k: v.double().cpu().numpy() for k, v in series.items()}
        nan = np.full(next(iter(result.values())).shape, np.nan)
        return {v: result.get(v, nan) for v in st.VARIABLES}


def report_invalid(result: ChunkResult) -> None:
    for basin, reason in result.invalid.items():
        print(f"predict: basin {basin} skipped, invalid inputs ({reason}); its outputs are NaN")


def record_chunk(job: PredictionJob, result: ChunkResult, invalid: dict[str, str]) -> int:
    """After chunk ``result.index`` is written: mark it done (the driver only), report and collect its skipped
    basins; returns its number of basins (for the progress bar)."""
    st.mark_done(job, result.index)
    report_invalid(result)
    invalid.update(result.invalid)
    lo, hi = job.bounds(result.index)
    return hi - lo
