"""``rootzone data aggregate``: gridded LAI/ET/SWE/TWSA products -> the basin tables ``--extra`` reads."""

from __future__ import annotations

import argparse

from rootzone.cli.options import add_verb


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``aggregate`` to the ``rootzone data`` sub-commands."""
    p = add_verb(sub, "aggregate", "area-weighted basin means of a gridded product (MODIS LAI, FLUXCOM ET, "
                 "NSIDC SWE, GRACE TWSA) as the tables `data caravan --extra` reads", run_aggregate)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("grid", metavar="GRID", help="gridded product: NetCDF-4 file or Zarr store on a regular "
                   "lat/lon grid (lon 0..360 or -180..180, lat either order, CF fill values and packing)")
    p.add_argument("polygons", metavar="POLYGONS", help="basin polygons: GeoPackage, Shapefile or GeoJSON")
    p.add_argument("out", metavar="OUT_DIR", help="folder of tables for `rootzone data caravan --extra OUT_DIR`; "
                   "another product aggregated into the same folder is added to its tables")
    p.add_argument("--product", required=True, choices=("lai", "et", "swe", "twsa"),
                   help="what the grid holds: lai (any step, interpolated to daily), et (daily or monthly), "
                        "swe (daily), twsa (monthly solutions)")
    p.add_argument("--variable", help="grid variable to read (default: the only one with time, lat and lon)")
    p.add_argument("--id-field", default="gauge_id", help="polygon field with the basin ids (default gauge_id)")
    p.add_argument("--to-crs", action="store_true",
                   help="reproject polygons that are in another CRS than the grid (EPSG:4326 unless the grid "
                        "names its own); without it such polygons are refused")
    p.add_argument("--units", help="units of the variable, when its 'units' attribute is missing or wrong "
                                   "(e.g. cm, m, mm/d, 'kg m-2 s-1', mm/month, 'W m-2')")
    p.add_argument("--mask", metavar="VAR|FILE:VAR", help="land mask on the same grid: a variable of GRID or "
                   "of another file; cells where it is 0 or missing are not used")
    p.add_argument("--max-gap", type=int, default=8, metavar="DAYS",
                   help="lai: interpolate across at most this many days beyond the product's own step "
                        "(default 8: one missing 8-day composite); longer gaps stay empty")
    p.add_argument("--min-valid", type=float, default=0.5, metavar="FRACTION",
                   help="a basin's value needs at least this fraction of its area with data (default 0.5)")
    p.add_argument("--min-coverage", type=float, default=0.99, metavar="FRACTION",
                   help="refuse basins with less of their area inside the grid's extent (default 0.99)")
    p.add_argument("--start", help="first time step to use, YYYY-MM-DD (default: the grid's first)")
    p.add_argument("--end", help="last time step to use, YYYY-MM-DD (default: the grid's last)")
    p.add_argument("--time-chunk", type=int, metavar="STEPS",
                   help="time steps read at a time (default: as many as fit in about 256 MB)")
    p.add_argument("--overwrite", action="store_true", help="replace this product in OUT_DIR if already there")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_aggregate(args: argparse.Namespace) -> None:
    """Area-weighted mean of a gridded product over each basin polygon, written as the per-basin tables that
    `rootzone data caravan --extra OUT_DIR` reads:

      OUT_DIR/daily/<gauge_id>.csv     date,lai,et,swe   (the daily products aggregated so far)
      OUT_DIR/monthly/<gauge_id>.csv   month,twsa

    Each cell counts with the exact fraction of it inside the polygon times its area on the sphere; cells
    without data (fill values, masked) are left out of the mean. The grid is read in time chunks, so it may be
    larger than memory. Time: lai (e.g. MODIS 8-day composites) is interpolated linearly to days, across at
    most --max-gap days beyond its step; et is daily, or monthly written as the month's mean rate on each
    day; swe is daily; twsa solutions (GRACE mascons, time bounds' midpoint) are averaged per calendar month,
    missing months left empty. Units come from the variable's 'units' (or --units) and are converted to
    m2/m2, mm/d, mm, mm. Bad input (no CRS, another CRS without --to-crs, no lat/lon, unknown variable or
    units, duplicate ids, basins outside the grid) is refused and nothing is written. See docs/data.md."""
    from rootzone.data.aggregate import AggregateJob, aggregate

    job = AggregateJob(grid=args.grid, polygons=args.polygons, out=args.out, product=args.product,
                       variable=args.variable, id_field=args.id_field, to_crs=args.to_crs, units=args.units,
                       mask=args.mask, max_gap=args.max_gap, min_valid=args.min_valid,
                       min_coverage=args.min_coverage, time_chunk=args.time_chunk, start=args.start,
                       end=args.end, overwrite=args.overwrite)
    s = aggregate(job, show_progress=not args.quiet)
    table, fmt = ("daily", "%Y-%m-%d") if args.product != "twsa" else ("monthly", "%Y-%m")
    print(f"wrote {args.out}/{table}: {args.product} of {s['basins']} basin{'s' * (s['basins'] != 1)}, "
          f"{s['first']:{fmt}} to {s['last']:{fmt}}, from {s['steps']} time steps of '{s['info']['variable']}'")
    for line in job.report:
        print(line)
    if s["no_cells"]:
        print(f"{len(s['no_cells'])} basin(s) have no usable grid cell (masked) and empty {args.product}: "
              f"{', '.join(s['no_cells'][:10])}{' ...' if len(s['no_cells']) > 10 else ''}")
