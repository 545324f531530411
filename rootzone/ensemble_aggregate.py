"""Aggregation of an ensemble experiment: every member's metrics.json into one table, the ensemble mean
prediction of each fold (mean over its seeds' best checkpoints) scored on the fold's test years, and a summary.

``EXP/ensemble_metrics.csv|.parquet``: one row per fold, seed, basin, split, target with the columns of
:data:`rootzone.metrics.METRICS`. ``EXP/summary.json``: median test NSE/KGE per target across members (each
member's median over basins) and for the ensemble mean (median over folds of its median over basins).
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from rootzone.config import Config
from rootzone.data.loader import Normaliser
from rootzone.ensemble_store import ExperimentDir, trial_name
from rootzone.loss import anomalies, monthly_mean
from rootzone.metrics import METRICS, basin_metrics, median_metrics
from rootzone.predict import load_checkpoint_bytes

COLUMNS = ["fold", "seed", "basin", "split", "target", *METRICS]
TRIAL_RE = re.compile(r"^fold(\d+)_seed(\d+)$")


def member_metrics(exp: ExperimentDir, folds: int, seeds: list[int]) -> tuple[dict[tuple[int, int], dict], list]:
    """metrics.json of every (fold, seed) of the experiment that has one, and the names of those missing."""
    found, missing = {}, []
    for f in range(folds):
        for s in seeds:
            name = trial_name(f, s)
            if exp.exists("trials", name, "metrics.json"):
                found[(f, s)] = json.loads(exp.read_text("trials", name, "metrics.json"))
            else:
                missing.append(name)
    return found, missing


def metrics_table(members: dict[tuple[int, int], dict]) -> pd.DataFrame:
    rows = []
    for (fold, seed), m in sorted(members.items()):
        for split, per_target in m["splits"].items():
            for target, entry in per_target.items():
                for basin, scores in entry["basins"].items():
                    rows.append([fold, seed, basin, split, target, *(scores[k] for k in METRICS)])
    return pd.DataFrame(rows, columns=COLUMNS)


def ensemble_mean_scores(exp: ExperimentDir, store: str, members: dict[tuple[int, int], dict],
                         device: str = "cpu", chunk: int = 256) -> dict[int, dict[str, dict[str, dict]]]:
    """fold -> target -> basin -> metrics of the mean prediction of the fold's members on its test years."""
    from rootzone.train import build

    out: dict[int, dict[str, dict[str, dict]]] = {}
    for fold in sorted({f for f, _ in members}):
        built = []
        for seed in sorted(s for f, s in members if f == fold):
            path = exp.join("trials", trial_name(fold, seed), "best.pt")
            with exp.fs.open_input_stream(path) as fh:
                best = load_checkpoint_bytes(fh.read(), path)  # weights_only=True: a hostile file runs no code
            values = {**best["config"], "store": store, "device": device, "progress": False}
            if values.get("physics") == "fused" and device != "cuda":
                values["physics"] = "auto"
            data, model, dev = build(Config.from_dict(values), Normaliser.from_dict(best["normaliser"]))
            model.load_state_dict(best["model"])
            model.eval()
            built.append((data, model, dev))
        out[fold] = _score_mean(built, chunk)
    return out


def _score_mean(built: list, chunk: int) -> dict[str, dict[str, dict]]:
    data0 = built[0][0]
    per: dict[str, dict[str, dict]] = {t: {} for t in data0.targets}
    with torch.no_grad():
        for lo in range(0, data0.n_basins, chunk):
            basins = np.arange(lo, min(lo + chunk, data0.n_basins))
            sums: dict[str, torch.Tensor] = {}
            for data, model, dev in built:
                batch = data.load(basins, 0, data.n_days).to(dev)
                o = model(batch.x_dynamic, batch.x_static, batch.forcing).buckets
                for k, v in {"q": o.q, "et": o.et, "swe": o.w, "tws": o.tws}.items():
                    sums[k] = sums.get(k, 0.0) + v.double().cpu() / len(built)
            batch = batch.to(torch.device("cpu"))
            day_mask, month_mask = data0.masks(batch, "test", data0.cfg.warmup_days)
            for t in data0.targets:
                obs = batch.obs[t].double()
                if t == "twsa":
                    sim, obs, valid = anomalies(monthly_mean(sums["tws"], batch.day_month, obs.shape[1]), obs,
                                                month_mask)
                else:
                    sim, valid = sums[t], torch.isfinite(obs) & day_mask[None, :]
                obs = torch.where(valid, obs, torch.full_like(obs, float("nan")))
                for i, b in enumerate(basins):
                    per[t][str(data0.basin_ids[b])] = basin_metrics(sim[i].numpy(), obs[i].numpy(),
                                                                    anomaly=t == "twsa")
    return per


def summarise(members: dict[tuple[int, int], dict], mean_scores: dict | None, missing: list[str]) -> dict[str, Any]:
    """Median test NSE/KGE per target across members (and across folds for the ensemble mean)."""
    targets = sorted({t for m in members.values() for t in m["splits"]["test"]})
    summary: dict[str, Any] = {"members": {}, "ensemble_mean": {}, "n_members": len(members),
                               "trials": [trial_name(f, s) for f, s in sorted(members)], "missing": missing}
    for t in targets:
        summary["members"][t] = {k: _nanmedian([m["splits"]["test"][t]["median"][k] for m in members.values()
                                                if t in m["splits"]["test"]]) for k in ("nse", "kge")}
        if mean_scores:
            per_fold = [median_metrics(scores[t]) for scores in mean_scores.values() if t in scores]
            summary["ensemble_mean"][t] = {k: _nanmedian([p[k] for p in per_fold]) for k in ("nse", "kge")}
    return summary


def write_outputs(exp: ExperimentDir, table: pd.DataFrame, summary: dict[str, Any]) -> None:
    exp.write_text(table.to_csv(index=False), "ensemble_metrics.csv")
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    exp.write_bytes(buf.getvalue(), "ensemble_metrics.parquet")
    exp.write_text(json.dumps(summary, indent=1, allow_nan=True), "summary.json")


def print_ensemble_summary(summary: dict[str, Any], title: str, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=title)
    table.add_column("target")
    for col in ("members NSE", "members KGE", "ens. mean NSE", "ens. mean KGE"):
        table.add_column(col, justify="right")
    for t, m in summary["members"].items():
        e = summary["ensemble_mean"].get(t, {})
        table.add_row(t, *(f"{v:.3f}" for v in (m["nse"], m["kge"], e.get("nse", np.nan), e.get("kge", np.nan))))
    console.print(table)
    if summary["missing"]:
        console.print(f"[yellow]missing trials ({len(summary['missing'])}): {', '.join(summary['missing'])}")


def _nanmedian(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmedian(arr)) if np.isfinite(arr).any() else float("nan")
