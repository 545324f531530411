"""Reading Caravan's files: the layouts (one CSV or NetCDF per basin, combined NetCDF), one basin's
timeseries, and the attribute tables (see :mod:`rootzone.data.caravan` for the build)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from rootzone.data.checks import InputDataError, parse_dates

BASIN_DIMS = ("basin_id", "gauge_id", "basin")  # the basin dimension of a combined NetCDF
TIME_DIMS = ("date", "time")


class CombinedFiles:
    """The combined NetCDF files of one build, each opened once (a file with a hundred variables takes a
    second or more to open) and closed by :meth:`close` at the end of the build."""

    def __init__(self) -> None:
        self._open: dict[Path, xr.Dataset] = {}
        self._ids: dict[Path, tuple[str | None, dict[str, int]]] = {}

    def dataset(self, path: Path) -> xr.Dataset:
        if path not in self._open:
            try:
                self._open[path] = xr.open_dataset(path)
            except Exception as exc:  # netCDF/HDF5 errors come in many types
                raise InputDataError(f"{path}: cannot read NetCDF ({type(exc).__name__}: {exc})") from None
        return self._open[path]

    def basin_dim(self, path: Path) -> str | None:
        """The basin dimension of ``path`` (None: not a combined file)."""
        ds = self.dataset(path)
        return next((d for d in BASIN_DIMS if d in ds.dims), None)

    def ids(self, path: Path) -> tuple[str, dict[str, int]]:
        """(basin dimension, {gauge id: index}); byte-string ids are decoded."""
        if path not in self._ids:
            dim = self.basin_dim(path)
            if dim is None:
                raise InputDataError(f"{path}: no basin dimension ({' or '.join(BASIN_DIMS)}); not a combined "
                                     "file")
            raw = self.dataset(path)[dim].values
            ids = [(v.decode() if isinstance(v, bytes) else str(v)).strip() for v in raw.tolist()]
            index = {g: i for i, g in enumerate(ids)}
            if len(index) != len(ids):
                dup = pd.Index(ids)[pd.Index(ids).duplicated()][0]
                raise InputDataError(f"{path}: basin {dup} appears twice in '{dim}'")
            self._ids[path] = (dim, index)
        dim, index = self._ids[path]
        return str(dim), index

    def basin(self, path: Path, gauge: str) -> xr.Dataset:
        """The slice of one basin (lazy)."""
        dim, index = self.ids(path)
        return self.dataset(path).isel({dim: index[gauge]})

    def close(self) -> None:
        for ds in self._open.values():
            ds.close()
        self._open.clear()
        self._ids.clear()


def detect_format(root: Path, combined: CombinedFiles) -> str:
    """``combined`` (one NetCDF with a basin dimension), ``netcdf`` (one file per basin) or ``csv``."""
    if root.is_file():
        return "combined"
    base = root / "timeseries" / "netcdf"
    if base.is_dir():
        first = next(iter(sorted(base.glob("*/*.nc"))), None)
        return "combined" if first is not None and combined.basin_dim(first) else "netcdf"
    if (root / "timeseries" / "csv").is_dir():
        return "csv"
    raise InputDataError(f"{root}: no timeseries/netcdf or timeseries/csv folder (not a Caravan directory)")


def find_basins(root: Path, fmt: str, source_names: list[str] | None, basins_file: Path | None,
                combined: CombinedFiles) -> tuple[str, dict[str, Path], dict[str, str]]:
    """Format (``fmt``, or detected for ``auto``) and the timeseries file and source of every selected basin
    (sorted by gauge id): all basins of the ``source_names`` folders (default all), or those in
    ``basins_file``."""
    root = Path(root)
    if not root.exists():
        raise InputDataError(f"Caravan directory '{root}' does not exist")
    fmt = detect_format(root, combined) if fmt == "auto" else fmt
    if fmt == "combined":
        return fmt, *_find_combined(root, source_names, basins_file, combined)
    base, ext = root / "timeseries" / fmt, ".nc" if fmt == "netcdf" else ".csv"
    if not base.is_dir():
        raise InputDataError(f"{base}: folder missing (--format {fmt})")
    sources = _check_sources(base, source_names)
    if basins_file is not None:
        wanted = _read_basin_list(Path(basins_file))
        files, src = {}, {}
        for g in wanted:
            hits = [base / s / f"{g}{ext}" for s in sources if (base / s / f"{g}{ext}").is_file()]
            if not hits:
                guess = base / g.split("_")[0] / f"{g}{ext}"
                raise InputDataError(f"{guess}: timeseries file of basin {g} (listed in {basins_file}) "
                                     "does not exist")
            files[g], src[g] = hits[0], hits[0].parent.name
    else:
        found = {p.stem: p for s in sources for p in sorted((base / s).glob(f"*{ext}"))}
        files, src = found, {g: p.parent.name for g, p in found.items()}
    if not files:
        raise InputDataError(f"{base}: no {ext} files for sources {', '.join(sources)}")
    order = sorted(files)
    return fmt, {g: files[g] for g in order}, {g: src[g] for g in order}


def _check_sources(base: Path, wanted: list[str] | None) -> list[str]:
    sources = wanted or sorted(d.name for d in base.iterdir() if d.is_dir())
    for s in sources:
        if not (base / s).is_dir():
            raise InputDataError(f"{base / s}: no such source folder (sources here: "
                                 f"{', '.join(sorted(d.name for d in base.iterdir() if d.is_dir()))})")
    return sources


def _find_combined(root: Path, source_names: list[str] | None, basins_file: Path | None,
                   combined: CombinedFiles) -> tuple[dict[str, Path], dict[str, str]]:
    """Combined files: ROOT itself, or every .nc under timeseries/netcdf/<source>/ (source = folder)."""
    if root.is_file():
        tables = [(root, root.stem)]
    else:
        base = root / "timeseries" / "netcdf"
        if not base.is_dir():
            raise InputDataError(f"{base}: folder missing (--format combined)")
        tables = [(p, s) for s in _check_sources(base, source_names) for p in sorted((base / s).glob("*.nc"))]
        if not tables:
            raise InputDataError(f"{base}: no .nc files")
    files: dict[str, Path] = {}
    src: dict[str, str] = {}
    for path, source in tables:
        for g in combined.ids(path)[1]:
            if g in files:
                raise InputDataError(f"{path}: basin {g} is also in {files[g]}")
            files[g], src[g] = path, source
    if basins_file is not None:
        wanted = _read_basin_list(Path(basins_file))
        absent = [g for g in wanted if g not in files]
        if absent:
            raise InputDataError(f"basin {absent[0]} (listed in {basins_file}) is in no combined file "
                                 f"({', '.join(str(p) for p, _ in tables[:3])})")
        files = {g: files[g] for g in wanted}
    order = sorted(files)
    return {g: files[g] for g in order}, {g: src[g] for g in order}


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


def read_timeseries(path: Path, fmt: str, columns: list[str] | None, gauge: str,
                    combined: CombinedFiles | None = None) -> pd.DataFrame:
    """One basin's Caravan table indexed by date; ``columns=None`` reads the dates only. NetCDF variables
    with a ``units`` attribute keep it in ``df.attrs['units']``. ``combined`` holds the open combined files
    (fmt ``combined``)."""
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
            with _basin_dataset(path, fmt, gauge, combined) as ds:
                tdim = next((d for d in TIME_DIMS if d in ds.dims), None)
                if tdim is None:
                    raise InputDataError(f"{where}: no 'date' or 'time' dimension")
                keep = [c for c in (columns or []) if c in ds.data_vars]
                units = {c: ds[c].attrs["units"] for c in keep if "units" in ds[c].attrs}
                cols = {c: ds[c].values for c in keep if ds[c].dims == (tdim,)}
                df = pd.DataFrame(cols, index=ds.indexes[tdim])
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


@contextlib.contextmanager
def _basin_dataset(path: Path, fmt: str, gauge: str, combined: CombinedFiles | None) -> Iterator[xr.Dataset]:
    """One basin's dataset: its own NetCDF file (opened and closed here) or its slice of a combined file."""
    if fmt != "combined":
        with xr.open_dataset(path) as ds:
            yield ds
        return
    own = combined is None
    combined = combined or CombinedFiles()
    try:
        yield combined.basin(path, gauge)
    finally:
        if own:
            combined.close()


def columns_of(path: Path, fmt: str, gauge: str, combined: CombinedFiles | None = None) -> list[str]:
    """The column (variable) names of one basin's table (of a combined file: those with a value for it)."""
    where = f"{path} (basin {gauge})"
    try:
        if fmt == "csv":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        with _basin_dataset(path, fmt, gauge, combined) as ds:
            tdim = next((d for d in TIME_DIMS if d in ds.dims), None)
            names = [v for v in ds.data_vars if ds[v].dims == (tdim,)]
            if fmt == "combined":
                empty = ds[names].isnull().all().compute()
                names = [v for v in names if not bool(empty[v])]
            return [str(v) for v in names]
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputDataError(f"{where}: cannot read ({type(exc).__name__}: {exc})") from None


def read_attributes(root: Path, fmt: str, files: dict[str, Path], sources: dict[str, str],
                    combined: CombinedFiles | None = None) -> pd.DataFrame:
    """Every numeric attribute of the basins [basin × attribute] (float64; NaN = missing): the
    ``attributes/<source>/attributes_*.csv`` tables joined on ``gauge_id`` (required for the per-basin
    layouts, optional for a combined file), and the (basin,) variables of a combined file. A column of a
    table with no value at all (e.g. an empty text column such as ``country``) is no attribute."""
    columns: dict[str, pd.Series] = {}
    gauges = list(files)

    def add(col: str, values: pd.Series, tag: str) -> None:
        if col in columns:
            old = columns[col]
            both = old.notna() & values.notna()
            if not both.any() or np.allclose(old[both], values[both]):
                columns[col] = old.fillna(values)
                return
            col = f"{col}_{tag}"
        columns[col] = columns[col].fillna(values) if col in columns else values

    for source in sorted(set(sources.values())):
        members = [g for g in gauges if sources[g] == source]
        folder = Path(root) / "attributes" / source
        tables = sorted(folder.glob("attributes_*.csv")) if not Path(root).is_file() else []
        if not tables and fmt != "combined":
            raise InputDataError(f"{folder}: no attributes_*.csv tables for source '{source}'")
        for table in tables:
            df = _read_table(table)
            absent = [g for g in members if g not in df.index]
            if absent:
                more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
                raise InputDataError(f"{table}: basin {absent[0]}{more} missing from the attribute table")
            tag = table.stem.removeprefix("attributes_").removesuffix("_" + source)
            for col in df.columns:
                add(col, df.loc[members, col].reindex(gauges), tag)
    if fmt == "combined":
        for path in sorted(set(files.values()), key=str):
            members = [g for g in gauges if files[g] == path]
            for col, values in _combined_attributes(combined or CombinedFiles(), path, members).items():
                add(col, values.reindex(gauges), path.stem)
    return pd.DataFrame(columns, index=pd.Index(gauges, name="gauge_id"), dtype=np.float64)


def _read_table(table: Path) -> pd.DataFrame:
    """One attribute table indexed by gauge_id: its numeric (and boolean) columns with any value, float64."""
    try:
        df = pd.read_csv(table, dtype={"gauge_id": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputDataError(f"{table}: cannot read CSV ({exc})") from None
    if "gauge_id" not in df.columns:
        raise InputDataError(f"{table}: missing required column 'gauge_id'")
    dup = df["gauge_id"][df["gauge_id"].duplicated()]
    if len(dup):
        raise InputDataError(f"{table}: basin {dup.iloc[0]} appears twice")
    df = df.set_index("gauge_id")
    df = df.loc[:, df.notna().any()]  # an empty column (e.g. country left blank) carries nothing
    return df.select_dtypes(include=["number", "bool"]).astype(np.float64)


def _combined_attributes(combined: CombinedFiles, path: Path, gauges: list[str]) -> dict[str, pd.Series]:
    """The numeric (basin,) variables of a combined file for ``gauges``."""
    dim, index = combined.ids(path)
    ds = combined.dataset(path)
    out = {}
    for name in ds.data_vars:
        da = ds[name]
        if da.dims == (dim,) and (np.issubdtype(da.dtype, np.number) or da.dtype == bool):
            values = da.values[[index[g] for g in gauges]].astype(np.float64)
            if np.isfinite(values).any():
                out[str(name)] = pd.Series(values, index=gauges)
    return out


def select_attributes(att: pd.DataFrame, names: list[str] | None,
                      sources: dict[str, str]) -> tuple[pd.DataFrame, list[str]]:
    """Without ``names``, columns with a missing value for any basin are dropped (returned second); with
    ``names`` exactly those, and a missing value is refused."""
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


def load_attributes(root: Path, sources: dict[str, str],
                    names: list[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """Numeric attributes of the basins of a per-basin layout [basin × attribute] (float64) and the names
    of the columns dropped for missing values (see :func:`read_attributes`, :func:`select_attributes`)."""
    files = {g: Path(root) for g in sources}
    return select_attributes(read_attributes(root, "csv", files, sources), names, sources)
