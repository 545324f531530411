"""The one configuration object, shared by the CLI, the Python API and Ray trials.

Build it from defaults, a TOML file (flat keys, plus the tables ``param_ranges`` and ``target_weights``)
and overrides (``key=value`` strings or keyword arguments). Every value is checked; a bad one raises
:class:`ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rootzone.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Physical range (low, high) of each learned bucket parameter (DESIGN §4, docs/model.md); the network output is
# squashed into it by a sigmoid. alpha <= 1 (transpiration never above PET) and ci <= 0.5 mm per unit LAI
# (literature ~0.1-0.3) keep these two from compensating for S_max (science review m1).
DEFAULT_PARAM_RANGES: dict[str, tuple[float, float]] = {
    "smax": (10.0, 2000.0),
    "beta": (0.1, 6.0),
    "fm": (0.0, 10.0),
    "alpha": (0.0, 1.0),
    "lp": (0.05, 1.0),
    "ci": (0.0, 0.5),
    "fg": (0.0, 1.0),
    "kg": (1e-4, 0.5),
}
TARGETS: tuple[str, ...] = ("q", "et", "swe", "twsa")
PHYSICS_CHOICES = ("auto", "fused", "compiled", "eager")
PRECISION_CHOICES = ("fp32", "bf16")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
PARAM_MODES = ("dynamic", "static")
MODEL_CHOICES = ("hybrid", "lstm")
ROUTING_CHOICES = ("none", "gamma")
CV_CHOICES = ("temporal", "spatial", "spatiotemporal")  # cross-validation schemes (data/folds.py)


@dataclass
class Config:
    """All settings of one trial. Units: days for lengths of time, mm for water."""

    # data and cross-validation
    store: str = ""  # path or fsspec URL of a rootzone Zarr store
    out: str = "runs/trial"  # run directory (metrics.json, config.toml, checkpoint, log)
    folds: int = 5  # k of the k-fold cross-validation (blocks of whole years, of basin groups, or both)
    fold: int = 0  # which fold is the test block, 0 <= fold < folds
    seed: int = 0
    # temporal: hold out years (gauged skill); spatial: hold out whole basins (ungauged skill); spatiotemporal:
    # hold out basins and years together (data/folds.py)
    cv: str = "temporal"
    # spatial schemes: attribute or per-basin store variable whose values group basins that must stay on one
    # side (region, nesting); "" = every basin its own (random) group
    cv_groups: str = ""
    cv_seed: int = 0  # seed of the basin-to-fold assignment; independent of ``seed`` so a fold's seeds share it
    # years taken from the training blocks for early stopping; 0 = 2 when the record allows (every fold keeps a
    # training year), else 1 (data/folds.py auto_validation_years); n >= 1 = exactly n (refused if too short)
    validation_years: int = 0
    inputs: list[str] = field(default_factory=lambda: ["precipitation", "temperature", "pet", "lai"])
    attributes: list[str] = field(default_factory=list)  # empty = every attribute in the store
    targets: list[str] = field(default_factory=lambda: list(TARGETS))  # missing ones are skipped
    target_weights: dict[str, float] = field(default_factory=lambda: {t: 1.0 for t in TARGETS})
    # model
    # hybrid: network + buckets (DESIGN §5); lstm: a plain LSTM predicting the targets directly (the ablation
    # baseline, rootzone/model_lstm.py: no buckets, so param_mode, param_ranges, physics and spin-up are unused)
    model: str = "hybrid"
    hidden_size: int = 128
    dropout: float = 0.0  # one mask per sequence; > 0 shifts a window's storage level (see README)
    forget_bias: float = 3.0
    param_mode: str = "dynamic"  # dynamic: LSTM gives daily parameters; static: MLP on attributes
    param_ranges: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PARAM_RANGES))
    # parameters spanning decades are squashed in log space: low * (high/low) ** sigmoid(x)
    log_params: list[str] = field(default_factory=lambda: ["smax", "kg"])
    physics: str = "auto"  # auto | fused | compiled | eager
    # hybrid levers (issue 14, docs/model.md and docs/ablation.md); the defaults are the plain bucket model
    routing: str = "none"  # none | gamma: Q through a learned gamma unit hydrograph of 15 days (per basin)
    components: int = 1  # parallel bucket sets per basin, outputs combined with learned area shares (softmax)
    groundwater_stores: int = 1  # 2: a second, faster groundwater store fed by a learned share of percolation
    precision: str = "fp32"  # fp32 | bf16 (network on CUDA only; the physics always runs in fp32)
    # training
    epochs: int = 40  # passes over the training basins
    batches_per_epoch: int = 0  # 0 = an epoch is one pass over the training basins; n > 0 caps it at n batches
    batch_size: int = 16  # basins per batch (16: the 64-basin demo gets 4 steps per epoch)
    batches_per_block: int = 16  # consecutive batches drawn from one decoded chunk of basins (I/O locality)
    seq_len: int = 730  # days per training window, warm-up included
    warmup_days: int = 365  # days at the start of every run excluded from the loss
    spinup_cycles: int = 10  # at most this many cycles of a record's first year to spin up the storages
    spinup_refresh: int = 1  # epochs between no-grad passes that refresh the stored daily storages
    smax_smoothness: float = 0.0  # weight of a penalty on day-to-day change of log S_max (0 = off)
    min_obs: int = 10  # fewer observations of a target in a basin and split: not scored (NaN, counted)
    lr: float = 5e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    patience: int = 8  # epochs without validation improvement before stopping
    device: str = "auto"  # auto | cpu | cuda
    # torch CPU threads; 0 = the CPUs this process may use (affinity, cgroup quota, or the CPUs Ray assigned to
    # the trial: device.default_threads), not torch's machine-wide default
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        _check_types(self)

        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"config field '{name}': {msg}, got {getattr(self, name)!r}")

        need(self.folds >= 2, "folds", "must be >= 2")
        need(0 <= self.fold < self.folds, "fold", f"must be in [0, folds-1] = [0, {self.folds - 1}]")
        need(self.cv in CV_CHOICES, "cv", f"must be one of {CV_CHOICES}")
        need(self.cv != "temporal" or not self.cv_groups, "cv_groups",
             "groups basins for cv = 'spatial' or 'spatiotemporal' only (temporal folds hold out years); pass --cv")
        need(self.cv == "temporal" or self.folds >= 3, "folds",
             f"must be >= 3 for cv = {self.cv!r} (test, validation and training basins)")
        need(self.validation_years >= 0, "validation_years", "must be >= 0 (0 = 2 when the record allows)")
        need(self.hidden_size >= 1, "hidden_size", "must be >= 1")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(self.model in MODEL_CHOICES, "model", f"must be one of {MODEL_CHOICES}")
        need(self.routing in ROUTING_CHOICES, "routing", f"must be one of {ROUTING_CHOICES}")
        need(1 <= self.components <= 16, "components", "must be in [1, 16]")
        need(self.groundwater_stores in (1, 2), "groundwater_stores", "must be 1 or 2")
        need(self.param_mode in PARAM_MODES, "param_mode", f"must be one of {PARAM_MODES}")
        need(self.physics in PHYSICS_CHOICES, "physics", f"must be one of {PHYSICS_CHOICES}")
        need(self.precision in PRECISION_CHOICES, "precision", f"must be one of {PRECISION_CHOICES}")
        need(self.device in DEVICE_CHOICES, "device", f"must be one of {DEVICE_CHOICES}")
        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.batches_per_epoch >= 0, "batches_per_epoch", "must be >= 0 (0 = one pass over the basins)")
        need(self.spinup_cycles >= 1, "spinup_cycles", "must be >= 1")
        need(self.spinup_refresh >= 1, "spinup_refresh", "must be >= 1")
        need(self.smax_smoothness >= 0 and math.isfinite(self.smax_smoothness), "smax_smoothness",
             "must be a finite number >= 0")
        need(self.min_obs >= 1, "min_obs", "must be >= 1")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.batches_per_block >= 1, "batches_per_block", "must be >= 1")
        need(self.warmup_days >= 0, "warmup_days", "must be >= 0")
        need(self.seq_len > self.warmup_days, "seq_len", f"must exceed warmup_days ({self.warmup_days})")
        need(math.isfinite(self.lr) and self.lr > 0, "lr", "must be a positive number")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.grad_clip > 0, "grad_clip", "must be > 0")
        need(self.patience >= 1, "patience", "must be >= 1")
        need(self.threads >= 0, "threads", "must be >= 0")
        need(len(self.targets) > 0, "targets", "must name at least one target")
        for t in self.targets:
            need(t in TARGETS, "targets", f"unknown target {t!r}; known: {TARGETS}")
        for t, w in self.target_weights.items():
            need(t in TARGETS, "target_weights", f"unknown target {t!r}; known: {TARGETS}")
            need(_is_number(w) and w >= 0 and math.isfinite(w), "target_weights",
                 f"weight of {t!r} must be a number >= 0")
        for name in ("lr", "dropout", "forget_bias", "weight_decay", "grad_clip"):
            need(math.isfinite(getattr(self, name)), name, "must be a finite number")
        # partial ranges (TOML, --set, Config(...), a tune result) are merged into the defaults first
        ranges: dict[str, tuple[float, float]] = dict(DEFAULT_PARAM_RANGES)
        for name, rng in self.param_ranges.items():
            need(name in DEFAULT_PARAM_RANGES, "param_ranges",
                 f"unknown parameter {name!r} (known: {', '.join(DEFAULT_PARAM_RANGES)})")
            need(_is_range(rng), "param_ranges", f"range of {name!r} must be [low, high] with finite low < high")
            ranges[name] = (float(rng[0]), float(rng[1]))
        self.param_ranges = ranges
        need(self.param_ranges["smax"][0] > 0, "param_ranges", "smax must stay > 0")
        for name in self.log_params:
            need(name in DEFAULT_PARAM_RANGES, "log_params", f"unknown parameter {name!r}")
            need(self.param_ranges[name][0] > 0, "log_params",
                 f"{name!r} needs a positive lower bound to be squashed in log space")
        need(self.param_ranges["lp"][0] > 0, "param_ranges", "lp must stay > 0")
        need(self.param_ranges["fg"][1] <= 1 and self.param_ranges["kg"][1] <= 1, "param_ranges",
             "fg and kg must stay within [0, 1]")
        need(self.groundwater_stores == 1 or self.param_ranges["kg"][1] < 1, "param_ranges",
             "kg must stay below 1 with groundwater_stores = 2")

    def differences(self, other: Config, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
        """Fields (not in ``ignore``) whose values differ: name -> (this value, the other's value)."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_sources(
        cls, file: str | Path | None = None, overrides: dict[str, Any] | None = None
    ) -> Config:
        """Defaults, then the TOML ``file`` (if any), then ``overrides`` (values or ``"key=value"`` text)."""
        values: dict[str, Any] = {}
        if file is not None:
            values.update(load_toml(file))
        values.update(overrides or {})
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(f"config field '{key}': unknown field (known: {', '.join(sorted(known))})")
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - guarded by the check above
            raise ConfigError(str(exc)) from None

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["param_ranges"] = {k: list(v) for k, v in self.param_ranges.items()}
        return d

    def to_toml(self) -> str:
        """Serialise to TOML (flat keys first, then the two tables)."""
        d = self.to_dict()
        tables = {k: d.pop(k) for k in ("param_ranges", "target_weights")}
        lines = [f"{k} = {json.dumps(v)}" for k, v in d.items()]
        for name, table in tables.items():
            lines.append(f"\n[{name}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_toml` to ``path`` atomically (a temporary file, then a rename)."""
        from rootzone.safety import atomic_write_text

        atomic_write_text(str(path), self.to_toml())


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not valid TOML: {exc}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``'lr=1e-3'`` -> ('lr', 0.001); the value is read as TOML, falling back to a plain string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_range(rng: Any) -> bool:
    """``[low, high]``: two finite numbers, low < high."""
    return (isinstance(rng, (list, tuple)) and len(rng) == 2 and all(_is_number(x) for x in rng)
            and all(math.isfinite(x) for x in rng) and rng[0] < rng[1])


def _check_types(cfg: Config) -> None:
    """Coerce ints to floats where a float is expected; refuse anything else of the wrong type."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        expected = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        base = expected.split("[")[0]
        ok = True
        if base == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                setattr(cfg, f.name, float(value))
        elif base == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif base == "bool":
            ok = isinstance(value, bool)
        elif base == "str":
            ok = isinstance(value, str)
        elif base == "list":
            ok = isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value)
            if ok:
                setattr(cfg, f.name, list(value))
        elif base == "dict":
            ok = isinstance(value, dict)
        if not ok:
            raise ConfigError(f"config field '{f.name}': expected {expected}, got {value!r}")
