"""Extra per-basin products for ``rootzone data caravan --extra DIR`` (layout documented in docs/data.md).

    DIR/daily/<gauge_id>.csv     date,lai,et,swe   any subset of lai (m²/m², forcing), et (mm/d, target),
                                                   swe (mm, target); one row per day
    DIR/monthly/<gauge_id>.csv   month,twsa        twsa (mm, target); month as YYYY-MM (a day part is ignored)

A header may declare units in brackets, e.g. ``twsa [cm]`` or ``et [mm/day]``; values are converted to the
store's units. Every basin of the build needs a file in each folder that exists; empty cells are missing
observations (targets) or gaps to fill (lai, a forcing).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from rootzone.data.checks import (
    GapReport,
    InputDataError,
    check_physical,
    parse_dates,
    unit_factor,
)

DAILY_PRODUCTS = {"lai": ("forcing", "m2/m2"), "et": ("target", "mm/d"), "swe": ("target", "mm")}
MONTHLY_PRODUCTS = {"twsa": ("target", "mm")}
_HEADER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\[([^\]]*)\])?\s*$")


def _header(path: Path, allowed: dict[str, tuple[str, str]], key: str) -> dict[str, str | None]:
    """Column -> declared unit (None if undeclared) of a product table, checked against ``allowed``."""
    cols = list(pd.read_csv(path, nrows=0).columns)
    if not cols or cols[0].strip() != key:
        raise InputDataError(f"{path}: first column must be '{key}', found {cols[:1] or 'nothing'}")
    out: dict[str, str | None] = {}
    for col in cols[1:]:
        m = _HEADER.match(col)
        if not m or m.group(1) not in allowed:
            raise InputDataError(f"{path}: unknown column '{col}' (allowed: {', '.join(allowed)}, "
                                 "optionally with units in brackets, e.g. 'et [mm/d]')")
        out[m.group(1)] = m.group(2)
    return out


def product_variables(extra_dir: Path, gauge: str) -> tuple[list[str], list[str]]:
    """Names of the daily and monthly product variables, read from the first basin's files."""
    extra_dir = Path(extra_dir)
    if not extra_dir.is_dir():
        raise InputDataError(f"--extra {extra_dir}: not a directory")
    daily = monthly = []
    if (extra_dir / "daily").is_dir():
        daily = list(_header(_file(extra_dir, "daily", gauge), DAILY_PRODUCTS, "date"))
    if (extra_dir / "monthly").is_dir():
        monthly = list(_header(_file(extra_dir, "monthly", gauge), MONTHLY_PRODUCTS, "month"))
    if not daily and not monthly:
        raise InputDataError(f"--extra {extra_dir}: holds no daily/ or monthly/ folder (see docs/data.md)")
    return daily, monthly


def _file(extra_dir: Path, kind: str, gauge: str) -> Path:
    path = Path(extra_dir) / kind / f"{gauge}.csv"
    if not path.is_file():
        raise InputDataError(f"{path}: missing {kind} product file for basin {gauge}")
    return path


def _read(path: Path, key: str, allowed: dict, names: list[str], gauge: str) -> tuple[pd.DataFrame, dict]:
    units = _header(path, allowed, key)
    missing = [n for n in names if n not in units]
    if missing:
        raise InputDataError(f"{path}: missing column '{missing[0]}' (basin {gauge})")
    df = pd.read_csv(path)
    df.columns = [key, *units]
    return df, units


def read_daily(extra_dir: Path, gauge: str, time: pd.DatetimeIndex, names: list[str], max_gap: int,
               report: GapReport, record: slice | None = None) -> dict[str, np.ndarray]:
    """Daily products of one basin on ``time``: {name: [T] float32}, in store units. A forcing (lai) is
    gap-filled inside the basin's forcing ``record`` (a slice of ``time``; default all) and NaN outside."""
    path = _file(extra_dir, "daily", gauge)
    where = f"{path} (basin {gauge})"
    df, units = _read(path, "date", DAILY_PRODUCTS, names, gauge)
    df.index = parse_dates(df["date"], where)
    df = df.reindex(time)
    out = {}
    for name in names:
        canonical = DAILY_PRODUCTS[name][1]
        values = _numeric(df[name], where, name) * unit_factor(units[name], canonical, where, name)
        forcing = DAILY_PRODUCTS[name][0] == "forcing"
        if forcing and record is not None:
            inside = np.zeros(len(time), dtype=bool)
            inside[record] = True
            values[~inside] = np.nan
            check_physical(name, values[record], time[record], where, max_gap=max_gap, report=report,
                           gauge=gauge)  # in place: values[record] is a view
        else:
            check_physical(name, values, time, where, max_gap=max_gap if forcing else None, report=report,
                           gauge=gauge)
        out[name] = values.astype(np.float32)
    return out


def read_monthly(extra_dir: Path, gauge: str, months: pd.DatetimeIndex,
                 names: list[str]) -> dict[str, np.ndarray]:
    """Monthly products of one basin on ``months`` (first days of months): {name: [M] float32}."""
    path = _file(extra_dir, "monthly", gauge)
    where = f"{path} (basin {gauge})"
    df, units = _read(path, "month", MONTHLY_PRODUCTS, names, gauge)
    df.index = parse_dates(df["month"].astype(str).str.strip().str[:7], where, fmt="%Y-%m", column="month")
    df = df.reindex(months)
    out = {}
    for name in names:
        values = _numeric(df[name], where, name) * unit_factor(units[name], "mm", where, name)
        check_physical(name, values, months, where,
                       hint=f"; declare units in the header, e.g. '{name} [cm]'")
        out[name] = values.astype(np.float32)
    return out


def _numeric(col: pd.Series, where: str, name: str) -> np.ndarray:
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) & col.notna().to_numpy() & (col.astype(str).str.strip() != "").to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputDataError(f"{where}: '{name}' value {col.iloc[i]!r} on {col.index[i]:%Y-%m-%d} "
                             "is not a number")
    return values
