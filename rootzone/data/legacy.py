"""Import the original study's pickle (``rootzone data import-pickle``).

The file holds a dict with one entry per split (training/validation/test; spellings such as ``train``,
``val``, ``valid``, ``testing`` accepted), each a ``torch.utils.data.TensorDataset(x, y, z)``:

    x [B, T_s, V]  daily inputs: forcing and static attributes (statics constant along time)
    y [B, T_s, 3]  daily targets Q (mm/d), ET (mm/d), SWE (mm)
    z [B, M_s, K]  monthly variables, TWSA (mm) first

The splits are consecutive in time: training starts on ``--start``, validation follows it, then test.
NAMES.json names the columns: ``{"x": [...V names], "y": ["q", "et", "swe"], "z": ["twsa", ...]}`` and
optionally ``"units": {"name": "unit"}`` for extra inputs. Schema names (precipitation, temperature,
pet, lai) or common aliases (P, T, PET, LAI, Q, ET, SWE, TWSA) are recognised; other x columns that are
constant along time in every basin and split become attributes, the rest extra daily inputs. Extra z
columns are kept as auxiliary monthly variables. Split bounds are stored in the ``legacy_splits``
attribute of the store.

Security: unpickling runs code from the file. Only import files you trust.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from rootzone.data.checks import GapReport, InputDataError, check_nonnegative, check_temperature, fill_gaps
from rootzone.data.schema import FORCING_UNITS, TARGET_UNITS, make_dataset, month_index, write_store

SPLIT_KEYS = {
    "train": ("train", "training", "trn"),
    "validation": ("validation", "val", "valid", "validate", "vali"),
    "test": ("test", "testing", "tst"),
}
ALIASES = {
    "p": "precipitation", "prcp": "precipitation", "precip": "precipitation", "pr": "precipitation",
    "precipitation": "precipitation", "total_precipitation_sum": "precipitation",
    "t": "temperature", "temp": "temperature", "tmean": "temperature", "tas": "temperature",
    "temperature": "temperature", "temperature_2m_mean": "temperature",
    "pet": "pet", "ep": "pet", "e0": "pet", "potential_evaporation": "pet", "lai": "lai",
    "q": "q", "streamflow": "q", "discharge": "q", "runoff": "q", "et": "et", "evapotranspiration": "et",
    "swe": "swe", "snow": "swe", "twsa": "twsa", "tws": "twsa", "grace": "twsa",
}


def load_pickle(path: Path) -> object:
    """Unpickle ``path`` (a ``torch.save`` zip file or a plain pickle); runs code from the file."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"pickle '{path}' does not exist")
    try:
        if zipfile.is_zipfile(path):
            import torch

            return torch.load(path, map_location="cpu", weights_only=False)  # trusted file: full unpickling
        with path.open("rb") as f:
            return pickle.load(f)  # noqa: S301 - documented: only import trusted files
    except Exception as exc:
        raise InputDataError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc})") from None


def _splits(obj: object, where: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if not isinstance(obj, dict):
        raise InputDataError(f"{where}: expected a dict of splits, found {type(obj).__name__}")
    lower = {str(k).lower(): k for k in obj}
    out = {}
    for split, spellings in SPLIT_KEYS.items():
        key = next((lower[s] for s in spellings if s in lower), None)
        if key is None:
            continue
        item = obj[key]
        tensors = getattr(item, "tensors", item)
        if not isinstance(tensors, (tuple, list)) or len(tensors) != 3:
            raise InputDataError(f"{where}: split '{key}' is not a TensorDataset(x, y, z)")
        arrays = tuple(np.asarray(t.numpy() if hasattr(t, "numpy") else t, dtype=np.float64) for t in tensors)
        for name, arr in zip("xyz", arrays):
            if arr.ndim != 3:
                raise InputDataError(f"{where}: split '{key}': {name} must be 3-d [B, time, vars], has shape "
                                     f"{list(arr.shape)}")
        out[split] = arrays
    if "train" not in out:
        raise InputDataError(f"{where}: no training split (keys found: {', '.join(map(str, obj))}; "
                             "expected train/training, val/validation, test)")
    return out


def _names(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"names file '{path}' does not exist")
    try:
        names = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{path}: not valid JSON ({exc})") from None
    for key in ("x", "y", "z"):
        if not isinstance(names.get(key), list) or not all(isinstance(n, str) for n in names[key]):
            raise InputDataError(f"{path}: '{key}' must be a list of column names")
    return names


def import_pickle(file: Path, out: str, names_file: Path, start: str, basins_file: Path | None = None,
                  overwrite: bool = False, max_gap: int = 5) -> dict:
    """Import the legacy pickle into a store at ``out``; returns a summary."""
    names = _names(names_file)
    try:
        t0 = pd.Timestamp(start)
    except ValueError:
        raise InputDataError(f"--start '{start}' is not a date (YYYY-MM-DD)") from None
    splits = _splits(load_pickle(file), str(file))
    where = str(file)
    first = splits["train"]
    n_basins = first[0].shape[0]
    for split, (x, y, z) in splits.items():
        if x.shape[0] != n_basins or y.shape[0] != n_basins or z.shape[0] != n_basins:
            raise InputDataError(f"{where}: split '{split}' has {x.shape[0]}/{y.shape[0]}/{z.shape[0]} "
                                 f"basins in x/y/z, training has {n_basins}")
        if x.shape[1] != y.shape[1]:
            raise InputDataError(f"{where}: split '{split}': x has {x.shape[1]} days, y {y.shape[1]}")
        for key, arr in zip("xyz", (x, y, z)):
            if arr.shape[2] != len(names[key]):
                raise InputDataError(f"{where}: split '{split}': {key} has {arr.shape[2]} columns, "
                                     f"{names_file} names {len(names[key])}")
    x = np.concatenate([s[0] for s in splits.values()], axis=1)
    y = np.concatenate([s[1] for s in splits.values()], axis=1)
    time = pd.date_range(t0, periods=x.shape[1], freq="D")
    bounds, i = {}, 0
    for split, s in splits.items():
        bounds[split] = [f"{time[i]:%Y-%m-%d}", f"{time[i + s[0].shape[1] - 1]:%Y-%m-%d}"]
        i += s[0].shape[1]
    basins = _basin_ids(basins_file, n_basins)
    x_names = [ALIASES.get(n.lower(), n) for n in names["x"]]
    static = _statics(splits, x_names, names["x"], basins, where)
    months = month_index(time)
    z = _monthly(splits, bounds, months, basins, where)

    y_names = [ALIASES.get(n.lower(), n) for n in names["y"]]
    z_names = [ALIASES.get(n.lower(), n) for n in names["z"]]
    if y_names != ["q", "et", "swe"][: len(y_names)] or not y_names:
        raise InputDataError(f"{names_file}: 'y' must name Q, ET, SWE in that order, got {names['y']}")
    if not z_names or z_names[0] != "twsa":
        raise InputDataError(f"{names_file}: the first 'z' column must be TWSA, got {names['z'][:1]}")
    for key, lst in (("x", x_names), ("z", z_names)):
        dup = pd.Index(lst)[pd.Index(lst).duplicated()]
        if len(dup):
            raise InputDataError(f"{names_file}: '{key}' names '{dup[0]}' twice")

    attributes = pd.DataFrame({x_names[v]: x[:, 0, v] for v in range(x.shape[2]) if static[v]}, index=basins)
    report = GapReport()
    forcing = {}
    for v, name in enumerate(x_names):
        if static[v]:
            continue
        arr = x[:, :, v].copy()
        for b, gauge in enumerate(basins):
            w = f"{where} (basin {gauge}, x column {v})"
            if name == "temperature":
                check_temperature(arr[b], time, w, name)
            elif name in ("precipitation", "pet", "lai"):
                report.add("clipped", name, gauge, check_nonnegative(arr[b], time, w, name))
            report.add("filled", name, gauge, fill_gaps(arr[b], time, max_gap, w, name))
        forcing[name] = arr
    missing = [n for n in ("precipitation", "temperature", "pet") if n not in forcing]
    if missing:
        raise InputDataError(f"{names_file}: no dynamic x column for required forcing '{missing[0]}' "
                             "(name it precipitation/temperature/pet or P/T/PET)")
    targets = {name: y[:, :, k] for k, name in enumerate(y_names)}
    for name in ("q", "swe"):
        if name in targets:
            for b, gauge in enumerate(basins):
                check_nonnegative(targets[name][b], time, f"{where} (basin {gauge}, y)", name, tolerance=0.0)
    targets["twsa"] = z[:, :, 0]
    units = names.get("units", {})
    extra = {n: xr.DataArray(z[:, :, k].astype(np.float32), dims=("basin", "month"),
                             attrs={"role": "auxiliary", "units": str(units.get(n, "1"))})
             for k, n in enumerate(z_names) if k > 0}
    ds = make_dataset(basins, time, forcing, targets, attributes, source=f"legacy pickle ({Path(file).name})",
                      extra=extra, attrs={"legacy_splits": bounds, "gap_filled_days": report.as_attrs()})
    for n in forcing:
        if n not in FORCING_UNITS:
            ds[n].attrs["units"] = str(units.get(n, "1"))
    write_store(ds, out, overwrite=overwrite)
    return {"basins": n_basins, "start": time[0], "end": time[-1], "splits": bounds,
            "forcing": list(forcing), "attributes": list(attributes.columns),
            "targets": [t for t in targets if t in TARGET_UNITS], "gaps": report.summary()}


def _constant(x: np.ndarray) -> np.ndarray:
    """[B, T, V] -> [V]: column constant along time (and finite) in every basin."""
    return (np.isfinite(x).all(axis=1) & (x == x[:, :1]).all(axis=1)).all(axis=0)


def _statics(splits: dict, x_names: list[str], raw: list[str], basins: list[str],
             where: str) -> list[bool]:
    """Which x columns are static attributes: constant along time across all splits (never a schema
    forcing). A column constant within each split but different between them means the splits do not
    list the same basins in the same order: refused."""
    x = np.concatenate([s[0] for s in splits.values()], axis=1)
    overall = _constant(x)
    per_split = np.all([_constant(s[0]) for s in splits.values()], axis=0)
    for v in np.flatnonzero(per_split & ~overall):
        b = int(np.flatnonzero((x[:, :, v] != x[:, :1, v]).any(axis=1))[0])
        raise InputDataError(f"{where}: x column '{raw[v]}' is constant in each split but changes between "
                             f"splits for basin {basins[b]}: do all splits list the same basins in the same "
                             "order?")
    return [bool(overall[v]) and x_names[v] not in FORCING_UNITS for v in range(x.shape[2])]


def _monthly(splits: dict, bounds: dict, months: pd.DatetimeIndex, basins: list[str],
             where: str) -> np.ndarray:
    """Concatenate the splits' z along months [B, M, K]: each split covers the months its days touch
    (or only its whole months); a month shared by two splits must agree where both have values."""
    n_basins, k = next(iter(splits.values()))[2].shape[0], next(iter(splits.values()))[2].shape[2]
    z = np.full((n_basins, len(months), k), np.nan)
    for split, (_, _, zs) in splits.items():
        lo, hi = pd.Timestamp(bounds[split][0]), pd.Timestamp(bounds[split][1])
        touched = pd.date_range(lo.to_period("M").to_timestamp(), hi, freq="MS")
        whole = touched[(touched >= lo) & ((touched + pd.offsets.MonthEnd(0)) <= hi)]
        if zs.shape[1] == len(touched):
            m = touched
        elif zs.shape[1] == len(whole):
            m = whole
        else:
            raise InputDataError(f"{where}: split '{split}' ({bounds[split][0]}..{bounds[split][1]}) has "
                                 f"{zs.shape[1]} months in z, expected {len(touched)} (months touched) or "
                                 f"{len(whole)} (whole months)")
        idx = months.get_indexer(m)
        old = z[:, idx]
        clash = np.isfinite(old) & np.isfinite(zs) & ~np.isclose(old, zs)
        if clash.any():
            b, j, _ = np.argwhere(clash)[0]
            raise InputDataError(f"{where}: month {m[j]:%Y-%m} of basin {basins[b]} differs between splits")
        z[:, idx] = np.where(np.isfinite(zs), zs, old)
    return z


def _basin_ids(path: Path | None, n: int) -> list[str]:
    if path is None:
        return [f"legacy_{i:05d}" for i in range(n)]
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"basin list '{path}' does not exist")
    ids = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    ids = [i for i in ids if i]
    if len(ids) != n:
        raise InputDataError(f"basin list '{path}' has {len(ids)} ids, the pickle {n} basins")
    if len(set(ids)) != n:
        raise InputDataError(f"basin list '{path}' lists a basin twice")
    return ids
