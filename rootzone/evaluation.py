"""Evaluation: run every basin's whole record in one pass (states spun up), score each split's days
(months for TWSA anomalies) per basin and target, and compare with the truth of a twin experiment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from rich.console import Console
from rich.table import Table

from rootzone.data.folds import SPLITS
from rootzone.data.loader import StoreData
from rootzone.loss import anomalies, monthly_mean
from rootzone.metrics import METRICS, basin_metrics, median_metrics
from rootzone.physics.equations import PARAM_NAMES


@dataclass
class Record:
    """Whole-record results of all basins. scores[split][target] = {"median": {...}, "basins": {id: {...}}}."""

    scores: dict
    smax_mean: np.ndarray  # [n_basins] mean learned S_max over the record, mm
    param_mean: np.ndarray  # [n_basins, 8] mean of every learned parameter over the record


def evaluate_record(model, data: StoreData, device: torch.device, chunk: int = 256) -> Record:
    model.eval()
    warmup = data.cfg.warmup_days
    per: dict[str, dict[str, dict[str, dict[str, float]]]] = {s: {t: {} for t in data.targets} for s in SPLITS}
    param_mean = np.zeros((data.n_basins, len(PARAM_NAMES)))
    with torch.no_grad():
        for lo in range(0, data.n_basins, chunk):
            basins = np.arange(lo, min(lo + chunk, data.n_basins))
            batch = data.load(basins, 0, data.n_days).to(device)
            out = model(batch.x_dynamic, batch.x_static, batch.forcing)
            param_mean[basins] = out.params.mean(dim=1).double().cpu().numpy()
            sims = {"q": out.buckets.q, "et": out.buckets.et, "swe": out.buckets.w}
            for split in SPLITS:
                day_mask, month_mask = (m.to(device) for m in data.masks(batch, split, warmup))
                for t in data.targets:
                    obs = batch.obs[t]
                    if t == "twsa":
                        model_monthly = monthly_mean(out.buckets.tws, batch.day_month, obs.shape[1])
                        sim, obs, valid = anomalies(model_monthly, obs, month_mask)
                    else:
                        sim, valid = sims[t], torch.isfinite(obs) & day_mask[None, :]
                    sim = sim.double().cpu().numpy()
                    obs = torch.where(valid, obs, torch.full_like(obs, float("nan"))).double().cpu().numpy()
                    for i, b in enumerate(basins):
                        per[split][t][str(data.basin_ids[b])] = basin_metrics(sim[i], obs[i], anomaly=t == "twsa")
    scores = {s: {t: {"median": median_metrics(per[s][t]), "basins": per[s][t]} for t in data.targets}
              for s in SPLITS}
    return Record(scores=scores, smax_mean=param_mean[:, 0], param_mean=param_mean)


def truth_recovery(ds: xr.Dataset, record: Record) -> dict[str, float]:
    """Pearson r (and RMSE) between learned and true mean parameters across basins, where the store holds
    ``true_*`` variables (the demo twin experiment). Empty dict otherwise."""
    out: dict[str, float] = {}
    for i, name in enumerate(PARAM_NAMES):
        key = f"true_{name}"
        if key not in ds:
            continue
        truth = ds[key].mean("time").values.astype(np.float64)
        learned = record.param_mean[:, i]
        if len(truth) > 2 and np.std(truth) > 0 and np.std(learned) > 0:
            out[f"{name}_pearson_r"] = float(np.corrcoef(truth, learned)[0, 1])
        out[f"{name}_rmse"] = float(np.sqrt(np.mean((truth - learned) ** 2)))
    return out


def print_summary(metrics: dict, title: str, split: str = "test", console: Console | None = None) -> None:
    """Median metrics of ``split`` per target as a table (plus S_max recovery for twin experiments)."""
    console = console or Console()
    table = Table(title=title)
    table.add_column("target")
    for m in METRICS:
        table.add_column(m.upper() if m in ("nse", "kge", "rmse") else m, justify="right")
    for target, entry in metrics["splits"][split].items():
        table.add_row(target, *(f"{entry['median'][m]:.3f}" for m in METRICS))
    console.print(table)
    rec = metrics.get("truth_recovery")
    if rec and "smax_pearson_r" in rec:
        console.print(f"twin experiment: learned vs true mean S_max per basin: Pearson r = "
                      f"{rec['smax_pearson_r']:.3f}, RMSE = {rec['smax_rmse']:.1f} mm")
