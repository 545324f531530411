"""``rootzone data …``: demo, caravan, import-pickle, info."""

from __future__ import annotations

import argparse

from rootzone.cli.options import add_out_store, add_verb
from rootzone.errors import RootzoneError


def register(parent: argparse._SubParsersAction) -> None:
    data = parent.add_parser("data", help="build, import and inspect rootzone Zarr stores",
                             description="Build, import and inspect rootzone Zarr stores.")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = add_verb(sub, "demo", "write the synthetic twin-experiment store (the embedded default data)", run_demo)
    add_out_store(p)
    p.add_argument("--basins", type=int, default=64, help="number of basins (default 64)")
    p.add_argument("--years", type=int, default=15, help="years of daily data (default 15)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--start", default="2000-01-01", help="first day, YYYY-MM-DD (default 2000-01-01)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    register_builders(sub)


def run_demo(args: argparse.Namespace) -> None:
    """Write a synthetic twin-experiment store: random basin attributes, seasonal forcing, targets made by the
    process model with known parameters (stored as true_*), with observation noise and gaps."""
    from rootzone.data.checks import parse_day
    from rootzone.data.demo import build_demo
    from rootzone.data.schema import check_output, write_store

    if args.basins < 1:
        raise RootzoneError(f"--basins must be >= 1, got {args.basins}")
    if args.years < 2:
        raise RootzoneError(f"--years must be >= 2, got {args.years}")
    start = parse_day(args.start, "--start")
    check_output(args.out, args.overwrite)  # before the build: refuse what may not be replaced
    ds = build_demo(basins=args.basins, years=args.years, seed=args.seed, start=f"{start:%Y-%m-%d}")
    write_store(ds, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {ds.sizes['basin']} basins, {str(ds.time.values[0])[:10]} to "
          f"{str(ds.time.values[-1])[:10]}, targets q, et, swe, twsa (with true_* parameters)")


def register_builders(sub: argparse._SubParsersAction) -> None:
    """``caravan``, ``import-pickle`` and ``info`` (see docs/data.md)."""
    from rootzone.data.schema import BASIN_CHUNK

    p = add_verb(sub, "caravan", "build a store from a Caravan directory (CSV, NetCDF or combined NetCDF) and "
                 "optional extra products", run_caravan)
    p.add_argument("caravan_dir", metavar="CARAVAN_DIR",
                   help="root of the Caravan dataset (or one combined NetCDF file)")
    add_out_store(p)
    p.add_argument("--source", help="comma-separated source folders, e.g. camels,lamah (default: all)")
    p.add_argument("--basins", metavar="FILE", help="text file of gauge ids, one per line (default: all)")
    p.add_argument("--extra", metavar="DIR", help="folder of extra products: daily/<gauge_id>.csv "
                   "(date,lai,et,swe) and/or monthly/<gauge_id>.csv (month,twsa)")
    p.add_argument("--max-gap", type=int, default=3, metavar="DAYS",
                   help="longest forcing gap inside a basin's record filled by linear interpolation "
                        "(default 3 days; longer gaps are refused, see --drop-bad-basins)")
    p.add_argument("--drop-bad-basins", action="store_true",
                   help="leave out (and list) basins with a forcing gap longer than --max-gap or no forcing "
                        "inside --start/--end, instead of refusing the build")
    p.add_argument("--format", choices=("auto", "csv", "netcdf", "combined"), default="auto",
                   help="timeseries files to read: one CSV or NetCDF per basin, or combined NetCDF files with "
                        "a basin_id dimension (default: detected; netcdf if present, else csv)")
    p.add_argument("--start", help="first day YYYY-MM-DD (default: earliest first day of forcing over the basins)")
    p.add_argument("--end", help="last day YYYY-MM-DD (default: latest last day of forcing over the basins)")
    p.add_argument("--pet-column", help="Caravan PET column (default: potential_evaporation_sum_FAO_PENMAN_"
                   "MONTEITH if present, else potential_evaporation_sum[_ERA5_LAND])")
    p.add_argument("--pet-method", choices=("oudin", "hargreaves", "priestley-taylor"),
                   help="derive PET with pyet for basins whose files have no PET column: oudin (mean "
                        "temperature, latitude gauge_lat), hargreaves (min/max temperature, latitude), "
                        "priestley-taylor (net solar + thermal radiation, surface pressure or elevation)")
    p.add_argument("--no-era5-swe", action="store_true",
                   help="do not add snow_depth_water_equivalent_mean as the extra input era5_swe")
    p.add_argument("--attributes", help="comma-separated attribute names to keep (default: every numeric "
                   "attribute with no missing value)")
    p.add_argument("--chunk-basins", type=int, default=BASIN_CHUNK,
                   help=f"basins read, held and written at a time = Zarr chunk (default {BASIN_CHUNK})")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add_verb(sub, "import-pickle", "import the original study's pickled TensorDatasets", run_import_pickle)
    p.add_argument("file", metavar="FILE", help="the pickle (plain pickle or torch.save file)")
    add_out_store(p)
    p.add_argument("--names", required=True, metavar="NAMES.json",
                   help='column names: {"x": [...], "y": ["q", "et", "swe"], "z": ["twsa", ...]}')
    p.add_argument("--start", required=True, help="first day of the training split, YYYY-MM-DD")
    p.add_argument("--basins", metavar="FILE", help="basin ids, one per line, in the pickle's order")
    p.add_argument("--max-gap", type=int, default=5, metavar="DAYS",
                   help="longest forcing gap filled by linear interpolation (default 5 days)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--i-trust-this-file", dest="trust", action="store_true",
                   help="unpickle FILE fully (pickle.load / torch.load(weights_only=False)) when the safe "
                        "loader refuses it: this RUNS ANY CODE stored in the file; only for files whose "
                        "origin you trust")

    p = sub.add_parser("info", help="show a store's basins, period, variables, units and missing data",
                       description="Show a store's basins, period, variables, units and the fraction of "
                                   "missing values per target.")
    p.add_argument("store", metavar="STORE", help="store path or fsspec URL")
    p.set_defaults(func=run_info)

    from rootzone.cli import aggregate

    aggregate.register(sub)


def _csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _refuse_existing(out: str, overwrite: bool) -> None:
    """Refuse an output that exists (without --overwrite) or may not be replaced, before any work."""
    from rootzone.data.schema import check_output

    check_output(out, overwrite)


def run_caravan(args: argparse.Namespace) -> None:
    """Build a store from Caravan's published layout: timeseries/{csv,netcdf}/<source>/<gauge_id>.{csv,nc} or
    combined NetCDF files (basin_id × time), attributes/<source>/attributes_*.csv, plus optional LAI/ET/SWE/TWSA
    tables (--extra, layout in docs/data.md). The time axis is the union of the basins' forcing records (stored
    as forcing_first_day/forcing_last_day); every file is checked; gaps in forcing up to --max-gap days are
    interpolated, anything worse is refused with a one-line error (or the basin dropped with --drop-bad-basins)
    and nothing is written."""
    from pathlib import Path

    from rootzone.data.caravan import CaravanBuild, build_caravan
    from rootzone.data.checks import plural

    _refuse_existing(args.out, args.overwrite)
    opts = CaravanBuild(
        root=Path(args.caravan_dir), out=args.out, sources=_csv_list(args.source),
        basins_file=Path(args.basins) if args.basins else None,
        extra_dir=Path(args.extra) if args.extra else None, max_gap=args.max_gap, overwrite=args.overwrite,
        fmt=args.format, start=args.start, end=args.end, pet_column=args.pet_column, pet_method=args.pet_method,
        era5_swe=not args.no_era5_swe, attributes=_csv_list(args.attributes), chunk_basins=args.chunk_basins,
        drop_bad_basins=args.drop_bad_basins,
    )
    s = build_caravan(opts, show_progress=not args.quiet)
    pets = ", ".join(f"{p} ({plural(n, 'basin')})" for p, n in s["pet_sources"].items())
    print(f"wrote {args.out}: {plural(s['basins'], 'basin')}, {s['start']:%Y-%m-%d} to {s['end']:%Y-%m-%d}, "
          f"variables {', '.join(s['variables'])}; {plural(s['attributes'], 'attribute')} (PET from {pets})")
    if s["shorter"]:
        print(f"{plural(s['shorter'], 'basin')} with a shorter forcing record than the period "
              "(forcing_first_day/forcing_last_day; NaN outside)")
    if s["without_swe"]:
        print(f"era5_swe left out: {plural(len(s['without_swe']), 'basin')} without "
              f"snow_depth_water_equivalent_mean ({', '.join(s['without_swe'][:3])}"
              f"{', ...' if len(s['without_swe']) > 3 else ''})")
    if s["dropped_attributes"]:
        print(f"dropped {plural(len(s['dropped_attributes']), 'attribute')} with missing values: "
              f"{', '.join(s['dropped_attributes'])}")
    if s["dropped_basins"]:
        print(f"dropped {plural(len(s['dropped_basins']), 'basin')} (--drop-bad-basins):")
        for line in s["dropped_basins"]:
            print(f"  {line}")
    for line in s["gaps"]:
        print(line)


def run_import_pickle(args: argparse.Namespace) -> None:
    """Import a pickled dict of training/validation/test TensorDataset(x, y, z) (x [B,T,V] daily inputs and
    statics, y [B,T,3] Q/ET/SWE, z [B,M,K] monthly, TWSA first). The splits are concatenated in time from
    --start and their bounds stored as 'legacy_splits'. SECURITY: a full unpickle runs code stored in the file,
    so by default the file is read by a restricted loader that builds only tensors, TensorDataset, numpy arrays
    and plain containers, and a file needing anything else is refused; --i-trust-this-file loads it fully."""
    from pathlib import Path

    from rootzone.data.legacy import import_pickle

    _refuse_existing(args.out, args.overwrite)
    s = import_pickle(Path(args.file), args.out, Path(args.names), args.start,
                      basins_file=Path(args.basins) if args.basins else None, overwrite=args.overwrite,
                      max_gap=args.max_gap, trust=args.trust)
    splits = "; ".join(f"{k} {a}..{b}" for k, (a, b) in s["splits"].items())
    print(f"wrote {args.out}: {s['basins']} basins, {s['start']:%Y-%m-%d} to {s['end']:%Y-%m-%d} ({splits}); "
          f"forcing {', '.join(s['forcing'])}; {len(s['attributes'])} attributes; "
          f"targets {', '.join(s['targets'])}")
    for line in s["gaps"]:
        print(line)


def run_info(args: argparse.Namespace) -> None:
    from rootzone.data.info import show_info

    show_info(args.store)
