"""`rootzone data caravan` on small Caravan-layout trees (CSV and NetCDF) generated here, and `data info`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from rootzone.cli import main
from rootzone.data import schema
from rootzone.data.schema import open_store

SOURCES = ("camels", "lamah")


def basin_frame(rng: np.random.Generator, start: str, days: int) -> pd.DataFrame:
    """One basin's daily table with Caravan v1.4 column names and units (mm/d, °C, mm)."""
    time = pd.date_range(start, periods=days, freq="D")
    season = -np.cos(2 * np.pi * time.day_of_year.to_numpy() / 365.25)
    temp = 8 + 10 * season + rng.normal(0, 2, days)
    precip = np.where(rng.random(days) < 0.4, rng.gamma(0.8, 5.0, days), 0.0)
    pet = np.clip(0.15 * (temp + 5), 0, None)
    q = 0.3 * pd.Series(precip).rolling(10, min_periods=1).mean().to_numpy()
    q[rng.random(days) < 0.05] = np.nan
    return pd.DataFrame(
        {
            "date": time.strftime("%Y-%m-%d"),
            "total_precipitation_sum": precip.round(3),
            "temperature_2m_mean": temp.round(3),
            "potential_evaporation_sum_ERA5_LAND": (1.3 * pet).round(3),
            "potential_evaporation_sum_FAO_PENMAN_MONTEITH": pet.round(3),
            "snow_depth_water_equivalent_mean": np.clip(-20 * season, 0, None).round(3),
            "surface_pressure_mean": rng.normal(95, 1, days).round(3),
            "streamflow": q.round(4),
        }
    )


def write_timeseries(path: Path, df: pd.DataFrame, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        df.to_csv(path, index=False, na_rep="")
    else:
        frame = df.assign(date=pd.to_datetime(df["date"])).set_index("date")
        xr.Dataset.from_dataframe(frame).astype(np.float32).to_netcdf(path, engine="h5netcdf")


def make_caravan(
    root: Path,
    n_per_source: int = 3,
    days: int = 800,
    fmts: tuple[str, ...] = ("csv",),
    seed: int = 0,
    start: str = "2000-01-01",
) -> dict[str, pd.DataFrame]:
    """A Caravan-layout tree under ``root``; returns {gauge_id: table} (tests edit the files after)."""
    rng = np.random.default_rng(seed)
    tables = {}
    for source in SOURCES:
        gauges = [f"{source}_{i:04d}" for i in range(n_per_source)]
        for g in gauges:
            tables[g] = basin_frame(rng, start, days)
            for fmt in fmts:
                ext = "nc" if fmt == "netcdf" else "csv"
                write_timeseries(root / "timeseries" / fmt / source / f"{g}.{ext}", tables[g], fmt)
        att = root / "attributes" / source
        att.mkdir(parents=True, exist_ok=True)
        n = len(gauges)
        pd.DataFrame(
            {
                "gauge_id": gauges,
                "p_mean": rng.uniform(1, 4, n),
                "aridity_FAO_PM": rng.uniform(0.3, 3, n),
                "frac_snow": rng.uniform(0, 0.5, n),
            }
        ).to_csv(att / f"attributes_caravan_{source}.csv", index=False)
        pd.DataFrame(
            {
                "gauge_id": gauges,
                "ele_mt_sav": rng.uniform(100, 2000, n),
                "for_pc_sse": rng.uniform(0, 100, n),
            }
        ).to_csv(att / f"attributes_hydroatlas_{source}.csv", index=False)
        pd.DataFrame(
            {
                "gauge_id": gauges,
                "gauge_name": [f"River {i}" for i in range(n)],
                "country": "X",
                "gauge_lat": rng.uniform(40, 50, n),
                "gauge_lon": rng.uniform(5, 15, n),
                "area": rng.uniform(50, 5000, n),
            }
        ).to_csv(att / f"attributes_other_{source}.csv", index=False)
    return tables


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_csv_build_round_trips_values(tmp_path, capsys):
    tables = make_caravan(tmp_path / "caravan")
    out = tmp_path / "store.zarr"
    code, stdout, err = run(capsys, "data", "caravan", tmp_path / "caravan", out, "--quiet")
    assert code == 0, err
    assert "6 basins" in stdout and "potential_evaporation_sum_FAO_PENMAN_MONTEITH" in stdout
    ds = open_store(str(out))
    assert [str(b) for b in ds.basin.values] == sorted(tables)
    assert ds.sizes["time"] == 800 and str(ds.time.values[0])[:10] == "2000-01-01"
    assert sorted(schema.forcing_names(ds)) == ["era5_swe", "pet", "precipitation", "temperature"]
    assert schema.target_names(ds) == ["q"]
    assert ds["era5_swe"].attrs["units"] == "mm" and ds["pet"].attrs["units"] == "mm/d"
    src = tables["lamah_0001"]
    b = list(ds.basin.values).index("lamah_0001")
    np.testing.assert_allclose(ds.precipitation.values[b], src["total_precipitation_sum"], rtol=1e-6)
    np.testing.assert_allclose(
        ds.pet.values[b], src["potential_evaporation_sum_FAO_PENMAN_MONTEITH"], rtol=1e-6
    )
    q = ds.q.values[b]
    np.testing.assert_array_equal(np.isnan(q), src["streamflow"].isna().to_numpy())  # NaN = missing, kept
    np.testing.assert_allclose(q[~np.isnan(q)], src["streamflow"].dropna(), rtol=1e-6)
    # three attribute tables joined on gauge_id, text columns (gauge_name, country) dropped
    atts = [str(a) for a in ds.attribute.values]
    assert set(atts) == {
        "p_mean",
        "aridity_FAO_PM",
        "frac_snow",
        "ele_mt_sav",
        "for_pc_sse",
        "gauge_lat",
        "gauge_lon",
        "area",
    }
    raw = pd.read_csv(tmp_path / "caravan/attributes/lamah/attributes_other_lamah.csv", index_col="gauge_id")
    assert float(ds.attributes.sel(basin="lamah_0001", attribute="area")) == pytest.approx(
        raw.loc["lamah_0001", "area"], rel=1e-6
    )
    schema.check_forcing_finite(ds.load())


def test_netcdf_and_csv_give_the_same_store(tmp_path, capsys):
    make_caravan(tmp_path / "c", n_per_source=2, days=400, fmts=("csv", "netcdf"))
    for fmt in ("csv", "netcdf"):
        code, _, err = run(
            capsys, "data", "caravan", tmp_path / "c", tmp_path / f"{fmt}.zarr", "--format", fmt, "--quiet"
        )
        assert code == 0, err
    a, b = open_store(str(tmp_path / "csv.zarr")), open_store(str(tmp_path / "netcdf.zarr"))
    assert b.attrs["caravan_format"] == "netcdf"
    for name in ("precipitation", "temperature", "pet", "era5_swe", "q", "attributes"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-6, equal_nan=True)


def test_selection_period_and_chunks(tmp_path, capsys, monkeypatch):
    tables = make_caravan(tmp_path / "c", n_per_source=4, days=500)
    # one basin starts later and one ends earlier: the default period is the union of the records
    late = tables["camels_0002"].iloc[30:]
    write_timeseries(tmp_path / "c/timeseries/csv/camels/camels_0002.csv", late, "csv")
    early = tables["camels_0003"].iloc[:-40]
    write_timeseries(tmp_path / "c/timeseries/csv/camels/camels_0003.csv", early, "csv")
    sizes = []
    real_write = schema.StoreWriter.write
    monkeypatch.setattr(
        schema.StoreWriter,
        "write",
        lambda self, block, start: (sizes.append(block.sizes["basin"]), real_write(self, block, start)),
    )
    code, _, err = run(capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--source", "camels",
                       "--chunk-basins", "3", "--quiet")
    assert code == 0, err
    ds = open_store(str(tmp_path / "s.zarr"))
    assert list(ds.basin.values) == [f"camels_{i:04d}" for i in range(4)]
    assert str(ds.time.values[0])[:10] == "2000-01-01" and ds.sizes["time"] == 500
    first, last = ds.forcing_first_day.values, ds.forcing_last_day.values
    assert str(first[2])[:10] == late["date"].iloc[0] and str(last[3])[:10] == early["date"].iloc[-1]
    assert str(first[0])[:10] == "2000-01-01" and str(last[0])[:10] == str(ds.time.values[-1])[:10]
    p = ds.precipitation.values
    assert np.isnan(p[2, :30]).all() and np.isfinite(p[2, 30:]).all()  # NaN outside the record only
    assert np.isnan(p[3, -40:]).all() and np.isfinite(p[3, :-40]).all()
    assert np.isfinite(ds.temperature.values[[0, 1]]).all()
    assert sizes == [3, 1]  # streamed in blocks of --chunk-basins basins
    assert ds.precipitation.encoding["chunks"][0] == 3
    # --basins FILE, in any order; --start/--end
    (tmp_path / "basins.txt").write_text("# my basins\nlamah_0003\ncamels_0001\n")
    code, _, err = run(capsys, "data", "caravan", tmp_path / "c", tmp_path / "sel.zarr", "--basins",
                       tmp_path / "basins.txt", "--start", "2000-02-01", "--end", "2000-12-31", "--quiet")
    assert code == 0, err
    sel = open_store(str(tmp_path / "sel.zarr"))
    assert list(sel.basin.values) == ["camels_0001", "lamah_0003"] and sel.sizes["time"] == 335


def test_gaps_filled_and_reported_tiny_negatives_clipped(tmp_path, capsys):
    tables = make_caravan(tmp_path / "c", n_per_source=1, days=400)
    df = tables["camels_0000"].copy()
    df.loc[100:102, "total_precipitation_sum"] = np.nan  # 3-day gap
    df = df.drop(index=[200, 201])  # 2 missing rows are a gap too
    df.loc[50, "potential_evaporation_sum_FAO_PENMAN_MONTEITH"] = -0.02  # ERA5 rounding noise
    write_timeseries(tmp_path / "c/timeseries/csv/camels/camels_0000.csv", df, "csv")
    code, out, err = run(capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--quiet")
    assert code == 0, err
    assert "precipitation: 5 days gap-filled" in out and "pet: 1 day with negative values" in out
    ds = open_store(str(tmp_path / "s.zarr"))
    p = ds.precipitation.sel(basin="camels_0000").values
    src = tables["camels_0000"]["total_precipitation_sum"].to_numpy()
    np.testing.assert_allclose(p[100:103], np.interp([100, 101, 102], [99, 103], src[[99, 103]]), rtol=1e-5)
    assert float(ds.pet.sel(basin="camels_0000")[50]) == 0.0
    assert ds.attrs["gap_filled_days"]["precipitation"] == 5
    # a gap longer than --max-gap is refused, a larger --max-gap accepts it
    code, _, err = run(
        capsys, "data", "caravan", tmp_path / "c", tmp_path / "t.zarr", "--max-gap", "2", "--quiet"
    )
    assert code == 2 and "missing for 3 days from 2000-04-10" in err


def test_extra_products(tmp_path, capsys):
    tables = make_caravan(tmp_path / "c", n_per_source=1, days=120)
    extra = tmp_path / "extra"
    (extra / "daily").mkdir(parents=True)
    (extra / "monthly").mkdir()
    for i, g in enumerate(tables):
        time = pd.date_range("2000-01-01", periods=120)
        et = np.linspace(0.5, 2.0, 120)
        et[10] = np.nan
        pd.DataFrame(
            {"date": time.strftime("%Y-%m-%d"), "lai": np.linspace(1, 3, 120), "et [mm/day]": et, "swe": 0.0}
        ).to_csv(extra / "daily" / f"{g}.csv", index=False)
        pd.DataFrame(
            {"month": ["2000-01", "2000-02", "2000-04-16"], "twsa [cm]": [1.5, -2.0 - i, 0.5]}
        ).to_csv(extra / "monthly" / f"{g}.csv", index=False)
    code, _, err = run(
        capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--extra", extra, "--quiet"
    )
    assert code == 0, err
    ds = open_store(str(tmp_path / "s.zarr"))
    assert "lai" in schema.forcing_names(ds) and {"et", "swe", "twsa"} <= set(schema.target_names(ds))
    assert ds.twsa.dims == ("basin", "month") and ds.twsa.attrs["units"] == "mm"
    np.testing.assert_allclose(ds.twsa.sel(basin="lamah_0000").values, [15.0, -30.0, np.nan, 5.0])  # cm -> mm
    assert np.isnan(ds.et.values[0, 10]) and float(ds.et.values[0, 0]) == pytest.approx(0.5)
    np.testing.assert_allclose(ds.lai.values[0], np.linspace(1, 3, 120), rtol=1e-6)


def test_overwrite_and_memory_url(tmp_path, capsys):
    make_caravan(tmp_path / "c", n_per_source=1, days=100)
    out = tmp_path / "s.zarr"
    assert run(capsys, "data", "caravan", tmp_path / "c", out, "--quiet")[0] == 0
    code, _, err = run(capsys, "data", "caravan", tmp_path / "c", out, "--quiet")
    assert code == 2 and "already exists (pass --overwrite" in err
    code, _, err = run(
        capsys, "data", "caravan", tmp_path / "c", out, "--quiet", "--overwrite", "--no-era5-swe"
    )
    assert code == 0, err
    assert "era5_swe" not in open_store(str(out))
    url = "memory://rootzone-test/caravan.zarr"
    code, _, err = run(capsys, "data", "caravan", tmp_path / "c", url, "--quiet")
    assert code == 0, err
    ds = open_store(url)
    assert ds.sizes["basin"] == 2 and ds.sizes["time"] == 100
    import fsspec

    fs = fsspec.filesystem("memory")
    assert [p for p in fs.ls("/rootzone-test", detail=False)] == [
        "/rootzone-test/caravan.zarr"
    ]  # no temp left
    fs.rm("/rootzone-test", recursive=True)


def test_info(tmp_path, capsys):
    tables = make_caravan(tmp_path / "c", n_per_source=2, days=200)
    run(capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--quiet")
    code, out, err = run(capsys, "data", "info", tmp_path / "s.zarr")
    assert code == 0, err
    missing = np.mean([t["streamflow"].isna().mean() for t in tables.values()])
    assert "basins: 4" in out and "2000-01-01 to 2000-07-18" in out
    assert f"{100 * missing:.1f}%" in out and "mm/d" in out and "era5_swe" in out
    code, _, err = run(capsys, "data", "info", tmp_path / "nothing.zarr")
    assert code == 2 and "does not exist" in err
