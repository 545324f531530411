"""Each basin's own record on a store's shared time axis (issue 15, DESIGN §3).

A store may hold basins whose forcing records differ (one 1981-2010, another 2000-2020): the time axis is the
union, and ``forcing_first_day`` / ``forcing_last_day`` ([basin], datetime64) bound each basin's record. Inside
those bounds the forcing is complete (gaps were filled or refused when the store was built); outside them it is
missing. A store without the two variables (demo stores, imported pickles, stores of one common period) has
every basin on the whole axis.

Downstream code never trains or scores outside a basin's record:

* training windows lie inside the record (:func:`window_ranges`);
* observations outside the record are treated as missing (:func:`mask_outside`), so no loss or score sees them;
* whole-record runs (the stored-states pass, evaluation, ``predict``) need forcing on every day of the axis: the
  days before the record repeat the record's first year, the days after it its last year
  (:func:`fill_outside`), so running from the axis' first day is the usual spin-up on the basin's own first
  year, and the storages at its first day are spun up; outputs outside the record are set to NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from rootzone.data.schema import RECORD_VARIABLES, forcing_records

FIRST, LAST = RECORD_VARIABLES
CYCLE_DAYS = 365  # days repeated outside a record: its first or last year


@dataclass(frozen=True)
class Records:
    """First and last day of each basin's record, as indices on the store's time axis (inclusive)."""

    first: np.ndarray  # [n_basins] int64
    last: np.ndarray  # [n_basins] int64
    n_days: int

    @property
    def partial(self) -> bool:
        """True when some basin does not cover the whole time axis."""
        return bool((self.first > 0).any() or (self.last < self.n_days - 1).any())

    def inside(self, basins: np.ndarray, start: int = 0, length: int | None = None) -> np.ndarray:
        """[B, L] bool: day ``start + j`` lies inside the record of ``basins[i]``."""
        length = self.n_days - start if length is None else length
        days = np.arange(start, start + length)[None, :]
        b = np.asarray(basins)
        return (days >= self.first[b, None]) & (days <= self.last[b, None])

    def days(self, basins: np.ndarray) -> np.ndarray:
        """[B] number of days in each basin's record."""
        b = np.asarray(basins)
        return self.last[b] - self.first[b] + 1


def read_records(ds: xr.Dataset) -> Records:
    """The records of a store's basins (the whole axis where the store does not bound them), from
    :func:`rootzone.data.schema.forcing_records` (which ``open_store`` has checked lie on the time axis)."""
    time = pd.DatetimeIndex(ds["time"].values)
    first, last = forcing_records(ds)
    return Records(time.get_indexer(pd.DatetimeIndex(first)).astype(np.int64),
                   time.get_indexer(pd.DatetimeIndex(last)).astype(np.int64), len(time))


def fill_outside(arrays: dict[str, np.ndarray], first: np.ndarray, last: np.ndarray, start: int = 0) -> None:
    """Fill, in place, the days of ``arrays`` (name -> [B, L] float, day ``start + j`` in column j) that lie
    outside each basin's record: day ``t < first`` takes the value of day ``first + (t - first) mod P`` and day
    ``t > last`` that of ``last - (last - t) mod P``, P = min(365, record length), so the record's first year is
    continued backwards and its last year forwards without a seam. The record's own days must lie in the arrays
    (whole-record reads: ``start = 0`` and the whole axis)."""
    if not arrays:
        return
    length = next(iter(arrays.values())).shape[1]
    days = np.arange(start, start + length)
    for i, (a, b) in enumerate(zip(first, last)):
        if a <= start and b >= start + length - 1:
            continue
        period = max(1, min(CYCLE_DAYS, int(b - a + 1)))
        src = np.where(days < a, a + (days - a) % period, np.where(days > b, b - (b - days) % period, days))
        if src.min() < start or src.max() >= start + length:
            raise ValueError("fill_outside needs the whole record of every basin in the arrays")
        cols = src - start
        for v in arrays.values():
            v[i] = v[i, cols]


def mask_outside(arrays: dict[str, np.ndarray], inside: np.ndarray) -> None:
    """Set, in place, the days of ``arrays`` (name -> [B, L]) outside the record (``inside`` [B, L]) to NaN."""
    for v in arrays.values():
        v[~inside] = np.nan


def window_ranges(records: Records, basins: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """[B] lowest and highest window start (inclusive) whose ``length`` days lie inside each basin's record;
    lowest > highest when the record is shorter than a window."""
    b = np.asarray(basins)
    return records.first[b], records.last[b] - length + 1


def compatible_batches(order: np.ndarray, lo: np.ndarray, hi: np.ndarray, starts: np.ndarray, size: int
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut basins (in the random ``order``) into batches of at most ``size`` whose window ranges share a start
    from ``starts`` (sorted candidate starts, e.g. those whose scored part holds training days); ``lo``/``hi``
    are indexed by basin. Greedy first fit: a basin joins the first open batch where a common start remains,
    else opens a new one, so batches stay random and full when records overlap. Returns, per batch, its basins
    (in joining order) and the candidate starts they share. Basins with no candidate start are left out."""
    batches: list[list] = []  # [basins, lo, hi]
    done: list[list] = []
    for b in order:
        if not _has_start(starts, lo[b], hi[b]):
            continue
        for batch in batches:
            a, z = max(batch[1], lo[b]), min(batch[2], hi[b])
            if _has_start(starts, a, z):
                batch[0].append(b)
                batch[1], batch[2] = a, z
                if len(batch[0]) == size:
                    batches.remove(batch)
                    done.append(batch)
                break
        else:
            batch = [[b], lo[b], hi[b]]
            (done if size == 1 else batches).append(batch)
    done.extend(batches)
    return [(np.asarray(bs, np.int64), starts[(starts >= a) & (starts <= z)]) for bs, a, z in done]


def _has_start(starts: np.ndarray, lo: int, hi: int) -> bool:
    i = np.searchsorted(starts, lo)
    return bool(i < len(starts) and starts[i] <= hi)
