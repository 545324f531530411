"""One table of targets and forcing (data/schema), one scorer (evaluation.score_basins), one normaliser and one
day loop: each checked against a hand computation or the code it replaced."""

import dataclasses

import numpy as np
import pytest
import torch

from rootzone import config, loss
from rootzone.data import schema
from rootzone.data.loader import Normaliser
from rootzone.evaluation import anomalies, monthly_mean, score_basins
from rootzone.metrics import METRICS, basin_metrics
from rootzone.physics.equations import BucketOutputs, bucket_step, run_buckets


def test_target_table_is_the_one_source():
    names = [t.name for t in schema.TARGETS]
    assert tuple(names) == schema.TARGET_NAMES == config.TARGETS  # config keeps a light copy: must agree
    assert [t.name for t in schema.daily_targets()] == ["q", "et", "swe"]
    assert [t.name for t in schema.monthly_targets()] == ["twsa"]
    assert [t.name for t in schema.daily_targets(["twsa", "swe", "q"])] == ["swe", "q"]
    assert schema.DAILY_TARGET_UNITS == {"q": "mm/d", "et": "mm/d", "swe": "mm"}
    assert schema.MONTHLY_TARGET_UNITS == {"twsa": "mm"}
    assert schema.TARGET_UNITS == {**schema.DAILY_TARGET_UNITS, **schema.MONTHLY_TARGET_UNITS}
    assert schema.target("twsa").dims == ("basin", "month") and schema.target("q").dims == ("basin", "time")
    assert schema.is_monthly("twsa") and not schema.is_monthly("et")
    with pytest.raises(KeyError, match="unknown target 'x'"):
        schema.target("x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        schema.TARGETS[0].units = "m"
    # every output names a BucketOutputs field, and picks the right series
    out = BucketOutputs(*(torch.full((1, 2), float(i)) for i in range(5)))  # q=0 et=1 w=2 s=3 g=4
    got = {t.name: float(t.model_series(out)[0, 0]) for t in schema.TARGETS}
    assert got == {"q": 0.0, "et": 1.0, "swe": 2.0, "twsa": 2.0 + 3.0 + 4.0}
    assert schema.target("q").model_series({"q": 7}) == 7  # mappings (ensemble sums) work too
    assert schema.PHYSICS_FORCING[:3] == schema.REQUIRED_FORCING


def test_stack_forcing_order_and_missing_lai():
    p, t, pet = (np.full((2, 3), v, np.float32) for v in (1.0, 2.0, 3.0))
    stacked = schema.stack_forcing({"pet": pet, "temperature": t, "precipitation": p, "extra": p})
    assert stacked.shape == (2, 3, 4) and stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked[0, 0], [1.0, 2.0, 3.0, 0.0])
    with_lai = schema.stack_forcing({"precipitation": p, "temperature": t, "pet": pet, "lai": p + 4})
    np.testing.assert_array_equal(with_lai[1, 2], [1.0, 2.0, 3.0, 5.0])
    with pytest.raises(KeyError, match="pet"):
        schema.stack_forcing({"precipitation": p, "temperature": t})


def test_score_basins_daily_matches_hand_computation():
    sim = np.array([[1.0, 2.0, 3.0, 4.0, 9.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    obs = np.array([[1.0, 2.0, 2.0, np.nan, 0.0], [1.0, 3.0, 2.0, 4.0, 5.0]])
    valid = np.array([True, True, True, True, False])  # the last day is outside the split
    scores = score_basins(sim, obs, schema.target("q"), valid, basins=["a", "b"])
    assert list(scores) == ["a", "b"]
    # basin a: scored days 0..2 (day 3 unobserved): errors 0, 0, 1; obs mean 5/3, var 2/9
    a = scores["a"]
    assert a["bias"] == pytest.approx(1 / 3) and a["rmse"] == pytest.approx(np.sqrt(1 / 3))
    assert a["nse"] == pytest.approx(1 - (1 / 3) / (2 / 9))
    assert a["beta"] == pytest.approx(2.0 / (5 / 3))
    # basin b: days 0..3, a constant model: NSE 1 - mean(err²)/var = 1 - (1+1+0+4)/4 / 1.25
    assert scores["b"]["nse"] == pytest.approx(1 - 1.5 / 1.25) and scores["b"]["r"] == 0.0
    # without ids the keys are positions; without valid everything observed counts
    assert list(score_basins(sim, obs, schema.target("q"))) == [0, 1]
    assert score_basins(sim, obs, schema.target("q"))[0] == basin_metrics(sim[0], obs[0])


def test_score_basins_twsa_scores_anomalies_on_shared_months():
    # model monthly TWS with a huge offset, observations with another: only the anomalies count
    sim = np.array([[1000.0, 1002.0, 1001.0, 1005.0, 5000.0]])
    obs = np.array([[-7.0, -5.0, -7.0, np.nan, -6.0]])
    valid = np.array([True, True, True, True, False])  # month 4 not scored, month 3 not observed
    scores = score_basins(sim, obs, schema.target("twsa"), valid)
    # shared months 0..2: model mean 1001 -> [-1, 1, 0]; obs mean -19/3 -> [-2/3, 4/3, -2/3]
    sim_a, obs_a = np.array([-1.0, 1.0, 0.0]), np.array([-2 / 3, 4 / 3, -2 / 3])
    want = basin_metrics(sim_a, obs_a, anomaly=True)
    assert set(METRICS) <= set(scores[0])
    for m in METRICS:
        np.testing.assert_allclose(scores[0][m], want[m], rtol=1e-12, atol=1e-12, equal_nan=True)
    assert scores[0]["bias"] == pytest.approx(0.0, abs=1e-12) and np.isnan(scores[0]["beta"])
    err = sim_a - obs_a
    assert scores[0]["nse"] == pytest.approx(1 - np.mean(err**2) / np.var(obs_a))
    # the anomalies are those of the torch loss on the same months
    a_sim, a_obs, used = anomalies(sim, obs, valid)
    t_sim, t_obs, t_valid = loss.anomalies(torch.tensor(sim), torch.tensor(obs), torch.tensor(valid))
    np.testing.assert_array_equal(used, t_valid.numpy())
    np.testing.assert_allclose(a_sim[used], t_sim.numpy()[used])
    np.testing.assert_allclose(a_obs[used], t_obs.numpy()[used])
    assert np.isnan(a_sim[~used]).all() and np.isnan(a_obs[~used]).all()


def test_numpy_monthly_mean_matches_loss():
    rng = np.random.default_rng(1)
    daily = rng.normal(size=(3, 10))
    day_month = np.array([-1, 0, 0, 0, 1, 1, 2, 2, 2, -1])
    got = monthly_mean(daily, day_month, 4)
    want = loss.monthly_mean(torch.tensor(daily), torch.tensor(day_month), 4).numpy()
    np.testing.assert_allclose(got[:, :3], want[:, :3])
    assert np.isnan(got[:, 3]).all()  # a slot without days is missing (the torch version gives 0)
    daily[1, 5] = np.nan
    got = monthly_mean(daily, day_month, 4)
    assert np.isnan(got[1, 1]) and np.isfinite(got[0, 1]) and np.isfinite(got[1, 0])


def test_normaliser_dynamic_and_static():
    norm = Normaliser(["temperature", "precipitation"], np.array([10.0, 2.0]), np.array([5.0, 4.0]),
                      ["area", "slope"], np.array([100.0, 0.5]), np.array([10.0, 0.25]))
    arrays = {"precipitation": np.full((2, 3), 6.0, np.float32), "temperature": np.full((2, 3), 0.0, np.float32),
              "pet": np.zeros((2, 3), np.float32)}
    x = norm.dynamic(arrays)
    assert x.shape == (2, 3, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, 0], [-2.0, 1.0])
    att = np.array([[110.0, 1.0], [90.0, 0.25]])
    np.testing.assert_allclose(norm.static(att), [[1.0, 2.0], [-1.0, -1.0]])
    # columns by name, in any order and with extra ones
    wide = np.array([[7.0, 1.0, 110.0], [7.0, 0.25, 90.0]])
    np.testing.assert_array_equal(norm.static(wide, ["other", "slope", "area"]), norm.static(att))
    assert norm.static(att).dtype == np.float32


def test_run_buckets_takes_the_step():
    g = torch.Generator().manual_seed(0)
    forcing = torch.rand(2, 6, 4, generator=g, dtype=torch.float64) * torch.tensor([10.0, 1.0, 4.0, 2.0])
    params = torch.tensor([300.0, 2.0, 3.0, 1.0, 0.5, 0.5, 0.3, 0.05], dtype=torch.float64).expand(2, 6, 8)
    calls = []

    def counting_step(*args):
        calls.append(1)
        return bucket_step(*args)

    ref = run_buckets(forcing, params)
    got = run_buckets(forcing, params, step=counting_step)
    assert len(calls) == 6
    for a, b in zip(ref, got):
        assert torch.equal(a, b)
