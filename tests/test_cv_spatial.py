"""Spatial and spatio-temporal cross-validation: group folds, disjoint splits, statistics from training basins
and days only, and a short ``train --cv spatial`` through the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import TINY_TRAIN, assert_refused, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from rootzone.config import Config
from rootzone.data.demo import build_demo
from rootzone.data.folds import basin_folds, cv_fold, spatial_fold
from rootzone.data.loader import StoreData
from rootzone.data.schema import open_store
from rootzone.errors import ConfigError, RootzoneError


@pytest.fixture(scope="module")
def regional():
    """A demo dataset (in memory, 14 basins, 5 years) with a per-basin region code: 5 regions of 1-5 basins."""
    ds = build_demo(basins=14, years=5, seed=11)
    region = np.array(["r1"] * 5 + ["r2"] * 3 + ["r3"] * 3 + ["r4", "r5", "r5"])
    return ds.assign(region=("basin", region))


def _cfg(scheme: str, **kw) -> Config:
    return Config(cv=scheme, folds=kw.pop("folds", 3), **kw)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=4, max_size=40), st.integers(2, 4), st.integers(0, 5))
def test_basin_folds_keep_groups_and_cover_every_basin(labels, folds, seed):
    groups = [f"g{v}" for v in labels]
    if len(set(groups)) < folds:
        with pytest.raises(RootzoneError, match="basin groups"):
            basin_folds(groups, folds, seed)
        return
    fold = basin_folds(groups, folds, seed)
    assert fold.shape == (len(groups),) and set(fold) <= set(range(folds))
    for g in set(groups):  # a group never spans two folds
        assert len({fold[i] for i, x in enumerate(groups) if x == g}) == 1
    assert len(set(fold)) == folds  # every fold tests something
    # the assignment follows the labels, not the basin order in the store
    perm = np.random.default_rng(seed).permutation(len(groups))
    again = basin_folds([groups[i] for i in perm], folds, seed)
    assert (again == fold[perm]).all()


def test_random_groups_are_balanced_and_independent_of_the_trial_seed():
    ids = [f"basin_{i:03d}" for i in range(23)]
    fold = basin_folds(ids, 5, seed=0)
    assert sorted(np.bincount(fold)) == [4, 4, 5, 5, 5]
    ds = build_demo(basins=10, years=4, seed=2)
    a = cv_fold(ds, _cfg("spatial", seed=0, fold=1))
    b = cv_fold(ds, _cfg("spatial", seed=7, fold=1))  # another trial seed: the same split
    for s in ("train", "validation", "test"):
        assert (a.basins[s] == b.basins[s]).all()
    c = cv_fold(ds, _cfg("spatial", fold=1, cv_seed=3))  # the split seed changes it
    assert any((a.basins[s] != c.basins[s]).any() for s in ("test", "train"))


@pytest.mark.parametrize("scheme", ["spatial", "spatiotemporal"])
def test_every_basin_tested_exactly_once_and_groups_respected(regional, scheme):
    folds = 4
    cfg = _cfg(scheme, folds=folds, cv_groups="region")
    splits = [cv_fold(regional, cfg, f) for f in range(folds)]
    tested = np.stack([s.basins["test"] for s in splits]).sum(axis=0)
    assert (tested == 1).all()  # no basin in two test splits, every basin tested once
    region = regional["region"].values
    for s in splits:
        b = s.basins
        assert not (b["train"] & b["test"]).any() and not (b["train"] & b["validation"]).any()
        assert not (b["validation"] & b["test"]).any()
        assert (b["train"] | b["validation"] | b["test"]).all()
        for split in ("train", "validation", "test"):  # a region lies wholly inside or outside each split
            inside = set(region[b[split]])
            assert not inside & set(region[~b[split]])


def test_spatiotemporal_splits_are_disjoint_in_basins_and_years(regional):
    folds = 4
    time = regional.indexes["time"]
    test_years = []
    for f in range(folds):
        s = cv_fold(regional, _cfg("spatiotemporal", folds=folds, fold=f))
        y = s.years
        test_years += y["test"]
        assert not set(y["test"]) & set(y["train"]) and not set(y["test"]) & set(y["validation"])
        assert (s.masks["test"] == np.isin(time.year, y["test"])).all()
        assert not (s.masks["test"] & s.masks["train"]).any() and not (s.masks["test"] & s.masks["validation"]).any()
        assert not (s.basins["test"] & (s.basins["train"] | s.basins["validation"])).any()
    assert sorted(test_years) == sorted(set(test_years)) == sorted(set(time.year) & set(test_years))
    assert len(test_years) == 5  # every whole year is a test year once


def test_bad_cv_settings_are_refused(regional):
    with pytest.raises(ConfigError, match="'cv'"):
        Config(cv="random")
    with pytest.raises(ConfigError, match="folds"):
        Config(cv="spatial", folds=2)
    with pytest.raises(ConfigError, match="cv_groups"):
        Config(cv_groups="region")  # temporal folds have no basin groups
    with pytest.raises(RootzoneError, match="cv_groups"):
        cv_fold(regional, _cfg("spatial", cv_groups="no_such_column"))
    with pytest.raises(RootzoneError, match="basin groups"):
        cv_fold(regional, _cfg("spatial", folds=6, cv_groups="region"))  # 5 regions
    with pytest.raises(RootzoneError, match="whole years"):
        spatial_fold(pd.date_range("2001-01-01", "2002-12-31"), np.arange(6) % 3, 3, 0, spatiotemporal=True)
    ds = regional.copy()
    ds["region"] = ds["region"].where(ds["basin"] != ds["basin"][0], "")
    with pytest.raises(RootzoneError, match="missing"):
        cv_fold(ds, _cfg("spatial", cv_groups="region"))


def test_attribute_column_groups(regional):
    """Groups from an attribute: basins sharing a rounded latitude band stay together."""
    ds = regional.copy()
    att = ds["attributes"].values.copy()
    names = [str(a) for a in ds["attribute"].values]
    att[:, names.index("latitude")] = np.repeat([30.0, 40.0, 50.0, 60.0], [4, 4, 3, 3])
    ds["attributes"] = (ds["attributes"].dims, att)
    for f in range(3):
        s = cv_fold(ds, _cfg("spatial", fold=f, cv_groups="latitude"))
        lat = att[:, names.index("latitude")]
        assert not set(lat[s.basins["test"]]) & set(lat[~s.basins["test"]])


@pytest.mark.parametrize("scheme", ["spatial", "spatiotemporal"])
def test_statistics_from_training_basins_and_days_only(tiny_store, scheme):
    ds = open_store(tiny_store)
    cfg = _cfg(scheme, fold=1, store=tiny_store)
    split = cv_fold(ds, cfg)
    data = StoreData(ds, cfg, split)
    train = np.flatnonzero(split.basins["train"])
    assert (data.train_basins == train).all() and 0 < len(train) < data.n_basins
    days = np.flatnonzero(split.masks["train"])
    for i, v in enumerate(data.normaliser.dynamic_names):  # float64 reference over train basins × train days
        x = ds[v].values.astype(np.float64)[np.ix_(train, days)]
        assert data.normaliser.dynamic_mean[i] == pytest.approx(x.mean(), rel=1e-5)
        assert data.normaliser.dynamic_std[i] == pytest.approx(x.std(), rel=1e-4)
        every = ds[v].values.astype(np.float64)[:, days].mean()
        assert data.normaliser.dynamic_mean[i] != pytest.approx(every, rel=1e-6)  # held-out basins left out
    att = ds["attributes"].sel(attribute=data.normaliser.static_names).values.astype(np.float64)[train]
    np.testing.assert_allclose(data.normaliser.static_mean, att.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(data.normaliser.static_min, att.min(axis=0))
    # training epochs draw only training basins
    drawn = {int(b) for basins, _, _ in data.epoch(np.random.default_rng(0)) for b in basins}
    assert drawn == set(train.tolist())


def test_train_cv_spatial_through_the_cli(tiny_store, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--store", tiny_store, "--out", out_dir, "--epochs", "1",
                             "--fold", "2", "--cv", "spatial", *TINY_TRAIN)
    assert code == 0, err
    assert "spatial CV" in out and "held-out (test) basins" in out
    metrics = json.loads((out_dir / "metrics.json").read_text())
    cv = metrics["cv"]
    assert cv["scheme"] == "spatial" and cv["groups"] == "" and cv["split_seed"] == 0
    ds = open_store(tiny_store)
    expected = cv_fold(ds, Config(cv="spatial", folds=3, fold=2))
    ids = np.array([str(b) for b in ds["basin"].values])
    for split in ("train", "validation", "test"):
        assert cv["basins"][split] == ids[expected.basins[split]].tolist()
        assert set(metrics["splits"][split]["q"]["basins"]) == set(cv["basins"][split])  # scored there only
    assert "smax_rmse" in metrics["truth_recovery_test"] and "smax_rmse" in metrics["truth_recovery"]
    truth = ds["true_smax"].mean("time").sel(basin=cv["basins"]["test"]).values
    learned = np.array([metrics["smax_mean"][b] for b in cv["basins"]["test"]])
    assert metrics["truth_recovery_test"]["smax_rmse"] == pytest.approx(np.sqrt(np.mean((truth - learned) ** 2)))
    assert "spatial" in (out_dir / "config.toml").read_text()


def test_cli_refuses_a_bad_group_column(tiny_store, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--store", tiny_store, "--out", tmp_path / "r", "--cv", "spatial",
                           "--cv-groups", "nowhere", *TINY_TRAIN)
    assert_refused(code, err, "cv_groups", "nowhere")
    assert not (tmp_path / "r").exists()


def test_temporal_default_is_unchanged(tiny_store):
    ds = open_store(tiny_store)
    split = cv_fold(ds, Config(folds=3, fold=0))
    assert split.basins is None and split.scheme == "temporal"
    assert isinstance(ds, xr.Dataset)


def test_tune_selection_record_for_spatial_folds(regional):
    from rootzone.ensemble.tune import selection_note, spatial_selection_record

    rec = spatial_selection_record(regional, _cfg("spatial", folds=4), 1)
    assert rec["cv"] == "spatial" and rec["honest_for_fold"] == 1
    assert set(rec["honest_test_basins"]).isdisjoint(rec["selected_on"] + rec["trained_on"])
    assert rec["selected_on_test_of"] == [2]  # validation basins of fold 1 = test basins of fold 2
    assert "test basins" in selection_note(rec)
