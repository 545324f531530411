"""Ray plumbing for ensembles and tuning: connect (or start a local cluster), check resources, build the Tune
trainable with its resources, run settings, restore and checkpoint pruning."""


from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
from ray import tune

from rootzone.ensemble.settings import RaySettings
from rootzone.ensemble.trainable import trainable
from rootzone.errors import RootzoneError
from rootzone.experiment import RAY, ExperimentDir

# Ray's single-machine switch (default off on macOS and Windows): with it off, the node IP of a new local
# instance stays 127.0.0.1, and Ray then binds every server (GCS, raylet, workers, agents) to loopback only.
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def connect(address: str | None) -> None:
    """``ray.init`` for ``address`` (None: the job's cluster inside ``ray job submit``, else a new local
    cluster; 'auto': an existing cluster on this machine; 'host:port' or 'ray://host:port').

    A new local cluster listens on 127.0.0.1 only and, with Ray >= 2.52, uses token authentication with the
    token in a file only this user can read (see :func:`local_cluster_settings`)."""
    if ray.is_initialized():
        return
    if address and address not in ("auto", "local"):
        _probe(address)
    local = starts_local_cluster(address)
    try:
        with local_cluster_settings() if local else contextlib.nullcontext():
            ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RootzoneError(f"cannot connect to a Ray cluster at --address {address!r}: {first}") from None


def starts_local_cluster(address: str | None) -> bool:
    """True when ``ray.init(address)`` will start a new Ray instance on this machine instead of joining one
    (None with no RAY_ADDRESS and no running cluster recorded on this machine, or 'local')."""
    if address == "local":
        return True
    if address is not None:
        return False
    try:  # how ray.init itself decides (RAY_ADDRESS, then the latest cluster started on this machine)
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(None) is None
    except Exception:  # noqa: BLE001  (Ray moved it: keep Ray's own behaviour rather than guess)
        return False


@contextlib.contextmanager
def local_cluster_settings() -> Iterator[None]:
    """Settings for starting a new local Ray instance, undone afterwards.

    - Loopback only. Ray binds its servers to 127.0.0.1 when the node IP is 127.0.0.1, but
      ``ray.init(_node_ip_address="127.0.0.1")`` and ``ray start --node-ip-address 127.0.0.1`` swap 127.0.0.1 for
      the machine's address; only Ray's single-machine mode keeps it. It is switched on for the start only
      (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` for the processes Ray spawns, and Ray's already-imported
      constant), so a later connection of this process to a real cluster is unaffected.
    - The token. Ray (>= 2.59) turns token authentication on for a new local instance unless RAY_AUTH_MODE
      says otherwise and writes ``~/.ray/auth_token`` if there is none, readable by everyone under the usual
      umask 022. When no token is configured, :func:`ensure_private_token` creates that file first, mode 0600.
    """
    try:
        from ray._private import ray_constants
    except ImportError:  # Ray moved it; tests/test_security_configs.py then reports what listens where
        ray_constants = None
    saved_env = os.environ.get(_SINGLE_MACHINE_ENV)
    saved_flag = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    with contextlib.suppress(OSError):  # an unwritable home: Ray reports the token problem itself
        ensure_private_token()
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    if saved_flag is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = saved_env
        if saved_flag is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved_flag


def ensure_private_token() -> Path | None:
    """Create ``~/.ray/auth_token`` (mode 0600, in a 0700 folder when it is new) when this Ray has token
    authentication, RAY_AUTH_MODE is unset or 'token', and no token is configured (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or an existing file). Returns the file created, or None."""
    if importlib.util.find_spec("ray._private.authentication") is None:  # Ray < 2.52: no token authentication
        return None
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return None
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return None
    path = Path.home() / ".ray" / "auth_token"
    if path.exists():
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process wrote it meanwhile
        return None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes: 256 random bits
    return path


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


def start(settings: RaySettings) -> tuple[float, float]:
    """Connect to (or start) the cluster of ``settings``, check the per-trial resources against it (unless
    ``resource_check`` is off) and return the (GPUs, CPUs) of one trial."""
    connect(settings.address)
    gpus = default_gpus_per_trial() if settings.gpus_per_trial is None else settings.gpus_per_trial
    if settings.resource_check:
        check_resources(gpus, settings.cpus_per_trial)
    return gpus, settings.cpus_per_trial


def make_trainable(base: dict[str, Any], exp: ExperimentDir, gpus: float, cpus: float, tag: bool = False,
                   wrap: Callable | None = None):
    """The function trainable with its parameters and resources; ``wrap`` (tests) wraps it first."""
    fn = trainable if wrap is None else wrap(trainable)
    fn = tune.with_parameters(fn, base=base, exp_uri=exp.uri if not exp.local else exp.path,
                              tag="tune" if tag else "")
    return tune.with_resources(fn, {"cpu": cpus, "gpu": gpus})


def trial_dirname(trial) -> str:
    """Readable folders under EXP/ray/NAME/."""
    c = trial.config
    kind = f"_{c['model']}" if c.get("model", "hybrid") != "hybrid" else ""
    return f"fold{c.get('fold')}_seed{c.get('seed')}{kind}_{trial.trial_id}"


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
    removed = 0
    for trial in exp.subdirs(RAY, name):
        ckpts = [d for d in exp.subdirs(RAY, name, trial) if d.startswith("checkpoint_")]
        for ckpt in ckpts[:-1]:
            exp.remove(RAY, name, trial, ckpt)
            removed += 1
    return removed


def restorable(exp: ExperimentDir, name: str) -> bool:
    return tune.Tuner.can_restore(exp.url(RAY, name))
