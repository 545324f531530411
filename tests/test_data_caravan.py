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


# ------------------------------------------------------------------------------- files as Caravan ships them

# ERA5-Land PET on days of condensation (dew): slightly negative, down to about -1.3 mm/d
ERA5_NEGATIVE_PET = {"camelsch_2009": {"1991-02-03": -0.36, "1992-12-20": -1.3, "1993-01-05": -0.04},
                     "camelsch_2011": {"1990-11-30": -0.52}}
REAL_BASINS = {  # gauge -> (first day, last day, layout): 'v1.3' ERA5-Land PET only, 'v1.4' both, 'ptq'
    "camelsch_2009": ("1990-01-01", "1993-12-31", "v1.3"),
    "camelsch_2011": ("1990-01-01", "1993-12-31", "v1.3"),
    "camelses_1001": ("1992-01-01", "1995-06-30", "v1.4"),  # a shorter, later record
    "camelses_1002": ("1990-01-01", "1995-06-30", "v1.4"),
    "camelslux_01": ("1991-01-01", "1994-12-31", "ptq"),  # P, T and Q only: PET must be derived
}
REAL_LAT = {"camelsch_2009": 46.5, "camelsch_2011": 47.1, "camelses_1001": 40.2, "camelses_1002": 42.8,
            "camelslux_01": 49.6}


def real_frame(rng: np.random.Generator, gauge: str) -> pd.DataFrame:
    """One basin's table as Caravan publishes it (v1.3: ``potential_evaporation_sum`` = ERA5-Land with its
    negative condensation days; v1.4: ``..._ERA5_LAND`` and ``..._FAO_PENMAN_MONTEITH``; ptq: P, T, Q)."""
    first, last, kind = REAL_BASINS[gauge]
    time = pd.date_range(first, last, freq="D")
    n = len(time)
    season = -np.cos(2 * np.pi * time.day_of_year.to_numpy() / 365.25)
    tmean = 7 + 9 * season + rng.normal(0, 2.5, n)
    spread = rng.uniform(4, 12, n)
    precip = np.where(rng.random(n) < 0.45, rng.gamma(0.7, 6.0, n), 0.0)
    sw = np.clip(120 + 90 * season + rng.normal(0, 25, n), 5, None)  # W m-2, net shortwave
    lw = -np.clip(60 + rng.normal(0, 15, n), 10, None)  # W m-2, net longwave (an upward loss)
    pet = np.clip(0.12 * (tmean + 5) + rng.normal(0, 0.2, n), 0, None)
    q = 0.35 * pd.Series(precip).rolling(15, min_periods=1).mean().to_numpy()
    q[rng.random(n) < 0.03] = np.nan
    q[:40] = np.nan  # the gauge starts later than the forcing
    cols = {"date": time.strftime("%Y-%m-%d"), "total_precipitation_sum": precip.round(2)}
    if kind != "ptq":
        cols |= {"dewpoint_temperature_2m_mean": (tmean - 4).round(2),
                 "snow_depth_water_equivalent_mean": np.clip(-30 * season, 0, None).round(2)}
    cols |= {"temperature_2m_mean": tmean.round(2)}
    if kind != "ptq":
        era5 = (1.25 * pet).round(2)
        for day, value in ERA5_NEGATIVE_PET.get(gauge, {}).items():
            era5[time.get_loc(pd.Timestamp(day))] = value
        cols |= {"temperature_2m_min": (tmean - spread / 2).round(2),
                 "temperature_2m_max": (tmean + spread / 2).round(2),
                 "surface_net_solar_radiation_mean": sw.round(2),
                 "surface_net_thermal_radiation_mean": lw.round(2),
                 "surface_pressure_mean": rng.normal(92, 0.8, n).round(3),  # kPa
                 "u_component_of_wind_10m_mean": rng.normal(0.5, 1, n).round(2),
                 "volumetric_soil_water_layer_1_mean": rng.uniform(0.1, 0.4, n).round(3)}
        if kind == "v1.3":
            cols["potential_evaporation_sum"] = era5
        else:
            cols["potential_evaporation_sum_ERA5_LAND"] = era5
            cols["potential_evaporation_sum_FAO_PENMAN_MONTEITH"] = pet.round(2)
    cols["streamflow"] = q.round(3)
    return pd.DataFrame(cols)


def make_real_caravan(root: Path, seed: int = 3) -> dict[str, pd.DataFrame]:
    """Caravan as downloaded: CSV per basin in three sources, records of different lengths, ERA5-Land negative
    PET, a P/T/Q-only file, a 2-day temperature gap and a missing row in camelses_1001, and the three
    attribute tables per source with ~100 columns in all (text ``gauge_name``, ``country``, empty for
    camelslux). Returns {gauge: table as written}."""
    rng = np.random.default_rng(seed)
    tables = {}
    for gauge in REAL_BASINS:
        df = real_frame(rng, gauge)
        if gauge == "camelses_1001":
            df.loc[300:301, "temperature_2m_mean"] = np.nan  # a 2-day gap
            df = df.drop(index=[500])  # a missing row
        tables[gauge] = df
        write_timeseries(root / "timeseries" / "csv" / gauge.split("_")[0] / f"{gauge}.csv", df, "csv")
    country = {"camelsch": "CH", "camelses": "ES", "camelslux": ""}
    for source in country:
        gauges = [g for g in REAL_BASINS if g.startswith(source + "_")]
        n = len(gauges)
        folder = root / "attributes" / source
        folder.mkdir(parents=True, exist_ok=True)
        caravan = {"gauge_id": gauges, "p_mean": rng.uniform(1, 5, n), "pet_mean_ERA5_LAND": rng.uniform(1, 3, n),
                   "pet_mean_FAO_PM": rng.uniform(1, 3, n), "aridity_ERA5_LAND": rng.uniform(0.3, 2, n),
                   "aridity_FAO_PM": rng.uniform(0.3, 2, n), "frac_snow": rng.uniform(0, 0.6, n),
                   "moisture_index_ERA5_LAND": rng.uniform(-1, 1, n), "seasonality_ERA5_LAND": rng.uniform(0, 1, n),
                   "high_prec_freq": rng.uniform(0, 0.1, n), "high_prec_dur": rng.uniform(1, 2, n),
                   "low_prec_freq": rng.uniform(0.4, 0.8, n), "low_prec_dur": rng.uniform(2, 8, n)}
        caravan |= {f"p_month_{m:02d}": rng.uniform(20, 200, n) for m in range(1, 13)}
        pd.DataFrame(caravan).to_csv(folder / f"attributes_caravan_{source}.csv", index=False)
        atlas = {"gauge_id": gauges, "ele_mt_sav": rng.uniform(200, 2500, n), "slp_dg_sav": rng.uniform(0, 300, n)}
        for prefix in ("for", "crp", "pst", "ire", "gla", "prm", "pac", "cly", "snd", "slt"):
            atlas[f"{prefix}_pc_sse"] = rng.uniform(0, 100, n)
        for m in range(1, 13):
            atlas[f"tmp_dc_s{m:02d}"] = rng.uniform(-100, 250, n).round()
            atlas[f"pre_mm_s{m:02d}"] = rng.uniform(10, 300, n).round()
            atlas[f"pet_mm_s{m:02d}"] = rng.uniform(0, 150, n).round()
            for name in ("aet_mm_s", "cmi_ix_s", "snw_pc_s", "swc_pc_s"):
                atlas[f"{name}{m:02d}"] = rng.uniform(0, 100, n).round()
        atlas["wet_cl_smj"] = rng.integers(-999, 12, n)
        pd.DataFrame(atlas).to_csv(folder / f"attributes_hydroatlas_{source}.csv", index=False)
        pd.DataFrame({"gauge_id": gauges, "gauge_name": [f"Station {g[-4:]}" for g in gauges],
                      "country": country[source], "gauge_lat": [REAL_LAT[g] for g in gauges],
                      "gauge_lon": rng.uniform(-5, 10, n).round(4), "area": rng.uniform(20, 3000, n).round(1)}
                     ).to_csv(folder / f"attributes_other_{source}.csv", index=False)
    return tables


def write_combined(path: Path, tables: dict[str, pd.DataFrame], root: Path) -> None:
    """Caravan's combined NetCDF (OpenDAP/4TU): dims ``basin_id`` × ``time`` on the union of the records,
    basin ids as bytes (``|S``), the attributes (from the CSV tables under ``root``) as (basin_id,)
    variables, text ones as bytes too."""
    gauges = sorted(tables)
    frames = {g: t.assign(date=pd.to_datetime(t["date"])).set_index("date") for g, t in tables.items()}
    time = pd.date_range(min(f.index[0] for f in frames.values()), max(f.index[-1] for f in frames.values()))
    columns = sorted({c for f in frames.values() for c in f.columns})
    data = {c: (("basin_id", "time"), np.stack([frames[g].reindex(time)[c].to_numpy(np.float32)
                                                 if c in frames[g] else np.full(len(time), np.nan, np.float32)
                                                 for g in gauges])) for c in columns}
    ds = xr.Dataset(data, coords={"basin_id": np.array(gauges, dtype="S"), "time": time})
    for c in ("temperature_2m_mean", "temperature_2m_min", "temperature_2m_max"):
        ds[c].attrs["units"] = "°C"
    ds["total_precipitation_sum"].attrs["units"] = "mm"
    att = pd.concat([pd.concat([pd.read_csv(t, dtype={"gauge_id": str}).set_index("gauge_id")
                                for t in sorted((root / "attributes" / s).glob("attributes_*.csv"))], axis=1)
                     for s in sorted({g.split("_")[0] for g in gauges})]).loc[gauges]
    for c in att.columns:
        values = att[c].to_numpy()
        ds[c] = ("basin_id", values.astype("S") if values.dtype == object else values.astype(np.float64))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, engine="h5netcdf")
