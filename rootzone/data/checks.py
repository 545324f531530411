"""Checks shared by the importers: dates, gaps, physically possible values and declared units.

Every failure is an :class:`InputDataError` with one line naming the file, basin, variable and date, so
the CLI can print it and exit non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rootzone.errors import InputDataError  # defined in rootzone.errors; still importable from here

NEGATIVE_TOLERANCE = 0.1  # mm/d: precipitation, ET, SWE down to -0.1 are rounding noise, set to 0
PET_CONDENSATION_LIMIT = 5.0  # mm/d: ERA5-Land PET down to about -1.3 is condensation (dew), set to 0;
# below -5 it cannot be dew or rounding (a flipped sign or wrong units) and is refused
KELVIN_MEDIAN = 150.0  # °C: a median daily mean temperature above this is Kelvin, not Celsius
TEMPERATURE_RANGE = (-90.0, 60.0)  # °C: daily means outside it are impossible on Earth
LAI_MAX = 15.0  # m²/m²: no canopy has more
TWSA_MAX = 5000.0  # mm: |anomaly| beyond 5 m is a unit error
NONNEGATIVE = ("precipitation", "pet", "lai", "et", "swe", "era5_swe")  # clipped down to -NEGATIVE_TOLERANCE
# (pet: down to -PET_CONDENSATION_LIMIT)
PET_SIGN_HINT = ("; most PET values are negative, i.e. the ECMWF sign convention (evaporation < 0) - "
                 "Caravan publishes PET positive, flip the sign")

# accepted spellings of declared units -> (canonical unit, multiplier to canonical)
UNIT_ALIASES: dict[str, dict[str, float]] = {
    "mm/d": {"mm/d": 1.0, "mm/day": 1.0, "mm d-1": 1.0, "mm d**-1": 1.0, "mm": 1.0, "kg m-2 d-1": 1.0},
    "degC": {"degc": 1.0, "°c": 1.0, "c": 1.0, "deg c": 1.0, "celsius": 1.0, "degrees_celsius": 1.0},
    "mm": {"mm": 1.0, "cm": 10.0, "m": 1000.0, "kg m-2": 1.0, "kg/m2": 1.0},
    "m2/m2": {"m2/m2": 1.0, "m2 m-2": 1.0, "m^2/m^2": 1.0, "1": 1.0, "-": 1.0, "": 1.0},
    "W m-2": {"w m-2": 1.0, "w/m2": 1.0, "w m**-2": 1.0, "w/m^2": 1.0, "w m^-2": 1.0, "w/m²": 1.0,
              "w m⁻²": 1.0},
    "kPa": {"kpa": 1.0, "hpa": 0.1, "pa": 0.001},
}


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 day"``, ``"3 days"``: the count and the word in the right number."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


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
                           ("clipped", "with tiny negative values set to 0")):
            for var, per in sorted(getattr(self, kind).items()):
                what = "with negative values (condensation) set to 0" if (kind, var) == ("clipped", "pet") else verb
                lines.append(f"{var}: {plural(sum(per.values()), 'day')} {what} in {plural(len(per), 'basin')}")
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


def parse_day(text: str | None, option: str) -> pd.Timestamp | None:
    """A ``YYYY-MM-DD`` command-line date (None stays None); anything else is refused naming ``option``."""
    if text is None:
        return None
    try:
        return pd.Timestamp(pd.to_datetime(str(text).strip(), format="%Y-%m-%d"))
    except (ValueError, TypeError, OverflowError):
        raise InputDataError(f"{option} {str(text)!r} is not a date (expected YYYY-MM-DD)") from None


def check_no_inf(values: np.ndarray, time: pd.Index, where: str, variable: str) -> None:
    """Refuse +inf/-inf (NaN is a gap or a missing observation, handled by the caller)."""
    inf = np.isinf(values)
    if inf.any():
        i = int(np.flatnonzero(inf)[0])
        raise InputDataError(f"{where}: infinite '{variable}' ({values[i]:+g}) on {_day(time[i])} "
                             f"({int(inf.sum())} such values)")


def fill_gaps(values: np.ndarray, time: pd.DatetimeIndex, max_gap: int, where: str, variable: str) -> int:
    """Fill NaN runs of at most ``max_gap`` days in place ([T] array): linear interpolation inside,
    the nearest value at either end. Longer runs and infinite values are refused. Returns the number of
    days filled."""
    check_no_inf(values, time, where, variable)
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
            f"{where}: '{variable}' is missing for {plural(int(lengths[i]), 'day')} from {time[starts[i]]:%Y-%m-%d} "
            f"(gaps up to --max-gap {max_gap} days are interpolated; longer ones are refused)")
    x = np.arange(len(values))
    values[nan] = np.interp(x[nan], x[~nan], values[~nan])  # np.interp holds the end values flat
    return int(nan.sum())


def check_nonnegative(values: np.ndarray, time: pd.Index, where: str, variable: str,
                      tolerance: float = NEGATIVE_TOLERANCE, hint: str = "") -> int:
    """Set values in [-tolerance, 0) to 0 in place; refuse anything more negative, and +/-inf. Returns
    days clipped."""
    check_no_inf(values, time, where, variable)
    with np.errstate(invalid="ignore"):
        bad = values < -tolerance
        tiny = (values < 0) & ~bad
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputDataError(f"{where}: negative '{variable}' {values[i]:.4g} on {_day(time[i])}"
                             f" ({int(bad.sum())} such {'day' if bad.sum() == 1 else 'days'}){hint}")
    values[tiny] = 0.0
    return int(tiny.sum())


def check_temperature(values: np.ndarray, time: pd.Index, where: str, variable: str = "temperature") -> None:
    """Refuse temperatures that look like Kelvin or lie outside the possible range of daily means (°C)."""
    check_no_inf(values, time, where, variable)
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


def check_physical(name: str, values: np.ndarray, time: pd.Index, where: str, *, label: str | None = None,
                   max_gap: int | None = None, report: GapReport | None = None, gauge: str = "",
                   hint: str = "") -> None:
    """The physical checks of one basin's series of the store variable ``name``, in place: the one set of
    checks every importer applies (Caravan, its extra products, the legacy pickle).

    - ±inf is refused everywhere (NaN is a gap in forcing, a missing observation in targets);
    - temperature: not Kelvin, daily means inside TEMPERATURE_RANGE;
    - q: never negative (``hint`` is appended to the message);
    - precipitation, lai, et, swe, era5_swe: values down to -NEGATIVE_TOLERANCE set to 0 (reported as
      clipped), anything more negative refused;
    - pet: mostly negative is refused with the sign-convention hint; otherwise negative values down to
      -PET_CONDENSATION_LIMIT (ERA5-Land's condensation, dew) are set to 0 (reported as clipped), below it
      refused (a flipped sign or wrong units);
    - lai: at most LAI_MAX; twsa (monthly, mm): |anomaly| at most TWSA_MAX (``hint`` appended);
    - with ``max_gap`` (a forcing): NaN runs up to ``max_gap`` days interpolated (reported), longer refused.

    ``label`` is the variable's name in the input (e.g. a Caravan column) used in messages.
    """
    label = label or name
    report = report if report is not None else GapReport()
    check_no_inf(values, time, where, label)
    if name == "temperature":
        check_temperature(values, time, where, label)
    elif name == "q":
        check_nonnegative(values, time, where, label, tolerance=0.0, hint=hint)
    elif name in NONNEGATIVE:
        tolerance = NEGATIVE_TOLERANCE
        if name == "pet":
            with np.errstate(invalid="ignore"):
                negative = values < 0
            if negative.sum() > 0.5 * np.isfinite(values).sum():
                tolerance = 0.0  # mostly negative: the sign convention, not condensation
            else:
                tolerance = PET_CONDENSATION_LIMIT
        sign = PET_SIGN_HINT if name == "pet" and tolerance == 0.0 else ""
        report.add("clipped", name, gauge, check_nonnegative(values, time, where, label, tolerance, hint=sign))
        if name == "lai" and np.nanmax(values, initial=0.0) > LAI_MAX:
            i = int(np.nanargmax(values))
            raise InputDataError(f"{where}: impossible '{label}' {values[i]:.4g} m2/m2 on {_day(time[i])} "
                                 f"(leaf area index above {LAI_MAX:g})")
    elif name == "twsa":
        big = np.abs(np.nan_to_num(values)) > TWSA_MAX
        if big.any():
            i = int(np.flatnonzero(big)[0])
            raise InputDataError(f"{where}: implausible '{label}' {values[i]:.4g} mm in "
                                 f"{pd.Timestamp(time[i]):%Y-%m} (|anomaly| > {TWSA_MAX:g} mm{hint})")
    if max_gap is not None:
        report.add("filled", name, gauge, fill_gaps(values, time, max_gap, where, label))


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
