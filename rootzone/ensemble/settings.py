"""How trials run on Ray: one value built once from the command line (``rootzone.cli.options``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RaySettings:
    """``address``: None (the job's cluster inside ``ray job submit``, else a new local one), 'auto',
    'host:port' or 'ray://host:port'. ``gpus_per_trial`` None: 0.25 when the cluster has GPUs, else 0."""

    address: str | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 2
    max_failures: int = 3
    resource_check: bool = True
