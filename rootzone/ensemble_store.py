"""The experiment folder of an ensemble (DESIGN §7), on a local path, a ``file://`` URL or object storage
(``s3://``, ``gs://``: anything ``pyarrow.fs.FileSystem.from_uri`` opens).

Layout::

    EXP/experiment.json            base config, folds, seeds, store, created, rootzone version
    EXP/trials/fold{f}_seed{s}/    one train_trial run dir (config.toml, best.pt, metrics.json, train.log, ...)
    EXP/ensemble_metrics.csv|.parquet, EXP/summary.json
    EXP/ray/                       Ray Tune's own state (storage_path)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

import rootzone
from rootzone.config import Config
from rootzone.errors import RootzoneError

# Config fields that may change between a run and its --resume without making it another experiment.
VOLATILE_FIELDS = ("progress", "out", "fold", "seed")


def trial_name(fold: int, seed: int) -> str:
    return f"fold{fold}_seed{seed}"


@dataclass(frozen=True)
class ExperimentDir:
    """``uri`` as given; ``fs`` + ``path`` as pyarrow sees them; ``local`` when it is a local folder."""

    uri: str
    fs: pafs.FileSystem
    path: str

    @classmethod
    def open(cls, uri: str) -> ExperimentDir:
        if "://" not in uri:
            return cls(uri, pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve()))
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except Exception as exc:  # pyarrow raises several types for bad or unsupported URLs
            raise RootzoneError(f"cannot open experiment folder {uri!r}: {exc}") from None
        return cls(uri, fs, path)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def url(self, *parts: str) -> str:
        """A location Ray and fsspec accept: a local path, or the URL with the scheme kept."""
        if self.local:
            return self.join(*parts)
        return "/".join([self.uri.rstrip("/"), *parts])

    def trial_dir(self, fold: int, seed: int) -> str:
        return self.join("trials", trial_name(fold, seed))

    # ------------------------------------------------------------------ small file I/O
    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.join(*parts)).type != pafs.FileType.NotFound

    def read_text(self, *parts: str) -> str:
        with self.fs.open_input_stream(self.join(*parts)) as f:
            return f.read().decode()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        self.fs.create_dir(self.join(*parts[:-1]) if len(parts) > 1 else self.path, recursive=True)
        with self.fs.open_output_stream(self.join(*parts)) as f:
            f.write(data)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode(), *parts)

    def upload(self, local_dir: str | os.PathLike, *parts: str) -> None:
        """Copy a local folder into the experiment folder (for object storage)."""
        self.fs.create_dir(self.join(*parts), recursive=True)
        pafs.copy_files(str(Path(local_dir).resolve()), self.join(*parts),
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    def trial_dirs(self) -> list[str]:
        """Names of the folders under EXP/trials (sorted)."""
        if not self.exists("trials"):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.join("trials")))
        return sorted(Path(i.path).name for i in infos if i.type == pafs.FileType.Directory)


def experiment_record(cfg: Config, folds: int, seeds: list[int]) -> dict[str, Any]:
    return {"config": cfg.to_dict(), "folds": folds, "seeds": list(seeds), "store": cfg.store,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rootzone_version": rootzone.__version__}


def check_same_experiment(old: dict[str, Any], new: dict[str, Any], where: str) -> None:
    """RootzoneError naming what differs when ``new`` (this invocation) is not the experiment ``old``."""
    diffs = [k for k in ("folds", "seeds", "store") if old.get(k) != new.get(k)]
    a, b = old.get("config", {}), new["config"]
    diffs += [k for k in sorted(set(a) | set(b)) if k not in VOLATILE_FIELDS and a.get(k) != b.get(k)]
    if diffs:
        raise RootzoneError(
            f"cannot resume: {where} was written by a different config (differs in: {', '.join(diffs)}); "
            "pass the same --config/--set/--folds/--seeds/--store, or start a new --out")


def load_record(exp: ExperimentDir) -> dict[str, Any]:
    try:
        return json.loads(exp.read_text("experiment.json"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RootzoneError(f"cannot read {exp.url('experiment.json')}: {exc}") from None
