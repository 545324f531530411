"""The rootzone store schema (DESIGN §3): one Zarr v3 group, readable with ``xarray.open_zarr``.

Variables (flat in the group, each with ``units`` and ``role`` attributes):

    forcing    (basin, time)       precipitation mm/d, temperature °C, pet mm/d, optional lai m²/m²,
                                   plus any extra daily inputs; never NaN
    targets    (basin, time)       q mm/d, et mm/d, swe mm; NaN = missing observation
               (basin, month)      twsa mm (GRACE-like anomaly); NaN = missing month
    attributes (basin, attribute)  static basin attributes, float
    truth      any of the above    ``true_*`` variables of a synthetic twin experiment (optional)

Coordinates: ``basin`` (variable-length UTF-8 strings), ``time`` (daily, no gaps), ``month`` (first day
of each month), ``attribute`` (names). Group attributes: ``rootzone_schema`` (version), ``source``.
"""

from __future__ import annotations

import shutil
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import xarray as xr

from rootzone.errors import StoreError

SCHEMA_VERSION = 1
SCHEMA_KEY = "rootzone_schema"

FORCING_UNITS = {"precipitation": "mm/d", "temperature": "degC", "pet": "mm/d", "lai": "m2/m2"}
REQUIRED_FORCING = ("precipitation", "temperature", "pet")
DAILY_TARGET_UNITS = {"q": "mm/d", "et": "mm/d", "swe": "mm"}
MONTHLY_TARGET_UNITS = {"twsa": "mm"}
TARGET_UNITS = {**DAILY_TARGET_UNITS, **MONTHLY_TARGET_UNITS}
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
        dims = ("basin", "month") if name in MONTHLY_TARGET_UNITS else ("basin", "time")
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
    if len(set(ds["basin"].values.tolist())) != ds.sizes["basin"]:
        raise StoreError(f"{where}: duplicate basin ids")
    for name in REQUIRED_FORCING:
        if name not in ds or ds[name].attrs.get("role") != "forcing":
            raise StoreError(f"{where}: required forcing variable '{name}' is missing")
    for name in forcing_names(ds):
        if ds[name].dims != ("basin", "time"):
            raise StoreError(f"{where}: forcing '{name}' must have dims (basin, time), has {ds[name].dims}")
    for name in target_names(ds):
        want = ("basin", "month") if name in MONTHLY_TARGET_UNITS else ("basin", "time")
        if name not in TARGET_UNITS:
            raise StoreError(f"{where}: unknown target '{name}' (known: {', '.join(TARGET_UNITS)})")
        if ds[name].dims != want:
            raise StoreError(f"{where}: target '{name}' must have dims {want}, has {ds[name].dims}")
    if "attributes" not in ds or ds["attributes"].dims != ("basin", "attribute"):
        raise StoreError(f"{where}: 'attributes' (basin, attribute) is missing")


def check_forcing_finite(ds: xr.Dataset, where: str = "store") -> None:
    """Forcing and attributes may not hold NaN (reads the data: call it on in-memory or small stores)."""
    for name in [*forcing_names(ds), "attributes"]:
        bad = ~np.isfinite(ds[name].values)
        if bad.any():
            b = int(np.argwhere(bad)[0][0])
            raise StoreError(f"{where}: '{name}' has {int(bad.sum())} NaN/inf values "
                             f"(first at basin {ds['basin'].values[b]!s})")


def _fs_and_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def store_exists(url: str) -> bool:
    fs, path = _fs_and_path(url)
    return fs.exists(path)


def write_store(ds: xr.Dataset, url: str, overwrite: bool = False, basin_chunk: int = BASIN_CHUNK) -> None:
    """Write ``ds`` as a consolidated Zarr v3 store (``basin_chunk`` basins per chunk), atomically: to a
    temporary sibling first, then moved into place, so a failed write never leaves a half store at ``url``."""
    validate(ds)
    fs, path = _fs_and_path(url)
    if fs.exists(path):
        if not overwrite:
            raise StoreError(f"output '{url}' already exists (pass --overwrite to replace it)")
    tmp, tmp_url = _temp_sibling(fs, path)
    encoding = {name: {"chunks": _chunks(ds[name], basin_chunk)} for name in ds.data_vars}
    try:
        with warnings.catch_warnings():  # consolidated metadata is not (yet) in the Zarr v3 spec; we want it
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            ds.to_zarr(tmp_url, mode="w", zarr_format=3, consolidated=True, encoding=encoding)
        _move_into_place(fs, tmp, path)
    except BaseException:
        if fs.exists(tmp):
            _remove(fs, tmp)
        raise


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def _temp_sibling(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, str]:
    """A fresh temporary path beside ``path`` (filesystem path, and the URL to hand to xarray/zarr)."""
    tmp = f"{path.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    protocol = _protocol(fs)
    return tmp, (tmp if protocol in ("file", "local") else f"{protocol}://{tmp}")


def _move_into_place(fs: fsspec.AbstractFileSystem, tmp: str, path: str) -> None:
    if fs.exists(path):
        _remove(fs, path)
    fs.mv(tmp, path, recursive=True)


def _remove(fs: fsspec.AbstractFileSystem, path: str) -> None:
    if _protocol(fs) in ("file", "local"):
        shutil.rmtree(path)
    else:
        fs.rm(path, recursive=True)


def _chunks(da: xr.DataArray, basin_chunk: int = BASIN_CHUNK) -> tuple[int, ...]:
    sizes = {"basin": basin_chunk, "time": TIME_CHUNK, "month": 10_000, "attribute": 10_000}
    return tuple(max(1, min(sizes.get(d, n), n)) for d, n in zip(da.dims, da.shape))


def open_store(url: str) -> xr.Dataset:
    """Open a store lazily (dask arrays) and check its schema; a clear StoreError if it is not one."""
    fs, path = _fs_and_path(url)
    if not fs.exists(path):
        raise StoreError(f"store '{url}' does not exist")
    try:
        ds = xr.open_zarr(url, consolidated=None, chunks={})
    except Exception as exc:  # zarr/xarray raise many kinds; the user needs one line
        raise StoreError(f"store '{url}' is not a readable Zarr store ({type(exc).__name__}: {exc})") from None
    validate(ds, where=f"store '{url}'")
    return ds


@dataclass(frozen=True)
class VariableSpec:
    """One variable of a store built in pieces: name, role (forcing/target/auxiliary), units and dims
    (``("basin", "time")`` daily or ``("basin", "month")`` monthly)."""

    name: str
    role: str
    units: str
    dims: tuple[str, str] = ("basin", "time")


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
        data[v.name] = xr.DataArray(
            da.full(shape, np.nan, dtype=np.float32, chunks=chunks), dims=v.dims,
            attrs={"units": v.units, "role": v.role, "long_name": DESCRIPTIONS.get(v.name, v.name)})
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
        self.fs, self.path = _fs_and_path(url)
        if self.fs.exists(self.path) and not overwrite:
            raise StoreError(f"output '{url}' already exists (pass --overwrite to replace it)")
        self.tmp, self.tmp_url = _temp_sibling(self.fs, self.path)
        self.written = np.zeros(template.sizes["basin"], dtype=bool)
        self.attrs: dict[str, Any] = {}  # added to the group attributes on commit (e.g. a build report)

    def __enter__(self) -> StoreWriter:
        encoding = {name: {"chunks": _chunks(self.template[name], self.basin_chunk)}
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
        out = block[names].drop_vars(list(block.coords)).astype(np.float32)
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
            _move_into_place(self.fs, self.tmp, self.path)
        except BaseException:
            self._cleanup()
            raise

    def _cleanup(self) -> None:
        if self.fs.exists(self.tmp):
            _remove(self.fs, self.tmp)
