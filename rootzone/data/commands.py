"""``rootzone data …`` verbs."""

from __future__ import annotations

import argparse

from rootzone.errors import RootzoneError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="write the synthetic twin-experiment store (the embedded default data)",
        description="Write a synthetic twin-experiment store: random basin attributes, seasonal forcing, "
                    "targets made by the process model with known parameters (stored as true_*), with "
                    "observation noise and gaps.",
    )
    p.add_argument("out", metavar="OUT.zarr", help="output store path or fsspec URL")
    p.add_argument("--basins", type=int, default=64, help="number of basins (default 64)")
    p.add_argument("--years", type=int, default=15, help="years of daily data (default 15)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--start", default="2000-01-01", help="first day, YYYY-MM-DD (default 2000-01-01)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    from rootzone.data.demo import build_demo
    from rootzone.data.schema import store_exists, write_store

    if args.basins < 1:
        raise RootzoneError(f"--basins must be >= 1, got {args.basins}")
    if args.years < 2:
        raise RootzoneError(f"--years must be >= 2, got {args.years}")
    if store_exists(args.out) and not args.overwrite:
        raise RootzoneError(f"output '{args.out}' already exists (pass --overwrite to replace it)")
    ds = build_demo(basins=args.basins, years=args.years, seed=args.seed, start=args.start)
    write_store(ds, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {ds.sizes['basin']} basins, {str(ds.time.values[0])[:10]} to "
          f"{str(ds.time.values[-1])[:10]}, targets q, et, swe, twsa (with true_* parameters)")
