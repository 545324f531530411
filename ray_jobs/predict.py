"""Entrypoint for ``ray job submit``: ``rootzone predict`` spread over a Ray cluster, one Ray task per chunk of
basins (see :mod:`rootzone.predict.distributed`; the arguments are in :func:`rootzone.cli.predict.ray_parser`).

Submit from the repository root (the working dir makes ``rootzone`` importable on the workers)::

    ray job submit --working-dir . -- python ray_jobs/predict.py \
        --experiment s3://bucket/exp --out s3://bucket/pred.zarr --chunk-basins 256 --num-gpus 0.25
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import rootzone  # noqa: F401  (installed on the nodes, or importable from the job's working_dir)
except ModuleNotFoundError:  # `python ray_jobs/predict.py` puts ray_jobs/ (not the repo) on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rootzone.cli.guard import exit_process  # noqa: E402
from rootzone.cli.predict import ray_main  # noqa: E402

if __name__ == "__main__":
    exit_process(ray_main)
