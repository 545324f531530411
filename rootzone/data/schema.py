"""The rootzone store schema (DESIGN §3): one Zarr v3 group, readable with ``xarray.open_zarr``.

Variables (flat in the group, each with ``units`` and ``role`` attributes):

    forcing    (basin, time)       precipitation mm/d, temperature °C, pet mm/d, optional lai m²/m²,
                                   plus any extra daily inputs; never NaN
    targets    (basin, time)       q mm/d, et mm/d, swe mm; NaN = missing observation
               (basin, month)      twsa mm (GRACE-like anomaly); NaN = missing month
    attributes (basin, attribute)  static basin attributes, float
    truth      any of the above    ``true_*`` variables of a synthetic twin experiment (optional)
    records    (basin,)            ``forcing_first_day``, ``forcing_last_day`` (datetime64[ns], optional):
                                   each basin's forcing record; forcing is complete inside it and NaN
                                   outside it. Absent: every basin covers the whole time axis.
    build info (basin,)            role ``basin_info``, e.g. ``pet_negative_days``, ``forcing_gap_days``,
                                   ``pet_method`` (optional; see docs/data.md)

Coordinates: ``basin`` (variable-length UTF-8 strings), ``time`` (daily, no gaps), ``month`` (first day
of each month), ``attribute`` (names). Group attributes: ``rootzone_schema`` (version), ``source``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
import numpy as np
import pandas as pd
import xarray as xr

from rootzone.errors import RootzoneError, StoreError
from rootzone.safety import (
    DATA_STORE_KEY,
    check_output_path,
    clean_stale_temps,
    ensure_replaceable,
    fs_and_path,
    is_local,
    move_into_place,
    temp_sibling,
)

SCHEMA_VERSION = 1
SCHEMA_KEY = DATA_STORE_KEY  # "rootzone_schema": the attribute that marks a store rootzone wrote

FORCING_UNITS = {"precipitation": "mm/d", "temperature": "degC", "pet": "mm/d", "lai": "m2/m2"}
REQUIRED_FORCING = ("precipitation", "temperature", "pet")
RECORD_VARIABLES = ("forcing_first_day", "forcing_last_day")  # (basin,) datetime64[ns]: each basin's record
# The forcing of the process model in the order of its [..., 4] input (DESIGN §4); lai is optional (0 if absent).
PHYSICS_FORCING = ("precipitation", "temperature", "pet", "lai")


@dataclass(frozen=True)
class Target:
    """One observed target: its store variable ``name``, ``cadence`` (daily on ``time``, monthly on
    ``month``), ``units`` and ``output``, the :class:`rootzone.physics.equations.BucketOutputs` field it is
    compared with. A monthly target is scored as anomalies of the monthly mean of ``output`` (DESIGN §6)."""

    name: str
    cadence: Literal["daily", "monthly"]
    units: str
    output: str  # BucketOutputs field: q, et, swe (= w), tws (= w + s + g)

    @property
    def monthly(self) -> bool:
        return self.cadence == "monthly"

    @property
    def dims(self) -> tuple[str, str]:
        """Dimensions of the target in a store."""
        return ("basin", "month") if self.monthly else ("basin", "time")

    def model_series(self, outputs: Any) -> Any:
        """The daily model series ([B, T]) this target is compared with: field ``output`` of a BucketOutputs,
        or entry ``output`` of a mapping (e.g. ensemble sums {"q": ..., "tws": ...})."""
        if isinstance(outputs, Mapping):
            return outputs[self.output]
        return getattr(outputs, self.output)


TARGETS: tuple[Target, ...] = (
    Target("q", "daily", "mm/d", "q"),
    Target("et", "daily", "mm/d", "et"),
    Target("swe", "daily", "mm", "swe"),
    Target("twsa", "monthly", "mm", "tws"),
)
_BY_NAME = {t.name: t for t in TARGETS}
TARGET_NAMES: tuple[str, ...] = tuple(_BY_NAME)


def target(name: str) -> Target:
    """The :class:`Target` called ``name`` (KeyError naming the known ones otherwise)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r} (known: {', '.join(TARGET_NAMES)})") from None


def daily_targets(names: Iterable[str] | None = None) -> list[Target]:
    """The daily targets, of ``names`` (in that order) or of the whole table."""
    return [t for t in _targets(names) if not t.monthly]


def monthly_targets(names: Iterable[str] | None = None) -> list[Target]:
    """The monthly targets, of ``names`` (in that order) or of the whole table."""
    return [t for t in _targets(names) if t.monthly]


def _targets(names: Iterable[str] | None) -> list[Target]:
    return list(TARGETS) if names is None else [target(n) for n in names]


def is_monthly(name: str) -> bool:
    return target(name).monthly


DAILY_TARGET_UNITS = {t.name: t.units for t in TARGETS if not t.monthly}
MONTHLY_TARGET_UNITS = {t.name: t.units for t in TARGETS if t.monthly}
TARGET_UNITS = {t.name: t.units for t in TARGETS}
DESCRIPTIONS = {
    "precipitation": "daily precipitation",
    "temperature": "daily mean air temperature",
    "pet": "potential evaporation",
    "lai": "leaf area index",
    "q": "streamflow divided by basin area",
    "et": "actual evapotranspiration",
    "swe": "snow water equivalent",
    "twsa": "terrestrial water storage anomaly (monthly)",
}
BASIN_CHUNK = 256  # basins per chunk
TIME_CHUNK = 3653  # days per chunk (about ten years)


def stack_forcing(arrays: Mapping[str, np.ndarray], dtype: Any = np.float32) -> np.ndarray:
    """The physics forcing [B, T, 4] in :data:`PHYSICS_FORCING` order from per-variable [B, T] arrays
    (physical units); ``lai`` is 0 where ``arrays`` has none. Extra entries of ``arrays`` are ignored."""
    missing = [v for v in REQUIRED_FORCING if v not in arrays]
    if missing:
        raise KeyError(f"physics forcing {missing} missing (have {', '.join(arrays)})")
    shape = np.shape(arrays["precipitation"])
    columns = [np.asarray(arrays[v], dtype=dtype) if v in arrays else np.zeros(shape, dtype=dtype)
               for v in PHYSICS_FORCING]
    return np.stack(columns, axis=-1)


def forcing_names(ds: xr.Dataset) -> list[str]:
    return [v for v in ds.data_vars if ds[v].attrs.get("role") == "forcing"]


def target_names(ds: xr.Dataset) -> list[str]:
    return [v for v in ds.data_vars if ds[v].attrs.get("role") == "target"]


def make_dataset(
    basins: Iterable[str],
    time: pd.DatetimeIndex,
    forcing: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    attributes: pd.DataFrame,
    source: str,
    extra: dict[str, xr.DataArray] | None = None,
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Assemble (and validate) a store dataset from arrays.

    forcing[name]: [basin, time]; targets: q/et/swe [basin, time], twsa [basin, month];
    attributes: DataFrame indexed by basin id, one float column per attribute.
    """
    basins = [str(b) for b in basins]
    months = month_index(time)
    data: dict[str, xr.DataArray] = {}
    for name, arr in forcing.items():
        data[name] = xr.DataArray(np.asarray(arr, dtype=np.float32), dims=("basin", "time"),
                                  attrs={"units": FORCING_UNITS.get(name, "1"), "role": "forcing",
                                         "long_name": DESCRIPTIONS.get(name, name)})
    for name, arr in targets.items():
        dims = target(name).dims
        data[name] = xr.DataArray(np.asarray(arr, dtype=np.float32), dims=dims,
                                  attrs={"units": TARGET_UNITS[name], "role": "target",
                                         "long_name": DESCRIPTIONS[name]})
    data.update(extra or {})
    return _assemble(data, basins, time, months, attributes, source, attrs, where="store")


def _assemble(data: dict[str, xr.DataArray], basins: list[str], time: pd.DatetimeIndex,
              months: pd.DatetimeIndex, attributes: pd.DataFrame, source: str, attrs: dict[str, Any] | None,
              where: str) -> xr.Dataset:
    """Add the attribute table and the coordinates to ``data``, stamp the schema version and validate."""
    att = attributes.reindex(basins)
    data["attributes"] = xr.DataArray(att.to_numpy(dtype=np.float32), dims=("basin", "attribute"),
                                      attrs={"role": "attributes", "units": "1"})
    ds = xr.Dataset(
        data,
        coords={
            "basin": ("basin", np.array(basins, dtype=object)),
            "time": ("time", time.values),
            "month": ("month", months.values),
            "attribute": ("attribute", np.array([str(c) for c in att.columns], dtype=object)),
        },
        attrs={SCHEMA_KEY: SCHEMA_VERSION, "source": source, **(attrs or {})},
    )
    validate(ds, where=where)
    return ds


def month_index(time: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """First day of every calendar month touched by ``time``."""
    return pd.date_range(time[0].to_period("M").to_timestamp(), time[-1], freq="MS")


def validate(ds: xr.Dataset, where: str = "store") -> None:
    """Raise StoreError with a one-line message when ``ds`` does not follow the schema."""
    if ds.attrs.get(SCHEMA_KEY) is None:
        raise StoreError(f"{where} is not a rootzone store (no '{SCHEMA_KEY}' attribute)")
    if int(ds.attrs[SCHEMA_KEY]) > SCHEMA_VERSION:
        raise StoreError(f"{where} uses schema version {ds.attrs[SCHEMA_KEY]}, newer than this rootzone "
                         f"({SCHEMA_VERSION}); upgrade rootzone")
    for coord in ("basin", "time", "month", "attribute"):
        if coord not in ds.coords:
            raise StoreError(f"{where} has no '{coord}' coordinate")
    time = pd.DatetimeIndex(ds["time"].values)
    if len(time) < 2 or not (np.diff(time.values) == np.timedelta64(1, "D")).all():
        raise StoreError(f"{where}: 'time' must be daily without gaps")
    if ds.sizes["basin"] == 0:
        raise StoreError(f"{where} has no basins (the 'basin' dimension is empty)")
    if len(set(ds["basin"].values.tolist())) != ds.sizes["basin"]:
        raise StoreError(f"{where}: duplicate basin ids")
    for name in REQUIRED_FORCING:
        if name not in ds or ds[name].attrs.get("role") != "forcing":
            raise StoreError(f"{where}: required forcing variable '{name}' is missing")
    for name in forcing_names(ds):
        if ds[name].dims != ("basin", "time"):
            raise StoreError(f"{where}: forcing '{name}' must have dims (basin, time), has {ds[name].dims}")
        if name in FORCING_UNITS:
            _check_units(ds[name], name, FORCING_UNITS[name], where)
    for name in target_names(ds):
        if name not in TARGET_UNITS:
            raise StoreError(f"{where}: unknown target '{name}' (known: {', '.join(TARGET_UNITS)})")
        want = target(name).dims
        if ds[name].dims != want:
            raise StoreError(f"{where}: target '{name}' must have dims {want}, has {ds[name].dims}")
        _check_units(ds[name], name, TARGET_UNITS[name], where)
    if "attributes" not in ds or ds["attributes"].dims != ("basin", "attribute"):
        raise StoreError(f"{where}: 'attributes' (basin, attribute) is missing")
    present = [v for v in RECORD_VARIABLES if v in ds]
    if present and len(present) != len(RECORD_VARIABLES):
        raise StoreError(f"{where}: '{present[0]}' without '{(set(RECORD_VARIABLES) - set(present)).pop()}' "
                         "(a basin's forcing record needs both)")
    for name in present:
        if ds[name].dims != ("basin",) or not np.issubdtype(ds[name].dtype, np.datetime64):
            raise StoreError(f"{where}: '{name}' must be a date per basin (dims (basin,), datetime64), "
                             f"has dims {ds[name].dims} and dtype {ds[name].dtype}")


def forcing_records(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Each basin's first and last day of forcing ([B] datetime64[ns] each): ``forcing_first_day`` and
    ``forcing_last_day`` of the store, or the whole time axis for every basin in a store without them
    (older stores, demo stores, imported pickles). Reads the two small variables."""
    time = ds["time"].values
    n = ds.sizes["basin"]
    if RECORD_VARIABLES[0] not in ds:
        return np.full(n, time[0], dtype="datetime64[ns]"), np.full(n, time[-1], dtype="datetime64[ns]")
    with store_reads(store_where(ds)):
        first = np.asarray(ds[RECORD_VARIABLES[0]].values, dtype="datetime64[ns]")
        last = np.asarray(ds[RECORD_VARIABLES[1]].values, dtype="datetime64[ns]")
    return first, last


def record_mask(ds: xr.Dataset) -> xr.DataArray:
    """[basin, time] bool: True on the days inside each basin's forcing record (all True without records)."""
    first, last = forcing_records(ds)
    time = ds["time"]
    return (time >= xr.DataArray(first, dims="basin")) & (time <= xr.DataArray(last, dims="basin"))


def check_records(ds: xr.Dataset, where: str = "store") -> None:
    """The values of ``forcing_first_day``/``forcing_last_day`` (when present): every basin has a record
    (no NaT), first <= last, both on the time axis. One StoreError line naming the basin otherwise."""
    if RECORD_VARIABLES[0] not in ds:
        return
    first, last = forcing_records(ds)
    lo, hi = ds["time"].values[0], ds["time"].values[-1]
    bad = np.isnat(first) | np.isnat(last) | (first > last) | (first < lo) | (last > hi)
    if bad.any():
        b = int(np.flatnonzero(bad)[0])
        raise StoreError(f"{where}: basin {ds['basin'].values[b]!s} has an impossible forcing record "
                         f"{str(first[b])[:10]} to {str(last[b])[:10]} (time axis {str(lo)[:10]} to "
                         f"{str(hi)[:10]})")


def _check_units(da: xr.DataArray, name: str, expected: str, where: str) -> None:
    """The ``units`` attribute of a known variable must be ``expected`` (or a spelling of it, e.g. mm/day)."""
    from rootzone.data.checks import UNIT_ALIASES

    found = da.attrs.get("units")
    if found is None:
        raise StoreError(f"{where}: '{name}' has no 'units' attribute (expected {expected})")
    key = " ".join(str(found).strip().lower().split())
    same = UNIT_ALIASES.get(expected, {expected.lower(): 1.0}).get(key) == 1.0 or key == expected.lower()
    if not same:
        raise StoreError(f"{where}: '{name}' is in units '{found}', expected {expected} "
                         "(convert it and rebuild the store)")


def store_where(ds: xr.Dataset, default: str = "store") -> str:
    """``store 'URL'`` for messages about an opened store (``default`` for one built in memory)."""
    source = ds.encoding.get("source")
    return f"store '{source}'" if source else default


@contextlib.contextmanager
def store_reads(where: str) -> Iterator[None]:
    """Turn a failure while reading a store's data (a corrupt or missing chunk: zarr and its codecs raise
    many kinds) into one :class:`StoreError` line naming the store."""
    try:
        yield
    except (RootzoneError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise StoreError(f"{where}: cannot read its data, a chunk is corrupt or missing ({detail})") from None


def check_forcing_finite(ds: xr.Dataset, where: str = "store") -> None:
    """Forcing (inside each basin's record, :func:`record_mask`) and attributes may not hold NaN or ±inf,
    and precipitation may not be negative.

    Reads the forcing basin block by basin block when ``ds`` is lazy (only per-basin counts are kept), so
    it may be called on a whole opened store as well as on in-memory training forcing. The message names
    the variable, the count, and the first basin concerned.
    """
    import dask

    where = store_where(ds) if where == "store" else where
    counts: dict[tuple[str, str], xr.DataArray] = {}
    inside = record_mask(ds) if RECORD_VARIABLES[0] in ds else None
    for name in [*forcing_names(ds), "attributes"]:
        if name not in ds:
            continue
        da = ds[name]
        other = [d for d in da.dims if d != "basin"]
        bad = ~np.isfinite(da)
        if inside is not None and "time" in da.dims:
            bad = bad & inside
        counts[(name, "NaN/inf")] = bad.sum(dim=other)
        if name == "precipitation":
            counts[(name, "negative")] = (da < 0).sum(dim=other)
    with store_reads(where):
        (done,) = dask.compute(counts)
    for (name, kind), per_basin in done.items():
        per_basin = np.asarray(per_basin)
        if per_basin.any():
            b = int(np.flatnonzero(per_basin)[0])
            n_basins = int((per_basin > 0).sum())
            raise StoreError(f"{where}: '{name}' has {int(per_basin.sum())} {kind} values in {n_basins} "
                             f"basin(s) (first at basin {ds['basin'].values[b]!s}, "
                             f"{int(per_basin[b])} values)")


def store_exists(url: str) -> bool:
    fs, path = fs_and_path(url)
    return fs.exists(path)


def check_output(url: str, overwrite: bool) -> None:
    """Refuse an output a build must not write: an existing one without ``overwrite``, and with it
    anything that is not a rootzone data store (a file, a symlink, a foreign directory) or is ``/``, the
    home directory, the current directory or one of its ancestors. Writes nothing."""
    fs, path = fs_and_path(url)
    exists = fs.exists(path) or (is_local(fs) and _is_link(path))
    if is_local(fs) or exists:
        check_output_path(url)
    if exists:
        if not overwrite:
            raise StoreError(f"output '{url}' already exists (pass --overwrite to replace it)")
        ensure_replaceable(url, DATA_STORE_KEY)


def _is_link(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_symlink()


def _start_build(url: str, overwrite: bool) -> tuple[fsspec.AbstractFileSystem, str, str, str]:
    """Checks before a build writes anything; removes stale temporaries of killed builds of ``url``;
    returns (fs, path, temporary path, temporary URL)."""
    check_output(url, overwrite)
    fs, path = fs_and_path(url)
    clean_stale_temps(fs, path)
    tmp, tmp_url = temp_sibling(fs, path)
    return fs, path, tmp, tmp_url


def _finish_build(fs: fsspec.AbstractFileSystem, tmp: str, path: str, url: str, overwrite: bool) -> None:
    """Move the finished temporary store into place (replacing only a rootzone data store)."""
    if not overwrite and fs.exists(path):
        raise StoreError(f"output '{url}' appeared while this build ran (another build?); "
                         "pass --overwrite to replace it")
    move_into_place(fs, tmp, path, DATA_STORE_KEY)


def _remove_temp(fs: fsspec.AbstractFileSystem, tmp: str) -> None:
    import shutil

    if not fs.exists(tmp):
        return
    if is_local(fs):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        fs.rm(tmp, recursive=True)


def write_store(ds: xr.Dataset, url: str, overwrite: bool = False, basin_chunk: int = BASIN_CHUNK) -> None:
    """Write ``ds`` as a consolidated Zarr v3 store (``basin_chunk`` basins per chunk), atomically: to a
    temporary sibling first, then moved into place, so a failed write never leaves a half store at ``url``.

    An existing ``url`` is replaced only with ``overwrite`` and only when it is a rootzone data store
    (checked before anything is written); temporaries left by a killed build of ``url`` are removed.
    """
    validate(ds)
    fs, path, tmp, tmp_url = _start_build(url, overwrite)
    encoding = {name: {"chunks": _chunks(ds[name], basin_chunk)} for name in ds.data_vars}
    try:
        with warnings.catch_warnings():  # consolidated metadata is not (yet) in the Zarr v3 spec; we want it
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            ds.to_zarr(tmp_url, mode="w", zarr_format=3, consolidated=True, encoding=encoding)
        _finish_build(fs, tmp, path, url, overwrite)
    except BaseException:
        _remove_temp(fs, tmp)
        raise


def _chunks(da: xr.DataArray, basin_chunk: int = BASIN_CHUNK) -> tuple[int, ...]:
    sizes = {"basin": basin_chunk, "time": TIME_CHUNK, "month": 10_000, "attribute": 10_000}
    return tuple(max(1, min(sizes.get(d, n), n)) for d, n in zip(da.dims, da.shape))


def open_store(url: str) -> xr.Dataset:
    """Open a store lazily (dask arrays) and check its schema and units; a clear StoreError if it is not
    one. Reads of its data can fail later on a corrupt chunk: wrap them in :func:`store_reads`."""
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        raise StoreError(f"store '{url}' does not exist")
    try:
        ds = xr.open_zarr(url, consolidated=None, chunks={})
    except Exception as exc:  # zarr/xarray raise many kinds; the user needs one line
        raise StoreError(f"store '{url}' is not a readable Zarr store ({type(exc).__name__}: {exc})") from None
    validate(ds, where=f"store '{url}'")
    check_records(ds, where=f"store '{url}'")
    return ds


@dataclass(frozen=True)
class VariableSpec:
    """One variable of a store built in pieces: name, role (forcing/target/auxiliary/basin_info), units,
    dims (``("basin", "time")`` daily, ``("basin", "month")`` monthly or ``("basin",)`` one value per
    basin) and dtype (float32; a per-basin variable may be ``datetime64[ns]`` or an integer)."""

    name: str
    role: str
    units: str
    dims: tuple[str, ...] = ("basin", "time")
    dtype: str = "float32"
    long_name: str = ""


def make_template(
    basins: Sequence[str],
    time: pd.DatetimeIndex,
    variables: Sequence[VariableSpec],
    attributes: pd.DataFrame,
    source: str,
    attrs: dict[str, Any] | None = None,
    basin_chunk: int = BASIN_CHUNK,
) -> xr.Dataset:
    """A lazy (dask, all-NaN) dataset with the layout of the final store, for :class:`StoreWriter`.

    Daily variables are [basin, time], monthly [basin, month] (float32); ``attributes`` (DataFrame indexed
    by basin id, float columns) is held in memory and written as the (basin, attribute) array at once.
    """
    import dask.array as da

    basins = [str(b) for b in basins]
    months = month_index(time)
    lengths = {"basin": len(basins), "time": len(time), "month": len(months)}
    data: dict[str, xr.DataArray] = {}
    for v in variables:
        shape = tuple(lengths[d] for d in v.dims)
        chunks = tuple(min(n, basin_chunk if d == "basin" else TIME_CHUNK) for d, n in zip(v.dims, shape))
        dtype = np.dtype(v.dtype)
        fill = np.datetime64("NaT", "ns") if dtype.kind == "M" else (np.nan if dtype.kind == "f" else 0)
        var_attrs = {"role": v.role, "long_name": v.long_name or DESCRIPTIONS.get(v.name, v.name)}
        if dtype.kind != "M":  # xarray's datetime encoding owns 'units' of a date variable
            var_attrs["units"] = v.units
        data[v.name] = xr.DataArray(da.full(shape, fill, dtype=dtype, chunks=chunks), dims=v.dims,
                                    attrs=var_attrs)
        if dtype.kind == "M":
            data[v.name].encoding = {"units": "days since 1970-01-01", "dtype": "int64"}
    return _assemble(data, basins, time, months, attributes, source, attrs, where="new store")


class StoreWriter:
    """Write a store block by block with bounded memory, atomically.

    ``with StoreWriter(url, template) as w: w.write(block, start)`` creates the layout of ``template``
    (see :func:`make_template`) at a temporary sibling of ``url``, writes each block of basins
    ``[start, start + n)`` into its region, and on a clean exit consolidates the metadata and moves the
    store into place; on any error the temporary store is removed and ``url`` is left as it was.
    Blocks must start on a multiple of ``basin_chunk`` so that no two blocks share a Zarr chunk.
    """

    def __init__(self, url: str, template: xr.Dataset, overwrite: bool = False,
                 basin_chunk: int = BASIN_CHUNK):
        validate(template, where="new store")
        self.url, self.template, self.basin_chunk = url, template, int(basin_chunk)
        self.overwrite = overwrite
        self.fs, self.path, self.tmp, self.tmp_url = _start_build(url, overwrite)
        self.written = np.zeros(template.sizes["basin"], dtype=bool)
        self.attrs: dict[str, Any] = {}  # added to the group attributes on commit (e.g. a build report)

    def __enter__(self) -> StoreWriter:
        encoding = {name: {**self.template[name].encoding, "chunks": _chunks(self.template[name], self.basin_chunk)}
                    for name in self.template.data_vars}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
                self.template.to_zarr(self.tmp_url, mode="w", zarr_format=3, consolidated=True,
                                      encoding=encoding, compute=False)
        except BaseException:
            self._cleanup()
            raise
        return self

    def write(self, block: xr.Dataset, start: int) -> None:
        """Write ``block`` (variables of the template with a leading ``basin`` dim) at basins
        ``[start, start + block.sizes['basin'])``."""
        n = block.sizes["basin"]
        if start % self.basin_chunk or start + n > len(self.written):
            raise ValueError(f"block [{start}, {start + n}) is not aligned to "
                             f"{self.basin_chunk}-basin chunks")
        names = [v for v in block.data_vars if v != "attributes"]
        for v in names:
            if v not in self.template or self.template[v].dims != block[v].dims:
                raise ValueError(f"block variable '{v}' does not match the store layout")
        out = block[names].drop_vars(list(block.coords))
        out = out.assign({v: out[v].astype(np.float32) for v in names if out[v].dtype.kind == "f"})
        out.to_zarr(self.tmp_url, region={"basin": slice(start, start + n)}, mode="r+", zarr_format=3,
                    consolidated=False)
        self.written[start:start + n] = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._cleanup()
            return
        try:
            if not self.written.all():
                raise StoreError(f"internal: {int((~self.written).sum())} basins were never written")
            import zarr

            if self.attrs:
                zarr.open_group(self.tmp_url, mode="r+", zarr_format=3).attrs.update(self.attrs)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
                zarr.consolidate_metadata(self.tmp_url, zarr_format=3)
            _finish_build(self.fs, self.tmp, self.path, self.url, self.overwrite)
        except BaseException:
            self._cleanup()
            raise

    def _cleanup(self) -> None:
        _remove_temp(self.fs, self.tmp)
