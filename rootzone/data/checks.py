"""Checks shared by the importers: dates, gaps, physically possible values and declared units.

Every failure is an :class:`InputDataError` with one line naming the file, basin, variable and date, so
the CLI can print it and exit non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rootzone.errors import RootzoneError

NEGATIVE_TOLERANCE = 0.1  # mm/d: precipitation, PET or ET down to -0.1 are rounding noise, set to 0
KELVIN_MEDIAN = 150.0  # °C: a median daily mean temperature above this is Kelvin, not Celsius
TEMPERATURE_RANGE = (-90.0, 60.0)  # °C: daily means outside it are impossible on Earth

# accepted spellings of declared units -> (canonical unit, multiplier to canonical)
UNIT_ALIASES: dict[str, dict[str, float]] = {
    "mm/d": {"mm/d": 1.0, "mm/day": 1.0, "mm d-1": 1.0, "mm d**-1": 1.0, "mm": 1.0, "kg m-2 d-1": 1.0},
    "degC": {"degc": 1.0, "°c": 1.0, "c": 1.0, "deg c": 1.0, "celsius": 1.0, "degrees_celsius": 1.0},
    "mm": {"mm": 1.0, "cm": 10.0, "m": 1000.0, "kg m-2": 1.0, "kg/m2": 1.0},
    "m2/m2": {"m2/m2": 1.0, "m2 m-2": 1.0, "m^2/m^2": 1.0, "1": 1.0, "-": 1.0, "": 1.0},
}


class InputDataError(RootzoneError):
    """Input data that cannot become a store: missing, malformed or physically impossible."""


@dataclass
class GapReport:
    """Days filled by interpolation, per variable: {variable: {basin: days}}."""

    filled: dict[str, dict[str, int]] = field(default_factory=dict)
    clipped: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, kind: str, variable: str, basin: str, n: int) -> None:
        if n:
            getattr(self, kind).setdefault(variable, {})[basin] = n

    def summary(self) -> list[str]:
        lines = []
        for kind, verb in (("filled", "gap-filled by linear interpolation"),
                           ("clipped", "tiny negative values set to 0")):
            for var, per in sorted(getattr(self, kind).items()):
                lines.append(f"{var}: {sum(per.values())} days {verb} in {len(per)} basin(s)")
        return lines

    def as_attrs(self) -> dict[str, dict[str, int]]:
        return {var: int(sum(per.values())) for var, per in self.filled.items()}


def parse_dates(raw: pd.Series | np.ndarray, where: str, fmt: str | None = "%Y-%m-%d",
                column: str = "date") -> pd.DatetimeIndex:
    """Parse a date column; refuse unparseable, duplicate or non-increasing dates (message names the row)."""
    raw = pd.Series(raw)
    if pd.api.types.is_datetime64_any_dtype(raw):
        dates = pd.to_datetime(raw)
    else:
        dates = pd.to_datetime(raw.astype(str).str.strip(), format=fmt, errors="coerce")
    bad = dates.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputDataError(f"{where}: unparseable {column} {str(raw.iloc[i])!r} in row {i + 1}"
                             + (f" (expected {fmt.replace('%', '').replace('Y', 'YYYY')})" if fmt else ""))
    index = pd.DatetimeIndex(dates).normalize()
    dup = index.duplicated()
    if dup.any():
        raise InputDataError(f"{where}: duplicate {column} {index[np.flatnonzero(dup)[0]]:%Y-%m-%d}")
    step = np.diff(index.values.astype("datetime64[D]").astype(np.int64))
    if (step <= 0).any():
        i = int(np.flatnonzero(step <= 0)[0])
        raise InputDataError(f"{where}: {column}s not increasing: {index[i + 1]:%Y-%m-%d} follows "
                             f"{index[i]:%Y-%m-%d} (row {i + 2})")
    return index


def fill_gaps(values: np.ndarray, time: pd.DatetimeIndex, max_gap: int, where: str, variable: str) -> int:
    """Fill NaN runs of at most ``max_gap`` days in place ([T] array): linear interpolation inside,
    the nearest value at either end. Longer runs are refused. Returns the number of days filled."""
    nan = np.isnan(values)
    if not nan.any():
        return 0
    if nan.all():
        raise InputDataError(f"{where}: '{variable}' has no values in "
                             f"{time[0]:%Y-%m-%d}..{time[-1]:%Y-%m-%d}")
    edges = np.diff(np.r_[0, nan.astype(np.int8), 0])
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths = stops - starts
    if lengths.max() > max_gap:
        i = int(np.argmax(lengths))
        raise InputDataError(
            f"{where}: '{variable}' is missing for {int(lengths[i])} days from {time[starts[i]]:%Y-%m-%d} "
            f"(gaps up to --max-gap {max_gap} days are interpolated; longer ones are refused)")
    x = np.arange(len(values))
    values[nan] = np.interp(x[nan], x[~nan], values[~nan])  # np.interp holds the end values flat
    return int(nan.sum())


def check_nonnegative(values: np.ndarray, time: pd.Index, where: str, variable: str,
                      tolerance: float = NEGATIVE_TOLERANCE, hint: str = "") -> int:
    """Set values in [-tolerance, 0) to 0 in place; refuse anything more negative. Returns days clipped."""
    with np.errstate(invalid="ignore"):
        bad = values < -tolerance
        tiny = (values < 0) & ~bad
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputDataError(f"{where}: negative '{variable}' {values[i]:.4g} on {_day(time[i])}"
                             f" ({int(bad.sum())} such days){hint}")
    values[tiny] = 0.0
    return int(tiny.sum())


def check_temperature(values: np.ndarray, time: pd.Index, where: str, variable: str = "temperature") -> None:
    """Refuse temperatures that look like Kelvin or lie outside the possible range of daily means (°C)."""
    if np.isfinite(values).any() and np.nanmedian(values) > KELVIN_MEDIAN:
        raise InputDataError(f"{where}: '{variable}' looks like Kelvin (median {np.nanmedian(values):.1f}); "
                             "degrees Celsius expected")
    lo, hi = TEMPERATURE_RANGE
    with np.errstate(invalid="ignore"):
        bad = (values < lo) | (values > hi)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputDataError(f"{where}: impossible '{variable}' {values[i]:.4g} °C on {_day(time[i])} "
                             f"(daily means must lie in [{lo:g}, {hi:g}] °C)")


def unit_factor(declared: str | None, canonical: str, where: str, variable: str) -> float:
    """Multiplier from a declared unit to the canonical one; None (undeclared) means canonical."""
    if declared is None:
        return 1.0
    key = " ".join(str(declared).strip().lower().split())
    aliases = UNIT_ALIASES.get(canonical, {canonical.lower(): 1.0})
    if key == "k" and canonical == "degC":
        raise InputDataError(f"{where}: '{variable}' is declared in Kelvin; convert to degrees Celsius first")
    if key not in aliases:
        raise InputDataError(f"{where}: '{variable}' has units '{declared}', expected {canonical} "
                             f"(accepted: {', '.join(sorted(a for a in aliases if a))})")
    return aliases[key]


def _day(t: object) -> str:
    return f"{pd.Timestamp(t):%Y-%m-%d}"
