"""Skill metrics per basin (DESIGN §6): NSE, KGE with its parts (r, alpha, beta), bias and RMSE.

:func:`basin_metrics` takes simulated and observed arrays [N] (one basin, scored entries; NaN in ``obs`` =
not observed or not scored) and returns the skill metrics (:data:`METRICS`) plus the counts
(:data:`BASIN_COUNTS`): ``n_obs``, the observed entries, and ``n_sim_nonfinite``, the observed entries where
the simulation is not finite. A basin is scored only when it has at least ``max(2, min_obs)`` observations and
a finite simulation on every one of them; otherwise all its metrics are NaN (and the counts say why). A
constant simulation against varying observations has r = 0 (a poor score, not NaN). For anomalies (TWSA),
whose means are zero by construction, ``beta`` is undefined (NaN) and KGE uses only its r and alpha terms.

:func:`median_metrics` gives the median over the scored basins of each metric together with how many basins
it covers (``n_basins``) and how many were left out and why (:data:`MEDIAN_COUNTS`).
"""

from __future__ import annotations

import numpy as np

# Skill metrics (table columns); the counts are separate so that tables keep these columns only.
METRICS = ("nse", "kge", "r", "alpha", "beta", "bias", "rmse")
BASIN_COUNTS = ("n_obs", "n_sim_nonfinite")
MEDIAN_COUNTS = ("n_basins", "n_excluded_few_obs", "n_excluded_sim_nonfinite", "n_excluded_constant_obs")


def basin_metrics(sim: np.ndarray, obs: np.ndarray, anomaly: bool = False, min_obs: int = 1) -> dict[str, float]:
    """Metrics of one basin; NaN metrics (with counts) when it has fewer than ``max(2, min_obs)`` observations
    or a non-finite simulation on an observed entry."""
    sim, obs = np.asarray(sim), np.asarray(obs)
    observed = np.isfinite(obs)
    n_obs = int(observed.sum())
    bad = int((observed & ~np.isfinite(sim)).sum())
    counts = {"n_obs": n_obs, "n_sim_nonfinite": bad}
    if bad or n_obs < max(2, min_obs):
        return {**{m: float("nan") for m in METRICS}, **counts}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # degenerate cases give NaN/inf quietly
        return {**_scores(sim[observed], obs[observed], anomaly), **counts}


def _scores(sim: np.ndarray, obs: np.ndarray, anomaly: bool) -> dict[str, float]:
    s, o = sim.astype(np.float64), obs.astype(np.float64)
    err = s - o
    var_o = np.var(o)
    nse = 1 - np.mean(err**2) / var_o if var_o > 0 else float("nan")
    std_s, std_o = np.std(s), np.std(o)
    if std_o > 0:
        r = float(np.corrcoef(s, o)[0, 1]) if std_s > 0 else 0.0  # a constant simulation explains nothing
    else:
        r = float("nan")  # constant observations: no skill can be measured
    alpha = std_s / std_o if std_o > 0 else float("nan")
    mean_o = np.mean(o)
    beta = np.mean(s) / mean_o if mean_o != 0 and not anomaly else float("nan")
    bias_term = 0.0 if anomaly else (beta - 1) ** 2
    kge = 1 - np.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + bias_term)
    return {"nse": float(nse), "kge": float(kge), "r": float(r), "alpha": float(alpha), "beta": float(beta),
            "bias": float(np.mean(err)), "rmse": float(np.sqrt(np.mean(err**2)))}


def _status(b: dict[str, float]) -> str:
    if b.get("n_sim_nonfinite", 0):
        return "n_excluded_sim_nonfinite"
    if not np.isfinite(b.get("rmse", np.nan)):
        return "n_excluded_few_obs"
    if not np.isfinite(b.get("nse", np.nan)):
        return "n_excluded_constant_obs"
    return "n_basins"


def median_metrics(per_basin: dict[str, dict[str, float]]) -> dict[str, float]:
    """Median over the scored basins of each metric, with the counts of :data:`MEDIAN_COUNTS`: ``n_basins``
    (basins the medians cover), ``n_excluded_few_obs`` (fewer observations than the minimum),
    ``n_excluded_sim_nonfinite`` (a non-finite simulation on an observed entry) and ``n_excluded_constant_obs``
    (observations without variance: NSE, r and KGE undefined)."""
    counts = dict.fromkeys(MEDIAN_COUNTS, 0)
    scored = []
    for b in per_basin.values():
        status = _status(b)
        counts[status] += 1
        if status == "n_basins":
            scored.append(b)
    out: dict[str, float] = {}
    for m in METRICS:
        vals = np.array([b[m] for b in scored], dtype=np.float64)
        out[m] = float(np.nanmedian(vals)) if np.isfinite(vals).any() else float("nan")
    return {**out, **counts}


# ---------------------------------------------------------------------------------------------- ensembles
INTERVAL = (0.05, 0.95)  # the ensemble's central 90 % interval (quantiles over members)
ENSEMBLE_SCORES = ("crps", "coverage90", "spread", "rmse_mean", "spread_skill", "members", "n_scored")


def crps_ensemble(members: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """CRPS of a finite ensemble against observations, exactly, in the units of the data.

    members: [M, ...] ensemble values; a NaN member is absent there (e.g. not a test member of that day), so
    each entry's ensemble is its finite members. obs: [...] (broadcast). The forecast is the empirical CDF of
    the m finite members; energy form CRPS = E|X - y| - ½ E|X - X'|, both expectations over that distribution
    (E|X - X'| = (1/m²) Σ_i Σ_j |x_i - x_j| = (2/m²) Σ_k (2k - m + 1) x_(k), k = 0..m-1 over the sorted
    members), which equals ∫ (F_ens(z) - 1{z >= y})² dz. One member: the absolute error. NaN where ``obs`` is
    not finite or no member is. Float64 result [...]."""
    x = np.asarray(members, dtype=np.float64)
    y = np.broadcast_to(np.asarray(obs, dtype=np.float64), x.shape[1:])
    x = np.where(np.isfinite(x), x, np.nan)
    m = np.isfinite(x).sum(axis=0)
    xs = np.sort(x, axis=0)  # NaN last
    k = np.arange(x.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1))
    weight = np.where(k < m[None], 2 * k - m[None] + 1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = np.nansum(np.abs(x - y[None]), axis=0) / m
        pair = 2.0 * np.nansum(weight * xs, axis=0) / m.astype(np.float64) ** 2
    return np.where(np.isfinite(y) & (m > 0), mae - 0.5 * pair, np.nan)


def ensemble_scores(members: np.ndarray, obs: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """Probabilistic skill of one basin's ensemble [M, N] (a NaN member is absent on that entry) against
    observations [N] on the entries ``valid`` [N] (default all) where the observation and at least one member
    are finite: mean CRPS (:func:`crps_ensemble`), ``coverage90`` (fraction of observations inside the
    members' 5-95 % quantile interval, linear interpolation), ``spread`` (root mean ensemble variance, ddof=0),
    ``rmse_mean`` (RMSE of the ensemble mean), ``spread_skill`` (spread / rmse_mean: about 1 for a calibrated
    ensemble, < 1 over-confident), ``members`` (mean number of members per scored entry), ``n_scored``. NaN
    scores when nothing is scored."""
    x = np.asarray(members, dtype=np.float64)
    y = np.asarray(obs, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(x).any(axis=0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    n = int(ok.sum())
    if n == 0:
        return {**{k: float("nan") for k in ENSEMBLE_SCORES}, "n_scored": 0}
    x, y = x[:, ok], y[ok]
    lo, hi = np.nanquantile(x, INTERVAL, axis=0)
    spread = float(np.sqrt(np.mean(np.nanvar(x, axis=0))))
    rmse = float(np.sqrt(np.mean((np.nanmean(x, axis=0) - y) ** 2)))
    return {"crps": float(np.mean(crps_ensemble(x, y))), "coverage90": float(np.mean((y >= lo) & (y <= hi))),
            "spread": spread, "rmse_mean": rmse, "spread_skill": spread / rmse if rmse > 0 else float("nan"),
            "members": float(np.isfinite(x).sum(axis=0).mean()), "n_scored": n}
