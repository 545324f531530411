"""Gridded products on a regular latitude/longitude grid: open, find the coordinates, check, and weigh by basin.

A :class:`Grid` is one variable of a NetCDF file or Zarr store, read lazily (xarray; dask per time chunk), with
its 1-D latitude and longitude centres (either order, longitudes 0..360 or -180..180), its time axis (CF
dates; ``bounds`` midpoints when the time coordinate has them) and its CRS (EPSG:4326 unless a grid-mapping
variable says otherwise). CF ``_FillValue``/``missing_value``/``scale_factor``/``add_offset`` are decoded by
xarray; ``valid_min``/``valid_max``/``valid_range`` (in packed units when the variable is packed, as CF says)
mask the values outside them (MODIS LAI's 249..255 class codes).

:func:`read_polygons` reads basin polygons (GeoPackage, Shapefile, GeoJSON) and checks ids and CRS;
:func:`basin_weights` gives every basin's cells and their weights: the exact fraction of each cell covered by
the polygon (exactextract) times the cell's area on the sphere, R² Δλ (sin φ_top − sin φ_bottom). Polygons
are matched against the grid shifted by −360°, 0 and +360°, so a basin across the 0° meridian on a 0..360
grid, or one across the antimeridian (split in parts or written with longitudes beyond 180°), gets all its
cells.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rootzone.errors import InputDataError

EARTH_RADIUS_M = 6_371_007.2  # authalic sphere
_LAT_NAMES = ("lat", "latitude", "nav_lat")  # x/y dimensions count only with degrees as units
_LON_NAMES = ("lon", "longitude", "long", "nav_lon")
_REGULAR_TOL = 1e-3  # spacing may vary by this fraction of a cell (float32 coordinates)


@dataclass
class Grid:
    """One variable on a regular lat/lon grid. ``data`` has dims (time, lat, lon) in the file's own order."""

    path: str
    variable: str
    data: object  # xarray.DataArray (time, lat, lon), lazily read
    lat: np.ndarray  # [nlat] cell centres, degrees north, as stored
    lon: np.ndarray  # [nlon] cell centres, degrees east, as stored
    anchors: pd.DatetimeIndex  # [ntime] the day each time step stands for (bounds midpoint or the time itself)
    crs: object  # pyproj.CRS
    units: str | None  # the variable's ``units`` attribute
    valid: tuple[float | None, float | None]  # decoded valid_min / valid_max (None: unbounded)
    mask: np.ndarray | None  # [nlat, nlon] bool, True where a cell may be used (--mask), else None

    @property
    def dlat(self) -> float:
        return abs(float(self.lat[1] - self.lat[0])) if len(self.lat) > 1 else 1.0

    @property
    def dlon(self) -> float:
        return abs(float(self.lon[1] - self.lon[0])) if len(self.lon) > 1 else 1.0

    def extent(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) edges of the grid, degrees."""
        return (float(self.lon.min()) - self.dlon / 2, float(self.lat.min()) - self.dlat / 2,
                float(self.lon.max()) + self.dlon / 2, float(self.lat.max()) + self.dlat / 2)


def _open(path: str):
    import xarray as xr

    p = Path(path)
    if not p.exists():
        raise InputDataError(f"{path}: no such grid file or store")
    is_zarr = p.is_dir() or p.suffix == ".zarr"
    try:
        if is_zarr:
            with warnings.catch_warnings():  # a store without consolidated metadata is fine
                warnings.filterwarnings("ignore", message=".*consolidated metadata", category=RuntimeWarning)
                return xr.open_dataset(p, engine="zarr", chunks=None)
        return xr.open_dataset(p, chunks=None)  # h5netcdf for NetCDF-4, or netCDF4/scipy where installed
    except (OSError, ValueError, TypeError, KeyError) as exc:
        hint = "" if is_zarr else " (rootzone reads NetCDF-4/HDF5 files; convert NetCDF-3 with `nccopy -k nc4`)"
        raise InputDataError(f"{path}: cannot open as {'a Zarr store' if is_zarr else 'NetCDF'}: "
                             f"{' '.join(str(exc).split())[:200]}{hint}") from None


def _find_coord(ds, da, names: tuple[str, ...], standard: str, units: tuple[str, ...]) -> str | None:
    for dim in da.dims:
        if dim not in ds.variables:
            continue
        v = ds[dim]
        if (v.attrs.get("standard_name") == standard or str(v.attrs.get("units", "")).lower() in units
                or dim.lower() in names):
            return dim
    return None


def _time_dim(ds, da) -> str | None:
    for dim in da.dims:
        if dim in ds.variables and (np.issubdtype(ds[dim].dtype, np.datetime64) or dim.lower() == "time"
                                    or ds[dim].attrs.get("standard_name") == "time"):
            return dim
    return None


def _grid_crs(ds, da, path: str):
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    name = da.attrs.get("grid_mapping") or da.encoding.get("grid_mapping")
    crs = CRS.from_epsg(4326)
    if name and name in ds.variables:
        attrs = ds[name].attrs
        for key in ("crs_wkt", "spatial_ref", "epsg_code"):
            if attrs.get(key):
                try:
                    crs = CRS.from_user_input(attrs[key])
                except CRSError:
                    raise InputDataError(f"{path}: grid mapping '{name}' has a {key} that is not a CRS") from None
                break
        else:
            try:
                crs = CRS.from_cf(dict(attrs))
            except CRSError:
                pass
            else:  # a bare CF latitude_longitude mapping on the WGS84 ellipsoid is EPSG:4326
                e = crs.ellipsoid
                if (crs.is_geographic and e is not None and abs(e.semi_major_metre - 6378137.0) < 1e-3
                        and abs(e.inverse_flattening - 298.257223563) < 1e-6):
                    crs = CRS.from_epsg(4326)
    if not crs.is_geographic:
        raise InputDataError(f"{path}: the grid's CRS is projected ({crs.name}); rootzone aggregates regular "
                             "latitude/longitude grids only (reproject the product first)")
    return crs


def _regular(values: np.ndarray, what: str, path: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) < 1:
        raise InputDataError(f"{path}: {what} must be a 1-D coordinate")
    if len(values) > 1:
        step = np.diff(values)
        if not (np.all(step > 0) or np.all(step < 0)):
            raise InputDataError(f"{path}: {what} coordinates are neither increasing nor decreasing")
        if np.max(np.abs(step - step[0])) > _REGULAR_TOL * abs(step[0]):
            raise InputDataError(f"{path}: {what} spacing is not regular ({abs(step).min():g} to "
                                 f"{abs(step).max():g} degrees); rootzone needs a regular lat/lon grid")
    return values


def _anchors(ds, time_dim: str, path: str) -> pd.DatetimeIndex:
    t = ds[time_dim]
    if not np.issubdtype(t.dtype, np.datetime64):
        cal = t.attrs.get("calendar") or t.encoding.get("calendar") or "?"
        raise InputDataError(f"{path}: time coordinate '{time_dim}' could not be read as dates (units "
                             f"{t.attrs.get('units', t.encoding.get('units', '?'))!r}, calendar {cal!r}); "
                             "a standard/gregorian calendar is needed")
    times = pd.DatetimeIndex(t.values)
    bounds = t.attrs.get("bounds") or t.encoding.get("bounds")
    if bounds and bounds in ds.variables and np.issubdtype(ds[bounds].dtype, np.datetime64):
        b = np.asarray(ds[bounds].values)
        if b.ndim == 2 and b.shape[0] == len(times):
            lo, hi = pd.DatetimeIndex(b[:, 0]), pd.DatetimeIndex(b[:, 1])
            times = lo + (hi - lo) / 2
    if times.hasnans:
        raise InputDataError(f"{path}: time coordinate '{time_dim}' holds missing dates")
    return times.floor("D")


def _valid_bounds(da) -> tuple[float | None, float | None]:
    """CF valid_min/valid_max/valid_range, in decoded units. CF gives them in packed units (the stored type),
    so on a packed variable they are scaled like the data; a floating-point range on integer-packed data is
    taken as already unpacked (a common departure from CF)."""
    attrs = {**da.encoding, **da.attrs}
    lo, hi = attrs.get("valid_min"), attrs.get("valid_max")
    if "valid_range" in attrs:
        lo, hi = np.asarray(attrs["valid_range"]).ravel()[:2]
    scale, offset = attrs.get("scale_factor"), attrs.get("add_offset")
    stored = np.dtype(da.encoding.get("dtype", np.float64))
    out = []
    for v in (lo, hi):
        if v is None:
            out.append(None)
            continue
        v = np.asarray(v).ravel()[:1]
        packed = (scale is not None or offset is not None) and (v.dtype.kind in "iu" or v.dtype == stored)
        v = float(v[0])
        out.append(v * float(scale if scale is not None else 1) + float(offset or 0) if packed else v)
    return out[0], out[1]


def open_grid(path: str, variable: str | None, mask: str | None = None) -> Grid:
    """Open ``variable`` of the product at ``path`` (NetCDF or Zarr) and check it is a regular lat/lon grid
    with a time axis; ``mask`` is ``NAME`` (a variable of the same file) or ``FILE:NAME``, non-zero where
    cells may be used."""
    ds = _open(path)
    grids = [n for n, v in ds.data_vars.items() if v.ndim >= 3]
    if variable is None:
        if len(grids) != 1:
            raise InputDataError(f"{path}: give --variable (gridded variables: {', '.join(grids) or 'none'})")
        variable = grids[0]
    if variable not in ds.data_vars:
        raise InputDataError(f"{path}: no variable '{variable}' (variables: {', '.join(map(str, ds.data_vars))})")
    da = ds[variable]
    lat = _find_coord(ds, da, _LAT_NAMES, "latitude", ("degrees_north", "degree_north", "degrees_n"))
    lon = _find_coord(ds, da, _LON_NAMES, "longitude", ("degrees_east", "degree_east", "degrees_e"))
    if lat is None or lon is None:
        raise InputDataError(f"{path}: '{variable}' has no 1-D latitude/longitude coordinates (dimensions: "
                             f"{', '.join(map(str, da.dims))}); rootzone needs a regular lat/lon grid")
    time_dim = _time_dim(ds, da)
    if time_dim is None:
        raise InputDataError(f"{path}: '{variable}' has no time dimension (dimensions: "
                             f"{', '.join(map(str, da.dims))})")
    extra = [d for d in da.dims if d not in (lat, lon, time_dim)]
    if any(da.sizes[d] != 1 for d in extra):
        raise InputDataError(f"{path}: '{variable}' has an extra dimension "
                             f"{', '.join(f'{d} ({da.sizes[d]})' for d in extra if da.sizes[d] != 1)}; "
                             "select one level first")
    da = da.isel({d: 0 for d in extra}).transpose(time_dim, lat, lon)
    lat_v = _regular(ds[lat].values, "latitude", path)
    lon_v = _regular(ds[lon].values, "longitude", path)
    if np.abs(lat_v).max() > 90.0:
        raise InputDataError(f"{path}: latitudes beyond ±90 ({lat_v.min():g} to {lat_v.max():g}); is '{lat}' "
                             "really latitude?")
    if len(lon_v) > 1 and len(lon_v) * abs(lon_v[1] - lon_v[0]) > 360.0 + 1e-6:
        raise InputDataError(f"{path}: the longitudes cover more than 360 degrees (a repeated column?)")
    crs = _grid_crs(ds, da, path)
    grid = Grid(path=path, variable=variable, data=da, lat=lat_v, lon=lon_v, anchors=_anchors(ds, time_dim, path),
                crs=crs, units=da.attrs.get("units"), valid=_valid_bounds(da), mask=None)
    if mask:
        grid.mask = _read_mask(mask, ds, path, lat_v, lon_v)
    return grid


def _read_mask(spec: str, ds, path: str, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    if ":" in spec and spec not in ds.variables:
        file, name = spec.rsplit(":", 1)
        mds = _open(file)
        where = f"--mask {spec}"
    else:
        file, name, mds, where = path, spec, ds, f"--mask {spec}"
    if name not in mds.variables:
        raise InputDataError(f"{where}: no variable '{name}' in {file} (variables: "
                             f"{', '.join(map(str, mds.data_vars))})")
    m = mds[name].squeeze(drop=True)
    if m.ndim != 2:
        raise InputDataError(f"{where}: the mask must be 2-D (lat, lon), found dimensions {', '.join(m.dims)}")
    mlat = _find_coord(mds, m, _LAT_NAMES, "latitude", ("degrees_north",))
    mlon = _find_coord(mds, m, _LON_NAMES, "longitude", ("degrees_east",))
    if mlat is None or mlon is None:
        raise InputDataError(f"{where}: the mask has no latitude/longitude coordinates")
    m = m.transpose(mlat, mlon)
    if (m.shape != (len(lat), len(lon)) or not np.allclose(mds[mlat].values, lat, atol=1e-4)
            or not np.allclose(np.mod(mds[mlon].values, 360), np.mod(lon, 360), atol=1e-4)):
        raise InputDataError(f"{where}: the mask is not on the grid of {path} ({m.shape[0]}x{m.shape[1]} cells "
                             f"vs {len(lat)}x{len(lon)})")
    values = np.asarray(m.values, dtype=np.float64)
    return np.isfinite(values) & (values != 0)


def read_polygons(path: str, id_field: str, grid_crs, to_crs: bool):
    """Basin polygons (GeoPackage, Shapefile, GeoJSON) in the grid's CRS; ids are strings, unique."""
    import geopandas as gpd
    import shapely

    p = Path(path)
    if not p.exists():
        raise InputDataError(f"{path}: no such polygon file")
    try:
        gdf = gpd.read_file(p, engine="pyogrio")
    except Exception as exc:  # pyogrio raises its own DataSourceError, ValueError, ...
        raise InputDataError(f"{path}: cannot read polygons: {' '.join(str(exc).split())[:200]}") from None
    if id_field not in gdf.columns:
        raise InputDataError(f"{path}: no basin id field '{id_field}' (fields: "
                             f"{', '.join(c for c in gdf.columns if c != gdf.geometry.name)}); choose one with "
                             "--id-field")
    if not len(gdf):
        raise InputDataError(f"{path}: holds no polygons")
    if gdf[id_field].isna().any():
        raise InputDataError(f"{path}: {int(gdf[id_field].isna().sum())} polygon(s) without a basin id in "
                             f"'{id_field}'")
    ids = gdf[id_field].astype(str).str.strip()
    dup = sorted(set(ids[ids.duplicated()]))
    if dup:
        raise InputDataError(f"{path}: duplicate basin ids in '{id_field}': {', '.join(dup[:10])}"
                             f"{' ...' if len(dup) > 10 else ''}")
    bad = [i for i in ids if not i or i in (".", "..") or "/" in i or "\\" in i or i.lower() == "nan"]
    if bad:
        raise InputDataError(f"{path}: basin id {bad[0]!r} in '{id_field}' cannot name a table file")
    geom = gdf.geometry
    empty = ids[(geom.isna() | geom.is_empty).to_numpy()]
    if len(empty):
        raise InputDataError(f"{path}: basin {empty.iloc[0]} has no geometry ({len(empty)} such basins)")
    kinds = set(geom.geom_type)
    if not kinds <= {"Polygon", "MultiPolygon"}:
        raise InputDataError(f"{path}: basins must be polygons, found {', '.join(sorted(kinds))}")
    if gdf.crs is None:
        raise InputDataError(f"{path}: the polygons have no CRS (a Shapefile needs its .prj file); set it, e.g. "
                             "`ogr2ogr -a_srs EPSG:4326 fixed.gpkg FILE`")
    if not gdf.crs.equals(grid_crs, ignore_axis_order=True):
        if not to_crs:
            raise InputDataError(f"{path}: polygons are in {gdf.crs.to_string()}, the grid in "
                                 f"{grid_crs.to_string()}; add --to-crs to reproject the polygons")
        gdf = gdf.to_crs(grid_crs)
    gdf = gdf.set_crs(grid_crs, allow_override=True)  # e.g. OGC:CRS84 is EPSG:4326 with lon/lat axis order
    geoms = shapely.force_2d(gdf.geometry.values)
    bad = ~shapely.is_valid(geoms)  # self-intersections (a bow-tie) become their polygonal parts
    geoms[bad] = [g if g.geom_type in ("Polygon", "MultiPolygon") else g.buffer(0)
                  for g in shapely.make_valid(geoms[bad])]
    return gpd.GeoDataFrame({"gauge_id": ids.to_numpy()}, geometry=geoms, crs=gdf.crs)


@dataclass
class Weights:
    """Cells and weights of every basin, within the box ``rows`` x ``cols`` of the grid (stored order) that
    holds every cell any basin touches.

    ``matrix`` is a sparse [basins, box cells] CSR array (box cells row-major): coverage fraction x cell area
    (m²)."""

    rows: slice  # lat indices of the box
    cols: slice  # lon indices of the box
    matrix: object  # scipy.sparse.csr_array [basins, box cells], m²
    inside: np.ndarray  # [basins] fraction of each polygon's area inside the grid's extent

    @property
    def n_cells(self) -> np.ndarray:
        """[basins] number of cells with a non-zero weight."""
        return np.diff(self.matrix.indptr)


def cell_areas(grid: Grid) -> np.ndarray:
    """[nlat] area of one cell in each grid row on the sphere, m²: R² Δλ (sin φ_top − sin φ_bottom)."""
    top = np.radians(np.clip(grid.lat + grid.dlat / 2, -90, 90))
    bottom = np.radians(np.clip(grid.lat - grid.dlat / 2, -90, 90))
    return EARTH_RADIUS_M**2 * np.radians(grid.dlon) * (np.sin(top) - np.sin(bottom))


def basin_weights(grid: Grid, polygons) -> Weights:
    """Exact coverage x cell area of every polygon of ``polygons`` (a GeoDataFrame in the grid's CRS)."""
    import geopandas as gpd
    import shapely
    from exactextract import exact_extract
    from exactextract.raster import NumPyRasterSource
    from scipy import sparse

    west, south, east, north = grid.extent()
    nlat, nlon = len(grid.lat), len(grid.lon)
    # exactextract's raster: columns west->east, rows north->south; map them back to the stored order
    row_of = np.argsort(-grid.lat, kind="stable")
    col_of = np.argsort(grid.lon, kind="stable")
    wkt = grid.crs.to_wkt()
    raster = NumPyRasterSource(np.broadcast_to(np.float32(0), (nlat, nlon)), west, south, east, north,
                               srs_wkt=wkt)
    box = shapely.box(west, south, east, north)
    geoms = polygons.geometry.reset_index(drop=True)
    n = len(geoms)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    inside = np.zeros(n)
    areas = shapely.area(geoms.values)
    for shift in (-360.0, 0.0, 360.0):
        moved = geoms.translate(xoff=shift)
        hit = np.flatnonzero(moved.intersects(box).to_numpy())
        if not len(hit):
            continue
        inside[hit] += shapely.area(shapely.intersection(moved.values[hit], box))
        frame = gpd.GeoDataFrame({"_basin": hit}, geometry=moved.iloc[hit].values, crs=polygons.crs)
        res = exact_extract(raster, frame, ["cell_id", "coverage"], include_cols=["_basin"], output="pandas")
        for b, cells, cov in zip(res["_basin"], res["cell_id"], res["coverage"]):
            if len(cells):
                parts.append((np.full(len(cells), b, np.int64), np.asarray(cells, np.int64),
                              np.asarray(cov, np.float64)))
    if parts:
        basin, cell, cov = (np.concatenate(x) for x in zip(*parts))
    else:
        basin, cell, cov = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    r, c = row_of[cell // nlon], col_of[cell % nlon]
    weight = cov * cell_areas(grid)[r]
    keep = weight > 0
    if grid.mask is not None:
        keep &= grid.mask[r, c]
    basin, r, c, weight = basin[keep], r[keep], c[keep], weight[keep]
    r0, r1 = (int(r.min()), int(r.max()) + 1) if len(r) else (0, 0)
    c0, c1 = (int(c.min()), int(c.max()) + 1) if len(c) else (0, 0)
    matrix = sparse.csr_array((weight, (basin, (r - r0) * (c1 - c0) + (c - c0))),
                              shape=(n, (r1 - r0) * (c1 - c0)))
    matrix.sum_duplicates()
    frac = np.divide(inside, areas, out=np.zeros(n), where=areas > 0)
    return Weights(rows=slice(r0, r1), cols=slice(c0, c1), matrix=matrix, inside=np.minimum(frac, 1.0))


def weighted_sums(block: np.ndarray, matrix) -> tuple[np.ndarray, np.ndarray]:
    """Sums over each basin's cells of one block [t, r, c] (overwritten): (sum w·v, sum w·[v finite]), each
    [basins, t]; ``matrix`` holds the weights of the block's cells (row-major). Two sparse x dense products."""
    t = block.shape[0]
    values = block.reshape(t, -1).T  # [cells, t], a view
    ok = np.isfinite(values)
    values[~ok] = 0.0  # in place: block is the caller's scratch copy
    return matrix @ values, matrix @ ok.astype(np.float64)


def finish_means(num: np.ndarray, den: np.ndarray, total: np.ndarray, min_valid: float) -> np.ndarray:
    """[t, basins] means from the sums [basins, t] and each basin's total weight [basins]: NaN where less than
    ``min_valid`` of the weight has a value (or the basin has no cell)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = num / den
    mean[(den <= 0) | (den < min_valid * total[:, None] * (1 - 1e-9))] = np.nan
    return mean.T
