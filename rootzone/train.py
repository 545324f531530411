"""One trial = (fold, seed): train with early stopping, keep the best checkpoint, evaluate every basin's
whole record in one pass and score each split (DESIGN §7). ``rootzone train`` and Ray trials call
:func:`train_trial`.

Run directory: ``config.toml`` (the config used), ``train.log``, ``checkpoint.pt`` (latest, for resuming),
``best.pt`` (best validation loss), ``metrics.json``. Checkpoints, ``config.toml`` and ``metrics.json`` are
written atomically (a kill mid-write keeps the previous file) and loaded with ``weights_only=True``.
``rootzone train`` also locks the run directory, refuses one that already holds a run unless ``--resume``
(which checks that the store and config are the recorded ones) or ``--overwrite`` (which removes only the
files above) is given.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import pickle
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rootzone.config import Config
from rootzone.data.folds import temporal_fold
from rootzone.data.loader import Normaliser, StoreData
from rootzone.data.schema import REQUIRED_FORCING, check_forcing_finite, open_store
from rootzone.errors import RootzoneError
from rootzone.evaluation import evaluate_record, print_summary, truth_recovery
from rootzone.loss import hybrid_loss
from rootzone.model import HybridModel
from rootzone.physics import dispatch
from rootzone.progress import progress_bar
from rootzone.safety import DirLock, absolute_url, atomic_torch_save, atomic_write_text

# Everything ``train`` writes into a run directory (``--overwrite`` removes these and nothing else).
RUN_FILES = ("best.pt", "checkpoint.pt", "metrics.json", "config.toml", "train.log")
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


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RootzoneError("config field 'device': 'cuda' requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def build(cfg: Config, normaliser: Normaliser | None = None) -> tuple[StoreData, HybridModel, torch.device]:
    """Open the store, split the fold, fit statistics and make the model on its device."""
    ds = open_store(cfg.store)
    split = temporal_fold(ds.indexes["time"], cfg.folds, cfg.fold, cfg.validation_years)
    data = StoreData(ds, cfg, split, normaliser)
    device = select_device(cfg.device)
    impl = dispatch.resolve(cfg.physics, device)
    model = HybridModel(len(data.dynamic_names), len(data.normaliser.static_names), cfg, impl).to(device)
    return data, model, device


def check_training_data(data: StoreData, where: str) -> None:
    """Refuse forcing the trial would use (every basin, every day: evaluation runs the whole record) that
    :func:`rootzone.data.schema.check_forcing_finite` rejects: NaN/inf, negative precipitation."""
    used = list(dict.fromkeys([*data.dynamic_names, *REQUIRED_FORCING, *(["lai"] if data.has_lai else [])]))
    check_forcing_finite(data.ds[[*used, "attributes"]], where)


def store_fingerprint(data: StoreData) -> dict[str, Any]:
    """What identifies the store a checkpoint was trained on: basin ids, period and variables."""
    ids = hashlib.sha256("\n".join(data.basin_ids.tolist()).encode()).hexdigest()
    return {"basins": int(data.n_basins), "basin_ids_sha256": ids, "first_day": str(data.time[0].date()),
            "last_day": str(data.time[-1].date()), "variables": sorted(str(v) for v in data.ds.data_vars)}


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with one-line errors for unsafe, truncated or foreign files."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise RootzoneError(f"{path} does not exist") from None
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise RootzoneError(f"refusing to load {path}: it holds Python objects other than tensors and plain "
                                "data, so loading it could run code (rootzone checkpoints never do); "
                                "remove it or pass --overwrite") from None
        raise RootzoneError(f"cannot load {path}: unreadable or truncated ({_short(exc)}); remove it or pass "
                            "--overwrite to start the run over") from None
    except Exception as exc:  # truncated zip, not a torch file, ...
        raise RootzoneError(f"cannot load {path}: unreadable or truncated ({type(exc).__name__}: {_short(exc)}); "
                            "remove it or pass --overwrite to start the run over") from None
    if not isinstance(saved, dict) or "model" not in saved:
        raise RootzoneError(f"cannot load {path}: not a rootzone checkpoint")
    return saved


def _short(exc: BaseException, limit: int = 200) -> str:
    """The first sentence of an error message, on one line, at most ``limit`` characters."""
    text = " ".join(str(exc).split())
    text = text.split(". ", 1)[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _save(obj: Any, path: Path) -> None:
    """Atomic ``torch.save``: a failed write (read-only or full disk, kill) keeps the previous file."""
    try:
        atomic_torch_save(obj, str(path))
    except OSError as exc:
        raise RootzoneError(f"cannot write {path}: {exc.strerror or _short(exc)}"
                            f"{'; the previous ' + path.name + ' is kept' if path.exists() else ''}") from None


def _write_text(path: Path, text: str) -> None:
    try:
        atomic_write_text(str(path), text)
    except OSError as exc:
        raise RootzoneError(f"cannot write {path}: {exc.strerror or _short(exc)}") from None


def _loss_on(model, data: StoreData, batch, split: str, warmup: int, device) -> tuple[torch.Tensor, dict]:
    batch = batch.to(device)
    day_mask, month_mask = (m.to(device) for m in data.masks(batch, split, warmup))
    out = model(batch.x_dynamic, batch.x_static, batch.forcing)
    scale = {t: torch.as_tensor(data.scale[t][batch.basins], dtype=torch.float32, device=device)
             for t in batch.obs}
    return hybrid_loss(out.buckets, batch.obs, day_mask, month_mask, batch.day_month, scale,
                       data.cfg.target_weights)


def validation_loss(model, data: StoreData, device, chunk: int = 512, parts_out: dict | None = None) -> float:
    """Loss on the validation years for all basins, from a window that starts ``warmup_days`` earlier.
    ``parts_out`` (if given) receives the unweighted loss of each target (comparable across target weights)."""
    cfg = data.cfg
    days = np.flatnonzero(data.split.masks["validation"])
    start = max(0, int(days[0]) - cfg.warmup_days)
    warmup = int(days[0]) - start
    model.eval()
    total, weight = 0.0, 0
    with torch.no_grad():
        for lo in range(0, data.n_basins, chunk):
            basins = np.arange(lo, min(lo + chunk, data.n_basins))
            batch = data.load(basins, start, int(days[-1]) + 1 - start)
            loss, parts = _loss_on(model, data, batch, "validation", warmup, device)
            total += float(loss) * len(basins)
            weight += len(basins)
            if parts_out is not None:
                for k, v in parts.items():
                    parts_out[k] = parts_out.get(k, 0.0) + v * len(basins)
    if parts_out is not None:
        for k in parts_out:
            parts_out[k] /= weight
    return total / weight


def train_trial(cfg: Config, on_epoch: Callable[[EpochReport], None] | None = None,
                resume: bool = False) -> dict[str, Any]:
    """Train and evaluate one trial; returns (and writes to ``cfg.out/metrics.json``) the metrics.

    ``on_epoch`` is called after every epoch (Ray trials report through it). With ``resume=True`` training
    continues from ``cfg.out/checkpoint.pt`` when it exists.
    """
    out = Path(cfg.out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = seed_everything(cfg.seed)
    data, model, device = build(cfg)
    check_training_data(data, f"store '{cfg.store}'")
    _make_run_dir(out)
    log = _file_logger(out / "train.log")
    try:
        return _train(cfg, data, model, device, rng, out, log, on_epoch, resume)
    finally:
        _close_logger(log)


def _train(cfg: Config, data: StoreData, model: HybridModel, device: torch.device, rng: np.random.Generator,
           out: Path, log: logging.Logger, on_epoch: Callable[[EpochReport], None] | None,
           resume: bool) -> dict[str, Any]:
    # a checkpoint to resume from is checked before anything is written, so a refusal changes nothing
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"epoch": 0, "best": math.inf, "best_epoch": 0, "bad_epochs": 0}
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    fingerprint = store_fingerprint(data)
    resumed = resume and ckpt_path.exists()
    if resumed:
        saved = _load_checkpoint(ckpt_path, device)
        recorded = saved.get("store")
        if recorded is not None and recorded != fingerprint:
            diffs = [k for k in fingerprint if not isinstance(recorded, dict) or recorded.get(k) != fingerprint[k]]
            raise RootzoneError(f"cannot resume from {ckpt_path}: it was trained on another store (differs in: "
                                f"{', '.join(diffs)}); pass the run's store, or --overwrite to start over")
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            state = dict(saved["state"])
            rng.bit_generator.state = saved["numpy_rng"]
            torch.set_rng_state(saved["torch_rng"])
            data.restore_sampler(saved.get("sampler", {"block": 0, "left": 0}))
            if device.type == "cuda" and "cuda_rng" in saved:
                torch.cuda.set_rng_state(saved["cuda_rng"], device)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise RootzoneError(f"cannot resume from {ckpt_path}: it does not fit this model and config "
                                f"({type(exc).__name__}: {_short(exc)}); pass the run's --config/--set, or "
                                "--overwrite to start over") from None
    cfg.save(out / "config.toml")
    log.info("store %s: %d basins, %d days; fold %d/%d years %s; device %s, physics %s", cfg.store,
             data.n_basins, data.n_days, cfg.fold, cfg.folds, data.split.to_dict(), device, model.physics_impl)
    if cfg.precision == "bf16" and device.type != "cuda":
        log.info("precision bf16 applies on CUDA only: the network runs in float32 on %s", device)
    if resumed:
        log.info("resumed from %s after epoch %d", ckpt_path, state["epoch"])

    with progress_bar(cfg.progress) as bar:
        task = bar.add_task("training", total=cfg.epochs * cfg.batches_per_epoch,
                            completed=state["epoch"] * cfg.batches_per_epoch)
        while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
            t0 = time.perf_counter()
            model.train()
            losses, parts_sum = [], {}
            for _ in range(cfg.batches_per_epoch):
                basins, start, length = data.sample_window(rng)
                batch = data.load(basins, start, length)
                loss, parts = _loss_on(model, data, batch, "train", min(cfg.warmup_days, length - 1), device)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v / cfg.batches_per_epoch
                bar.update(task, advance=1, description=f"epoch {state['epoch'] + 1} loss {losses[-1]:.3f}")
            val_parts: dict[str, float] = {}
            val = validation_loss(model, data, device, parts_out=val_parts)
            state["epoch"] += 1
            if not math.isfinite(val):
                raise RootzoneError(f"validation loss became {val} at epoch {state['epoch']}; lower lr")
            if val < state["best"]:
                state.update(best=val, best_epoch=state["epoch"], bad_epochs=0)
                _save({"model": model.state_dict(), "normaliser": data.normaliser.to_dict(),
                       "config": cfg.to_dict(), "epoch": state["epoch"], "store": fingerprint}, best_path)
            else:
                state["bad_epochs"] += 1
            _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                   "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                   "sampler": data.sampler_state(), "store": fingerprint,
                   **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})},
                  ckpt_path)
            report = EpochReport(state["epoch"], float(np.mean(losses)), val, state["best"], parts_sum, ckpt_path,
                                 time.perf_counter() - t0, val_parts)
            log.info("epoch %d train %.4f validation %.4f (best %.4f @ %d) parts %s %.1fs", report.epoch,
                     report.train_loss, val, state["best"], state["best_epoch"],
                     {k: round(v, 4) for k, v in parts_sum.items()}, report.seconds)
            if on_epoch is not None:
                on_epoch(report)
    if state["bad_epochs"] >= cfg.patience:
        log.info("early stop after epoch %d (best %d)", state["epoch"], state["best_epoch"])

    best = _load_checkpoint(best_path, device)
    try:
        model.load_state_dict(best["model"])
    except RuntimeError as exc:
        raise RootzoneError(f"cannot load {best_path}: it does not fit this model ({_short(exc)})") from None
    record = evaluate_record(model, data, device)
    metrics = {
        "fold": cfg.fold, "seed": cfg.seed, "folds": cfg.folds, "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"], "best_validation_loss": state["best"], "years": data.split.to_dict(),
        "splits": record.scores, "smax_mean": dict(zip(data.basin_ids.tolist(), record.smax_mean.tolist())),
    }
    recovery = truth_recovery(data.ds, record)
    if recovery:
        metrics["truth_recovery"] = recovery
    _write_text(out / "metrics.json", json.dumps(metrics, indent=1, allow_nan=True))
    log.info("wrote %s", out / "metrics.json")
    return metrics


def _make_run_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RootzoneError(f"run directory '{out}' exists and is not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(out) else ""
        raise RootzoneError(f"cannot create run directory '{out}': {exc.strerror or _short(exc)}{where}") from None


class _StrictFileHandler(logging.FileHandler):
    """A log file whose write errors (read-only or full disk) end the run with that error instead of
    printing a logging traceback to stderr and going on."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            raise RootzoneError(f"cannot write {self.baseFilename}: {exc.strerror or _short(exc)}") from None
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
_TEMP_RE = re.compile(r"^(?:" + "|".join(re.escape(f) for f in RUN_FILES) + r")\.tmp-(\d+)-[0-9a-f]{8}$")


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
        recorded = out / "config.toml"
        if recorded.is_file():
            _check_same_config(recorded, cfg)
        elif (out / "checkpoint.pt").exists():
            raise RootzoneError(f"cannot resume: {recorded} is missing, so {out / 'checkpoint.pt'} cannot be "
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
    for leftover in out.iterdir():
        m = _TEMP_RE.match(leftover.name)
        if m and leftover.is_file() and not _pid_running(int(m.group(1))):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process holds the lock: no write of its own is in flight
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


# ---------------------------------------------------------------------------------------------- CLI
def register(sub: argparse._SubParsersAction) -> None:
    from rootzone.cli import add_config_options

    p = sub.add_parser(
        "train", help="train and evaluate one trial (one fold, one seed)",
        description="Train one (fold, seed) trial with early stopping on the validation year, keep the best "
                    "checkpoint, evaluate every basin's whole record and write RUN_DIR/metrics.json "
                    "(per split, target and basin, plus medians), config.toml and train.log.",
    )
    p.add_argument("--store", help="rootzone Zarr store (path or fsspec URL), e.g. from `rootzone data demo`")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/trial)")
    p.add_argument("--folds", type=int, help="number of temporal folds k (default 5)")
    p.add_argument("--fold", type=int, help="test fold, 0..k-1 (default 0)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 20; early stopping may end sooner)")
    p.add_argument("--physics", help="physics implementation: auto | fused | compiled | eager (default auto)")
    p.add_argument("--device", help="auto | cpu | cuda (default auto)")
    p.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR/checkpoint.pt if present (the store and config must be the ones "
                        "recorded in RUN_DIR/config.toml; --epochs, --device, --physics may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a RUN_DIR that already holds a run: removes its best.pt, checkpoint.pt, "
                        "metrics.json, config.toml and train.log (nothing else)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_options(p)
    p.set_defaults(func=run_train_command)


def run_train_command(args: argparse.Namespace) -> None:
    from rootzone.cli import config_from_args

    cfg = config_from_args(args, store=args.store, out=args.out, folds=args.folds, fold=args.fold,
                           seed=args.seed, epochs=args.epochs, physics=args.physics, device=args.device,
                           progress=False if args.quiet else None)
    if not cfg.store:
        raise RootzoneError("no store given: pass --store PATH (e.g. one written by `rootzone data demo`)")
    if args.resume and args.overwrite:
        raise RootzoneError(_CONTRADICTION.format(out=cfg.out))
    t0 = time.perf_counter()
    out = Path(cfg.out)
    created = not out.exists()
    _make_run_dir(out)
    try:
        lock = DirLock(str(out), "run directory")  # a second `train --out` on this directory is refused
        try:
            lock.acquire()
        except OSError as exc:
            raise RootzoneError(f"cannot lock run directory '{out}': {exc.strerror or _short(exc)}") from None
        try:
            prepare_run_dir(cfg, resume=args.resume, overwrite=args.overwrite)
            metrics = train_trial(cfg, resume=args.resume)
        finally:
            lock.release()
    except BaseException:
        if created:  # a run refused or failed before writing anything leaves no empty directory behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    print_summary(metrics, title=f"test metrics, fold {cfg.fold}, seed {cfg.seed} "
                                 f"({time.perf_counter() - t0:.0f} s, best epoch {metrics['best_epoch']})")
    print(f"wrote {Path(cfg.out) / 'metrics.json'}")
