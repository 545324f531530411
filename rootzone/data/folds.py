"""k-fold cross-validation (DESIGN §7): temporal (blocks of whole calendar years), spatial (groups of whole
basins) and spatio-temporal (basins and years held out together).

Temporal (``cv = "temporal"``, the default):

The whole years of the record are cut into k contiguous blocks. Fold i: test = block i; validation =
``validation_years`` years of the training blocks (those right after the test block, or right before it
when it is the last block); training = the remaining whole years. ``validation_years = 0`` (the config
default) means ``DEFAULT_VALIDATION_YEARS`` (2) when the record leaves every fold a training year with them,
else as many as it allows (at least 1). Days of partial years at the edges of the
record belong to no split. A day belongs to at most one split. Every basin is in every split.

Spatial (``cv = "spatial"``, :func:`spatial_fold`): the basins are cut into ``folds`` groups of whole basins
(:func:`basin_folds`: every basin its own group, or the groups of an attribute/region column ``cv_groups``, so
nested or neighbouring basins sharing a region never land on both sides); fold i: test = the basins of group
block i, validation = those of block (i + 1) mod k, training = the rest; every split covers all whole years.
The assignment depends only on the basin ids (or group values) and ``cv_seed``, never on the trial seed, so
the seeds of one fold share their split and every basin is tested in exactly one fold.

Spatio-temporal (``cv = "spatiotemporal"``): basins as in the spatial scheme and the whole years cut into k
blocks as in the temporal one; fold i: test = test basins × year block i, training = training basins × the
other years, validation = validation basins × the other years (it shares neither basins nor years with the
test and no basins with training). Test basins outside the test years and training basins inside them belong
to no split.

``FoldSplit.basins[split]`` ([N] bool over the store's basins) says which basins a split holds (None:
every basin, temporal folds).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rootzone.config import CV_CHOICES
from rootzone.errors import RootzoneError

SPLITS = ("train", "validation", "test")
CV_SCHEMES = CV_CHOICES
DEFAULT_VALIDATION_YEARS = 2  # validation years when ``validation_years = 0`` and the record allows


@dataclass(frozen=True)
class FoldSplit:
    """Day masks ([T] bool over the store's time axis) and the years of each split."""

    fold: int
    folds: int
    masks: dict[str, np.ndarray]
    years: dict[str, list[int]]
    basins: dict[str, np.ndarray] | None = None  # split -> [N] bool over the store's basins; None = all
    scheme: str = "temporal"

    def basin_mask(self, split: str, n_basins: int) -> np.ndarray:
        """[n_basins] bool: the basins ``split`` holds (all of them for temporal folds)."""
        if self.basins is None:
            return np.ones(n_basins, dtype=bool)
        return np.asarray(self.basins[split], dtype=bool)

    def month_mask(self, split: str, time: pd.DatetimeIndex, months: pd.DatetimeIndex) -> np.ndarray:
        """[M] bool: months whose year lies in ``split``."""
        return np.isin(months.year, self.years[split])

    def to_dict(self) -> dict[str, list[int]]:
        return {s: list(map(int, y)) for s, y in self.years.items()}


def whole_years(time: pd.DatetimeIndex) -> list[int]:
    """Calendar years that ``time`` covers completely."""
    counts = pd.Series(1, index=time).groupby(time.year).sum()
    return [int(y) for y, n in counts.items() if n == (366 if pd.Timestamp(year=y, month=1, day=1).is_leap_year
                                                       else 365)]


def _training_years(n_years: int, folds: int, validation_years: int) -> int:
    """Training years left in the fold with the largest test block."""
    return n_years - -(-n_years // folds) - validation_years


def auto_validation_years(n_years: int, folds: int) -> int:
    """Validation years for ``validation_years = 0``: ``DEFAULT_VALIDATION_YEARS`` when ``n_years`` whole years
    in ``folds`` folds leave every fold at least one training year with them, else fewer (at least 1)."""
    for v in range(DEFAULT_VALIDATION_YEARS, 1, -1):
        if n_years >= folds and _training_years(n_years, folds, v) >= 1:
            return v
    return 1


def temporal_fold(time: pd.DatetimeIndex, folds: int, fold: int, validation_years: int = 1) -> FoldSplit:
    """The split of fold ``fold`` of ``folds``; RootzoneError when the record is too short. A given
    ``validation_years`` >= 1 is kept (or refused); 0 picks :func:`auto_validation_years`."""
    if not 0 <= fold < folds:
        raise RootzoneError(f"fold {fold} is out of range: with {folds} folds it must be in 0..{folds - 1}")
    years = whole_years(time)
    if validation_years == 0:
        validation_years = auto_validation_years(len(years), folds)
    need = next(n for n in itertools.count(folds) if _training_years(n, folds, validation_years) >= 1)
    if len(years) < need:
        raise RootzoneError(
            f"the store covers {len(years)} whole years; {folds} folds with {validation_years} validation "
            f"year(s) need at least {need} (lower --folds or use a longer record)")
    blocks = [list(b) for b in np.array_split(np.array(years), folds)]
    test = blocks[fold]
    rest_after = [y for b in blocks[fold + 1 :] for y in b]
    rest_before = [y for b in blocks[:fold] for y in b]
    validation = rest_after[:validation_years] if len(rest_after) >= validation_years \
        else rest_before[-validation_years:]
    train = [y for y in years if y not in test and y not in validation]
    split_years = {"train": train, "validation": sorted(validation), "test": test}
    masks = {s: np.isin(time.year, y) for s, y in split_years.items()}
    return FoldSplit(fold=fold, folds=folds, masks=masks, years={s: [int(v) for v in y] for s, y in
                                                                 split_years.items()})


# ---------------------------------------------------------------------------------------------- basin folds
def _stable_key(value: str, seed: int) -> int:
    """A hash of ``value`` and ``seed`` independent of the process (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{value}".encode()).digest()[:8], "little")


def basin_folds(groups: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """Fold (0..folds-1) of every basin, [N] int64, from its group label ``groups`` [N] (the basin id itself
    for random groups). Whole groups go to one fold: groups are ordered by a hash of (``seed``, label), so the
    result does not depend on the order of the basins in the store, and placed largest first into the fold that
    holds the fewest basins so far (ties: the lowest fold), which balances the folds' basin counts.
    Refused (RootzoneError) when there are fewer groups than folds."""
    labels = np.asarray([str(g) for g in groups])
    unique, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(unique) < folds:
        raise RootzoneError(f"spatial cross-validation with {folds} folds needs at least {folds} basin groups, "
                            f"the store has {len(unique)}; lower --folds or choose another --cv-groups")
    order = sorted(range(len(unique)), key=lambda g: (-counts[g], _stable_key(unique[g], seed)))
    fold_of_group = np.empty(len(unique), dtype=np.int64)
    load = np.zeros(folds, dtype=np.int64)
    for g in order:
        f = int(np.argmin(load))
        fold_of_group[g] = f
        load[f] += counts[g]
    return fold_of_group[inverse]


def spatial_fold(time: pd.DatetimeIndex, basin_fold: np.ndarray, folds: int, fold: int,
                 spatiotemporal: bool = False) -> FoldSplit:
    """The split of fold ``fold`` for basin folds ``basin_fold`` [N] (:func:`basin_folds`): test = basins of
    fold ``fold``, validation = basins of fold ``fold + 1`` (mod ``folds``), training = the others; all whole
    years (spatial) or, with ``spatiotemporal``, test years = year block ``fold`` and training/validation years
    = the other whole years. Needs ``folds`` >= 3 (a training block is left)."""
    if not 0 <= fold < folds:
        raise RootzoneError(f"fold {fold} is out of range: with {folds} folds it must be in 0..{folds - 1}")
    if folds < 3:
        raise RootzoneError(f"spatial cross-validation needs --folds >= 3 (test, validation and training basins), "
                            f"got {folds}")
    years = whole_years(time)
    if spatiotemporal:
        if len(years) < folds:
            raise RootzoneError(f"the store covers {len(years)} whole years; spatio-temporal cross-validation with "
                                f"{folds} folds needs at least {folds} (lower --folds or use a longer record)")
        test_years = [int(y) for y in np.array_split(np.array(years), folds)[fold]]
        other = [y for y in years if y not in test_years]
        split_years = {"train": other, "validation": list(other), "test": test_years}
    elif not years:
        raise RootzoneError("the store covers no whole calendar year")
    else:
        split_years = {"train": list(years), "validation": list(years), "test": list(years)}
    basin_fold = np.asarray(basin_fold)
    validation_fold = (fold + 1) % folds
    basins = {"test": basin_fold == fold, "validation": basin_fold == validation_fold,
              "train": (basin_fold != fold) & (basin_fold != validation_fold)}
    for s, b in basins.items():
        if not b.any():
            raise RootzoneError(f"fold {fold} of {folds} has no {s} basins; lower --folds or add basins")
    masks = {s: np.isin(time.year, y) for s, y in split_years.items()}
    return FoldSplit(fold=fold, folds=folds, masks=masks, years={s: [int(v) for v in y] for s, y in
                                                                 split_years.items()},
                     basins=basins, scheme="spatiotemporal" if spatiotemporal else "spatial")


def basin_groups(ds, column: str) -> list[str]:
    """Group label of every basin of store ``ds``: its id (``column`` = ""), else the value of ``column``: a
    per-basin store variable (dims ``("basin",)``, e.g. a region code) or an attribute. RootzoneError when
    ``column`` is neither or has missing values."""
    ids = [str(b) for b in ds["basin"].values]
    if not column:
        return ids
    if column in ds.data_vars and ds[column].dims == ("basin",):
        values = ds[column].values
    elif "attribute" in ds.coords and column in [str(a) for a in ds["attribute"].values]:
        values = ds["attributes"].sel(attribute=column).values
    else:
        atts = [str(a) for a in ds["attribute"].values] if "attribute" in ds.coords else []
        raise RootzoneError(f"config field 'cv_groups': {column!r} is neither an attribute ({', '.join(atts)}) nor "
                            "a per-basin variable of the store")
    missing = [ids[i] for i, v in enumerate(values) if v is None or (isinstance(v, float) and not np.isfinite(v))
               or str(v) in ("", "nan")]
    if missing:
        raise RootzoneError(f"config field 'cv_groups': column {column!r} is missing for basins {missing[:5]}"
                            f"{' ...' if len(missing) > 5 else ''}; fill it or choose another column")
    return [str(v) for v in values]


def cv_fold(ds, cfg, fold: int | None = None) -> FoldSplit:
    """The split of fold ``fold`` (default ``cfg.fold``) of store ``ds`` under ``cfg.cv`` (``cfg.folds``,
    ``cfg.validation_years``, ``cfg.cv_groups``, ``cfg.cv_seed``)."""
    fold = cfg.fold if fold is None else fold
    time = pd.DatetimeIndex(ds.indexes["time"])
    scheme = getattr(cfg, "cv", "temporal")
    if scheme == "temporal":
        return temporal_fold(time, cfg.folds, fold, cfg.validation_years)
    if scheme not in CV_SCHEMES:
        raise RootzoneError(f"config field 'cv': must be one of {CV_SCHEMES}, got {scheme!r}")
    assignment = basin_folds(basin_groups(ds, cfg.cv_groups), cfg.folds, cfg.cv_seed)
    return spatial_fold(time, assignment, cfg.folds, fold, spatiotemporal=scheme == "spatiotemporal")
