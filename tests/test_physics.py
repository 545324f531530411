"""The reference bucket model: mass conservation (initial storages included), non-negative fluxes and states,
exact gradients, initial storages as an input without gradient, and a run split at any day reproducing the
continuous run."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rootzone.config import DEFAULT_PARAM_RANGES
from rootzone.physics.equations import PARAM_NAMES, as_state0, cold_state, final_state, initial_state, run_buckets

LOW = torch.tensor([DEFAULT_PARAM_RANGES[n][0] for n in PARAM_NAMES], dtype=torch.float64)
HIGH = torch.tensor([DEFAULT_PARAM_RANGES[n][1] for n in PARAM_NAMES], dtype=torch.float64)


def random_case(seed: int, b: int = 5, t: int = 60, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    u = lambda *shape: torch.rand(*shape, generator=g, dtype=dtype)  # noqa: E731
    forcing = torch.stack([
        u(b, t) * 30 * (u(b, t) < 0.4),  # P mm/d, wet days only
        u(b, t) * 40 - 15,  # T °C
        u(b, t) * 6,  # PET mm/d
        u(b, t) * 5,  # LAI
    ], dim=-1)
    params = LOW + (HIGH - LOW) * u(b, t, 8)
    return forcing, params


def random_state0(seed: int, params, dtype=torch.float64):
    """Initial storages [3, B] (mm): snow 0-200, root zone 0-1.5 x S_max(day 0) (above it on some basins: day 0
    then releases overflow), groundwater 0-1000."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(3, params.shape[0], generator=g, dtype=dtype)
    return torch.stack([200 * u[0], 1.5 * params[:, 0, 0].to(dtype) * u[1], 1000 * u[2]])


def balance_residual(forcing, params, out, state0=None):
    """P - (ET + Q + ΔW + ΔS + ΔG) per basin and day, day 0's Δ against the initial storages."""
    start = as_state0(state0, params)[..., None]
    storage = torch.stack([out.w, out.s, out.g], dim=0)
    previous = torch.cat([start, storage[..., :-1]], dim=-1)
    delta = (storage - previous).sum(dim=0)
    return forcing[..., 0] - (out.et + out.q + delta)


def assert_physical(forcing, params, out, tol, state0=None):
    res = balance_residual(forcing, params, out, state0)
    scale = forcing[..., 0].abs().max() + params[..., 0].max()
    if state0 is not None:
        scale = scale + state0.abs().max()
    assert res.abs().max() <= tol * scale, f"water balance residual {res.abs().max()}"
    for name in ("q", "et", "w", "s", "g"):
        v = getattr(out, name)
        assert torch.isfinite(v).all(), name
        assert (v >= -tol * scale).all(), f"{name} negative: {v.min()}"
    assert (out.s <= params[..., 0] * (1 + 1e-12) + tol * scale).all(), "S exceeds S_max"


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_water_balance_random_float64(seed):
    forcing, params = random_case(seed)
    assert_physical(forcing, params, run_buckets(forcing, params), tol=1e-12)
    state0 = random_state0(seed, params)
    assert_physical(forcing, params, run_buckets(forcing, params, state0), tol=1e-12, state0=state0)


@pytest.mark.parametrize("seed", [0, 1])
def test_water_balance_with_initial_storages_float32(seed):
    forcing, params = random_case(seed, t=365, dtype=torch.float32)
    state0 = random_state0(seed, params, dtype=torch.float32)
    out = run_buckets(forcing, params, state0)
    assert_physical(forcing.double(), params.double(), out, tol=2e-6, state0=state0.double())


@pytest.mark.parametrize("seed", [0, 1])
def test_water_balance_float32_rounding(seed):
    forcing, params = random_case(seed, t=365, dtype=torch.float32)
    assert_physical(forcing.double(), params.double(), run_buckets(forcing, params), tol=2e-6)


def _extreme(kind: str):
    forcing, params = random_case(7, t=120)
    if kind == "zero_precipitation":
        forcing[..., 0] = 0
    elif kind == "all_snow":
        forcing[..., 1] = -30.0
    elif kind == "smax_shrinks_below_s":
        params[:, :60, 0] = 1500.0
        params[:, 60:, 0] = 20.0
        forcing[:, :60, 0] = 50.0  # fill the root zone first
    elif kind == "empty_stores":
        forcing[..., 0] = 0
        forcing[..., 2] = 50.0  # drain S entirely
        params[..., 3] = HIGH[3]
    elif kind == "parameter_bounds":
        params[::2] = LOW
        params[1::2] = HIGH
    return kind, forcing, params


@pytest.mark.parametrize("kind", ["zero_precipitation", "all_snow", "smax_shrinks_below_s", "empty_stores",
                                  "parameter_bounds"])
def test_water_balance_extremes(kind):
    kind, forcing, params = _extreme(kind)
    out = run_buckets(forcing, params)
    assert_physical(forcing, params, out, tol=1e-12)
    if kind == "zero_precipitation":
        assert (out.w == 0).all()
    if kind == "all_snow":
        assert torch.allclose(out.w[:, -1], forcing[..., 0].sum(1) * torch.sigmoid(torch.tensor(30.0,
                                                                                      dtype=torch.float64)))
        assert torch.allclose(out.et, torch.zeros_like(out.et) + out.et)  # finite
    if kind == "smax_shrinks_below_s":
        assert (out.s[:, 60:] <= 20.0 + 1e-9).all()
    if kind == "empty_stores":
        assert (out.s[:, -1] < 1e-6).all()
        assert (out.s >= 0).all()


def test_gradients_match_finite_differences():
    forcing, params = random_case(11, b=3, t=25)
    # keep parameters away from the range ends so central differences stay on one side of every kink
    params = (LOW + (HIGH - LOW) * (0.1 + 0.8 * (params - LOW) / (HIGH - LOW))).requires_grad_(True)
    # P > 0 everywhere: at P = 0 the one-sided physics (no negative rain) has a kink
    forcing = forcing.clone()
    forcing[..., 0] += 0.5
    forcing.requires_grad_(True)
    # fixed initial storages (no gradient, so the finite differences must not move them); the third basin starts
    # above its day-0 S_max (overflow on day 0)
    state0 = torch.stack([torch.tensor([0.0, 30.0, 5.0], dtype=torch.float64),
                          params[:, 0, 0].detach() * torch.tensor([0.3, 0.9, 1.3], dtype=torch.float64),
                          torch.tensor([0.0, 80.0, 400.0], dtype=torch.float64)])

    def f(forcing, params):
        out = run_buckets(forcing, params, state0)
        return out.q, out.et, out.tws, out.s

    assert torch.autograd.gradcheck(f, (forcing, params), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_initial_s_above_smax_is_released_as_overflow():
    """No clamping of state0 is needed: an S above the day-0 S_max leaves as overflow (runoff and recharge) on
    day 0, and the water balance counts it."""
    forcing, params = random_case(3, b=4, t=10)
    forcing[:, 0, 0] = 0.0
    forcing[:, 0, 1] = 10.0  # and no snow: nothing reaches the soil on day 0
    zero = torch.zeros(4, dtype=torch.float64)
    state0 = torch.stack([zero, 3.0 * params[:, 0, 0], zero])
    out = run_buckets(forcing, params, state0)
    assert_physical(forcing, params, out, tol=1e-12, state0=state0)
    assert (out.s[:, 0] <= params[:, 0, 0] * (1 + 1e-12)).all()
    released = out.q[:, 0] + out.g[:, 0]  # excess X = Q_s + R_g = Q_s + Q_b + G(end of day 0) - G(0)
    torch.testing.assert_close(released, 2.0 * params[:, 0, 0])  # the overflow S(0) - S_max(0)


def test_legacy_cold_start_values_unchanged():
    """state0=None is W = 0, S = S_max(day 0)/2, G = 0, the values of the old cold start."""
    forcing, params = random_case(4, b=3, t=20)
    out = run_buckets(forcing, params)
    explicit = run_buckets(forcing, params, initial_state(params[:, 0, 0]))
    for a, b in zip(out, explicit):
        assert torch.equal(a, b)
    assert torch.equal(cold_state(params), torch.stack(initial_state(params[:, 0, 0])))


def test_initial_storages_get_no_gradient():
    """Neither state0 nor (with the legacy cold start) day 0's S_max gets a gradient through the initial
    storages."""
    forcing, params = random_case(2, b=1, t=5)
    forcing[..., 0] = 0
    forcing[..., 2] = 2.0
    params[..., 0] = 200.0
    params[..., 3] = 0.5
    params[..., 4] = 0.1  # no moisture stress: ET does not depend on S
    params.requires_grad_(True)
    run_buckets(forcing, params).s[:, -1].sum().backward()  # S_end = S(0) - ET: no path to S_max(day 0)
    assert params.grad[0, 0, 0] == 0.0
    assert np.isfinite(params.grad.numpy()).all()
    state0 = torch.tensor([[0.0], [100.0], [50.0]], dtype=torch.float64, requires_grad=True)
    out = run_buckets(forcing, params, state0)
    (grad,) = torch.autograd.grad(out.tws.sum(), [state0], allow_unused=True)
    assert grad is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k", [1, 17, 59])
def test_split_run_reproduces_continuous_run(dtype, k):
    """A window started from the stored end-of-day states of day k-1 reproduces days k.. of the continuous run
    (the same operations on the same numbers: equal to the last bit)."""
    forcing, params = random_case(5, b=6, t=60, dtype=dtype)
    state0 = random_state0(5, params, dtype=dtype)
    whole = run_buckets(forcing, params, state0)
    first = run_buckets(forcing[:, :k], params[:, :k], state0)
    second = run_buckets(forcing[:, k:], params[:, k:], final_state(first))
    for w, a, b in zip(whole, first, second):
        assert torch.equal(torch.cat([a, b], dim=1), w)
