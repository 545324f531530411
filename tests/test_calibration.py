"""Calibrated predictive interval (rootzone.calibration): coverage where the truth is known, validation-only
residuals, exact CRPS against brute force, non-negativity."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rootzone import calibration as cal


def _synthetic(rng: np.random.Generator, n_members: int = 3, n_basins: int = 4, n_days: int = 2000):
    """Observations (gamma-distributed flows, some zeros) and member simulations whose sqrt-space error is iid
    with a known, skewed (non-Gaussian) distribution: transform(obs) = transform(sim) + e + u_m, e ~ Gumbel
    shared by the members (the model's error) and u_m small member noise (a seed ensemble: the members agree
    more than they are right)."""
    truth = rng.gamma(0.8, 2.0, size=(n_basins, n_days))
    truth[:, ::17] = 0.0
    z_obs = cal.transform(truth)
    e = rng.gumbel(0.0, 0.15, size=truth.shape) - 0.15 * 0.5772
    sims = []
    for _ in range(n_members):
        sims.append(cal.inverse(z_obs + 0.5 - e + rng.normal(0.0, 0.02, size=truth.shape)))
    return np.stack(sims), truth


def test_transform_roundtrip_and_nonnegative():
    x = np.array([0.0, 0.005, 1.0, 37.5, 1e3])
    np.testing.assert_allclose(cal.inverse(cal.transform(x)), x, atol=1e-12)
    assert (cal.inverse(np.array([-3.0, 0.0, 0.05])) == 0).all()
    assert cal.inverse(cal.transform(np.zeros(3)) + 0.0).tolist() == [0.0, 0.0, 0.0]  # exact zeros, no round-off


def test_predictive_coverage_on_held_out_days():
    rng = np.random.default_rng(1)
    sims, obs = _synthetic(rng)
    n_days = obs.shape[1]
    val = np.zeros(n_days, dtype=bool)
    val[:700] = True  # validation days; the rest are held out
    rq = np.stack([cal.residual_quantiles(s, obs, np.broadcast_to(val, obs.shape)) for s in sims])  # [M, B, K]
    sample = cal.predictive_sample(sims, rq)  # [M*K, B, T]
    lo, hi = cal.predictive_interval(sample[:, :, ~val])
    y = obs[:, ~val]
    inside = (y >= lo) & (y <= hi)
    # zeros at the lower bound count as inside; coverage near the nominal 0.9
    assert 0.85 <= inside.mean() <= 0.95, inside.mean()
    assert (sample[np.isfinite(sample)] >= 0).all()
    # the member-spread interval of the same members is far narrower (over-confident)
    mlo, mhi = np.quantile(sims[:, :, ~val], (0.05, 0.95), axis=0)
    assert ((y >= mlo) & (y <= mhi)).mean() < 0.6


def test_residuals_from_validation_days_only():
    rng = np.random.default_rng(2)
    sims, obs = _synthetic(rng, n_days=900)
    val = np.zeros(obs.shape[1], dtype=bool)
    val[:300] = True
    day_mask = np.broadcast_to(val, (len(sims), obs.shape[1]))
    basin_mask = np.ones((len(sims), obs.shape[0]), dtype=bool)

    def rq_of(o):
        return cal.member_residual_quantiles(lambda lo, hi: sims[:, lo:hi], lambda lo, hi: o[lo:hi], obs.shape[0],
                                             day_mask, basin_mask, chunk=3)

    changed = obs.copy()
    changed[:, ~val] = rng.gamma(5.0, 10.0, size=changed[:, ~val].shape)  # test days: very different
    a, b = rq_of(obs), rq_of(changed)
    np.testing.assert_array_equal(a, b)
    lo_a, hi_a = cal.predictive_interval(cal.predictive_sample(sims, a))
    lo_b, hi_b = cal.predictive_interval(cal.predictive_sample(sims, b))
    np.testing.assert_array_equal(lo_a, lo_b)
    np.testing.assert_array_equal(hi_a, hi_b)
    changed[:, :10] += 5.0  # a validation day does change it
    assert not np.array_equal(rq_of(changed), a)


def test_pooled_quantiles_for_basins_without_validation_data():
    """Spatial folds: a held-out basin has no validation days of its own -> the member's pooled quantiles."""
    rng = np.random.default_rng(3)
    sim = rng.gamma(1.0, 1.0, size=(3, 400)) + cal.ACTIVE  # every day active (class 1)
    obs = sim * rng.uniform(0.8, 1.3, size=sim.shape)
    valid = np.zeros_like(sim, dtype=bool)
    valid[0] = True  # validation basin
    valid[1, :50] = True  # too few (< MIN_DAYS) of its own
    rq = cal.residual_quantiles(sim, obs, valid)  # [B, classes, K]
    r0 = cal.residuals(sim[:1], obs[:1], valid[:1]).ravel()
    r1 = cal.residuals(sim[1:2], obs[1:2], valid[1:2]).ravel()
    np.testing.assert_allclose(rq[0, 1], np.quantile(r0[np.isfinite(r0)], cal.LEVELS))
    pooled = np.quantile(np.concatenate([r0[np.isfinite(r0)], r1[np.isfinite(r1)]]), cal.LEVELS)
    np.testing.assert_allclose(rq[1, 1], pooled)
    np.testing.assert_allclose(rq[2, 1], pooled)
    np.testing.assert_allclose(rq[:, 0], np.broadcast_to(pooled, rq[:, 0].shape))  # class never seen: all


def test_snow_free_days_do_not_collapse_the_interval_of_snow_days():
    """SWE-like series: half the days exactly zero in both; the snow days' interval comes from snow days."""
    rng = np.random.default_rng(4)
    truth = np.where(np.arange(3000) % 365 < 180, rng.gamma(2.0, 30.0, size=3000), 0.0)[None]
    e = rng.normal(0.0, 0.8, size=truth.shape)
    sim = cal.inverse(cal.transform(truth) + e)
    sim[truth == 0] = 0.0
    val = np.arange(3000) < 1000
    rq = cal.residual_quantiles(sim, truth, np.broadcast_to(val, truth.shape))
    lo, hi = cal.predictive_interval(cal.predictive_sample(sim[None], rq[None]))
    snow = (truth[0] > 0) & ~val
    inside = (truth[0] >= lo[0]) & (truth[0] <= hi[0])
    assert 0.85 <= inside[snow].mean() <= 0.95, inside[snow].mean()


def _crps_brute(sample: np.ndarray, y: float) -> float:
    """∫ (F(z) - 1{z >= y})² dz of the empirical CDF, on the exact breakpoints (float64)."""
    pts = np.sort(np.append(sample, y))
    total = 0.0
    for a, b in zip(pts[:-1], pts[1:]):
        f = np.mean(sample <= a)
        total += (f - float(a >= y)) ** 2 * (b - a)
    return total


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4))
def test_predictive_crps_against_brute_force(seed, n_members):
    rng = np.random.default_rng(seed)
    sims = rng.gamma(1.0, 2.0, size=(n_members, 5))
    sims[0, 1] = np.nan  # a member absent on a day
    obs = rng.gamma(1.0, 2.0, size=5)
    obs[3] = 0.0
    rq = np.sort(rng.normal(0, 0.3, size=(n_members, cal.N_CLASSES, cal.K)), axis=-1)
    sims[-1, 2] = 0.01  # a near-zero day: class 0
    got = cal.predictive_scores(sims, rq, obs)
    sample = cal.predictive_sample(sims, rq)
    days = [d for d in range(5) if np.isfinite(sample[:, d]).any()]  # one member: day 1 has none
    ref = [_crps_brute(sample[np.isfinite(sample[:, d]), d], obs[d]) for d in days]
    np.testing.assert_allclose(got["crps_predictive"], np.mean(ref), rtol=1e-9)
    lo, hi = cal.predictive_interval(sample[:, days])
    assert got["coverage90_predictive"] == np.mean((obs[days] >= lo) & (obs[days] <= hi))


# ---------------------------------------------------------------------------------------------- integration
def test_prediction_store_holds_the_predictive_interval(tmp_path_factory):
    """``<var>_p05/_p95`` for Q, ET, SWE (not S_max): non-negative, ordered, and equal to the members plus
    their residual quantiles on their validation years (recomputed here from metrics.json)."""
    import json

    import pandas as pd
    import xarray as xr
    from test_predict import cached_experiment, cached_prediction

    exp = cached_experiment(tmp_path_factory)
    pred = xr.open_zarr(cached_prediction(tmp_path_factory, exp)).load()
    assert "smax_p05" not in pred and "q_q05" in pred
    source = xr.open_zarr(pred.attrs["source_store"])
    years = pd.DatetimeIndex(pred["time"].values).year
    for v in ("q", "et", "swe"):
        lo, hi = pred[f"{v}_p05"].values, pred[f"{v}_p95"].values
        ok = np.isfinite(lo)
        assert ok[:, ~pred["in_warmup"].values].all()
        assert (lo[ok] >= 0).all() and (hi[ok] >= lo[ok]).all()
    v = "q"
    x = pred[v].values.astype(np.float64)  # [M, N, T]
    obs = source[v].values.astype(np.float64)
    rq = []
    for m in pred["member"].values:
        meta = json.loads((exp / "trials" / str(m) / "metrics.json").read_text())
        days = np.isin(years, meta["years"]["validation"]) & ~pred["in_warmup"].values
        rq.append(cal.residual_quantiles(x[list(pred["member"].values).index(m)], obs,
                                         np.broadcast_to(days, obs.shape)))
    ref_lo, ref_hi = cal.predictive_interval(cal.predictive_sample(x, np.stack(rq)))
    np.testing.assert_allclose(pred["q_p05"].values, ref_lo, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pred["q_p95"].values, ref_hi, rtol=1e-5, atol=1e-5)
    # wider than the members' interval (the members agree more than they are right)
    assert np.nanmean(ref_hi - ref_lo) > np.nanmean(pred["q_q95"].values - pred["q_q05"].values)


def test_report_and_summary_hold_predictive_scores(tmp_path_factory, tmp_path):
    import json

    import pandas as pd
    from test_predict import cached_experiment, cached_prediction

    from rootzone.cli import main
    from rootzone.ensemble.run import aggregate

    exp = cached_experiment(tmp_path_factory)
    pred = cached_prediction(tmp_path_factory, exp)
    out = tmp_path / "report"
    assert main(["report", "--experiment", str(exp), "--predictions", str(pred), "--out", str(out)]) == 0
    table = pd.read_csv(out / "uncertainty.csv")
    scored = table.dropna(subset=["crps"])
    assert scored["coverage90_predictive"].between(0, 1).all() and (scored["crps_predictive"] >= 0).all()
    q = scored[scored["target"] == "q"]  # snow-free basins: SWE 0 observed and simulated, CRPS exactly 0
    assert (q["crps_predictive"] > 0).all() and (q["crps_predictive"] < q["crps"]).mean() > 0.5
    assert "coverage 90 % (predictive)" in (out / "index.html").read_text()
    import shutil

    copy = tmp_path / "exp"  # the cached experiment is shared with other tests: aggregate a copy
    shutil.copytree(exp / "trials", copy / "trials")
    shutil.copy(exp / "experiment.json", copy / "experiment.json")
    aggregate(str(copy))
    u = json.loads((copy / "summary.json").read_text())["uncertainty"]["q"]
    assert 0 <= u["coverage90_predictive"] <= 1 and u["crps_predictive_median"] > 0
    assert u["coverage90_predictive"] >= u["coverage90"]  # one member per fold: its interval is a point


def test_store_started_before_the_predictive_interval_is_left_alone(tmp_path):
    """A prediction store created before ``<var>_p05/_p95`` existed (resumed): nothing written, no error."""
    import zarr

    from rootzone.predict.predictive import write_predictive_interval
    from rootzone.predict.store import PredictionJob

    out = tmp_path / "old.zarr"
    group = zarr.open_group(str(out), mode="w")
    group.create_array("q", shape=(2, 3, 4), dtype="float32", fill_value=np.nan)
    before = sorted(group.array_keys())
    job = PredictionJob(str(tmp_path / "exp"), str(tmp_path / "missing.zarr"), str(out), [], ["q"], 3, 3)
    write_predictive_interval(job)  # would fail on the missing experiment and store if it tried to read them
    assert sorted(zarr.open_group(str(out), mode="r").array_keys()) == before
