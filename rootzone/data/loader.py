"""Lazy access to a store for training and evaluation: normalisation statistics from training days only,
and batches of (basins, time window) read through xarray/dask without loading the whole store.

Reads go by *basin block* (one chunk of basins of the store, all days): a block is decoded once and kept in a
small LRU cache (``BLOCK_CACHE`` blocks), and the training sampler draws ``cfg.batches_per_block``
consecutive batches from one block, so memory stays bounded by the block size whatever the basin count, and most
batches are numpy slices of decoded data.

Batch tensors (B basins, L days, M whole calendar months inside the window):
    x_dynamic [B, L, V]  normalised dynamic inputs        x_static [B, K] normalised attributes
    forcing   [B, L, 4]  physical P, T, PET, LAI (LAI = 0 when the store has none)
    obs       target -> [B, L] (daily, mm/d or mm) or [B, M] (twsa, mm); NaN = missing
    day_month [L] month slot of each day (-1 for days of months only partly inside the window)
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import xarray as xr

from rootzone.config import Config
from rootzone.data.folds import FoldSplit
from rootzone.data.schema import (
    REQUIRED_FORCING,
    daily_targets,
    forcing_names,
    monthly_targets,
    stack_forcing,
    store_reads,
    store_where,
    target,
    target_names,
)
from rootzone.errors import RootzoneError

STD_FLOOR = 1e-6
BLOCK_CACHE = 2  # decoded basin blocks kept in memory


@dataclass
class Batch:
    basins: np.ndarray  # [B] integer basin positions in the store
    start: int  # first day (index on the store's time axis)
    x_dynamic: torch.Tensor
    x_static: torch.Tensor
    forcing: torch.Tensor
    obs: dict[str, torch.Tensor]
    day_month: torch.Tensor
    months: np.ndarray  # [M] month positions on the store's month axis

    @property
    def length(self) -> int:
        return self.forcing.shape[1]

    def to(self, device: torch.device) -> Batch:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(self.basins, self.start, move(self.x_dynamic), move(self.x_static), move(self.forcing),
                     {k: move(v) for k, v in self.obs.items()}, move(self.day_month), self.months)


@dataclass
class Normaliser:
    """Means and standard deviations of the network inputs (training days of every basin)."""

    dynamic_names: list[str]
    dynamic_mean: np.ndarray
    dynamic_std: np.ndarray
    static_names: list[str]
    static_mean: np.ndarray
    static_std: np.ndarray
    static_min: np.ndarray = field(default_factory=lambda: np.zeros(0))
    static_max: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def dynamic(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Normalised dynamic inputs [B, T, V] (float32, ``dynamic_names`` order) from per-variable [B, T]
        arrays in physical units (extra entries are ignored)."""
        return np.stack([(arrays[v] - m) / s for v, m, s in zip(self.dynamic_names, self.dynamic_mean,
                                                                 self.dynamic_std)], axis=-1).astype(np.float32)

    def static(self, att: np.ndarray, names: list[str] | None = None) -> np.ndarray:
        """Normalised attributes [B, K] (float32, ``static_names`` order) from ``att`` [B, N]: its columns are
        ``names`` (any order, a superset is fine) or, when ``names`` is None, already ``static_names``."""
        att = np.asarray(att, dtype=np.float64)
        if names is not None:
            att = att[:, [list(names).index(a) for a in self.static_names]]
        return ((att - self.static_mean) / self.static_std).astype(np.float32)

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Normaliser:
        return cls(**{k: (np.asarray(v, dtype=np.float64) if not k.endswith("names") else list(v))
                      for k, v in d.items()})


class StoreData:
    """One store, one fold: statistics, target scales and batch reading.

    ``ds`` is the lazily opened store (``schema.open_store``). Only the variables a batch needs are read.
    """

    def __init__(self, ds: xr.Dataset, cfg: Config, split: FoldSplit, normaliser: Normaliser | None = None):
        self.ds, self.cfg, self.split = ds, cfg, split
        self.where = store_where(ds)  # reads of a corrupt chunk become one StoreError line naming it
        self.time = pd.DatetimeIndex(ds["time"].values)
        self.months = pd.DatetimeIndex(ds["month"].values)
        self.basin_ids = np.asarray([str(b) for b in ds["basin"].values])
        available = forcing_names(ds)
        missing = [v for v in cfg.inputs if v not in available and v != "lai"]
        if missing:
            raise RootzoneError(f"config field 'inputs': {missing} not in the store (it has {available})")
        self.dynamic_names = [v for v in cfg.inputs if v in available]
        all_attributes = [str(a) for a in ds["attribute"].values]
        unknown = [a for a in cfg.attributes if a not in all_attributes]
        if unknown:
            raise RootzoneError(f"config field 'attributes': {unknown} not in the store (it has {all_attributes})")
        self.static_names = list(cfg.attributes) or all_attributes
        self.targets = [t for t in cfg.targets if t in target_names(ds)]
        if not self.targets:
            raise RootzoneError(f"the store has none of the targets {cfg.targets}")
        self.has_lai = "lai" in available
        self.train_days = np.flatnonzero(split.masks["train"])
        self.normaliser = normaliser or self._fit_normaliser()
        self.static = self._normalised_static()
        self.scale = self._target_scales()
        # month slot of every day on the store's time axis
        self.month_of_day = self.months.get_indexer(self.time.to_period("M").to_timestamp())
        self._daily_targets = [t.name for t in daily_targets(self.targets)]
        self._monthly_targets = [t.name for t in monthly_targets(self.targets)]
        self._daily_names = list(dict.fromkeys([*self.dynamic_names, *REQUIRED_FORCING, *self._daily_targets]
                                               + (["lai"] if self.has_lai else [])))
        chunks = ds["precipitation"].chunks
        sizes = chunks[0] if chunks else (self.n_basins,)
        self.block_edges = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._blocks: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._sampler_block, self._sampler_left = 0, 0

    # ------------------------------------------------------------------ statistics
    def _fit_normaliser(self) -> Normaliser:
        dyn = self.ds[self.dynamic_names].isel(time=self.train_days)
        with store_reads(self.where):
            mean = dyn.mean(dim=("basin", "time")).compute()
            std = dyn.std(dim=("basin", "time")).compute()
            att = self.ds["attributes"].sel(attribute=self.static_names).values.astype(np.float64)
        return Normaliser(
            dynamic_names=self.dynamic_names,
            dynamic_mean=np.array([float(mean[v]) for v in self.dynamic_names]),
            dynamic_std=np.maximum([float(std[v]) for v in self.dynamic_names], STD_FLOOR),
            static_names=self.static_names,
            static_mean=np.nanmean(att, axis=0), static_std=np.maximum(np.nanstd(att, axis=0), STD_FLOOR),
            static_min=np.nanmin(att, axis=0), static_max=np.nanmax(att, axis=0),
        )

    def _normalised_static(self) -> np.ndarray:
        with store_reads(self.where):
            att = self.ds["attributes"].sel(attribute=self.normaliser.static_names).values.astype(np.float64)
        if not np.isfinite(att).all():
            raise RootzoneError("the store's attributes contain NaN; fill or drop those basins/attributes")
        return self.normaliser.static(att)

    def _target_scales(self) -> dict[str, np.ndarray]:
        """Per-basin variance of each target on training days (months for twsa), [n_basins]."""
        scales = {}
        month_train = self.split.month_mask("train", self.time, self.months)
        for t in self.targets:
            da = self.ds[t]
            sel = da.isel(month=np.flatnonzero(month_train)) if target(t).monthly \
                else da.isel(time=self.train_days)
            with store_reads(self.where), warnings.catch_warnings():
                # a basin without any observation of ``t`` has a NaN variance (it falls back to the median of
                # the others below); numpy/dask would print "invalid value encountered in divide" for it
                warnings.filterwarnings("ignore", r"(invalid value|divide by zero) encountered", RuntimeWarning)
                warnings.filterwarnings("ignore", r"(Degrees of freedom|Mean of empty slice|All-NaN slice)",
                                        RuntimeWarning)
                var = sel.var(dim=sel.dims[1], skipna=True).values.astype(np.float64)
            fallback = np.nanmedian(var) if np.isfinite(var).any() else 1.0
            scales[t] = np.where(np.isfinite(var), var, fallback)
        return scales

    # ------------------------------------------------------------------ batches
    @property
    def n_basins(self) -> int:
        return len(self.basin_ids)

    @property
    def n_days(self) -> int:
        return len(self.time)

    def load(self, basins: np.ndarray, start: int, length: int) -> Batch:
        """Read basins × [start, start+length) (and the whole months inside it) from the store."""
        basins = np.sort(np.asarray(basins))
        stop = start + length
        arr = self._read(basins, slice(start, stop))
        x_dyn = self.normaliser.dynamic(arr)
        forcing = stack_forcing(arr)  # lai = 0 when the store has none
        # whole months inside the window
        slots = self.month_of_day[start:stop]
        uniq, counts = np.unique(slots, return_counts=True)
        days_in_month = self.months[uniq].days_in_month
        months = uniq[counts == days_in_month]
        day_month = np.where(np.isin(slots, months), np.searchsorted(months, slots), -1)
        obs = {t: torch.from_numpy(arr[t]) for t in self._daily_targets}
        for t in self._monthly_targets:
            obs[t] = torch.from_numpy(np.ascontiguousarray(arr[t][:, months]))
        return Batch(
            basins=basins, start=start,
            x_dynamic=torch.from_numpy(x_dyn),
            x_static=torch.from_numpy(self.static[basins]),
            forcing=torch.from_numpy(forcing), obs=obs,
            day_month=torch.from_numpy(day_month.astype(np.int64)), months=months,
        )

    def _block(self, index: int) -> dict[str, np.ndarray]:
        """Decoded variables of basin block ``index``: daily [n, T], twsa [n, M] (LRU-cached)."""
        if index in self._blocks:
            self._blocks.move_to_end(index)
            return self._blocks[index]
        rows = slice(int(self.block_edges[index]), int(self.block_edges[index + 1]))
        names = self._daily_names + self._monthly_targets
        with store_reads(self.where):
            sub = self.ds[names].isel(basin=rows).compute()
        self._blocks[index] = {v: sub[v].values.astype(np.float32) for v in names}
        while len(self._blocks) > BLOCK_CACHE:
            self._blocks.popitem(last=False)
        return self._blocks[index]

    def _read(self, basins: np.ndarray, days: slice) -> dict[str, np.ndarray]:
        """Sorted ``basins`` × ``days`` of every daily variable (twsa: all months), block by block."""
        block_of = np.searchsorted(self.block_edges, basins, side="right") - 1
        parts = []
        for index in np.unique(block_of):
            block = self._block(int(index))
            rows = basins[block_of == index] - self.block_edges[index]
            parts.append({v: a[rows] if v in self._monthly_targets else a[rows, days] for v, a in block.items()})
        return {v: np.concatenate([p[v] for p in parts]) for v in parts[0]}

    def masks(self, batch: Batch, split: str, warmup: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Which days [L] and months [M] of ``batch`` count for ``split``: inside the split and past the
        first ``warmup`` days of the window."""
        days = self.split.masks[split][batch.start : batch.start + batch.length].copy()
        days[:warmup] = False
        month_in_split = self.split.month_mask(split, self.time, self.months)[batch.months]
        # a month counts only when all its days are past the warm-up (slots ascend over the whole months)
        day_month = batch.day_month.cpu().numpy()
        inside = np.flatnonzero(day_month >= 0)
        first_day = inside[np.searchsorted(day_month[inside], np.arange(len(batch.months)))]
        return torch.from_numpy(days), torch.from_numpy(month_in_split & (first_day >= warmup))

    def sampler_state(self) -> dict[str, int]:
        """Where the block sampler stands (current basin block, batches left in it), for checkpoints."""
        return {"block": self._sampler_block, "left": self._sampler_left}

    def restore_sampler(self, state: dict[str, int]) -> None:
        """Continue sampling exactly where :meth:`sampler_state` was taken (a resumed run repeats none)."""
        self._sampler_block, self._sampler_left = int(state["block"]), int(state["left"])

    def sample_window(self, rng: np.random.Generator, split: str = "train") -> tuple[np.ndarray, int, int]:
        """Random basins and a window start whose scored part holds days of ``split``."""
        length = min(self.cfg.seq_len, self.n_days)
        warmup = min(self.cfg.warmup_days, length - 1)
        mask = self.split.masks[split]
        for _ in range(1000):
            start = int(rng.integers(0, self.n_days - length + 1))
            if mask[start + warmup : start + length].any():
                break
        else:  # pragma: no cover - folds guarantee training years exist
            raise RootzoneError(f"no window of {length} days holds {split} days after the warm-up")
        if self._sampler_left == 0:  # move to another basin block, chosen in proportion to its size
            sizes = np.diff(self.block_edges)
            self._sampler_block = int(rng.choice(len(sizes), p=sizes / sizes.sum()))
            self._sampler_left = self.cfg.batches_per_block
        self._sampler_left -= 1
        lo, hi = self.block_edges[self._sampler_block], self.block_edges[self._sampler_block + 1]
        basins = rng.choice(np.arange(lo, hi), size=min(self.cfg.batch_size, hi - lo), replace=False)
        return basins, start, length
