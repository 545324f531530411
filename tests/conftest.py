import pytest

from rootzone.data.demo import build_demo
from rootzone.data.schema import write_store


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> str:
    """A small demo store: 6 basins, 7 years."""
    path = str(tmp_path_factory.mktemp("stores") / "tiny.zarr")
    write_store(build_demo(basins=6, years=7, seed=3), path)
    return path


TINY_TRAIN = ["--physics", "eager", "--quiet", "--set", "batches_per_epoch=2", "--set", "seq_len=400",
              "--set", "warmup_days=120", "--set", "hidden_size=8", "--set", "folds=3"]
