"""The prediction store's schema and bookkeeping: variables and flags, the job (:class:`PredictionJob`), the
lazy template, the job fingerprint that decides resume vs refuse, which paths may be written, and the
``chunks_done`` / ``prediction_complete`` attributes. See :mod:`rootzone.predict.run` for the whole workflow."""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from rootzone.errors import RootzoneError
from rootzone.experiment import Member
from rootzone.metrics import INTERVAL
from rootzone.safety import (
    PREDICTION_STORE_KEY,
    check_output_path,
    ensure_replaceable,
    fs_and_path,
    is_local,
    owner_attributes,
)

# name -> (CF units, long_name)
VARIABLES: dict[str, tuple[str, str]] = {
    "smax": ("mm", "active root zone storage capacity S_max"),
    "s": ("mm", "root zone soil moisture S (end of day)"),
    "w": ("mm", "snow storage W (end of day; identical to swe)"),
    "g": ("mm", "groundwater storage G (end of day)"),
    "q": ("mm d-1", "streamflow per unit basin area"),
    "et": ("mm d-1", "actual evapotranspiration (interception + transpiration/soil evaporation)"),
    "swe": ("mm", "snow water equivalent"),
    "tws": ("mm", "total water storage W + S + G"),
}
# what each kind of model (Config.model) produces; a member of another kind writes NaN into the rest
MODEL_VARIABLES: dict[str, tuple[str, ...]] = {"hybrid": tuple(VARIABLES), "lstm": ("q", "et", "swe", "w", "tws")}
QUANTILE_SUFFIXES = ("q05", "q95")  # <var>_q05 / <var>_q95: the members' 5-95 % interval (metrics.INTERVAL)
PREDICTIVE_SUFFIXES = ("p05", "p95")  # <var>_p05 / <var>_p95: the predictive 90 % interval (rootzone.calibration)
PREDICTIVE_VARIABLES = ("q", "et", "swe")  # observed daily fluxes/states with a predictive interval
COMPLETE_KEY = "prediction_complete"
DONE_KEY = "chunks_done"
JOB_KEY = PREDICTION_STORE_KEY  # "prediction_job": the attribute that marks a store as rootzone's prediction


@dataclass
class PredictionJob:
    """Everything a chunk worker (local loop or Ray task) needs; plain data, picklable."""

    experiment: str
    store: str
    out: str
    members: list[Member]
    variables: list[str]
    chunk_basins: int
    n_basins: int
    device: str = "auto"
    physics: str = "auto"
    inputs: list[str] = field(default_factory=list)  # store variables every chunk reads
    attributes: list[str] = field(default_factory=list)  # union of the members' attributes

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_basins / self.chunk_basins)

    def bounds(self, index: int) -> tuple[int, int]:
        lo = index * self.chunk_basins
        return lo, min(lo + self.chunk_basins, self.n_basins)


@dataclass
class ChunkResult:
    index: int
    invalid: dict[str, str]  # basin id -> reason
    seconds: float

# ---------------------------------------------------------------------------------------------- output
def fingerprint(job: PredictionJob, ds: xr.Dataset) -> dict:
    basins = hashlib.sha1("\n".join(map(str, ds["basin"].values)).encode()).hexdigest()[:16]
    return {"experiment": job.experiment, "store": job.store, "members": [m.name for m in job.members],
            "checkpoints_sha256": {m.name: m.sha256 for m in job.members},
            "variables": job.variables, "chunk_basins": job.chunk_basins, "n_basins": job.n_basins,
            "n_days": int(ds.sizes["time"]), "basins_sha1": basins}


def template(job: PredictionJob, ds: xr.Dataset, warmup: int) -> xr.Dataset:
    """Lazy (never computed) dataset with the layout of the output store."""
    nm, nb, nt = len(job.members), job.n_basins, ds.sizes["time"]
    cb, ct = job.chunk_basins, min(nt, 3653)
    data: dict[str, xr.DataArray] = {}
    for v in job.variables:
        units, long_name = VARIABLES[v]
        data[v] = xr.DataArray(da.full((nm, nb, nt), np.nan, dtype=np.float32, chunks=(1, cb, ct)),
                               dims=("member", "basin", "time"), attrs={"units": units, "long_name": long_name})
        data[f"{v}_mean"] = xr.DataArray(da.full((nb, nt), np.nan, dtype=np.float32, chunks=(cb, ct)),
                                         dims=("basin", "time"),
                                         attrs={"units": units, "long_name": f"ensemble mean of {long_name}",
                                                "cell_methods": "member: mean"})
        data[f"{v}_std"] = xr.DataArray(da.full((nb, nt), np.nan, dtype=np.float32, chunks=(cb, ct)),
                                        dims=("basin", "time"),
                                        attrs={"units": units, "cell_methods": "member: standard_deviation",
                                               "long_name": f"ensemble spread (std over members, ddof=0) of "
                                                            f"{long_name}"})
        for q, name in zip(INTERVAL, QUANTILE_SUFFIXES):
            data[f"{v}_{name}"] = xr.DataArray(
                da.full((nb, nt), np.nan, dtype=np.float32, chunks=(cb, ct)), dims=("basin", "time"),
                attrs={"units": units, "cell_methods": f"member: quantile {q:g}",
                       "long_name": f"{100 * q:g} % quantile over members (linear interpolation) of {long_name}"})
        if v in PREDICTIVE_VARIABLES:
            for q, name in zip(INTERVAL, PREDICTIVE_SUFFIXES):
                data[f"{v}_{name}"] = xr.DataArray(
                    da.full((nb, nt), np.nan, dtype=np.float32, chunks=(cb, ct)), dims=("basin", "time"),
                    attrs={"units": units, "long_name": f"{100 * q:g} % quantile of the predictive distribution "
                                                        f"of {long_name} (members + validation residuals, "
                                                        "rootzone.calibration)"})
    na, ni = len(job.attributes), len(job.inputs) + 1
    flags = {
        "outside_training_range": (("basin",), (nb,), bool, "an attribute lies outside a member's training range"),
        "attribute_outside_range": (("basin", "attribute"), (nb, na), bool,
                                    "attribute outside a member's training min..max"),
        "invalid_values": (("basin", "input"), (nb, ni), np.int32, "number of NaN/inf values of the input"),
        "invalid_inputs": (("basin",), (nb,), bool, "inputs invalid (NaN/inf): basin skipped, outputs NaN"),
    }
    for name, (dims, shape, dtype, long_name) in flags.items():
        chunks = tuple(cb if d == "basin" else n for d, n in zip(dims, shape))
        data[name] = xr.DataArray(da.zeros(shape, dtype=dtype, chunks=chunks), dims=dims,
                                  attrs={"long_name": long_name, "units": "1"})
    time_index = pd.DatetimeIndex(ds["time"].values)
    coords = {
        "member": ("member", np.array([m.name for m in job.members], dtype=object)),
        "fold": ("member", np.array([m.fold for m in job.members], dtype=np.int32)),
        "seed": ("member", np.array([m.seed for m in job.members], dtype=np.int32)),
        "basin": ("basin", np.array([str(b) for b in ds["basin"].values], dtype=object)),
        "time": ("time", time_index.values),
        "attribute": ("attribute", np.array(job.attributes, dtype=object)),
        "input": ("input", np.array([*job.inputs, "attributes"], dtype=object)),
        "in_warmup": ("time", np.arange(nt) < warmup, {"long_name": "day inside the spin-up of a member"}),
    }
    return xr.Dataset(data, coords=coords, attrs={
        "title": "rootzone ensemble prediction", "Conventions": "CF-1.8", "source_store": job.store,
        "experiment": job.experiment, COMPLETE_KEY: False, DONE_KEY: [], "warmup_days": warmup,
        "members_rule": "see rootzone.predict: best = lowest best_validation_loss per fold"})

def _key(url: str) -> tuple[str, PurePosixPath]:
    """(protocol, normalised absolute path) of a local path or URL, for overlap checks."""
    fs, path = fs_and_path(url)
    if is_local(fs):
        return "file", PurePosixPath(Path(path).resolve().as_posix())
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, PurePosixPath("/" + path.strip("/"))


def absolute(url: str) -> str:
    """``url`` made absolute when local, without resolving symlinks (remote URLs as given)."""
    fs, path = fs_and_path(url)
    return os.path.abspath(path) if is_local(fs) else str(url)


def _within(a: tuple[str, PurePosixPath], b: tuple[str, PurePosixPath]) -> bool:
    """``a`` is ``b`` or lies inside it."""
    return a[0] == b[0] and (a[1] == b[1] or b[1] in a[1].parents)


def check_out(out: str, store: str, experiment: str) -> None:
    """Refuse an OUT that rootzone must never write or replace: ``/``, the home or current directory (or an
    ancestor), a symlink, the input store (or anything inside or around it), the experiment folder or anything
    inside it, and a path below a regular file."""
    check_output_path(out, "output")
    o, s, e = _key(out), _key(store), _key(experiment)
    if o == s:
        raise RootzoneError(f"output '{out}' is the input store; refusing to write predictions over it")
    if _within(o, s) or _within(s, o):
        raise RootzoneError(f"output '{out}' overlaps the input store '{store}'; choose a path outside it")
    if _within(o, e):
        raise RootzoneError(f"output '{out}' lies inside the experiment folder '{experiment}'; write predictions "
                            "outside it")
    if _within(e, o):
        raise RootzoneError(f"output '{out}' contains the experiment folder '{experiment}'; choose another path")
    fs, path = fs_and_path(out)
    if is_local(fs):
        for parent in Path(path).absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    raise RootzoneError(f"output '{out}': '{parent}' is a file, not a directory")
                break


def _mismatch(out: str, old: object, new: dict) -> str:
    """The refusal for a rerun whose job fingerprint differs from the one OUT was started with."""
    key = "checkpoints_sha256"
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) if isinstance(old, dict) else []
    if differ == [key] and isinstance(old.get(key), dict):
        changed = sorted(n for n in new[key] if old[key].get(n) != new[key][n])
        return (f"output '{out}' was started with other checkpoints of members {changed} (retrained since?); "
                "resuming would mix models in one store: pass --overwrite to predict again from scratch")
    return (f"output '{out}' was written by a different prediction job (differs in: {', '.join(differ) or 'all'});"
            " pass --overwrite to replace it, or the same --experiment/--store/--members/--chunk-basins/--variables")


def out_state(out: str, fingerprint: dict, overwrite: bool) -> str:
    """What to do with OUT: 'create', 'replace' or 'resume'; raises when it may be neither resumed nor replaced.
    Reads only (called before OUT is locked, so a refusal leaves nothing behind, and again under the lock)."""
    fs, path = fs_and_path(out)
    if not fs.exists(path):
        return "create"
    if fs.isdir(path) and not fs.ls(path, detail=False):
        return "create"  # an empty folder: nothing to lose
    if overwrite:
        ensure_replaceable(out, JOB_KEY, "output")
        return "replace"
    if not fs.isdir(path):
        raise RootzoneError(f"output '{out}' is a file, not a prediction store; choose another path")
    attrs = owner_attributes(out)
    if attrs is None or JOB_KEY not in attrs:
        raise RootzoneError(f"output '{out}' exists and is not a prediction store; rootzone only resumes or "
                            "replaces its own prediction stores (remove it yourself or choose another path)")
    if attrs[JOB_KEY] != fingerprint:
        raise RootzoneError(_mismatch(out, attrs[JOB_KEY], fingerprint))
    return "resume"

def chunks_done(job: PredictionJob) -> set[int]:
    return set(zarr.open_group(job.out, mode="r", use_consolidated=False).attrs.get(DONE_KEY, []))


def mark_done(job: PredictionJob, index: int) -> None:
    """Record chunk ``index`` as complete (call from one process only: the driver)."""
    group = zarr.open_group(job.out, mode="r+", use_consolidated=False)
    group.attrs[DONE_KEY] = sorted(set(group.attrs.get(DONE_KEY, [])) | {index})


def finalise(job: PredictionJob) -> None:
    """Mark the store complete and consolidate its metadata, once every chunk is done."""
    left = set(range(job.n_chunks)) - chunks_done(job)
    if left:
        raise RootzoneError(f"prediction incomplete: chunks {sorted(left)} not done; rerun to resume")
    from rootzone.predict.predictive import write_predictive_interval

    write_predictive_interval(job)
    zarr.open_group(job.out, mode="r+", use_consolidated=False).attrs[COMPLETE_KEY] = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        zarr.consolidate_metadata(job.out, zarr_format=3)
