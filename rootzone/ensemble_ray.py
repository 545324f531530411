"""Ray plumbing for ensembles and tuning: connect (or start a local cluster), check resources, build the Tune
trainable with its resources, and a Tuner that is new or restored."""

from __future__ import annotations

import os
import socket
from typing import Any

import ray
from ray import tune

from rootzone.ensemble_store import ExperimentDir
from rootzone.ensemble_trial import FAULT_ENV, trainable
from rootzone.errors import RootzoneError


def connect(address: str | None) -> None:
    """``ray.init`` for ``address`` (None: the job's cluster inside ``ray job submit``, else a new local
    cluster; 'auto': an existing cluster on this machine; 'host:port' or 'ray://host:port')."""
    if ray.is_initialized():
        return
    if address and address not in ("auto", "local"):
        _probe(address)
    try:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RootzoneError(f"cannot connect to a Ray cluster at --address {address!r}: {first}") from None


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast (one line) when nothing listens at host:port, instead of Ray's long retry loop."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RootzoneError(f"--address {address!r} must be 'auto', 'host:port' or 'ray://host:port'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise RootzoneError(f"cannot reach a Ray cluster at --address {address!r}: {exc}") from None


def check_resources(gpus_per_trial: float, cpus_per_trial: float) -> None:
    """RootzoneError when one trial asks for more than any alive node offers."""
    if gpus_per_trial < 0 or cpus_per_trial <= 0:
        raise RootzoneError("--gpus-per-trial must be >= 0 and --cpus-per-trial > 0")
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise RootzoneError(f"--gpus-per-trial {gpus_per_trial:g}: fractions must be below 1 "
                            "(0.25 = four trials share a GPU) or whole numbers")
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for name, want, key in (("--gpus-per-trial", gpus_per_trial, "GPU"), ("--cpus-per-trial", cpus_per_trial, "CPU")):
        largest = max((r.get(key, 0.0) for r in nodes), default=0.0)
        if want > largest:
            raise RootzoneError(f"{name} {want:g} is more than any node of the cluster offers (largest node: "
                                f"{largest:g} {key}s); lower it, or pass --no-resource-check if an autoscaler "
                                "will add such nodes")


def default_gpus_per_trial() -> float:
    """0.25 (four trials per GPU) when the cluster has GPUs, else 0."""
    return 0.25 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def make_trainable(base: dict[str, Any], exp: ExperimentDir, gpus: float, cpus: float, tag: bool = False):
    fn = tune.with_parameters(trainable, base=base, exp_uri=exp.uri if not exp.local else exp.path,
                              tag="tune" if tag else "", fault=os.environ.get(FAULT_ENV, ""))
    return tune.with_resources(fn, {"cpu": cpus, "gpu": gpus})


def trial_dirname(trial) -> str:
    """Readable folders under EXP/ray/NAME/."""
    c = trial.config
    return f"fold{c.get('fold')}_seed{c.get('seed')}_{trial.trial_id}"


def run_config(exp: ExperimentDir, name: str, max_failures: int, verbose: int = 1) -> tune.RunConfig:
    return tune.RunConfig(
        name=name, storage_path=exp.url("ray"), verbose=verbose,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        # Keep every checkpoint while running: Tune saves its experiment state only every >= 10 s, so after a
        # killed driver the restored state may point at a checkpoint that num_to_keep would already have deleted.
        # prune_checkpoints() thins them once the experiment is complete.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
    )


def prune_checkpoints(exp: ExperimentDir, name: str) -> int:
    """Delete all but the newest Tune checkpoint of every trial of a finished experiment; returns how many."""
    import pyarrow.fs as pafs

    root = exp.join("ray", name)
    if not exp.exists("ray", name):
        return 0
    removed = 0
    for trial in exp.fs.get_file_info(pafs.FileSelector(root)):
        if trial.type != pafs.FileType.Directory:
            continue
        ckpts = sorted(i.path for i in exp.fs.get_file_info(pafs.FileSelector(trial.path))
                       if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))
        for path in ckpts[:-1]:
            exp.fs.delete_dir(path)
            removed += 1
    return removed


def restorable(exp: ExperimentDir, name: str) -> bool:
    return tune.Tuner.can_restore(exp.url("ray", name))
