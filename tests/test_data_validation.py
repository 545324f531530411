"""Bad Caravan inputs are refused with their own one-line message, and nothing is left behind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from test_data_caravan import make_caravan, run, write_timeseries

BASIN = "lamah_0001"  # the last basin: earlier blocks are already written when it fails
TS = f"timeseries/csv/lamah/{BASIN}.csv"


def edit_series(root, fn):
    path = root / TS
    df = pd.read_csv(path, dtype={"date": str})
    write_timeseries(path, fn(df), "csv")


def set_value(col, rows, value):
    def fn(df):
        df.loc[rows, col] = value
        return df

    return fn


CASES = {
    "missing file": (
        lambda r: (r / TS).unlink(),
        ["--basins", "{tmp}/basins.txt"],
        f"{TS}: timeseries file of basin {BASIN}",
    ),
    "missing column": (
        lambda r: edit_series(r, lambda d: d.drop(columns="temperature_2m_mean")),
        [],
        f"{TS} (basin {BASIN}): missing required column 'temperature_2m_mean'",
    ),
    "unparseable date": (
        lambda r: edit_series(r, set_value("date", 7, "2000-13-08")),
        [],
        f"{TS} (basin {BASIN}): unparseable date '2000-13-08' in row 8",
    ),
    "duplicate date": (
        lambda r: edit_series(r, set_value("date", 7, "2000-01-07")),
        [],
        f"{TS} (basin {BASIN}): duplicate date 2000-01-07",
    ),
    "non-monotonic": (
        lambda r: edit_series(r, lambda d: d.iloc[[0, 1, 3, 2, *range(4, len(d))]]),
        [],
        f"{TS} (basin {BASIN}): dates not increasing: 2000-01-03 follows 2000-01-04",
    ),
    "long gap": (
        lambda r: edit_series(r, set_value("total_precipitation_sum", slice(40, 49), np.nan)),
        [],
        f"(basin {BASIN}): 'total_precipitation_sum' is missing for 10 days from 2000-02-10",
    ),
    "negative precipitation": (
        lambda r: edit_series(r, set_value("total_precipitation_sum", 20, -5.0)),
        [],
        f"(basin {BASIN}): negative 'total_precipitation_sum' -5 on 2000-01-21",
    ),
    "negative pet": (  # -1.5 is condensation (set to 0); below -5 mm/d it is a sign or unit error
        lambda r: edit_series(r, set_value("potential_evaporation_sum_FAO_PENMAN_MONTEITH", 9, -7.5)),
        [],
        "negative 'potential_evaporation_sum_FAO_PENMAN_MONTEITH' -7.5 on 2000-01-10 (1 such day)",
    ),
    "pet sign convention": (
        lambda r: edit_series(
            r,
            lambda d: d.assign(
                potential_evaporation_sum_FAO_PENMAN_MONTEITH=-d[
                    "potential_evaporation_sum_FAO_PENMAN_MONTEITH"
                ]
                - 1
            ),
        ),
        [],
        "ECMWF sign convention",
    ),
    "kelvin": (
        lambda r: edit_series(r, lambda d: d.assign(temperature_2m_mean=d["temperature_2m_mean"] + 273.15)),
        [],
        f"(basin {BASIN}): 'temperature_2m_mean' looks like Kelvin",
    ),
    "impossible temperature": (
        lambda r: edit_series(r, set_value("temperature_2m_mean", 3, 85.0)),
        [],
        "impossible 'temperature_2m_mean' 85 °C on 2000-01-04",
    ),
    "negative streamflow": (
        lambda r: edit_series(r, set_value("streamflow", 11, -999.0)),
        [],
        f"(basin {BASIN}): negative 'streamflow' -999 on 2000-01-12",
    ),
    "attribute table": (
        lambda r: (
            pd.read_csv(r / "attributes/lamah/attributes_hydroatlas_lamah.csv")
            .iloc[:1]
            .to_csv(r / "attributes/lamah/attributes_hydroatlas_lamah.csv", index=False)
        ),
        [],
        f"attributes_hydroatlas_lamah.csv: basin {BASIN} missing from the attribute table",
    ),
    "unknown attribute": (
        lambda r: None,
        ["--attributes", "area,colour"],
        "attribute 'colour' is in no numeric",
    ),
    "not caravan": (lambda r: None, ["--source", "grdc"], "timeseries/csv/grdc: no such source folder"),
    "bad max gap": (lambda r: None, ["--max-gap", "-1"], "--max-gap must be >= 0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_refused_nothing_written(tmp_path, capsys, case):
    root = tmp_path / "c"
    make_caravan(root, n_per_source=2, days=120)
    (tmp_path / "basins.txt").write_text("camels_0000\nlamah_0001\n")
    breaker, extra, message = CASES[case]
    breaker(root)
    out = tmp_path / "out" / "store.zarr"
    out.parent.mkdir()
    argv = [a.format(tmp=tmp_path) for a in extra]
    code, _, err = run(capsys, "data", "caravan", root, out, "--quiet", "--chunk-basins", "1", *argv)
    assert code == 2
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("rootzone: error: ")
    assert list(out.parent.iterdir()) == []  # neither the store nor its temporary sibling


def test_netcdf_declared_units(tmp_path, capsys):
    tables = make_caravan(tmp_path / "c", n_per_source=1, days=60, fmts=("netcdf",))
    path = tmp_path / "c/timeseries/netcdf/lamah/lamah_0000.nc"
    frame = tables["lamah_0000"].assign(date=lambda d: pd.to_datetime(d["date"])).set_index("date")
    ds = xr.Dataset.from_dataframe(frame).astype(np.float32)
    ds["temperature_2m_mean"].attrs["units"] = "K"
    path.unlink()
    ds.to_netcdf(path, engine="h5netcdf")
    code, _, err = run(capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--quiet")
    assert code == 2 and "'temperature_2m_mean' is declared in Kelvin" in err
    ds["temperature_2m_mean"].attrs["units"] = "degC"
    ds["streamflow"].attrs["units"] = "m3/s"
    path.unlink()
    ds.to_netcdf(path, engine="h5netcdf")
    code, _, err = run(capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--quiet")
    assert code == 2 and "'streamflow' has units 'm3/s', expected mm/d" in err
    assert not list(tmp_path.glob("s.zarr*"))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d, m: (d / "daily/lamah_0000.csv").unlink(),
            "daily/lamah_0000.csv: missing daily product file for basin lamah_0000",
        ),
        (
            lambda d, m: m.rename(columns={"twsa": "twsa [furlongs]"}).to_csv(
                d / "monthly/lamah_0000.csv", index=False
            ),
            "'twsa' has units 'furlongs', expected mm",
        ),
        (
            lambda d, m: m.rename(columns={"twsa": "tws_raw"}).to_csv(
                d / "monthly/lamah_0000.csv", index=False
            ),
            "unknown column 'tws_raw'",
        ),
        (
            lambda d, m: m.assign(twsa=m["twsa"] * 1e4).to_csv(d / "monthly/lamah_0000.csv", index=False),
            "implausible 'twsa'",
        ),
        (
            lambda d, m: pd.DataFrame(
                {
                    "date": pd.date_range("2000-01-01", periods=60).strftime("%Y-%m-%d"),
                    "lai": [np.nan] * 20 + [2.0] * 40,
                }
            ).to_csv(d / "daily/lamah_0000.csv", index=False),
            "'lai' is missing for 20 days from 2000-01-01",
        ),
    ],
)
def test_bad_extra_products(tmp_path, capsys, edit, message):
    make_caravan(tmp_path / "c", n_per_source=1, days=60)
    d = tmp_path / "extra"
    (d / "daily").mkdir(parents=True)
    (d / "monthly").mkdir()
    monthly = pd.DataFrame({"month": ["2000-01", "2000-02"], "twsa": [3.0, -1.0]})
    for g in ("camels_0000", "lamah_0000"):
        pd.DataFrame(
            {"date": pd.date_range("2000-01-01", periods=60).strftime("%Y-%m-%d"), "lai": 2.0}
        ).to_csv(d / "daily" / f"{g}.csv", index=False)
        monthly.to_csv(d / "monthly" / f"{g}.csv", index=False)
    edit(d, monthly)
    code, _, err = run(
        capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--extra", d, "--quiet"
    )
    assert code == 2 and message in err, err
    assert not list(tmp_path.glob("s.zarr*"))
