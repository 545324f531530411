"""``rootzone export``: the per-basin S_max climatology as CSV and as a GeoPackage joined to basin polygons,
and the report's S_max map on those polygons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import assert_refused, run_cli, tree_snapshot
from test_predict import cached_experiment, cached_prediction

from rootzone.predict.export import FIELDS

gpd = pytest.importorskip("geopandas")
shapely_geometry = pytest.importorskip("shapely.geometry")


@pytest.fixture(scope="module")
def pred_path(tmp_path_factory):
    return cached_prediction(tmp_path_factory, cached_experiment(tmp_path_factory))


def _polygons(path, ids: list[str], id_column: str = "gauge_id") -> str:
    """A polygon file as users have them: extra basins, another id column name, a projected-looking CRS."""
    boxes = [shapely_geometry.box(i, 0, i + 0.9, 1) for i in range(len(ids))]
    gdf = gpd.GeoDataFrame({id_column: ids, "name": [f"river {i}" for i in range(len(ids))]}, geometry=boxes,
                           crs="EPSG:4326")
    gdf.to_file(path, driver="GPKG", engine="pyogrio")
    return str(path)


def test_export_csv_and_geopackage(pred_path, tmp_path, capsys):
    pred = xr.open_zarr(pred_path)
    ids = [str(b) for b in pred["basin"].values]
    poly = _polygons(tmp_path / "basins.gpkg", list(reversed(ids)) + ["not_predicted"])
    code, out, err = run_cli(capsys, "export", "--predictions", pred_path, "--out", tmp_path / "smax.csv",
                             "--polygons", poly)
    assert code == 0, err
    assert "6 basins" in out
    gdf = gpd.read_file(tmp_path / "smax.gpkg", layer="smax")
    assert sorted(gdf["basin"]) == sorted(ids) and len(gdf) == len(ids)  # one feature per basin
    assert set(FIELDS) <= set(gdf.columns) and gdf.crs.to_epsg() == 4326
    csv = pd.read_csv(tmp_path / "smax.csv", dtype={"basin": str}).set_index("basin")
    # an independent reference for one basin: daily ensemble-mean S_max after the spin-up
    b = ids[2]
    spin = pred["in_warmup"].values
    daily = pred["smax_mean"].sel(basin=b).values[~spin].astype(np.float64)
    months = pd.DatetimeIndex(pred["time"].values[~spin]).month
    clim = pd.Series(daily).groupby(months).mean()
    assert csv.loc[b, "smax_mean"] == pytest.approx(daily.mean(), rel=1e-4)
    assert csv.loc[b, "smax_seasonal_min"] == pytest.approx(clim.min(), rel=1e-4)
    assert csv.loc[b, "smax_seasonal_max"] == pytest.approx(clim.max(), rel=1e-4)
    assert csv.loc[b, "smax_min_month"] == clim.idxmin()
    member_means = pred["smax"].sel(basin=b).values[:, ~spin].astype(np.float64).mean(axis=1)
    assert csv.loc[b, "smax_spread"] == pytest.approx(member_means.std(), rel=1e-3, abs=1e-3)
    row = gdf.set_index("basin").loc[b]
    assert row["smax_mean"] == pytest.approx(csv.loc[b, "smax_mean"], rel=1e-6)
    assert row.geometry.bounds[0] == pytest.approx(len(ids) - 1 - 2)  # joined to its own polygon
    # an existing output is not replaced without --overwrite
    code, _, err = run_cli(capsys, "export", "--predictions", pred_path, "--out", tmp_path / "smax.csv")
    assert_refused(code, err, "exists", "--overwrite")


@pytest.mark.parametrize("problem", ["missing", "duplicate", "no_id"])
def test_bad_polygon_files_are_one_clear_line(pred_path, tmp_path, capsys, problem):
    pred = xr.open_zarr(pred_path)
    ids = [str(b) for b in pred["basin"].values]
    if problem == "missing":
        poly, words = _polygons(tmp_path / "p.gpkg", ids[:4]), ("no polygon", "2 of 6", ids[4])
    elif problem == "duplicate":
        poly, words = _polygons(tmp_path / "p.gpkg", ids + [ids[1]]), ("more than once", ids[1])
    else:
        poly, words = _polygons(tmp_path / "p.gpkg", ids, id_column="code"), ("id column", "--id-column")
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, "export", "--predictions", pred_path, "--out", tmp_path / "smax.csv",
                           "--polygons", poly)
    assert_refused(code, err, *words)
    assert tree_snapshot(tmp_path) == before  # nothing written
    if problem == "no_id":  # naming the column works
        code, _, err = run_cli(capsys, "export", "--predictions", pred_path, "--out", tmp_path / "smax.csv",
                               "--polygons", poly, "--id-column", "code")
        assert code == 0, err


def test_report_draws_the_map_on_polygons(pred_path, tmp_path_factory, tmp_path, capsys):
    exp = cached_experiment(tmp_path_factory)
    ids = [str(b) for b in xr.open_zarr(pred_path)["basin"].values]
    poly = _polygons(tmp_path / "basins.gpkg", ids)
    code, out, err = run_cli(capsys, "report", "--experiment", exp, "--predictions", pred_path, "--out",
                             tmp_path / "r", "--polygons", poly)
    assert code == 0, err
    index = (tmp_path / "r" / "index.html").read_text()
    assert "on the basin polygons" in index and (tmp_path / "r" / "smax_map.png").stat().st_size > 5000
