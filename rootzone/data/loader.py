"""Lazy access to a store for training and evaluation: normalisation statistics from training days only,
and batches of (basins, time window) read through xarray/dask without loading the whole store.

Training epochs (:meth:`StoreData.epoch`, DESIGN §7): one epoch is one pass over the training basins in a
shuffled order, cut into batches of ``cfg.batch_size`` basins, so every batch draws its basins from across the
whole store (never one chunk of basins at a time). Each batch has its own random window start, common to its
basins. The batches are prepared a *round* at a time (``ROUND_BASINS`` basins): each basin block (one chunk of
basins of the store) holding basins of the round is decoded once (only the days the round's windows cover) and
only those windows are kept, so memory stays bounded by the round and one decoded block whatever the basin count.

Other reads (:meth:`StoreData.load` of windows no round prepared: evaluation, whole records) go by basin block:
a block is decoded once and kept in a small LRU cache (``BLOCK_CACHE`` blocks).

Batch tensors (B basins, L days, M whole calendar months inside the window):
    x_dynamic [B, L, V]  normalised dynamic inputs        x_static [B, K] normalised attributes
    forcing   [B, L, 4]  physical P, T, PET, LAI (LAI = 0 when the store has none)
    obs       target -> [B, L] (daily, mm/d or mm) or [B, M] (twsa, mm); NaN = missing
    day_month [L] month slot of each day (-1 for days of months only partly inside the window)
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import xarray as xr

from rootzone.config import Config
from rootzone.data.folds import FoldSplit
from rootzone.data.records import compatible_batches, fill_outside, mask_outside, read_records, window_ranges
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
BLOCK_CACHE = 2  # decoded basin blocks kept in memory (reads outside training epochs)
ROUND_BASINS = 2048  # basins whose training windows an epoch prepares at once (bounds the loader's memory)


@dataclass
class Batch:
    basins: np.ndarray  # [B] integer basin positions in the store (ascending)
    start: int  # first day of the window (index on the store's time axis), the same for every basin of the batch
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
    """Means and standard deviations of the network inputs (training days of the training basins)."""

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
        # the training basins: every basin for temporal folds, the training basin groups for spatial ones
        self.train_basins = self.split_basins("train")
        self.normaliser = normaliser or self._fit_normaliser()
        self.static = self._normalised_static()
        self.absent_targets: list[str] = []  # targets without observations on training days (_target_scales)
        self.scale = self._target_scales()
        # month slot of every day on the store's time axis
        self.month_of_day = self.months.get_indexer(self.time.to_period("M").to_timestamp())
        self._daily_targets = [t.name for t in daily_targets(self.targets)]
        self._monthly_targets = [t.name for t in monthly_targets(self.targets)]
        self._daily_names = list(dict.fromkeys([*self.dynamic_names, *REQUIRED_FORCING, *self._daily_targets]
                                               + (["lai"] if self.has_lai else [])))
        self._forcing_like = [v for v in self._daily_names if v not in self._daily_targets]
        chunks = ds["precipitation"].chunks
        sizes = chunks[0] if chunks else (self.n_basins,)
        self.block_edges = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._blocks: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._prepared: dict[tuple[bytes, int, int], dict[str, np.ndarray]] = {}  # windows of the current round
        self._epoch: dict[str, int] | None = None  # seed and progress of the epoch being iterated
        self._resume: dict[str, int] | None = None  # an unfinished epoch to continue (restore_sampler)
        self._starts: dict[tuple[str, int, int], np.ndarray] = {}
        # each basin's own record on the shared time axis (data/records.py): the basins trained on are the
        # training basins whose record holds a whole window with training days (the others: ``untrainable``)
        self.records = read_records(ds)
        self.untrainable: list[str] = []
        if self.records.partial:
            lo, hi = window_ranges(self.records, self.train_basins, self.window_length())
            starts = self.window_starts("train")
            can = np.searchsorted(starts, lo) < np.searchsorted(starts, hi, side="right")
            self.untrainable = self.basin_ids[self.train_basins[~can]].tolist()
            self.train_basins = self.train_basins[can]
            if not len(self.train_basins):
                raise RootzoneError(f"no training basin's record holds a {self.window_length()}-day window with "
                                    f"training days after the warm-up: lower seq_len or use a longer period")

    # ------------------------------------------------------------------ statistics
    def split_basins(self, split: str) -> np.ndarray:
        """Ascending int64 store positions of the basins ``split`` holds (every basin for temporal folds)."""
        return np.flatnonzero(self.split.basin_mask(split, self.n_basins)).astype(np.int64)

    def _fit_normaliser(self) -> Normaliser:
        """Statistics of the training basins on the training days only (spatial folds: the held-out basins'
        inputs never enter them)."""
        basins = self.train_basins
        every = len(basins) == self.n_basins
        dyn = self.ds[self.dynamic_names].isel(time=self.train_days)
        if not every:
            dyn = dyn.isel(basin=basins)
        with store_reads(self.where):
            mean = dyn.mean(dim=("basin", "time")).compute()
            std = dyn.std(dim=("basin", "time")).compute()
            att = self.ds["attributes"].sel(attribute=self.static_names).values.astype(np.float64)[basins]
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
            if not np.isfinite(var).any():  # no basin has two training observations: not in the loss
                self.absent_targets.append(t)
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
        basins = np.sort(np.asarray(basins)).astype(np.int64)
        stop = start + length
        arr = self._prepared.pop((basins.tobytes(), int(start), int(length)), None)
        if arr is None:
            arr = self._read(basins, slice(start, stop))
        x_dyn = self.normaliser.dynamic(arr)
        forcing = stack_forcing(arr)  # lai = 0 when the store has none
        # whole months inside the window
        slots = self.month_of_day[start:stop]
        uniq, counts = np.unique(slots, return_counts=True)
        days_in_month = self.months[uniq].days_in_month
        months = uniq[counts == days_in_month]
        day_month = np.where(np.isin(slots, months), np.searchsorted(months, slots), -1)
        daily_obs = {t: arr[t] for t in self._daily_targets}
        monthly_obs = {t: np.ascontiguousarray(arr[t][:, months]) for t in self._monthly_targets}
        if self.records.partial:  # observations outside a basin's record are not used (data/records.py)
            inside = self.records.inside(basins, start, length)
            mask_outside(daily_obs, inside)
            whole = np.stack([inside[:, day_month == m].all(axis=1) for m in range(len(months))], axis=1) \
                if len(months) else np.zeros((len(basins), 0), bool)
            mask_outside(monthly_obs, whole)
        obs = {t: torch.from_numpy(a) for t, a in {**daily_obs, **monthly_obs}.items()}
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
        block = {v: sub[v].values.astype(np.float32) for v in names}
        if self.records.partial:  # whole-record reads: forcing outside a record repeats its first/last year
            b = np.arange(rows.start, rows.stop)
            fill_outside({v: block[v] for v in self._forcing_like}, self.records.first[b], self.records.last[b])
        self._blocks[index] = block
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

    # ------------------------------------------------------------------ training epochs
    def n_batches(self, max_batches: int = 0) -> int:
        """Batches in one epoch: ceil(training basins / batch_size), at most ``max_batches`` when > 0. (When
        records differ, batches hold basins whose records share a window, so an epoch may have a few more.)"""
        n = -(-len(self.train_basins) // self.cfg.batch_size)
        return min(n, max_batches) if max_batches > 0 else n

    def _plan(self, plan: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
        """One epoch's batches (basins) and window starts, drawn with ``plan``."""
        order = plan.permutation(self.train_basins)
        candidates = self.window_starts("train")
        if not self.records.partial:
            groups = np.array_split(order, self.n_batches())
            return groups, plan.choice(candidates, size=len(groups))
        # records differ: a batch holds basins whose records share a window inside all of them
        lo, hi = window_ranges(self.records, np.arange(self.n_basins), self.window_length())
        batches = compatible_batches(order, lo, hi, candidates, self.cfg.batch_size)
        batches = [batches[j] for j in plan.permutation(len(batches))]
        return [b for b, _ in batches], np.array([plan.choice(shared) for _, shared in batches], np.int64)

    def window_length(self) -> int:
        """Days per training window (``seq_len``, at most the record)."""
        return min(self.cfg.seq_len, self.n_days)

    def window_starts(self, split: str = "train") -> np.ndarray:
        """Every window start whose scored part (past the warm-up) holds days of ``split``."""
        length = self.window_length()
        warmup = min(self.cfg.warmup_days, length - 1)
        key = (split, length, warmup)
        if key not in self._starts:
            mask = self.split.masks[split].astype(np.int64)
            csum = np.concatenate([[0], np.cumsum(mask)])
            first = np.arange(self.n_days - length + 1)
            valid = first[csum[first + length] - csum[first + warmup] > 0]
            if not len(valid):  # pragma: no cover - folds guarantee training years exist
                raise RootzoneError(f"no window of {length} days holds {split} days after the warm-up")
            self._starts[key] = valid
        return self._starts[key]

    def epoch(self, rng: np.random.Generator, max_batches: int = 0) -> Iterator[tuple[np.ndarray, int, int]]:
        """One epoch: every training basin exactly once, in a shuffled order, ``batch_size`` basins per batch
        (the last batches one smaller when the count does not divide), so each batch draws from across the
        whole store. Yields ``(basins, start, length)`` per batch: ``basins`` [n] ascending int64 store
        positions, ``start`` the batch's window start (uniform over the windows whose scored part holds
        training days; common to the batch's basins), ``length`` its days. Pass them to :meth:`load`, which
        returns the prepared window without another read. ``max_batches > 0`` stops the epoch after that many
        batches (:meth:`n_batches`).

        Where basins' records differ (data/records.py), a batch holds basins whose records all contain its
        window (greedy first fit over the shuffled order), so windows never cross missing forcing; basins whose
        record holds no such window are not trained on (``untrainable``).

        The order and starts come from one seed drawn from ``rng`` when iteration begins, so a run resumed
        with the same ``rng`` state repeats the same batches; an epoch cut short is continued by the next
        call after :meth:`restore_sampler`.
        """
        if self._resume is not None:
            seed, done = self._resume["seed"], self._resume["done"]
            self._resume = None
        else:
            seed, done = int(rng.integers(2**63 - 1)), 0
        groups, starts = self._plan(np.random.default_rng(seed))
        length = self.window_length()
        n = min(len(groups), max_batches) if max_batches > 0 else len(groups)
        per_round = max(1, ROUND_BASINS // self.cfg.batch_size)
        self._epoch = {"seed": seed, "done": done, "batches": n}
        try:
            for r0 in range(done, n, per_round):
                todo = [(np.sort(groups[j]), int(starts[j])) for j in range(r0, min(n, r0 + per_round))]
                self._prepare(todo, length)
                for basins, start in todo:
                    self._epoch["done"] += 1
                    yield basins, start, length
        finally:
            self._prepared.clear()
        self._epoch = None

    def _prepare(self, batches: list[tuple[np.ndarray, int]], length: int) -> None:
        """Read the windows of ``batches`` (basins, start): each basin block they touch is decoded once, for
        the days their windows cover; :meth:`load` takes them from ``self._prepared``."""
        self._prepared.clear()
        monthly = self._monthly_targets
        daily = self._daily_names
        out = []
        for basins, _ in batches:
            arr = {v: np.empty((len(basins), length), np.float32) for v in daily}
            arr.update({v: np.empty((len(basins), len(self.months)), np.float32) for v in monthly})
            out.append(arr)
        owner = np.concatenate([np.full(len(b), j) for j, (b, _) in enumerate(batches)])
        allb = np.concatenate([b for b, _ in batches])
        block_of = np.searchsorted(self.block_edges, allb, side="right") - 1
        for index in np.unique(block_of):
            here = block_of == index
            js = np.unique(owner[here])
            lo = min(batches[j][1] for j in js)
            hi = max(batches[j][1] for j in js) + length
            rows = slice(int(self.block_edges[index]), int(self.block_edges[index + 1]))
            block = self._decode(daily, monthly, rows, slice(lo, hi))
            for j in js:
                basins, start = batches[j]
                in_block = np.searchsorted(self.block_edges, basins, side="right") - 1 == index
                local = basins[in_block] - self.block_edges[index]
                for v in daily:
                    out[j][v][in_block] = block[v][local, start - lo : start - lo + length]
                for v in monthly:
                    out[j][v][in_block] = block[v][local]
            del block
        for (basins, start), arr in zip(batches, out):
            self._prepared[(basins.astype(np.int64).tobytes(), int(start), int(length))] = arr

    def _decode(self, daily: list[str], monthly: list[str], rows: slice, days: slice) -> dict[str, np.ndarray]:
        """``rows`` × ``days`` of the daily variables (monthly: all months), straight from the Zarr arrays when
        the store is a plain Zarr store without value encodings (one thread per variable; about twice as fast
        as through dask), else through xarray."""
        names = daily + monthly
        with store_reads(self.where):
            arrays = self._zarr_arrays(names)
            if arrays is None:
                sub = self.ds[names].isel(basin=rows, time=days).compute()
                return {v: sub[v].values for v in names}
            with ThreadPoolExecutor(min(len(names), 4)) as pool:
                out = pool.map(lambda v: arrays[v][rows] if v in monthly else arrays[v][rows, days], names)
                return dict(zip(names, out))

    def _zarr_arrays(self, names: list[str]) -> dict | None:
        if not hasattr(self, "_zarr"):
            self._zarr = None
            try:
                import zarr

                group = zarr.open_group(self.ds.encoding["source"], mode="r")
                arrays = {v: group[v] for v in names}
                plain = all(not {"scale_factor", "add_offset"} & set(self.ds[v].encoding) and
                            arrays[v].dtype == np.float32 and arrays[v].shape == self.ds[v].shape for v in names)
                self._zarr = arrays if plain else None
            except Exception:  # noqa: BLE001 - any other store kind: read through xarray
                self._zarr = None
        return self._zarr

    def sampler_state(self) -> dict[str, int]:
        """Where an unfinished epoch stands (its seed, batches handed out), for checkpoints; ``{}`` between
        epochs (the next epoch's batches then follow from the saved ``rng`` state alone)."""
        e = self._epoch
        return {"seed": e["seed"], "done": e["done"]} if e is not None and e["done"] < e["batches"] else {}

    def restore_sampler(self, state: dict[str, int]) -> None:
        """Continue exactly where :meth:`sampler_state` was taken: the next :meth:`epoch` call finishes that
        epoch (a resumed run repeats none of its batches). States without an unfinished epoch (``{}``, or an
        old checkpoint's block sampler state) change nothing."""
        self._resume = {"seed": int(state["seed"]), "done": int(state["done"])} if "seed" in state else None

    def sample_window(self, rng: np.random.Generator, split: str = "train") -> tuple[np.ndarray, int, int]:
        """``batch_size`` random basins from across the store (ascending) and a window start whose scored
        part holds days of ``split``: ``(basins, start, length)`` for :meth:`load`. Training uses :meth:`epoch`."""
        length = self.window_length()
        start = int(rng.choice(self.window_starts(split)))
        pool = self.split_basins(split)
        basins = np.sort(rng.choice(pool, size=min(self.cfg.batch_size, len(pool)), replace=False))
        return basins.astype(np.int64), start, length
