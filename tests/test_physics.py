"""The reference bucket model: mass conservation, non-negative fluxes and states, and exact gradients."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rootzone.config import DEFAULT_PARAM_RANGES
from rootzone.physics.equations import PARAM_NAMES, initial_state, run_buckets

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


def balance_residual(forcing, params, out):
    """P - (ET + Q + ΔW + ΔS + ΔG) per basin and day."""
    s0 = initial_state(params[:, 0, 0])
    storage = torch.stack([out.w, out.s, out.g], dim=0)
    start = torch.stack([s0.w, s0.s, s0.g], dim=0)[..., None]
    previous = torch.cat([start, storage[..., :-1]], dim=-1)
    delta = (storage - previous).sum(dim=0)
    return forcing[..., 0] - (out.et + out.q + delta)


def assert_physical(forcing, params, out, tol):
    res = balance_residual(forcing, params, out)
    scale = forcing[..., 0].abs().max() + params[..., 0].max()
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

    def f(forcing, params):
        out = run_buckets(forcing, params)
        return out.q, out.et, out.tws, out.s

    assert torch.autograd.gradcheck(f, (forcing, params), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradient_reaches_initial_smax():
    """S starts at S_max(day 0)/2, so day 0's S_max influences later storage."""
    forcing, params = random_case(2, b=1, t=5)
    forcing[..., 0] = 0
    forcing[..., 2] = 2.0
    params[..., 0] = 200.0
    params[..., 3] = 0.5
    params[..., 4] = 0.1  # no moisture stress: ET does not depend on S
    params.requires_grad_(True)
    run_buckets(forcing, params).s[:, -1].sum().backward()
    assert params.grad[0, 0, 0] == pytest.approx(0.5)  # S_end = S_max(0)/2 - ET
    assert np.isfinite(params.grad.numpy()).all()
