"""Synthetic twin-experiment store (`rootzone data demo`).

Basins get random attributes; forcing follows plausible seasonal climates (snowy winters where it is
cold); the *true* bucket parameters are smooth functions of the attributes and of the season; the
process model (float64 reference) turns forcing and true parameters into Q, ET, SWE and TWS; then
observation noise and realistic gaps are added. The true parameters and storages are stored as
``true_*`` variables so training can be scored on recovering them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr

from rootzone.data.schema import make_dataset, month_index, stack_forcing
from rootzone.physics.equations import PARAM_NAMES, run_buckets, spinup_state

ATTRIBUTES = ("aridity", "mean_temperature", "temperature_amplitude", "forest_fraction", "clay_fraction",
              "precipitation_seasonality", "elevation", "latitude", "longitude")


def random_attributes(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Random but internally consistent static attributes of ``n`` basins."""
    lat = rng.uniform(25, 65, n)
    elevation = rng.gamma(2.0, 400.0, n).clip(20, 3500)
    mean_t = 31 - 0.45 * lat - 0.0055 * elevation + rng.normal(0, 1.5, n)
    return pd.DataFrame(
        {
            "aridity": np.exp(rng.uniform(np.log(0.35), np.log(3.0), n)),  # PET / P, -
            "mean_temperature": mean_t,  # °C
            "temperature_amplitude": 4 + 0.2 * (lat - 25) + rng.uniform(0, 3, n),  # °C
            "forest_fraction": rng.beta(2, 2, n),  # -
            "clay_fraction": rng.uniform(0.05, 0.5, n),  # -
            "precipitation_seasonality": rng.uniform(-1, 1, n),  # + = summer-wet, - = winter-wet
            "elevation": elevation,  # m
            "latitude": lat,  # °N
            "longitude": rng.uniform(-125, 30, n),  # °E
        },
        index=[f"demo_{i:04d}" for i in range(n)],
    )


def synthetic_forcing(rng: np.random.Generator, att: pd.DataFrame, time: pd.DatetimeIndex) -> dict:
    """Daily P (mm/d), T (°C), PET (mm/d) and LAI (m²/m²), each [basin, time]."""
    n, nt = len(att), len(time)
    doy = time.day_of_year.to_numpy()[None, :]
    season = -np.cos(2 * np.pi * (doy - 15) / 365.25)  # -1 mid-January, +1 mid-July
    a = {k: att[k].to_numpy()[:, None] for k in att.columns}
    noise = np.zeros((n, nt))
    eps = rng.normal(0, 1.0, (n, nt))
    for t in range(1, nt):  # AR(1) weather anomaly, lag-1 correlation 0.7, sd ~2.5 °C
        noise[:, t] = 0.7 * noise[:, t - 1] + 1.8 * eps[:, t]
    temp = a["mean_temperature"] + a["temperature_amplitude"] * season + noise
    radiation = 1 + 0.6 * season
    pet = 0.09 * np.clip(temp + 8, 0, None) * radiation + 0.2
    pet_mean = pet.mean(axis=1, keepdims=True)
    p_mean = pet_mean / a["aridity"]
    wet_prob = np.clip(0.4 + 0.15 * a["precipitation_seasonality"] * season, 0.05, 0.95)
    seasonal_mean = p_mean * (1 + 0.5 * a["precipitation_seasonality"] * season)
    wet = rng.random((n, nt)) < wet_prob
    amount = rng.gamma(0.8, 1.0 / 0.8, (n, nt)) * seasonal_mean / wet_prob
    precip = np.where(wet, amount, 0.0)
    growing = 1 / (1 + np.exp(-(temp - 6) / 3))
    lai = 0.3 + (0.8 + 4.0 * a["forest_fraction"]) * growing
    return {"precipitation": precip, "temperature": temp, "pet": pet, "lai": lai}


def true_parameters(att: pd.DataFrame, time: pd.DatetimeIndex) -> np.ndarray:
    """True parameters [basin, time, 8] (PARAM_NAMES order, physical units), smooth in attributes and season."""
    a = {k: att[k].to_numpy()[:, None] for k in att.columns}
    doy = time.day_of_year.to_numpy()[None, :]
    season = np.sin(2 * np.pi * (doy - 100) / 365.25)
    ones = np.ones((1, len(time)))
    z = 1.6 * (a["forest_fraction"] - 0.5) / 0.22 + 1.2 * np.log(a["aridity"]) / 0.6
    smax = (40 + 560 / (1 + np.exp(-0.8 * z))) * (1 + 0.08 * season)  # roots grow in the warm season
    clay = a["clay_fraction"]
    params = {
        "smax": smax,
        "beta": (1.0 + 5.0 * clay) * ones,
        "fm": (2.0 + 2.5 * (1 - a["forest_fraction"])) * ones,
        "alpha": (0.75 + 0.2 * a["forest_fraction"]) * (1 + 0.05 * season),
        "lp": (0.3 + 0.6 * clay) * ones,
        "ci": (0.15 + 0.25 * a["forest_fraction"]) * ones,
        "fg": (0.75 - 0.9 * clay) * ones,
        "kg": (0.01 + 0.08 * (0.5 - clay)) * ones,
    }
    return np.stack([np.broadcast_to(params[k], smax.shape) for k in PARAM_NAMES], axis=-1)


def _gaps(rng: np.random.Generator, shape: tuple[int, int], frac: float, run_prob: float,
          max_run: int) -> np.ndarray:
    """Boolean mask of missing values: scattered points plus, for some basins, one long run."""
    miss = rng.random(shape) < frac
    for b in np.flatnonzero(rng.random(shape[0]) < run_prob):
        length = int(rng.integers(max_run // 4, max_run))
        start = int(rng.integers(0, max(1, shape[1] - length)))
        miss[b, start : start + length] = True
    return miss


def build_demo(basins: int = 64, years: int = 15, seed: int = 0, start: str = "2000-01-01") -> xr.Dataset:
    """The demo dataset (in memory): forcing, noisy gappy targets, attributes and the truth."""
    rng = np.random.default_rng(seed)
    att = random_attributes(rng, basins)
    t0 = pd.Timestamp(start)
    time = pd.date_range(t0, t0 + pd.DateOffset(years=years) - pd.Timedelta(days=1), freq="D")
    forcing = synthetic_forcing(rng, att, time)
    params = true_parameters(att, time)
    x = torch.from_numpy(stack_forcing(forcing)).double()
    p = torch.from_numpy(params).double()
    with torch.no_grad():
        # the storages on day 0 are spun up exactly as rootzone spins up every record (cycling the first year
        # until they change < 1 mm per cycle), so the true parameters reproduce the truth from day 0 on
        state0 = spinup_state(x[:, :365], p[:, :365])
        out = run_buckets(x, p, state0)
    q, et, w, s, g = (v.numpy() for v in out)
    tws = w + s + g

    shape = q.shape
    q_obs = q * np.exp(rng.normal(0, 0.08, shape)) + rng.normal(0, 0.01, shape).clip(0, None)
    et_obs = (et + rng.normal(0, 0.08, shape) * (0.2 + et)).clip(0, None)
    swe_obs = np.where(w > 0, w * np.exp(rng.normal(0, 0.05, shape)), 0.0)
    q_obs[_gaps(rng, shape, 0.03, 0.3, 240)] = np.nan
    et_obs[_gaps(rng, shape, 0.15, 0.2, 120)] = np.nan
    swe_obs[_gaps(rng, shape, 0.10, 0.2, 120)] = np.nan

    months = month_index(time)
    tws_monthly = pd.DataFrame(tws.T, index=time).resample("MS").mean().reindex(months).to_numpy().T
    twsa = tws_monthly - tws_monthly.mean(axis=1, keepdims=True)
    twsa = twsa + rng.normal(0, 4.0, twsa.shape)
    twsa[_gaps(rng, twsa.shape, 0.08, 0.0, 1)] = np.nan
    gap = slice(len(months) * 2 // 3, len(months) * 2 // 3 + 11)  # an 11-month mission gap, as GRACE had
    twsa[:, gap] = np.nan

    truth = {f"true_{k}": params[..., i] for i, k in enumerate(PARAM_NAMES)}
    truth.update({"true_s": s, "true_w": w, "true_g": g, "true_q": q, "true_et": et})
    extra = {
        name: xr.DataArray(arr.astype(np.float32), dims=("basin", "time"),
                           attrs={"role": "truth", "units": "mm" if name in ("true_s", "true_w", "true_g",
                                                                            "true_smax", "true_ci") else "1"})
        for name, arr in truth.items()
    }
    return make_dataset(
        basins=att.index, time=time, forcing=forcing,
        targets={"q": q_obs, "et": et_obs, "swe": swe_obs, "twsa": twsa},
        attributes=att, source=f"rootzone demo twin experiment (seed={seed})", extra=extra,
        attrs={"demo_seed": seed},
    )
