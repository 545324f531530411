"""Reference equations of the bucket model (DESIGN §4), eager PyTorch.

Daily step per basin. States (mm): snow W, active root zone soil moisture S, groundwater G.
Forcing per day: precipitation P (mm/d), air temperature T (°C), potential evaporation PET (mm/d),
leaf area index LAI (m²/m², 0 when absent). Parameters per basin and day, in physical units:

    smax  S_max  active root zone storage capacity            mm
    beta  β      shape of infiltration vs. wetness            -
    fm    f_m    degree-day melt factor                       mm °C⁻¹ d⁻¹
    alpha α      evaporative efficiency (scales PET)          -
    lp    l_p    wetness below which ET is limited            -
    ci    c_i    interception capacity per unit LAI           mm
    fg    f_g    share of excess water recharging groundwater -
    kg    k_g    baseflow recession                           d⁻¹

Initial storages. Every run starts from given storages ``state0`` [3, B] = (W, S, G) in mm, an input of every
implementation (eager, compiled, fused) that receives no gradient (it is detached: storages come from a
no-grad spin-up or from a stored no-grad pass, DESIGN §4). :func:`spinup` makes them for the start of a record
by cycling its first year. ``state0=None`` is the legacy cold start W = 0, S = S_max(day 0)/2, G = 0
(:func:`cold_state`), kept until every caller passes states; it is detached too, so day 0's S_max gets no
gradient through the initial S. An initial S above the day-0 S_max needs no clamping: step 5 releases it as
overflow on day 0.

Every `min`/`max` uses one explicit sub-gradient convention (``_min`` gives the gradient to its first
argument on ties, ``_pos`` gives zero gradient at 0, the wetness clamp passes the gradient only strictly
inside (eps, 1)), and the fused kernel uses the same, so gradients agree exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

PARAM_NAMES: tuple[str, ...] = ("smax", "beta", "fm", "alpha", "lp", "ci", "fg", "kg")
# forcing channels, in order: rootzone.data.schema.PHYSICS_FORCING (P, T, PET, LAI)

T_SNOW = 0.0  # °C, rain/snow threshold and melt base temperature T_s
TAU_SNOW = 1.0  # °C, width of the rain/snow transition τ
WETNESS_EPS = 1e-4  # lower clamp of S/S_max inside the infiltration power


class BucketState(NamedTuple):
    """Storages (mm), each [B]."""

    w: Tensor
    s: Tensor
    g: Tensor


class BucketFluxes(NamedTuple):
    """Outputs of one day (mm/d), each [B]."""

    q: Tensor
    et: Tensor


class BucketOutputs(NamedTuple):
    """Daily series, each [B, T]: streamflow q and evapotranspiration et (mm/d), end-of-day storages
    w (snow = SWE), s (root zone) and g (groundwater) in mm."""

    q: Tensor
    et: Tensor
    w: Tensor
    s: Tensor
    g: Tensor

    @property
    def swe(self) -> Tensor:
        return self.w

    @property
    def tws(self) -> Tensor:
        """Total water storage W + S + G (mm), [B, T]."""
        return self.w + self.s + self.g


def _min(a: Tensor, b: Tensor) -> Tensor:
    """min(a, b); on ties the gradient goes to ``a``."""
    return torch.where(a <= b, a, b)


def _pos(x: Tensor) -> Tensor:
    """max(x, 0) with zero gradient at 0."""
    return torch.where(x > 0, x, torch.zeros_like(x))


def _clamp(x: Tensor, lo: float, hi: float) -> Tensor:
    """clamp(x, lo, hi) passing the gradient only strictly inside (lo, hi)."""
    return torch.where(x <= lo, torch.full_like(x, lo), torch.where(x >= hi, torch.full_like(x, hi), x))


def initial_state(smax0: Tensor) -> BucketState:
    """Legacy cold start W = 0, S = S_max/2, G = 0 from the first day's S_max [B] (mm). Not detached: use
    :func:`cold_state` for the state that the runs use when no ``state0`` is given."""
    zero = torch.zeros_like(smax0)
    return BucketState(w=zero, s=0.5 * smax0, g=zero)


def cold_state(params: Tensor) -> Tensor:
    """The legacy cold start [3, B] (W = 0, S = S_max(day 0)/2, G = 0, mm) of params [B, T, 8], detached."""
    return torch.stack(initial_state(params[:, 0, 0].detach()))


def as_state0(state0: Tensor | BucketState | None, params: Tensor) -> Tensor:
    """Initial storages as the [3, B] tensor (W, S, G in mm) that every implementation takes: detached (no
    gradient flows into initial storages), in ``params``' dtype. ``None`` gives :func:`cold_state`; a
    :class:`BucketState` of three [B] tensors is stacked."""
    if state0 is None:
        return cold_state(params)
    if isinstance(state0, BucketState):
        state0 = torch.stack(tuple(state0))
    n_basins = params.shape[0]
    if state0.shape != (3, n_basins):
        raise ValueError(f"state0 must be [3, B] = (W, S, G) for B = {n_basins} basins, got {tuple(state0.shape)}")
    if state0.device != params.device:
        raise ValueError(f"state0 on {state0.device} but params on {params.device}")
    if not state0.is_floating_point():
        raise TypeError(f"state0 must be a float tensor, got {state0.dtype}")
    return state0.detach().to(params.dtype)


def bucket_step(
    state: BucketState, p: Tensor, t: Tensor, pet: Tensor, lai: Tensor, params: Tensor
) -> tuple[BucketState, BucketFluxes]:
    """One day for a batch of basins. Forcing tensors are [B]; ``params`` is [B, 8] in PARAM_NAMES order."""
    smax, beta, fm, alpha, lp, ci, fg, kg = params.unbind(-1)
    w, s, g = state
    # 1. rain/snow partition
    snow_frac = torch.sigmoid((T_SNOW - t) / TAU_SNOW)
    p_snow = snow_frac * p
    p_rain = p - p_snow
    # 2. snow melt, limited by the snow that exists
    melt = _min(w + p_snow, fm * _pos(t - T_SNOW))
    w = w + p_snow - melt
    # 3. interception evaporation
    e_int = _min(_min(p_rain, ci * lai), pet)
    # 4. water reaching the soil
    inflow = p_rain - e_int + melt
    # 5. a shrinking root zone releases its overflow
    overflow = _pos(s - smax)
    s = s - overflow
    # 6. infiltration into the root zone
    wetness = _clamp(s / smax, WETNESS_EPS, 1.0)
    r_soil = _min(inflow * (1.0 - wetness**beta), smax - s)
    s = s + r_soil
    excess = inflow - r_soil + overflow
    # 7. transpiration and soil evaporation, limited by the stored water
    moisture_stress = _min(torch.ones_like(s), s / (lp * smax))
    e_t = _min(alpha * (pet - e_int) * moisture_stress, s)
    s = s - e_t
    # 8. groundwater recharge and surface runoff
    recharge = fg * excess
    q_surface = excess - recharge
    # 9. linear groundwater reservoir
    q_base = kg * (g + recharge)
    g = g + recharge - q_base
    # 10. outputs
    return BucketState(w, s, g), BucketFluxes(q=q_surface + q_base, et=e_int + e_t)


Step = Callable[[BucketState, Tensor, Tensor, Tensor, Tensor, Tensor], tuple[BucketState, BucketFluxes]]


def run_buckets(forcing: Tensor, params: Tensor, state0: Tensor | BucketState | None = None,
                step: Step = bucket_step) -> BucketOutputs:
    """Run the bucket model over time: the one day loop (the eager reference with the default ``step``).

    forcing: [B, T, 4] = (P mm/d, T °C, PET mm/d, LAI m²/m²); params: [B, T, 8] physical units.
    state0: initial storages [3, B] = (W, S, G) in mm at the start of day 0 (a :class:`BucketState` works
    too); detached, so no gradient flows into it. ``None``: the legacy cold start (:func:`cold_state`).
    step: the daily step, :func:`bucket_step` or a function with its signature (the compiled path passes
    ``torch.compile(bucket_step)``).
    Returns BucketOutputs of [B, T] series (end-of-day storages).
    """
    # separate [B] tensors, not views of one [3, B] buffer: a compiled step then sees the same kind of input
    # on day 0 as on every later day (no aliasing guard, no recompile)
    state = BucketState(*(x.clone() for x in as_state0(state0, params).unbind(0)))
    outs: list[tuple[Tensor, ...]] = []
    p_all, t_all, pet_all, lai_all = forcing.unbind(-1)
    for day in range(forcing.shape[1]):
        state, flux = step(state, p_all[:, day], t_all[:, day], pet_all[:, day], lai_all[:, day], params[:, day])
        outs.append((flux.q, flux.et, state.w, state.s, state.g))
    if not outs:  # T = 0
        empty = forcing.new_empty((forcing.shape[0], 0), dtype=params.dtype)
        return BucketOutputs(*(empty for _ in range(5)))
    return BucketOutputs(*(torch.stack(series, dim=1) for series in zip(*outs)))


# --------------------------------------------------------------------------------------------- routing
ROUTING_DAYS = 15  # length of the unit hydrograph (days), Config.routing = "gamma"
ROUTING_SHAPE = (1.0, 6.0)  # range of the gamma shape a (-)
ROUTING_SCALE = (0.05, 4.0)  # range of the gamma scale θ (d); mean delay a·θ before truncation


def gamma_unit_hydrograph(shape: Tensor, scale: Tensor, days: int = ROUTING_DAYS) -> Tensor:
    """Weights h [B, days] of a gamma unit hydrograph, shape a [B] and scale θ [B] (d): h_j ∝ x^(a-1) e^(-x/θ)
    at the day midpoints x = j + 1/2, normalised so that Σ_j h_j = 1 exactly (truncated at ``days``, mass
    conserving). a = 1 with a small θ is close to no routing (h_0 ≈ 1)."""
    x = torch.arange(days, dtype=shape.dtype, device=shape.device) + 0.5
    log_h = (shape[:, None] - 1.0) * torch.log(x)[None, :] - x[None, :] / scale[:, None]
    return torch.softmax(log_h, dim=-1)


def route(q: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Route daily flow q [B, T] (mm/d) through unit hydrographs ``weights`` [B, D] (Σ = 1): the causal
    convolution Q'_t = Σ_j h_j q_(t-j) and the water in the channel at the end of day t,
    R_t = Σ_j q_(t-j) (1 - Σ_(i<=j) h_i) (mm), so that R_t - R_(t-1) = q_t - Q'_t (the routed water balance
    P = ET + Q' + ΔW + ΔS + ΔG + ΔR closes). The channel is empty before day 0 (a window's first D - 1 days
    lack earlier runoff: they lie in the warm-up). Applied after the bucket recursion, it works with every
    physics path (eager, compiled, fused)."""
    n_basins, n_days = q.shape
    d = weights.shape[1]
    padded = torch.nn.functional.pad(q, (d - 1, 0))[None]  # [1, B, T + D - 1]
    kernels = torch.stack([weights, (1.0 - torch.cumsum(weights, dim=1)).clamp(min=0.0)], dim=1)  # [B, 2, D]
    kernels = kernels.flip(-1).reshape(2 * n_basins, 1, d).to(q.dtype)
    both = torch.nn.functional.conv1d(padded.repeat_interleave(2, dim=1), kernels, groups=2 * n_basins)[0]
    both = both.reshape(n_basins, 2, n_days)
    return both[:, 0], both[:, 1]


# --------------------------------------------------------------------------------- fast groundwater store
FAST_SHARE = (0.0, 1.0)  # range of φ, the share of recharge that feeds the fast store (-)
FAST_K = (0.02, 0.9)  # range of k_f, the fast store's recession (d⁻¹)


def two_groundwater_stores(out: BucketOutputs, g0: Tensor, kg: Tensor, share: Tensor, k_fast: Tensor
                           ) -> BucketOutputs:
    """``groundwater_stores = 2``: a second, faster linear store F fed by the share φ of the recharge R_g.

    The slow store then gets (1 - φ) R_g. With φ constant per basin this is exact arithmetic on the outputs of
    the one-store recursion (which every physics path runs): G does not feed back on W or S, and a linear store
    fed by (1 - φ) R_g holds (1 - φ) times the store fed by R_g, so the slow store is (1 - φ) G and its
    outflow (1 - φ) Q_b, where G, Q_b are the one-store run's (its storages stay what the spin-up and the
    stored states carry). Per day, from the one-store run (k_g < 1):
    Q_b,t = G_t k_g,t / (1 - k_g,t), R_g,t = G_t / (1 - k_g,t) - G_(t-1), and the fast store
    Q_f,t = k_f (F_(t-1) + φ R_g,t), F_t = F_(t-1) + φ R_g,t - Q_f,t, F empty at the start of the run (a fast
    store fills within the warm-up; the run's initial groundwater is then (1 - φ) G_0 + 0, and the balance
    closes against it). Returns outputs with q = Q - φ Q_b + Q_f and g = (1 - φ) G + F (both
    groundwater stores), so P = ET + Q + ΔW + ΔS + ΔG closes as before.

    out: one-store outputs [B, T]; g0: G at the start of day 0 [B] (mm); kg: k_g [B, T] (d⁻¹);
    share φ [B] in [0, 1]; k_fast k_f [B] (d⁻¹) in (0, 1].
    """
    g = out.g
    keep = 1.0 - kg
    q_base = g * kg / keep
    previous = torch.cat([g0[:, None].to(g.dtype), g[:, :-1]], dim=1)
    recharge = share[:, None] * (g / keep - previous)  # φ R_g (>= 0 up to rounding)
    fast, q_fast, f_series = torch.zeros_like(g0, dtype=g.dtype), [], []
    for day in range(g.shape[1]):
        water = fast + recharge[:, day]
        q_fast.append(k_fast * water)
        fast = water - q_fast[-1]
        f_series.append(fast)
    if not q_fast:
        return out
    q_fast_t, f_t = torch.stack(q_fast, dim=1), torch.stack(f_series, dim=1)
    return out._replace(q=out.q - share[:, None] * q_base + q_fast_t, g=(1.0 - share[:, None]) * g + f_t)


def final_state(out: BucketOutputs) -> Tensor:
    """The storages [3, B] = (W, S, G) (mm) at the end of a run's last day, i.e. the ``state0`` that continues
    it: ``run(f[:, k:], p[:, k:], final_state(run(f[:, :k], p[:, :k])))`` equals days k.. of the whole run."""
    return torch.stack([out.w[:, -1], out.s[:, -1], out.g[:, -1]])


class Spinup(NamedTuple):
    """Result of :func:`spinup`."""

    state: Tensor  # [3, B] storages (W, S, G) in mm at the start of day 0 of the record
    cycles: int  # cycles of the year that were run (1..max_cycles)
    change_mm: float  # max over basins and storages of |state after the last cycle - state before it| (mm)
    converged: bool  # change_mm < tol_mm


@torch.no_grad()
def spinup(forcing_year: Tensor, params_year: Tensor, run: str = "eager", max_cycles: int = 10,
           tol_mm: float = 1.0) -> Spinup:
    """Storages at the start of a record, spun up by cycling its first year (DESIGN §4).

    forcing_year: [B, D, 4] and params_year: [B, D, 8] (units as :func:`run_buckets`), the record's first
    D days; D should be one whole year (365) so that the cycle wraps at the same season (a shorter record is
    cycled as it is). ``run``: the implementation, a :func:`rootzone.physics.dispatch.run_physics` name
    ("eager", "compiled", "fused"). No gradient (the result is a constant for whatever runs next).

    Start: W = 0, S = half the year's mean S_max per basin (not day 0's, so the start does not hinge on the
    first day's S_max), G = 0. Each cycle runs the D days from the current storages; W and S continue from the
    cycle's end, and G is set to the periodic steady state of the cycle's recharge. G does not feed back on W
    or S (recharge depends on the root zone only) and over a cycle it is linear,
    G_end = G_start * Π(1 - k_g) + C, so that steady state is exact, G* = C / (1 - Π(1 - k_g)): slow
    groundwater (k_g down to 1e-4 d⁻¹, a time scale of decades) needs no more cycles than the soil. Cycling
    stops when no storage of any basin changed by ``tol_mm`` (mm) or more in the last cycle, or after
    ``max_cycles`` (>= 1). A basin that never converges (e.g. snow that never melts and grows every year)
    keeps the state of the last cycle; ``converged`` says so.
    """
    from rootzone.physics.dispatch import run_physics  # dispatch imports this module

    if forcing_year.dim() != 3 or params_year.dim() != 3 or forcing_year.shape[-1] != 4 \
            or params_year.shape[-1] != 8 or forcing_year.shape[:2] != params_year.shape[:2]:
        raise ValueError(f"expected forcing_year [B, D, 4] and params_year [B, D, 8], got "
                         f"{tuple(forcing_year.shape)} and {tuple(params_year.shape)}")
    n_days = forcing_year.shape[1]
    if not 1 <= n_days <= 366:
        raise ValueError(f"spin-up cycles the first year: 1 <= D <= 366 days, got {n_days}")
    if max_cycles < 1:
        raise ValueError(f"max_cycles must be >= 1, got {max_cycles}")
    params_year = params_year.detach()
    if params_year.shape[0] == 0:
        return Spinup(state=params_year.new_zeros((3, 0)), cycles=0, change_mm=0.0, converged=True)
    smax_mean = params_year[..., 0].mean(dim=1)
    zero = torch.zeros_like(smax_mean)
    state = torch.stack([zero, 0.5 * smax_mean, zero])
    # share of G left after one cycle, Π(1 - k_g), and whether it decays at all (else plain cycling)
    kept = torch.log1p(-params_year[..., 7].double()).sum(dim=1).exp()
    decays = (1.0 - kept) > 1e-6
    change = float("inf")
    cycles = 0
    while cycles < max_cycles:
        out = run_physics(forcing_year, params_year, run, state)
        end = final_state(out).to(params_year.dtype)
        g_end, g_start = end[2].double(), state[2].double()  # float64: 1 - Π(1 - k_g) can be 0.04
        recharge_part = g_end - g_start * kept  # C: G at the end of the cycle from G = 0
        g_star = torch.where(decays, recharge_part / torch.where(decays, 1.0 - kept, 1.0), g_end)
        new = torch.stack([end[0], end[1], g_star.to(params_year.dtype)])
        change = float((new - state).abs().max())
        state = new
        cycles += 1
        if change < tol_mm:
            break
    return Spinup(state=state, cycles=cycles, change_mm=change, converged=change < tol_mm)


def spinup_state(forcing_year: Tensor, params_year: Tensor, run: str = "eager", max_cycles: int = 10,
                 tol_mm: float = 1.0) -> Tensor:
    """The spun-up storages [3, B] (W, S, G in mm) of :func:`spinup` (which also says how many cycles)."""
    return spinup(forcing_year, params_year, run, max_cycles, tol_mm).state
