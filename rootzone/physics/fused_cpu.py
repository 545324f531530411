"""CPU implementation of the fused op (used on CPU tensors when Triton's interpreter is not on).

The same contract as the Triton kernels in :mod:`rootzone.physics.fused_kernels`: planes ``[C, T, B]`` and the
initial storages ``state0 [3, B]`` in, planes out, float32; no gradient for ``state0``. The forward is the
reference ``bucket_step``; the backward is the same hand-written adjoint as the Triton backward kernel
(reverse sweep over days on ``[B]`` vectors, states re-read from the saved outputs and ``state0`` for day 0),
written with torch ops. It cannot call autograd: inside a custom op's kernel the autograd dispatch keys are
excluded.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rootzone.physics.equations import T_SNOW, TAU_SNOW, WETNESS_EPS, BucketState, bucket_step


def forward_planes(forcing: Tensor, params: Tensor, state0: Tensor) -> Tensor:
    """Outputs [5, T, B] (q, et, w, s, g) from forcing [4, T, B], params [8, T, B] and the storages state0
    [3, B] (W, S, G at the start of day 0), via the reference."""
    n_days = forcing.shape[1]
    out = forcing.new_empty((5, n_days, forcing.shape[2]))
    state = BucketState(*state0)
    for t in range(n_days):
        state, flux = bucket_step(state, *forcing[:, t], params[:, t].T)
        out[:, t] = torch.stack([flux.q, flux.et, state.w, state.s, state.g])
    return out


def _step_adjoint(w: Tensor, s: Tensor, g: Tensor, f: Tensor, prm: Tensor, a_out: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Adjoint of one day. w, s, g: start-of-day storages [B]; f [4, B]; prm [8, B]; a_out [5, B] the
    adjoints of (q, et, w1, s3, g1). Returns adjoints of w, s, g and the gradients d_forcing [4, B],
    d_params [8, B]."""
    p, tc, pet, lai = f
    smax, beta, fm, alpha, lp, ci, fg, kg = prm
    a_q, a_et, a_w1, a_s3, a_g1 = a_out

    def pick(cond: Tensor, a: Tensor, b: Tensor | float) -> Tensor:
        return torch.where(cond, a, b)

    # forward recomputation (same expressions as bucket_step / the Triton _step)
    snow_frac = torch.sigmoid((T_SNOW - tc) / TAU_SNOW)
    p_snow = snow_frac * p
    p_rain = p - p_snow
    c_t = tc - T_SNOW > 0
    t_pos = pick(c_t, tc - T_SNOW, 0.0)
    melt_cap = fm * t_pos
    c_melt = w + p_snow <= melt_cap
    int_cap = ci * lai
    c_e1 = p_rain <= int_cap
    e1 = pick(c_e1, p_rain, int_cap)
    c_e2 = e1 <= pet
    e_int = pick(c_e2, e1, pet)
    inflow = p_rain - e_int + pick(c_melt, w + p_snow, melt_cap)
    c_over = s - smax > 0
    overflow = pick(c_over, s - smax, 0.0)
    s1 = s - overflow
    ratio = s1 / smax
    c_inside = (ratio > WETNESS_EPS) & (ratio < 1.0)
    wet = ratio.clamp(WETNESS_EPS, 1.0)
    powed = wet**beta
    r_cand = inflow * (1.0 - powed)
    c_r = r_cand <= smax - s1
    r_soil = pick(c_r, r_cand, smax - s1)
    s2 = s1 + r_soil
    excess = inflow - r_soil + overflow
    lp_smax = lp * smax
    stress_raw = s2 / lp_smax
    c_stress = 1.0 <= stress_raw
    stress = pick(c_stress, torch.ones_like(s2), stress_raw)
    pet_left = pet - e_int
    c_et = alpha * pet_left * stress <= s2
    g_in = g + fg * excess
    # reverse sweep
    a_qb = a_q - a_g1
    d_kg = a_qb * g_in
    a_gin = a_g1 + a_qb * kg
    a_rech = a_gin - a_q
    d_fg = a_rech * excess
    a_exc = a_q + a_rech * fg
    a_e_t = a_et - a_s3
    a_cand = pick(c_et, a_e_t, 0.0)
    a_s2 = a_s3 + pick(c_et, 0.0, a_e_t)
    d_alpha = a_cand * pet_left * stress
    a_pet_left = a_cand * alpha * stress
    a_stress_raw = pick(c_stress, 0.0, a_cand * alpha * pet_left)
    a_s2 = a_s2 + a_stress_raw / lp_smax
    a_lp_smax = -a_stress_raw * stress_raw / lp_smax
    d_lp = a_lp_smax * smax
    d_smax = a_lp_smax * lp
    a_e_int = a_et - a_pet_left
    d_pet = a_pet_left
    a_r = a_s2 - a_exc
    a_rc = pick(c_r, a_r, 0.0)
    a_room = pick(c_r, 0.0, a_r)
    d_smax = d_smax + a_room
    a_s1 = a_s2 - a_room
    a_inflow = a_exc + a_rc * (1.0 - powed)
    a_pow = -a_rc * inflow
    d_beta = a_pow * powed * wet.log()
    a_ratio = pick(c_inside, a_pow * beta * powed / wet, 0.0)
    a_s1 = a_s1 + a_ratio / smax
    d_smax = d_smax - a_ratio * ratio / smax
    a_d = pick(c_over, a_exc - a_s1, 0.0)
    a_s = a_s1 + a_d
    d_smax = d_smax - a_d
    a_e_int = a_e_int - a_inflow
    a_e1 = pick(c_e2, a_e_int, 0.0)
    d_pet = d_pet + pick(c_e2, 0.0, a_e_int)
    a_prain = a_inflow + pick(c_e1, a_e1, 0.0)
    a_cap = pick(c_e1, 0.0, a_e1)
    a_melt = a_inflow - a_w1
    a_avail = pick(c_melt, a_melt, 0.0)
    a_mcap = pick(c_melt, 0.0, a_melt)
    d_tc = pick(c_t, a_mcap * fm, 0.0)
    # a_w1 + a_avail - a_prain, simplified exactly (0, not rounding noise, when the melt takes all the snow
    # and no rain is intercepted), as in the Triton kernel
    a_psnow = pick(c_melt, -pick(c_e1, a_e1, 0.0), a_w1 - a_prain)
    d_p = a_prain + a_psnow * snow_frac
    # sigmoid' = s (1 - s) with 1 - s evaluated as sigmoid(-z): exact where the snow fraction rounds to 1
    d_tc = d_tc - a_psnow * p * snow_frac * torch.sigmoid((tc - T_SNOW) / TAU_SNOW) / TAU_SNOW
    d_forcing = torch.stack([d_p, d_tc, d_pet, a_cap * ci])
    d_params = torch.stack([d_smax, d_beta, a_mcap * t_pos, d_alpha, d_lp, a_cap * lai, d_fg, d_kg])
    return a_w1 + a_avail, a_s, a_gin, d_forcing, d_params


def backward_planes(forcing: Tensor, params: Tensor, state0: Tensor, out: Tensor, grad_out: Tensor
                    ) -> tuple[Tensor, Tensor]:
    """Gradients (forcing [4, T, B], params [8, T, B]) from the initial storages state0 [3, B], the saved
    outputs out [5, T, B] and their cotangents grad_out [5, T, B], by the reverse sweep. The adjoint of the
    initial storages is dropped (state0 gets no gradient)."""
    n_days = forcing.shape[1]
    grad_forcing = torch.empty_like(forcing)
    grad_params = torch.empty_like(params)
    zero = torch.zeros_like(params[0, 0])
    a_w, a_s, a_g = zero, zero, zero
    for t in range(n_days - 1, -1, -1):
        if t > 0:
            w, s, g = out[2, t - 1], out[3, t - 1], out[4, t - 1]
        else:
            w, s, g = state0
        a_out = grad_out[:, t] + torch.stack([zero, zero, a_w, a_s, a_g])
        a_w, a_s, a_g, grad_forcing[:, t], grad_params[:, t] = _step_adjoint(w, s, g, forcing[:, t],
                                                                            params[:, t], a_out)
    return grad_forcing, grad_params
