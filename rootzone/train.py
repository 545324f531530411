"""One trial = (fold, seed): train with early stopping, keep the best checkpoint, evaluate every basin's
whole record in one pass and score each split (DESIGN §7). ``rootzone train`` and Ray trials call
:func:`train_trial`.

Run directory: ``config.toml`` (the config used), ``train.log``, ``checkpoint.pt`` (latest, for resuming),
``best.pt`` (best validation loss), ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
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
from rootzone.data.schema import open_store
from rootzone.errors import RootzoneError
from rootzone.evaluation import evaluate_record, print_summary, truth_recovery
from rootzone.loss import hybrid_loss
from rootzone.model import HybridModel
from rootzone.physics import dispatch
from rootzone.progress import progress_bar


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
    out.mkdir(parents=True, exist_ok=True)
    log = _file_logger(out / "train.log")
    cfg.save(out / "config.toml")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = seed_everything(cfg.seed)
    data, model, device = build(cfg)
    log.info("store %s: %d basins, %d days; fold %d/%d years %s; device %s, physics %s", cfg.store,
             data.n_basins, data.n_days, cfg.fold, cfg.folds, data.split.to_dict(), device, model.physics_impl)
    if cfg.precision == "bf16" and device.type != "cuda":
        log.info("precision bf16 applies on CUDA only: the network runs in float32 on %s", device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"epoch": 0, "best": math.inf, "best_epoch": 0, "bad_epochs": 0}
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    if resume and ckpt_path.exists():
        saved = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"])
        data.restore_sampler(saved.get("sampler", {"block": 0, "left": 0}))
        if device.type == "cuda" and "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
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
                torch.save({"model": model.state_dict(), "normaliser": data.normaliser.to_dict(),
                            "config": cfg.to_dict(), "epoch": state["epoch"]}, best_path)
            else:
                state["bad_epochs"] += 1
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                        "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                        "sampler": data.sampler_state(),
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

    best = torch.load(best_path, map_location=device, weights_only=False)
    model.load_state_dict(best["model"])
    record = evaluate_record(model, data, device)
    metrics = {
        "fold": cfg.fold, "seed": cfg.seed, "folds": cfg.folds, "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"], "best_validation_loss": state["best"], "years": data.split.to_dict(),
        "splits": record.scores, "smax_mean": dict(zip(data.basin_ids.tolist(), record.smax_mean.tolist())),
    }
    recovery = truth_recovery(data.ds, record)
    if recovery:
        metrics["truth_recovery"] = recovery
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=True))
    log.info("wrote %s", out / "metrics.json")
    return metrics


def _file_logger(path: Path) -> logging.Logger:
    log = logging.getLogger(f"rootzone.train.{path}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    return log


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
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt if present")
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
    t0 = time.perf_counter()
    metrics = train_trial(cfg, resume=args.resume)
    print_summary(metrics, title=f"test metrics, fold {cfg.fold}, seed {cfg.seed} "
                                 f"({time.perf_counter() - t0:.0f} s, best epoch {metrics['best_epoch']})")
    print(f"wrote {Path(cfg.out) / 'metrics.json'}")
