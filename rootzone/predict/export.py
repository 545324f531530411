"""S_max as a product (``rootzone export``): per basin the S_max climatology of a prediction store, as CSV and,
joined to the user's basin polygons, as a GeoPackage a GIS opens with one feature per basin.

Fields (:data:`FIELDS`; mm unless stated), all from the days after the spin-up (``in_warmup``):

    smax_mean          time mean of the ensemble-mean S_max
    smax_seasonal_min  lowest of the 12 calendar-month means of the ensemble-mean S_max
    smax_seasonal_max  highest of them
    smax_min_month     calendar month (1-12) of that minimum
    smax_max_month     calendar month (1-12) of the maximum
    smax_spread        ensemble spread: std over members (ddof=0) of each member's time-mean S_max
    smax_member_q05    5 % quantile over members of the member time means
    smax_member_q95    95 % quantile of them
    members            members in the prediction store
    outside_training_range  1 when an attribute lies outside a member's training range (extrapolation)

The polygon file is anything GDAL reads through pyogrio (GeoPackage, Shapefile, GeoJSON, FlatGeobuf ...); its
id column (``--id-column``, default the first of :data:`ID_COLUMNS` present) must name every predicted basin
exactly once. Polygons of other basins are left out. Outputs are written atomically and never replaced without
``overwrite``.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from rootzone.errors import RootzoneError
from rootzone.safety import atomic_write_bytes, atomic_write_text, check_output_path, fs_and_path

FIELDS = ("smax_mean", "smax_seasonal_min", "smax_seasonal_max", "smax_min_month", "smax_max_month", "smax_spread",
          "smax_member_q05", "smax_member_q95", "members", "outside_training_range")
ID_COLUMNS = ("basin", "basin_id", "gauge_id", "id", "ID")
LAYER = "smax"


def smax_climatology(pred: xr.Dataset, chunk: int = 256) -> pd.DataFrame:
    """:data:`FIELDS` per basin (index ``basin``, store order) from a prediction store, streamed over basin
    chunks (one chunk's members × days in memory)."""
    if "smax" not in pred or "smax_mean" not in pred:
        raise RootzoneError("the predictions hold no S_max (predict with --variables including smax)")
    spin = np.asarray(pred["in_warmup"].values, dtype=bool)
    month = pd.DatetimeIndex(pred["time"].values).month.to_numpy()[~spin]
    if not len(month):
        raise RootzoneError("the predictions have no day after the spin-up")
    n, rows = pred.sizes["basin"], []
    for lo in range(0, n, chunk):
        p = pred.isel(basin=slice(lo, min(lo + chunk, n)))
        mean = p["smax_mean"].values[:, ~spin].astype(np.float64)  # [B, T]
        members = np.nanmean(p["smax"].values[:, :, ~spin].astype(np.float64), axis=2)  # [M, B]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # basins skipped for invalid inputs are all NaN
            clim = np.stack([np.nanmean(mean[:, month == m], axis=1) if (month == m).any()
                             else np.full(len(mean), np.nan) for m in range(1, 13)], axis=1)  # [B, 12]
            ok = np.isfinite(clim).any(axis=1)
            filled = np.where(np.isfinite(clim), clim, np.inf)
            q05, q95 = np.nanquantile(members, (0.05, 0.95), axis=0)
            frame = pd.DataFrame({
                "basin": [str(b) for b in p["basin"].values],
                "smax_mean": np.nanmean(mean, axis=1),
                "smax_seasonal_min": np.nanmin(clim, axis=1), "smax_seasonal_max": np.nanmax(clim, axis=1),
                "smax_min_month": np.where(ok, np.argmin(filled, axis=1) + 1, 0),
                "smax_max_month": np.where(ok, np.argmax(np.where(np.isfinite(clim), clim, -np.inf), axis=1) + 1, 0),
                "smax_spread": np.nanstd(members, axis=0), "smax_member_q05": q05, "smax_member_q95": q95,
                "members": np.full(len(mean), members.shape[0]),
                "outside_training_range": p["outside_training_range"].values.astype(np.int32)
                if "outside_training_range" in p else np.zeros(len(mean), np.int32),
            })
        rows.append(frame)
    return pd.concat(rows, ignore_index=True).set_index("basin")


def read_polygons(path: str, basins: list[str], id_column: str | None = None):
    """The polygons of ``basins`` (GeoDataFrame in ``basins`` order, column ``basin``, the file's CRS). One
    clear RootzoneError when the file cannot be read, has no id column, names a basin twice, or lacks some."""
    import geopandas as gpd

    try:
        gdf = gpd.read_file(path, engine="pyogrio")
    except Exception as exc:  # noqa: BLE001 - GDAL/pyogrio raise many kinds
        raise RootzoneError(f"--polygons: cannot read '{path}' ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]})") from None
    if id_column is None:
        id_column = next((c for c in ID_COLUMNS if c in gdf.columns), None)
        if id_column is None:
            raise RootzoneError(f"--polygons: '{path}' has none of the id columns {', '.join(ID_COLUMNS)} (its "
                                f"columns: {', '.join(map(str, gdf.columns))}); pass --id-column")
    elif id_column not in gdf.columns:
        raise RootzoneError(f"--id-column: '{path}' has no column {id_column!r} (its columns: "
                            f"{', '.join(map(str, gdf.columns))})")
    ids = gdf[id_column].astype(str)
    wanted = set(basins)
    dup = sorted(set(ids[ids.duplicated() & ids.isin(wanted)]))
    if dup:
        raise RootzoneError(f"--polygons: '{path}' has {len(dup)} basin id(s) more than once in column "
                            f"{id_column!r} (first: {', '.join(dup[:5])}); keep one polygon per basin")
    missing = [b for b in basins if b not in set(ids)]
    if missing:
        raise RootzoneError(f"--polygons: '{path}' has no polygon for {len(missing)} of {len(basins)} basins "
                            f"(first: {', '.join(missing[:5])}; id column {id_column!r})")
    gdf = gdf.assign(basin=ids.values)[lambda d: d["basin"].isin(wanted)]
    gdf = gdf.set_index("basin").loc[basins].reset_index()
    return gdf[["basin", "geometry"]]


def _refuse_existing(url: str, overwrite: bool) -> None:
    check_output_path(url, "output")
    fs, path = fs_and_path(url)
    if fs.exists(path):
        if fs.isdir(path):
            raise RootzoneError(f"output '{url}' is a directory; choose a file name")
        if not overwrite:
            raise RootzoneError(f"output '{url}' exists; pass --overwrite to replace it")


def export_smax(pred: xr.Dataset, csv: str, gpkg: str | None = None, polygons: str | None = None,
                id_column: str | None = None, overwrite: bool = False) -> pd.DataFrame:
    """Write :func:`smax_climatology` to ``csv`` and, with ``polygons``, the joined GeoPackage ``gpkg`` (layer
    :data:`LAYER`). Every check runs before anything is written."""
    if gpkg and not polygons:
        raise RootzoneError("a GeoPackage needs the basin polygons: pass --polygons FILE")
    for url in [csv] + ([gpkg] if gpkg else []):
        _refuse_existing(url, overwrite)
    table = smax_climatology(pred)
    geo = read_polygons(polygons, table.index.tolist(), id_column) if polygons else None
    if geo is not None and gpkg:
        joined = geo.merge(table.reset_index(), on="basin", how="left")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "smax.gpkg"
            joined.to_file(local, layer=LAYER, driver="GPKG", engine="pyogrio")
            data = local.read_bytes()
        atomic_write_bytes(gpkg, data)
    atomic_write_text(csv, table.reset_index().to_csv(index=False, float_format="%.4f"))
    return table
