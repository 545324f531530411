"""Temporal k-fold cross-validation over blocks of whole calendar years (DESIGN §7).

The whole years of the record are cut into k contiguous blocks. Fold i: test = block i; validation =
``validation_years`` years of the training blocks (those right after the test block, or right before it
when it is the last block); training = the remaining whole years. ``validation_years = 0`` (the config
default) means ``DEFAULT_VALIDATION_YEARS`` (2) when the record leaves every fold a training year with them,
else as many as it allows (at least 1). Days of partial years at the edges of the
record belong to no split. A day belongs to at most one split.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rootzone.errors import RootzoneError

SPLITS = ("train", "validation", "test")
DEFAULT_VALIDATION_YEARS = 2  # validation years when ``validation_years = 0`` and the record allows


@dataclass(frozen=True)
class FoldSplit:
    """Day masks ([T] bool over the store's time axis) and the years of each split."""

    fold: int
    folds: int
    masks: dict[str, np.ndarray]
    years: dict[str, list[int]]

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
