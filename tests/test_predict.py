"""``rootzone predict`` on a tiny demo experiment (2 trials trained here, no Ray): layout, NaN handling,
ensemble statistics, saved normalisers, member selection and resume after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from rootzone.cli import main
from rootzone.config import Config
from rootzone.data.demo import build_demo
from rootzone.data.schema import open_store, write_store
from rootzone.errors import RootzoneError
from rootzone.experiment import ExperimentDir
from rootzone.predict import VARIABLES, prepare, run

TRIALS = ((0, 0), (1, 0))  # (fold, seed)


def cached_experiment(tmp_path_factory) -> Path:
    """Build (once per session, cached on disk) EXP with a demo store and two tiny trained trials."""
    from rootzone.train import train_trial

    root = tmp_path_factory.getbasetemp() / "demo_experiment"
    if (root / "experiment.json").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    store = str(root / "demo.zarr")
    write_store(build_demo(basins=6, years=7, seed=3), store, overwrite=True)
    base = Config(store=store, folds=3, epochs=1, batches_per_epoch=2, seq_len=400, warmup_days=120,
                  hidden_size=8, physics="eager", progress=False, threads=1)
    for fold, seed in TRIALS:
        train_trial(base.replace(out=str(root / "trials" / f"fold{fold}_seed{seed}"), fold=fold, seed=seed))
    record = {"config": base.to_dict(), "folds": 3, "seeds": [0], "store": store}
    (root / "experiment.json").write_text(json.dumps(record))
    return root


def cached_prediction(tmp_path_factory, exp: Path) -> Path:
    """The reference prediction of EXP (through the CLI; chunks of 3 basins), cached on disk beside EXP
    (predict refuses an OUT inside the experiment folder)."""
    out = exp.parent / f"{exp.name}_pred.zarr"
    if not out.exists():
        code = main(["predict", "--experiment", str(exp), "--out", str(out), "--chunk-basins", "3",
                     "--physics", "eager", "--device", "cpu", "--quiet"])
        assert code == 0
    return out


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    return cached_experiment(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, experiment) -> xr.Dataset:
    return xr.open_zarr(cached_prediction(tmp_path_factory, experiment)).load()


def _store(exp: Path) -> str:
    return str(exp / "demo.zarr")


def test_layout_units_and_no_nan_for_valid_inputs(reference):
    p = reference
    assert p.attrs["prediction_complete"] is True
    assert list(p["member"].values) == ["fold0_seed0", "fold1_seed0"]
    assert p.sizes["basin"] == 6 and p.sizes["time"] == 7 * 365 + 2
    for v, (units, _) in VARIABLES.items():
        assert p[v].dims == ("member", "basin", "time") and p[v].dtype == np.float32
        assert p[f"{v}_mean"].dims == ("basin", "time") and p[f"{v}_std"].dims == ("basin", "time")
        assert p[v].attrs["units"] == units and p[v].attrs["long_name"]
        assert np.isfinite(p[v].values).all(), v
    assert not p["invalid_inputs"].values.any() and not p["outside_training_range"].values.any()
    smax = p["smax"].values
    assert (smax >= 10).all() and (smax <= 2000).all()
    np.testing.assert_allclose(p["tws"].values, p["w"].values + p["s"].values + p["g"].values, rtol=1e-5,
                               atol=1e-3)
    assert p["in_warmup"].values[:120].all() and not p["in_warmup"].values[120:].any()


def test_ensemble_mean_and_spread_are_over_members(reference):
    for v in ("smax", "q", "tws"):
        members = reference[v].values.astype(np.float64)
        np.testing.assert_allclose(reference[f"{v}_mean"].values, members.mean(axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(reference[f"{v}_std"].values, members.std(axis=0), rtol=1e-4, atol=1e-4)
    assert float(reference["smax_std"].max()) > 0  # two different members really differ


def test_invalid_basins_are_nan_and_reported_other_basins_unchanged(experiment, reference, tmp_path, capsys):
    ds = open_store(_store(experiment)).load()
    ds["precipitation"][1, 100:103] = np.nan
    ds["attributes"][4, 0] = float(ds["attributes"][:, 0].max()) * 10  # aridity far outside training
    ds["attributes"][3, 0] = np.inf
    bad = str(tmp_path / "bad.zarr")
    write_store(ds, bad)
    summary = run(prepare(str(experiment), bad, str(tmp_path / "p.zarr"), chunk_basins=4, physics="eager",
                          device="cpu"), progress=False)
    printed = capsys.readouterr().out
    assert set(summary["invalid_basins"]) == {"demo_0001", "demo_0003"}
    assert "demo_0001" in printed and "precipitation: 3 NaN/inf" in printed and "demo_0003" in printed
    p = xr.open_zarr(tmp_path / "p.zarr").load()
    assert p["invalid_inputs"].values.tolist() == [False, True, False, True, False, False]
    assert int(p["invalid_values"].sel(basin="demo_0001", input="precipitation")) == 3
    assert int(p["invalid_values"].sel(basin="demo_0003", input="attributes")) == 1
    for v in ("q", "smax", "q_mean", "s_std"):
        assert np.isnan(p[v].sel(basin=["demo_0001", "demo_0003"]).values).all(), v
    assert p["outside_training_range"].values.tolist() == [False, False, False, False, True, False]
    assert bool(p["attribute_outside_range"].sel(basin="demo_0004", attribute="aridity"))
    ok = ["demo_0000", "demo_0002", "demo_0005"]
    for v in ("q", "s", "smax"):
        np.testing.assert_allclose(p[v].sel(basin=ok).values, reference[v].sel(basin=ok).values, rtol=1e-5,
                                   atol=1e-5)
    assert np.isfinite(p["q"].sel(basin="demo_0004").values).all()


def test_saved_normaliser_is_used_not_refitted_on_the_new_store(experiment, reference, tmp_path):
    ds = open_store(_store(experiment)).isel(basin=[5, 2]).load()  # a store with other statistics
    sub = str(tmp_path / "sub.zarr")
    write_store(ds, sub)
    run(prepare(str(experiment), sub, str(tmp_path / "p.zarr"), physics="eager", device="cpu"), progress=False)
    p = xr.open_zarr(tmp_path / "p.zarr").load()
    for v in ("q", "smax", "tws_mean"):
        np.testing.assert_allclose(p[v].values, reference[v].sel(basin=["demo_0005", "demo_0002"]).values,
                                   rtol=1e-5, atol=1e-5)


def test_interrupted_run_resumes_to_the_same_store(experiment, reference, tmp_path):
    from rootzone.device import set_threads

    # the reference came through the CLI, which sets torch's threads to the usable CPUs; other tests of the
    # session may have left another count, whose different float summation order changes the last bit
    set_threads(0)
    out = str(tmp_path / "p.zarr")

    class Stop(Exception):
        pass

    def stop_after_first(result):
        raise Stop

    job = prepare(str(experiment), _store(experiment), out, chunk_basins=3, physics="eager", device="cpu")
    with pytest.raises(Stop):
        run(job, progress=False, on_chunk=stop_after_first)
    partial = xr.open_zarr(out, consolidated=False)
    assert partial.attrs["prediction_complete"] is False and partial.attrs["chunks_done"] == [0]
    assert np.isfinite(partial["q"].isel(basin=slice(0, 3)).values).all()
    assert np.isnan(partial["q"].isel(basin=slice(3, 6)).values).all()  # not written yet: NaN, not zeros
    with pytest.raises(RootzoneError, match="different prediction job"):
        prepare(str(experiment), _store(experiment), out, chunk_basins=2, physics="eager")
    summary = run(prepare(str(experiment), _store(experiment), out, chunk_basins=3, physics="eager",
                          device="cpu"), progress=False)
    assert summary["chunks_skipped"] == 1 and summary["chunks_run"] == 1
    resumed = xr.open_zarr(out).load()
    assert resumed.attrs["prediction_complete"] is True
    for v in resumed.data_vars:
        np.testing.assert_array_equal(resumed[v].values, reference[v].values, err_msg=v)


def _fake_trial(root: Path, fold: int, seed: int, loss: float | None, finished: bool = True) -> None:
    d = root / "trials" / f"fold{fold}_seed{seed}"
    d.mkdir(parents=True)
    (d / "best.pt").write_bytes(b"")
    if finished:
        (d / "metrics.json").write_text(json.dumps({"fold": fold, "seed": seed, "best_validation_loss": loss}))


def test_member_selection(tmp_path):
    for fold, seed, loss in [(0, 0, 0.5), (0, 1, 0.3), (0, 2, 0.3), (1, 0, float("nan")), (1, 1, 0.9)]:
        _fake_trial(tmp_path, fold, seed, loss)
    _fake_trial(tmp_path, 2, 0, None, finished=False)
    assert [m.name for m in ExperimentDir.open(str(tmp_path)).members("best")] == ["fold0_seed1", "fold1_seed1"]
    assert len(ExperimentDir.open(str(tmp_path)).members("all")) == 5
    assert [m.name for m in ExperimentDir.open(str(tmp_path)).members("fold1_seed0,fold0_seed2")] == ["fold1_seed0",
                                                                                         "fold0_seed2"]
    with pytest.raises(RootzoneError, match="fold2_seed0"):
        ExperimentDir.open(str(tmp_path)).members("fold2_seed0")
