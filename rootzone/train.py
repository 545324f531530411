"""One trial = (fold, seed): train with early stopping, keep the best checkpoint, evaluate every basin's
whole record in one pass and score each split (DESIGN §7). ``rootzone train`` and Ray trials call
:func:`train_trial`.

Run directory: ``config.toml`` (the config used), ``train.log``, ``checkpoint.pt`` (latest, for resuming),
``best.pt`` (best validation loss), ``metrics.json``. Checkpoints, ``config.toml`` and ``metrics.json`` are
written atomically (a kill mid-write keeps the previous file) and loaded with ``weights_only=True``.
``rootzone train`` also locks the run directory, refuses one that already holds a run unless ``--resume``
(which checks that the store and config are the recorded ones) or ``--overwrite`` (which removes only the
files above) is given.

Initial storages (DESIGN §4, review W1): no window starts cold. The trial keeps the current model's daily
storages from a no-grad pass over the whole record of every basin (:func:`rootzone.evaluation.record_pass`,
which spins up each record's storages by cycling its first year with the parameters the network predicts for
it), refreshed every ``spinup_refresh`` epochs (before the first epoch, and after a resume); each training or
validation window starts from the stored storages at the start of its first day. The buckets are carried, the
LSTM is not: its hidden state is zero at every window start, and the first ``warmup_days`` of a window (which
let it settle) stay out of the loss. The same pass gives the TWSA reference levels (review M1: model and
observed monthly storage re-centred on their means over the observed training months of the whole record).
The stored states cost 3 float32 per basin-day on the CPU (10k basins × 15k days: 1.8 GB).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rootzone import loss as loss_module
from rootzone.config import Config
from rootzone.data.folds import cv_fold
from rootzone.data.loader import Normaliser, StoreData
from rootzone.data.schema import RECORD_VARIABLES, REQUIRED_FORCING, check_forcing_finite, open_store
from rootzone.device import seed_everything, select_device, set_threads
from rootzone.errors import RootzoneError
from rootzone.evaluation import RecordPass, evaluate_record, record_pass, truth_recovery
from rootzone.experiment import (
    BEST_PT,
    CONFIG_TOML,
    LAST_PT,
    METRICS_JSON,
    TRAIN_LOG,
    Checkpoint,
    TrialMetrics,
    short,
)
from rootzone.model import HybridModel, build_model
from rootzone.model_lstm import output_scales
from rootzone.physics import dispatch
from rootzone.progress import progress_bar
from rootzone.safety import DirLock, absolute_url, atomic_write_text, clean_stale_temps, fs_and_path

# Everything ``train`` writes into a run directory (``--overwrite`` removes these and nothing else).
RUN_FILES = (BEST_PT, LAST_PT, METRICS_JSON, CONFIG_TOML, TRAIN_LOG)
# Config fields a ``--resume`` may change: they do not change what the checkpoint means.
RESUME_FREE_FIELDS = ("progress", "out", "epochs", "patience", "device", "physics", "threads")


@dataclass
class EpochReport:
    epoch: int  # 1-based
    train_loss: float
    validation_loss: float
    best_validation_loss: float
    parts: dict[str, float]
    checkpoint: Path  # latest checkpoint file (resume point)
    seconds: float
    validation_parts: dict[str, float] = field(default_factory=dict)  # unweighted loss per target


def build(cfg: Config, normaliser: Normaliser | None = None) -> tuple[StoreData, HybridModel, torch.device]:
    """Open the store, split the fold, fit statistics and make the model (``cfg.model``) on its device."""
    ds = open_store(cfg.store)
    split = cv_fold(ds, cfg)
    data = StoreData(ds, cfg, split, normaliser)
    device = select_device(cfg.device)
    impl = dispatch.resolve(cfg.physics, device)
    scales = output_scales(data.scale) if cfg.model == "lstm" else None
    model = build_model(cfg, len(data.dynamic_names), len(data.normaliser.static_names), impl, scales).to(device)
    return data, model, device


def check_training_data(data: StoreData, where: str) -> None:
    """Refuse forcing the trial would use (every basin, every day: evaluation runs the whole record) that
    :func:`rootzone.data.schema.check_forcing_finite` rejects: NaN/inf, negative precipitation."""
    used = list(dict.fromkeys([*data.dynamic_names, *REQUIRED_FORCING, *(["lai"] if data.has_lai else [])]))
    bounds = [v for v in RECORD_VARIABLES if v in data.ds]  # each basin's record (data/records.py)
    check_forcing_finite(data.ds[[*used, "attributes", *bounds]], where)


def store_fingerprint(data: StoreData) -> dict[str, Any]:
    """What identifies the store a checkpoint was trained on: basin ids, period and variables."""
    ids = hashlib.sha256("\n".join(data.basin_ids.tolist()).encode()).hexdigest()
    return {"basins": int(data.n_basins), "basin_ids_sha256": ids, "first_day": str(data.time[0].date()),
            "last_day": str(data.time[-1].date()), "variables": sorted(str(v) for v in data.ds.data_vars)}


def _write_text(path: Path, text: str) -> None:
    try:
        atomic_write_text(str(path), text)
    except OSError as exc:
        raise RootzoneError(f"cannot write {path}: {exc.strerror or short(exc)}") from None


def _loss_on(model, data: StoreData, batch, split: str, warmup: int, device, record: RecordPass | None = None,
             penalty: bool = False) -> tuple[torch.Tensor, dict]:
    """Loss of one batch. ``record``: start from its stored storages and re-centre TWSA on its reference
    levels (None: the legacy cold start and per-window re-centring). ``penalty``: add the S_max smoothness
    penalty (training only) when ``cfg.smax_smoothness`` > 0."""
    cfg = data.cfg
    stateful = getattr(model, "stateful", True)
    state0 = None if record is None or not stateful else record.state0(batch.basins, batch.start).to(device)
    twsa_ref = None if record is None else record.reference(batch.basins)
    batch = batch.to(device)
    day_mask, month_mask = (m.to(device) for m in data.masks(batch, split, warmup))
    out = model(batch.x_dynamic, batch.x_static, batch.forcing, state0)
    scale = {t: torch.as_tensor(data.scale[t][batch.basins], dtype=torch.float32, device=device)
             for t in batch.obs}
    total, parts = loss_module.hybrid_loss(out.buckets, batch.obs, day_mask, month_mask, batch.day_month, scale,
                                           cfg.target_weights, twsa_ref)
    smoothness = getattr(loss_module, "smax_smoothness_penalty", None)
    if penalty and cfg.smax_smoothness > 0 and smoothness is not None and out.params is not None:
        pen = smoothness(out.params[..., 0])
        total = total + cfg.smax_smoothness * pen
        parts = {**parts, "smax_smoothness": float(pen.detach())}
    return total, parts


def validation_loss(model, data: StoreData, device, chunk: int = 512, parts_out: dict | None = None,
                    record: RecordPass | None = None) -> float:
    """Loss on the validation years of the validation basins (every basin for temporal folds), from a window
    that starts ``warmup_days`` earlier (from ``record``'s stored storages of that day when given).
    ``parts_out`` (if given) receives the unweighted loss of each target (comparable across target weights)."""
    cfg = data.cfg
    days = np.flatnonzero(data.split.masks["validation"])
    start = max(0, int(days[0]) - cfg.warmup_days)
    warmup = int(days[0]) - start
    model.eval()
    total, weight = 0.0, 0
    pool = data.split_basins("validation") if hasattr(data, "split_basins") else np.arange(data.n_basins)
    with torch.no_grad():
        for lo in range(0, len(pool), chunk):
            basins = pool[lo : lo + chunk]
            batch = data.load(basins, start, int(days[-1]) + 1 - start)
            loss, parts = _loss_on(model, data, batch, "validation", warmup, device, record)
            total += float(loss) * len(basins)
            weight += len(basins)
            if parts_out is not None:
                for k, v in parts.items():
                    parts_out[k] = parts_out.get(k, 0.0) + v * len(basins)
    if parts_out is not None:
        for k in parts_out:
            parts_out[k] /= weight
    return total / weight


def epoch_windows(data: StoreData, rng: np.random.Generator, max_batches: int):
    """The windows (basins, start, length) of one epoch: ``StoreData.epoch`` (every training basin once) when
    the loader has it, else ``max_batches`` (0: enough for the basins once) windows of ``sample_window``."""
    if hasattr(data, "epoch"):
        yield from data.epoch(rng, max_batches=max_batches)
        return
    for _ in range(n_epoch_batches(data, max_batches)):
        yield data.sample_window(rng)


def n_epoch_batches(data: StoreData, max_batches: int) -> int:
    """Batches of one epoch (for the progress bar)."""
    if hasattr(data, "n_batches"):
        return int(data.n_batches(max_batches))
    one_pass = max(1, math.ceil(data.n_basins / max(1, data.cfg.batch_size)))
    return min(one_pass, max_batches) if max_batches > 0 else one_pass


@dataclass
class TrainingState:
    """Where the epoch loop stands (saved in ``checkpoint.pt`` for a resume)."""

    epoch: int = 0
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingState:
        return cls(int(d["epoch"]), float(d["best"]), int(d["best_epoch"]), int(d["bad_epochs"]))


_RESTART_HINT = "; remove it or pass --overwrite to start the run over"


class Trial:
    """One (fold, seed) trial as named steps: :meth:`set_up`, :meth:`restore`, then per epoch
    :meth:`train_epoch`, :meth:`validate` and :meth:`save`, and at the end :meth:`evaluate`."""

    def __init__(self, cfg: Config, log: logging.Logger):
        self.cfg, self.log, self.out = cfg, log, Path(cfg.out)
        self.last_path, self.best_path = self.out / LAST_PT, self.out / BEST_PT
        self.state = TrainingState()
        self.record: RecordPass | None = None  # stored storages of the current model (refresh_states)
        self.record_epoch = -1  # epochs done when ``record`` was computed

    def refresh_states(self, trained_epochs: int, force: bool = False) -> RecordPass:
        """The no-grad whole-record pass (spun-up storages of every basin-day, TWSA reference levels) of the
        model after ``trained_epochs`` epochs of training, recomputed when none is kept yet or
        ``spinup_refresh`` epochs have passed since the kept one. The pass after an epoch's training serves
        that epoch's validation and the next epoch's windows (one pass per epoch with the default 1), so
        validation never re-centres the current model on an older model's storages."""
        if force or self.record is None or trained_epochs - self.record_epoch >= self.cfg.spinup_refresh:
            self.record = record_pass(self.model, self.data, self.device)
            self.record_epoch = trained_epochs
            if getattr(self.model, "stateful", True):
                self.log.info("stored states refreshed after %d epochs: %d spin-up cycles, %.1fs", trained_epochs,
                              self.record.spinup_cycles, self.record.seconds)
        return self.record

    def set_up(self, data: StoreData, model: HybridModel, device: torch.device, rng: np.random.Generator) -> None:
        self.data, self.model, self.device, self.rng = data, model, device, rng
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.fingerprint = store_fingerprint(data)

    def restore(self) -> bool:
        """Continue from ``checkpoint.pt`` when it exists (checked before anything is written)."""
        if not self.last_path.exists():
            return False
        saved = Checkpoint.load(self.last_path, self.device, keys=("model",), hint=_RESTART_HINT)
        saved.check_kind(self.cfg.model, str(self.last_path))
        recorded = saved.store
        if recorded is not None and recorded != self.fingerprint:
            diffs = [k for k in self.fingerprint
                     if not isinstance(recorded, dict) or recorded.get(k) != self.fingerprint[k]]
            raise RootzoneError(f"cannot resume from {self.last_path}: it was trained on another store (differs "
                                f"in: {', '.join(diffs)}); pass the run's store, or --overwrite to start over")
        t = saved.training
        try:
            self.model.load_state_dict(saved.model)
            self.optimizer.load_state_dict(t["optimizer"])
            self.state = TrainingState.from_dict(t["state"])
            self.rng.bit_generator.state = t["numpy_rng"]
            torch.set_rng_state(t["torch_rng"])
            self.data.restore_sampler(t.get("sampler", {"block": 0, "left": 0}))
            if self.device.type == "cuda" and "cuda_rng" in t:
                torch.cuda.set_rng_state(t["cuda_rng"], self.device)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise RootzoneError(f"cannot resume from {self.last_path}: it does not fit this model and config "
                                f"({type(exc).__name__}: {short(exc)}); pass the run's --config/--set, or "
                                "--overwrite to start over") from None
        return True

    def train_epoch(self, bar, task) -> tuple[float, dict[str, float]]:
        """One epoch (every training basin once, at most ``batches_per_epoch`` batches when > 0), each window
        started from the stored storages; mean loss and mean loss parts."""
        cfg, data = self.cfg, self.data
        record = self.refresh_states(self.state.epoch)
        self.model.train()
        losses, parts_list = [], []
        for basins, start, length in epoch_windows(data, self.rng, cfg.batches_per_epoch):
            batch = data.load(basins, start, length)
            loss, parts = _loss_on(self.model, data, batch, "train", min(cfg.warmup_days, length - 1), self.device,
                                   record, penalty=True)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            losses.append(float(loss.detach()))
            parts_list.append(parts)
            bar.update(task, advance=1, description=f"epoch {self.state.epoch + 1} loss {losses[-1]:.3f}")
        parts_sum = {k: float(np.mean([p[k] for p in parts_list if k in p]))
                     for k in dict.fromkeys(k for p in parts_list for k in p)}
        return float(np.mean(losses)) if losses else math.nan, parts_sum

    def validate(self) -> tuple[float, dict[str, float]]:
        """Validation loss (and its unweighted parts); counts the epoch and updates early stopping."""
        parts: dict[str, float] = {}
        val = validation_loss(self.model, self.data, self.device, parts_out=parts,
                              record=self.refresh_states(self.state.epoch + 1))
        self.state.epoch += 1
        if not math.isfinite(val):
            raise RootzoneError(f"validation loss became {val} at epoch {self.state.epoch}; lower lr")
        return val, parts

    def save(self, val: float) -> None:
        """``best.pt`` when ``val`` is the best so far, and ``checkpoint.pt`` (the resume point) every epoch."""
        s = self.state
        if val < s.best:
            s.best, s.best_epoch, s.bad_epochs = val, s.epoch, 0
            Checkpoint(self.model.state_dict(), self.data.normaliser.to_dict(), self.cfg.to_dict(), s.epoch,
                       self.fingerprint, kind=self.cfg.model).save(self.best_path)
        else:
            s.bad_epochs += 1
        training = {"optimizer": self.optimizer.state_dict(), "state": s.to_dict(),
                    "numpy_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "sampler": self.data.sampler_state()}
        if self.device.type == "cuda":
            training["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        Checkpoint(self.model.state_dict(), epoch=s.epoch, store=self.fingerprint, training=training,
                   kind=self.cfg.model).save(self.last_path)

    def run_epochs(self, on_epoch: Callable[[EpochReport], None] | None) -> None:
        cfg, s = self.cfg, self.state
        with progress_bar(cfg.progress) as bar:
            per_epoch = n_epoch_batches(self.data, cfg.batches_per_epoch)
            task = bar.add_task("training", total=cfg.epochs * per_epoch, completed=s.epoch * per_epoch)
            while s.epoch < cfg.epochs and s.bad_epochs < cfg.patience:
                t0 = time.perf_counter()
                train_loss, parts = self.train_epoch(bar, task)
                val, val_parts = self.validate()
                self.save(val)
                report = EpochReport(s.epoch, train_loss, val, s.best, parts, self.last_path,
                                     time.perf_counter() - t0, val_parts)
                self.log.info("epoch %d train %.4f validation %.4f (best %.4f @ %d) parts %s %.1fs", report.epoch,
                              report.train_loss, val, s.best, s.best_epoch,
                              {k: round(v, 4) for k, v in parts.items()}, report.seconds)
                if on_epoch is not None:
                    on_epoch(report)
        if s.bad_epochs >= cfg.patience:
            self.log.info("early stop after epoch %d (best %d)", s.epoch, s.best_epoch)

    def evaluate(self) -> TrialMetrics:
        """Reload ``best.pt``, run every basin's whole record and score each split."""
        best = Checkpoint.load(self.best_path, self.device, keys=("model",), hint=_RESTART_HINT)
        best.check_kind(self.cfg.model, str(self.best_path))
        try:
            self.model.load_state_dict(best.model)
        except RuntimeError as exc:
            raise RootzoneError(f"cannot load {self.best_path}: it does not fit this model ({short(exc)})") from None
        data, cfg, s = self.data, self.cfg, self.state
        record = evaluate_record(self.model, data, self.device)
        self.log.info("evaluation from spun-up storages: at most %d spin-up cycles, %d basins not converged to "
                      "1 mm", record.spinup_cycles, record.spinup_unconverged)
        buckets = getattr(self.model, "stateful", True)  # the plain LSTM has no S_max, no parameters
        return TrialMetrics(fold=cfg.fold, seed=cfg.seed, folds=cfg.folds, best_epoch=s.best_epoch,
                            epochs_run=s.epoch, best_validation_loss=s.best, years=data.split.to_dict(),
                            splits=record.scores,
                            smax_mean=dict(zip(data.basin_ids.tolist(), record.smax_mean.tolist())) if buckets
                            else {},
                            truth_recovery=(truth_recovery(data.ds, record) or None) if buckets else None,
                            model=cfg.model, **_component_metrics(data, record),
                            cv=cv_record(cfg, data),
                            truth_recovery_test=_test_recovery(data, record) if buckets else None)


def _component_metrics(data: StoreData, record) -> dict[str, dict[str, list[float]]]:
    """metrics.json ``smax_components`` and ``component_weights`` per basin (``components`` > 1), else {}."""
    if record.smax_components is None:
        return {}
    ids = data.basin_ids.tolist()
    return {"smax_components": dict(zip(ids, record.smax_components.tolist())),
            "component_weights": dict(zip(ids, record.component_weights.tolist()))}


def cv_record(cfg: Config, data: StoreData) -> dict[str, Any]:
    """metrics.json ``cv``: the scheme that produced the scores, its grouping and the basins of each split."""
    out: dict[str, Any] = {"scheme": cfg.cv}
    if cfg.cv != "temporal":
        out.update(groups=cfg.cv_groups, split_seed=cfg.cv_seed,
                   basins={s: data.basin_ids[data.split_basins(s)].tolist() for s in ("train", "validation", "test")})
    return out


def _test_recovery(data: StoreData, record) -> dict[str, float] | None:
    """Truth recovery on the held-out (test) basins only, for schemes that hold out basins."""
    if data.split.basins is None:
        return None
    return truth_recovery(data.ds, record, basins=data.split_basins("test")) or None


def train_trial(cfg: Config, on_epoch: Callable[[EpochReport], None] | None = None,
                resume: bool = False) -> TrialMetrics:
    """Train and evaluate one trial; returns (and writes to ``cfg.out/metrics.json``) the metrics.

    ``on_epoch`` is called after every epoch (Ray trials report through it). With ``resume=True`` training
    continues from ``cfg.out/checkpoint.pt`` when it exists.
    """
    out = Path(cfg.out)
    set_threads(cfg.threads)  # 0 = the CPUs this process may use (its affinity, cgroup quota or Ray's share)
    rng = seed_everything(cfg.seed)
    data, model, device = build(cfg)
    check_training_data(data, f"store '{cfg.store}'")
    _make_run_dir(out)
    log = _file_logger(out / TRAIN_LOG)
    try:
        trial = Trial(cfg, log)
        trial.set_up(data, model, device, rng)
        resumed = resume and trial.restore()  # a checkpoint is checked before anything is written
        _log_start(trial, resumed)
        trial.run_epochs(on_epoch)
        metrics = trial.evaluate()
        _write_text(out / METRICS_JSON, metrics.to_json())
        log.info("wrote %s", out / METRICS_JSON)
        return metrics
    finally:
        _close_logger(log)


def _log_start(trial: Trial, resumed: bool) -> None:
    cfg, data, log = trial.cfg, trial.data, trial.log
    cfg.save(trial.out / CONFIG_TOML)
    log.info("store %s: %d basins, %d days; %s fold %d/%d years %s; device %s, physics %s", cfg.store,
             data.n_basins, data.n_days, cfg.cv, cfg.fold, cfg.folds, data.split.to_dict(), trial.device,
             trial.model.physics_impl)
    if data.absent_targets:
        log.warning("target(s) %s have no observations on the training days of this fold: absent from the "
                    "loss (still simulated and scored where observed)", ", ".join(data.absent_targets))
    if data.records.partial:
        days = data.records.days(np.arange(data.n_basins))
        log.info("basin records differ: %d to %d days (each basin trained and scored on its own record only)",
                 days.min(), days.max())
    if data.untrainable:
        shown = ", ".join(data.untrainable[:10]) + (" ..." if len(data.untrainable) > 10 else "")
        log.warning("%d basin(s) have no %d-day window of training days inside their record and are not "
                    "trained on (still scored where they have observations): %s", len(data.untrainable),
                    data.window_length(), shown)
    if data.split.basins is not None:
        log.info("basins: %s", {s: len(data.split_basins(s)) for s in ("train", "validation", "test")})
    if cfg.precision == "bf16" and trial.device.type != "cuda":
        log.info("precision bf16 applies on CUDA only: the network runs in float32 on %s", trial.device)
    if resumed:
        log.info("resumed from %s after epoch %d", trial.last_path, trial.state.epoch)


def _make_run_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RootzoneError(f"run directory '{out}' exists and is not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(out) else ""
        raise RootzoneError(f"cannot create run directory '{out}': {exc.strerror or short(exc)}{where}") from None


class _StrictFileHandler(logging.FileHandler):
    """A log file whose write errors (read-only or full disk) end the run with that error instead of
    printing a logging traceback to stderr and going on."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            raise RootzoneError(f"cannot write {self.baseFilename}: {exc.strerror or short(exc)}") from None
        super().handleError(record)


def _file_logger(path: Path) -> logging.Logger:
    """The run's logger, appending to ``path`` through a fresh handler (closed by :func:`_close_logger`)."""
    log = logging.getLogger(f"rootzone.train.{path}")
    log.setLevel(logging.INFO)
    log.propagate = False
    _close_logger(log)  # a handler left by an earlier run in this process may point at a removed file
    handler = _StrictFileHandler(path, delay=True)  # opened at the first line (nothing written before)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    return log


def _close_logger(log: logging.Logger) -> None:
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


# ---------------------------------------------------------------------------------------------- run directory
_CONTRADICTION = ("--resume and --overwrite contradict each other: --resume continues the run in '{out}', "
                  "--overwrite starts it over")


def prepare_run_dir(cfg: Config, resume: bool = False, overwrite: bool = False) -> None:
    """Check the run directory ``cfg.out`` before ``rootzone train`` writes into it (call it holding the lock).

    - Without ``resume``: a directory that already holds a run (any of :data:`RUN_FILES`) is refused, unless
      ``overwrite``, which removes those files (and nothing else).
    - With ``resume``: the recorded ``config.toml`` must match ``cfg`` (store included) except for
      :data:`RESUME_FREE_FIELDS`; the differing fields are named.
    Temporary files left by a killed atomic write are removed.
    """
    out = Path(cfg.out)
    present = [f for f in RUN_FILES if (out / f).exists() or (out / f).is_symlink()]
    if resume and overwrite:
        raise RootzoneError(_CONTRADICTION.format(out=out))
    if resume:
        recorded = out / CONFIG_TOML
        if recorded.is_file():
            _check_same_config(recorded, cfg)
        elif (out / LAST_PT).exists():
            raise RootzoneError(f"cannot resume: {recorded} is missing, so {out / LAST_PT} cannot be "
                                "matched to this config; pass --overwrite to start the run over")
    elif present:
        if not overwrite:
            raise RootzoneError(f"run directory '{out}' already holds a run ({', '.join(present)}); pass "
                                "--resume to continue it, --overwrite to replace it, or choose another --out")
        for name in present:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                raise RootzoneError(f"cannot overwrite the run in '{out}': {path} is a directory, not a file "
                                    "rootzone wrote; remove it yourself")
        for name in present:
            (out / name).unlink()
    fs, _ = fs_and_path(str(out))
    for name in RUN_FILES:
        clean_stale_temps(fs, str(out / name))


def _check_same_config(recorded: Path, cfg: Config) -> None:
    from rootzone.config import load_toml

    try:
        old = Config.from_dict(load_toml(recorded))
    except RootzoneError as exc:
        raise RootzoneError(f"cannot resume: the recorded config {recorded} is unreadable ({exc}); pass "
                            "--overwrite to start the run over") from None
    old_store = absolute_url(old.store) if old.store else ""
    new_store = absolute_url(cfg.store) if cfg.store else ""
    diffs = old.replace(store=old_store).differences(cfg.replace(store=new_store), ignore=RESUME_FREE_FIELDS)
    if diffs:
        shown = ", ".join(f"{k} (run {_brief(a)}, now {_brief(b)})" for k, (a, b) in diffs.items())
        raise RootzoneError(f"cannot resume: {recorded} was written by a different config (differs in: {shown}); "
                            "pass the run's --store/--config/--set, or --overwrite to start over")


def _brief(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def train_run(cfg: Config, resume: bool = False, overwrite: bool = False) -> TrialMetrics:
    """``rootzone train``: lock the run directory, check it (:func:`prepare_run_dir`), then :func:`train_trial`.
    A run refused or failed before writing anything leaves no new empty directory behind."""
    if not cfg.store:
        raise RootzoneError("no store given: pass --store PATH (e.g. one written by `rootzone data demo`)")
    if resume and overwrite:
        raise RootzoneError(_CONTRADICTION.format(out=cfg.out))
    out = Path(cfg.out)
    created = not out.exists()
    _make_run_dir(out)
    try:
        lock = DirLock(str(out), "run directory")  # a second `train --out` on this directory is refused
        try:
            lock.acquire()
        except OSError as exc:
            raise RootzoneError(f"cannot lock run directory '{out}': {exc.strerror or short(exc)}") from None
        try:
            prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
            return train_trial(cfg, resume=resume)
        finally:
            lock.release()
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
