"""Masks really drop missing values; TWSA anomalies ignore offsets; metrics are right on known cases."""

import numpy as np
import pytest
import torch

from rootzone.loss import anomalies, hybrid_loss, monthly_mean, normalised_mse
from rootzone.metrics import BASIN_COUNTS, MEDIAN_COUNTS, METRICS, basin_metrics, median_metrics
from rootzone.physics.equations import BucketOutputs


def _outputs(b=3, l=62, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    vals = [torch.rand(b, l, generator=g, requires_grad=requires_grad) for _ in range(5)]
    return BucketOutputs(*vals)


def _setup(seed=0):
    out = _outputs(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    obs = {"q": torch.rand(3, 62, generator=g), "twsa": torch.rand(3, 2, generator=g)}
    day_month = torch.tensor([0] * 31 + [1] * 31)
    day_mask = torch.ones(62, dtype=torch.bool)
    day_mask[:5] = False
    scale = {"q": torch.ones(3), "twsa": torch.ones(3)}
    return out, obs, day_mask, torch.ones(2, dtype=torch.bool), day_month, scale


def test_nan_target_changes_nothing():
    out, obs, day_mask, month_mask, day_month, scale = _setup()
    # the entry at a masked day may hold anything: loss and gradients must not move
    ref, _ = hybrid_loss(out, obs, day_mask, month_mask, day_month, scale, {})
    ref.backward()
    grad_ref = out.q.grad.clone()
    for fill in (float("nan"), 1e6, -3.0):
        out2 = BucketOutputs(*(v.detach().clone().requires_grad_(True) for v in out))
        obs2 = {k: v.clone() for k, v in obs.items()}
        obs2["q"][:, :5] = fill
        loss, _ = hybrid_loss(out2, obs2, day_mask, month_mask, day_month, scale, {})
        loss.backward()
        assert torch.equal(loss, ref)
        assert torch.equal(out2.q.grad, grad_ref)
    # a NaN observation equals removing that day from the mask
    obs3 = {k: v.clone() for k, v in obs.items()}
    obs3["q"][:, 10] = float("nan")
    mask3 = day_mask.clone()
    mask3[10] = False
    a, _ = hybrid_loss(out, obs3, day_mask, month_mask, day_month, scale, {})
    b, _ = hybrid_loss(out, obs, mask3, month_mask, day_month, scale, {})
    assert torch.allclose(a, b) and torch.isfinite(a)


def test_all_missing_gives_zero_without_nan_gradient():
    out, obs, day_mask, month_mask, day_month, scale = _setup()
    obs["q"][:] = float("nan")
    obs["twsa"][:] = float("nan")
    loss, _ = hybrid_loss(out, obs, day_mask, month_mask, day_month, scale, {})
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.isfinite(out.q.grad).all()


def test_normalised_mse_by_hand():
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    obs = torch.tensor([[1.0, 1.0, float("nan")], [1.0, 1.0, 1.0]])
    valid = torch.isfinite(obs)
    scale = torch.tensor([1.9, 0.9])
    expected = ((0 + 1) / 2 / 2.0 + 3 / 3 / 1.0) / 2
    assert torch.isclose(normalised_mse(pred, obs, valid, scale), torch.tensor(expected))


def test_twsa_anomaly_ignores_offsets_and_monthly_mean():
    daily = torch.arange(62, dtype=torch.float64)[None, :]
    day_month = torch.tensor([0] * 31 + [1] * 31)
    mm = monthly_mean(daily, day_month, 2)
    assert torch.allclose(mm, torch.tensor([[15.0, 46.0]], dtype=torch.float64))
    obs = torch.tensor([[1.0, 4.0, float("nan")]], dtype=torch.float64)
    model = torch.tensor([[10.0, 13.0, 99.0]], dtype=torch.float64)
    a_mod, a_obs, valid = anomalies(model, obs, torch.ones(3, dtype=torch.bool))
    assert valid.tolist() == [[True, True, False]]
    assert torch.allclose(a_mod[valid], a_obs[valid])  # a constant offset is not an error
    a_mod2, a_obs2, _ = anomalies(model + 1000, obs - 7, torch.ones(3, dtype=torch.bool))
    assert torch.allclose(a_mod2[valid], a_mod[valid]) and torch.allclose(a_obs2[valid], a_obs[valid])


def test_metrics_known_cases():
    obs = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    perfect = basin_metrics(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), obs)
    assert perfect["nse"] == pytest.approx(1.0) and perfect["kge"] == pytest.approx(1.0)
    assert perfect["rmse"] == pytest.approx(0.0) and perfect["bias"] == pytest.approx(0.0)
    mean_model = basin_metrics(np.full(5, 2.5), obs)
    assert mean_model["nse"] == pytest.approx(0.0)
    doubled = basin_metrics(2 * np.array([1.0, 2.0, 3.0, 4.0, 0.0]), obs)
    assert doubled["beta"] == pytest.approx(2.0) and doubled["alpha"] == pytest.approx(2.0)
    assert doubled["r"] == pytest.approx(1.0) and doubled["kge"] == pytest.approx(1 - np.sqrt(2))
    anomaly = basin_metrics(np.array([-1.0, 1.0]), np.array([-2.0, 2.0]), anomaly=True)
    assert np.isnan(anomaly["beta"]) and anomaly["kge"] == pytest.approx(0.5)
    assert np.isnan(basin_metrics(np.ones(3), np.array([np.nan, np.nan, 1.0]))["nse"])
    med = median_metrics({"a": perfect, "b": mean_model, "c": doubled})
    assert med["nse"] == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------- M3: metrics
def test_constant_simulation_scores_poor_not_nan():
    obs = np.array([1.0, 3.0, 2.0, 5.0])
    flat = basin_metrics(np.zeros(4), obs)
    assert flat["r"] == 0.0 and flat["alpha"] == 0.0 and np.isfinite(flat["kge"]) and flat["kge"] < 0
    assert basin_metrics(np.zeros(4), obs - obs.mean(), anomaly=True)["kge"] == pytest.approx(1 - np.sqrt(2))
    # a constant simulation must pull the median KGE down, not drop out of it
    good = basin_metrics(obs + 0.1, obs)
    med = median_metrics({"a": good, "b": good, "c": flat, "d": flat, "e": flat})
    assert med["kge"] == pytest.approx(flat["kge"]) and med["n_basins"] == 5
    # constant observations: no skill is measurable; the basin is counted as excluded
    const = basin_metrics(np.array([1.0, 2.0, 3.0]), np.ones(3))
    assert np.isnan(const["r"]) and np.isnan(const["nse"])
    assert median_metrics({"a": good, "k": const})["n_excluded_constant_obs"] == 1


def test_nonfinite_simulation_on_an_observed_day_is_nan_and_counted():
    obs = np.arange(10, dtype=float)
    sim = obs.copy()
    sim[3] = np.nan
    m = basin_metrics(sim, obs)
    assert all(np.isnan(m[k]) for k in METRICS) and m["n_sim_nonfinite"] == 1 and m["n_obs"] == 10
    # a non-finite simulation where nothing is observed (or scored) does not matter
    obs2 = obs.copy()
    obs2[3] = np.nan
    ok = basin_metrics(sim, obs2)
    assert ok["nse"] == pytest.approx(1.0) and ok["n_sim_nonfinite"] == 0 and ok["n_obs"] == 9
    inf = basin_metrics(np.where(obs == 5, np.inf, obs), obs)
    assert np.isnan(inf["kge"]) and inf["n_sim_nonfinite"] == 1
    med = median_metrics({"a": ok, "b": m, "c": inf})
    assert med["n_basins"] == 1 and med["n_excluded_sim_nonfinite"] == 2 and med["nse"] == pytest.approx(1.0)


def test_counts_and_min_obs():
    obs = np.array([1.0, 2.0, np.nan, 4.0, 3.0])
    m = basin_metrics(obs * 1.1, obs)
    assert m["n_obs"] == 4 and np.isfinite(m["kge"]) and set(METRICS) | set(BASIN_COUNTS) == set(m)
    few = basin_metrics(obs * 1.1, obs, min_obs=5)
    assert np.isnan(few["kge"]) and few["n_obs"] == 4 and few["n_sim_nonfinite"] == 0
    assert np.isfinite(basin_metrics(obs * 1.1, obs, min_obs=4)["kge"])
    none = basin_metrics(np.ones(5), np.full(5, np.nan))
    assert none["n_obs"] == 0 and np.isnan(none["rmse"])
    med = median_metrics({"a": m, "b": few, "c": none})
    assert {k: med[k] for k in MEDIAN_COUNTS} == {"n_basins": 1, "n_excluded_few_obs": 2,
                                                  "n_excluded_sim_nonfinite": 0, "n_excluded_constant_obs": 0}
    assert med["kge"] == pytest.approx(m["kge"])
    empty = median_metrics({})
    assert empty["n_basins"] == 0 and np.isnan(empty["nse"])
    from rootzone.config import Config

    assert Config().min_obs >= 2


# ---------------------------------------------------------------------------------------------- m1: identifiability
def test_default_ranges_are_narrow_and_hold_the_demo_truth():
    import pandas as pd

    from rootzone.config import DEFAULT_PARAM_RANGES
    from rootzone.data.demo import random_attributes, true_parameters
    from rootzone.physics.equations import PARAM_NAMES

    assert DEFAULT_PARAM_RANGES["alpha"][1] <= 1.0 and DEFAULT_PARAM_RANGES["ci"][1] <= 0.5
    att = random_attributes(np.random.default_rng(0), 2000)
    truth = true_parameters(att, pd.date_range("2001-01-01", periods=366, freq="D"))
    for i, name in enumerate(PARAM_NAMES):
        lo, hi = DEFAULT_PARAM_RANGES[name]
        assert lo < truth[..., i].min() and truth[..., i].max() < hi, name


def test_smax_smoothness_penalty():
    from rootzone.loss import smax_smoothness_penalty

    smax = torch.tensor([[100.0, 100.0, 200.0], [50.0, 50.0, 50.0]], requires_grad=True)
    pen = smax_smoothness_penalty(smax)
    assert pen.item() == pytest.approx(np.log(2.0) ** 2 / 4)  # mean over 2 basins × 2 day-to-day changes
    pen.backward()
    assert torch.isfinite(smax.grad).all() and smax.grad[1].abs().sum() == 0
    assert smax_smoothness_penalty(torch.full((3, 10), 80.0)).item() == 0.0
    assert smax_smoothness_penalty(torch.full((3, 1), 80.0)).item() == 0.0
    # scale-free: the same relative change costs the same in a small and a large bucket
    assert smax_smoothness_penalty(torch.tensor([[10.0, 11.0]])).item() == pytest.approx(
        smax_smoothness_penalty(torch.tensor([[1000.0, 1100.0]])).item())


# ---------------------------------------------------------------------------------------------- #12: absent targets
def test_target_without_observations_is_absent_from_the_parts():
    out, obs, day_mask, month_mask, day_month, scale = _setup()
    obs["twsa"][:] = float("nan")
    loss, parts = hybrid_loss(out, obs, day_mask, month_mask, day_month, scale, {})
    assert set(parts) == {"q"} and parts["q"] > 0
    only_q, _ = hybrid_loss(out, {"q": obs["q"]}, day_mask, month_mask, day_month, scale, {})
    assert torch.equal(loss, only_q)


def test_train_without_a_target_and_a_basin_without_observations_is_quiet(tmp_path, capsys):
    import warnings

    from conftest import TINY_TRAIN, run_cli

    from rootzone.data.demo import build_demo
    from rootzone.data.schema import write_store

    ds = build_demo(basins=3, years=4, seed=5).drop_vars("twsa")  # the store lacks a target
    for t in ("q", "et", "swe"):
        ds[t][1, :] = np.nan  # a basin without observations
    ds["swe"][:] = np.nan  # and a target without any observation
    store = str(tmp_path / "store.zarr")
    write_store(ds, store)
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_cli(capsys, "train", "--store", store, "--out", out, "--epochs", "1", *TINY_TRAIN)
    assert code == 0, err
    assert err.strip() == "", err
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    log = (out / "train.log").read_text()
    assert "'q'" in log and "'swe'" not in log and "'twsa'" not in log  # absent, not a loss of 0.0
    assert "target(s) swe have no observations on the training days" in log  # and said so once
