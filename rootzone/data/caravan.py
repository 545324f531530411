"""Build a store from Caravan (Kratzert et al. 2023, doi:10.1038/s41597-023-01975-w).

Published layout read here::

    CARAVAN_DIR/timeseries/csv/<source>/<gauge_id>.csv        (column ``date``, YYYY-MM-DD), or
    CARAVAN_DIR/timeseries/netcdf/<source>/<gauge_id>.nc      (dimension ``date``)
    CARAVAN_DIR/attributes/<source>/attributes_*.csv          (joined on ``gauge_id``)

Caravan columns (v1.x) and store variables: ``total_precipitation_sum`` (mm/d) -> precipitation,
``temperature_2m_mean`` (°C) -> temperature, PET (mm/d; ``potential_evaporation_sum_FAO_PENMAN_MONTEITH``
from v1.4, else ``potential_evaporation_sum`` / ``potential_evaporation_sum_ERA5_LAND``) -> pet,
``snow_depth_water_equivalent_mean`` (mm) -> extra input ``era5_swe``, ``streamflow`` (mm/d) -> target q.
Caravan flips ERA5-Land's sign convention so evaporation is positive, but near-zero PET can come out
slightly negative: values down to -0.1 mm/d are set to 0, anything more negative is refused.

Basins are read and written ``chunk_basins`` at a time (memory ~ chunk × days × variables × 4 bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from rootzone.data import products
from rootzone.data.checks import (
    GapReport,
    InputDataError,
    check_physical,
    parse_dates,
    parse_day,
    unit_factor,
)
from rootzone.data.schema import BASIN_CHUNK, StoreWriter, VariableSpec, make_template, month_index

FORCING_COLUMNS = {"precipitation": "total_precipitation_sum", "temperature": "temperature_2m_mean"}
PET_COLUMNS = ("potential_evaporation_sum_FAO_PENMAN_MONTEITH", "potential_evaporation_sum",
               "potential_evaporation_sum_ERA5_LAND")
SWE_COLUMN, SWE_INPUT = "snow_depth_water_equivalent_mean", "era5_swe"
STREAMFLOW_COLUMN = "streamflow"
CANONICAL_UNITS = {"precipitation": "mm/d", "temperature": "degC", "pet": "mm/d", "q": "mm/d",
                   SWE_INPUT: "mm"}
Q_HINT = "; streamflow must be >= 0 (a missing-value code? leave the cell empty)"


@dataclass
class CaravanBuild:
    """Options of one build (see ``rootzone data caravan --help``)."""

    root: Path
    out: str
    sources: list[str] | None = None
    basins_file: Path | None = None
    extra_dir: Path | None = None
    max_gap: int = 5
    overwrite: bool = False
    fmt: str = "auto"
    start: str | None = None
    end: str | None = None
    pet_column: str | None = None
    era5_swe: bool = True
    attributes: list[str] | None = None
    chunk_basins: int = BASIN_CHUNK
    report: GapReport = field(default_factory=GapReport)


@dataclass
class Layout:
    """What the build found: basin files, the common period, the columns to read."""

    fmt: str
    files: dict[str, Path]  # gauge_id -> timeseries file
    sources: dict[str, str]  # gauge_id -> source folder
    time: pd.DatetimeIndex
    columns: dict[str, str]  # store variable -> Caravan column
    daily_products: list[str]
    monthly_products: list[str]


def find_basins(opts: CaravanBuild) -> tuple[str, dict[str, Path], dict[str, str]]:
    """Format and the timeseries file of every selected basin (sorted by gauge id)."""
    root = Path(opts.root)
    if not root.is_dir():
        raise InputDataError(f"Caravan directory '{root}' does not exist")
    fmt = opts.fmt
    if fmt == "auto":
        fmt = next((f for f in ("netcdf", "csv") if (root / "timeseries" / f).is_dir()), "")
        if not fmt:
            raise InputDataError(f"{root}: no timeseries/netcdf or timeseries/csv folder "
                                 "(not a Caravan directory)")
    base, ext = root / "timeseries" / fmt, ".nc" if fmt == "netcdf" else ".csv"
    if not base.is_dir():
        raise InputDataError(f"{base}: folder missing (--format {fmt})")
    sources = opts.sources or sorted(d.name for d in base.iterdir() if d.is_dir())
    for s in sources:
        if not (base / s).is_dir():
            raise InputDataError(f"{base / s}: no such source folder (sources here: "
                                 f"{', '.join(sorted(d.name for d in base.iterdir() if d.is_dir()))})")
    if opts.basins_file is not None:
        wanted = _read_basin_list(Path(opts.basins_file))
        files, src = {}, {}
        for g in wanted:
            hits = [base / s / f"{g}{ext}" for s in sources if (base / s / f"{g}{ext}").is_file()]
            if not hits:
                guess = base / g.split("_")[0] / f"{g}{ext}"
                raise InputDataError(f"{guess}: timeseries file of basin {g} (listed in {opts.basins_file}) "
                                     "does not exist")
            files[g], src[g] = hits[0], hits[0].parent.name
    else:
        found = {p.stem: p for s in sources for p in sorted((base / s).glob(f"*{ext}"))}
        files, src = found, {g: p.parent.name for g, p in found.items()}
    if not files:
        raise InputDataError(f"{base}: no {ext} files for sources {', '.join(sources)}")
    order = sorted(files)
    return fmt, {g: files[g] for g in order}, {g: src[g] for g in order}


def _read_basin_list(path: Path) -> list[str]:
    if not path.is_file():
        raise InputDataError(f"basin list '{path}' does not exist")
    ids = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise InputDataError(f"basin list '{path}' is empty")
    dup = pd.Index(ids)[pd.Index(ids).duplicated()]
    if len(dup):
        raise InputDataError(f"basin list '{path}': basin {dup[0]} listed twice")
    return ids


def read_timeseries(path: Path, fmt: str, columns: list[str] | None, gauge: str) -> pd.DataFrame:
    """One basin's Caravan table indexed by date; ``columns=None`` reads the dates only. NetCDF variables
    with a ``units`` attribute keep it in ``df.attrs['units']``."""
    where = f"{path} (basin {gauge})"
    if fmt == "csv":
        try:
            wanted = {"date", *(columns or [])}
            df = pd.read_csv(path, usecols=lambda c: c in wanted)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise InputDataError(f"{where}: cannot read CSV ({exc})") from None
        if "date" not in df.columns:
            raise InputDataError(f"{where}: missing required column 'date'")
        df.index = parse_dates(df.pop("date"), where)
        units: dict[str, str] = {}
    else:
        try:
            with xr.open_dataset(path) as ds:
                dim = "date" if "date" in ds.dims else ("time" if "time" in ds.dims else None)
                if dim is None:
                    raise InputDataError(f"{where}: no 'date' dimension")
                keep = [c for c in (columns or []) if c in ds.data_vars]
                units = {c: ds[c].attrs["units"] for c in keep if "units" in ds[c].attrs}
                df = ds[keep].to_dataframe() if keep else pd.DataFrame(index=ds.indexes[dim])
        except InputDataError:
            raise
        except Exception as exc:  # netCDF/HDF5 errors come in many types
            raise InputDataError(f"{where}: cannot read NetCDF ({type(exc).__name__}: {exc})") from None
        df.index = parse_dates(pd.Series(df.index), where)
    missing = [c for c in (columns or []) if c not in df.columns]
    if missing:
        raise InputDataError(f"{where}: missing required column '{missing[0]}'")
    df.attrs["units"] = units
    return df


def plan(opts: CaravanBuild, progress: Callable[[int, int], None] | None = None) -> Layout:
    """Find the basins, choose the columns, and fix the common period (intersection of the files' date
    ranges unless --start/--end are given), checking every file's dates on the way."""
    fmt, files, sources = find_basins(opts)
    first_gauge, first = next(iter(files.items()))
    head = _columns_of(first, fmt)
    pet = opts.pet_column or next((c for c in PET_COLUMNS if c in head), None)
    if pet is None:
        raise InputDataError(f"{first} (basin {first_gauge}): no PET column "
                             f"(looked for {', '.join(PET_COLUMNS)})")
    columns = {**FORCING_COLUMNS, "pet": pet, "q": STREAMFLOW_COLUMN}
    if opts.era5_swe and SWE_COLUMN in head:
        columns[SWE_INPUT] = SWE_COLUMN
    lo = parse_day(opts.start, "--start")
    hi = parse_day(opts.end, "--end")
    if lo is not None and hi is not None and hi <= lo:
        raise InputDataError(f"--end {hi:%Y-%m-%d} is not after --start {lo:%Y-%m-%d}")
    if lo is None or hi is None:
        for i, (g, path) in enumerate(files.items()):
            dates = read_timeseries(path, fmt, None, g).index
            if len(dates) == 0:
                raise InputDataError(f"{path} (basin {g}): no rows")
            first_day, last_day = dates[0], dates[-1]
            lo = first_day if opts.start is None and (lo is None or first_day > lo) else lo
            hi = last_day if opts.end is None and (hi is None or last_day < hi) else hi
            if progress:
                progress(i + 1, len(files))
    if lo is None or hi is None or hi - lo < pd.Timedelta(days=1):
        raise InputDataError(f"the selected basins share no common period (latest start {lo:%Y-%m-%d}, "
                             f"earliest end {hi:%Y-%m-%d}); select basins with --basins or set --start/--end")
    daily, monthly = (products.product_variables(opts.extra_dir, first_gauge) if opts.extra_dir else ([], []))
    return Layout(fmt, files, sources, pd.date_range(lo, hi, freq="D"), columns, daily, monthly)


def _columns_of(path: Path, fmt: str) -> list[str]:
    if fmt == "csv":
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    with xr.open_dataset(path) as ds:
        return [str(v) for v in ds.data_vars]


def load_attributes(root: Path, sources: dict[str, str],
                    names: list[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """Numeric attributes of the basins [basin × attribute] (float64), from every
    ``attributes/<source>/attributes_*.csv`` joined on ``gauge_id``. Without ``names``, columns with a
    missing value for any selected basin are dropped (returned second); with ``names`` they are refused."""
    parts = []
    for source in sorted(set(sources.values())):
        gauges = [g for g, s in sources.items() if s == source]
        tables = sorted((Path(root) / "attributes" / source).glob("attributes_*.csv"))
        if not tables:
            raise InputDataError(f"{Path(root) / 'attributes' / source}: no attributes_*.csv tables for "
                                 f"source '{source}'")
        frame = pd.DataFrame(index=pd.Index(gauges, name="gauge_id"))
        for table in tables:
            df = pd.read_csv(table, dtype={"gauge_id": str})
            if "gauge_id" not in df.columns:
                raise InputDataError(f"{table}: missing required column 'gauge_id'")
            dup = df["gauge_id"][df["gauge_id"].duplicated()]
            if len(dup):
                raise InputDataError(f"{table}: basin {dup.iloc[0]} appears twice")
            df = df.set_index("gauge_id")
            absent = [g for g in gauges if g not in df.index]
            if absent:
                more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
                raise InputDataError(f"{table}: basin {absent[0]}{more} missing from the attribute table")
            numeric = df.loc[gauges].select_dtypes(include=["number", "bool"]).astype(np.float64)
            for col in numeric.columns:
                if col in frame.columns:
                    if np.allclose(frame[col], numeric[col], equal_nan=True):
                        continue
                    tag = table.stem.removeprefix("attributes_").removesuffix("_" + source)
                    frame[f"{col}_{tag}"] = numeric[col]
                else:
                    frame[col] = numeric[col]
        parts.append(frame)
    att = pd.concat(parts, axis=0).loc[list(sources)]
    if names:
        unknown = [n for n in names if n not in att.columns]
        if unknown:
            more = ", ..." if att.shape[1] > 12 else ""
            raise InputDataError(f"attribute '{unknown[0]}' is in no numeric attribute table "
                                 f"(available: {', '.join(att.columns[:12])}{more})")
        att = att[names]
        nan = att.isna().to_numpy()
        if nan.any():
            b, a = np.argwhere(nan)[0]
            raise InputDataError(f"attribute '{names[a]}' is missing for basin {att.index[b]} "
                                 f"(attributes/{sources[att.index[b]]}/attributes_*.csv)")
        return att, []
    dropped = [c for c in att.columns if att[c].isna().any()]
    return att.drop(columns=dropped), dropped


def load_basin(opts: CaravanBuild, layout: Layout, gauge: str) -> dict[str, np.ndarray]:
    """Checked, gap-filled arrays of one basin: forcing and daily targets [T], monthly targets [M]."""
    path, time = layout.files[gauge], layout.time
    where = f"{path} (basin {gauge})"
    df = read_timeseries(path, layout.fmt, list(layout.columns.values()), gauge)
    units = df.attrs["units"]
    df = df.reindex(time)
    out: dict[str, np.ndarray] = {}
    for name, col in layout.columns.items():
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        values = values * unit_factor(units.get(col), CANONICAL_UNITS[name], where, col)
        check_physical(name, values, time, where, label=col, max_gap=None if name == "q" else opts.max_gap,
                       report=opts.report, gauge=gauge, hint=Q_HINT if name == "q" else "")
        out[name] = values.astype(np.float32)
    if layout.daily_products:
        out.update(products.read_daily(opts.extra_dir, gauge, time, layout.daily_products, opts.max_gap,
                                       opts.report))
    if layout.monthly_products:
        out.update(products.read_monthly(opts.extra_dir, gauge, month_index(time), layout.monthly_products))
    return out


def variable_specs(layout: Layout) -> list[VariableSpec]:
    specs = [VariableSpec(n, "target" if n == "q" else "forcing", CANONICAL_UNITS[n]) for n in layout.columns]
    specs += [VariableSpec(n, *products.DAILY_PRODUCTS[n]) for n in layout.daily_products]
    specs += [VariableSpec(n, *products.MONTHLY_PRODUCTS[n], dims=("basin", "month"))
              for n in layout.monthly_products]
    return specs


def build_caravan(opts: CaravanBuild, show_progress: bool = True) -> dict:
    """Build the store; returns a summary (basins, period, variables, dropped attributes, gap report)."""
    from rootzone.progress import progress_bar

    if opts.max_gap < 0:
        raise InputDataError(f"--max-gap must be >= 0, got {opts.max_gap}")
    if opts.chunk_basins < 1:
        raise InputDataError(f"--chunk-basins must be >= 1, got {opts.chunk_basins}")
    parse_day(opts.start, "--start")
    parse_day(opts.end, "--end")
    with progress_bar(show_progress) as bar:
        scan = bar.add_task("scanning dates", total=None)
        layout = plan(opts, progress=lambda i, n: bar.update(scan, completed=i, total=n))
        basins = list(layout.files)
        att, dropped = load_attributes(opts.root, layout.sources, opts.attributes)
        specs = variable_specs(layout)
        attrs = {"caravan_pet_column": layout.columns["pet"], "caravan_format": layout.fmt,
                 "max_gap_days": int(opts.max_gap)}
        template = make_template(basins, layout.time, specs, att, f"Caravan ({opts.root})", attrs,
                                 basin_chunk=opts.chunk_basins)
        task = bar.add_task("building store", total=len(basins))
        months = template.sizes["month"]
        writer = StoreWriter(opts.out, template, overwrite=opts.overwrite, basin_chunk=opts.chunk_basins)
        with writer:
            for start in range(0, len(basins), opts.chunk_basins):
                chunk = basins[start:start + opts.chunk_basins]
                arrays = {s.name: np.full((len(chunk), len(layout.time) if s.dims[1] == "time" else months),
                                          np.nan, np.float32) for s in specs}
                for i, gauge in enumerate(chunk):
                    for name, values in load_basin(opts, layout, gauge).items():
                        arrays[name][i] = values
                    bar.advance(task)
                writer.write(xr.Dataset({s.name: (s.dims, arrays[s.name]) for s in specs}), start)
            writer.attrs["gap_filled_days"] = opts.report.as_attrs()
    return {"basins": len(basins), "start": layout.time[0], "end": layout.time[-1],
            "variables": [s.name for s in specs], "attributes": att.shape[1], "dropped_attributes": dropped,
            "gaps": opts.report.summary(), "format": layout.fmt, "pet_column": layout.columns["pet"]}
