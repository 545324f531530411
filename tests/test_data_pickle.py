"""`rootzone data import-pickle`: the original study's dict of TensorDataset(x, y, z) into a store."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

from rootzone.cli import main
from rootzone.data.schema import check_forcing_finite, forcing_names, open_store, target_names

X_NAMES = ["P", "T", "PET", "LAI", "elevation", "aridity", "radiation"]
DAYS = {"train": 400, "val": 200, "test": 131}  # 2000-01-01..2001-02-04, ..2001-08-23, ..2001-12-31
START = "2000-01-01"


def legacy(n: int = 4, seed: int = 0, months: str = "touched") -> tuple[dict, dict]:
    """The pickled dict (keys train/val/test) and the full arrays it was cut from."""
    rng = np.random.default_rng(seed)
    total = sum(DAYS.values())
    time = pd.date_range(START, periods=total)
    x = np.empty((n, total, len(X_NAMES)), np.float32)
    x[..., 0] = rng.gamma(0.5, 4, (n, total))
    x[..., 1] = rng.normal(8, 6, (n, total))
    x[..., 2] = rng.uniform(0, 4, (n, total))
    x[..., 3] = rng.uniform(0.5, 4, (n, total))
    x[..., 4] = rng.uniform(100, 2000, n)[:, None]  # statics: constant along time
    x[..., 5] = rng.uniform(0.3, 3, n)[:, None]
    x[..., 6] = rng.uniform(50, 300, (n, total))
    y = rng.uniform(0, 5, (n, total, 3)).astype(np.float32)
    y[:, ::7, 1] = np.nan
    full_months = pd.date_range("2000-01-01", "2001-12-01", freq="MS")
    z = rng.normal(0, 30, (n, len(full_months), 2)).astype(np.float32)
    data, i = {}, 0
    for key, days in DAYS.items():
        t = time[i : i + days]
        touched = pd.date_range(t[0].to_period("M").to_timestamp(), t[-1], freq="MS")
        if months == "whole":
            touched = touched[(touched >= t[0]) & (touched + pd.offsets.MonthEnd(0) <= t[-1])]
        zi = z[:, full_months.get_indexer(touched)]
        data[key] = TensorDataset(
            torch.from_numpy(x[:, i : i + days]), torch.from_numpy(y[:, i : i + days]), torch.from_numpy(zi)
        )
        i += days
    return data, {"x": x, "y": y, "z": z, "time": time, "months": full_months}


def files(tmp_path, data, names=None):
    pkl = tmp_path / "legacy.pkl"
    with pkl.open("wb") as f:
        pickle.dump(data, f)
    nm = tmp_path / "names.json"
    nm.write_text(
        json.dumps(
            names
            or {
                "x": X_NAMES,
                "y": ["Q", "ET", "SWE"],
                "z": ["TWSA", "soil_moisture"],
                "units": {"radiation": "W/m2", "soil_moisture": "mm"},
            }
        )
    )
    return pkl, nm


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("months", ["touched", "whole"])
def test_import_round_trip(tmp_path, capsys, months):
    data, full = legacy(months=months)
    pkl, nm = files(tmp_path, data)
    (tmp_path / "ids.txt").write_text("\n".join(f"gauge_{i}" for i in range(4)))
    out = tmp_path / "legacy.zarr"
    code, stdout, err = run(
        capsys,
        "data",
        "import-pickle",
        pkl,
        out,
        "--names",
        nm,
        "--start",
        START,
        "--basins",
        tmp_path / "ids.txt",
    )
    assert code == 0, err
    assert (
        "train 2000-01-01..2001-02-03; validation 2001-02-04..2001-08-22; test 2001-08-23..2001-12-31"
        in stdout
    )
    ds = open_store(str(out))
    assert list(ds.basin.values) == [f"gauge_{i}" for i in range(4)]
    assert ds.sizes["time"] == 731 and ds.sizes["month"] == 24
    assert ds.attrs["legacy_splits"] == {
        "train": ["2000-01-01", "2001-02-03"],
        "validation": ["2001-02-04", "2001-08-22"],
        "test": ["2001-08-23", "2001-12-31"],
    }
    assert sorted(forcing_names(ds)) == ["lai", "pet", "precipitation", "radiation", "temperature"]
    assert ds.radiation.attrs["units"] == "W/m2" and ds.precipitation.attrs["units"] == "mm/d"
    assert [str(a) for a in ds.attribute.values] == ["elevation", "aridity"]
    np.testing.assert_array_equal(ds.attributes.values[:, 0], full["x"][:, 0, 4])
    np.testing.assert_array_equal(ds.precipitation.values, full["x"][..., 0])
    np.testing.assert_array_equal(ds.et.values, full["y"][..., 1])  # NaN kept as missing
    assert sorted(target_names(ds)) == ["et", "q", "swe", "twsa"]
    twsa = ds.twsa.values
    if months == "touched":
        np.testing.assert_array_equal(twsa, full["z"][..., 0])
    else:  # months cut by a split boundary (2001-02, 2001-08) are missing; all others present
        cut = [13, 19]
        assert np.isnan(twsa[:, cut]).all()
        np.testing.assert_array_equal(np.delete(twsa, cut, axis=1), np.delete(full["z"][..., 0], cut, axis=1))
    assert ds.soil_moisture.attrs["role"] == "auxiliary" and ds.soil_moisture.dims == ("basin", "month")
    check_forcing_finite(ds.load())


def test_torch_save_and_key_spellings(tmp_path, capsys):
    data, full = legacy(n=2)
    data = {"Training": data["train"], "validation": data["val"], "Testing": data["test"]}
    pkl = tmp_path / "legacy.pt"
    torch.save(data, pkl)
    _, nm = files(tmp_path, {})
    code, _, err = run(
        capsys, "data", "import-pickle", pkl, tmp_path / "s.zarr", "--names", nm, "--start", START
    )
    assert code == 0, err
    ds = open_store(str(tmp_path / "s.zarr"))
    assert list(ds.basin.values) == ["legacy_00000", "legacy_00001"]
    np.testing.assert_array_equal(ds.q.values, full["y"][..., 0])


def _shuffle_val(data):
    x, y, z = data["val"].tensors
    data["val"] = TensorDataset(x[[1, 0, 2, 3]], y[[1, 0, 2, 3]], z[[1, 0, 2, 3]])


def _drop_basin(data):
    x, y, z = data["test"].tensors
    data["test"] = TensorDataset(x[:3], y[:3], z[:3])


def _short_z(data):
    x, y, z = data["val"].tensors
    data["val"] = TensorDataset(x, y, z[:, :3])


def _negative_p(data):
    x, y, z = data["test"].tensors
    x = x.clone()
    x[2, 5, 0] = -3.0
    data["test"] = TensorDataset(x, y, z)


@pytest.mark.parametrize(
    "edit, names, message",
    [
        (_shuffle_val, None, "x column 'elevation' is constant in each split but changes between splits"),
        (_drop_basin, None, "split 'test' has 3/3/3 basins in x/y/z, training has 4"),
        (_short_z, None, "split 'validation' (2001-02-04..2001-08-22) has 3 months in z, expected 7"),
        (_negative_p, None, "(basin legacy_00002, x column 0): negative 'precipitation' -3 on 2001-08-28"),
        (lambda d: d.pop("train"), None, "no training split"),
        (None, {"x": X_NAMES[:-1], "y": ["Q", "ET", "SWE"], "z": ["TWSA", "sm"]}, "x has 7 columns"),
        (
            None,
            {"x": ["rain", *X_NAMES[1:]], "y": ["Q", "ET", "SWE"], "z": ["TWSA", "sm"]},
            "no dynamic x column for required forcing 'precipitation'",
        ),
        (
            None,
            {"x": X_NAMES, "y": ["Q", "ET", "SWE"], "z": ["sm", "TWSA"]},
            "the first 'z' column must be TWSA",
        ),
    ],
)
def test_bad_pickles(tmp_path, capsys, edit, names, message):
    data, _ = legacy()
    if edit:
        edit(data)
    pkl, nm = files(tmp_path, data, names)
    out = tmp_path / "out" / "s.zarr"
    out.parent.mkdir()
    code, _, err = run(capsys, "data", "import-pickle", pkl, out, "--names", nm, "--start", START)
    assert code == 2 and message in err, err
    assert list(out.parent.iterdir()) == []


def test_unpicklable_and_missing(tmp_path, capsys):
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    _, nm = files(tmp_path, {})
    code, _, err = run(
        capsys,
        "data",
        "import-pickle",
        tmp_path / "junk.pkl",
        tmp_path / "s.zarr",
        "--names",
        nm,
        "--start",
        START,
    )
    assert code == 2 and "cannot unpickle" in err
    code, _, err = run(
        capsys,
        "data",
        "import-pickle",
        tmp_path / "none.pkl",
        tmp_path / "s.zarr",
        "--names",
        nm,
        "--start",
        START,
    )
    assert code == 2 and "does not exist" in err
