"""The block-cached loader returns exactly what a direct xarray read gives, across basin chunks."""

import numpy as np
import pytest

from rootzone.config import Config
from rootzone.data import loader as loader_module
from rootzone.data.demo import build_demo
from rootzone.data.folds import temporal_fold
from rootzone.data.loader import StoreData
from rootzone.data.schema import open_store, write_store


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("chunked") / "s.zarr")
    write_store(build_demo(basins=10, years=6, seed=5), path, basin_chunk=3)
    ds = open_store(path)
    cfg = Config(store=path, folds=3, batch_size=4, seq_len=400, warmup_days=100)
    return ds, StoreData(ds, cfg, temporal_fold(ds.indexes["time"], 3, 0))


def test_reads_match_xarray_across_blocks(chunked, monkeypatch):
    ds, data = chunked
    monkeypatch.setattr(loader_module, "BLOCK_CACHE", 1)  # force evictions
    assert list(data.block_edges) == [0, 3, 6, 9, 10]
    rng = np.random.default_rng(0)
    for _ in range(6):
        basins = np.sort(rng.choice(10, size=5, replace=False))
        start = int(rng.integers(0, ds.sizes["time"] - 300))
        batch = data.load(basins, start, 300)
        direct = ds.isel(basin=basins, time=slice(start, start + 300))
        np.testing.assert_array_equal(batch.forcing[..., 0].numpy(), direct["precipitation"].values)
        np.testing.assert_array_equal(batch.forcing[..., 3].numpy(), direct["lai"].values)
        np.testing.assert_array_equal(batch.obs["q"].numpy(), direct["q"].values)
        np.testing.assert_array_equal(batch.obs["twsa"].numpy(),
                                      ds["twsa"].isel(basin=basins, month=batch.months).values)
        norm = data.normaliser
        i = norm.dynamic_names.index("temperature")
        expected = (direct["temperature"].values - norm.dynamic_mean[i]) / norm.dynamic_std[i]
        np.testing.assert_allclose(batch.x_dynamic[..., i].numpy(), expected, rtol=1e-5, atol=1e-5)
    # with one block cached, a block is read from the store again only after another block was read
    reads = []
    real_reads = loader_module.store_reads

    def counting_reads(where):
        reads.append(where)
        return real_reads(where)

    data.load(np.array([9]), 0, 10)  # block 3 cached
    monkeypatch.setattr(loader_module, "store_reads", counting_reads)
    for basins in ([0], [1], [4], [0], [0, 2]):  # blocks 0, 0 (cached), 1, 0, 0 (cached)
        data.load(np.array(basins), 0, 10)
    assert len(reads) == 3


def test_sample_window_draws_across_blocks_and_covers_all(chunked):
    _, data = chunked
    rng = np.random.default_rng(1)
    seen, blocks_seen = set(), []
    for _ in range(80):
        basins, start, length = data.sample_window(rng)
        blocks_seen.append(len(set(np.searchsorted(data.block_edges, basins, side="right") - 1)))
        assert len(set(basins)) == len(basins) == 4
        assert data.split.masks["train"][start + 100 : start + length].any()
        seen |= set(basins.tolist())
    assert seen == set(range(10)) and max(blocks_seen) >= 3


def test_normalisation_uses_training_days_only(chunked):
    ds, data = chunked
    train = data.split.masks["train"]
    p = ds["precipitation"].values[:, train]
    assert data.normaliser.dynamic_mean[data.normaliser.dynamic_names.index("precipitation")] == \
        pytest.approx(p.mean(), rel=1e-5)
    q = ds["q"].values[:, train]
    np.testing.assert_allclose(data.scale["q"], np.nanvar(q, axis=1), rtol=1e-4)
