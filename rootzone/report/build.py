"""``rootzone report``: metrics tables, figures and an index.html for an experiment folder.

Always (from the trials' metrics.json and the experiment's store): ``metrics_members.csv`` (one row per
fold, seed, basin, split, target; the columns of ensemble_metrics.csv), ``metrics_basins.csv`` (per basin and
target on the test split: member medians, and with predictions the metrics of the cross-validated ensemble
series), cross-validation skill per fold, S_max distribution, S_max against attributes, a lat/lon map of
S_max (when the attributes hold latitude and longitude) and, for a twin-experiment store (``true_smax``),
learned vs true S_max. S_max per basin then is the mean over trials of metrics.json ``smax_mean``.

With ``--predictions PRED.zarr`` (a complete store from ``rootzone predict``; the report does not run the
prediction itself, so the expensive step stays explicit and reusable) also: hydrographs of chosen basins,
the mean seasonal cycle of Q/ET/SWE/TWSA (observed vs cross-validated model), S_max seasonal dynamics, and
S_max per basin from the predictions (time mean after spin-up of the ensemble mean).
"""

from __future__ import annotations

import hashlib
import html
from pathlib import Path

import numpy as np
import pandas as pd

from rootzone.data.balance import describe, external_water_basins
from rootzone.data.schema import open_store
from rootzone.errors import RootzoneError
from rootzone.experiment import ExperimentDir
from rootzone.metrics import METRICS
from rootzone.report import ablation
from rootzone.report import figures as rf
from rootzone.report import maps as rm
from rootzone.report import predictions as rp
from rootzone.report import tables as rt
from rootzone.report import uncertainty as ru
from rootzone.safety import atomic_write_text


def make_report(experiment: str, out: str | Path, predictions: str | None = None,
                basins: list[str] | None = None, polygons: str | None = None, id_column: str | None = None) -> dict:
    """Write the report into ``out``; returns {"figures": [(file, caption)], "tables": [...], "skipped": [...],
    "notes": [...]} (notes: flags shown at the top of index.html, e.g. basins with more runoff than rain).

    Every input is read and checked before ``out`` is created, so a refusal writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RootzoneError(f"report folder '{out}' is a file; choose a folder")
    exp = ExperimentDir.open(experiment)
    trials = exp.trials()
    if not trials:
        raise RootzoneError(f"experiment '{experiment}' has no finished trial (trials/*/metrics.json)")
    table = rt.metrics_table(trials)
    pred = rp.open_predictions(predictions) if predictions else None
    unknown = [b for b in basins or [] if pred is not None and b not in set(map(str, pred["basin"].values))]
    if unknown:
        raise RootzoneError(f"--basins: {unknown} are not in the predictions")
    store_url = pred.attrs["source_store"] if pred is not None else exp.recorded_store()
    store = open_store(store_url) if store_url else None
    summary = rp.summarise_predictions(pred, trials) if pred is not None else None
    per_basin = rt.basin_table(table, summary.ensemble_metrics if summary else None)
    map_ids = summary.basins if summary is not None else sorted({b for t in trials for b in t.metrics.smax_mean})
    shapes = rm.read_polygons(polygons, map_ids, id_column) if polygons else None  # checked before writing
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(str(out / "metrics_members.csv"), rt.spreadsheet_safe(table).to_csv(index=False))
    atomic_write_text(str(out / "metrics_basins.csv"), rt.spreadsheet_safe(per_basin).to_csv(index=False))
    figures: list[tuple[str, str]] = []
    skipped: list[str] = []

    def add(path: Path, caption: str) -> None:
        figures.append((path.name, caption))

    add(rf.cv_skill(out / "cv_skill.png", table), "Test NSE per basin for each fold (box over basins and seeds).")
    if summary is not None:
        ids, smax, spread = summary.basins, summary.smax, summary.smax_member_std
        source = "predictions: time mean after spin-up of the ensemble-mean S_max"
    else:
        ids = sorted({b for t in trials for b in t.metrics.smax_mean})
        smax = np.array([np.nanmean([t.metrics.smax_mean.get(b, np.nan) for t in trials]) for b in ids])
        spread, source = None, "mean over trials of each trial's whole-record mean S_max (metrics.json)"
    has_smax = bool(np.isfinite(np.asarray(smax, dtype=np.float64)).any())
    if has_smax:
        add(rf.smax_distribution(out / "smax_distribution.png", smax, spread), f"S_max across basins ({source}).")
    else:
        skipped.append("S_max figures: no member has buckets (plain LSTM members only)")
    if store is not None and has_smax:
        att = pd.DataFrame(store["attributes"].sel(basin=ids).values, index=ids,
                           columns=[str(a) for a in store["attribute"].values])
        add(rf.smax_vs_attributes(out / "smax_vs_attributes.png", smax, att),
            "S_max against each basin attribute (aridity = PET/P first).")
        figures.append(rm.smax_map(out, ids, smax, spread, att, shapes))
        if "true_smax" in store:
            spin = int(pred.attrs.get("warmup_days", 0)) if pred is not None else 0
            truth = store["true_smax"].sel(basin=ids).isel(time=slice(spin, None)).mean("time").values
            add(rf.smax_truth(out / "smax_truth.png", truth, smax), "Twin experiment: learned vs true S_max.")
    elif has_smax:  # no store: the S_max map (on --polygons, else a ranked plot) without attributes
        figures.append(rm.smax_map(out, ids, smax, spread, None, shapes))
        skipped.append("S_max vs attributes, truth: experiment.json names no store")
    elif store is None:
        skipped.append("S_max vs attributes, map, truth: experiment.json names no store")
    extra_tables = ablation.add_to_report(out, trials, add, skipped)
    if not (sets := rt.component_table(trials)).empty:  # components > 1: each bucket set's S_max and share
        atomic_write_text(str(out / "smax_components.csv"), rt.spreadsheet_safe(sets).to_csv(index=False))
        extra_tables.append("smax_components.csv")
    if summary is not None:
        chosen = basins or rt.representative_basins(per_basin[per_basin["basin"].isin(ids)]) or ids[:3]
        used: set[str] = set()
        for b in dict.fromkeys(chosen):
            add(_hydrograph(out, pred, store, b, figure_stem("hydrograph", b, used)),
                f"Basin {b}: observed vs ensemble Q, and S with S_max.")
        add(rf.seasonal_cycle(out / "seasonal_cycle.png", summary.seasonal),
            "Mean seasonal cycle over basins (median, 25-75 %): observed vs cross-validated ensemble "
            "(each day from the members that did not train on it); TWSA as anomalies.")
        if has_smax:
            add(rf.smax_seasonal(out / "smax_seasonal.png", summary.smax_month, ids, chosen),
                "Seasonal dynamics of S_max: calendar-month mean relative to each basin's mean.")
    else:
        skipped.append("hydrographs, seasonal cycles, S_max seasonal dynamics: pass --predictions PRED.zarr "
                       "(from `rootzone predict`)")
    tables = ["metrics_members.csv", "metrics_basins.csv", *extra_tables]
    u_figures, u_tables, extra, u_skipped = ru.add_uncertainty(out, pred, trials)
    figures, tables, skipped = figures + u_figures, tables + u_tables, skipped + u_skipped
    extra.insert(0, "<h2>Skill by cross-validation scheme</h2><p>temporal = gauged basins in unseen years; "
                 "spatial = basins never seen in training (ungauged)</p>"
                 + rt.scheme_table(table, trials, store).round(3).to_html())
    notes = [describe(flagged)] if store is not None and (flagged := external_water_basins(store)) else []
    _write_index(out, experiment, predictions, table, per_basin, figures, tables, skipped, notes, extra)
    return {"figures": figures, "tables": tables, "skipped": skipped, "notes": notes}


def figure_stem(prefix: str, basin: str, used: set[str]) -> str:
    """A file name stem for a figure of ``basin`` that is portable and unique within the report: ``prefix_id``
    when the id is already a safe name (ASCII letters, digits, ``-``, ``_``), else the id made safe plus a short
    hash of the id (so ``a/b`` and ``a_b`` never share a file). ``used`` holds the stems taken so far (compared
    case-insensitively, for case-insensitive file systems) and is updated."""
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "_" for c in basin)[:64]
    stem = f"{prefix}_{safe}"
    if safe != basin or stem.lower() in used:
        digest = hashlib.sha256(basin.encode("utf-8", "surrogatepass")).hexdigest()
        stem = next(f"{prefix}_{safe}_{digest[:n]}" for n in range(8, 65, 8)
                    if f"{prefix}_{safe}_{digest[:n]}".lower() not in used)
    used.add(stem.lower())
    return stem


def _hydrograph(out: Path, pred, store, basin: str, stem: str) -> Path:
    p = pred.sel(basin=basin)
    time = pd.DatetimeIndex(pred["time"].values)
    obs = store["q"].sel(basin=basin).values if "q" in store else np.full(len(time), np.nan)
    nan = np.full(len(time), np.nan)  # a plain-LSTM-only prediction has no S, S_max
    return rf.hydrograph(out / f"{stem}.png", basin, time, obs, p["q"].values, p["q_mean"].values,
                         p["s_mean"].values if "s_mean" in p else nan,
                         p["smax_mean"].values if "smax_mean" in p else nan)


def _write_index(out: Path, experiment: str, predictions: str | None, table: pd.DataFrame,
                 per_basin: pd.DataFrame, figures: list[tuple[str, str]], tables: list[str],
                 skipped: list[str], notes: list[str] | None = None, extra: list[str] | None = None) -> None:
    test = table[table["split"] == "test"]
    med = test.groupby("target")[list(METRICS)].median()
    parts = [f"<h1>rootzone report</h1><p>experiment <code>{html.escape(experiment)}</code>; "
             f"{test['member'].nunique()} trials, {test['basin'].nunique()} basins; predictions "
             f"<code>{html.escape(predictions or 'none')}</code></p>",
             *(f"<p><b>Flag:</b> {html.escape(n)}</p>" for n in notes or []),
             "<h2>Test skill (median over basins and trials)</h2>", med.round(3).to_html()]
    if any(c.startswith("ensemble_") for c in per_basin.columns):
        ens = per_basin.groupby("target")[[f"ensemble_{m}" for m in METRICS]].median()
        parts += ["<h2>Cross-validated ensemble (median over basins)</h2>", ens.round(3).to_html()]
    parts += extra or []
    parts.append("<h2>Tables</h2><ul>" + "".join(f'<li><a href="{t}">{t}</a></li>' for t in tables) + "</ul>")
    parts.append("<h2>Figures</h2>")
    for name, caption in figures:
        parts.append(f'<figure><img src="{name}" style="max-width:100%"><figcaption>{html.escape(caption)}'
                     "</figcaption></figure>")
    if skipped:
        parts.append("<h2>Not drawn</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in skipped) + "</ul>")
    atomic_write_text(str(out / "index.html"), "<!doctype html><html><head><meta charset='utf-8'><title>rootzone "
                      "report</title></head><body>" + "\n".join(parts) + "</body></html>\n")
