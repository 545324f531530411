"""Potential evaporation derived from temperature (and radiation) with ``pyet`` when a source has none.

``rootzone data caravan --pet-method METHOD``; inputs are one basin's daily series inside its forcing
record (no NaN), as pandas Series on a daily DatetimeIndex:

    oudin             Oudin et al. (2005): mean temperature (°C) and latitude
    hargreaves        Hargreaves & Samani (1982, Jensen's form): mean, min and max temperature (°C), latitude
    priestley-taylor  Priestley & Taylor (1972): mean temperature (°C), net radiation (W m-2 -> MJ m-2 d-1),
                      surface pressure (kPa) or elevation (m)

pyet takes latitude in radians and radiation in MJ m-2 d-1 and returns mm/d, clipped at 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PET_METHODS = ("oudin", "hargreaves", "priestley-taylor")
W_M2_TO_MJ_M2_D = 86400 / 1e6  # 1 W m-2 over a day = 0.0864 MJ m-2 d-1


def derive_pet(method: str, tmean: pd.Series, lat_deg: float, *, tmin: pd.Series | None = None,
               tmax: pd.Series | None = None, net_radiation_w_m2: pd.Series | None = None,
               pressure_kpa: pd.Series | None = None, elevation_m: float | None = None) -> np.ndarray:
    """Daily PET [T] (mm/d, float64) by ``method`` (one of :data:`PET_METHODS`)."""
    import pyet

    lat = float(np.deg2rad(lat_deg))
    if method == "oudin":
        pet = pyet.oudin(tmean, lat)
    elif method == "hargreaves":
        pet = pyet.hargreaves(tmean, tmax, tmin, lat)
    elif method == "priestley-taylor":
        rn = net_radiation_w_m2 * W_M2_TO_MJ_M2_D
        pet = pyet.priestley_taylor(tmean, rn=rn, pressure=pressure_kpa,
                                    elevation=None if pressure_kpa is not None else elevation_m)
    else:
        raise ValueError(f"unknown PET method {method!r} (known: {', '.join(PET_METHODS)})")
    return np.asarray(pet, dtype=np.float64)
