"""``<var>_p05`` / ``<var>_p95`` of a prediction store: the calibrated predictive 90 % interval
(:mod:`rootzone.calibration`) of Q, ET and SWE, written once every chunk is done (before the store is marked
complete; idempotent, so a resumed prediction rewrites it whole).

Each member's residual quantiles come from its validation days and basins (metrics.json ``years.validation``
and ``cv.basins.validation``) against the source store's observations, never from test data; the interval
of a basin-day pools every member's simulation plus its residual quantiles (as ``<var>_q05`` pools every
member). A store created before these variables existed is left as it is. A member without metrics.json or
a variable without observations in the source store gives NaN.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
import zarr

from rootzone.calibration import member_residual_quantiles, predictive_interval, predictive_sample
from rootzone.data.schema import open_store
from rootzone.experiment import ExperimentDir
from rootzone.predict import store as st


def write_predictive_interval(job: st.PredictionJob, chunk: int = 32) -> None:
    """Fill ``<v>_p05`` / ``<v>_p95`` for every predictive variable the store has (see the module docstring)."""
    group = zarr.open_group(job.out, mode="r+", use_consolidated=False)
    names = {v: [f"{v}_{s}" for s in st.PREDICTIVE_SUFFIXES] for v in st.PREDICTIVE_VARIABLES
             if v in job.variables}
    names = {v: n for v, n in names.items() if all(x in group for x in n)}  # a store started before: skip
    if not names:
        return
    from rootzone.report.predictions import member_validation_basins, member_validation_masks

    pred = xr.open_zarr(job.out, consolidated=False)
    trials = ExperimentDir.open(job.experiment).trials()
    vdays, vbasins = member_validation_masks(pred, trials), member_validation_basins(pred, trials)
    source = open_store(job.store)
    n = job.n_basins
    for v, (lo_name, hi_name) in names.items():
        if v not in source:
            continue

        def sims(lo: int, hi: int, v: str = v) -> np.ndarray:
            return np.asarray(group[v][:, lo:hi, :], dtype=np.float64)

        def obs(lo: int, hi: int, v: str = v) -> np.ndarray:
            return source[v].isel(basin=slice(lo, hi)).values.astype(np.float64)

        rq = member_residual_quantiles(sims, obs, n, vdays, vbasins, chunk)  # [M, N, K]
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            x = sims(lo, hi)
            out_lo, out_hi = np.full(x.shape[1:], np.nan), np.full(x.shape[1:], np.nan)
            for i in range(hi - lo):
                out_lo[i], out_hi[i] = predictive_interval(predictive_sample(x[:, i], rq[:, lo + i]))
            group[lo_name][lo:hi, :] = out_lo.astype(np.float32)
            group[hi_name][lo:hi, :] = out_hi.astype(np.float32)
