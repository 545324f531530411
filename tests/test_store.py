"""The demo store round-trips through the schema; bad stores are refused; writes are atomic."""

import numpy as np
import pytest
import xarray as xr

from rootzone.data.demo import build_demo
from rootzone.data.schema import SCHEMA_KEY, check_forcing_finite, open_store, validate, write_store
from rootzone.errors import StoreError


def test_demo_round_trip(tmp_path):
    ds = build_demo(basins=5, years=3, seed=1)
    path = str(tmp_path / "demo.zarr")
    write_store(ds, path)
    back = open_store(path)
    assert back.attrs[SCHEMA_KEY] == 1
    assert [str(b) for b in back["basin"].values] == list(ds["basin"].values)
    for name in ds.data_vars:
        np.testing.assert_array_equal(back[name].values, ds[name].values)
        assert back[name].attrs["units"] == ds[name].attrs["units"]
    assert back["precipitation"].chunks is not None  # lazy (dask)
    check_forcing_finite(back)
    # the demo has gaps in every target and the truth alongside
    for t in ("q", "et", "swe", "twsa"):
        frac = float(np.isnan(back[t].values).mean())
        assert 0.01 < frac < 0.5, (t, frac)
    assert "true_smax" in back and float(back["true_smax"].min()) > 0
    # days are contiguous and leap days kept
    assert back.sizes["time"] == 365 * 3 + 1


def test_demo_is_the_model_with_known_parameters():
    """The noiseless demo Q equals the process model run on the stored forcing and true parameters (after
    its spin-up year, so compare the water balance instead of day-0 states)."""
    ds = build_demo(basins=3, years=2, seed=2)
    p = ds["precipitation"].values
    storage = (ds["true_w"] + ds["true_s"] + ds["true_g"]).values
    dstorage = np.diff(storage, axis=1)
    residual = p[:, 1:] - ds["true_q"].values[:, 1:] - ds["true_et"].values[:, 1:] - dstorage
    assert np.abs(residual).max() < 1e-3


def test_refuses_missing_and_foreign_stores(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(str(tmp_path / "nope.zarr"))
    other = tmp_path / "other.zarr"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_zarr(other, zarr_format=3)
    with pytest.raises(StoreError, match="not a rootzone store"):
        open_store(str(other))
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError):
        open_store(str(tmp_path / "plain"))


def test_schema_checks():
    ds = build_demo(basins=2, years=2, seed=0)
    with pytest.raises(StoreError, match="precipitation"):
        validate(ds.drop_vars("precipitation"))
    with pytest.raises(StoreError, match="without gaps"):
        validate(ds.isel(time=np.r_[0:100, 101:ds.sizes["time"]]))
    bad = ds.copy(deep=True)
    bad["pet"][0, 5] = np.nan
    with pytest.raises(StoreError, match="'pet'"):
        check_forcing_finite(bad)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    ds = build_demo(basins=2, years=2, seed=0)
    path = tmp_path / "out.zarr"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_zarr", boom)
    with pytest.raises(OSError):
        write_store(ds, str(path))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    ds = build_demo(basins=2, years=2, seed=0)
    path = str(tmp_path / "out.zarr")
    write_store(ds, path)
    with pytest.raises(StoreError, match="--overwrite"):
        write_store(ds, path)
    write_store(ds, path, overwrite=True)
    assert open_store(path).sizes["basin"] == 2
