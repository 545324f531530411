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

Security: full unpickling runs code stored in the file, and cannot be made safe. So the file is read by a
restricted loader that builds only tensors, ``TensorDataset``, numpy arrays and plain containers
(``dict``, ``list``, ``tuple``, ...): :class:`SafeUnpickler` for plain pickles, ``torch.load(weights_only=True)``
for ``torch.save`` files. A file that needs anything else is refused; ``--i-trust-this-file`` loads it
fully (``pickle.load`` / ``torch.load(weights_only=False)``) after a warning on stderr.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from rootzone.data.checks import GapReport, InputDataError, check_physical, parse_day
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


TRUST_FLAG = "--i-trust-this-file"

# (module, name) -> (module to import, attribute): everything the restricted loader may build. Nothing
# outside this table is imported or called, so a hostile file can at most make the import fail.
_NUMPY_CORE = "numpy._core.multiarray" if importlib.util.find_spec("numpy._core") else "numpy.core.multiarray"
SAFE_GLOBALS: dict[tuple[str, str], tuple[str, str]] = {
    **{(m, n): ("builtins", n) for m in ("builtins", "__builtin__")  # __builtin__: protocols 0-2
       for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str",
                 "bytes", "bytearray", "object")},  # object: the base copyreg._reconstructor gets
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
    ("copyreg", "_reconstructor"): ("copyreg", "_reconstructor"),
    ("copy_reg", "_reconstructor"): ("copyreg", "_reconstructor"),
    ("_codecs", "encode"): ("_codecs", "encode"),  # how protocol 2 pickles bytes
    ("torch.utils.data.dataset", "TensorDataset"): ("torch.utils.data.dataset", "TensorDataset"),
    ("torch.utils.data", "TensorDataset"): ("torch.utils.data.dataset", "TensorDataset"),
    **{("torch._utils", n): ("torch._utils", n) for n in ("_rebuild_tensor", "_rebuild_tensor_v2",
                                                           "_rebuild_tensor_v3", "_rebuild_parameter")},
    ("torch.nn.parameter", "Parameter"): ("torch.nn.parameter", "Parameter"),
    **{(m, n): (_NUMPY_CORE, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
       for n in ("_reconstruct", "scalar")},
    **{(m, "_frombuffer"): (_NUMPY_CORE.replace("multiarray", "numeric"), "_frombuffer")  # protocol 5
       for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
}
# torch.float32, ... and torch.FloatStorage, ... are allowed too (checked by name and type in find_class)
_TORCH_DTYPES = frozenset({"float16", "float32", "float64", "bfloat16", "half", "float", "double", "int8",
                           "int16", "int32", "int64", "uint8", "bool", "long", "int", "short"})


def _safe_load_from_bytes(data: bytes) -> Any:
    """Stands in for ``torch.storage._load_from_bytes`` (how a plain pickle stores a tensor's storage),
    which would fully unpickle the embedded bytes: here they go through ``weights_only`` too."""
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(_weights_only_needs(exc)) from None


class UnsafePickleError(InputDataError):
    """The file needs something the restricted loader does not build (the message says what)."""


class SafeUnpickler(pickle.Unpickler):
    """A plain-pickle reader that builds only tensors, TensorDataset, numpy arrays and plain containers:
    ``find_class`` is the only way a pickle reaches code, and it answers only from :data:`SAFE_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _safe_load_from_bytes
        target = SAFE_GLOBALS.get((module, name))
        if target is not None:
            return getattr(importlib.import_module(target[0]), target[1])
        if module == "torch" and (name.endswith("Storage") or name in _TORCH_DTYPES):
            import torch

            obj = getattr(torch, name, None)
            if isinstance(obj, torch.dtype) or (isinstance(obj, type) and name.endswith("Storage")):
                return obj
        raise UnsafePickleError(f"'{module}.{name}'")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("a persistent id (a torch.save file of an old format?)")



def _refuse_unsafe(path: Path, needs: str) -> InputDataError:
    return InputDataError(
        f"{path}: refused to unpickle: it needs {needs}, which the safe loader does not build (it builds "
        f"only tensors, TensorDataset, numpy arrays and plain containers); a full unpickle runs any code "
        f"stored in the file - pass {TRUST_FLAG} only if you trust where the file comes from")


def _torch_safe_globals() -> list:
    import numpy as np
    from torch.utils.data import TensorDataset

    extra = [TensorDataset, np.ndarray, np.dtype, importlib.import_module(_NUMPY_CORE)._reconstruct]
    extra += [type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "?")]
    return extra


def _torch_load_safe(path: Path) -> object:
    import torch

    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(_weights_only_needs(exc)) from None


def _weights_only_needs(exc: pickle.UnpicklingError) -> str:
    """What a ``torch.load(weights_only=True)`` refusal says the file needs (other errors: re-raised)."""
    text = " ".join(str(exc).split())
    if "Weights only load failed" not in text:
        raise exc
    m = re.search(r"GLOBAL ([\w.]+)", text)
    return f"'{m.group(1)}'" if m else "an object outside the allowed types"


def load_pickle(path: Path, trust: bool = False) -> object:
    """Read ``path`` (a ``torch.save`` zip file or a plain pickle).

    By default only tensors, ``TensorDataset``, numpy arrays and plain containers are built (see the
    module docstring); anything else is refused naming what the file needs. ``trust=True``
    (``--i-trust-this-file``) unpickles fully, which runs code from the file, after a warning on stderr.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"pickle '{path}' does not exist")
    if trust:
        print(f"rootzone: warning: {TRUST_FLAG}: unpickling {path} fully; this runs any code stored in the "
              "file", file=sys.stderr)
    try:
        if zipfile.is_zipfile(path):
            import torch

            if trust:
                return torch.load(path, map_location="cpu", weights_only=False)
            return _torch_load_safe(path)
        with path.open("rb") as f:
            if trust:
                return pickle.load(f)  # noqa: S301 - explicit opt-in: --i-trust-this-file
            obj = SafeUnpickler(f).load()
        if _is_legacy_torch_magic(obj):  # torch.save of the pre-1.6 format: torch's own safe loader reads it
            return _torch_load_safe(path)
        return obj
    except UnsafePickleError as exc:
        raise _refuse_unsafe(path, str(exc)) from None
    except InputDataError:
        raise
    except Exception as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise InputDataError(f"{path}: cannot unpickle ({detail})") from None


def _is_legacy_torch_magic(obj: object) -> bool:
    import torch

    return isinstance(obj, int) and not isinstance(obj, bool) and obj == torch.serialization.MAGIC_NUMBER


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
                  overwrite: bool = False, max_gap: int = 5, trust: bool = False) -> dict:
    """Import the legacy pickle into a store at ``out``; returns a summary. ``trust`` (the
    ``--i-trust-this-file`` flag) allows a full unpickle, which runs code from the file."""
    names = _names(names_file)
    t0 = parse_day(start, "--start")
    if max_gap < 0:
        raise InputDataError(f"--max-gap must be >= 0, got {max_gap}")
    splits = _splits(load_pickle(file, trust=trust), str(file))
    where = str(file)
    first = splits["train"]
    n_basins = first[0].shape[0]
    if n_basins == 0:
        raise InputDataError(f"{where}: the training split holds 0 basins; nothing to import")
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
    if x.shape[1] < 2:
        raise InputDataError(f"{where}: the splits hold {x.shape[1]} days together; need at least 2")
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
            check_physical(name, arr[b], time, f"{where} (basin {gauge}, x column {v})", max_gap=max_gap,
                           report=report, gauge=gauge)
        forcing[name] = arr
    missing = [n for n in ("precipitation", "temperature", "pet") if n not in forcing]
    if missing:
        raise InputDataError(f"{names_file}: no dynamic x column for required forcing '{missing[0]}' "
                             "(name it precipitation/temperature/pet or P/T/PET)")
    targets = {name: y[:, :, k].copy() for k, name in enumerate(y_names)}
    for k, name in enumerate(y_names):
        for b, gauge in enumerate(basins):
            check_physical(name, targets[name][b], time, f"{where} (basin {gauge}, y column {k})",
                           report=report, gauge=gauge)
    for k, name in enumerate(z_names):
        for b, gauge in enumerate(basins):
            check_physical(name, z[b, :, k], months, f"{where} (basin {gauge}, z column {k})",
                           hint="; TWSA must be in mm" if name == "twsa" else "")
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
