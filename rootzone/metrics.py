"""Skill metrics per basin (DESIGN §6): NSE, KGE with its parts (r, alpha, beta), bias and RMSE.

All functions take simulated and observed arrays [N] (one basin, scored entries; NaN in ``obs`` = missing)
and return floats (NaN when fewer than two observations). For anomalies (TWSA), whose means are zero by
construction, ``beta`` is undefined (NaN) and KGE uses only its r and alpha terms.
"""

from __future__ import annotations

import numpy as np

METRICS = ("nse", "kge", "r", "alpha", "beta", "bias", "rmse")


def basin_metrics(sim: np.ndarray, obs: np.ndarray, anomaly: bool = False) -> dict[str, float]:
    ok = np.isfinite(obs) & np.isfinite(sim)
    if ok.sum() < 2:
        return {m: float("nan") for m in METRICS}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # degenerate cases give NaN/inf quietly
        return _scores(sim[ok], obs[ok], anomaly)


def _scores(sim: np.ndarray, obs: np.ndarray, anomaly: bool) -> dict[str, float]:
    s, o = sim.astype(np.float64), obs.astype(np.float64)
    err = s - o
    var_o = np.var(o)
    nse = 1 - np.mean(err**2) / var_o if var_o > 0 else float("nan")
    std_s, std_o = np.std(s), np.std(o)
    r = float(np.corrcoef(s, o)[0, 1]) if std_s > 0 and std_o > 0 else float("nan")
    alpha = std_s / std_o if std_o > 0 else float("nan")
    mean_o = np.mean(o)
    beta = np.mean(s) / mean_o if mean_o != 0 and not anomaly else float("nan")
    bias_term = 0.0 if anomaly else (beta - 1) ** 2
    kge = 1 - np.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + bias_term)
    return {"nse": float(nse), "kge": float(kge), "r": float(r), "alpha": float(alpha), "beta": float(beta),
            "bias": float(np.mean(err)), "rmse": float(np.sqrt(np.mean(err**2)))}


def median_metrics(per_basin: dict[str, dict[str, float]]) -> dict[str, float]:
    """Median over basins of each metric (NaN-aware)."""
    out = {}
    for m in METRICS:
        vals = np.array([b[m] for b in per_basin.values()], dtype=np.float64)
        out[m] = float(np.nanmedian(vals)) if np.isfinite(vals).any() else float("nan")
    return out
