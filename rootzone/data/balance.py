"""Long-term water balance of the basins of a store: the runoff ratio Q/P over the record, and the basins
whose observed runoff exceeds their precipitation (an external source the bucket model cannot produce:
glacier melt, inter-basin transfer, groundwater from outside the topographic divide, or biased forcing).
Shown by ``rootzone data info`` and ``rootzone report`` (issue 14)."""

from __future__ import annotations

import dask
import numpy as np
import xarray as xr

from rootzone.data.schema import store_reads, store_where


def runoff_ratios(ds: xr.Dataset) -> dict[str, float]:
    """Per basin, Σ Q / Σ P over the days where both are observed and finite (NaN: no such day, or no Q in
    the store). Units cancel: both in mm/d."""
    basins = [str(b) for b in ds["basin"].values]
    if "q" not in ds or "precipitation" not in ds:
        return {b: float("nan") for b in basins}
    q, p = ds["q"], ds["precipitation"]
    both = np.isfinite(q) & np.isfinite(p)
    sums = (q.where(both).sum("time"), p.where(both).sum("time"), both.sum("time"))
    with store_reads(store_where(ds)):
        q_sum, p_sum, days = (np.asarray(x, dtype=np.float64) for x in dask.compute(*sums))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where((days > 0) & (p_sum > 0), q_sum / p_sum, np.nan)
    return dict(zip(basins, ratio.tolist()))


def external_water_basins(ds: xr.Dataset) -> dict[str, float]:
    """{basin: Q/P} of the basins whose runoff exceeds precipitation over the record (Q/P > 1)."""
    return {b: r for b, r in runoff_ratios(ds).items() if np.isfinite(r) and r > 1.0}


def describe(flagged: dict[str, float], limit: int = 20) -> str:
    """One line naming the flagged basins with their Q/P (at most ``limit``)."""
    shown = ", ".join(f"{b} (Q/P = {r:.2f})" for b, r in list(flagged.items())[:limit])
    more = f", and {len(flagged) - limit} more" if len(flagged) > limit else ""
    return (f"{len(flagged)} basin(s) with more runoff than precipitation over the record: {shown}{more}; an "
            "external source (glacier melt, inter-basin transfer, biased precipitation) the buckets cannot "
            "produce")
