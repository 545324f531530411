"""Calibrated predictive interval of an ensemble: each member's simulation plus its validation residuals.

A seed × fold ensemble samples training noise only, so the spread of its members is not the uncertainty of
an observation (measured coverage of the members' 90 % interval on test days: 0.3-0.7). The *predictive*
distribution of one basin-day and daily target (Q, ET, SWE) here is, for each member m that contributes,

    y ~ inverse(transform(sim_m) + r),   r ~ the empirical residual distribution of member m on its VALIDATION
                                          data (never test data), r = transform(obs) - transform(sim_m)

pooled with equal weight over the members. ``transform(x) = sqrt(max(x, 0) + OFFSET)`` stabilises the variance
of the daily fluxes (errors of Q grow with Q; square-root rather than log so that zero flows and snow-free days
keep a finite, moderate weight), and ``inverse(z) = max(z, 0)² - OFFSET`` clipped at 0, so every predictive
value is non-negative (mm/d or mm). Residual distributions are empirical: :data:`LEVELS` (K equally spaced
mid-point probabilities) quantiles of the residuals, no Gaussian assumption, in two classes of the member's
simulated value (:func:`classes`: below :data:`ACTIVE` = 0.1 mm or mm/d, e.g. snow-free or dry, and above), so
that the many exact zeros of snow-free days do not shrink the interval of snow days. Per basin and class when
the member has at least :data:`MIN_DAYS` finite validation observations of that basin in that class
(temporal folds: the basin's validation years), else pooled over every validation basin-day of the member in
that class (spatial folds: a held-out basin is never a validation basin, so its residuals come from the
member's validation basins).

The predictive sample of a basin-day is then the M × K values ``inverse(transform(sim_m) + q_mk)``: an equally
weighted finite distribution whose 5/95 % quantiles give the predictive 90 % interval and whose CRPS is
computed exactly (:func:`rootzone.metrics.crps_ensemble`); as K grows it converges to the CRPS of the
continuous mixture.

Shapes: ``sim``/``obs``/``valid`` [B, T] (basins, days); residual quantiles [B, N_CLASSES, K]; members
[M, ...].
"""

from __future__ import annotations

import warnings

import numpy as np

from rootzone.metrics import INTERVAL, crps_ensemble

OFFSET = 0.01  # transform offset, target units (mm/d for Q and ET, mm for SWE)
K = 50  # residual quantile levels per member
LEVELS = (np.arange(K) + 0.5) / K  # mid-point probabilities: an equally weighted K-point residual sample
MIN_DAYS = 100  # a basin's own residual quantiles need this many validation observations, else pooled
MAX_POOLED = 200_000  # pooled residuals kept per member (every n-th, deterministic) to bound memory
ACTIVE = 0.1  # target units: a simulated value >= ACTIVE is "active" (flowing, evaporating, snow on the ground)
N_CLASSES = 2  # residual classes by the member's simulated value: 0 = below ACTIVE (e.g. snow-free), 1 = active


def classes(sim: np.ndarray) -> np.ndarray:
    """Residual class of each simulated value (int [same shape]): 1 where sim >= :data:`ACTIVE`, else 0 (NaN:
    0). SWE is zero half the year; without the split its residual quantiles are dominated by exact zeros of
    snow-free days and the interval of snow days collapses."""
    with np.errstate(invalid="ignore"):
        return (np.asarray(sim) >= ACTIVE).astype(np.int64)


def transform(x: np.ndarray) -> np.ndarray:
    """Variance-stabilising transform sqrt(max(x, 0) + OFFSET), float64."""
    return np.sqrt(np.maximum(np.asarray(x, dtype=np.float64), 0.0) + OFFSET)


ROUND_OFF = 1e-9  # back-transformed values below this are exact zeros (sqrt(OFFSET)² - OFFSET is not 0 in floats)


def inverse(z: np.ndarray) -> np.ndarray:
    """Back-transform of :func:`transform`, clipped at 0 (non-negative fluxes and SWE); round-off of the
    transform (< :data:`ROUND_OFF`) gives exact zeros, so an observed 0 lies inside an interval that starts
    at a simulated 0."""
    z = np.maximum(np.asarray(z, dtype=np.float64), 0.0)
    v = z * z - OFFSET
    return np.where(v < ROUND_OFF, 0.0, v)


def residuals(sim: np.ndarray, obs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[B, T] residuals transform(obs) - transform(sim) where ``valid`` and both are finite, NaN elsewhere."""
    sim, obs = np.asarray(sim, dtype=np.float64), np.asarray(obs, dtype=np.float64)
    ok = np.asarray(valid, dtype=bool) & np.isfinite(sim) & np.isfinite(obs)
    with np.errstate(invalid="ignore"):
        return np.where(ok, transform(obs) - transform(sim), np.nan)


class ResidualPool:
    """Residual quantiles of one member, accumulated over basin chunks, per residual class (:func:`classes` of
    the member's simulation): a basin's own quantiles where it has >= ``min_days`` validation residuals of that
    class, else the member's quantiles of that class pooled over its validation basins, else (a class the
    member never saw on validation data) pooled over both classes (:meth:`quantiles`)."""

    def __init__(self, n_basins: int, min_days: int = MIN_DAYS) -> None:
        self.own = np.full((n_basins, N_CLASSES, K), np.nan)
        self.count = np.zeros((n_basins, N_CLASSES), dtype=np.int64)
        self.pooled: list[list[np.ndarray]] = [[] for _ in range(N_CLASSES)]
        self.min_days = min_days

    def add(self, lo: int, res: np.ndarray, cls: np.ndarray | None = None) -> None:
        """Residuals ``res`` [B, T] (NaN = not a validation observation) of basins lo..lo+B and their classes
        ``cls`` [B, T] (default all 1)."""
        cls = np.ones(res.shape, dtype=np.int64) if cls is None else np.asarray(cls)
        for i in range(res.shape[0]):
            for c in range(N_CLASSES):
                r = res[i][(cls[i] == c) & np.isfinite(res[i])]
                self.count[lo + i, c] = r.size
                if r.size >= self.min_days:
                    self.own[lo + i, c] = np.quantile(r, LEVELS)
                if r.size:
                    self.pooled[c].append(r[:: max(1, r.size * res.shape[0] // MAX_POOLED)])

    def quantiles(self) -> np.ndarray:
        """[N, N_CLASSES, K]: each basin's residual quantiles per class (own or pooled); NaN where the member has
        no validation residual at all."""
        out = self.own.copy()
        pools = [np.concatenate(p) if p else np.empty(0) for p in self.pooled]
        every = np.concatenate(pools)
        for c in range(N_CLASSES):
            few = self.count[:, c] < self.min_days
            if not few.any():
                continue
            pool = pools[c] if pools[c].size >= self.min_days else every
            out[few, c] = np.quantile(pool, LEVELS) if pool.size else np.nan
        return out


def residual_quantiles(sim: np.ndarray, obs: np.ndarray, valid: np.ndarray, min_days: int = MIN_DAYS) -> np.ndarray:
    """[B, N_CLASSES, K] residual quantiles of one member from its whole validation set in one go (see
    :class:`ResidualPool`)."""
    pool = ResidualPool(np.asarray(sim).shape[0], min_days)
    pool.add(0, residuals(sim, obs, valid), classes(sim))
    return pool.quantiles()


def predictive_sample(sims: np.ndarray, rq: np.ndarray) -> np.ndarray:
    """Members' series ``sims`` [M, ..., T] and their residual quantiles ``rq`` [M, ..., N_CLASSES, K] -> the
    predictive sample [M * K, ..., T]: each day uses the quantiles of its simulated value's class (NaN where
    the member's series or its residuals are missing)."""
    sims = np.asarray(sims, dtype=np.float64)
    per_class = np.moveaxis(np.asarray(rq, dtype=np.float64), -1, 1)  # [M, K, ..., N_CLASSES]
    picked = np.take_along_axis(per_class, classes(sims)[:, None], axis=-1)  # [M, K, ..., T]
    z = transform(sims)[:, None] + picked  # [M, K, ..., T]
    with np.errstate(invalid="ignore"):
        y = np.where(np.isfinite(sims)[:, None], inverse(z), np.nan)
    y = np.where(np.isfinite(z), y, np.nan)
    return y.reshape((-1,) + y.shape[2:])


def predictive_interval(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """5 and 95 % quantiles (:data:`rootzone.metrics.INTERVAL`) over axis 0 of a predictive sample (NaN values
    are absent; numpy's fast path when there is none)."""
    if np.isfinite(sample).all():
        lo, hi = np.quantile(sample, INTERVAL, axis=0)
        return lo, hi
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # entries without any member
        lo, hi = np.nanquantile(sample, INTERVAL, axis=0)
    return lo, hi


PREDICTIVE_SCORES = ("crps_predictive", "coverage90_predictive", "width90_predictive")


def predictive_scores(sims: np.ndarray, rq: np.ndarray, obs: np.ndarray, valid: np.ndarray | None = None
                      ) -> dict[str, float]:
    """One basin: members [M, T] (NaN = absent that day), their residual quantiles [M, N_CLASSES, K],
    observations [T],
    scored entries ``valid`` [T]: mean exact CRPS of the predictive sample, fraction of observations inside its
    5-95 % interval, mean interval width. NaN when nothing is scored."""
    x, y = np.asarray(sims, dtype=np.float64), np.asarray(obs, dtype=np.float64)
    sample = predictive_sample(x, rq)
    ok = np.isfinite(y) & np.isfinite(sample).any(axis=0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    if not ok.any():
        return dict.fromkeys(PREDICTIVE_SCORES, float("nan"))
    crps, inside, width = [], [], []
    present = np.isfinite(x[:, ok])  # [M, n]: which members each scored day has
    patterns, which = np.unique(present, axis=1, return_inverse=True)
    for g in range(patterns.shape[1]):  # days sharing their members: a NaN-free sample, numpy's fast paths
        days = np.flatnonzero(ok)[np.ravel(which) == g]
        s = predictive_sample(x[patterns[:, g]][:, days], np.asarray(rq)[patterns[:, g]])
        s = s[np.isfinite(s).all(axis=1)]
        lo, hi = predictive_interval(s)
        crps.append(crps_ensemble(s, y[days]))
        inside.append((y[days] >= lo) & (y[days] <= hi))
        width.append(hi - lo)
    return {"crps_predictive": float(np.mean(np.concatenate(crps))),
            "coverage90_predictive": float(np.mean(np.concatenate(inside))),
            "width90_predictive": float(np.mean(np.concatenate(width)))}


def member_residual_quantiles(read_sim, read_obs, n_basins: int, day_mask: np.ndarray, basin_mask: np.ndarray,
                              chunk: int = 64) -> np.ndarray:
    """[M, N, N_CLASSES, K] residual quantiles of every member from its validation data only, streamed over
    basin chunks.

    read_sim(lo, hi) -> [M, B, T] the members' series of basins lo..hi; read_obs(lo, hi) -> [B, T] their
    observations; ``day_mask`` [M, T] the member's validation days (spin-up excluded) and ``basin_mask`` [M, N]
    its validation basins (all of them for temporal folds). Test data never enter: a day outside the member's
    validation days or a basin outside its validation basins is ignored."""
    day_mask, basin_mask = np.asarray(day_mask, dtype=bool), np.asarray(basin_mask, dtype=bool)
    pools = [ResidualPool(n_basins) for _ in range(day_mask.shape[0])]
    for lo in range(0, n_basins, chunk):
        hi = min(lo + chunk, n_basins)
        sims, obs = read_sim(lo, hi), read_obs(lo, hi)
        for m, pool in enumerate(pools):
            valid = day_mask[m][None, :] & basin_mask[m, lo:hi, None]
            pool.add(lo, residuals(sims[m], obs, valid), classes(sims[m]))
    return np.stack([p.quantiles() for p in pools]).reshape(len(pools), n_basins, N_CLASSES, K)
