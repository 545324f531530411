"""`rootzone data aggregate`: synthetic grids and polygons whose basin means are known exactly.

References are computed here independently of rootzone.data.grids: the area of a lat/lon cell on the sphere is
R² Δλ (sin φ_top − sin φ_bottom) (only its ratio between rows matters), and the polygons are boxes whose
overlap with each cell is written down by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
import xarray as xr
from conftest import assert_refused, run_cli, tree_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

gpd = pytest.importorskip("geopandas")


def row_area(lat_center: float, dlat: float = 1.0) -> float:
    """Relative area of a cell whose centre is at ``lat_center`` (degrees): sin φ_top − sin φ_bottom."""
    top, bottom = np.radians(lat_center + dlat / 2), np.radians(lat_center - dlat / 2)
    return float(np.sin(top) - np.sin(bottom))


def write_grid(path: Path, values: np.ndarray, lat, lon, time, *, name: str = "v", units: str | None = "mm/d",
               attrs: dict | None = None, encoding: dict | None = None, bounds=None,
               extra: dict | None = None) -> Path:
    """A CF NetCDF-4 file (or a Zarr store when ``path`` ends in .zarr) with ``name`` [time, lat, lon]."""
    da = xr.DataArray(values, dims=("time", "lat", "lon"),
                      coords={"time": pd.DatetimeIndex(time), "lat": np.asarray(lat, float),
                              "lon": np.asarray(lon, float)}, attrs={**({"units": units} if units else {}),
                                                                     **(attrs or {})})
    ds = xr.Dataset({name: da, **(extra or {})})
    ds.lat.attrs.update(units="degrees_north", standard_name="latitude")
    ds.lon.attrs.update(units="degrees_east", standard_name="longitude")
    if bounds is not None:
        ds["time_bounds"] = (("time", "nv"), np.asarray(bounds, dtype="datetime64[ns]"))
        ds.time.attrs["bounds"] = "time_bounds"
        for v in (ds.time, ds.time_bounds):
            v.encoding.update(units="hours since 2002-01-01", dtype="float64")
    enc = {name: encoding} if encoding else {}
    if str(path).endswith(".zarr"):
        ds.to_zarr(path, encoding=enc, mode="w", consolidated=False)
    else:
        ds.to_netcdf(path, engine="h5netcdf", encoding=enc)
    return path


def write_polygons(path: Path, geoms: dict, crs="EPSG:4326", field: str = "gauge_id") -> Path:
    gdf = gpd.GeoDataFrame({field: list(geoms)}, geometry=list(geoms.values()), crs=crs)
    gdf.to_file(path, engine="pyogrio")
    return path


def aggregate(capsys, grid, polys, out, product="et", *more):
    code, stdout, err = run_cli(capsys, "data", "aggregate", grid, polys, out, "--product", product, "--quiet",
                                *more)
    assert code == 0, err
    return stdout


def daily(out: Path, gauge: str) -> pd.DataFrame:
    return pd.read_csv(out / "daily" / f"{gauge}.csv", index_col="date", parse_dates=["date"])


DAYS = pd.date_range("2001-01-01", periods=4)
LAT = np.array([0.5, 1.5, 2.5])  # 3 x 4 one-degree cells
LON = np.array([0.5, 1.5, 2.5, 3.5])


def cell_field(t: int = 4) -> np.ndarray:
    """Value = 10·row + col + time (distinct everywhere)."""
    return (10 * np.arange(3)[:, None] + np.arange(4)[None, :])[None] + np.arange(t)[:, None, None] * 1.0


def test_constant_field_half_cell_small_basin_and_mixed_weights(tmp_path, capsys):
    """A constant field gives the constant; a polygon on half of one cell or inside one cell gives that
    cell; polygons over two cells weigh each by covered fraction x cell area."""
    lat = np.array([59.5, 60.5, 61.5])  # high latitude: rows differ in area by ~3%
    g = write_grid(tmp_path / "g.nc", cell_field(), lat, LON, DAYS)
    c = write_grid(tmp_path / "c.nc", np.full((4, 3, 4), 2.5), lat, LON, DAYS)
    polys = write_polygons(tmp_path / "b.gpkg", {
        "half": shapely.box(1.0, 60.0, 1.5, 61.0),  # west half of cell (row 1, col 1)
        "small": shapely.box(2.2, 59.2, 2.3, 59.4),  # inside cell (0, 2)
        "two_cols": shapely.box(0.5, 61.0, 1.5, 62.0),  # half of (2, 0) and half of (2, 1): same row
        "two_rows": shapely.box(3.0, 59.5, 4.0, 61.0),  # half of (0, 3) and all of (1, 3)
        "odd": shapely.Polygon([(0.1, 59.1), (3.9, 59.3), (2.0, 61.9)]),
        "bowtie": shapely.Polygon([(0, 59), (2, 61), (2, 59), (0, 61)]),  # self-intersecting, as drawn by hand
    })
    aggregate(capsys, c, polys, tmp_path / "const")
    for gauge in ("half", "small", "two_cols", "two_rows", "odd", "bowtie"):
        np.testing.assert_allclose(daily(tmp_path / "const", gauge)["et"], 2.5, rtol=1e-12)
    out = tmp_path / "o"
    aggregate(capsys, g, polys, out)
    t = np.arange(4)
    np.testing.assert_allclose(daily(out, "half")["et"], 11 + t, rtol=1e-6)
    np.testing.assert_allclose(daily(out, "small")["et"], 2 + t, rtol=1e-6)
    np.testing.assert_allclose(daily(out, "two_cols")["et"], (20 + 21) / 2 + t, rtol=1e-6)
    # bow-tie: two triangles, each half of a 2 x 2 block: cells (0, 0), (1, 0) half each, (0, 1), (1, 1) too
    wb = np.array([row_area(59.5), row_area(60.5)])
    np.testing.assert_allclose(daily(out, "bowtie")["et"], (wb @ [0.5, 10.5]) / wb.sum() + t, rtol=1e-6)
    # half of the cell centred at 59.5 (its northern half, in lon/lat) and all of the one at 60.5
    w0, w1 = 0.5 * row_area(59.5), row_area(60.5)
    expect = (w0 * 3 + w1 * 13) / (w0 + w1)
    assert abs(expect - (0.5 * 3 + 13) / 1.5) > 1e-3  # the area weighting is visible at this latitude
    np.testing.assert_allclose(daily(out, "two_rows")["et"], expect + t, rtol=1e-6)
    assert list(pd.read_csv(out / "daily" / "half.csv").columns) == ["date", "et"]
    assert json.loads((out / "rootzone_aggregate.json").read_text())["products"]["et"]["variable"] == "v"


def test_0_360_and_descending_latitudes_and_zarr_give_identical_results(tmp_path, capsys, monkeypatch):
    """The same global field as lon 0..360 (NetCDF), lon -180..180 with latitudes descending (Zarr): a basin
    across the 0° meridian gets the same cells either way; read one step at a time, or (memory budget too
    small for one step of the box) one step in bands of one row, the means are the same."""
    from rootzone.data import aggregate as agg

    lat = np.arange(-89.5, 90)
    lon360 = np.arange(0.5, 360)
    rng = np.random.default_rng(1)
    f360 = rng.uniform(0, 5, (3, 180, 360))
    g1 = write_grid(tmp_path / "g360.nc", f360, lat, lon360, DAYS[:3])
    lon180 = np.where(lon360 > 180, lon360 - 360, lon360)
    order = np.argsort(lon180)
    g2 = write_grid(tmp_path / "g180.zarr", f360[:, ::-1][:, :, order], lat[::-1], lon180[order], DAYS[:3])
    polys = write_polygons(tmp_path / "b.geojson", {
        "meridian": shapely.box(-1.5, 45.0, 1.5, 46.0),
        "inland": shapely.Polygon([(10.2, 40.1), (14.7, 41.3), (11.1, 44.9)]),
    })
    aggregate(capsys, g1, polys, tmp_path / "a")
    aggregate(capsys, g2, polys, tmp_path / "b", "et", "--time-chunk", "1")  # streamed one step at a time
    monkeypatch.setattr(agg, "CHUNK_BUDGET_BYTES", 1000)
    aggregate(capsys, g1, polys, tmp_path / "c")
    for gauge in ("meridian", "inland"):
        a, b = daily(tmp_path / "a", gauge)["et"], daily(tmp_path / "b", gauge)["et"]
        np.testing.assert_allclose(a, b, rtol=1e-12)
        np.testing.assert_allclose(daily(tmp_path / "c", gauge)["et"], a, rtol=1e-12)
    # by hand: row at 45.5 (index 135), columns 358 (half), 359, 0, 1 (half) on the 0..360 grid
    ref = (0.5 * f360[:, 135, 358] + f360[:, 135, 359] + f360[:, 135, 0] + 0.5 * f360[:, 135, 1]) / 3
    np.testing.assert_allclose(daily(tmp_path / "a", "meridian")["et"], ref, rtol=1e-6)


def test_antimeridian_split_or_beyond_180(tmp_path, capsys):
    """A basin across ±180°, as two parts (GeoJSON style) or as one polygon with longitudes beyond 180."""
    lat = np.array([-10.5, -9.5])
    lon = np.arange(-179.5, 180)
    field = np.zeros((2, 2, 360))
    field[:, 1, -2:] = [[1.0, 2.0], [1.5, 2.5]]  # 178..179, 179..180
    field[:, 1, :2] = [[3.0, 4.0], [3.5, 4.5]]  # -180..-179, -179..-178
    g = write_grid(tmp_path / "g.nc", field, lat, lon, DAYS[:2])
    polys = write_polygons(tmp_path / "b.gpkg", {
        "split": shapely.MultiPolygon([shapely.box(178, -10, 180, -9), shapely.box(-180, -10, -178, -9)]),
        "beyond": shapely.box(178, -10, 182, -9),
    })
    aggregate(capsys, g, polys, tmp_path / "o")
    for gauge in ("split", "beyond"):
        np.testing.assert_allclose(daily(tmp_path / "o", gauge)["et"], [2.5, 3.0], rtol=1e-6)


def test_fill_values_packing_valid_range_and_mask(tmp_path, capsys):
    """Packed int16 with _FillValue, scale_factor and add_offset is decoded; MODIS-style class codes
    outside valid_range are not LAI; a land mask drops cells; --min-valid decides when too little is left."""
    field = np.array([[[1.0, 2.0], [3.0, 4.0]]] * 2)
    field[0, 0, 0] = np.nan  # written as _FillValue
    g = write_grid(tmp_path / "p.nc", field, [0.5, 1.5], [0.5, 1.5], DAYS[:2], units="mm",
                   encoding={"dtype": "int16", "scale_factor": 0.01, "add_offset": 1.0, "_FillValue": -9999})
    assert xr.open_dataset(g, engine="h5netcdf", mask_and_scale=False).v.dtype == np.int16
    polys = write_polygons(tmp_path / "b.gpkg", {"all": shapely.box(0, 0, 2, 2)})
    aggregate(capsys, g, polys, tmp_path / "o", "et", "--min-valid", "0.7")
    w = np.array([row_area(0.5), row_area(0.5), row_area(1.5), row_area(1.5)])
    v = np.array([1.0, 2, 3, 4])
    np.testing.assert_allclose(daily(tmp_path / "o", "all")["et"],
                               [(w[1:] @ v[1:]) / w[1:].sum(), (w @ v) / w.sum()], atol=1e-9)
    aggregate(capsys, g, polys, tmp_path / "strict", "et", "--min-valid", "0.8")  # 3/4 of the area < 0.8
    assert np.isnan(daily(tmp_path / "strict", "all")["et"].iloc[0])

    codes = np.array([[[10, 20], [30, 255]]] * 2, dtype=np.uint8)  # 255: "fill", 25.5 if not masked
    land = xr.DataArray([[1, 0], [1, 1]], dims=("lat", "lon"))
    modis = write_grid(tmp_path / "lai.nc", codes, [0.5, 1.5], [0.5, 1.5], pd.date_range("2001-01-01",
                       periods=2, freq="8D"), name="Lai_500m", units=None,
                       attrs={"valid_range": np.array([0, 100], np.uint8), "scale_factor": 0.1},
                       extra={"land": land})
    aggregate(capsys, modis, polys, tmp_path / "lai", "lai", "--variable", "Lai_500m", "--mask", "land",
              "--min-valid", "0")
    lai = daily(tmp_path / "lai", "all")["lai"]
    assert len(lai) == 9
    np.testing.assert_allclose(lai, (w[0] * 1.0 + w[2] * 3.0) / (w[0] + w[2]), rtol=1e-7)
    xr.Dataset({"land_mask": land}, coords={"lat": [0.5, 1.5], "lon": [0.5, 1.5]}).to_netcdf(
        tmp_path / "mask.nc", engine="h5netcdf")  # JPL-style separate mask file
    aggregate(capsys, modis, polys, tmp_path / "lai2", "lai", "--variable", "Lai_500m", "--mask",
              f"{tmp_path / 'mask.nc'}:land_mask", "--min-valid", "0")
    pd.testing.assert_frame_equal(daily(tmp_path / "lai2", "all"), daily(tmp_path / "lai", "all"))
    loose = write_grid(tmp_path / "lai3.nc", codes, [0.5, 1.5], [0.5, 1.5], pd.date_range("2001-01-01",
                       periods=2, freq="8D"), name="Lai_500m", units=None,  # range given unpacked (not CF)
                       attrs={"valid_range": np.array([0.0, 10.0], np.float32), "scale_factor": 0.1},
                       extra={"land": land})
    aggregate(capsys, loose, polys, tmp_path / "lai3", "lai", "--mask", "land", "--min-valid", "0")
    pd.testing.assert_frame_equal(daily(tmp_path / "lai3", "all"), daily(tmp_path / "lai", "all"))
    sea = write_polygons(tmp_path / "sea.gpkg", {"all": shapely.box(0, 0, 2, 2),
                                                  "sea": shapely.box(1.1, 0.1, 1.9, 0.9)})  # the masked cell
    stdout = aggregate(capsys, loose, sea, tmp_path / "lai4", "lai", "--mask", "land", "--min-valid", "0")
    assert "1 basin(s) have no usable grid cell (masked) and empty lai: sea" in stdout
    assert daily(tmp_path / "lai4", "sea")["lai"].isna().all() and len(daily(tmp_path / "lai4", "sea")) == 9


def test_lai_composites_to_daily_with_gaps(tmp_path, capsys):
    """8-day composites interpolated linearly to days; one missing composite is bridged (span 16 = 8 +
    --max-gap 8), two missing in a row (span 24) leave the days between empty and are counted."""
    time = pd.date_range("2003-01-01", periods=12, freq="8D")
    value = 1.0 + 0.05 * np.arange(12) * 8  # linear in time: interpolation is exact
    value[3] = np.nan  # bridged
    value[7] = value[8] = np.nan  # 24-day span: left missing
    field = np.broadcast_to(value[:, None, None], (12, 2, 2)).copy()
    g = write_grid(tmp_path / "g.nc", field, [0.5, 1.5], [0.5, 1.5], time, units="m2/m2", name="LAI")
    polys = write_polygons(tmp_path / "b.shp", {"a": shapely.box(0.2, 0.2, 1.8, 1.8)})
    stdout = aggregate(capsys, g, polys, tmp_path / "o", "lai")
    lai = daily(tmp_path / "o", "a")["lai"]
    days = pd.date_range(time[0], time[-1])
    assert lai.index.equals(days)
    expect = 1.0 + 0.05 * np.arange(len(days))
    gap = (days > time[6]) & (days < time[9])
    assert lai[gap].isna().all() and gap.sum() == 23
    np.testing.assert_allclose(lai[~gap], expect[~gap], rtol=1e-9)
    assert "15 days interpolated across missing composites, 23 days left missing" in stdout
    info = json.loads((tmp_path / "o" / "rootzone_aggregate.json").read_text())["products"]["lai"]
    assert info["missing_days"] == {"a": 23} and info["gap_filled_days"] == {"a": 15}
    aggregate(capsys, g, polys, tmp_path / "o2", "lai", "--max-gap", "16")  # now bridged as well
    np.testing.assert_allclose(daily(tmp_path / "o2", "a")["lai"], expect, rtol=1e-9)


def test_grace_months_two_solutions_averaged_missing_month_left_missing(tmp_path, capsys):
    """Mascon solutions with time bounds, in cm: two in June 2004 are averaged, August has none."""
    lo = pd.to_datetime(["2004-04-01", "2004-05-01", "2004-06-01", "2004-06-16", "2004-07-01", "2004-09-01"])
    hi = pd.to_datetime(["2004-04-30", "2004-05-31", "2004-06-15", "2004-06-30", "2004-07-31", "2004-09-30"])
    mid = lo + (hi - lo) / 2
    vals = np.array([1.0, -2.0, 3.0, 5.0, 0.5, -1.0])  # cm
    lon = np.arange(0.25, 360, 0.5)  # JPL-like 0..360 longitudes
    field = np.broadcast_to(vals[:, None, None], (6, 2, len(lon))).copy()
    g = write_grid(tmp_path / "grace.nc", field, [10.25, 10.75], lon, mid, name="lwe_thickness",
                   units="cm", bounds=np.stack([lo, hi], axis=1))
    polys = write_polygons(tmp_path / "b.gpkg", {"g1": shapely.box(-0.4, 10.1, 0.4, 10.9)})
    stdout = aggregate(capsys, g, polys, tmp_path / "o", "twsa")
    table = pd.read_csv(tmp_path / "o" / "monthly" / "g1.csv")
    assert list(table.columns) == ["month", "twsa"]
    assert list(table["month"]) == ["2004-04", "2004-05", "2004-06", "2004-07", "2004-08", "2004-09"]
    np.testing.assert_allclose(table["twsa"], [10.0, -20.0, 40.0, 5.0, np.nan, -10.0])
    assert "1 with several solutions averaged, 1 without a solution left missing" in stdout


@pytest.mark.parametrize("product,units,step,factor", [
    ("et", "kg m-2 s-1", "D", 86400.0),
    ("et", "W m-2", "D", 86400.0 / 2.45e6),
    ("swe", "m", "D", 1000.0),
    ("swe", "kg m-2", "D", 1.0),
    ("twsa", "m", "MS", 1000.0),
])
def test_units_converted(tmp_path, capsys, product, units, step, factor):
    time = pd.date_range("2002-01-01", periods=3, freq=step)
    field = np.broadcast_to(np.array([1.0, 2.0, 3.0])[:, None, None] / factor, (3, 1, 1)).copy()
    g = write_grid(tmp_path / "g.nc", field, [5.5], [5.5], time, units=units)
    polys = write_polygons(tmp_path / "b.gpkg", {"a": shapely.box(5.2, 5.2, 5.8, 5.8)})
    aggregate(capsys, g, polys, tmp_path / "o", product)
    kind, col = ("monthly", "month") if product == "twsa" else ("daily", "date")
    got = pd.read_csv(tmp_path / "o" / kind / "a.csv")[product]
    np.testing.assert_allclose(got, [1.0, 2.0, 3.0], rtol=1e-6)


def test_monthly_et_in_mm_per_month_becomes_daily_rate(tmp_path, capsys):
    time = pd.to_datetime(["2001-01-15", "2001-02-15", "2001-04-15"])  # March missing
    field = np.broadcast_to(np.array([31.0, 56.0, 90.0])[:, None, None], (3, 1, 1)).copy()
    g = write_grid(tmp_path / "g.nc", field, [5.5], [5.5], time, units="mm/month")
    polys = write_polygons(tmp_path / "b.gpkg", {"a": shapely.box(5.2, 5.2, 5.8, 5.8)})
    aggregate(capsys, g, polys, tmp_path / "o", "et")
    et = daily(tmp_path / "o", "a")["et"]
    assert et.index[0] == pd.Timestamp("2001-01-01") and et.index[-1] == pd.Timestamp("2001-04-30")
    np.testing.assert_allclose(et["2001-01"], 1.0)
    np.testing.assert_allclose(et["2001-02"], 2.0)
    assert et["2001-03"].isna().all()
    np.testing.assert_allclose(et["2001-04"], 3.0)
    aggregate(capsys, g, polys, tmp_path / "cut", "et", "--start", "2001-02-01", "--end", "2001-03-31")
    et = daily(tmp_path / "cut", "a")["et"]
    assert et.index[0] == pd.Timestamp("2001-02-01") and et.index[-1] == pd.Timestamp("2001-02-28")
    np.testing.assert_allclose(et, 2.0)


def test_products_merge_into_one_folder_and_feed_the_caravan_build(tmp_path, capsys):
    """lai (8-day), et (daily), swe (daily, m) and twsa (monthly, cm) aggregated into one folder are read by
    `rootzone data caravan --extra`; the store holds the basin means."""
    from test_data_caravan import make_caravan

    from rootzone.data.schema import open_store

    tables = make_caravan(tmp_path / "c", n_per_source=1, days=120)
    gauges = sorted(tables)
    polys = write_polygons(tmp_path / "b.gpkg", {gauges[0]: shapely.box(0, 0, 1, 1),
                                                   gauges[1]: shapely.box(1, 0, 2, 1)})
    lat, lon = [0.5], [0.5, 1.5]
    days = pd.date_range("1999-12-20", "2000-05-10")
    comp = pd.date_range("1999-12-27", "2000-05-10", freq="8D")
    lai = 1 + 0.01 * (comp - comp[0]).days.to_numpy()[:, None, None] * np.array([1.0, 2.0])[None, None]
    write_grid(tmp_path / "lai.nc", lai, lat, lon, comp, name="LAI", units="1")
    et = np.broadcast_to(np.array([1.0, 2.0]), (len(days), 1, 2)).copy()
    gap_day = pd.Timestamp("2000-01-15")
    et[days.get_loc(gap_day), 0, 0] = np.nan
    write_grid(tmp_path / "et.nc", et, lat, lon, days, name="ET", units="mm d-1")
    write_grid(tmp_path / "swe.nc", np.full(et.shape, 0.01), lat, lon, days, name="SWE", units="m")
    months = pd.date_range("1999-12-01", periods=6, freq="MS") + pd.Timedelta(days=15)
    tw = np.broadcast_to(np.array([1.0, -2.0])[None, None], (6, 1, 2)).copy()
    tw[2] = np.nan  # 2000-02 missing
    write_grid(tmp_path / "tw.nc", tw, lat, lon, months, name="lwe_thickness", units="cm")
    extra = tmp_path / "extra"
    for grid, product in (("lai.nc", "lai"), ("et.nc", "et"), ("swe.nc", "swe"), ("tw.nc", "twsa")):
        aggregate(capsys, tmp_path / grid, polys, extra, product)
    assert list(pd.read_csv(extra / "daily" / f"{gauges[0]}.csv").columns) == ["date", "lai", "et", "swe"]
    code, _, err = run_cli(capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--extra", extra,
                           "--quiet")
    assert code == 0, err
    ds = open_store(str(tmp_path / "s.zarr"))
    t = (ds.indexes["time"] - comp[0]).days.to_numpy()
    for b, g in enumerate(gauges):
        np.testing.assert_allclose(ds.lai.sel(basin=g).values, 1 + 0.01 * t * (b + 1), rtol=1e-5)
        np.testing.assert_allclose(ds.swe.sel(basin=g).values, 10.0, rtol=1e-6)
        np.testing.assert_allclose(ds.twsa.sel(basin=g).sel(month=slice("2000-01", "2000-04")).values,
                                   np.array([10.0, np.nan, 10.0, 10.0]) * [1, -2][b], rtol=1e-6)
    et0 = ds.et.sel(basin=gauges[0]).to_series()
    assert np.isnan(et0[gap_day]) and et0.isna().sum() == 1
    np.testing.assert_allclose(et0.drop(gap_day), 1.0)
    np.testing.assert_allclose(ds.et.sel(basin=gauges[1]).values, 2.0)

    # replacing a product needs --overwrite; the other columns stay
    code, _, err = run_cli(capsys, "data", "aggregate", tmp_path / "et.nc", polys, extra, "--product", "et",
                           "--quiet")
    assert_refused(code, err, "already holds et", "--overwrite")
    aggregate(capsys, tmp_path / "swe.nc", polys, extra, "et", "--overwrite", "--units", "mm/d")
    table = pd.read_csv(extra / "daily" / f"{gauges[0]}.csv")
    np.testing.assert_allclose(table["et"].dropna(), 0.01)
    assert table["lai"].notna().sum() > 100


# ------------------------------------------------------------------------------------------------ refusals
@pytest.fixture
def good(tmp_path):
    g = write_grid(tmp_path / "g.nc", cell_field(), LAT, LON, DAYS)
    p = write_polygons(tmp_path / "b.gpkg", {"a": shapely.box(0.2, 0.2, 1.8, 1.8)})
    return g, p


def refused(capsys, tmp_path, *argv, words=()):
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "aggregate", *argv, "--quiet")
    assert_refused(code, err, *words)
    assert tree_snapshot(tmp_path) == before
    return err


def test_refuses_bad_polygons(tmp_path, capsys, good):
    g, _ = good
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="crs"):  # pyogrio warns when writing a file without a CRS
        nocrs = write_polygons(tmp_path / "nocrs.gpkg", {"a": shapely.box(0.2, 0.2, 1.8, 1.8)}, crs=None)
    refused(capsys, tmp_path, g, nocrs, out, "--product", "et", words=("nocrs.gpkg", "no CRS"))
    merc = gpd.GeoDataFrame({"gauge_id": ["a"]}, geometry=[shapely.box(0.2, 0.2, 1.8, 1.8)],
                            crs="EPSG:4326").to_crs("EPSG:3857")
    merc.to_file(tmp_path / "merc.gpkg")
    refused(capsys, tmp_path, g, tmp_path / "merc.gpkg", out, "--product", "et",
            words=("merc.gpkg", "EPSG:3857", "--to-crs"))
    aggregate(capsys, g, tmp_path / "merc.gpkg", tmp_path / "reproj", "et", "--to-crs")
    aggregate(capsys, g, good[1], tmp_path / "direct", "et")
    np.testing.assert_allclose(daily(tmp_path / "reproj", "a")["et"], daily(tmp_path / "direct", "a")["et"],
                               rtol=1e-6)
    dup = write_polygons(tmp_path / "dup.geojson", {"a": shapely.box(0, 0, 1, 1), "b": shapely.box(1, 1, 2, 2)})
    gdf = gpd.read_file(dup)
    gdf["gauge_id"] = ["x_1", "x_1"]
    gdf.to_file(tmp_path / "dup.geojson")
    refused(capsys, tmp_path, g, tmp_path / "dup.geojson", out, "--product", "et", words=("duplicate", "x_1"))
    far = write_polygons(tmp_path / "far.gpkg", {"a": shapely.box(0.2, 0.2, 1.8, 1.8),
                                                 "faraway": shapely.box(50, 50, 51, 51)})
    refused(capsys, tmp_path, g, far, out, "--product", "et", words=("faraway", "not inside the grid"))
    refused(capsys, tmp_path, g, good[1], out, "--product", "et", "--id-field", "name",
            words=("no basin id field 'name'", "gauge_id"))


def test_grid_mapping_read(tmp_path, capsys, good):
    """A CF latitude_longitude mapping on the WGS84 ellipsoid is EPSG:4326 (no --to-crs needed); another
    datum needs --to-crs; a projected grid is refused."""
    _, p = good
    crs = {"grid_mapping_name": "latitude_longitude", "semi_major_axis": 6378137.0,
           "inverse_flattening": 298.257223563}
    g = write_grid(tmp_path / "cf.nc", cell_field(), LAT, LON, DAYS, attrs={"grid_mapping": "crs"},
                   extra={"crs": xr.DataArray(0, attrs=crs)})
    aggregate(capsys, g, p, tmp_path / "o")
    w0, w1 = row_area(0.5), row_area(1.5)  # the box covers 0.64 of cells (0, 0), (0, 1), (1, 0), (1, 1)
    np.testing.assert_allclose(daily(tmp_path / "o", "a")["et"].iloc[0], (w0 * 1 + w1 * 21) / (2 * (w0 + w1)),
                               rtol=1e-6)
    nad = write_grid(tmp_path / "nad.nc", cell_field(), LAT, LON, DAYS, attrs={"grid_mapping": "crs"},
                     extra={"crs": xr.DataArray(0, attrs={"crs_wkt": "EPSG:4269"})})
    refused(capsys, tmp_path, nad, p, tmp_path / "x", "--product", "et", words=("--to-crs", "EPSG:4269"))
    merc = write_grid(tmp_path / "merc.nc", cell_field(), LAT, LON, DAYS, attrs={"grid_mapping": "crs"},
                      extra={"crs": xr.DataArray(0, attrs={"grid_mapping_name": "mercator",
                                                           "longitude_of_projection_origin": 0.0,
                                                           "standard_parallel": 0.0})})
    refused(capsys, tmp_path, merc, p, tmp_path / "x", "--product", "et", words=("projected",))


def test_refuses_bad_grids(tmp_path, capsys, good):
    g, p = good
    out = tmp_path / "out"
    refused(capsys, tmp_path, g, p, out, "--product", "et", "--variable", "ET", words=("no variable 'ET'", "v"))
    xr.Dataset({"v": (("time", "row", "col"), cell_field())}, coords={"time": DAYS}).to_netcdf(
        tmp_path / "nolatlon.nc", engine="h5netcdf")
    refused(capsys, tmp_path, tmp_path / "nolatlon.nc", p, out, "--product", "et",
            words=("no 1-D latitude/longitude", "row, col"))
    xr.Dataset({"v": (("band", "time", "lat", "lon"), np.stack([cell_field()] * 2))},
               coords={"time": DAYS, "lat": LAT, "lon": LON}).to_netcdf(tmp_path / "bands.nc", engine="h5netcdf")
    refused(capsys, tmp_path, tmp_path / "bands.nc", p, out, "--product", "et", words=("extra dimension", "band (2)"))
    xr.Dataset({"v": (("lat", "lon"), cell_field()[0])}, coords={"lat": LAT, "lon": LON}).to_netcdf(
        tmp_path / "static.nc", engine="h5netcdf")
    refused(capsys, tmp_path, tmp_path / "static.nc", p, out, "--product", "et", "--variable", "v",
            words=("no time dimension",))
    bad_units = write_grid(tmp_path / "u.nc", cell_field(), LAT, LON, DAYS, units="furlongs/fortnight")
    refused(capsys, tmp_path, bad_units, p, out, "--product", "et", words=("furlongs/fortnight", "mm/d"))
    refused(capsys, tmp_path, g, p, out, "--product", "swe", "--units", "cm/d", words=("cm/d", "'mm'"))
    cm = write_grid(tmp_path / "cm.nc", cell_field() * 1000, LAT, LON, DAYS, units="mm")  # really µm
    refused(capsys, tmp_path, cm, p, out, "--product", "twsa", words=("wrong units",))
    refused(capsys, tmp_path, tmp_path / "missing.nc", p, out, "--product", "et", words=("missing.nc",))
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused(capsys, tmp_path, g, p, out, "--product", "et", words=("not written by rootzone",))


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    """A 1° ring of cells, longitudes 0..360, latitudes 30..50 descending."""
    from rootzone.data.grids import open_grid

    path = tmp_path_factory.mktemp("ring") / "g.nc"
    write_grid(path, np.zeros((1, 20, 360)), np.arange(49.5, 30, -1), np.arange(0.5, 360), DAYS[:1])
    return open_grid(str(path), "v")


@settings(max_examples=30, deadline=None)
@given(west=st.floats(-200, 170), width=st.floats(0.01, 30), south=st.integers(30, 45), rows=st.integers(1, 5))
def test_weights_of_a_box_sum_to_its_area_on_the_sphere(ring, west, width, south, rows):
    """A lon/lat box whose latitudes are cell edges (any longitudes, across 0° or beyond ±180°): the weights
    sum to its area on the sphere, R² Δλ (sin φ_north − sin φ_south)."""
    from rootzone.data.grids import EARTH_RADIUS_M, basin_weights

    box = gpd.GeoDataFrame({"gauge_id": ["b"]}, geometry=[shapely.box(west, south, west + width, south + rows)],
                           crs="EPSG:4326")
    w = basin_weights(ring, box)
    area = EARTH_RADIUS_M**2 * np.radians(width) * (np.sin(np.radians(south + rows)) - np.sin(np.radians(south)))
    assert w.matrix.sum() == pytest.approx(area, rel=1e-6)
    assert w.inside[0] == pytest.approx(1.0)
