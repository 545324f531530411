"""Hybrid vs plain LSTM (issue 14): the skill of each kind of member (``Config.model``) per basin and target,
and the difference, from the trials' metrics.json (test split).

Per basin, target and kind: the median over that kind's members of NSE and KGE; ``diff_<m>`` = hybrid minus
LSTM (> 0: the hybrid is better). Per target (:func:`ablation_summary`): the median over basins of each kind's
value and of the difference, and in how many basins the hybrid is better. ``rootzone report`` writes
``ablation.csv`` and ``ablation.png`` (:func:`add_to_report`); ``rootzone ensemble`` puts the summary into
EXP/summary.json under ``ablation``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rootzone.experiment import TrialResult

KINDS = ("hybrid", "lstm")
SKILL = ("nse", "kge")


def kind_table(trials: list[TrialResult], split: str = "test") -> pd.DataFrame:
    """One row per basin and target: ``<m>_hybrid``, ``<m>_lstm`` (median over that kind's members) and
    ``diff_<m>`` (hybrid - LSTM) for m in NSE, KGE, and the member counts ``members_<kind>``. Empty when the
    trials do not hold both kinds."""
    rows = []
    for t in trials:
        for target, entry in t.metrics.splits.get(split, {}).items():
            for basin, scores in entry.get("basins", {}).items():
                rows.append({"kind": t.metrics.model, "basin": basin, "target": target,
                             **{m: scores.get(m, np.nan) for m in SKILL}})
    frame = pd.DataFrame(rows, columns=["kind", "basin", "target", *SKILL])
    if not set(KINDS) <= set(frame["kind"]):
        return pd.DataFrame()
    med = frame.groupby(["basin", "target", "kind"])[list(SKILL)].median().unstack("kind")
    out = pd.DataFrame(index=med.index)
    for m in SKILL:
        for k in KINDS:
            out[f"{m}_{k}"] = med[(m, k)]
        out[f"diff_{m}"] = out[f"{m}_hybrid"] - out[f"{m}_lstm"]
    counts = frame.groupby(["basin", "target", "kind"]).size().unstack("kind")
    for k in KINDS:
        out[f"members_{k}"] = counts[k].fillna(0).astype(int)
    return out.reset_index()


def ablation_summary(trials: list[TrialResult], split: str = "test") -> dict[str, Any]:
    """{target: {"nse_hybrid", "nse_lstm", "diff_nse" (medians over basins), the same for KGE,
    "basins", "hybrid_better_nse" (basins where the hybrid's NSE is higher), "per_basin": {basin: {...}}}};
    empty when the trials do not hold both kinds."""
    table = kind_table(trials, split)
    if table.empty:
        return {}
    out: dict[str, Any] = {}
    cols = [f"{m}_{k}" for m in SKILL for k in KINDS] + [f"diff_{m}" for m in SKILL]
    for target, rows in table.groupby("target"):
        entry: dict[str, Any] = {c: _nanmedian(rows[c]) for c in cols}
        entry["basins"] = int(len(rows))
        entry["hybrid_better_nse"] = int((rows["diff_nse"] > 0).sum())
        entry["per_basin"] = {str(r["basin"]): {c: _float(r[c]) for c in cols} for _, r in rows.iterrows()}
        out[str(target)] = entry
    return out


def add_to_report(out: Path, trials: list[TrialResult], add: Callable[[Path, str], None], skipped: list[str]
                  ) -> list[str]:
    """Write ``ablation.csv`` and ``ablation.png`` into the report folder ``out`` when the trials hold both
    kinds (``add`` registers the figure; ``skipped`` is for a figure that could not be drawn); returns the tables
    written (none for an experiment of one kind)."""
    from rootzone.report.tables import spreadsheet_safe
    from rootzone.safety import atomic_write_text

    table = kind_table(trials)
    if table.empty:  # one kind only: nothing to compare (not worth a "not drawn" line)
        return []
    atomic_write_text(str(out / "ablation.csv"), spreadsheet_safe(table).to_csv(index=False))
    add(ablation_figure(out / "ablation.png", table),
        "Hybrid vs plain LSTM: test NSE per basin of each kind (median over its members; above the diagonal the "
        "hybrid is better), and the per-basin difference hybrid - LSTM.")
    return ["ablation.csv"]


def ablation_figure(path: Path, table: pd.DataFrame) -> Path:
    """Per target: LSTM NSE (x) vs hybrid NSE (y) per basin with the 1:1 line (top), and the sorted per-basin
    NSE difference hybrid - LSTM (bottom)."""
    from rootzone.report.figures import TITLES, _save, plt

    targets = list(dict.fromkeys(table["target"]))
    fig, axes = plt.subplots(2, len(targets), figsize=(3.4 * len(targets), 6.4), squeeze=False)
    for i, t in enumerate(targets):
        rows = table[table["target"] == t]
        x, y = rows["nse_lstm"].to_numpy(float), rows["nse_hybrid"].to_numpy(float)
        ax = axes[0][i]
        ax.scatter(x, y, s=14, color="tab:purple")
        ok = np.isfinite(x) & np.isfinite(y)
        lo = float(min(np.min(x[ok]), np.min(y[ok]), 0.0)) if ok.any() else 0.0
        ax.plot([lo, 1], [lo, 1], color="k", lw=0.7)
        ax.set_xlabel("LSTM NSE")
        ax.set_ylabel("hybrid NSE")
        ax.set_title(TITLES.get(t, t), fontsize=10)
        diff = np.sort(rows["diff_nse"].to_numpy(float))
        axes[1][i].bar(np.arange(len(diff)), diff, color=np.where(diff > 0, "tab:green", "tab:red"))
        axes[1][i].axhline(0, color="k", lw=0.7)
        axes[1][i].set_ylabel("NSE hybrid - LSTM")
        axes[1][i].set_xlabel("basins (sorted)")
    return _save(fig, path)


def _float(x: Any) -> float:
    return float(x) if x is not None and np.isfinite(x) else float("nan")


def _nanmedian(values: Any) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmedian(arr)) if np.isfinite(arr).any() else float("nan")
