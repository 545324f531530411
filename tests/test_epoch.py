"""Training epochs (W2, DESIGN §7): one epoch is one pass over the training basins, each batch drawn from across
the whole store; a resumed run repeats the same batches; validation years and CPU threads default sensibly."""

import os

import numpy as np
import pandas as pd
import pytest

from rootzone import device
from rootzone.config import Config
from rootzone.data.demo import build_demo
from rootzone.data.folds import temporal_fold
from rootzone.data.loader import StoreData
from rootzone.data.schema import open_store, write_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("epoch") / "s.zarr")
    write_store(build_demo(basins=40, years=4, seed=3), path, basin_chunk=8)
    return path


def make(path, **kw):
    ds = open_store(path)
    cfg = Config(store=path, folds=3, batch_size=6, seq_len=400, warmup_days=100, **kw)
    return ds, StoreData(ds, cfg, temporal_fold(ds.indexes["time"], 3, 0, cfg.validation_years))


def test_epoch_is_one_pass_mixing_chunks(store):
    ds, data = make(store)
    assert len(data.block_edges) - 1 == 5  # 5 basin chunks
    assert data.n_batches() == 7 and data.n_batches(3) == 3 and data.n_batches(100) == 7
    rng = np.random.default_rng(0)
    for _ in range(2):
        seen = []
        batches = list(data.epoch(rng))
        assert len(batches) == 7
        for basins, start, length in batches:
            assert basins.dtype == np.int64 and (np.diff(basins) > 0).all() and len(basins) <= 6
            chunks = set(np.searchsorted(data.block_edges, basins, side="right") - 1)
            assert len(chunks) >= 2
            assert data.split.masks["train"][start + 100 : start + length].any() and length == 400
            seen += basins.tolist()
        assert sorted(seen) == list(range(40))  # every basin exactly once
    assert len(list(data.epoch(rng, max_batches=3))) == 3


def test_epoch_batches_equal_direct_reads(store):
    ds, data = make(store)
    rng = np.random.default_rng(1)
    for basins, start, length in data.epoch(rng):
        batch = data.load(basins, start, length)
        assert batch.start == start and list(batch.basins) == list(basins)
        direct = ds.isel(basin=basins, time=slice(start, start + length))
        np.testing.assert_array_equal(batch.forcing[..., 0].numpy(), direct["precipitation"].values)
        np.testing.assert_array_equal(batch.obs["q"].numpy(), direct["q"].values)
        np.testing.assert_array_equal(batch.obs["twsa"].numpy(),
                                      ds["twsa"].isel(basin=basins, month=batch.months).values)
    assert not data._prepared


def test_resume_repeats_the_batches(store):
    _, data = make(store)
    rng = np.random.default_rng(7)
    first = list(data.epoch(rng))
    saved_rng, saved_state = rng.bit_generator.state, data.sampler_state()
    assert saved_state == {}
    it = data.epoch(rng)
    second_part = [next(it) for _ in range(3)]
    mid_rng, mid_state = rng.bit_generator.state, data.sampler_state()
    second_rest = list(it)
    third = list(data.epoch(rng))

    def same(a, b):
        return len(a) == len(b) and all((x[0] == y[0]).all() and x[1:] == y[1:] for x, y in zip(a, b))

    # a run killed after the first epoch: the next epochs repeat
    _, other = make(store)
    r2 = np.random.default_rng(0)
    r2.bit_generator.state = saved_rng
    other.restore_sampler(saved_state)
    assert same(list(other.epoch(r2)), second_part + second_rest) and same(list(other.epoch(r2)), third)
    assert not same(first, third)
    # killed in the middle of an epoch: the rest of it, then the same next epoch
    _, other = make(store)
    r3 = np.random.default_rng(0)
    r3.bit_generator.state = mid_rng
    other.restore_sampler(mid_state)
    assert mid_state["done"] == 3
    assert same(list(other.epoch(r3)), second_rest) and same(list(other.epoch(r3)), third)
    other.restore_sampler({"block": 0, "left": 0})  # an old checkpoint's state changes nothing
    assert other._resume is None


def test_sample_window_mixes_chunks(store):
    _, data = make(store)
    rng = np.random.default_rng(2)
    basins, start, length = data.sample_window(rng)
    assert len(basins) == 6 and (np.diff(basins) > 0).all() and length == 400
    assert data.load(basins, start, length).forcing.shape == (6, 400, 4)


def test_validation_years_default_two_when_the_record_allows():
    assert Config().validation_years == 0
    time15 = pd.date_range("2000-01-01", "2014-12-31")
    assert len(temporal_fold(time15, 5, 0, Config().validation_years).years["validation"]) == 2
    time4 = pd.date_range("2000-01-01", "2003-12-31")  # 3 folds: 2 test years leave 2, one must train
    for fold in range(3):
        split = temporal_fold(time4, 3, fold, 0)
        assert len(split.years["validation"]) == 1 and split.years["train"]
    assert len(temporal_fold(time4, 3, 0, 1).years["validation"]) == 1


def test_default_threads_respects_affinity_quota_and_config(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    monkeypatch.setattr(device, "_cgroup_cpus", lambda: None)
    assert device.default_threads() == 3
    monkeypatch.setattr(device, "_cgroup_cpus", lambda: 2)
    assert device.default_threads() == 2
    import torch

    before = torch.get_num_threads()
    try:
        assert device.set_threads(0) == 2 and torch.get_num_threads() == 2
        assert device.set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cgroup_quota(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    assert device._cgroup_cpus(str(f)) == 2
    f.write_text("max 100000\n")
    assert device._cgroup_cpus(str(f)) is None
    assert device._cgroup_cpus(str(tmp_path / "missing")) is None
