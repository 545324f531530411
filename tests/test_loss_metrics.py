"""Masks really drop missing values; TWSA anomalies ignore offsets; metrics are right on known cases."""

import numpy as np
import pytest
import torch

from rootzone.loss import anomalies, hybrid_loss, monthly_mean, normalised_mse
from rootzone.metrics import basin_metrics, median_metrics
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
