"""``rootzone predict`` spread over a Ray cluster: one Ray task per chunk of basins, each writing its own
region of the output store (regions never share a Zarr chunk); the driver alone records finished chunks,
so an interrupted job resumes (rerun the same command) and the store is marked complete at the end.

Submit from the repository root (the working dir makes ``rootzone`` importable on the workers)::

    ray job submit --working-dir . -- python ray_jobs/predict.py \
        --experiment s3://bucket/exp --out s3://bucket/pred.zarr --chunk-basins 256 --num-gpus 0.25

On a GPU worker each task resolves ``--physics auto`` to the fused kernel. Every task loads the members'
checkpoints itself (small next to a chunk's work); failed tasks are retried by Ray (``--max-retries``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python ray_jobs/predict.py` from anywhere

from rootzone import predict as rp  # noqa: E402
from rootzone.progress import progress_bar  # noqa: E402


def _chunk_task(job: rp.PredictionJob, index: int) -> rp.ChunkResult:
    import torch

    if job.device != "cuda" and not torch.cuda.is_available():
        torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    return rp.predict_chunk(job, index)


def run_distributed(job: rp.PredictionJob, num_cpus: float = 1, num_gpus: float = 0, max_retries: int = 3,
                    max_in_flight: int = 64, progress: bool = True,
                    on_chunk: Callable[[rp.ChunkResult], None] | None = None) -> dict:
    """Predict every chunk not yet done as Ray tasks (Ray must be initialised), then finalise the store.
    Returns the same summary as :func:`rootzone.predict.run`."""
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)(_chunk_task)
    done = rp.chunks_done(job)
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
            index = pending.pop(ready[0])
            result = ray.get(ready[0])
            rp.mark_done(job, index)
            rp.report_invalid(result)
            invalid.update(result.invalid)
            bar.update(bar_task, advance=job.bounds(index)[1] - job.bounds(index)[0])
            if on_chunk is not None:
                on_chunk(result)
    rp.finalise(job)
    return {"out": job.out, "members": [m.name for m in job.members], "chunks_run": len(todo),
            "chunks_skipped": len(done), "invalid_basins": invalid}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray_jobs/predict.py",
                                description="rootzone predict with one Ray task per chunk of basins")
    p.add_argument("--experiment", required=True, help="experiment folder (path or URL)")
    p.add_argument("--store", help="store to predict (default: the experiment's store)")
    p.add_argument("--out", required=True, help="output Zarr store (path or URL every worker can reach)")
    p.add_argument("--members", default="best", help="best | all | comma-separated trial names")
    p.add_argument("--chunk-basins", type=int, default=256, help="basins per task (default 256)")
    p.add_argument("--variables", help="comma-separated subset of the output variables (default all)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (on the workers)")
    p.add_argument("--physics", default="auto", help="auto | fused | compiled | eager")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs per task (default 1)")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per task, fractions allowed (default 0)")
    p.add_argument("--max-retries", type=int, default=3, help="Ray retries of a failed task (default 3)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT instead of resuming it")
    p.add_argument("--address", default=None, help="Ray address (default: the cluster of `ray job submit`)")
    return p


def run_job(args: argparse.Namespace) -> int:
    """The job: check everything, lock OUT (held until the store is finalised), then run the chunks on Ray."""
    # the device is the workers': check the names here, not that the driver has a GPU
    rp.check_options(args.device, args.physics, device_here=False)
    store = args.store or rp.experiment_store(args.experiment)
    variables = [v.strip() for v in args.variables.split(",")] if args.variables else None
    with rp.prediction(args.experiment, store, args.out, members=args.members, chunk_basins=args.chunk_basins,
                       variables=variables, overwrite=args.overwrite, device=args.device, physics=args.physics,
                       device_here=False) as job:
        if not ray.is_initialized():
            from rootzone.ensemble_ray import connect

            connect(args.address)  # a new local instance binds to 127.0.0.1 with a private token
        summary = run_distributed(job, args.num_cpus, args.num_gpus, args.max_retries, progress=True)
    print(f"wrote {args.out}: {len(job.members)} members, {job.n_basins} basins, {summary['chunks_run']} chunks "
          f"run, {summary['chunks_skipped']} already done, {len(summary['invalid_basins'])} basins skipped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; like ``rootzone``'s own verbs, user errors (bad input, a full or read-only disk) give one
    line on stderr and exit status 2, never a traceback."""
    args = _parser().parse_args(argv)
    from rootzone.cli import guarded

    return guarded(run_job, args)


if __name__ == "__main__":
    code = main()
    if code == 130:  # skip interpreter teardown, like `rootzone` (no pages of asyncio warnings)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)
