"""Ensemble uncertainty: CRPS against its definition, interval coverage, the prediction store's 5-95 %
interval, and the report's calibration section for temporal and spatial experiments."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from test_predict import cached_experiment, cached_prediction

from rootzone.cli import main
from rootzone.config import Config
from rootzone.data.demo import build_demo
from rootzone.data.schema import write_store
from rootzone.metrics import crps_ensemble, ensemble_scores
from rootzone.report import make_report


def crps_by_integral(members: np.ndarray, y: float) -> float:
    """∫ (F_ens(z) - 1{z >= y})² dz, exactly: the integrand is piecewise constant between the sorted points."""
    pts = np.sort(np.append(members, y))
    total = 0.0
    for a, b in zip(pts[:-1], pts[1:]):
        mid = 0.5 * (a + b)
        total += (np.mean(members <= mid) - float(mid >= y)) ** 2 * (b - a)
    return total


finite = st.floats(-50, 50, allow_nan=False, width=64)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=9), finite)
def test_crps_matches_its_definition(members, y):
    x = np.array(members)
    got = crps_ensemble(x[:, None], np.array([y]))[0]
    assert got == pytest.approx(crps_by_integral(x, y), rel=1e-9, abs=1e-9)
    brute = np.mean(np.abs(x - y)) - 0.5 * np.mean(np.abs(x[:, None] - x[None, :]))  # energy form, O(M²)
    assert got == pytest.approx(brute, rel=1e-9, abs=1e-9)


def test_degenerate_ensemble_is_the_absolute_error_and_absent_members_are_skipped():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(4, 6))
    one = rng.normal(size=(1, 4, 6))
    np.testing.assert_allclose(crps_ensemble(one, y), np.abs(one[0] - y))
    same = np.repeat(one, 5, axis=0)  # five identical members: still the absolute error
    np.testing.assert_allclose(crps_ensemble(same, y), np.abs(one[0] - y), atol=1e-12)
    x = rng.normal(size=(5, 3))
    x[[1, 3], 0] = np.nan  # members absent on entry 0
    assert crps_ensemble(x, np.zeros(3))[0] == pytest.approx(crps_by_integral(x[[0, 2, 4], 0], 0.0))
    y_nan = np.array([np.nan, 0.0, 0.0])
    assert np.isnan(crps_ensemble(x, y_nan)[0]) and np.isfinite(crps_ensemble(x, y_nan)[1:]).all()


def test_coverage_of_a_calibrated_gaussian_ensemble():
    """Observations drawn from the same distribution as 200 members: the 90 % interval covers ~90 %, the
    spread matches the error of the ensemble mean, and CRPS is near its Gaussian value 1/√π."""
    rng = np.random.default_rng(0)
    n, m = 4000, 200
    centre = rng.normal(0, 5, n)
    members = centre[None] + rng.normal(size=(m, n))
    obs = centre + rng.normal(size=n)
    s = ensemble_scores(members, obs)
    assert s["coverage90"] == pytest.approx(0.9, abs=0.02)
    assert s["spread_skill"] == pytest.approx(1.0, abs=0.05)
    # N(0,1) forecasts, y ~ N(0,1): E|X - y| - ½E|X - X'| = 2/√π - 1/√π = 1/√π (+ O(1/m), finite ensemble)
    assert s["crps"] == pytest.approx(1 / np.sqrt(np.pi), abs=0.02)
    narrow = ensemble_scores(centre[None] + 0.2 * rng.normal(size=(m, n)), obs)  # over-confident
    assert narrow["coverage90"] < 0.5 and narrow["spread_skill"] < 0.3
    none = ensemble_scores(members, np.full(n, np.nan))
    assert none["n_scored"] == 0 and np.isnan(none["crps"])


def test_prediction_store_holds_the_interval(tmp_path_factory):
    exp = cached_experiment(tmp_path_factory)
    pred = xr.open_zarr(cached_prediction(tmp_path_factory, exp))
    for v in ("q", "smax"):
        x = pred[v].values.astype(np.float64)
        np.testing.assert_allclose(pred[f"{v}_q05"].values, np.quantile(x, 0.05, axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pred[f"{v}_q95"].values, np.quantile(x, 0.95, axis=0), rtol=1e-5, atol=1e-5)
        assert pred[f"{v}_q05"].attrs["units"] == pred[v].attrs["units"]
    assert "q_mean" in pred and "q_std" in pred  # the existing variables stay


@pytest.fixture(scope="module")
def spatial_experiment(tmp_path_factory):
    """A spatial-CV experiment: 3 folds × 2 seeds, one tiny epoch each, and its prediction (all members)."""
    from rootzone.train import train_trial

    root = tmp_path_factory.mktemp("spatial") / "exp"
    store = str(root.parent / "demo.zarr")
    write_store(build_demo(basins=6, years=3, seed=5), store)
    base = Config(store=store, folds=3, cv="spatial", epochs=1, batches_per_epoch=1, seq_len=400,
                  warmup_days=120, hidden_size=8, physics="eager", progress=False, threads=1, spinup_cycles=2)
    for fold in range(3):
        for seed in range(2):
            train_trial(base.replace(out=str(root / "trials" / f"fold{fold}_seed{seed}"), fold=fold, seed=seed))
    (root / "experiment.json").write_text(json.dumps({"config": base.to_dict(), "folds": 3, "seeds": [0, 1],
                                                      "store": store}))
    pred = root.parent / "pred.zarr"
    assert main(["predict", "--experiment", str(root), "--out", str(pred), "--members", "all", "--physics", "eager",
                 "--device", "cpu", "--quiet"]) == 0
    return root, pred


def test_report_scores_only_members_that_held_each_basin_out(spatial_experiment, tmp_path, capsys):
    root, pred = spatial_experiment
    out = tmp_path / "report"
    assert main(["report", "--experiment", str(root), "--predictions", str(pred), "--out", str(out)]) == 0
    table = pd.read_csv(out / "uncertainty.csv")
    assert set(table["target"]) >= {"q", "et"}
    assert (table.loc[table["crps"].notna(), "members"] == 2).all()  # the two seeds of the basin's fold
    # reference for one basin: the seeds of the fold that held it out, on every day after the spin-up
    p = xr.open_zarr(pred)
    metrics = {d.name: json.loads((d / "metrics.json").read_text()) for d in (root / "trials").iterdir()}
    basin = str(p["basin"].values[0])
    held = [str(m) for m in p["member"].values if basin in metrics[str(m)]["cv"]["basins"]["test"]]
    assert len(held) == 2
    x = p["q"].sel(member=held, basin=basin).values.astype(np.float64)
    obs = xr.open_zarr(p.attrs["source_store"])["q"].sel(basin=basin).values
    years = pd.DatetimeIndex(p["time"].values).year
    days = np.isin(years, metrics[held[0]]["years"]["test"]) & ~p["in_warmup"].values
    ref = ensemble_scores(x, obs, days)
    row = table[(table["basin"] == basin) & (table["target"] == "q")].iloc[0]
    assert row["crps"] == pytest.approx(ref["crps"], rel=1e-4) and row["coverage90"] == pytest.approx(
        ref["coverage90"])
    index = (out / "index.html").read_text()
    assert "spread_skill.png" in index and "Ensemble calibration" in index and "ungauged (spatial CV)" in index
    assert (out / "spread_skill.png").stat().st_size > 5000


def test_report_puts_gauged_and_ungauged_side_by_side(spatial_experiment, tmp_path_factory, tmp_path):
    """Trials of both schemes in one experiment folder: one column each."""
    import shutil

    root, _ = spatial_experiment
    temporal = cached_experiment(tmp_path_factory)
    mixed = tmp_path / "mixed"
    shutil.copytree(root, mixed)
    for d in (temporal / "trials").iterdir():
        shutil.copytree(d, mixed / "trials" / f"{d.name}_temporal")
    info = make_report(str(mixed), tmp_path / "r")
    index = (tmp_path / "r" / "index.html").read_text()
    assert "gauged (temporal CV)" in index and "ungauged (spatial CV)" in index
    assert "held-out smax_median_abs_log_ratio" in index
    assert any("pass --predictions" in s for s in info["skipped"])


def test_ensemble_summary_of_a_spatial_experiment(spatial_experiment):
    """summary.json names the scheme, pools the held-out S_max recovery over folds and scores each fold's
    seeds on its held-out basins."""
    from rootzone.ensemble.run import aggregate
    from rootzone.evaluation import recovery_figures

    root, _ = spatial_experiment
    summary = aggregate(str(root))
    assert summary["cv"] == "spatial" and summary["n_members"] == 6
    saved = json.loads((root / "summary.json").read_text())
    assert saved["cv"] == "spatial"
    u = saved["uncertainty"]["q"]
    assert u["members_per_day"] == pytest.approx(2.0) and 0 <= u["coverage90"] <= 1 and u["crps_median"] > 0
    # held-out recovery: each basin's S_max is the mean over the two seeds of the fold that tested it
    metrics = [json.loads((d / "metrics.json").read_text()) for d in sorted((root / "trials").iterdir())]
    store = xr.open_zarr(json.loads((root / "experiment.json").read_text())["store"])
    ids = [str(b) for b in store["basin"].values]
    learned = np.array([np.mean([m["smax_mean"][b] for m in metrics if b in m["cv"]["basins"]["test"]])
                        for b in ids])
    ref = recovery_figures("smax", store["true_smax"].mean("time").values, learned)
    rec = saved["truth_recovery_heldout"]
    assert rec["basins"] == 6 and rec["smax_rmse"] == pytest.approx(ref["smax_rmse"])
    table = pd.read_csv(root / "ensemble_metrics.csv")
    assert set(table["cv"]) == {"spatial"}
    test = table[(table["split"] == "test") & (table["target"] == "q")]
    assert test.groupby("basin")["fold"].nunique().eq(1).all() and test["basin"].nunique() == 6
