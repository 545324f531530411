"""``ray_jobs/predict.py`` on a local Ray instance (2 CPUs): chunks as Ray tasks give the same store as the
in-process prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from test_predict import cached_experiment, cached_prediction

from rootzone.predict import prepare

ray = pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def local_ray():
    from rootzone.ensemble.cluster import local_cluster_settings

    with local_cluster_settings():  # loopback only, like rootzone's own local instances
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}})
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_prediction_equals_local(tmp_path_factory, tmp_path, local_ray):
    from rootzone.predict.distributed import run_distributed

    exp = cached_experiment(tmp_path_factory)
    reference = xr.open_zarr(cached_prediction(tmp_path_factory, exp)).load()
    out = str(tmp_path / "ray.zarr")
    job = prepare(str(exp), str(exp / "demo.zarr"), out, chunk_basins=3, physics="eager", device="cpu")
    summary = run_distributed(job, num_cpus=1, progress=False)
    assert summary["chunks_run"] == 2
    p = xr.open_zarr(out).load()
    assert p.attrs["prediction_complete"] is True and p.attrs["chunks_done"] == [0, 1]
    for v in ("q", "smax", "tws_mean", "s_std", "invalid_inputs"):
        np.testing.assert_allclose(p[v].values, reference[v].values, rtol=1e-5, atol=1e-5, err_msg=v)
