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

Every `min`/`max` uses one explicit sub-gradient convention (``_min`` gives the gradient to its first
argument on ties, ``_pos`` gives zero gradient at 0, the wetness clamp passes the gradient only strictly
inside (eps, 1)), and the fused kernel uses the same, so gradients agree exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

PARAM_NAMES: tuple[str, ...] = ("smax", "beta", "fm", "alpha", "lp", "ci", "fg", "kg")
FORCING_NAMES: tuple[str, ...] = ("precipitation", "temperature", "pet", "lai")

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
    """W = 0, S = S_max/2, G = 0 from the first day's S_max [B]."""
    zero = torch.zeros_like(smax0)
    return BucketState(w=zero, s=0.5 * smax0, g=zero)


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


def run_buckets(forcing: Tensor, params: Tensor, state: BucketState | None = None) -> BucketOutputs:
    """Run the bucket model over time.

    forcing: [B, T, 4] = (P mm/d, T °C, PET mm/d, LAI m²/m²); params: [B, T, 8] physical units.
    state: optional initial storages; default W = 0, S = S_max(day 0)/2, G = 0.
    Returns BucketOutputs of [B, T] series.
    """
    if state is None:
        state = initial_state(params[:, 0, 0])
    outs: list[tuple[Tensor, ...]] = []
    p_all, t_all, pet_all, lai_all = forcing.unbind(-1)
    for day in range(forcing.shape[1]):
        state, flux = bucket_step(
            state, p_all[:, day], t_all[:, day], pet_all[:, day], lai_all[:, day], params[:, day]
        )
        outs.append((flux.q, flux.et, state.w, state.s, state.g))
    return BucketOutputs(*(torch.stack(series, dim=1) for series in zip(*outs)))
