"""The Ray Tune function trainable shared by ``rootzone ensemble`` and ``rootzone tune``.

One trial = one :func:`rootzone.train.train_trial` run. Every epoch is reported to Tune with a checkpoint
(``checkpoint.pt`` + ``best.pt``); when Tune restarts a trial (retry after a failure, or ``Tuner.restore``) the
trial takes ``tune.get_checkpoint()``, puts those files back into its run directory and resumes, so the epoch
counter continues where the checkpoint left it.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from rootzone.config import Config
from rootzone.errors import RootzoneError
from rootzone.experiment import BEST_PT, CONFIG_TOML, LAST_PT, TRIALS, ExperimentDir, TrialMetrics, trial_name
from rootzone.train import EpochReport, train_trial

CHECKPOINT_FILES = (LAST_PT, BEST_PT)


def trainable(config: dict[str, Any], base: dict[str, Any], exp_uri: str, tag: str = "") -> None:
    """Tune function trainable. ``config`` holds ``fold``, ``seed`` and any searched Config fields;
    ``base`` is the experiment's base config dict; ``tag`` (tuning) makes run directories unique per trial."""
    fold, seed = int(config["fold"]), int(config["seed"])
    model = str(config.get("model", base.get("model", "hybrid")))
    name = trial_name(fold, seed, model) + (f"_{tune.get_context().get_trial_id()}" if tag else "")
    exp = ExperimentDir.open(exp_uri)
    if exp.local:
        out = Path(exp.trial_dir(fold, seed)).parent / name
    else:  # train on local disk, upload the run directory when done (checkpoints travel through Tune)
        out = Path(tempfile.gettempdir()) / "rootzone-trials" / tune.get_context().get_trial_id() / name
    values = {**base, **{k: v for k, v in config.items() if k not in ("fold", "seed")},
              "fold": fold, "seed": seed, "out": str(out), "progress": False}
    cfg = Config.from_dict(values)
    finished = _finished_metrics(exp, name, cfg)
    if finished is not None:  # trained to the end before (Tune's state may lag by seconds): do not rerun
        tune.report(_final_report(finished))
        return
    out.mkdir(parents=True, exist_ok=True)

    resume = False
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            for f in CHECKPOINT_FILES:
                if (Path(d) / f).exists():
                    shutil.copy2(Path(d) / f, out / f)
        resume = True

    last: dict[str, Any] = {}

    def on_epoch(r: EpochReport) -> None:
        metrics = {"fold": fold, "seed": seed, "epoch": r.epoch, "train_loss": r.train_loss,
                   "validation_loss": r.validation_loss, "best_validation_loss": r.best_validation_loss,
                   "validation_unweighted": _mean(r.validation_parts), "epoch_seconds": r.seconds,
                   **{f"validation_{k}": v for k, v in r.validation_parts.items()}}
        last.update(metrics)
        with tempfile.TemporaryDirectory(prefix="rootzone-ckpt-") as tmp:
            for f in CHECKPOINT_FILES:
                src = r.checkpoint.parent / f
                if src.exists():
                    shutil.copy2(src, Path(tmp) / f)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    result = train_trial(cfg, on_epoch=on_epoch, resume=resume)
    if not exp.local:
        exp.upload(out, TRIALS, name)
    tune.report({**last, **_final_report(result)})


def _final_report(result: TrialMetrics) -> dict[str, Any]:
    final = {"fold": result.fold, "seed": result.seed, "epoch": result.epochs_run, "trial_done": True,
             "best_epoch": result.best_epoch, "best_validation_loss": result.best_validation_loss}
    for target in result.targets("test"):
        final[f"test_nse_{target}"] = result.median("test", target, "nse")
        final[f"test_kge_{target}"] = result.median("test", target, "kge")
    return final


def _finished_metrics(exp: ExperimentDir, name: str, cfg: Config) -> TrialMetrics | None:
    """metrics.json of this trial when it already finished with the same config, else None."""
    if not exp.exists(TRIALS, name, CONFIG_TOML):
        return None
    try:
        done = exp.trial(name)
        done_cfg = Config.from_dict(tomllib.loads(exp.read_text(TRIALS, name, CONFIG_TOML)))
    except (RootzoneError, ValueError, KeyError):  # unreadable or from an older rootzone: train again
        return None
    if done is None:
        return None
    same = {k: v for k, v in done_cfg.to_dict().items() if k not in ("progress", "out")} == \
        {k: v for k, v in cfg.to_dict().items() if k not in ("progress", "out")}
    return done.metrics if same else None


def _mean(parts: dict[str, float]) -> float:
    vals = [v for v in parts.values() if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan
