"""Figures of ``rootzone report`` (matplotlib, Agg backend, PNG). Each function writes one file and returns
its path. S_max in mm; Q and ET in mm/d; SWE and TWSA in mm."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rootzone.data.schema import TARGET_UNITS  # noqa: E402

MONTHS = "JFMAMJJASOND"
TITLES = {"q": "streamflow Q", "et": "evapotranspiration ET", "swe": "snow water equivalent SWE",
          "twsa": "TWS anomaly"}


def _text(label: object) -> str:
    """A basin id or attribute name as literal figure text: ``$`` escaped (no mathtext, whose parse errors
    would abort the report) and a leading ``_`` kept visible (matplotlib hides legend labels starting so)."""
    text = str(label).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def hydrograph(path: Path, basin: str, time: pd.DatetimeIndex, obs_q: np.ndarray, members_q: np.ndarray,
               mean_q: np.ndarray, s: np.ndarray, smax: np.ndarray, years: int = 3) -> Path:
    """Last ``years`` years of one basin: observed Q vs ensemble mean with the member range [M, T], and the
    ensemble-mean root zone storage S with its capacity S_max."""
    keep = time >= time[-1] - pd.DateOffset(years=years)
    t = time[keep]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ax1.fill_between(t, np.nanmin(members_q[:, keep], 0), np.nanmax(members_q[:, keep], 0), color="tab:blue",
                     alpha=0.25, lw=0, label="member range")
    ax1.plot(t, mean_q[keep], color="tab:blue", lw=1, label="ensemble mean")
    ax1.plot(t, obs_q[keep], color="k", lw=0.7, label="observed")
    ax1.set_ylabel("Q (mm/d)")
    ax1.set_title(f"basin {_text(basin)}")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.plot(t, s[keep], color="tab:green", lw=1, label="S (ensemble mean)")
    ax2.plot(t, smax[keep], color="tab:brown", lw=1, label="S_max (ensemble mean)")
    ax2.set_ylabel("storage (mm)")
    ax2.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def seasonal_cycle(path: Path, seasonal: dict[str, dict[str, np.ndarray]]) -> Path:
    """Mean seasonal cycle over basins (line: median, band: 25-75 %) of observed vs modelled targets."""
    targets = list(seasonal)
    fig, axes = plt.subplots(1, len(targets), figsize=(3.6 * len(targets), 3.4), squeeze=False)
    x = np.arange(1, 13)
    for ax, t in zip(axes[0], targets):
        for key, colour in (("obs", "k"), ("model", "tab:blue")):
            v = seasonal[t][key]
            ax.plot(x, np.nanmedian(v, axis=0), color=colour, label="observed" if key == "obs" else "model (CV)")
            ax.fill_between(x, np.nanpercentile(v, 25, axis=0), np.nanpercentile(v, 75, axis=0), color=colour,
                            alpha=0.15, lw=0)
        ax.set_xticks(x, list(MONTHS))
        ax.set_title(TITLES[t], fontsize=10)
        ax.set_ylabel(TARGET_UNITS[t])
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def smax_distribution(path: Path, smax: np.ndarray, spread: np.ndarray | None = None) -> Path:
    """Histogram of basin S_max (mm); with ``spread``, the member std of each basin against its S_max."""
    n = 2 if spread is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.6), squeeze=False)
    ax = axes[0][0]
    ok = smax[np.isfinite(smax)]
    ax.hist(ok, bins=max(5, min(40, len(ok) // 2)), color="tab:brown", alpha=0.8)
    ax.set_xlabel("S_max (mm)")
    ax.set_ylabel("basins")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"S_max across {len(ok)} basins (median {np.median(ok):.0f} mm)", fontsize=10)
    if spread is not None:
        axes[0][1].scatter(smax, spread, s=12, color="tab:brown")
        axes[0][1].set_xlabel("S_max (mm)")
        axes[0][1].set_ylabel("std over members (mm)")
        axes[0][1].set_title("ensemble spread of S_max", fontsize=10)
    return _save(fig, path)


def smax_vs_attributes(path: Path, smax: np.ndarray, attributes: pd.DataFrame) -> Path:
    """S_max against each attribute (aridity first), Spearman rank correlation in the titles."""
    cols = sorted(attributes.columns, key=lambda c: (c != "aridity", c))
    ncol = min(3, len(cols))
    nrow = -(-len(cols) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.2 * nrow), squeeze=False)
    for ax, c in zip(axes.flat, cols):
        x = attributes[c].to_numpy(dtype=float)
        ax.scatter(x, smax, s=12, color="tab:brown")
        rho = pd.Series(x).rank().corr(pd.Series(smax).rank())  # Spearman without scipy
        ax.set_xscale("log" if c == "aridity" and (x > 0).all() else "linear")
        ax.set_title(f"{_text(c)} (Spearman {rho:.2f})", fontsize=9)
        ax.set_ylabel("S_max (mm)")
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    return _save(fig, path)


def smax_seasonal(path: Path, relative: np.ndarray, basins: list[str], highlight: list[str]) -> Path:
    """S_max by calendar month relative to each basin's mean ([N, 12]): median and 10-90 % over basins."""
    x = np.arange(1, 13)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.fill_between(x, np.nanpercentile(relative, 10, 0), np.nanpercentile(relative, 90, 0), color="tab:brown",
                    alpha=0.2, lw=0, label="10-90 % of basins")
    ax.plot(x, np.nanmedian(relative, 0), color="tab:brown", lw=2, label="median")
    for b in highlight:
        if b in basins:
            ax.plot(x, relative[basins.index(b)], lw=0.8, label=_text(b))
    ax.axhline(1, color="grey", lw=0.5)
    ax.set_xticks(x, list(MONTHS))
    ax.set_ylabel("S_max / basin mean (-)")
    ax.set_title("seasonal dynamics of S_max", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def smax_map(path: Path, lon: np.ndarray, lat: np.ndarray, smax: np.ndarray) -> Path:
    """Basins at their (longitude, latitude), coloured by S_max (mm)."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    sc = ax.scatter(lon, lat, c=smax, s=25, cmap="YlOrBr", edgecolor="k", linewidth=0.3)
    fig.colorbar(sc, ax=ax, label="S_max (mm)")
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")
    ax.set_title("S_max per basin", fontsize=10)
    return _save(fig, path)


def cv_skill(path: Path, table: pd.DataFrame, metric: str = "nse") -> Path:
    """Test-split ``metric`` per basin for each fold (box over basins and seeds), one panel per target."""
    test = table[table["split"] == "test"]
    targets = sorted(test["target"].unique(), key=lambda t: list(TARGET_UNITS).index(t) if t in TARGET_UNITS else 9)
    fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3.4), squeeze=False)
    for ax, t in zip(axes[0], targets):
        sub = test[test["target"] == t]
        folds = sorted(sub["fold"].unique())
        data = [sub.loc[sub["fold"] == f, metric].dropna().clip(lower=-1).to_numpy() for f in folds]
        ax.boxplot(data, tick_labels=[str(f) for f in folds])
        ax.set_xlabel("fold")
        ax.set_title(f"{TITLES.get(t, t)}", fontsize=9)
        ax.set_ylabel(f"test {metric.upper()} (clipped at -1)")
    return _save(fig, path)


def smax_truth(path: Path, true_smax: np.ndarray, learned: np.ndarray) -> Path:
    """Twin experiment: learned vs true mean S_max per basin, with the 1:1 line and Pearson r."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.scatter(true_smax, learned, s=16, color="tab:brown")
    lo = float(np.nanmin([true_smax.min(), learned.min()]))
    hi = float(np.nanmax([true_smax.max(), learned.max()]))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    r = np.corrcoef(true_smax, learned)[0, 1] if len(learned) > 2 else float("nan")
    ax.set_xlabel("true S_max (mm)")
    ax.set_ylabel("learned S_max (mm)")
    ax.set_title(f"twin experiment: Pearson r = {r:.2f}", fontsize=10)
    return _save(fig, path)
