"""``rootzone predict`` spread over a Ray cluster: one Ray task per chunk of basins, each writing its own
region of the output store (regions never share a Zarr chunk); the driver alone records finished chunks,
so an interrupted job resumes (rerun the same command) and the store is marked complete at the end.

On a GPU worker each task resolves ``--physics auto`` to the fused kernel. Every task loads the members'
checkpoints itself (small next to a chunk's work); failed tasks are retried by Ray (``max_retries``).
Entry point: ``ray_jobs/predict.py`` (see docs/ray.md).
"""

from __future__ import annotations

from collections.abc import Callable

import ray

from rootzone.predict import store as st
from rootzone.predict.chunk import predict_chunk, record_chunk
from rootzone.predict.store import ChunkResult, PredictionJob
from rootzone.progress import progress_bar


def _chunk_task(job: PredictionJob, index: int) -> ChunkResult:
    import torch

    if job.device != "cuda" and not torch.cuda.is_available():
        from rootzone.device import set_threads

        set_threads(0)  # the CPUs Ray assigned to the task (and its affinity, cgroup quota)
    return predict_chunk(job, index)


def run_distributed(job: PredictionJob, num_cpus: float = 1, num_gpus: float = 0, max_retries: int = 3,
                    max_in_flight: int = 64, progress: bool = True,
                    on_chunk: Callable[[ChunkResult], None] | None = None) -> dict:
    """Predict every chunk not yet done as Ray tasks (Ray must be initialised), then finalise the store.
    Returns the same summary as :func:`rootzone.predict.run`."""
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)(_chunk_task)
    done = st.chunks_done(job)
    todo = [i for i in range(job.n_chunks) if i not in done]
    job_ref = ray.put(job)
    pending: dict[ray.ObjectRef, int] = {}
    invalid: dict[str, str] = {}
    with progress_bar(progress) as bar:
        bar_task = bar.add_task("predicting basins (ray)", total=job.n_basins,
                                completed=sum(job.bounds(i)[1] - job.bounds(i)[0] for i in done))
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < max_in_flight:
                i = queue.pop(0)
                pending[task.remote(job_ref, i)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            pending.pop(ready[0])
            result = ray.get(ready[0])
            bar.update(bar_task, advance=record_chunk(job, result, invalid))
            if on_chunk is not None:
                on_chunk(result)
    st.finalise(job)
    return {"out": job.out, "members": [m.name for m in job.members], "chunks_run": len(todo),
            "chunks_skipped": len(done), "invalid_basins": invalid}
