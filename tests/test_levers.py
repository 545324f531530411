"""The hybrid's levers of issue 14, each a Config option: gamma routing of Q, parallel bucket sets
(components), a second groundwater store, and the data-info flag of basins whose runoff exceeds precipitation.
The water balance closes to float rounding on every physics path they run on."""

from __future__ import annotations

import math

import pytest
import torch
from test_physics import balance_residual, random_case, random_state0

from rootzone.config import Config
from rootzone.model import HybridModel
from rootzone.physics.dispatch import run_physics
from rootzone.physics.equations import ROUTING_DAYS, gamma_unit_hydrograph, route


def _routing_reference(q, h):
    """Float64 loops: Q'_t = Σ_j h_j q_(t-j); channel storage R_t = cumulative inflow - cumulative outflow."""
    b, t = q.shape
    routed = torch.zeros_like(q)
    for day in range(t):
        for j in range(min(day + 1, h.shape[1])):
            routed[:, day] += h[:, j] * q[:, day - j]
    return routed, torch.cumsum(q - routed, dim=1)


def test_gamma_unit_hydrograph_and_route_against_loops():
    shape = torch.tensor([1.0, 2.0, 4.5, 6.0], dtype=torch.float64)
    scale = torch.tensor([0.05, 1.0, 2.0, 4.0], dtype=torch.float64)
    h = gamma_unit_hydrograph(shape, scale)
    assert h.shape == (4, ROUTING_DAYS) and (h >= 0).all()
    torch.testing.assert_close(h.sum(1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-14)
    assert h[0, 0] > 0.999  # a = 1, θ = 0.05 d: (almost) no delay
    x = [j + 0.5 for j in range(ROUTING_DAYS)]  # closed form of the gamma density at the day midpoints
    pdf = [xi ** 3.5 * math.exp(-xi / 2.0) / (math.gamma(4.5) * 2.0 ** 4.5) for xi in x]
    torch.testing.assert_close(h[2], torch.tensor(pdf, dtype=torch.float64) / sum(pdf), rtol=1e-12, atol=0)
    q = torch.rand(4, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 20
    routed, channel = route(q, h)
    want, want_channel = _routing_reference(q, h)
    torch.testing.assert_close(routed, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(channel, want_channel, rtol=1e-12, atol=1e-10)
    assert (channel >= 0).all()


@pytest.mark.parametrize("impl,dtype,tol", [("eager", torch.float64, 1e-12), ("eager", torch.float32, 2e-6),
                                            ("fused", torch.float32, 2e-6)])
def test_routed_water_balance_closes_on_every_path(impl, dtype, tol):
    """P = ET + Q' + ΔW + ΔS + ΔG + ΔR, R the channel storage, from given initial storages (fused = the CPU
    op of rootzone/physics/fused_cpu.py, the path the Triton kernels are proven equal to)."""
    forcing, params = random_case(4, b=6, t=200, dtype=dtype)
    state0 = random_state0(4, params, dtype=dtype)
    out = run_physics(forcing, params, impl, state0)
    h = gamma_unit_hydrograph(torch.linspace(1, 6, 6, dtype=dtype), torch.linspace(0.05, 4, 6, dtype=dtype))
    routed, channel = route(out.q, h)
    res = balance_residual(forcing.double(), params.double(), out._replace(q=routed).__class__(
        *(x.double() for x in out._replace(q=routed))), state0.double())
    res = res - torch.diff(channel.double(), dim=1, prepend=torch.zeros(6, 1, dtype=torch.float64))
    scale = forcing[..., 0].abs().max() + params[..., 0].max() + state0.abs().max()
    assert float(res.abs().max()) <= tol * float(scale)
    assert float((out.q.sum() - routed.sum() - channel[:, -1].sum()).abs()) <= tol * float(scale) * 200


def test_hybrid_with_gamma_routing_learns_its_delay_and_keeps_defaults():
    torch.manual_seed(0)
    plain = HybridModel(3, 2, Config(hidden_size=6, physics="eager"))
    assert plain.route_head is None and "route_head.weight" not in plain.state_dict()
    model = HybridModel(3, 2, Config(hidden_size=6, physics="eager", routing="gamma"))
    x, s = torch.randn(2, 60, 3), torch.randn(2, 2)
    forcing = torch.stack([torch.rand(2, 60) * 20, torch.rand(2, 60) * 20, torch.rand(2, 60) * 4,
                           torch.zeros(2, 60)], dim=-1)
    out = model(x, s, forcing)
    raw = run_physics(forcing, out.params, "eager")
    routed, _ = route(raw.q, model.unit_hydrograph(s))
    torch.testing.assert_close(out.buckets.q, routed)
    assert not torch.allclose(out.buckets.q, raw.q)
    out.buckets.q.sum().backward()
    assert model.route_head.weight.grad.abs().sum() > 0
    with pytest.raises(Exception, match="routing"):
        Config(routing="muskingum")


def test_basins_with_more_runoff_than_precipitation_are_flagged(tmp_path, capsys):
    """A glacier-fed basin (runoff 1.4 × precipitation, with gaps in Q) is flagged by `data info` and
    `rootzone.data.balance`, with Q/P over the days both are observed; the other basins are not."""
    import numpy as np
    from conftest import run_cli

    from rootzone.data.balance import external_water_basins, runoff_ratios
    from rootzone.data.demo import build_demo
    from rootzone.data.schema import open_store, write_store

    ds = build_demo(basins=4, years=3, seed=1)
    q = ds["q"].values.copy()
    p = ds["precipitation"].values
    q[2] = 1.4 * p[2] + 0.1
    q[2, :100] = np.nan  # gaps: the ratio uses the days both are observed
    ds["q"] = (ds["q"].dims, q, ds["q"].attrs)
    store = str(tmp_path / "glacier.zarr")
    write_store(ds, store)
    opened = open_store(store)
    ratios = runoff_ratios(opened)
    both = np.isfinite(q) & np.isfinite(p)
    for i, b in enumerate(opened["basin"].values):
        want = np.where(both[i], q[i], 0).sum() / np.where(both[i], p[i], 0).sum()
        assert ratios[str(b)] == pytest.approx(want, rel=1e-5)
    flagged = external_water_basins(opened)
    assert list(flagged) == [str(opened["basin"].values[2])] and flagged[list(flagged)[0]] > 1.4
    code, out, _ = run_cli(capsys, "data", "info", store)
    assert code == 0 and "more runoff than precipitation" in out and list(flagged)[0] in out
    code, out, _ = run_cli(capsys, "data", "info", str(tmp_path / "glacier.zarr"))
    assert out.count("flag:") == 1


@pytest.mark.parametrize("impl", ["eager", "fused"])
@torch.no_grad()
def test_components_close_the_water_balance_and_report_the_weighted_capacity(impl):
    """N = 3 bucket sets per basin run as one B·N batch (fused: the CPU op); the area-weighted outputs close
    the basin's water balance from the weighted initial storages, and S_max is the weighted capacity."""
    torch.manual_seed(1)
    model = HybridModel(3, 2, Config(hidden_size=6, physics=impl, components=3))
    b, t, n = 4, 150, 3
    forcing, _ = random_case(9, b=b, t=t, dtype=torch.float32)
    x, s = torch.randn(b, t, 3), torch.randn(b, 2)
    params = model.parameters_from(x, s)
    assert params.shape == (b, t, n, 8)
    state0 = random_state0(2, params.permute(0, 2, 1, 3).reshape(b * n, t, 8), dtype=torch.float32)
    out = model._combined(forcing, params, s, impl, state0)
    w = model.mixture(s)
    torch.testing.assert_close(w.sum(1), torch.ones(b))
    torch.testing.assert_close(out.params[..., 0], (w[:, None, :] * params[..., 0]).sum(-1))
    assert out.storages.q.shape == (b * n, t)
    start = (w.double() * state0.double().reshape(3, b, n)).sum(-1)  # [3, B]
    bk = out.buckets
    storage = torch.stack([bk.w, bk.s, bk.g]).double()
    previous = torch.cat([start[..., None], storage[..., :-1]], dim=-1)
    res = forcing[..., 0].double() - bk.et.double() - bk.q.double() - (storage - previous).sum(0)
    scale = forcing[..., 0].abs().max() + params[..., 0].max() + state0.abs().max()
    assert float(res.abs().max()) <= 2e-6 * float(scale)
    # the components run through the path's own batch: equal to each set run alone
    one = run_physics(forcing, params[:, :, 1].contiguous(), impl, state0.reshape(3, b, n)[:, :, 1].contiguous())
    torch.testing.assert_close(out.storages.s.reshape(b, n, t)[:, 1], one.s)


def test_train_with_components_and_routing_writes_each_capacity(tiny_store, tmp_path):
    from rootzone.train import train_trial

    cfg = Config(store=tiny_store, out=str(tmp_path / "run"), folds=3, epochs=1, batches_per_epoch=1, seq_len=300,
                 warmup_days=60, hidden_size=6, physics="eager", progress=False, threads=1, components=2,
                 routing="gamma")
    metrics = train_trial(cfg)
    basin = next(iter(metrics.smax_mean))
    sets, shares = metrics.smax_components[basin], metrics.component_weights[basin]
    assert len(sets) == 2 and sum(shares) == pytest.approx(1.0, rel=1e-5)
    assert min(sets) <= metrics.smax_mean[basin] <= max(sets)
    assert all(torch.isfinite(torch.tensor(metrics.median("test", t, "nse"))) for t in ("q", "et", "swe", "twsa"))
    from rootzone.experiment import TrialResult
    from rootzone.report.tables import component_table

    table = component_table([TrialResult("run", 0, 0, metrics)])
    assert len(table) == 2 * len(metrics.smax_mean)
    one = table[table["basin"] == basin]
    assert (one["smax"] * one["weight"]).sum() == pytest.approx(metrics.smax_mean[basin], rel=1e-3)


def _two_store_reference(forcing, params, g0, share, k_fast):
    """Float64 two-store recursion from first principles: the surface runoff and recharge of each day come from
    the buckets with k_g = 0 (the store then only accumulates recharge), and the slow store S (fed by (1 - φ) R,
    starting at (1 - φ) g0) and the fast store F (fed by φ R, starting empty) are stepped day by day."""
    no_base = params.clone()
    no_base[..., 7] = 0.0
    zero = torch.zeros_like(g0)
    one = run_physics(forcing, no_base, "eager", torch.stack([zero + STATE_W, zero + STATE_S, zero]))
    recharge = torch.diff(one.g, dim=1, prepend=zero[:, None])
    slow, fast = (1 - share) * g0, zero.clone()
    q, g = [], []
    for t in range(forcing.shape[1]):
        slow_in = slow + (1 - share) * recharge[:, t]
        fast_in = fast + share * recharge[:, t]
        q_slow, q_fast = params[:, t, 7] * slow_in, k_fast * fast_in
        slow, fast = slow_in - q_slow, fast_in - q_fast
        q.append(one.q[:, t] + q_slow + q_fast)
        g.append(slow + fast)
    return one, torch.stack(q, 1), torch.stack(g, 1)


STATE_W, STATE_S = 30.0, 80.0


@pytest.mark.parametrize("impl,dtype,tol", [("eager", torch.float64, 1e-10), ("fused", torch.float32, 2e-6)])
def test_second_groundwater_store_matches_a_two_store_recursion(impl, dtype, tol):
    from rootzone.physics.equations import two_groundwater_stores

    forcing, params = random_case(5, b=5, t=120, dtype=dtype)
    g0 = torch.linspace(0, 800, 5, dtype=dtype)
    state0 = torch.stack([torch.full_like(g0, STATE_W), torch.full_like(g0, STATE_S), g0])
    share, k_fast = torch.linspace(0, 1, 5, dtype=dtype), torch.linspace(0.02, 0.9, 5, dtype=dtype)
    raw = run_physics(forcing, params, impl, state0)
    out = two_groundwater_stores(raw, g0, params[..., 7], share, k_fast)
    one, q_ref, g_ref = _two_store_reference(forcing.double(), params.double(), g0.double(), share.double(),
                                             k_fast.double())
    scale = float(forcing[..., 0].abs().max() + g0.max())
    assert float((out.q.double() - q_ref).abs().max()) <= tol * scale
    assert float((out.g.double() - g_ref).abs().max()) <= tol * scale
    # the run's initial groundwater: slow store (1 - φ) G0, fast store empty
    start = torch.stack([state0[0], state0[1], (1 - share) * g0]).double()
    res = balance_residual(forcing.double(), params.double(), out.__class__(*(x.double() for x in out)), start)
    assert float(res.abs().max()) <= tol * (scale + float(params[..., 0].max()))
    with pytest.raises(Exception, match="groundwater_stores"):
        Config(groundwater_stores=3)


def test_hybrid_with_two_groundwater_stores_keeps_the_recursion_states():
    torch.manual_seed(2)
    model = HybridModel(3, 2, Config(hidden_size=6, physics="eager", groundwater_stores=2, components=2))
    x, s = torch.randn(2, 40, 3), torch.randn(2, 2)
    forcing = torch.stack([torch.rand(2, 40) * 20, torch.rand(2, 40) * 20, torch.rand(2, 40) * 4,
                           torch.zeros(2, 40)], dim=-1)
    out, spun = model.run_record(x, s, forcing, 2)
    assert spun.state.shape == (3, 4) and out.storages.g.shape == (4, 40)
    assert not torch.allclose(out.buckets.g, (out.weights[:, :, None] * out.storages.g.reshape(2, 2, 40)).sum(1))
    train_out = model(x, s, forcing, spun.state)
    train_out.buckets.q.sum().backward()
    assert model.gw_head.weight.grad.abs().sum() > 0
