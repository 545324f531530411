"""Tables behind ``rootzone report``: per-trial metrics from the trials' metrics.json (read through
:class:`rootzone.experiment.ExperimentDir`), per-basin summaries, and spreadsheet-safe CSV cells."""

from __future__ import annotations

import pandas as pd

from rootzone.ensemble.aggregate import heldout_smax
from rootzone.evaluation import recovery_figures
from rootzone.experiment import TrialResult, metrics_rows
from rootzone.metrics import METRICS

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula


def metrics_table(trials: list[TrialResult]) -> pd.DataFrame:
    """One row per fold, seed, member, basin, split, target with the columns of METRICS (like
    ensemble_metrics.csv, plus the member name)."""
    return pd.DataFrame(metrics_rows(trials))


def spreadsheet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` whose text cells (basin ids, ...) cannot be read as spreadsheet formulas: a cell that
    starts with one of :data:`FORMULA_PREFIXES` gets a leading ``'`` (numeric columns are untouched)."""
    out = table.copy()
    for col in out.columns:
        if not (pd.api.types.is_object_dtype(out[col]) or pd.api.types.is_string_dtype(out[col])):
            continue
        out[col] = out[col].map(lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_PREFIXES) else v)
    return out


def basin_table(table: pd.DataFrame, ensemble: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per basin and target on the test split: median over members of each metric (``member_<m>``), the number
    of members, and (with predictions) the metrics of the cross-validated ensemble series (``ensemble_<m>``)."""
    test = table[table["split"] == "test"]
    out = test.groupby(["basin", "target"])[list(METRICS)].median().add_prefix("member_")
    out["members"] = test.groupby(["basin", "target"]).size()
    if ensemble is not None and len(ensemble):
        out = out.join(ensemble.set_index(["basin", "target"]).add_prefix("ensemble_"), how="outer")
    return out.reset_index()


def component_table(trials: list[TrialResult]) -> pd.DataFrame:
    """Trials with ``components`` > 1: one row per trial, basin and bucket set with its mean S_max (mm) and
    area share (metrics.json ``smax_components``, ``component_weights``), and the basin's weighted capacity
    ``smax_weighted`` (metrics.json ``smax_mean``). Empty when no trial has several sets."""
    rows = []
    for t in trials:
        m = t.metrics
        for basin, sets in m.smax_components.items():
            for k, (smax, share) in enumerate(zip(sets, m.component_weights.get(basin, []))):
                rows.append({"member": t.name, "fold": t.fold, "seed": t.seed, "basin": basin, "component": k,
                             "smax": smax, "weight": share, "smax_weighted": m.smax_mean.get(basin)})
    return pd.DataFrame(rows)


def representative_basins(basins: pd.DataFrame, n: int = 3) -> list[str]:
    """Basins at the best, median and worst test NSE of Q (member median); the first ``n`` basins otherwise."""
    q = basins[basins["target"] == "q"].dropna(subset=["member_nse"]).sort_values("member_nse")
    ids = q["basin"].tolist()
    if len(ids) <= n:
        return ids or basins["basin"].drop_duplicates().tolist()[:n]
    picks = [ids[-1], ids[len(ids) // 2], ids[0]] + ids[1 : n - 2] if n >= 3 else ids[-n:]
    return list(dict.fromkeys(picks))[:n]


SCHEME_LABEL = {"temporal": "gauged (temporal CV)", "spatial": "ungauged (spatial CV)",
                "spatiotemporal": "ungauged, unseen years (spatio-temporal CV)"}


def scheme_table(table: pd.DataFrame, trials: list[TrialResult], store=None) -> pd.DataFrame:
    """Gauged vs ungauged skill side by side: one column per cross-validation scheme among the trials, rows the
    median test NSE and KGE per target (over basins and trials) and, for a twin store, the S_max recovery of
    each basin from the members of that scheme that held it out (Pearson r, median |log ratio|, log slope)."""
    test = table[table["split"] == "test"]
    cols = {}
    for scheme in sorted(set(test.get("cv", pd.Series(["temporal"]))), key=list(SCHEME_LABEL).index):
        part = test[test["cv"] == scheme] if "cv" in test else test
        col = {f"{t} {m.upper()}": float(g[m].median()) for t, g in part.groupby("target") for m in ("nse", "kge")}
        members = [t for t in trials if t.metrics.scheme == scheme]
        if store is not None and "true_smax" in store:
            learned = heldout_smax(members)
            ids = [str(b) for b in store["basin"].values if str(b) in learned]
            if ids:
                truth = store["true_smax"].sel(basin=ids).mean("time").values
                rec = recovery_figures("smax", truth, pd.Series(learned)[ids].to_numpy())
                for k in ("smax_pearson_r", "smax_median_abs_log_ratio", "smax_log_slope"):
                    col[f"held-out {k}"] = rec.get(k, float("nan"))
        col["trials"] = len(members)
        cols[SCHEME_LABEL.get(scheme, scheme)] = col
    return pd.DataFrame(cols)
