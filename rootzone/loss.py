"""Masked, basin-normalised loss over the targets of ``rootzone.data.schema.TARGETS`` (DESIGN §6).

Daily target t: per basin, the mean squared error over scored, observed days divided by that basin's
variance of t on training days (+ eps); averaged over basins that have any scored observation.
TWSA: model TWS averaged to calendar months, model and observation each re-centred on their mean over the
months scored in the window, then the same normalised squared error of the anomalies.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rootzone.data.schema import target

SCALE_EPS = 0.1  # added to the per-basin variance (mm² or (mm/d)²) so quiet basins do not dominate


def monthly_mean(daily: Tensor, day_month: Tensor, n_months: int) -> Tensor:
    """Average [B, L] daily values into [B, M] month slots (day_month [L]: slot or -1 to skip)."""
    keep = day_month >= 0
    slots = day_month[keep]
    sums = daily.new_zeros(daily.shape[0], n_months).index_add_(1, slots, daily[:, keep])
    counts = torch.bincount(slots, minlength=n_months).clamp(min=1).to(daily.dtype)
    return sums / counts


def anomalies(model_monthly: Tensor, obs: Tensor, month_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Re-centre model [B, M] and observed [B, M] monthly values on their mean over the months that are both
    scored (month_mask [M]) and observed. Returns (model anomaly, observed anomaly, valid [B, M])."""
    valid = torch.isfinite(obs) & month_mask[None, :]
    n = valid.sum(dim=1, keepdim=True).clamp(min=1)
    obs0 = torch.where(valid, obs, torch.zeros_like(obs))
    mod0 = torch.where(valid, model_monthly, torch.zeros_like(model_monthly))
    return (model_monthly - mod0.sum(1, keepdim=True) / n, obs - obs0.sum(1, keepdim=True) / n, valid)


def normalised_mse(pred: Tensor, obs: Tensor, valid: Tensor, scale: Tensor) -> Tensor:
    """Mean over basins with data of [mean over valid entries of (pred-obs)²] / (scale + eps). Shapes [B, N],
    scale [B]. Missing entries contribute nothing (not even NaN gradients)."""
    err = torch.where(valid, pred - torch.where(valid, obs, torch.zeros_like(obs)), torch.zeros_like(pred))
    count = valid.sum(dim=1)
    per_basin = (err**2).sum(dim=1) / count.clamp(min=1) / (scale + SCALE_EPS)
    has = count > 0
    if not has.any():
        return pred.sum() * 0.0
    return per_basin[has].mean()


def hybrid_loss(outputs, obs: dict[str, Tensor], day_mask: Tensor, month_mask: Tensor, day_month: Tensor,
                scale: dict[str, Tensor], weights: dict[str, float]) -> tuple[Tensor, dict[str, float]]:
    """Weighted total loss and its parts. ``outputs`` is a BucketOutputs ([B, L] each); obs daily [B, L] or
    twsa [B, M]; day_mask [L] and month_mask [M] say what is scored; scale: target -> [B]."""
    parts: dict[str, Tensor] = {}
    for name, observed in obs.items():
        t = target(name)
        series = t.model_series(outputs)
        if t.monthly:
            model_monthly = monthly_mean(series, day_month, observed.shape[1])
            mod_a, obs_a, valid = anomalies(model_monthly, observed, month_mask)
            parts[name] = normalised_mse(mod_a, obs_a, valid, scale[name])
        else:
            valid = torch.isfinite(observed) & day_mask[None, :]
            parts[name] = normalised_mse(series, observed, valid, scale[name])
    total = sum(weights.get(k, 1.0) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}
