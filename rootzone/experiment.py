"""The experiment folder of an ensemble (DESIGN §7) and the member checkpoints in it: the one module that knows
their layout and formats. ``rootzone ensemble``/``tune`` write through it; ``predict``, ``report`` and the
ensemble summary read through it. The folder may be a local path, a ``file://`` URL or object storage
(``s3://``, ``gs://``: anything fsspec opens).

Layout::

    EXP/experiment.json            base config, folds, seeds, store, created, rootzone version
    EXP/trials/fold{f}_seed{s}/    one train_trial run dir (config.toml, best.pt, checkpoint.pt, metrics.json,
                                   train.log)
    EXP/ensemble_metrics.csv|.parquet, EXP/summary.json
    EXP/best_config.toml, EXP/tune_results.csv   (``rootzone tune``)
    EXP/ray/                       Ray Tune's own state (storage_path)

Members (:meth:`ExperimentDir.members`):

* ``best`` (default): for each fold, the seed with the lowest ``best_validation_loss`` in its metrics.json
  (ties: the lower seed) -- one member per fold, each chosen on validation years only;
* ``all``: every finished trial (one with both ``best.pt`` and ``metrics.json``);
* or a comma-separated list of trial names (``fold0_seed0,fold1_seed3``).

Checkpoints are read with ``torch.load(weights_only=True)``: a hostile file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
from rich.console import Console

import rootzone
from rootzone.config import Config
from rootzone.errors import RootzoneError
from rootzone.safety import atomic_torch_save, atomic_write_bytes, is_local

if TYPE_CHECKING:
    import torch

    from rootzone.data.loader import Normaliser
    from rootzone.model import HybridModel

# ---------------------------------------------------------------------------------------------- layout
EXPERIMENT_JSON = "experiment.json"
TRIALS = "trials"
METRICS_JSON = "metrics.json"
CONFIG_TOML = "config.toml"
BEST_PT = "best.pt"
LAST_PT = "checkpoint.pt"
TRAIN_LOG = "train.log"
SUMMARY_JSON = "summary.json"
ENSEMBLE_CSV = "ensemble_metrics.csv"
ENSEMBLE_PARQUET = "ensemble_metrics.parquet"
BEST_CONFIG_TOML = "best_config.toml"
TUNE_RESULTS_CSV = "tune_results.csv"
RAY = "ray"

# Config fields that may change between a run and its --resume without making it another experiment.
VOLATILE_FIELDS = ("progress", "out", "fold", "seed")
# What every member checkpoint (best.pt) holds.
CHECKPOINT_KEYS = ("model", "normaliser", "config")


def trial_name(fold: int, seed: int, model: str = "hybrid") -> str:
    """``fold{f}_seed{s}``, with ``_{model}`` appended for a kind other than the hybrid (an experiment may hold
    both kinds: ``rootzone ensemble --models hybrid,lstm``)."""
    return f"fold{fold}_seed{seed}" + ("" if model == "hybrid" else f"_{model}")


# ---------------------------------------------------------------------------------------------- metrics
@dataclass
class TrialMetrics:
    """A trial's ``metrics.json``. ``splits[split][target]`` = ``{"median": {metric: v}, "basins": {id: {...}}}``."""

    fold: int
    seed: int
    folds: int = 0
    best_epoch: int = 0
    epochs_run: int = 0
    best_validation_loss: float = math.nan
    years: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, dict[str, dict]] = field(default_factory=dict)
    smax_mean: dict[str, float] = field(default_factory=dict)
    truth_recovery: dict[str, float] | None = None
    model: str = "hybrid"  # Config.model of the trial (metrics.json before issue 14: hybrid)
    # components > 1: per basin, each bucket set's mean S_max (mm) and area share (smax_mean is their weighted
    # capacity); empty otherwise
    smax_components: dict[str, list[float]] = field(default_factory=dict)
    component_weights: dict[str, list[float]] = field(default_factory=dict)
    # the cross-validation scheme: {"scheme": "temporal"|"spatial"|"spatiotemporal", and for spatial ones
    # "groups", "split_seed", "basins": {split: [ids]}}; absent in older files = temporal
    cv: dict[str, Any] = field(default_factory=lambda: {"scheme": "temporal"})
    truth_recovery_test: dict[str, float] | None = None  # recovery on the held-out basins (spatial schemes)

    @property
    def scheme(self) -> str:
        return str(self.cv.get("scheme", "temporal"))

    def median(self, split: str, target: str, metric: str) -> float:
        """Median over basins of ``metric`` for ``target`` on ``split`` (NaN when absent)."""
        return float(self.splits.get(split, {}).get(target, {}).get("median", {}).get(metric, math.nan))

    def targets(self, split: str = "test") -> list[str]:
        return list(self.splits.get(split, {}))

    def to_dict(self) -> dict[str, Any]:
        out = {"fold": self.fold, "seed": self.seed, "folds": self.folds, "best_epoch": self.best_epoch,
               "epochs_run": self.epochs_run, "best_validation_loss": self.best_validation_loss,
               "years": self.years, "splits": self.splits, "smax_mean": self.smax_mean, "model": self.model}
        if self.truth_recovery:
            out["truth_recovery"] = self.truth_recovery
        if self.smax_components:
            out["smax_components"] = self.smax_components
            out["component_weights"] = self.component_weights
        out["cv"] = self.cv
        if self.truth_recovery_test:
            out["truth_recovery_test"] = self.truth_recovery_test
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialMetrics:
        loss = d.get("best_validation_loss")
        return cls(fold=int(d["fold"]), seed=int(d["seed"]), folds=int(d.get("folds", 0)),
                   best_epoch=int(d.get("best_epoch", 0)), epochs_run=int(d.get("epochs_run", 0)),
                   best_validation_loss=math.nan if loss is None else float(loss), years=d.get("years", {}),
                   splits=d.get("splits", {}), smax_mean=d.get("smax_mean", {}),
                   truth_recovery=d.get("truth_recovery"), model=str(d.get("model", "hybrid")),
                   smax_components=d.get("smax_components", {}), component_weights=d.get("component_weights", {}),
                   cv=d.get("cv") or {"scheme": "temporal"}, truth_recovery_test=d.get("truth_recovery_test"))

    @classmethod
    def from_json(cls, text: str) -> TrialMetrics:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class TrialResult:
    """A finished trial of the experiment: its folder name and metrics."""

    name: str
    fold: int
    seed: int
    metrics: TrialMetrics


def metrics_rows(trials: list[TrialResult]) -> list[dict[str, Any]]:
    """The trials' metrics.json flattened: one row per trial, basin, split and target, with the columns fold,
    seed, member, basin, split, target, the per-basin metrics (``rootzone.metrics.METRICS``) and ``cv`` (the
    cross-validation scheme that produced them: temporal = gauged skill, spatial = ungauged skill)."""
    from rootzone.metrics import METRICS

    rows = []
    for t in trials:
        for split, per_target in t.metrics.splits.items():
            for target, entry in per_target.items():
                for basin, scores in entry["basins"].items():
                    rows.append({"fold": t.fold, "seed": t.seed, "member": t.name, "basin": basin, "split": split,
                                 "target": target, **{k: scores[k] for k in METRICS}, "cv": t.metrics.scheme})
    return rows


@dataclass(frozen=True)
class Member:
    """One ensemble member: trial ``name`` (fold{f}_seed{s}) and its best checkpoint (path or URL)."""

    name: str
    fold: int
    seed: int
    checkpoint: str
    best_validation_loss: float
    sha256: str = ""  # of the checkpoint's bytes, set by predict.prepare(); load_member() refuses a changed file


# ---------------------------------------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    """A checkpoint file: ``best.pt`` (model, normaliser, config, epoch, store fingerprint) or ``checkpoint.pt``
    (the same plus ``training``: optimizer, loop state, random generators, sampler -- what a resume needs).
    Stored as one flat dict of tensors and plain data, so ``torch.load(weights_only=True)`` reads it."""

    model: dict[str, Any]
    normaliser: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    epoch: int = 0
    store: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    kind: str = "hybrid"  # the model class (Config.model); files written before issue 14 hold hybrids

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model}
        for key in ("normaliser", "config", "store"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["epoch"] = self.epoch
        out["model_kind"] = self.kind
        return {**out, **self.training}

    def check_kind(self, expected: str, where: str) -> None:
        """RootzoneError when this checkpoint holds another kind of model than ``expected``."""
        if self.kind != expected:
            raise RootzoneError(f"checkpoint '{where}' holds a {self.kind!r} model, not a {expected!r} one "
                                f"(config field 'model'); pass --set model={self.kind} or use another checkpoint")

    def save(self, path: str | Path) -> None:
        """Atomic ``torch.save``: a failed write (read-only or full disk, kill) keeps the previous file."""
        try:
            atomic_torch_save(self.to_dict(), str(path))
        except OSError as exc:
            kept = f"; the previous {Path(path).name} is kept" if Path(path).exists() else ""
            raise RootzoneError(f"cannot write {path}: {exc.strerror or short(exc)}{kept}") from None

    @classmethod
    def from_bytes(cls, raw: bytes, where: str, map_location: Any = "cpu", keys: tuple[str, ...] = CHECKPOINT_KEYS,
                   hint: str = "") -> Checkpoint:
        """Unpickle with ``weights_only=True``; damaged, foreign or hostile files give a one-line error
        (``hint`` is appended to it, e.g. what the user can do about it)."""
        import torch

        try:
            saved = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            if "weights only" in str(exc).lower():
                raise RootzoneError(f"refusing to load checkpoint '{where}': it holds Python objects other than "
                                    "tensors and plain data, so loading it could run code (rootzone loads "
                                    f"checkpoints with weights_only=True){hint}") from None
            raise RootzoneError(f"cannot load checkpoint '{where}': unreadable or truncated ({short(exc)})"
                                f"{hint}") from None
        except Exception as exc:  # truncated zip, not a torch file, ...
            raise RootzoneError(f"cannot load checkpoint '{where}': unreadable or truncated "
                                f"({type(exc).__name__}: {short(exc)}){hint}") from None
        if not isinstance(saved, dict) or not all(k in saved for k in keys):
            raise RootzoneError(f"cannot load checkpoint '{where}': not a rootzone checkpoint "
                                f"(needs {', '.join(keys)})")
        own = ("model", "normaliser", "config", "epoch", "store", "model_kind")
        return cls(model=saved["model"], normaliser=saved.get("normaliser"), config=saved.get("config"),
                   epoch=int(saved.get("epoch", 0) or 0), store=saved.get("store"),
                   training={k: v for k, v in saved.items() if k not in own},
                   kind=str(saved.get("model_kind", "hybrid")))

    @classmethod
    def load(cls, url: str | Path, map_location: Any = "cpu", keys: tuple[str, ...] = CHECKPOINT_KEYS,
             hint: str = "") -> Checkpoint:
        return cls.load_with_digest(url, map_location, keys, hint)[0]

    @classmethod
    def load_with_digest(cls, url: str | Path, map_location: Any = "cpu", keys: tuple[str, ...] = CHECKPOINT_KEYS,
                         hint: str = "") -> tuple[Checkpoint, str]:
        """The checkpoint at ``url`` and the sha256 of its bytes."""
        try:
            with fsspec.open(str(url), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise RootzoneError(f"{url} does not exist") from None
        return cls.from_bytes(raw, str(url), map_location, keys, hint), hashlib.sha256(raw).hexdigest()


def load_checkpoint_bytes(raw: bytes, where: str, map_location: Any = "cpu") -> dict[str, Any]:
    """A member checkpoint as the dict stored in the file (see :meth:`Checkpoint.from_bytes`)."""
    return Checkpoint.from_bytes(raw, where, map_location).to_dict()


@dataclass
class LoadedMember:
    member: Member
    cfg: Config
    normaliser: Normaliser
    model: HybridModel


def load_member(member: Member, device: torch.device | str, physics: str | None = "auto",
                store: str | None = None) -> LoadedMember:
    """Model (eval mode, on ``device``), config and saved normaliser of one member: the one reconstruction path
    of a trained model (predict, the ensemble mean, reports). When ``member.sha256`` is set (by predict's
    ``prepare``), a checkpoint whose bytes changed since is refused: one store never mixes models. ``store``
    replaces the store recorded in the member's config; ``physics=None`` uses the member's own (fused falls back
    to auto off CUDA)."""
    import torch

    from rootzone.data.loader import Normaliser
    from rootzone.model import build_model
    from rootzone.physics import dispatch

    device = torch.device(device)
    ckpt, digest = Checkpoint.load_with_digest(member.checkpoint, device)
    if member.sha256 and digest != member.sha256:
        raise RootzoneError(f"checkpoint '{member.checkpoint}' changed since this prediction was prepared "
                            f"(member {member.name} retrained?); rerun with --overwrite to predict again")
    values = dict(ckpt.config or {})
    if store is not None:
        values["store"] = store
    cfg = Config.from_dict(values)
    ckpt.check_kind(cfg.model, member.checkpoint)
    norm = Normaliser.from_dict(ckpt.normaliser)
    if physics is None:
        physics = "auto" if cfg.physics == "fused" and device.type != "cuda" else cfg.physics
    model = build_model(cfg, len(norm.dynamic_names), len(norm.static_names), dispatch.resolve(physics, device))
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as exc:
        raise RootzoneError(f"checkpoint '{member.checkpoint}' does not fit a {cfg.model!r} model "
                            f"({short(exc)})") from None
    return LoadedMember(member, cfg, norm, model.to(device).eval())


def read_member(member: Member) -> tuple[Normaliser, Config, str]:
    """Normaliser, config and checkpoint sha256 of a member, without building its model."""
    from rootzone.data.loader import Normaliser

    ckpt, digest = Checkpoint.load_with_digest(member.checkpoint, "cpu")
    return Normaliser.from_dict(ckpt.normaliser), Config.from_dict(ckpt.config), digest


# ---------------------------------------------------------------------------------------------- the folder
@dataclass(frozen=True)
class ExperimentDir:
    """``uri`` as given; ``fs`` + ``path`` as fsspec sees them; ``local`` when it is a local folder."""

    uri: str
    fs: fsspec.AbstractFileSystem
    path: str

    @classmethod
    def open(cls, uri: str | Path) -> ExperimentDir:
        uri = str(uri)
        try:
            fs, path = fsspec.core.url_to_fs(uri)
        except Exception as exc:  # unknown protocol, missing backend, bad URL
            raise RootzoneError(f"cannot open experiment folder {uri!r}: {exc}") from None
        if is_local(fs):
            path = str(Path(path).expanduser().resolve())
        return cls(uri, fs, path.rstrip("/") or "/")

    @property
    def local(self) -> bool:
        return is_local(self.fs)

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def url(self, *parts: str) -> str:
        """A location Ray and fsspec accept: a local path, or the URL with the scheme kept."""
        if self.local:
            return self.join(*parts)
        return "/".join([self.uri.rstrip("/"), *parts])

    def trial_dir(self, fold: int, seed: int, model: str = "hybrid") -> str:
        return self.join(TRIALS, trial_name(fold, seed, model))

    # ------------------------------------------------------------------ small file I/O
    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.join(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.join(*parts))

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        self.fs.makedirs(self.join(*parts[:-1]) if len(parts) > 1 else self.path, exist_ok=True)
        if self.local:
            atomic_write_bytes(self.join(*parts), data)
        else:
            self.fs.pipe_file(self.join(*parts), data)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode(), *parts)

    def upload(self, local_dir: str | Path, *parts: str) -> None:
        """Copy a local folder into the experiment folder (for object storage)."""
        root = Path(local_dir).resolve()
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            self.write_bytes(f.read_bytes(), *parts, *f.relative_to(root).parts)

    def subdirs(self, *parts: str) -> list[str]:
        """Names of the folders directly under ``parts`` (sorted; empty when it does not exist)."""
        if not self.exists(*parts):
            return []
        return sorted(i["name"].rstrip("/").rsplit("/", 1)[-1]
                      for i in self.fs.ls(self.join(*parts), detail=True) if i["type"] == "directory")

    def remove(self, *parts: str) -> None:
        self.fs.rm(self.join(*parts), recursive=True)

    def trial_dirs(self) -> list[str]:
        """Names of the folders under EXP/trials (sorted)."""
        return self.subdirs(TRIALS)

    # ------------------------------------------------------------------ experiment.json
    def record(self) -> dict[str, Any]:
        """EXP/experiment.json (RootzoneError when it is missing or unreadable)."""
        try:
            return json.loads(self.read_text(EXPERIMENT_JSON))
        except (OSError, json.JSONDecodeError) as exc:
            raise RootzoneError(f"cannot read {self.url(EXPERIMENT_JSON)}: {exc}") from None

    def recorded_store(self) -> str | None:
        """The store recorded in experiment.json (the one place it is read), or None when there is none."""
        if not self.exists(EXPERIMENT_JSON):
            return None
        store = self.record().get("store")
        return str(store) if store else None

    @property
    def store(self) -> str:
        """The store the experiment was trained on (RootzoneError when experiment.json does not name one)."""
        store = self.recorded_store()
        if store is None:
            if not self.exists(EXPERIMENT_JSON):
                raise RootzoneError(f"no --store given and '{self.url(EXPERIMENT_JSON)}' does not exist")
            raise RootzoneError(f"'{self.url(EXPERIMENT_JSON)}' names no store; pass --store")
        return store

    def write_record(self, record: dict[str, Any]) -> None:
        self.write_text(json.dumps(record, indent=1), EXPERIMENT_JSON)

    # ------------------------------------------------------------------ trials and members
    def trials(self) -> list[TrialResult]:
        """Every trial with a metrics.json, sorted by fold, seed."""
        found = []
        for name in self.trial_dirs():
            if self.exists(TRIALS, name, METRICS_JSON):
                m = TrialMetrics.from_json(self.read_text(TRIALS, name, METRICS_JSON))
                found.append(TrialResult(name, m.fold, m.seed, m))
        return sorted(found, key=lambda t: (t.fold, t.seed, t.name))

    def trial(self, name: str) -> TrialResult | None:
        """The trial ``name`` when it has a metrics.json, else None."""
        if not self.exists(TRIALS, name, METRICS_JSON):
            return None
        m = TrialMetrics.from_json(self.read_text(TRIALS, name, METRICS_JSON))
        return TrialResult(name, m.fold, m.seed, m)

    def members(self, which: str = "best", console: Console | None = None) -> list[Member]:
        """Members of the experiment (see the module docstring for ``which``). Unfinished trials (no best.pt
        + metrics.json) are skipped, each with a line on ``console`` (default: a rich Console on stdout)."""
        if not self.exists(TRIALS):
            raise RootzoneError(f"experiment '{self.uri}' has no trials/ folder (run `rootzone ensemble` first)")
        finished: list[Member] = []
        for name in self.trial_dirs():
            if not (self.exists(TRIALS, name, BEST_PT) and self.exists(TRIALS, name, METRICS_JSON)):
                (console or Console()).print(
                    f"predict: skipping trial {name} (no best.pt + metrics.json: not finished)",
                    markup=False, highlight=False, soft_wrap=True)
                continue
            m = TrialMetrics.from_json(self.read_text(TRIALS, name, METRICS_JSON))
            finished.append(Member(name, m.fold, m.seed, self.url(TRIALS, name, BEST_PT), m.best_validation_loss))
        if not finished:
            raise RootzoneError(f"experiment '{self.uri}' has no finished trial (best.pt + metrics.json)")
        if which == "all":
            return finished
        if which == "best":
            def key(m: Member) -> tuple[float, int]:
                return (m.best_validation_loss if math.isfinite(m.best_validation_loss) else math.inf, m.seed)

            best: dict[int, Member] = {}
            for m in finished:
                if m.fold not in best or key(m) < key(best[m.fold]):
                    best[m.fold] = m
            return [best[f] for f in sorted(best)]
        names = [n.strip() for n in which.split(",") if n.strip()]
        by_name = {m.name: m for m in finished}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise RootzoneError(f"--members: unknown or unfinished trials {unknown} (finished: {sorted(by_name)})")
        return [by_name[n] for n in names]


def experiment_record(cfg: Config, folds: int, seeds: list[int], models: list[str] | None = None) -> dict[str, Any]:
    """experiment.json: ``models`` are the kinds trained for every (fold, seed) (default: ``cfg.model``)."""
    return {"config": cfg.to_dict(), "folds": folds, "seeds": list(seeds), "models": list(models or [cfg.model]),
            "store": cfg.store, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rootzone_version": rootzone.__version__}


def record_models(record: dict[str, Any]) -> list[str]:
    """The kinds of model an experiment.json trains (records before issue 14: the config's model)."""
    return list(record.get("models") or [record.get("config", {}).get("model", "hybrid")])


def check_same_experiment(old: dict[str, Any], new: dict[str, Any], where: str) -> None:
    """RootzoneError naming what differs when ``new`` (this invocation) is not the experiment ``old``."""
    diffs = [k for k in ("folds", "seeds", "store") if old.get(k) != new.get(k)]
    diffs += ["models"] if record_models(old) != record_models(new) else []
    a, b = old.get("config", {}), new["config"]
    default = Config().to_dict()  # a field the old record lacks (added since) had its default value
    diffs += [k for k in sorted(set(a) | set(b))
              if k not in VOLATILE_FIELDS and a.get(k, default.get(k)) != b.get(k, default.get(k))]
    if diffs:
        raise RootzoneError(
            f"cannot resume: {where} was written by a different config (differs in: {', '.join(diffs)}); "
            "pass the same --config/--set/--folds/--seeds/--store, or start a new --out")


def short(exc: BaseException, limit: int = 200) -> str:
    """The first sentence of an error message, on one line, at most ``limit`` characters."""
    text = " ".join(str(exc).split())
    text = text.split(". ", 1)[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."

