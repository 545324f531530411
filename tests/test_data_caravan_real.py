"""`rootzone data caravan` on files as Caravan ships them (issue 15): ERA5-Land's negative PET, basins with
different records, PET derived when a source has none, the combined NetCDF layout, and quiet output."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyet
import pytest
import xarray as xr
from test_data_caravan import (
    ERA5_NEGATIVE_PET,
    REAL_BASINS,
    REAL_LAT,
    make_real_caravan,
    run,
    write_combined,
    write_timeseries,
)

from rootzone.data import schema
from rootzone.data.schema import open_store
from rootzone.errors import StoreError


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The downloaded tree and one store built from it with --pet-method oudin (built once)."""
    root = tmp_path_factory.mktemp("real")
    tables = make_real_caravan(root / "caravan")
    import contextlib
    import io

    from rootzone.cli import main

    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        code = main(["data", "caravan", str(root / "caravan"), str(root / "store.zarr"), "--pet-method", "oudin"])
    assert code == 0, err.getvalue()
    return {"root": root, "tables": tables, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "warnings": [f"{type(w.message).__name__}: {w.message}" for w in caught],
            "ds": open_store(str(root / "store.zarr"))}


def test_build_is_quiet_and_readable(real):
    """Item 6: no warning at all (pandas' PerformanceWarning came ~100 times with many attribute columns),
    counts with the right number, and the empty text column `country` is not a dropped attribute."""
    assert real["warnings"] == []
    assert "Warning" not in real["stderr"]
    out = real["stdout"]
    assert "wrote" in out and "5 basins" in out and "(1 basin)" in out and "oudin (1 basin)" in out
    assert "1 day gap-filled" in out and "1 days" not in out and "basin(s)" not in out
    assert "country" not in out and "dropped" not in out
    ds = real["ds"]
    atts = {str(a) for a in ds.attribute.values}
    assert {"gauge_lat", "area", "ele_mt_sav", "p_month_12", "wet_cl_smj"} <= atts and len(atts) > 100
    assert not atts & {"country", "gauge_name"}


def test_union_of_records_and_forcing_records(real):
    """Item 2: the axis is the union of the records; forcing is NaN outside a basin's record and complete
    inside it; the records are stored as forcing_first_day / forcing_last_day; streamflow stays NaN where
    the gauge has none."""
    ds, tables = real["ds"], real["tables"]
    time = pd.DatetimeIndex(ds.time.values)
    assert time[0] == pd.Timestamp("1990-01-01") and time[-1] == pd.Timestamp("1995-06-30")
    assert ds.forcing_first_day.dtype == np.dtype("datetime64[ns]") and ds.forcing_first_day.dims == ("basin",)
    for b, gauge in enumerate(ds.basin.values):
        first, last, _ = REAL_BASINS[str(gauge)]
        assert pd.Timestamp(ds.forcing_first_day.values[b]) == pd.Timestamp(first)
        assert pd.Timestamp(ds.forcing_last_day.values[b]) == pd.Timestamp(last)
        inside = (time >= first) & (time <= last)
        for name in ("precipitation", "temperature", "pet"):
            values = ds[name].values[b]
            assert np.isfinite(values[inside]).all(), (gauge, name)
            assert np.isnan(values[~inside]).all(), (gauge, name)
        src = tables[str(gauge)].assign(date=lambda d: pd.to_datetime(d["date"])).set_index("date")
        q = pd.Series(ds.q.values[b], index=time)
        np.testing.assert_array_equal(q.isna(), src["streamflow"].reindex(time).isna())
    # the short basin's 2-day temperature gap and missing row: filled linearly, counted per basin
    b = list(ds.basin.values).index("camelses_1001")
    src = tables["camelses_1001"].set_index(pd.to_datetime(tables["camelses_1001"]["date"]))
    t = pd.Series(ds.temperature.values[b], index=time)
    day = src.index[299]
    after = src["temperature_2m_mean"].loc[day + pd.Timedelta(days=3)]
    expect = np.interp([1, 2], [0, 3], [src["temperature_2m_mean"].loc[day], after])
    np.testing.assert_allclose(t.loc[day + pd.Timedelta(days=1):day + pd.Timedelta(days=2)], expect, rtol=1e-5)
    gaps = dict(zip(ds.basin.values, ds.forcing_gap_days.values))
    assert gaps == {"camelsch_2009": 0, "camelsch_2011": 0, "camelses_1001": 3, "camelses_1002": 0,
                    "camelslux_01": 0}
    # training's check reads only the days inside each record: this store passes it
    schema.check_forcing_finite(ds)


def test_negative_era5_pet_is_condensation(real):
    """Item 1: ERA5-Land PET down to -1.3 mm/d is set to 0 and counted per basin (pet_negative_days)."""
    ds, tables = real["ds"], real["tables"]
    time = pd.DatetimeIndex(ds.time.values)
    counts = dict(zip(ds.basin.values, ds.pet_negative_days.values.tolist()))
    # v1.4 basins use the FAO-PM column, whose values are never negative; their ERA5-Land column is unused
    assert counts == {"camelsch_2009": 3, "camelsch_2011": 1, "camelses_1001": 0, "camelses_1002": 0,
                      "camelslux_01": 0}
    for gauge, days in ERA5_NEGATIVE_PET.items():
        b = list(ds.basin.values).index(gauge)
        for day in days:
            assert float(ds.pet.values[b, time.get_loc(pd.Timestamp(day))]) == 0.0
        src = tables[gauge]["potential_evaporation_sum"].to_numpy()
        n = len(src)
        np.testing.assert_allclose(ds.pet.values[b, :n], np.clip(src, 0, None), rtol=1e-6)
    assert "pet: 4 days with negative values (condensation) set to 0 in 2 basins" in real["stdout"]


def test_pet_method_recorded_and_equal_to_pyet(real):
    """Item 3: the P/T/Q-only basin gets Oudin PET from pyet (latitude from gauge_lat, in radians); the
    store records every basin's PET source."""
    ds, tables = real["ds"], real["tables"]
    meanings = ds.pet_method.attrs["flag_meanings"].split()
    source = {str(g): meanings[c] for g, c in zip(ds.basin.values, ds.pet_method.values)}
    assert source == {"camelsch_2009": "potential_evaporation_sum", "camelsch_2011": "potential_evaporation_sum",
                      "camelses_1001": "potential_evaporation_sum_FAO_PENMAN_MONTEITH",
                      "camelses_1002": "potential_evaporation_sum_FAO_PENMAN_MONTEITH", "camelslux_01": "oudin"}
    src = tables["camelslux_01"]
    tmean = pd.Series(src["temperature_2m_mean"].to_numpy(), index=pd.to_datetime(src["date"]))
    expect = pyet.oudin(tmean, np.deg2rad(REAL_LAT["camelslux_01"]))
    b = list(ds.basin.values).index("camelslux_01")
    got = pd.Series(ds.pet.values[b], index=ds.time.values).loc[tmean.index]
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
    assert (got > 0).any() and np.isfinite(got).all()


def oudin_by_hand(day: str, tmean: float, lat_deg: float) -> float:
    """Oudin et al. (2005) eq. 3 with FAO-56 extraterrestrial radiation (eqs. 21-25), float64, mm/d."""
    j = pd.Timestamp(day).day_of_year
    phi = np.deg2rad(lat_deg)
    dr = 1 + 0.033 * np.cos(2 * np.pi * j / 365)
    delta = 0.409 * np.sin(2 * np.pi * j / 365 - 1.39)
    ws = np.arccos(-np.tan(phi) * np.tan(delta))
    ra = 24 * 60 / np.pi * 0.0820 * dr * (ws * np.sin(phi) * np.sin(delta) + np.cos(phi) * np.cos(delta) * np.sin(ws))
    lam = 2.501 - 0.002361 * tmean  # MJ/kg
    return max(ra / lam * (tmean + 5) / 100, 0.0)  # MJ m-2 d-1 / (MJ kg-1) = kg m-2 d-1 = mm/d


def test_oudin_matches_a_hand_computed_day(real):
    ds, tables = real["ds"], real["tables"]
    b = list(ds.basin.values).index("camelslux_01")
    src = tables["camelslux_01"].set_index("date")
    for day in ("1992-06-21", "1993-01-15"):
        i = list(pd.DatetimeIndex(ds.time.values)).index(pd.Timestamp(day))
        want = oudin_by_hand(day, float(src.loc[day, "temperature_2m_mean"]), REAL_LAT["camelslux_01"])
        assert float(ds.pet.values[b, i]) == pytest.approx(want, rel=1e-4)
    # 21 June at 49.6 N, 20 °C: Ra ≈ 41.7 MJ m-2 d-1 (FAO-56 table 2.6) -> 41.7 / 2.454 * 0.25 ≈ 4.25 mm/d
    assert oudin_by_hand("1992-06-21", 20.0, 49.6) == pytest.approx(4.25, abs=0.03)


def test_hargreaves_and_priestley_taylor_equal_pyet(tmp_path, capsys):
    """Derived PET for every basin without a PET column: Hargreaves from min/max temperature (a Daymet-like
    file without a mean: the mean is (min + max) / 2), Priestley-Taylor from Caravan's net solar + thermal
    radiation (W m-2 -> MJ m-2 d-1) and surface pressure (kPa)."""
    tables = make_real_caravan(tmp_path / "c")
    gauge = "camelses_1002"
    df = tables[gauge].drop(columns=["potential_evaporation_sum_ERA5_LAND",
                                     "potential_evaporation_sum_FAO_PENMAN_MONTEITH"])
    (tmp_path / "basins.txt").write_text(gauge + "\n")
    src = df.set_index(pd.to_datetime(df["date"]))
    lat = np.deg2rad(REAL_LAT[gauge])
    tmean, tmin, tmax = (src[f"temperature_2m_{k}"] for k in ("mean", "min", "max"))
    daymet = df.drop(columns=["temperature_2m_mean"])
    want = {
        "hargreaves": (daymet, (tmin + tmax) / 2, pyet.hargreaves((tmin + tmax) / 2, tmax, tmin, lat)),
        "priestley-taylor": (df, tmean, pyet.priestley_taylor(
            tmean, rn=(src["surface_net_solar_radiation_mean"] + src["surface_net_thermal_radiation_mean"]) * 0.0864,
            pressure=src["surface_pressure_mean"])),
    }
    for method, (table, temperature, expect) in want.items():
        write_timeseries(tmp_path / f"c/timeseries/csv/camelses/{gauge}.csv", table, "csv")
        out = tmp_path / f"{method}.zarr"
        code, stdout, err = run(capsys, "data", "caravan", tmp_path / "c", out, "--quiet", "--source", "camelses",
                                "--basins", tmp_path / "basins.txt", "--pet-method", method)
        assert code == 0, err
        assert f"PET from {method} (1 basin)" in stdout and "wrote" in stdout and "1 basin," in stdout
        ds = open_store(str(out))
        np.testing.assert_allclose(ds.temperature.values[0], temperature.to_numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ds.pet.values[0], expect.to_numpy(), rtol=1e-5, atol=1e-6)
        assert ds.pet_method.attrs["flag_meanings"] == method


def test_pet_method_needed_and_limits(tmp_path, capsys):
    """Without --pet-method the P/T/Q file is refused naming the option; PET below -5 mm/d is a sign or
    unit error; negative precipitation stays an error."""
    tables = make_real_caravan(tmp_path / "c")
    code, _, err = run(capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--quiet")
    assert code == 2 and err.count("\n") == 1
    assert "camelslux_01" in err and "no PET column" in err and "--pet-method oudin|hargreaves|priestley-taylor" in err
    path = tmp_path / "c/timeseries/csv/camelsch/camelsch_2011.csv"
    df = tables["camelsch_2011"].copy()
    df.loc[400, "potential_evaporation_sum"] = -6.2
    write_timeseries(path, df, "csv")
    code, _, err = run(capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--quiet", "--pet-method",
                       "oudin")
    assert code == 2 and "(basin camelsch_2011): negative 'potential_evaporation_sum' -6.2 on 1991-02-05" in err
    df = tables["camelsch_2011"].copy()
    df.loc[400, "total_precipitation_sum"] = -0.36
    write_timeseries(path, df, "csv")
    code, _, err = run(capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--quiet", "--pet-method",
                       "oudin")
    assert code == 2 and "negative 'total_precipitation_sum' -0.36 on 1991-02-05 (1 such day)" in err
    assert not list(tmp_path.glob("s.zarr*"))
    # --pet-column for the basins that have it, --pet-method for the others
    write_timeseries(path, tables["camelsch_2011"], "csv")
    code, out, err = run(capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--quiet", "--pet-method",
                         "oudin", "--pet-column", "potential_evaporation_sum_ERA5_LAND")
    assert code == 0, err
    assert "PET from potential_evaporation_sum_ERA5_LAND (2 basins), oudin (3 basins)" in out
    ds = open_store(str(tmp_path / "s.zarr"))
    b = list(ds.basin.values).index("camelses_1002")
    np.testing.assert_allclose(ds.pet.values[b], tables["camelses_1002"]["potential_evaporation_sum_ERA5_LAND"],
                               rtol=1e-6)


def test_long_gap_and_no_overlap_refused_or_dropped(tmp_path, capsys):
    """A gap longer than --max-gap (default 3) names basin and dates; a record outside --start/--end is one
    clear line; --drop-bad-basins leaves both basins out and lists them."""
    tables = make_real_caravan(tmp_path / "c")
    df = tables["camelsch_2011"].copy()
    df.loc[100:103, "temperature_2m_mean"] = np.nan  # 4 days
    write_timeseries(tmp_path / "c/timeseries/csv/camelsch/camelsch_2011.csv", df, "csv")
    argv = ["data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--quiet", "--pet-method", "oudin"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert ("(basin camelsch_2011): 'temperature_2m_mean' is missing for 4 days from 1990-04-11 to 1990-04-14"
            in err and "--drop-bad-basins" in err)
    assert run(capsys, *argv, "--max-gap", "4")[0] == 0
    # camelsch basins end 1993-12-31: outside --start 1994-01-01
    window = ["--start", "1994-01-01", "--end", "1995-06-30"]
    code, _, err = run(capsys, *argv, "--overwrite", *window)
    assert code == 2 and ("(basin camelsch_2009): its forcing record 1990-01-01 to 1993-12-31 does not overlap "
                          "--start/--end 1994-01-01 to 1995-06-30") in err
    code, out, err = run(capsys, *argv, "--overwrite", "--drop-bad-basins")
    assert code == 0, err
    assert "dropped 1 basin (--drop-bad-basins):" in out and "camelsch_2011" in out
    assert list(open_store(str(tmp_path / "s.zarr")).basin.values) == [
        "camelsch_2009", "camelses_1001", "camelses_1002", "camelslux_01"]
    code, out, err = run(capsys, *argv, "--overwrite", "--drop-bad-basins", *window)
    assert code == 0, err
    assert "dropped 2 basins" in out
    ds = open_store(str(tmp_path / "s.zarr"))
    assert list(ds.basin.values) == ["camelses_1001", "camelses_1002", "camelslux_01"]
    assert str(ds.time.values[0])[:10] == "1994-01-01" and ds.sizes["time"] == 546
    assert str(ds.forcing_last_day.values[2])[:10] == "1994-12-31"
    code, out, _ = run(capsys, "data", "info", tmp_path / "s.zarr")
    assert code == 0 and "dropped at build (--drop-bad-basins): 2 basins" in out


def test_combined_netcdf_reads_like_csv(real, tmp_path, capsys):
    """Item 4: one NetCDF with dims basin_id × time, byte-string ids, attributes as variables (text ones as
    bytes), detected by --format auto, builds the same store as the per-basin CSVs; the file itself may be
    given with --format combined."""
    kept = {g: t for g, t in real["tables"].items() if g != "camelslux_01"}
    nc = tmp_path / "k/timeseries/netcdf/caravan/caravan_timeseries.nc"
    write_combined(nc, kept, real["root"] / "caravan")
    with xr.open_dataset(nc) as raw:
        assert raw.basin_id.dtype.kind == "S" and raw.country.dtype.kind == "S"
    code, out, err = run(capsys, "data", "caravan", tmp_path / "k", tmp_path / "auto.zarr", "--quiet")
    assert code == 0, err
    assert "4 basins" in out and "pet: 4 days with negative values (condensation) set to 0 in 2 basins" in out
    a = real["ds"].sel(basin=list(kept))
    b = open_store(str(tmp_path / "auto.zarr"))
    assert b.attrs["caravan_format"] == "combined" and list(b.basin.values) == list(kept)
    for v in ("precipitation", "temperature", "pet", "q", "forcing_first_day", "forcing_last_day",
              "pet_negative_days", "forcing_gap_days"):
        np.testing.assert_allclose(b[v].values.astype(float), a[v].values.astype(float), rtol=1e-6,
                                   equal_nan=True, err_msg=v)
    assert set(b.attribute.values) == set(a.attribute.values)
    np.testing.assert_allclose(b.attributes.sel(attribute=a.attribute.values).values, a.attributes.values,
                               rtol=1e-6)
    from rootzone.data.caravan import CaravanBuild, find_basins

    opts = CaravanBuild(root=nc, out="unused", fmt="combined")
    try:
        fmt, files, sources = find_basins(opts)
    finally:
        opts.combined.close()
    assert fmt == "combined" and list(files) == list(kept) and set(sources.values()) == {"caravan_timeseries"}


def test_store_records_checked_on_open(real, tmp_path):
    """The contract: records inside the axis, both variables or neither; forcing complete inside them."""
    ds = real["ds"].load()
    bad = ds.copy()
    bad["forcing_first_day"] = bad.forcing_first_day.copy(data=bad.forcing_last_day.values + np.timedelta64(1, "D"))
    url = str(tmp_path / "bad.zarr")
    schema.write_store(bad, url)
    with pytest.raises(StoreError, match="basin camelsch_2009 has an impossible forcing record 1994-01-01 to "
                                         "1993-12-31"):
        open_store(url)
    with pytest.raises(StoreError, match="'forcing_last_day' without 'forcing_first_day'"):
        schema.validate(ds.drop_vars("forcing_first_day"))
    hole = ds.copy(deep=True)
    hole["temperature"].values[0, 100] = np.nan  # inside camelsch_2009's record
    with pytest.raises(StoreError, match="'temperature' has 1 NaN/inf values in 1 basin"):
        schema.check_forcing_finite(hole)
    # a store without records (demo, pickle, older builds): every basin covers the whole axis
    old = ds.drop_vars(["forcing_first_day", "forcing_last_day"])
    first, last = schema.forcing_records(old)
    assert (first == ds.time.values[0]).all() and (last == ds.time.values[-1]).all()
    with pytest.raises(StoreError, match="NaN/inf"):
        schema.check_forcing_finite(old)  # its NaN outside the records now counts


def test_info_shows_the_build_facts(real, capsys):
    code, out, err = run(capsys, "data", "info", real["root"] / "store.zarr")
    assert code == 0, err
    flat = " ".join(out.split())
    assert "period: 1990-01-01 to 1995-06-30 (2007 days, 66 months)" in flat
    assert "forcing records: 4 of 5 basins shorter than the period, forcing NaN outside them (camelsch_2009 " \
           "1990-01-01 to 1993-12-31;" in flat
    # streamflow missing inside the records only (days outside a record are not observations to miss)
    src = [t.set_index(pd.to_datetime(t["date"])) for t in real["tables"].values()]
    n_missing = sum(int(t["streamflow"].reindex(pd.date_range(t.index[0], t.index[-1])).isna().sum()) for t in src)
    n_days = sum(len(pd.date_range(t.index[0], t.index[-1])) for t in src)
    assert f"│ q             │ target  │ basin×time │ mm/d  │ {100 * n_missing / n_days:6.1f}% │" in out
    assert "PET: potential_evaporation_sum (2 basins); potential_evaporation_sum_FAO_PENMAN_MONTEITH (2 basins); " \
           "oudin (1 basin)" in flat
    assert "negative PET set to 0 (condensation): 4 days in 2 basins (camelsch_2009 3, camelsch_2011 1)" in flat
    assert "forcing gaps filled by linear interpolation: 3 days in 1 basin (camelses_1001 3)" in flat
    assert "warning" not in flat


def test_a_store_of_different_records_trains_and_scores_each_record(real, tmp_path, capsys):
    """Item 2 end to end: `rootzone train` on the built store (basins with different records) runs, trains
    only on windows inside each record and scores each basin on its own days."""
    import json

    from conftest import TINY_TRAIN, run_cli

    store = str(real["root"] / "store.zarr")
    code, _, err = run_cli(capsys, "train", "--store", store, "--out", tmp_path / "run", "--epochs", "1",
                           *TINY_TRAIN)
    assert code == 0, err
    log = (tmp_path / "run" / "train.log").read_text()
    assert "basin records differ" in log
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    ds = real["ds"]
    for split, entry in metrics["splits"].items():
        for b, gauge in enumerate(ds.basin.values):
            scored = entry["q"]["basins"][str(gauge)]
            # observations outside a basin's record never count
            inside = (ds.time >= ds.forcing_first_day[b]) & (ds.time <= ds.forcing_last_day[b])
            assert scored["n_obs"] <= int(np.isfinite(ds.q.values[b][inside.values]).sum()), (split, gauge)
