"""Basins with different records in one store (issue 15 item 2, downstream of the store): training windows
stay inside each basin's record, observations outside it are never used, whole-record runs spin up on the
basin's own first year, and prediction outputs outside the record are missing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rootzone.config import Config
from rootzone.data.demo import build_demo
from rootzone.data.folds import temporal_fold
from rootzone.data.loader import StoreData
from rootzone.data.records import FIRST, LAST, compatible_batches, fill_outside, read_records
from rootzone.data.schema import forcing_names, open_store, write_store
from tests.conftest import run_cli

LATE, EARLY = 0, 1  # basin 0 starts 3 years late; basin 1 ends a year early


@pytest.fixture(scope="module")
def ragged_store(tmp_path_factory) -> str:
    """The 6-basin, 7-year demo store with two basins on shorter records (forcing NaN outside them)."""
    ds = build_demo(basins=6, years=7, seed=3)
    time = pd.DatetimeIndex(ds["time"].values)
    first = np.full(6, time[0].to_datetime64())
    last = np.full(6, time[-1].to_datetime64())
    first[LATE] = np.datetime64("2003-01-01")
    last[EARLY] = np.datetime64("2005-12-31")
    for v in forcing_names(ds):
        da = ds[v].load()
        da[LATE, time < first[LATE]] = np.nan
        da[EARLY, time > last[EARLY]] = np.nan
        ds[v] = da
    ds[FIRST] = ("basin", first.astype("datetime64[ns]"))
    ds[LAST] = ("basin", last.astype("datetime64[ns]"))
    path = str(tmp_path_factory.mktemp("ragged") / "ragged.zarr")
    write_store(ds, path)
    return path


@settings(max_examples=40, deadline=None)
@given(n_days=st.integers(30, 1200), a=st.integers(0, 1199), span=st.integers(1, 1200))
def test_fill_outside_continues_the_first_and_last_year(n_days, a, span):
    a = min(a, n_days - 1)
    b = min(n_days - 1, a + span - 1)
    values = np.random.default_rng(0).random((1, n_days))
    original = values.copy()
    values[0, :a] = np.nan
    values[0, b + 1:] = np.nan
    fill_outside({"x": values}, np.array([a]), np.array([b]))
    period = min(365, b - a + 1)
    assert np.isfinite(values).all()
    np.testing.assert_array_equal(values[0, a:b + 1], original[0, a:b + 1])  # the record itself is untouched
    for t in range(n_days):  # every filled day repeats a record day one or more whole periods away
        if t < a or t > b:
            src = a + (t - a) % period if t < a else b - (b - t) % period
            assert a <= src <= b and (src - t) % period == 0
            assert values[0, t] == original[0, src]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(1, 5))
def test_compatible_batches_share_a_window_and_cover_every_basin_once(seed, size):
    rng = np.random.default_rng(seed)
    n = 17
    lo = rng.integers(0, 300, n)
    hi = lo + rng.integers(-20, 400, n)  # some records shorter than a window (hi < lo)
    starts = np.sort(rng.choice(700, 200, replace=False))
    batches = compatible_batches(rng.permutation(n), lo, hi, starts, size)
    placed = np.concatenate([b for b, _ in batches]) if batches else np.zeros(0, int)
    eligible = [b for b in range(n) if ((starts >= lo[b]) & (starts <= hi[b])).any()]
    assert sorted(placed.tolist()) == eligible  # every basin with a possible window exactly once
    for basins, shared in batches:
        assert 1 <= len(basins) <= size and len(shared)
        assert ((shared[:, None] >= lo[basins]) & (shared[:, None] <= hi[basins])).all()


def _data(path: str, **kw) -> StoreData:
    ds = open_store(path)
    cfg = Config(**{"store": path, "folds": 3, "seq_len": 400, "warmup_days": 120, "hidden_size": 8,
                    "batch_size": 2, "progress": False, **kw})
    return StoreData(ds, cfg, temporal_fold(ds.indexes["time"], cfg.folds, cfg.fold, cfg.validation_years))


def test_epoch_windows_stay_inside_each_record(ragged_store):
    data = _data(ragged_store)
    rec = data.records
    assert rec.partial and not data.untrainable
    seen = []
    for basins, start, length in data.epoch(np.random.default_rng(1)):
        assert (rec.first[basins] <= start).all() and (start + length - 1 <= rec.last[basins]).all()
        batch = data.load(basins, start, length)
        assert np.isfinite(batch.forcing.numpy()).all()
        seen.extend(basins.tolist())
    assert sorted(seen) == list(range(data.n_basins))


def test_observations_outside_a_record_are_missing_and_forcing_is_filled(ragged_store):
    data = _data(ragged_store)
    batch = data.load(np.arange(data.n_basins), 0, data.n_days)
    assert np.isfinite(batch.forcing.numpy()).all()
    late_first = int(data.records.first[LATE])
    q = batch.obs["q"].numpy()
    assert np.isnan(q[LATE, :late_first]).all() and np.isfinite(q[LATE, late_first:]).any()
    assert np.isnan(q[EARLY, int(data.records.last[EARLY]) + 1:]).all()
    raw = open_store(ragged_store)["q"].values
    assert np.isfinite(raw[LATE, :late_first]).any()  # the store has them: the loader hides them


def test_records_shorter_than_a_window_are_not_trained_on(ragged_store):
    data = _data(ragged_store, seq_len=1000, warmup_days=100)  # basin 0: a 4-year record
    assert data.untrainable == []
    data = _data(ragged_store, seq_len=1900, warmup_days=100)  # no 5.2-year window
    assert data.untrainable == [str(data.basin_ids[LATE])]


def test_train_and_predict_on_a_store_with_different_records(ragged_store, tmp_path, capsys):
    from rootzone.train import train_trial

    exp = tmp_path / "exp"
    run = exp / "trials" / "fold0_seed0"
    cfg = Config(store=ragged_store, out=str(run), folds=3, epochs=2, batches_per_epoch=2, seq_len=400,
                 warmup_days=120, hidden_size=8, physics="eager", progress=False, threads=1)
    train_trial(cfg)
    (exp / "experiment.json").write_text(json.dumps({"config": cfg.to_dict(), "folds": 3, "seeds": [0],
                                                     "store": ragged_store}))
    metrics = json.loads((run / "metrics.json").read_text())
    # fold 0 of 3 tests 2000-2002: the late basin has no record there and is counted, not scored
    test_q = metrics["splits"]["test"]["q"]
    late, early = (str(open_store(ragged_store)["basin"].values[i]) for i in (LATE, EARLY))
    assert test_q["basins"][late]["n_obs"] == 0 and np.isnan(test_q["basins"][late]["nse"])
    assert test_q["median"]["n_excluded_few_obs"] >= 1
    assert np.isfinite(test_q["basins"][early]["nse"])
    assert "records differ" in (run / "train.log").read_text()

    out_store = tmp_path / "pred.zarr"
    code, out, err = run_cli(capsys, "predict", "--experiment", exp, "--store", ragged_store, "--out", out_store,
                             "--quiet")
    assert code == 0, err
    assert "0 basins skipped" in out  # missing forcing outside a record is not an invalid input
    import xarray as xr

    pred = xr.open_zarr(out_store)
    rec = read_records(open_store(ragged_store))
    q = pred["q_mean"].values
    assert np.isnan(q[LATE, : rec.first[LATE]]).all() and np.isfinite(q[LATE, rec.first[LATE]:]).all()
    assert np.isnan(q[EARLY, rec.last[EARLY] + 1:]).all() and np.isfinite(q[EARLY, : rec.last[EARLY] + 1]).all()


def test_a_late_record_is_spun_up_on_its_own_first_year(ragged_store, tmp_path):
    """Static parameters (constant in time), so the whole-axis run of the late basin, whose first years
    repeat its first year, must reach its first day with the storages a spin-up on that year gives."""
    import torch

    from rootzone.evaluation import record_pass
    from rootzone.model import HybridModel
    from rootzone.physics.equations import spinup

    data = _data(ragged_store, param_mode="static", physics="eager")
    torch.manual_seed(0)
    model = HybridModel(len(data.dynamic_names), len(data.normaliser.static_names), data.cfg)
    passed = record_pass(model, data, torch.device("cpu"))
    first = int(data.records.first[LATE])
    batch = data.load(np.array([LATE]), first, 365)
    with torch.no_grad():
        params = model.parameters_from(batch.x_dynamic, batch.x_static)
        own = spinup(batch.forcing.float(), params, "eager", 50, 0.01).state[:, 0].numpy()
    np.testing.assert_allclose(passed.states[:, LATE, first], own, atol=1.0)
