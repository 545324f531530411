"""Streaming inference of an ensemble into a Zarr store (``rootzone predict``, DESIGN §2).

Members are the trials of an experiment folder (``EXP/trials/fold{f}_seed{s}/best.pt``), chosen by
:meth:`rootzone.experiment.ExperimentDir.members` (``best``, ``all`` or trial names).

Every member runs each basin's whole record in one pass (states spun up from day 0, so the first
``warmup_days`` of its config are spin-up), with its own *saved* input normaliser. Output store::

    <var>            (member, basin, time) float32   smax, s, w, g, q, et, swe, tws (see VARIABLES)
    <var>_mean/_std  (basin, time)         float32   ensemble mean and spread (population std, ddof=0) over
                                                     the members that produce <var> (LSTM: no smax, s, g)
    <var>_q05/_q95   (basin, time)         float32   5 and 95 % quantiles over those members (the 90 % interval)
    <var>_p05/_p95   (basin, time)         float32   q, et, swe: the calibrated predictive 90 % interval (members +
                                                     their validation residuals, rootzone.calibration), written
                                                     once every chunk is done (rootzone.predict.predictive)
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

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import xarray as xr

from rootzone.config import DEVICE_CHOICES, PHYSICS_CHOICES
from rootzone.data.schema import REQUIRED_FORCING, forcing_names, open_store
from rootzone.device import select_device
from rootzone.errors import RootzoneError
from rootzone.experiment import ExperimentDir, load_member, read_member
from rootzone.physics import dispatch
from rootzone.predict import store as st
from rootzone.predict.chunk import predict_chunk, record_chunk
from rootzone.predict.store import JOB_KEY, VARIABLES, ChunkResult, PredictionJob
from rootzone.progress import progress_bar
from rootzone.safety import absolute_url, locked, remove_owned_store


def check_options(device: str = "auto", physics: str = "auto", threads: int = 0, device_here: bool = True) -> None:
    """Validate --device, --physics and --threads before anything is read or written. ``device_here=False``
    (a Ray driver: the device is the workers') checks the names only, not that this machine has the device."""
    if device not in DEVICE_CHOICES:
        raise RootzoneError(f"--device: must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}")
    if physics not in PHYSICS_CHOICES:
        raise RootzoneError(f"--physics: must be one of {', '.join(PHYSICS_CHOICES)}, got {physics!r}")
    if threads < 0:
        raise RootzoneError(f"--threads: must be >= 0 (0 = the CPUs this process may use), got {threads}")
    if device_here:
        dispatch.resolve(physics, select_device(device))

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
    asked = list(variables or [])
    unknown = [v for v in asked if v not in VARIABLES]
    if unknown:
        raise RootzoneError(f"--variables: unknown {unknown} (known: {', '.join(VARIABLES)})")
    check_options(device, physics, 0, device_here)
    st.check_out(out, store, experiment)  # on OUT as given: absolute_url() would resolve a symlink away
    experiment, store, out = absolute_url(experiment), absolute_url(store), st.absolute(out)
    chosen = ExperimentDir.open(experiment).members(members)
    ds = open_store(store)
    have_forcing, have_att = forcing_names(ds), [str(a) for a in ds["attribute"].values]
    inputs, attributes, warmup = list(REQUIRED_FORCING) + (["lai"] if "lai" in have_forcing else []), [], 0
    produced: set[str] = set()
    kinds: set[str] = set()
    for i, m in enumerate(chosen):
        norm, cfg, digest = read_member(m)
        produced |= set(st.MODEL_VARIABLES[cfg.model])
        kinds.add(cfg.model)
        chosen[i] = dataclasses.replace(m, sha256=digest)
        missing = [v for v in norm.dynamic_names if v not in have_forcing]
        missing += [a for a in norm.static_names if a not in have_att]
        if missing:
            raise RootzoneError(f"store '{store}' lacks {missing}, which member {m.name} was trained on")
        inputs += [v for v in norm.dynamic_names if v not in inputs]
        attributes += [a for a in norm.static_names if a not in attributes]
        warmup = max(warmup, cfg.warmup_days)
    # default: every variable some member produces (the plain LSTM has no S_max, S or G)
    variables = asked or [v for v in VARIABLES if v in produced]
    absent = [v for v in variables if v not in produced]
    if absent:
        raise RootzoneError(f"--variables: no member produces {absent} (the members are {'/'.join(sorted(kinds))} "
                            f"models, which give {', '.join(v for v in VARIABLES if v in produced)})")
    job = PredictionJob(experiment, store, out, chosen, variables, int(chunk_basins), ds.sizes["basin"],
                        device, physics, inputs, attributes)
    fingerprint = st.fingerprint(job, ds)
    st.out_state(out, fingerprint, overwrite)
    return _Plan(job, ds, warmup, fingerprint, overwrite)


def _lock(out: str) -> contextlib.AbstractContextManager:
    return locked(out, "prediction store", sibling=True)


def _materialise(plan: _Plan) -> PredictionJob:
    """Under OUT's lock: check OUT again, then replace (--overwrite) or create the store, or reopen it."""
    job = plan.job
    state = st.out_state(job.out, plan.fingerprint, plan.overwrite)
    if state == "resume":
        return job
    if state == "replace":
        remove_owned_store(job.out, JOB_KEY, "output")
    template = st.template(job, plan.ds, plan.warmup)
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

# ---------------------------------------------------------------------------------------------- driver
def run(job: PredictionJob, progress: bool = True,
        on_chunk: Callable[[ChunkResult], None] | None = None) -> dict:
    """Predict every chunk not done yet (in this process), then finalise. ``on_chunk`` is called after each
    chunk is written and marked done (tests use it to simulate an interruption). Returns a summary."""
    done = st.chunks_done(job)
    todo = [i for i in range(job.n_chunks) if i not in done]
    device = select_device(job.device)
    loaded = [load_member(m, device, job.physics) for m in job.members] if todo else []
    invalid: dict[str, str] = {}
    t0 = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("predicting basins", total=job.n_basins,
                            completed=sum(job.bounds(i)[1] - job.bounds(i)[0] for i in done))
        for i in todo:
            result = predict_chunk(job, i, loaded)
            bar.update(task, advance=record_chunk(job, result, invalid))
            if on_chunk is not None:
                on_chunk(result)
    st.finalise(job)
    return {"out": job.out, "members": [m.name for m in job.members], "chunks_run": len(todo),
            "chunks_skipped": len(done), "invalid_basins": invalid, "seconds": time.perf_counter() - t0}


def predict(experiment: str, store: str, out: str, progress: bool = False, **options) -> dict:
    """Python API: :func:`prepare` then :func:`run`, OUT locked throughout (``options``: members, chunk_basins,
    variables, overwrite, device, physics)."""
    with prediction(experiment, store, out, **options) as job:
        return run(job, progress=progress)
