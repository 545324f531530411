"""Entrypoint for ``ray job submit``: the ``rootzone ensemble`` verb, run as the job's driver.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/ensemble.py --config cfg.toml --store s3://bucket/store.zarr --out s3://bucket/exp1

Arguments are those of ``rootzone ensemble`` (``--help`` lists them). Inside a job ``ray.init()`` joins the
job's cluster, so ``--address`` is not needed. See docs/ray.md for runtime_env and storage guidance.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import rootzone  # noqa: F401  (installed on the nodes, or importable from the job's working_dir)
except ModuleNotFoundError:  # `python ray_jobs/ensemble.py` puts ray_jobs/ (not the repo) on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rootzone.cli import entry  # noqa: E402

if __name__ == "__main__":
    # `rootzone ensemble ARGS` with the CLI's own handling: bad input gives one line and exit status 2
    # (never a traceback), an interrupt exits 130 without pages of asyncio warnings
    sys.argv[1:1] = ["ensemble"]
    entry()
