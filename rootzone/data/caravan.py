"""Build a store from Caravan (Kratzert et al. 2023, doi:10.1038/s41597-023-01975-w).

Published layouts read here::

    CARAVAN_DIR/timeseries/csv/<source>/<gauge_id>.csv        (column ``date``, YYYY-MM-DD), or
    CARAVAN_DIR/timeseries/netcdf/<source>/<gauge_id>.nc      (dimension ``date``), or
    CARAVAN_DIR/timeseries/netcdf/<source>/<any>.nc           combined: dims ``basin_id`` (or ``gauge_id``) ×
                                                               ``time`` (or ``date``), basin ids as bytes or
                                                               strings, attributes as (basin_id,) variables;
                                                               CARAVAN_DIR may also be such a file itself
    CARAVAN_DIR/attributes/<source>/attributes_*.csv          (joined on ``gauge_id``; optional for combined)

Caravan columns (v1.x) and store variables: ``total_precipitation_sum`` (mm/d) -> precipitation,
``temperature_2m_mean`` (°C; else the mean of ``temperature_2m_min``/``_max``) -> temperature, PET (mm/d;
``potential_evaporation_sum_FAO_PENMAN_MONTEITH`` from v1.4, else ``potential_evaporation_sum`` /
``potential_evaporation_sum_ERA5_LAND``; or derived with ``--pet-method``) -> pet,
``snow_depth_water_equivalent_mean`` (mm) -> extra input ``era5_swe``, ``streamflow`` (mm/d) -> target q.
Caravan flips ERA5-Land's sign convention so evaporation is positive, but ERA5-Land PET is negative on
days of condensation (dew, down to about -1.3 mm/d): values down to -5 mm/d are set to 0 and counted per
basin, anything more negative (or mostly negative PET) is refused.

Basins may have different records: the time axis is the union of the basins' forcing records (or
``--start``/``--end``); each basin's record (first to last day with complete forcing) is stored as
``forcing_first_day``/``forcing_last_day``; forcing is NaN outside it and complete inside it (gaps up to
``--max-gap`` days interpolated and counted, longer ones refused or the basin dropped).

Basins are read and written ``chunk_basins`` at a time (memory ~ chunk × days × variables × 4 bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from rootzone.data import caravan_files, products
from rootzone.data.caravan_files import (
    CombinedFiles,
    columns_of,
    read_attributes,
    read_timeseries,
    select_attributes,
)
from rootzone.data.checks import (
    GapReport,
    InputDataError,
    check_physical,
    parse_day,
    plural,
    unit_factor,
)
from rootzone.data.pet import PET_METHODS, derive_pet
from rootzone.data.schema import BASIN_CHUNK, StoreWriter, VariableSpec, make_template, month_index

PRECIP_COLUMN = "total_precipitation_sum"
TMEAN_COLUMN, TMIN_COLUMN, TMAX_COLUMN = "temperature_2m_mean", "temperature_2m_min", "temperature_2m_max"
FORCING_COLUMNS = {"precipitation": PRECIP_COLUMN, "temperature": TMEAN_COLUMN}
PET_COLUMNS = ("potential_evaporation_sum_FAO_PENMAN_MONTEITH", "potential_evaporation_sum",
               "potential_evaporation_sum_ERA5_LAND")
RADIATION_COLUMNS = ("surface_net_solar_radiation_mean", "surface_net_thermal_radiation_mean")  # W m-2
PRESSURE_COLUMN = "surface_pressure_mean"  # kPa
LATITUDE_ATTRIBUTES = ("gauge_lat", "lat", "latitude")  # degrees north
ELEVATION_ATTRIBUTES = ("ele_mt_sav", "elev_mean", "elevation")  # m
SWE_COLUMN, SWE_INPUT = "snow_depth_water_equivalent_mean", "era5_swe"
STREAMFLOW_COLUMN = "streamflow"
CANONICAL_UNITS = {"precipitation": "mm/d", "temperature": "degC", "pet": "mm/d", "q": "mm/d",
                   SWE_INPUT: "mm"}
COLUMN_UNITS = {PRECIP_COLUMN: "mm/d", TMEAN_COLUMN: "degC", TMIN_COLUMN: "degC", TMAX_COLUMN: "degC",
                SWE_COLUMN: "mm", STREAMFLOW_COLUMN: "mm/d", PRESSURE_COLUMN: "kPa",
                **{c: "W m-2" for c in RADIATION_COLUMNS}}
Q_HINT = "; streamflow must be >= 0 (a missing-value code? leave the cell empty)"
BASIN_INFO = (  # per-basin variables of the store (role basin_info, dims (basin,))
    VariableSpec("forcing_first_day", "basin_info", "", ("basin",), "datetime64[ns]",
                 "first day of the basin's forcing record"),
    VariableSpec("forcing_last_day", "basin_info", "", ("basin",), "datetime64[ns]",
                 "last day of the basin's forcing record"),
    VariableSpec("forcing_gap_days", "basin_info", "1", ("basin",), "int32",
                 "number of days inside the record on which a forcing gap was filled by linear interpolation"),
    VariableSpec("pet_negative_days", "basin_info", "1", ("basin",), "int32",
                 "number of days of negative PET (ERA5-Land condensation) set to 0"),
    VariableSpec("pet_method", "basin_info", "1", ("basin",), "int8",
                 "source of PET: index into the flag_meanings attribute"),
)


class CoverageError(InputDataError):
    """A basin whose forcing does not cover what the build needs (no overlap with --start/--end, a gap
    longer than --max-gap): refused, or the basin dropped with --drop-bad-basins."""


@dataclass
class CaravanBuild:
    """Options of one build (see ``rootzone data caravan --help``)."""

    root: Path
    out: str
    sources: list[str] | None = None
    basins_file: Path | None = None
    extra_dir: Path | None = None
    max_gap: int = 3
    overwrite: bool = False
    fmt: str = "auto"
    start: str | None = None
    end: str | None = None
    pet_column: str | None = None
    pet_method: str | None = None
    era5_swe: bool = True
    attributes: list[str] | None = None
    drop_bad_basins: bool = False
    chunk_basins: int = BASIN_CHUNK
    report: GapReport = field(default_factory=GapReport)
    combined: CombinedFiles = field(default_factory=CombinedFiles)  # open combined files (closed after)


@dataclass
class BasinPlan:
    """One basin: its file, the columns it is read from, its PET source and its forcing record."""

    gauge: str
    path: Path
    source: str
    temperature: list[str]  # [mean] or [min, max]
    pet: str  # a PET column of the file, or a method of PET_METHODS
    inputs: list[str]  # every column its forcing is made of (gap-checked, gap-filled)
    first: pd.Timestamp
    last: pd.Timestamp


@dataclass
class Layout:
    """What the build found: the basins (kept), the time axis, the products, the dropped basins."""

    fmt: str
    basins: dict[str, BasinPlan]  # gauge_id -> plan, sorted
    time: pd.DatetimeIndex
    era5_swe: bool
    daily_products: list[str]
    monthly_products: list[str]
    attributes: pd.DataFrame  # every numeric attribute of the kept basins (latitude etc. for PET)
    dropped: list[str]  # one line per dropped basin (--drop-bad-basins)
    pet_sources: list[str]  # the meanings of the codes of 'pet_method'
    without_swe: list[str] = field(default_factory=list)  # basins that left era5_swe out of the store

    @property
    def files(self) -> dict[str, Path]:
        return {g: b.path for g, b in self.basins.items()}

    @property
    def sources(self) -> dict[str, str]:
        return {g: b.source for g, b in self.basins.items()}


def find_basins(opts: CaravanBuild) -> tuple[str, dict[str, Path], dict[str, str]]:
    """Format and the timeseries file and source of every selected basin (sorted by gauge id)."""
    return caravan_files.find_basins(Path(opts.root), opts.fmt, opts.sources, opts.basins_file, opts.combined)


# ------------------------------------------------------------------------------------------------ plan

def choose_columns(opts: CaravanBuild, header: list[str], where: str, swe: bool) -> tuple[list[str], str, list[str]]:
    """(temperature columns, PET column or method, every forcing input column) of one basin's header."""
    for col in (PRECIP_COLUMN, STREAMFLOW_COLUMN):
        if col not in header:
            raise InputDataError(f"{where}: missing required column '{col}'")
    if TMEAN_COLUMN in header:
        temperature = [TMEAN_COLUMN]
    elif TMIN_COLUMN in header and TMAX_COLUMN in header:
        temperature = [TMIN_COLUMN, TMAX_COLUMN]
    else:
        raise InputDataError(f"{where}: missing required column '{TMEAN_COLUMN}' (or both "
                             f"'{TMIN_COLUMN}' and '{TMAX_COLUMN}')")
    if opts.pet_column:  # a basin without it gets --pet-method, when given
        pet = opts.pet_column if opts.pet_column in header or not opts.pet_method else opts.pet_method
    else:
        pet = next((c for c in PET_COLUMNS if c in header), None) or opts.pet_method or ""
        if not pet:
            raise InputDataError(f"{where}: no PET column (looked for {', '.join(PET_COLUMNS)}); derive PET "
                                 f"from temperature with --pet-method {'|'.join(PET_METHODS)}")
    needs: list[str] = []
    if pet == "hargreaves":
        needs = [TMIN_COLUMN, TMAX_COLUMN]
    elif pet == "priestley-taylor":
        needs = list(RADIATION_COLUMNS) + ([PRESSURE_COLUMN] if PRESSURE_COLUMN in header else [])
    for col in needs:
        if col not in header:
            raise InputDataError(f"{where}: --pet-method {pet} needs column '{col}', which is missing")
    derived = pet in PET_METHODS
    inputs = [PRECIP_COLUMN, *temperature, *([] if derived else [pet]),
              *[c for c in needs if c not in temperature], *([SWE_COLUMN] if swe else [])]
    return temperature, pet, inputs


def scan_basin(opts: CaravanBuild, fmt: str, path: Path, gauge: str, source: str, swe: bool,
               window: tuple[pd.Timestamp | None, pd.Timestamp | None], header: list[str]) -> BasinPlan:
    """Choose one basin's columns and find its forcing record: the first to the last day (inside
    ``window``) on which every forcing input has a value; inside it no input may miss more than
    --max-gap days in a row (CoverageError otherwise)."""
    where = f"{path} (basin {gauge})"
    temperature, pet, inputs = choose_columns(opts, header, where, swe)
    df = read_timeseries(path, fmt, inputs, gauge, opts.combined)
    if len(df) == 0:
        raise InputDataError(f"{where}: no rows")
    values = np.column_stack([pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) for c in inputs])
    complete = ~np.isnan(values).any(axis=1)
    lo, hi = window
    inside = complete & (df.index >= lo if lo is not None else True) & (df.index <= hi if hi is not None else True)
    if not inside.any():
        if not complete.any():
            raise CoverageError(f"{where}: no day with every forcing input ({', '.join(inputs)})")
        days = df.index[complete]
        raise CoverageError(f"{where}: its forcing record {days[0]:%Y-%m-%d} to {days[-1]:%Y-%m-%d} does not "
                            f"overlap --start/--end {_day(lo, 'the beginning')} to {_day(hi, 'the end')}")
    days = df.index[inside]
    first, last = days[0], days[-1]
    span = pd.date_range(first, last, freq="D")
    sub = pd.DataFrame(values, index=df.index, columns=inputs).reindex(span)
    for col in inputs:
        nan = sub[col].isna().to_numpy()
        if not nan.any():
            continue
        edges = np.diff(np.r_[0, nan.astype(np.int8), 0])
        starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        i = int(np.argmax(stops - starts))
        if stops[i] - starts[i] > opts.max_gap:
            raise CoverageError(
                f"{where}: '{col}' is missing for {plural(int(stops[i] - starts[i]), 'day')} from "
                f"{span[starts[i]]:%Y-%m-%d} to {span[stops[i] - 1]:%Y-%m-%d} (gaps up to --max-gap "
                f"{opts.max_gap} days are interpolated; longer ones are refused, or pass --drop-bad-basins)")
    return BasinPlan(gauge, path, source, temperature, pet, inputs, first, last)


def _day(t: pd.Timestamp | None, default: str) -> str:
    return default if t is None else f"{t:%Y-%m-%d}"


def plan(opts: CaravanBuild, progress: Callable[[int, int], None] | None = None) -> Layout:
    """Find the basins, choose their columns, scan each one's forcing record (dropping basins with
    --drop-bad-basins) and fix the time axis: the union of the records unless --start/--end are given."""
    fmt, files, sources = find_basins(opts)
    if opts.pet_method is not None and opts.pet_method not in PET_METHODS:
        raise InputDataError(f"--pet-method {opts.pet_method!r} is unknown (choose {', '.join(PET_METHODS)})")
    lo = parse_day(opts.start, "--start")
    hi = parse_day(opts.end, "--end")
    if lo is not None and hi is not None and hi <= lo:
        raise InputDataError(f"--end {hi:%Y-%m-%d} is not after --start {lo:%Y-%m-%d}")
    headers = {g: columns_of(path, fmt, g, opts.combined) for g, path in files.items()}
    without_swe = [g for g, h in headers.items() if SWE_COLUMN not in h]
    swe = opts.era5_swe and not without_swe  # an extra input every basin has, or none
    attributes = read_attributes(Path(opts.root), fmt, files, sources, opts.combined)
    basins: dict[str, BasinPlan] = {}
    dropped: list[str] = []
    for i, (g, path) in enumerate(files.items()):
        try:
            basins[g] = scan_basin(opts, fmt, path, g, sources[g], swe, (lo, hi), headers[g])
        except CoverageError as exc:
            if not opts.drop_bad_basins:
                raise
            dropped.append(str(exc))
        if progress:
            progress(i + 1, len(files))
    if not basins:
        raise InputDataError(f"every selected basin was dropped ({plural(len(dropped), 'basin')}; the first: "
                             f"{dropped[0]})")
    start = lo if lo is not None else min(b.first for b in basins.values())
    end = hi if hi is not None else max(b.last for b in basins.values())
    if end - start < pd.Timedelta(days=1):
        raise InputDataError(f"the period {start:%Y-%m-%d} to {end:%Y-%m-%d} is shorter than two days; "
                             "select basins with longer records or set --start/--end")
    kept = next(iter(basins))
    daily, monthly = (products.product_variables(opts.extra_dir, kept) if opts.extra_dir else ([], []))
    pets = sorted({b.pet for b in basins.values()}, key=lambda p: (p in PET_METHODS, p))
    return Layout(fmt, basins, pd.date_range(start, end, freq="D"), swe, daily, monthly,
                  attributes.loc[list(basins)], dropped, pets,
                  without_swe if opts.era5_swe and len(without_swe) < len(files) else [])


# ------------------------------------------------------------------------------------------------ load

def _attribute(att: pd.DataFrame, gauge: str, names: tuple[str, ...], what: str, method: str) -> float:
    for n in names:
        if n in att.columns and np.isfinite(att.at[gauge, n]):
            return float(att.at[gauge, n])
    raise InputDataError(f"basin {gauge}: --pet-method {method} needs the {what}, but no attribute "
                         f"{' or '.join(repr(n) for n in names)} has a value for it")


def load_basin(opts: CaravanBuild, layout: Layout, gauge: str) -> dict[str, np.ndarray]:
    """Checked arrays of one basin on the time axis: forcing [T] (gap-filled inside the record, NaN outside),
    daily targets [T], monthly targets [M], and its per-basin facts (see BASIN_INFO)."""
    b, time = layout.basins[gauge], layout.time
    where = f"{b.path} (basin {gauge})"
    df = read_timeseries(b.path, layout.fmt, [*b.inputs, STREAMFLOW_COLUMN], gauge, opts.combined)
    units = df.attrs["units"]
    df = df.reindex(time)
    rec = slice(time.get_loc(b.first), time.get_loc(b.last) + 1)
    rtime = time[rec]

    def column(col: str, canonical: str) -> np.ndarray:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        return values * unit_factor(units.get(col), canonical, where, col)

    raw = {c: column(c, COLUMN_UNITS.get(c, "mm/d")) for c in b.inputs}
    gap_days = int(np.isnan(np.column_stack([raw[c][rec] for c in b.inputs])).any(axis=1).sum())

    def forcing(name: str, col: str) -> np.ndarray:
        """[T]: NaN outside the record, checked and gap-filled inside it (in place on the view)."""
        values = raw[col]
        values[: rec.start] = np.nan
        values[rec.stop:] = np.nan
        check_physical(name, values[rec], rtime, where, label=col, max_gap=opts.max_gap, report=opts.report,
                       gauge=gauge)
        return values

    out: dict[str, np.ndarray] = {"precipitation": forcing("precipitation", PRECIP_COLUMN)}
    temps = {c: forcing("temperature", c) for c in {*b.temperature, *(c for c in b.inputs if "temperature" in c)}}
    tmean = temps[TMEAN_COLUMN] if TMEAN_COLUMN in temps else 0.5 * (temps[TMIN_COLUMN] + temps[TMAX_COLUMN])
    out["temperature"] = tmean
    if b.pet in PET_METHODS:
        pet = np.full(len(time), np.nan)
        series = lambda a: pd.Series(a[rec], index=rtime)  # noqa: E731
        kwargs: dict = {}
        if b.pet == "hargreaves":
            kwargs = {"tmin": series(temps[TMIN_COLUMN]), "tmax": series(temps[TMAX_COLUMN])}
        elif b.pet == "priestley-taylor":
            rad = [forcing("radiation", c) for c in RADIATION_COLUMNS]
            kwargs["net_radiation_w_m2"] = series(rad[0] + rad[1])
            if PRESSURE_COLUMN in b.inputs:
                kwargs["pressure_kpa"] = series(forcing("pressure", PRESSURE_COLUMN))
            else:
                kwargs["elevation_m"] = _attribute(layout.attributes, gauge, ELEVATION_ATTRIBUTES,
                                                   "elevation (or a surface_pressure_mean column)", b.pet)
        lat = (_attribute(layout.attributes, gauge, LATITUDE_ATTRIBUTES, "latitude", b.pet)
               if b.pet != "priestley-taylor" else 0.0)
        pet[rec] = derive_pet(b.pet, series(tmean), lat, **kwargs)
        check_physical("pet", pet[rec], rtime, where, label=f"PET ({b.pet})", report=opts.report, gauge=gauge)
        out["pet"] = pet
    else:
        out["pet"] = forcing("pet", b.pet)
    if layout.era5_swe:
        out[SWE_INPUT] = forcing(SWE_INPUT, SWE_COLUMN)
    q = column(STREAMFLOW_COLUMN, "mm/d")
    check_physical("q", q, time, where, label=STREAMFLOW_COLUMN, hint=Q_HINT)
    out["q"] = q
    out = {k: v.astype(np.float32) for k, v in out.items()}
    if layout.daily_products:
        out.update(products.read_daily(opts.extra_dir, gauge, time, layout.daily_products, opts.max_gap,
                                       opts.report, record=rec))
    if layout.monthly_products:
        out.update(products.read_monthly(opts.extra_dir, gauge, month_index(time), layout.monthly_products))
    out["forcing_first_day"] = np.datetime64(b.first, "ns")
    out["forcing_last_day"] = np.datetime64(b.last, "ns")
    out["forcing_gap_days"] = np.int32(gap_days)
    out["pet_negative_days"] = np.int32(opts.report.clipped.get("pet", {}).get(gauge, 0))
    out["pet_method"] = np.int8(layout.pet_sources.index(b.pet))
    return out


def variable_specs(layout: Layout) -> list[VariableSpec]:
    names = ["precipitation", "temperature", "pet", *([SWE_INPUT] if layout.era5_swe else []), "q"]
    specs = [VariableSpec(n, "target" if n == "q" else "forcing", CANONICAL_UNITS[n]) for n in names]
    specs += [VariableSpec(n, *products.DAILY_PRODUCTS[n]) for n in layout.daily_products]
    specs += [VariableSpec(n, *products.MONTHLY_PRODUCTS[n], dims=("basin", "month"))
              for n in layout.monthly_products]
    return specs + list(BASIN_INFO)


def build_caravan(opts: CaravanBuild, show_progress: bool = True) -> dict:
    """Build the store; returns a summary (basins, period, variables, attributes, dropped basins and
    attributes, gap report, PET sources)."""

    if opts.max_gap < 0:
        raise InputDataError(f"--max-gap must be >= 0, got {opts.max_gap}")
    if opts.chunk_basins < 1:
        raise InputDataError(f"--chunk-basins must be >= 1, got {opts.chunk_basins}")
    parse_day(opts.start, "--start")
    parse_day(opts.end, "--end")
    try:
        return _build(opts, show_progress)
    finally:
        opts.combined.close()


def _build(opts: CaravanBuild, show_progress: bool) -> dict:
    from rootzone.progress import progress_bar

    with progress_bar(show_progress) as bar:
        scan = bar.add_task("scanning records", total=None)
        layout = plan(opts, progress=lambda i, n: bar.update(scan, completed=i, total=n))
        basins = list(layout.basins)
        att, dropped = select_attributes(layout.attributes, opts.attributes, layout.sources)
        specs = variable_specs(layout)
        attrs = {"caravan_pet_column": ", ".join(p for p in layout.pet_sources if p not in PET_METHODS),
                 "caravan_format": layout.fmt, "max_gap_days": int(opts.max_gap),
                 "dropped_basins": [line for line in layout.dropped]}
        template = make_template(basins, layout.time, specs, att, f"Caravan ({opts.root})", attrs,
                                 basin_chunk=opts.chunk_basins)
        template["pet_method"].attrs.update(
            flag_values=list(range(len(layout.pet_sources))),
            flag_meanings=" ".join(p.replace(" ", "_") for p in layout.pet_sources))
        task = bar.add_task("building store", total=len(basins))
        months = template.sizes["month"]
        writer = StoreWriter(opts.out, template, overwrite=opts.overwrite, basin_chunk=opts.chunk_basins)
        with writer:
            for start in range(0, len(basins), opts.chunk_basins):
                chunk = basins[start:start + opts.chunk_basins]
                arrays = {s.name: _empty(s, len(chunk), len(layout.time), months) for s in specs}
                for i, gauge in enumerate(chunk):
                    for name, values in load_basin(opts, layout, gauge).items():
                        arrays[name][i] = values
                    bar.advance(task)
                writer.write(xr.Dataset({s.name: (s.dims, arrays[s.name]) for s in specs}), start)
            writer.attrs["gap_filled_days"] = opts.report.as_attrs()
    methods = {p: sum(b.pet == p for b in layout.basins.values()) for p in layout.pet_sources}
    return {"basins": len(basins), "start": layout.time[0], "end": layout.time[-1],
            "variables": [s.name for s in specs if s.dims != ("basin",)], "attributes": att.shape[1],
            "dropped_attributes": dropped, "dropped_basins": layout.dropped, "gaps": opts.report.summary(),
            "format": layout.fmt, "pet_sources": methods, "without_swe": layout.without_swe,
            "shorter": sum(b.first > layout.time[0] or b.last < layout.time[-1] for b in layout.basins.values())}


def _empty(spec: VariableSpec, n: int, days: int, months: int) -> np.ndarray:
    if spec.dims == ("basin",):
        return np.zeros(n, dtype=spec.dtype)
    return np.full((n, days if spec.dims[1] == "time" else months), np.nan, np.float32)
