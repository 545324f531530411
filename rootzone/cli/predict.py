"""``rootzone predict`` (one process) and ``ray_jobs/predict.py`` (one Ray task per chunk of basins)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rootzone.cli.options import add_verb
from rootzone.predict.store import VARIABLES


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(sub, "predict", "run an ensemble on every basin's whole record into a Zarr store", run_predict_command)
    p.add_argument("--experiment", required=True, metavar="EXP", help="experiment folder (local path or URL)")
    p.add_argument("--store", metavar="S", help="store to predict (default: the experiment's store)")
    p.add_argument("--out", required=True, metavar="PRED.zarr", help="output Zarr store (path or URL)")
    p.add_argument("--members", default="best",
                   help="best (per fold, the seed with the lowest validation loss; default) | all | "
                        "comma-separated trial names")
    p.add_argument("--chunk-basins", type=int, default=64, help="basins per chunk (default 64)")
    p.add_argument("--variables", help=f"comma-separated subset of {','.join(VARIABLES)} (default all)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--physics", default="auto", help="auto (fused on GPU) | fused | compiled | eager")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: CPUs it may use)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT instead of resuming it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _variables(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",")] if text else None


def run_predict_command(args: argparse.Namespace) -> None:
    """Load the best checkpoint of each ensemble member in EXP/trials, run every basin's whole record (each
    member with its saved input normalisation) and write a Zarr store with dims (member, basin, time) for S_max,
    S, W, G, Q, ET, SWE, TWS plus the ensemble mean and spread. Basins are streamed chunk by chunk; an
    interrupted run resumes."""
    from rootzone.experiment import ExperimentDir
    from rootzone.predict import check_options, prediction, run

    check_options(args.device, args.physics, args.threads)  # before anything is read or written
    from rootzone.device import set_threads

    set_threads(args.threads)  # 0 = the CPUs this process may use (affinity, cgroup quota)
    store = args.store or ExperimentDir.open(args.experiment).store
    with prediction(args.experiment, store, args.out, members=args.members, chunk_basins=args.chunk_basins,
                    variables=_variables(args.variables), overwrite=args.overwrite, device=args.device,
                    physics=args.physics) as job:
        summary = run(job, progress=not args.quiet)
    print(f"wrote {args.out}: {len(job.members)} members ({', '.join(summary['members'])}), {job.n_basins} "
          f"basins, {summary['chunks_run']} chunks run, {summary['chunks_skipped']} already done, "
          f"{len(summary['invalid_basins'])} basins skipped for invalid inputs")


# ---------------------------------------------------------------------------------------------- ray_jobs/predict.py
def ray_parser() -> argparse.ArgumentParser:
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


def run_ray_job(args: argparse.Namespace) -> int:
    """The job: check everything, lock OUT (held until the store is finalised), then run the chunks on Ray."""
    from rootzone.experiment import ExperimentDir
    from rootzone.predict import check_options, prediction
    from rootzone.predict.distributed import run_distributed

    # the device is the workers': check the names here, not that the driver has a GPU
    check_options(args.device, args.physics, device_here=False)
    store = args.store or ExperimentDir.open(args.experiment).store
    with prediction(args.experiment, store, args.out, members=args.members, chunk_basins=args.chunk_basins,
                    variables=_variables(args.variables), overwrite=args.overwrite, device=args.device,
                    physics=args.physics, device_here=False) as job:
        import ray

        if not ray.is_initialized():
            from rootzone.ensemble.cluster import connect

            connect(args.address)  # a new local instance binds to 127.0.0.1 with a private token
        summary = run_distributed(job, args.num_cpus, args.num_gpus, args.max_retries, progress=True)
    print(f"wrote {args.out}: {len(job.members)} members, {job.n_basins} basins, {summary['chunks_run']} chunks "
          f"run, {summary['chunks_skipped']} already done, {len(summary['invalid_basins'])} basins skipped")
    return 0


def ray_main(argv: Sequence[str] | None = None) -> int:
    """Run the job; like ``rootzone``'s own verbs, user errors (bad input, a full or read-only disk) give one
    line on stderr and exit status 2, never a traceback."""
    from rootzone.cli.guard import guarded

    args = ray_parser().parse_args(argv)
    return guarded(run_ray_job, args)
