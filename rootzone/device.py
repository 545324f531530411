"""Device choice and seeding, shared by training, prediction and the ensemble mean."""

from __future__ import annotations

import math
import os
import random
import sys

import numpy as np
import torch

from rootzone.errors import RootzoneError


def select_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda`` (refused when there is no CUDA device)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RootzoneError("config field 'device': 'cuda' requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _cgroup_cpus(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """CPUs of the cgroup v2 CPU quota (``quota period``, rounded up), None when unlimited or unknown."""
    try:
        quota, period = open(path).read().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def _ray_cpus() -> int | None:
    """CPUs Ray assigned to this task/actor (a Ray trial or prediction task), None outside Ray."""
    ray = sys.modules.get("ray")  # never import ray just to ask
    try:
        if ray is None or not ray.is_initialized():
            return None
        ctx = ray.get_runtime_context()
        if ctx.worker.mode != ray.WORKER_MODE:  # the driver has no assignment
            return None
        cpus = ctx.get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 - any Ray API difference: fall back to the other limits
        return None
    return max(1, int(cpus)) if cpus else None


def default_threads() -> int:
    """Torch CPU threads when none are configured: the CPUs this process may use, i.e. the smallest of its CPU
    affinity, the cgroup v2 CPU quota (rounded up) and, inside a Ray task or trial, the CPUs Ray assigned
    (torch's own default counts every CPU of the machine, which on a shared machine is many times slower)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - no sched_getaffinity (macOS)
        n = os.cpu_count() or 1
    for limit in (_cgroup_cpus(), _ray_cpus()):
        if limit is not None:
            n = min(n, limit)
    return max(1, n)


def set_threads(threads: int = 0) -> int:
    """Set torch's CPU threads to ``threads`` (0 = :func:`default_threads`); returns the number set."""
    n = threads or default_threads()
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
