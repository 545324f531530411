"""The S_max map of ``rootzone report``: on the basin polygons when the user gives them (``--polygons``),
else points at the basins' coordinates (attributes ``latitude``/``longitude`` or ``gauge_lat``/``gauge_lon``),
else a ranked plot of S_max per basin."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rootzone.predict.export import read_polygons  # noqa: E402, F401 (re-exported for report/build.py)
from rootzone.report import figures as rf  # noqa: E402

COORDINATES = (("longitude", "latitude"), ("gauge_lon", "gauge_lat"))  # (x, y) attribute pairs, first found wins


def polygon_map(path: Path, polygons, smax: np.ndarray) -> Path:
    """Basin polygons (GeoDataFrame in the order of ``smax``) coloured by S_max (mm)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    polygons.assign(smax=smax).plot(column="smax", ax=ax, cmap="YlOrBr", edgecolor="k", linewidth=0.3,
                                    legend=True, legend_kwds={"label": "S_max (mm)"},
                                    missing_kwds={"color": "lightgrey"})
    ax.set_title("S_max per basin", fontsize=10)
    return rf._save(fig, path)


def ranked(path: Path, ids: list[str], smax: np.ndarray, spread: np.ndarray | None) -> Path:
    """S_max per basin in ascending order (with the ensemble spread as error bars)."""
    order = np.argsort(smax)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    x = np.arange(len(order))
    ax.errorbar(x, smax[order], yerr=None if spread is None else spread[order], fmt="o", ms=3, capsize=2)
    if len(order) <= 40:
        ax.set_xticks(x, [rf._text(ids[i]) for i in order], rotation=90, fontsize=7)
    ax.set_xlabel("basin (ranked)")
    ax.set_ylabel("S_max (mm)")
    ax.set_title("S_max per basin (no polygons or coordinates)", fontsize=10)
    return rf._save(fig, path)


def smax_map(out: Path, ids: list[str], smax: np.ndarray, spread: np.ndarray | None,
             attributes: pd.DataFrame | None, polygons=None) -> tuple[str, str]:
    """Draw ``out/smax_map.png`` the best way the inputs allow; returns (file, caption)."""
    path = out / "smax_map.png"
    if polygons is not None:
        polygon_map(path, polygons, smax)
        return path.name, "S_max per basin on the basin polygons (--polygons)."
    for x, y in COORDINATES:
        if attributes is not None and {x, y} <= set(attributes.columns):
            rf.smax_map(path, attributes[x].to_numpy(), attributes[y].to_numpy(), smax)
            return path.name, f"S_max per basin at its location (attributes {y}/{x})."
    ranked(path, ids, smax, spread)
    return path.name, "S_max per basin, ranked (no polygons given and no coordinates among the attributes)."
