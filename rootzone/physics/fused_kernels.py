"""Triton kernels of the fused bucket recursion (DESIGN §4, §8): a forward that runs the whole time loop and a
hand-written adjoint that runs it in reverse.

Layout. Every tensor is seen as planes ``[C, T, B]`` (channel, day, basin) through explicit strides, so the
kernels accept any layout without a copy. With time-major planes (basin stride 1) every per-day load and store
of a block of basins is one coalesced access; a batch-first ``[B, T, C]`` tensor also works (each basin
then reads its own 16 or 32 contiguous bytes per day, i.e. whole sectors served by L1), which is measured by
the benchmark rather than assumed. One program owns ``BLOCK_B`` basins and keeps W, S, G (and in the backward
their adjoints) in registers for all T days. Arithmetic is float32; offsets are int64.

Saved states, not recomputation. The forward's outputs already hold the end-of-day storages w, s, g of every
day, which are the start-of-day states of the next day. The backward therefore re-reads them (3 floats per
basin-day that exist anyway, since they are outputs) and recomputes only the intermediates of one day from
them. Full recomputation would instead need checkpointing (an extra forward pass plus a state store per
segment) to avoid O(T^2) work, for no memory saving, so saving wins without a measurement.

Initial storages. The storages at the start of day 0 are the input ``state0 [3, B]`` (W, S, G in mm), read
once per basin before the time loop (12 bytes per basin; the backward holds them in three registers for day
0). They get no gradient: the adjoint of the day-0 storages is dropped at the end of the reverse sweep.

Latency, not bandwidth. Forward and backward together move 196 bytes per basin-day (68 + 128: each input read
once, each output written once; ``benchmarks/kernel_sass.py`` counts the loads and stores in the sm_90 machine
code), so an H100's 3.35 TB/s would allow 1.7e10 basin-days/s. But a program walks its T days one after
another, and at 2048 basins there are only 16 programs for 132 SMs: the run takes T times the latency of one
day, not bytes over bandwidth. A plain loop makes every day wait for its own loads (global-memory latency,
hundreds of cycles) before about 200 (forward) or 400 (backward) instructions of largely dependent arithmetic.
The time loop is therefore software-pipelined, ``tl.range(0, T, num_stages=STAGES)``: Triton issues the loads of
day t + STAGES - 1 as ``cp.async`` copies into shared memory while day t computes, so a day waits only for a
shared-memory read. The defaults BLOCK_B and NUM_STAGES are reasoned, not yet measured: ``bench_physics.py
--tune`` times every (block, stages) pair on a GPU and checks each against the default.

Sub-gradients follow ``rootzone.physics.equations`` exactly: ``_min(a, b)`` picks ``a`` when ``a <= b`` and
gives it the gradient; ``_pos(x)`` passes the gradient only for ``x > 0``; the wetness clamp passes it only
strictly inside ``(WETNESS_EPS, 1)``; the snow fraction is a logistic sigmoid; ``wetness**beta`` has gradients
with respect to both wetness and beta. The forward step is one ``@triton.jit`` function shared by both kernels
so the backward recomputes bit-identical branch decisions.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from rootzone.physics.equations import T_SNOW, TAU_SNOW, WETNESS_EPS

N_FORCING = 4  # P mm/d, T °C, PET mm/d, LAI m²/m²
N_PARAMS = 8  # PARAM_NAMES order
N_OUT = 5  # q, et (mm/d), w, s, g (mm)
BLOCK_B = 128  # basins per program, one per thread (block // 32 warps); to be tuned on a GPU
NUM_STAGES = 3  # software-pipeline depth of the time loop: day t + NUM_STAGES - 1 is in flight during day t


@triton.jit
def _step(w, s, g, p, tc, pet, lai, smax, beta, fm, alpha, lp, ci, fg, kg,
          T_S: tl.constexpr, TAU: tl.constexpr, EPS: tl.constexpr):
    """One day (equations.bucket_step), returning the outputs and every intermediate the adjoint needs."""
    snow_frac = tl.sigmoid((T_S - tc) / TAU)
    p_snow = snow_frac * p
    p_rain = p - p_snow
    t_pos = tl.where(tc - T_S > 0, tc - T_S, 0.0)
    melt_cap = fm * t_pos
    snow_avail = w + p_snow
    c_melt = snow_avail <= melt_cap
    melt = tl.where(c_melt, snow_avail, melt_cap)
    w1 = w + p_snow - melt
    int_cap = ci * lai
    c_e1 = p_rain <= int_cap
    e1 = tl.where(c_e1, p_rain, int_cap)
    c_e2 = e1 <= pet
    e_int = tl.where(c_e2, e1, pet)
    inflow = p_rain - e_int + melt
    c_over = s - smax > 0
    overflow = tl.where(c_over, s - smax, 0.0)
    s1 = s - overflow
    ratio = s1 / smax
    c_inside = (ratio > EPS) & (ratio < 1.0)
    wet = tl.where(ratio <= EPS, EPS, tl.where(ratio >= 1.0, 1.0, ratio))
    log_wet = tl.log(wet)
    powed = tl.exp(beta * log_wet)
    r_cand = inflow * (1.0 - powed)
    room = smax - s1
    c_r = r_cand <= room
    r_soil = tl.where(c_r, r_cand, room)
    s2 = s1 + r_soil
    excess = inflow - r_soil + overflow
    lp_smax = lp * smax
    stress_raw = s2 / lp_smax
    c_stress = 1.0 <= stress_raw
    stress = tl.where(c_stress, 1.0, stress_raw)
    pet_left = pet - e_int
    et_cand = alpha * pet_left * stress
    c_et = et_cand <= s2
    e_t = tl.where(c_et, et_cand, s2)
    s3 = s2 - e_t
    recharge = fg * excess
    q_surface = excess - recharge
    g_in = g + recharge
    q_base = kg * g_in
    g1 = g_in - q_base
    q = q_surface + q_base
    et = e_int + e_t
    return (q, et, w1, s3, g1, snow_frac, t_pos, c_melt, int_cap, c_e1, c_e2, c_over, ratio, c_inside,
            wet, log_wet, powed, inflow, c_r, s2, excess, lp_smax, stress_raw, c_stress, stress, pet_left,
            c_et, g_in)


@triton.jit
def _load_day(ft, pt, sf_c, sp_c, mask):
    """One day's forcing (P, T, PET, LAI at ``ft``) and parameters (S_max, beta, f_m, alpha, lp, c_i, f_g,
    k_g at ``pt``) for BLOCK basins; masked lanes get values that keep the step finite."""
    p = tl.load(ft, mask=mask, other=0.0)
    tc = tl.load(ft + sf_c, mask=mask, other=0.0)
    pet = tl.load(ft + 2 * sf_c, mask=mask, other=0.0)
    lai = tl.load(ft + 3 * sf_c, mask=mask, other=0.0)
    smax = tl.load(pt, mask=mask, other=1.0)
    beta = tl.load(pt + sp_c, mask=mask, other=1.0)
    fm = tl.load(pt + 2 * sp_c, mask=mask, other=0.0)
    alpha = tl.load(pt + 3 * sp_c, mask=mask, other=0.0)
    lp = tl.load(pt + 4 * sp_c, mask=mask, other=1.0)
    ci = tl.load(pt + 5 * sp_c, mask=mask, other=0.0)
    fg = tl.load(pt + 6 * sp_c, mask=mask, other=0.0)
    kg = tl.load(pt + 7 * sp_c, mask=mask, other=0.0)
    return p, tc, pet, lai, smax, beta, fm, alpha, lp, ci, fg, kg


@triton.jit
def _forward_kernel(f_ptr, p_ptr, s0_ptr, o_ptr, T, B,
                    sf_c, sf_t, sf_b, sp_c, sp_t, sp_b, ss_c, ss_b, so_c, so_t, so_b,
                    T_S: tl.constexpr, TAU: tl.constexpr, EPS: tl.constexpr, BLOCK: tl.constexpr,
                    STAGES: tl.constexpr):
    """Forward over all T days for BLOCK basins. f: forcing [4, T, B]; p: params [8, T, B]; s0: initial
    storages [3, B] (W, S, G at the start of day 0, read once per basin); o: [5, T, B]."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < B
    z64 = offs * 0  # int64 zeros: every offset below is computed in 64 bits
    fb = f_ptr + offs * sf_b
    pb = p_ptr + offs * sp_b
    ob = o_ptr + offs * so_b
    sf_c = z64 + sf_c
    sp_c = z64 + sp_c
    so_c = z64 + so_c
    sb = s0_ptr + offs * ss_b
    ss_c = z64 + ss_c
    w = tl.load(sb, mask=mask, other=0.0)
    s = tl.load(sb + ss_c, mask=mask, other=0.0)
    g = tl.load(sb + 2 * ss_c, mask=mask, other=0.0)
    for t in tl.range(0, T, num_stages=STAGES):
        t64 = z64 + t
        ft = fb + t64 * sf_t
        pt = pb + t64 * sp_t
        p, tc, pet, lai, smax, beta, fm, alpha, lp, ci, fg, kg = _load_day(ft, pt, sf_c, sp_c, mask)
        res = _step(w, s, g, p, tc, pet, lai, smax, beta, fm, alpha, lp, ci, fg, kg, T_S, TAU, EPS)
        w = res[2]
        s = res[3]
        g = res[4]
        ot = ob + t64 * so_t
        tl.store(ot, res[0], mask=mask)
        tl.store(ot + so_c, res[1], mask=mask)
        tl.store(ot + 2 * so_c, w, mask=mask)
        tl.store(ot + 3 * so_c, s, mask=mask)
        tl.store(ot + 4 * so_c, g, mask=mask)


@triton.jit
def _backward_kernel(f_ptr, p_ptr, s0_ptr, o_ptr, go_ptr, gf_ptr, gp_ptr, T, B,
                     sf_c, sf_t, sf_b, sp_c, sp_t, sp_b, ss_c, ss_b, so_c, so_t, so_b,
                     sgo_c, sgo_t, sgo_b, sgf_c, sgf_t, sgf_b, sgp_c, sgp_t, sgp_b,
                     T_S: tl.constexpr, TAU: tl.constexpr, EPS: tl.constexpr,
                     NEED_FORCING: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    """Adjoint in reverse time. s0: initial storages [3, B] (read once per basin; they get no gradient: the
    adjoint of the day-0 storages is dropped); o: saved forward outputs [5, T, B]; go: their cotangents
    [5, T, B]; gf: forcing gradient [4, T, B] (written only if NEED_FORCING); gp: parameter gradient
    [8, T, B]."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < B
    z64 = offs * 0  # int64 zeros: every offset below is computed in 64 bits
    fb = f_ptr + offs * sf_b
    pb = p_ptr + offs * sp_b
    ob = o_ptr + offs * so_b
    sf_c = z64 + sf_c
    sp_c = z64 + sp_c
    so_c = z64 + so_c
    sgo_c = z64 + sgo_c
    sgf_c = z64 + sgf_c
    sgp_c = z64 + sgp_c
    gob = go_ptr + offs * sgo_b
    gfb = gf_ptr + offs * sgf_b
    gpb = gp_ptr + offs * sgp_b
    sb = s0_ptr + offs * ss_b
    ss_c = z64 + ss_c
    w_init = tl.load(sb, mask=mask, other=0.0)  # start-of-day storages of day 0
    s_init = tl.load(sb + ss_c, mask=mask, other=0.0)
    g_init = tl.load(sb + 2 * ss_c, mask=mask, other=0.0)
    a_w = tl.zeros([BLOCK], dtype=tl.float32)  # adjoints of the end-of-day storages
    a_s = tl.zeros([BLOCK], dtype=tl.float32)
    a_g = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.range(0, T, num_stages=STAGES):
        t = T - 1 - i
        t64 = z64 + t
        ft = fb + t64 * sf_t
        pt = pb + t64 * sp_t
        p, tc, pet, lai, smax, beta, fm, alpha, lp, ci, fg, kg = _load_day(ft, pt, sf_c, sp_c, mask)
        # start-of-day state: yesterday's saved output, or the given initial storages on day 0
        first = t64 == 0
        prev_ok = mask & (t64 > 0)
        op = ob + (t64 - 1) * so_t
        w = tl.where(first, w_init, tl.load(op + 2 * so_c, mask=prev_ok, other=0.0))
        s = tl.where(first, s_init, tl.load(op + 3 * so_c, mask=prev_ok, other=0.0))
        g = tl.where(first, g_init, tl.load(op + 4 * so_c, mask=prev_ok, other=0.0))
        r = _step(w, s, g, p, tc, pet, lai, smax, beta, fm, alpha, lp, ci, fg, kg, T_S, TAU, EPS)
        snow_frac, t_pos, c_melt, c_e1, c_e2, c_over = r[5], r[6], r[7], r[9], r[10], r[11]
        ratio, c_inside, wet, log_wet, powed, inflow, c_r = r[12], r[13], r[14], r[15], r[16], r[17], r[18]
        excess, lp_smax, stress_raw, c_stress, stress, pet_left = r[20], r[21], r[22], r[23], r[24], r[25]
        c_et, g_in = r[26], r[27]
        gt = gob + t64 * sgo_t
        a_q = tl.load(gt, mask=mask, other=0.0)
        a_et = tl.load(gt + sgo_c, mask=mask, other=0.0)
        a_w1 = a_w + tl.load(gt + 2 * sgo_c, mask=mask, other=0.0)
        a_s3 = a_s + tl.load(gt + 3 * sgo_c, mask=mask, other=0.0)
        a_g1 = a_g + tl.load(gt + 4 * sgo_c, mask=mask, other=0.0)
        # 9-10: q = q_surface + q_base, g1 = g_in - q_base, q_base = kg * g_in, g_in = g + recharge
        a_qb = a_q - a_g1
        d_kg = a_qb * g_in
        a_gin = a_g1 + a_qb * kg
        # 8: recharge = fg * excess, q_surface = excess - recharge
        a_rech = a_gin - a_q
        d_fg = a_rech * excess
        a_exc = a_q + a_rech * fg
        # 7: e_t = _min(alpha * pet_left * stress, s2), s3 = s2 - e_t, et = e_int + e_t
        a_e_t = a_et - a_s3
        a_cand = tl.where(c_et, a_e_t, 0.0)
        a_s2 = a_s3 + tl.where(c_et, 0.0, a_e_t)
        d_alpha = a_cand * pet_left * stress
        a_pet_left = a_cand * alpha * stress
        a_stress_raw = tl.where(c_stress, 0.0, a_cand * alpha * pet_left)
        a_s2 += a_stress_raw / lp_smax
        a_lp_smax = -a_stress_raw * stress_raw / lp_smax
        d_lp = a_lp_smax * smax
        d_smax = a_lp_smax * lp
        a_e_int = a_et - a_pet_left
        d_pet = a_pet_left
        # 6: r_soil = _min(inflow * (1 - wet**beta), smax - s1), s2 = s1 + r_soil,
        #    excess = inflow - r_soil + overflow
        a_r = a_s2 - a_exc
        a_ov = a_exc
        a_inflow = a_exc
        a_rc = tl.where(c_r, a_r, 0.0)
        a_room = tl.where(c_r, 0.0, a_r)
        d_smax += a_room
        a_s1 = a_s2 - a_room
        a_inflow += a_rc * (1.0 - powed)
        a_pow = -a_rc * inflow
        d_beta = a_pow * powed * log_wet
        a_ratio = tl.where(c_inside, a_pow * beta * powed / wet, 0.0)
        a_s1 += a_ratio / smax
        d_smax -= a_ratio * ratio / smax
        # 5: overflow = _pos(s - smax), s1 = s - overflow
        a_ov -= a_s1
        a_d = tl.where(c_over, a_ov, 0.0)
        a_s0 = a_s1 + a_d
        d_smax -= a_d
        # 4: inflow = p_rain - e_int + melt
        a_prain = a_inflow
        a_e_int -= a_inflow
        a_melt = a_inflow
        # 3: e_int = _min(_min(p_rain, ci * lai), pet)
        a_e1 = tl.where(c_e2, a_e_int, 0.0)
        d_pet += tl.where(c_e2, 0.0, a_e_int)
        a_prain += tl.where(c_e1, a_e1, 0.0)
        a_cap = tl.where(c_e1, 0.0, a_e1)
        d_ci = a_cap * lai
        d_lai = a_cap * ci
        # 2: melt = _min(w + p_snow, fm * _pos(tc - T_S)), w1 = w + p_snow - melt
        a_melt -= a_w1
        a_avail = tl.where(c_melt, a_melt, 0.0)
        a_mcap = tl.where(c_melt, 0.0, a_melt)
        d_fm = a_mcap * t_pos
        d_tc = tl.where(tc - T_S > 0, a_mcap * fm, 0.0)
        a_w0 = a_w1 + a_avail
        # a_w1 + a_avail - a_prain, simplified exactly so that it is 0 (not rounding noise) when the melt
        # takes all the snow and no rain is intercepted
        a_psnow = tl.where(c_melt, -tl.where(c_e1, a_e1, 0.0), a_w1 - a_prain)
        # 1: p_snow = sigmoid((T_S - tc) / TAU) * p, p_rain = p - p_snow
        d_p = a_prain + a_psnow * snow_frac
        # sigmoid' = s (1 - s) with 1 - s evaluated as sigmoid(-z): exact where the snow fraction rounds to 1
        d_tc -= a_psnow * p * snow_frac * tl.sigmoid((tc - T_S) / TAU) / TAU
        a_w = a_w0  # after day 0 these are the adjoints of state0, which are dropped (no gradient)
        a_s = a_s0
        a_g = a_gin
        gpt = gpb + t64 * sgp_t
        tl.store(gpt, d_smax, mask=mask)
        tl.store(gpt + sgp_c, d_beta, mask=mask)
        tl.store(gpt + 2 * sgp_c, d_fm, mask=mask)
        tl.store(gpt + 3 * sgp_c, d_alpha, mask=mask)
        tl.store(gpt + 4 * sgp_c, d_lp, mask=mask)
        tl.store(gpt + 5 * sgp_c, d_ci, mask=mask)
        tl.store(gpt + 6 * sgp_c, d_fg, mask=mask)
        tl.store(gpt + 7 * sgp_c, d_kg, mask=mask)
        if NEED_FORCING:
            gft = gfb + t64 * sgf_t
            tl.store(gft, d_p, mask=mask)
            tl.store(gft + sgf_c, d_tc, mask=mask)
            tl.store(gft + 2 * sgf_c, d_pet, mask=mask)
            tl.store(gft + 3 * sgf_c, d_lai, mask=mask)


def warps_for(block: int) -> int:
    """Warps per program for ``block`` basins: one thread per basin (a smaller program would replicate each
    basin across threads, a larger one serialise several basins in a thread)."""
    if block < 1 or block & (block - 1):
        raise ValueError(f"basins per program must be a power of 2, got {block}")
    return max(1, block // 32)


def launch_forward(forcing: Tensor, params: Tensor, state0: Tensor, out: Tensor, block: int = BLOCK_B,
                   stages: int = NUM_STAGES) -> None:
    """Fill ``out`` [5, T, B] from forcing [4, T, B], params [8, T, B] and the initial storages state0 [3, B]
    (W, S, G in mm; float32 views of any strides). ``block``: basins per program (a power of 2); ``stages``:
    pipeline depth of the time loop (1: none)."""
    _, t, b = forcing.shape
    grid = (triton.cdiv(b, block),)
    _forward_kernel[grid](forcing, params, state0, out, t, b, *forcing.stride(), *params.stride(),
                          *state0.stride(), *out.stride(),
                          T_S=T_SNOW, TAU=TAU_SNOW, EPS=WETNESS_EPS, BLOCK=block, STAGES=stages,
                          num_warps=warps_for(block), enable_fp_fusion=False)


def launch_backward(forcing: Tensor, params: Tensor, state0: Tensor, out: Tensor, grad_out: Tensor,
                    grad_forcing: Tensor | None, grad_params: Tensor, block: int = BLOCK_B,
                    stages: int = NUM_STAGES) -> None:
    """Fill ``grad_params`` [8, T, B] (and ``grad_forcing`` [4, T, B] unless None) by the reverse sweep from
    the forward's state0 [3, B] and outputs ``out`` [5, T, B]; no gradient for state0. ``block`` and
    ``stages`` as in :func:`launch_forward`."""
    _, t, b = forcing.shape
    need_forcing = grad_forcing is not None
    gf = grad_forcing if need_forcing else grad_params  # dummy pointer, never written
    grid = (triton.cdiv(b, block),)
    _backward_kernel[grid](forcing, params, state0, out, grad_out, gf, grad_params, t, b,
                           *forcing.stride(), *params.stride(), *state0.stride(), *out.stride(),
                           *grad_out.stride(),
                           *gf.stride(), *grad_params.stride(),
                           T_S=T_SNOW, TAU=TAU_SNOW, EPS=WETNESS_EPS, NEED_FORCING=need_forcing, BLOCK=block,
                           STAGES=stages, num_warps=warps_for(block), enable_fp_fusion=False)


def interpreted() -> bool:
    """True when these kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return not isinstance(_forward_kernel, triton.runtime.JITFunction)
