"""Masked, basin-normalised loss over the targets of ``rootzone.data.schema.TARGETS`` (DESIGN §6).

Daily target t: per basin, the mean squared error over scored, observed days divided by that basin's
variance of t on training days (+ eps); averaged over basins that have any scored observation.
TWSA (review M1): model TWS averaged to calendar months; model and observation are re-centred on reference
levels given per basin (``twsa_ref``): their means over the same observed *training* months of the whole
record (the model's from the no-grad whole-record pass, a constant without gradient), so interannual change
and trends reach the loss, not only the seasonal cycle; then the same normalised squared error of the
anomalies. The gradient treats the record mean as moving with a window's own storage level (a uniform shift
gets none; see :func:`anomalies` and docs/model.md). Without ``twsa_ref`` (legacy) both are re-centred on
their means over the months scored in the window. A basin with fewer than ``MIN_TWSA_MONTHS`` scored,
observed months in the window has no TWSA term.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rootzone.data.schema import target

SCALE_EPS = 0.1  # added to the per-basin variance (mm² or (mm/d)²) so quiet basins do not dominate
MIN_TWSA_MONTHS = 3  # fewer scored, observed months of a basin in a window: no TWSA term for it


def monthly_mean(daily: Tensor, day_month: Tensor, n_months: int) -> Tensor:
    """Average [B, L] daily values into [B, M] month slots (day_month [L]: slot or -1 to skip)."""
    keep = day_month >= 0
    slots = day_month[keep]
    sums = daily.new_zeros(daily.shape[0], n_months).index_add_(1, slots, daily[:, keep])
    counts = torch.bincount(slots, minlength=n_months).clamp(min=1).to(daily.dtype)
    return sums / counts


def anomalies(model_monthly: Tensor, obs: Tensor, month_mask: Tensor, reference: tuple[Tensor, Tensor] | None = None,
              min_months: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Re-centre model [B, M] and observed [B, M] monthly values. ``reference`` = (model level [B], observed
    level [B]): subtract those (DESIGN §6: the means over the observed training months of the whole record);
    None: subtract each one's mean over the months that are both scored (month_mask [M]) and observed.
    A basin with fewer than ``min_months`` such months has no valid month. Returns (model anomaly, observed
    anomaly, valid [B, M])."""
    valid = torch.isfinite(obs) & month_mask[None, :]
    count = valid.sum(dim=1, keepdim=True)
    valid = valid & (count >= min_months)
    if reference is not None:
        mod_ref, obs_ref = (r.to(model_monthly.device, model_monthly.dtype).detach()[:, None] for r in reference)
        ok = torch.isfinite(mod_ref) & torch.isfinite(obs_ref)
        valid = valid & ok
        zero = torch.zeros_like(mod_ref)
        # The value is the whole-record anomaly. Its gradient treats the record mean as moving with the
        # window's own level (as the true record mean does under a uniform shift), so a window cannot pull the
        # storage level against a reference that only moves at the next refresh (that chase diverged).
        n = valid.sum(dim=1, keepdim=True).clamp(min=1)
        level = torch.where(valid, model_monthly, torch.zeros_like(model_monthly)).sum(1, keepdim=True) / n
        model_a = model_monthly - torch.where(ok, mod_ref, zero) - (level - level.detach())
        return (model_a, obs - torch.where(ok, obs_ref, zero), valid)
    n = count.clamp(min=1)
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
                scale: dict[str, Tensor], weights: dict[str, float],
                twsa_ref: dict[str, tuple[Tensor, Tensor]] | None = None) -> tuple[Tensor, dict[str, float]]:
    """Weighted total loss and its parts. ``outputs`` is a BucketOutputs ([B, L] each); obs daily [B, L] or
    twsa [B, M]; day_mask [L] and month_mask [M] say what is scored; scale: target -> [B]; twsa_ref: monthly
    target -> (model level [B], observed level [B]) to re-centre on (see :func:`anomalies`; absent: the
    window's own means)."""
    parts: dict[str, Tensor] = {}
    for name, observed in obs.items():
        t = target(name)
        series = t.model_series(outputs)
        if t.monthly:
            model_monthly = monthly_mean(series, day_month, observed.shape[1])
            ref = None if twsa_ref is None else twsa_ref.get(name)
            mod_a, obs_a, valid = anomalies(model_monthly, observed, month_mask, ref, MIN_TWSA_MONTHS)
            if bool(valid.any()):  # a target without observations here is absent, not a loss of 0
                parts[name] = normalised_mse(mod_a, obs_a, valid, scale[name])
        else:
            valid = torch.isfinite(observed) & day_mask[None, :]
            if bool(valid.any()):
                parts[name] = normalised_mse(series, observed, valid, scale[name])
    zero = outputs.q.sum() * 0.0  # keeps the graph (and finite zero gradients) when no target has data
    total = sum((weights.get(k, 1.0) * v for k, v in parts.items()), zero)
    return total, {k: float(v.detach()) for k, v in parts.items()}


def smax_smoothness_penalty(smax: Tensor) -> Tensor:
    """Mean over basins and days of (log S_max[t] - log S_max[t-1])² for S_max [B, T] (mm, > 0): the
    day-to-day change of the root-zone capacity, to be weighted by ``Config.smax_smoothness`` (docs/model.md).
    Zero for fewer than two days."""
    if smax.shape[-1] < 2:
        return smax.sum() * 0.0
    log_s = torch.log(smax.clamp(min=1e-6))
    return ((log_s[..., 1:] - log_s[..., :-1]) ** 2).mean()
