"""Streaming inference of an ensemble into a Zarr store (``rootzone predict``, DESIGN §2).

Members are the trials of an experiment folder (``EXP/trials/fold{f}_seed{s}/best.pt``):

* ``best`` (default): for each fold, the seed with the lowest ``best_validation_loss`` in its metrics.json
  (ties: the lower seed) -- one member per fold, each chosen on validation years only;
* ``all``: every finished trial (one with both ``best.pt`` and ``metrics.json``);
* or a comma-separated list of trial names (``fold0_seed0,fold1_seed3``).

Every member runs each basin's whole record in one pass (states spun up from day 0, so the first
``warmup_days`` of its config are spin-up), with its own *saved* input normaliser. Output store::

    <var>            (member, basin, time) float32   smax, s, w, g, q, et, swe, tws (see VARIABLES)
    <var>_mean/_std  (basin, time)         float32   ensemble mean and spread (population std, ddof=0)
    outside_training_range   (basin,)      bool      any attribute outside a member's training min..max
    attribute_outside_range  (basin, attribute) bool which ones
    invalid_values   (basin, input)        int32     NaN/inf count per input (forcing variables, attributes)
    invalid_inputs   (basin,)              bool      basin skipped: its outputs are NaN
    in_warmup        (time,)               bool      day inside the longest member warm-up

Basins are processed chunk by chunk (``chunk_basins``), each chunk written into its region of a store created
up front. Peak memory does not grow with the number of basins or members: it is dominated by the LSTM over one
chunk, about chunk_basins × days × 4·hidden_size × 4 bytes (the input gates of the whole record; 1.4 GB for
64 basins × 30 years × hidden 128), so lower ``--chunk-basins`` for long records. After each chunk the
group attribute ``chunks_done`` is updated; a rerun with the same arguments (and the same member checkpoints:
the job fingerprint holds the sha256 of every ``best.pt``) skips those chunks. The store is
marked ``prediction_complete = true`` (and its metadata consolidated) only when every chunk is done. A chunk is
marked only after its data is written, and the attribute update replaces the group's ``zarr.json`` whole (Zarr's
LocalStore writes to a temporary file and renames it, since zarr 3.1.3; object-store PUTs are atomic), so a kill
at any moment leaves either the old or the new list, never a torn file.

Safety: checkpoints are loaded with ``torch.load(weights_only=True)`` (a hostile ``best.pt`` cannot run code);
OUT is locked (``OUT.lock`` beside it) for the whole run, so a second prediction into it is refused;
``--overwrite`` replaces only a prediction store (a Zarr group whose attributes carry ``prediction_job``), never
``/``, the home or current directory, a file, a symlink, the input store or anything in the experiment folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import dask.array as da
import fsspec
import numpy as np
import pandas as pd
import torch
import xarray as xr
import zarr

from rootzone.config import DEVICE_CHOICES, PHYSICS_CHOICES, Config
from rootzone.data.loader import Normaliser
from rootzone.data.schema import forcing_names, open_store
from rootzone.errors import RootzoneError
from rootzone.model import HybridModel
from rootzone.physics import dispatch
from rootzone.progress import progress_bar
from rootzone.safety import (
    PREDICTION_STORE_KEY,
    absolute_url,
    check_output_path,
    ensure_replaceable,
    fs_and_path,
    is_local,
    locked,
    owner_attributes,
    remove_owned_store,
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
PHYSICS_INPUTS = ("precipitation", "temperature", "pet")  # + lai (0 when the store has none)
COMPLETE_KEY = "prediction_complete"
DONE_KEY = "chunks_done"
JOB_KEY = PREDICTION_STORE_KEY  # "prediction_job": the attribute that marks a store as rootzone's prediction
CHECKPOINT_KEYS = ("model", "normaliser", "config")


@dataclass(frozen=True)
class Member:
    """One ensemble member: trial ``name`` (fold{f}_seed{s}) and its best checkpoint (path or URL)."""

    name: str
    fold: int
    seed: int
    checkpoint: str
    best_validation_loss: float
    sha256: str = ""  # of the checkpoint's bytes, set by prepare(); load_member() refuses a changed file


@dataclass
class LoadedMember:
    member: Member
    cfg: Config
    normaliser: Normaliser
    model: HybridModel


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


# ---------------------------------------------------------------------------------------------- members
def _read_json(url: str) -> dict:
    with fsspec.open(url, "r") as f:
        return json.load(f)


def find_members(experiment: str, which: str = "best") -> list[Member]:
    """Members of the experiment folder (see the module docstring for ``which``)."""
    fs, root = fsspec.core.url_to_fs(experiment)
    if not fs.exists(f"{root}/trials"):
        raise RootzoneError(f"experiment '{experiment}' has no trials/ folder (run `rootzone ensemble` first)")
    prefix = experiment.split("://")[0] + "://" if "://" in experiment else ""
    finished: list[Member] = []
    for path in sorted(fs.ls(f"{root}/trials", detail=False)):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if not (fs.exists(f"{path}/best.pt") and fs.exists(f"{path}/metrics.json")):
            print(f"predict: skipping trial {name} (no best.pt + metrics.json: not finished)")
            continue
        m = _read_json(prefix + f"{path}/metrics.json")
        loss = float(m.get("best_validation_loss", math.nan))
        finished.append(Member(name, int(m["fold"]), int(m["seed"]), prefix + f"{path}/best.pt", loss))
    if not finished:
        raise RootzoneError(f"experiment '{experiment}' has no finished trial (best.pt + metrics.json)")
    if which == "all":
        return finished
    if which == "best":
        best: dict[int, Member] = {}
        for m in finished:
            key = (m.best_validation_loss if math.isfinite(m.best_validation_loss) else math.inf, m.seed)
            old = best.get(m.fold)
            if old is None or key < (old.best_validation_loss if math.isfinite(old.best_validation_loss)
                                     else math.inf, old.seed):
                best[m.fold] = m
        return [best[f] for f in sorted(best)]
    names = [n.strip() for n in which.split(",") if n.strip()]
    by_name = {m.name: m for m in finished}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise RootzoneError(f"--members: unknown or unfinished trials {unknown} (finished: {sorted(by_name)})")
    return [by_name[n] for n in names]


def load_checkpoint_bytes(raw: bytes, where: str, map_location: str | torch.device = "cpu") -> dict:
    """A rootzone checkpoint from its bytes, unpickled with ``weights_only=True``: tensors and plain data only,
    so a hostile file cannot run code. Damaged or hostile files give a one-line :class:`RootzoneError`."""
    try:
        saved = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise RootzoneError(f"checkpoint '{where}' holds objects other than tensors and plain data (possibly "
                            "code); refusing to load it (rootzone loads checkpoints with weights_only=True)") from None
    except Exception as exc:  # truncated zip, not a torch file, ...
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise RootzoneError(f"checkpoint '{where}' cannot be read ({type(exc).__name__}: {first}); it may be "
                            "truncated or damaged") from None
    if not isinstance(saved, dict) or not all(k in saved for k in CHECKPOINT_KEYS):
        raise RootzoneError(f"checkpoint '{where}' is not a rootzone best.pt (needs {', '.join(CHECKPOINT_KEYS)})")
    return saved


def read_checkpoint(url: str, map_location: str | torch.device = "cpu") -> tuple[dict, str]:
    """The checkpoint at ``url`` (see :func:`load_checkpoint_bytes`) and the sha256 of its bytes."""
    with fsspec.open(url, "rb") as f:
        raw = f.read()
    return load_checkpoint_bytes(raw, url, map_location), hashlib.sha256(raw).hexdigest()


def load_member(member: Member, device: torch.device, physics: str = "auto") -> LoadedMember:
    """Model (eval mode, on ``device``), config and saved normaliser of one member. When ``member.sha256`` is
    set (by :func:`prepare`), a checkpoint whose bytes changed since is refused: one store never mixes models."""
    saved, digest = read_checkpoint(member.checkpoint, device)
    if member.sha256 and digest != member.sha256:
        raise RootzoneError(f"checkpoint '{member.checkpoint}' changed since this prediction was prepared "
                            f"(member {member.name} retrained?); rerun with --overwrite to predict again")
    cfg = Config.from_dict(saved["config"])
    norm = Normaliser.from_dict(saved["normaliser"])
    model = HybridModel(len(norm.dynamic_names), len(norm.static_names), cfg, dispatch.resolve(physics, device))
    model.load_state_dict(saved["model"])
    return LoadedMember(member, cfg, norm, model.to(device).eval())


def _normaliser(member: Member) -> tuple[Normaliser, Config, str]:
    saved, digest = read_checkpoint(member.checkpoint, "cpu")
    return Normaliser.from_dict(saved["normaliser"]), Config.from_dict(saved["config"]), digest


# ---------------------------------------------------------------------------------------------- output
def _fingerprint(job: PredictionJob, ds: xr.Dataset) -> dict:
    basins = hashlib.sha1("\n".join(map(str, ds["basin"].values)).encode()).hexdigest()[:16]
    return {"experiment": job.experiment, "store": job.store, "members": [m.name for m in job.members],
            "checkpoints_sha256": {m.name: m.sha256 for m in job.members},
            "variables": job.variables, "chunk_basins": job.chunk_basins, "n_basins": job.n_basins,
            "n_days": int(ds.sizes["time"]), "basins_sha1": basins}


def _template(job: PredictionJob, ds: xr.Dataset, warmup: int) -> xr.Dataset:
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


def check_options(device: str = "auto", physics: str = "auto", threads: int = 0, device_here: bool = True) -> None:
    """Validate --device, --physics and --threads before anything is read or written. ``device_here=False``
    (a Ray driver: the device is the workers') checks the names only, not that this machine has the device."""
    if device not in DEVICE_CHOICES:
        raise RootzoneError(f"--device: must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}")
    if physics not in PHYSICS_CHOICES:
        raise RootzoneError(f"--physics: must be one of {', '.join(PHYSICS_CHOICES)}, got {physics!r}")
    if threads < 0:
        raise RootzoneError(f"--threads: must be >= 0 (0 = torch's default), got {threads}")
    if device_here:
        dispatch.resolve(physics, _device(device))


def _key(url: str) -> tuple[str, PurePosixPath]:
    """(protocol, normalised absolute path) of a local path or URL, for overlap checks."""
    fs, path = fs_and_path(url)
    if is_local(fs):
        return "file", PurePosixPath(Path(path).resolve().as_posix())
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, PurePosixPath("/" + path.strip("/"))


def _absolute(url: str) -> str:
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


def _state(out: str, fingerprint: dict, overwrite: bool) -> str:
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


@dataclass
class _Plan:
    job: PredictionJob
    ds: xr.Dataset
    warmup: int
    fingerprint: dict
    overwrite: bool


def _plan(experiment: str, store: str, out: str, members: str = "best", chunk_basins: int = 64,
          variables: Sequence[str] | None = None, overwrite: bool = False, device: str = "auto",
          physics: str = "auto", device_here: bool = True) -> _Plan:
    """Every check of :func:`prepare` (reads only: a refusal writes nothing)."""
    if chunk_basins < 1:
        raise RootzoneError(f"--chunk-basins must be >= 1, got {chunk_basins}")
    variables = list(variables or VARIABLES)
    unknown = [v for v in variables if v not in VARIABLES]
    if unknown:
        raise RootzoneError(f"--variables: unknown {unknown} (known: {', '.join(VARIABLES)})")
    check_options(device, physics, 0, device_here)
    check_out(out, store, experiment)  # on OUT as given: absolute_url() would resolve a symlink away
    experiment, store, out = absolute_url(experiment), absolute_url(store), _absolute(out)
    chosen = find_members(experiment, members)
    ds = open_store(store)
    have_forcing, have_att = forcing_names(ds), [str(a) for a in ds["attribute"].values]
    inputs, attributes, warmup = list(PHYSICS_INPUTS) + (["lai"] if "lai" in have_forcing else []), [], 0
    for i, m in enumerate(chosen):
        norm, cfg, digest = _normaliser(m)
        chosen[i] = dataclasses.replace(m, sha256=digest)
        missing = [v for v in norm.dynamic_names if v not in have_forcing]
        missing += [a for a in norm.static_names if a not in have_att]
        if missing:
            raise RootzoneError(f"store '{store}' lacks {missing}, which member {m.name} was trained on")
        inputs += [v for v in norm.dynamic_names if v not in inputs]
        attributes += [a for a in norm.static_names if a not in attributes]
        warmup = max(warmup, cfg.warmup_days)
    job = PredictionJob(experiment, store, out, chosen, variables, int(chunk_basins), ds.sizes["basin"],
                        device, physics, inputs, attributes)
    fingerprint = _fingerprint(job, ds)
    _state(out, fingerprint, overwrite)
    return _Plan(job, ds, warmup, fingerprint, overwrite)


def _lock(out: str) -> contextlib.AbstractContextManager:
    return locked(out, "prediction store", sibling=True)


def _materialise(plan: _Plan) -> PredictionJob:
    """Under OUT's lock: check OUT again, then replace (--overwrite) or create the store, or reopen it."""
    job = plan.job
    state = _state(job.out, plan.fingerprint, plan.overwrite)
    if state == "resume":
        return job
    if state == "replace":
        remove_owned_store(job.out, JOB_KEY, "output")
    template = _template(job, plan.ds, plan.warmup)
    template.attrs[JOB_KEY] = plan.fingerprint
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        template.to_zarr(job.out, mode="w", zarr_format=3, consolidated=False, compute=False)
    return job


def prepare(experiment: str, store: str, out: str, members: str = "best", chunk_basins: int = 64,
            variables: Sequence[str] | None = None, overwrite: bool = False, device: str = "auto",
            physics: str = "auto", device_here: bool = True) -> PredictionJob:
    """Select members, check the store against them and create (or reopen, to resume) the output store.

    Every check runs before anything is written. OUT is locked only while it is created or checked: use
    :func:`prediction` to keep it locked through the run. Paths in the job are absolute (local) URLs."""
    plan = _plan(experiment, store, out, members, chunk_basins, variables, overwrite, device, physics, device_here)
    with _lock(plan.job.out):
        return _materialise(plan)


@contextlib.contextmanager
def prediction(experiment: str, store: str, out: str, **options) -> Iterator[PredictionJob]:
    """:func:`prepare` with OUT locked until the block ends (``with prediction(...) as job: run(job)``), so a
    second prediction into OUT is refused instead of deleting or recomputing this one's chunks."""
    plan = _plan(experiment, store, out, **options)
    with _lock(plan.job.out):
        yield _materialise(plan)


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
    zarr.open_group(job.out, mode="r+", use_consolidated=False).attrs[COMPLETE_KEY] = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        zarr.consolidate_metadata(job.out, zarr_format=3)


# ---------------------------------------------------------------------------------------------- one chunk
def _outside_range(att: np.ndarray, names: list[str], loaded: list[LoadedMember]) -> np.ndarray:
    """[B, A] bool: attribute outside the training min..max of any member (A = ``names``)."""
    out = np.zeros(att.shape, dtype=bool)
    for lm in loaded:
        norm = lm.normaliser
        if len(norm.static_min) != len(norm.static_names):  # checkpoints without the range
            continue
        idx = [names.index(a) for a in norm.static_names]
        tol = 1e-6 * np.maximum(np.abs(norm.static_min), np.abs(norm.static_max)) + 1e-12
        x = att[:, idx]
        out[:, idx] |= (x < norm.static_min - tol) | (x > norm.static_max + tol)
    return out


def predict_chunk(job: PredictionJob, index: int, loaded: list[LoadedMember] | None = None) -> ChunkResult:
    """Run every member on chunk ``index`` of basins and write its region of the output store."""
    t0 = time.perf_counter()
    device = _device(job.device)
    loaded = loaded or [load_member(m, device, job.physics) for m in job.members]
    lo, hi = job.bounds(index)
    ds = open_store(job.store)
    window = ds[job.inputs].isel(basin=slice(lo, hi)).compute()
    arr = {v: window[v].values.astype(np.float32) for v in job.inputs}  # [B, T]
    att = ds["attributes"].isel(basin=slice(lo, hi)).sel(attribute=job.attributes).values.astype(np.float64)
    counts = np.stack([(~np.isfinite(arr[v])).sum(axis=1) for v in job.inputs]
                      + [(~np.isfinite(att)).sum(axis=1)], axis=1).astype(np.int32)  # [B, inputs + 1]
    invalid = counts.sum(axis=1) > 0
    ids = [str(b) for b in window["basin"].values]
    reasons = {ids[i]: ", ".join(f"{n}: {c} NaN/inf" for n, c in zip([*job.inputs, "attributes"], counts[i]) if c)
               for i in np.flatnonzero(invalid)}
    for v in arr:  # invalid basins run on zeros; their outputs are overwritten with NaN below
        arr[v][invalid] = 0.0
    att[invalid] = 0.0
    outside = _outside_range(att, job.attributes, loaded) & ~invalid[:, None]
    b, t = hi - lo, next(iter(arr.values())).shape[1]
    forcing = torch.from_numpy(np.stack([arr["precipitation"], arr["temperature"], arr["pet"],
                                         arr["lai"] if "lai" in arr else np.zeros((b, t), np.float32)], -1))
    group = zarr.open_group(job.out, mode="r+", use_consolidated=False)
    mean = {v: np.zeros((b, t)) for v in job.variables}
    m2 = {v: np.zeros((b, t)) for v in job.variables}
    for k, lm in enumerate(loaded):
        series = _run_member(lm, arr, att, job.attributes, forcing, device)
        member = job.members.index(lm.member)
        for v in job.variables:
            x = series[v]
            x[invalid] = np.nan
            group[v][member, lo:hi, :] = x.astype(np.float32)
            delta = x - mean[v]  # Welford's update over members, float64
            mean[v] += delta / (k + 1)
            m2[v] += delta * (x - mean[v])
    for v in job.variables:
        group[f"{v}_mean"][lo:hi, :] = mean[v].astype(np.float32)
        group[f"{v}_std"][lo:hi, :] = np.sqrt(m2[v] / len(loaded)).astype(np.float32)
    group["invalid_values"][lo:hi, :] = counts
    group["invalid_inputs"][lo:hi] = invalid
    group["attribute_outside_range"][lo:hi, :] = outside
    group["outside_training_range"][lo:hi] = outside.any(axis=1)
    return ChunkResult(index, reasons, time.perf_counter() - t0)


def _run_member(lm: LoadedMember, arr: dict[str, np.ndarray], att: np.ndarray, att_names: list[str],
                forcing: torch.Tensor, device: torch.device) -> dict[str, np.ndarray]:
    """One member on one chunk: normalise with its saved statistics, run, return float64 [B, T] series."""
    norm = lm.normaliser
    x_dyn = np.stack([(arr[v] - m) / s for v, m, s in zip(norm.dynamic_names, norm.dynamic_mean,
                                                           norm.dynamic_std)], axis=-1).astype(np.float32)
    idx = [att_names.index(a) for a in norm.static_names]
    x_stat = ((att[:, idx] - norm.static_mean) / norm.static_std).astype(np.float32)
    with torch.inference_mode():
        out = lm.model(torch.from_numpy(x_dyn).to(device), torch.from_numpy(x_stat).to(device), forcing.to(device))
        bk = out.buckets
        series = {"smax": out.params[..., 0], "s": bk.s, "w": bk.w, "g": bk.g, "q": bk.q, "et": bk.et,
                  "swe": bk.w, "tws": bk.tws}
        return {k: v.double().cpu().numpy() for k, v in series.items()}


def _device(name: str) -> torch.device:
    from rootzone.train import select_device

    return select_device(name)


# ---------------------------------------------------------------------------------------------- driver
def run(job: PredictionJob, progress: bool = True,
        on_chunk: Callable[[ChunkResult], None] | None = None) -> dict:
    """Predict every chunk not done yet (in this process), then finalise. ``on_chunk`` is called after each
    chunk is written and marked done (tests use it to simulate an interruption). Returns a summary."""
    done = chunks_done(job)
    todo = [i for i in range(job.n_chunks) if i not in done]
    device = _device(job.device)
    loaded = [load_member(m, device, job.physics) for m in job.members] if todo else []
    invalid: dict[str, str] = {}
    t0 = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("predicting basins", total=job.n_basins,
                            completed=sum(job.bounds(i)[1] - job.bounds(i)[0] for i in done))
        for i in todo:
            result = predict_chunk(job, i, loaded)
            mark_done(job, i)
            report_invalid(result)
            invalid.update(result.invalid)
            bar.update(task, advance=job.bounds(i)[1] - job.bounds(i)[0])
            if on_chunk is not None:
                on_chunk(result)
    finalise(job)
    return {"out": job.out, "members": [m.name for m in job.members], "chunks_run": len(todo),
            "chunks_skipped": len(done), "invalid_basins": invalid, "seconds": time.perf_counter() - t0}


def report_invalid(result: ChunkResult) -> None:
    for basin, reason in result.invalid.items():
        print(f"predict: basin {basin} skipped, invalid inputs ({reason}); its outputs are NaN")


def predict(experiment: str, store: str, out: str, progress: bool = False, **options) -> dict:
    """Python API: :func:`prepare` then :func:`run`, OUT locked throughout (``options``: members, chunk_basins,
    variables, overwrite, device, physics)."""
    with prediction(experiment, store, out, **options) as job:
        return run(job, progress=progress)


# ---------------------------------------------------------------------------------------------- CLI
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="run an ensemble on every basin's whole record into a Zarr store",
        description="Load the best checkpoint of each ensemble member in EXP/trials, run every basin's whole "
                    "record (each member with its saved input normalisation) and write a Zarr store with "
                    "dims (member, basin, time) for S_max, S, W, G, Q, ET, SWE, TWS plus the ensemble mean "
                    "and spread. Basins are streamed chunk by chunk; an interrupted run resumes.")
    p.add_argument("--experiment", required=True, metavar="EXP", help="experiment folder (local path or URL)")
    p.add_argument("--store", metavar="S", help="store to predict (default: the experiment's store)")
    p.add_argument("--out", required=True, metavar="PRED.zarr", help="output Zarr store (path or URL)")
    p.add_argument("--members", default="best",
                   help="best (per fold, the seed with the lowest validation loss; default) | all | "
                        "comma-separated trial names")
    p.add_argument("--chunk-basins", type=int, default=64, help="basins per chunk (default 64)")
    p.add_argument("--variables", help=f"comma-separated subset of {','.join(VARIABLES)} (default all)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--physics", default="auto", help="auto (fused on GPU) | fused | compiled | eager")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0 = torch's default)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT instead of resuming it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_predict_command)


def run_predict_command(args: argparse.Namespace) -> None:
    check_options(args.device, args.physics, args.threads)  # before anything is read or written
    if args.threads:
        torch.set_num_threads(args.threads)
    store = args.store or experiment_store(args.experiment)
    variables = [v.strip() for v in args.variables.split(",")] if args.variables else None
    with prediction(args.experiment, store, args.out, members=args.members, chunk_basins=args.chunk_basins,
                    variables=variables, overwrite=args.overwrite, device=args.device,
                    physics=args.physics) as job:
        summary = run(job, progress=not args.quiet)
    print(f"wrote {args.out}: {len(job.members)} members ({', '.join(summary['members'])}), {job.n_basins} "
          f"basins, {summary['chunks_run']} chunks run, {summary['chunks_skipped']} already done, "
          f"{len(summary['invalid_basins'])} basins skipped for invalid inputs")


def experiment_store(experiment: str) -> str:
    """The store recorded in EXP/experiment.json."""
    fs, root = fsspec.core.url_to_fs(experiment)
    url = experiment.rstrip("/") + "/experiment.json"
    if not fs.exists(f"{root}/experiment.json"):
        raise RootzoneError(f"no --store given and '{url}' does not exist")
    record = _read_json(url)
    store = record.get("store") or record.get("config", {}).get("store")
    if not store:
        raise RootzoneError(f"'{url}' names no store; pass --store")
    return str(store)
