"""``rootzone data aggregate``: a gridded product -> the per-basin tables that ``rootzone data caravan --extra``
reads (layout in rootzone/data/products.py and docs/data.md).

    OUT/daily/<gauge_id>.csv     date,lai,et,swe   (the products aggregated so far; mm, mm/d, m2/m2)
    OUT/monthly/<gauge_id>.csv   month,twsa        (mm; month as YYYY-MM)
    OUT/rootzone_aggregate.json  what each product was made from, and its gap counts

Steps: open the grid (:mod:`rootzone.data.grids`), read the polygons, weigh each basin's cells by exact coverage x
cell area once, then stream the grid through time chunks (dask) into basin means [time, basin], convert the
units, put them on the product's time axis, and write the tables through a temporary folder and a rename.
Adding another product to an OUT written by this command merges its column into the tables.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rootzone.data.checks import LAI_MAX, TWSA_MAX, parse_day
from rootzone.data.grids import (
    Grid,
    Weights,
    basin_weights,
    finish_means,
    open_grid,
    read_polygons,
    weighted_sums,
)
from rootzone.data.products import DAILY_PRODUCTS, MONTHLY_PRODUCTS
from rootzone.errors import InputDataError, RootzoneError
from rootzone.safety import check_output_path, clean_stale_temps, fs_and_path, is_local, locked, temp_sibling

MANIFEST = "rootzone_aggregate.json"
PRODUCTS = ("lai", "et", "swe", "twsa")
CHUNK_BUDGET_BYTES = 256 * 2**20  # memory for one time chunk of the grid
BYTES_PER_CELL_STEP = 40  # read (float32) + float64 block + masks + float64 mask + scipy's contiguous copy
LATENT_HEAT_MJ_KG = 2.45  # MJ/kg: latent heat of vaporisation, converts energy fluxes to mm of water
PLAUSIBLE_MAX = {"lai": LAI_MAX, "et": 50.0, "swe": 20_000.0, "twsa": TWSA_MAX}  # |value| beyond: wrong units


def _key(unit: str) -> str:
    return " ".join(str(unit).strip().lower().replace("**", "").replace("^", "").split())


_DEPTH = {"mm": 1.0, "millimeters": 1.0, "millimetres": 1.0, "kg m-2": 1.0, "kg/m2": 1.0, "cm": 10.0,
          "centimeters": 10.0, "m": 1000.0, "meters": 1000.0, "metres": 1000.0, "m of water equivalent": 1000.0,
          "mm of water equivalent": 1.0, "cm of water equivalent": 10.0}
_LAI = {"m2/m2": 1.0, "m2 m-2": 1.0, "m2.m-2": 1.0, "1": 1.0, "-": 1.0, "": 1.0, "dimensionless": 1.0}
_ET_RATE = {"mm/d": 1.0, "mm/day": 1.0, "mm d-1": 1.0, "mm day-1": 1.0, "kg m-2 d-1": 1.0, "kg m-2 day-1": 1.0,
            "kg/m2/d": 1.0, "kg/m2/day": 1.0, "m/d": 1000.0, "m d-1": 1000.0, "m/day": 1000.0,
            "mm/s": 86400.0, "mm s-1": 86400.0, "kg m-2 s-1": 86400.0, "kg/m2/s": 86400.0,
            "w m-2": 86400.0 / (LATENT_HEAT_MJ_KG * 1e6), "w/m2": 86400.0 / (LATENT_HEAT_MJ_KG * 1e6),
            "mj m-2 d-1": 1 / LATENT_HEAT_MJ_KG, "mj m-2 day-1": 1 / LATENT_HEAT_MJ_KG,
            "mj/m2/d": 1 / LATENT_HEAT_MJ_KG, "mj/m2/day": 1 / LATENT_HEAT_MJ_KG}
_ET_MONTH = {"mm/month": 1.0, "mm month-1": 1.0, "mm/mon": 1.0, "mm mon-1": 1.0, "kg m-2 month-1": 1.0,
             "kg/m2/month": 1.0}
_ET_STEP = {"mm": 1.0, "kg m-2": 1.0, "kg/m2": 1.0}  # an amount per time step: per day or per month


def unit_factors(product: str, units: str | None, anchors: pd.DatetimeIndex, step: str, where: str) -> np.ndarray:
    """[time] multipliers from the grid's ``units`` to the store's (m2/m2, mm/d, mm, mm); ``step`` is the time
    step ('daily', 'monthly' or 'other'). An unknown unit is one error naming the accepted ones."""
    ones = np.ones(len(anchors))
    if units is None:
        if product == "lai":
            return ones
        raise InputDataError(f"{where}: has no 'units' attribute; give its units with --units")
    k = _key(units)
    if product == "lai":
        table = _LAI
    elif product in ("swe", "twsa"):
        table = _DEPTH
    else:
        table = {**_ET_RATE, **_ET_MONTH, **_ET_STEP}
    if k not in table:
        raise InputDataError(f"{where}: units '{units}' are not known for {product} (accepted: "
                             f"{', '.join(repr(u) for u in table)})")
    if product == "et" and (k in _ET_MONTH or (k in _ET_STEP and step == "monthly")):
        return ones / anchors.days_in_month.to_numpy()
    if product == "et" and k in _ET_STEP and step != "daily":
        raise InputDataError(f"{where}: units '{units}' are an amount per time step, but the time step is "
                             "neither a day nor a month; give a rate (e.g. mm/d) with --units")
    return ones * table[k]


def time_step(anchors: pd.DatetimeIndex) -> tuple[str, int]:
    """('daily' | 'monthly' | 'other', nominal step in days: the median spacing of the distinct days)."""
    days = np.unique(anchors.to_numpy().astype("datetime64[D]").astype(np.int64))
    if len(days) < 2:
        return "daily", 1
    diff = np.diff(days)
    step = int(np.median(diff))
    months = anchors.to_period("M")
    if 27 <= step <= 32 or (diff.min() >= 27 and months.is_unique):  # missing months widen the median
        return "monthly", step
    return ("daily" if step == 1 else "other"), step


# ------------------------------------------------------------------------------------------------- time axes
def _by_day(anchors: pd.DatetimeIndex, values: np.ndarray) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Mean of the values of time steps that fall on the same day (NaN ignored) -> sorted days, [days, B]."""
    frame = pd.DataFrame(values, index=anchors).groupby(level=0).mean()
    return pd.DatetimeIndex(frame.index), frame.to_numpy()


def interpolate_daily(anchors: pd.DatetimeIndex, values: np.ndarray, max_gap: int, step: int | None = None
                      ) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray, np.ndarray]:
    """Composites (e.g. MODIS 8-day LAI) -> daily values by linear interpolation between valid observations.

    Observations of each basin more than one nominal step + ``max_gap`` days apart are not bridged: the days
    between stay NaN (``step``: the nominal step in days, default the median spacing). Returns (days, [D, B],
    days bridged across a missing observation [B], days left missing [B])."""
    anchors, values = _by_day(anchors, values)
    step = time_step(anchors)[1] if step is None else step
    days = pd.date_range(anchors[0], anchors[-1], freq="D")
    x = (anchors - days[0]).days.to_numpy()
    d = np.arange(len(days))
    out = np.full((len(days), values.shape[1]), np.nan)
    filled = np.zeros(values.shape[1], np.int64)
    for b in range(values.shape[1]):
        ok = np.isfinite(values[:, b])
        xs, ys = x[ok], values[ok, b]
        if not len(xs):
            continue
        k = np.searchsorted(xs, d, side="right") - 1
        between = (k >= 0) & (k < len(xs) - 1)
        span = np.where(between, xs[np.minimum(k + 1, len(xs) - 1)] - xs[np.maximum(k, 0)], 0)
        on_obs = np.isin(d, xs)
        use = on_obs | (between & (span <= step + max_gap))
        out[use, b] = np.interp(d[use], xs, ys)
        filled[b] = int(np.sum(use & ~on_obs & (span > step)))
    missing = np.sum(np.isnan(out), axis=0)
    return days, out, filled, missing


def daily_series(anchors: pd.DatetimeIndex, values: np.ndarray) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Daily grids -> every day from the first to the last (days without a time step are NaN)."""
    anchors, values = _by_day(anchors, values)
    days = pd.date_range(anchors[0], anchors[-1], freq="D")
    return days, pd.DataFrame(values, index=anchors).reindex(days).to_numpy()


def monthly_series(anchors: pd.DatetimeIndex, values: np.ndarray
                   ) -> tuple[pd.DatetimeIndex, np.ndarray, int, int]:
    """Monthly solutions (e.g. GRACE mascons) -> calendar months: solutions in one month are averaged, months
    without one are NaN. Returns (first days of months, [M, B], months with several solutions, missing)."""
    month = anchors.to_period("M").to_timestamp()
    frame = pd.DataFrame(values, index=month)
    counts = frame.groupby(level=0).size()
    means = frame.groupby(level=0).mean()
    months = pd.date_range(means.index[0], means.index[-1], freq="MS")
    return months, means.reindex(months).to_numpy(), int((counts > 1).sum()), len(months) - len(means)


def months_to_days(months: pd.DatetimeIndex, values: np.ndarray) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Monthly mean rates (mm/d) -> the same rate on every day of the month (the store's ET is daily)."""
    days = pd.date_range(months[0], months[-1] + pd.offsets.MonthEnd(0), freq="D")
    pos = np.searchsorted(months.to_numpy(), days.to_numpy(), side="right") - 1
    return days, values[pos]


# -------------------------------------------------------------------------------------------------- the job
@dataclass
class AggregateJob:
    """One run of ``rootzone data aggregate`` (flags as in ``rootzone data aggregate --help``)."""

    grid: str
    polygons: str
    out: str
    product: str
    variable: str | None = None
    id_field: str = "gauge_id"
    to_crs: bool = False
    units: str | None = None
    mask: str | None = None
    max_gap: int = 8
    min_valid: float = 0.5
    min_coverage: float = 0.99
    time_chunk: int | None = None
    start: str | None = None
    end: str | None = None
    overwrite: bool = False
    report: list[str] = field(default_factory=list)


def check_out(out: str, product: str, overwrite: bool) -> dict | None:
    """Refuse an OUT that this command may not write; the manifest of an existing OUT (None if none)."""
    check_output_path(out)
    fs, path = fs_and_path(out)
    if not is_local(fs):
        raise RootzoneError(f"output '{out}': rootzone data aggregate writes to a local folder only")
    p = Path(path)
    if not p.exists():
        return None
    manifest = p / MANIFEST
    if not p.is_dir() or not manifest.is_file():
        raise RootzoneError(f"output '{out}' exists and was not written by rootzone data aggregate "
                            f"(no {MANIFEST}); choose another folder")
    try:
        doc = json.loads(manifest.read_text())
    except ValueError:
        raise RootzoneError(f"output '{out}': {MANIFEST} is not JSON; choose another folder") from None
    if product in doc.get("products", {}) and not overwrite:
        raise RootzoneError(f"output '{out}' already holds {product}; add --overwrite to replace it")
    return doc


def _chunk_len(job: AggregateJob, w: Weights, n_time: int) -> tuple[int, int]:
    """(time steps, box rows) read at a time: all rows of the box for as many steps as fit in the budget, or,
    when one step of the box does not fit, one step in bands of rows."""
    rows, cols = w.rows.stop - w.rows.start, max(w.cols.stop - w.cols.start, 1)
    per_row_step = BYTES_PER_CELL_STEP * cols
    steps = job.time_chunk or CHUNK_BUDGET_BYTES // max(per_row_step * max(rows, 1), 1)
    steps = int(max(1, min(steps, n_time)))
    band = int(max(1, min(max(rows, 1), CHUNK_BUDGET_BYTES // (per_row_step * steps))))
    return steps, band


def stream_means(grid: Grid, w: Weights, min_valid: float, steps: slice, chunk: int, band: int | None = None,
                 tick: Callable[[], None] | None = None) -> np.ndarray:
    """[time, basins] area-weighted means, read ``chunk`` time steps x ``band`` rows of the box of cells the
    basins touch at a time (dask), so neither the time axis nor the grid needs to fit in memory."""
    n_basins = w.matrix.shape[0]
    n_time = len(range(*steps.indices(grid.data.shape[0])))
    if w.matrix.shape[1] == 0:
        return np.full((n_time, n_basins), np.nan)
    rows, cols = w.rows.stop - w.rows.start, w.cols.stop - w.cols.start
    band = rows if band is None else band
    dims = grid.data.dims
    sub = grid.data.isel({dims[0]: steps, dims[1]: w.rows, dims[2]: w.cols})
    sub = sub.chunk({dims[0]: chunk, dims[1]: band, dims[2]: -1})
    bands = [(r, min(r + band, rows)) for r in range(0, rows, band)]
    parts = [w.matrix[:, r0 * cols:r1 * cols] for r0, r1 in bands]  # the weights of each band's cells
    total = np.asarray(w.matrix.sum(axis=1)).ravel()
    lo, hi = grid.valid
    out = np.empty((n_time, n_basins))
    for i in range(0, n_time, chunk):
        num = den = 0.0
        for (r0, r1), part in zip(bands, parts):
            block = np.asarray(sub.isel({dims[0]: slice(i, i + chunk), dims[1]: slice(r0, r1)}).values,
                               dtype=np.float64)
            if lo is not None:
                block[block < lo] = np.nan
            if hi is not None:
                block[block > hi] = np.nan
            n, d = weighted_sums(block, part)
            num, den = num + n, den + d
        out[i:i + chunk] = finish_means(num, den, total, min_valid)
        if tick:
            tick()
    return out


def aggregate(job: AggregateJob, show_progress: bool = True) -> dict:
    """Run ``job``: check everything, compute every table, then write OUT in one move. Returns a summary."""
    from rootzone.progress import progress_bar

    if job.product not in PRODUCTS:
        raise RootzoneError(f"--product must be one of {', '.join(PRODUCTS)}, got {job.product!r}")
    if job.max_gap < 0 or not 0 <= job.min_valid <= 1 or not 0 <= job.min_coverage <= 1:
        raise RootzoneError("--max-gap must be >= 0, --min-valid and --min-coverage within 0..1")
    check_out(job.out, job.product, job.overwrite)
    grid = open_grid(job.grid, job.variable, job.mask)
    where = f"{job.grid}: '{grid.variable}'"
    steps = _select_time(grid, job)
    anchors = grid.anchors[steps]
    step, step_days = time_step(grid.anchors)  # of the whole grid: a --start/--end may leave one step
    _check_step(job.product, step, step_days, where)
    factors = unit_factors(job.product, job.units or grid.units, anchors, step, where)
    polys = read_polygons(job.polygons, job.id_field, grid.crs, job.to_crs)
    w = basin_weights(grid, polys)
    ids = polys["gauge_id"].tolist()
    short = np.flatnonzero(w.inside < job.min_coverage * (1 - 1e-6))
    if len(short):
        west, south, east, north = grid.extent()
        listed = ", ".join(f"{ids[i]} ({100 * w.inside[i]:.0f}%)" for i in short[:5])
        raise InputDataError(f"{job.polygons}: {len(short)} basin(s) not inside the grid (lon {west:g}..{east:g}, "
                             f"lat {south:g}..{north:g}): {listed}{' ...' if len(short) > 5 else ''}; "
                             "area inside must be at least --min-coverage "
                             f"{job.min_coverage:g}")
    chunk, band = _chunk_len(job, w, len(anchors))
    n_chunks = -(-len(anchors) // chunk)
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"{job.product} <- {grid.variable}", total=n_chunks)
        means = stream_means(grid, w, job.min_valid, steps, chunk, band, lambda: bar.advance(task))
    means *= factors[:, None]
    _check_plausible(job.product, means, grid.units if job.units is None else job.units, where)
    table_index, table, info = _product_series(job, anchors, means, (step, step_days), ids)
    no_cells = [ids[b] for b in np.flatnonzero(w.n_cells == 0)]
    fmt = "%Y-%m" if job.product in MONTHLY_PRODUCTS else "%Y-%m-%d"
    info.update(source=str(job.grid), variable=grid.variable, units_in=job.units or grid.units,
                time_step=step if step != "other" else f"{step_days} days", time_steps=len(anchors),
                first=f"{table_index[0]:{fmt}}", last=f"{table_index[-1]:{fmt}}", basins=len(ids),
                basins_without_cells=no_cells, polygons=str(job.polygons))
    frame = pd.DataFrame(table, index=table_index, columns=ids)
    _publish(job, frame, info)
    return {"product": job.product, "basins": len(ids), "first": table_index[0], "last": table_index[-1],
            "steps": len(anchors), "chunks": n_chunks, "info": info, "no_cells": no_cells}


def _select_time(grid: Grid, job: AggregateJob) -> slice:
    anchors = grid.anchors
    if not anchors.is_monotonic_increasing:
        raise InputDataError(f"{job.grid}: the time axis does not increase")
    start, end = parse_day(job.start, "--start"), parse_day(job.end, "--end")
    i0 = 0 if start is None else int(anchors.searchsorted(start, side="left"))
    i1 = len(anchors) if end is None else int(anchors.searchsorted(end, side="right"))
    if i1 <= i0:
        raise InputDataError(f"{job.grid}: no time step between {job.start or 'the start'} and "
                             f"{job.end or 'the end'} (the grid covers {anchors[0]:%Y-%m-%d} to "
                             f"{anchors[-1]:%Y-%m-%d})")
    return slice(i0, i1)


def _check_step(product: str, step: str, days: int, where: str) -> None:
    if product == "swe" and step != "daily":
        raise InputDataError(f"{where}: swe needs a daily grid, found a time step of {days} days")
    if product == "et" and step == "other":
        raise InputDataError(f"{where}: et needs a daily or monthly grid, found a time step of {days} days")


def _check_plausible(product: str, means: np.ndarray, units: str | None, where: str) -> None:
    big = np.nanmax(np.abs(means)) if np.isfinite(means).any() else 0.0
    limit = PLAUSIBLE_MAX[product]
    if big > limit:
        unit = DAILY_PRODUCTS.get(product, MONTHLY_PRODUCTS.get(product))[1]
        raise InputDataError(f"{where}: basin means reach {big:g} {unit} after conversion from units "
                             f"{units!r} (more than {limit:g}): wrong units (give --units) or unmasked codes "
                             "(give --mask, or valid_range in the file)")


def _product_series(job: AggregateJob, anchors: pd.DatetimeIndex, means: np.ndarray, step_of: tuple[str, int],
                    ids: list[str]):
    step, step_days = step_of
    info: dict = {}
    if job.product == "lai":
        days, values, filled, missing = interpolate_daily(anchors, means, job.max_gap, step_days)
        info.update(max_gap=job.max_gap, gap_filled_days=_per_basin(filled, ids),
                    missing_days=_per_basin(missing, ids))
        job.report.append(f"lai: {int(filled.sum())} days interpolated across missing composites, "
                          f"{int(missing.sum())} days left missing (gaps longer than --max-gap {job.max_gap})")
        return days, values, info
    if job.product == "twsa":
        months, values, doubled, missing = monthly_series(anchors, means)
        info.update(months_with_several_solutions=doubled, missing_months=missing)
        job.report.append(f"twsa: {len(months)} months, {doubled} with several solutions averaged, "
                          f"{missing} without a solution left missing")
        return months, values, info
    if job.product == "et" and step == "monthly":
        months, values, _, missing = monthly_series(anchors, means)
        info.update(from_monthly=True, missing_months=missing)
        job.report.append("et: monthly grid; each month's mean rate (mm/d) written on every day of the month")
        return (*months_to_days(months, values), info)
    days, values = daily_series(anchors, means)
    return days, values, info


def _per_basin(counts: np.ndarray, ids: list[str]) -> dict[str, int]:
    """{basin: count} of the basins with a non-zero count."""
    return {g: int(n) for g, n in zip(ids, counts) if n}


# ------------------------------------------------------------------------------------------------ writing
def _read_existing(root: Path, kind: str) -> dict[str, pd.DataFrame]:
    folder = root / kind
    if not folder.is_dir():
        return {}
    key = "date" if kind == "daily" else "month"
    out = {}
    for f in sorted(folder.glob("*.csv")):
        df = pd.read_csv(f, dtype={key: str})
        out[f.stem] = df.set_index(key)
    return out


def _publish(job: AggregateJob, frame: pd.DataFrame, info: dict) -> None:
    """Write OUT through a temporary sibling folder and a rename (merging the tables of an existing OUT)."""
    fs, path = fs_and_path(job.out)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(str(out), "output", sibling=True):
        clean_stale_temps(fs, str(out))
        manifest = check_out(job.out, job.product, job.overwrite) or {"rootzone_aggregate": 1, "products": {}}
        kind = "daily" if job.product in DAILY_PRODUCTS else "monthly"
        key, names = ("date", list(DAILY_PRODUCTS)) if kind == "daily" else ("month", list(MONTHLY_PRODUCTS))
        fmt = "%Y-%m-%d" if kind == "daily" else "%Y-%m"
        new = frame
        new.index = new.index.strftime(fmt)
        existing = _read_existing(out, kind) if out.exists() else {}
        basins = sorted(set(existing) | set(frame.columns))
        tmp, _ = temp_sibling(fs, str(out))
        tmp_p = Path(tmp)
        try:
            if out.exists():
                shutil.copytree(out, tmp_p, ignore=shutil.ignore_patterns(kind))
            (tmp_p / kind).mkdir(parents=True, exist_ok=True)
            for gauge in basins:
                old = existing.get(gauge, pd.DataFrame(index=pd.Index([], name=key)))
                old = old.drop(columns=[job.product], errors="ignore")
                col = new[gauge].rename(job.product) if gauge in new.columns else pd.Series(dtype=float,
                                                                                           name=job.product)
                table = old.join(col, how="outer").sort_index()
                table = table.reindex(columns=[n for n in names if n in table.columns or n in _kind_products(
                    manifest, kind, job.product)])
                table.index.name = key
                table.to_csv(tmp_p / kind / f"{gauge}.csv", float_format="%.8g", na_rep="")
            manifest["products"][job.product] = info
            (tmp_p / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if out.exists():
                old_tmp, _ = temp_sibling(fs, str(out))
                os.rename(out, old_tmp)
                os.rename(tmp_p, out)
                shutil.rmtree(old_tmp, ignore_errors=True)
            else:
                os.rename(tmp_p, out)
        except BaseException:
            shutil.rmtree(tmp_p, ignore_errors=True)
            raise


def _kind_products(manifest: dict, kind: str, product: str) -> set[str]:
    names = DAILY_PRODUCTS if kind == "daily" else MONTHLY_PRODUCTS
    return {p for p in [*manifest.get("products", {}), product] if p in names}
