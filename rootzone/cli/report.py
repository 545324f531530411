"""``rootzone report``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="metrics tables and figures of an experiment (index.html)",
        description="Write metrics tables (CSV) and PNG figures of an experiment folder, tied together by "
                    "REPORT_DIR/index.html. Figures that need daily series (hydrographs, seasonal cycles, S_max "
                    "dynamics) are drawn when --predictions names a complete store from `rootzone predict`.")
    p.add_argument("--experiment", required=True, metavar="EXP", help="experiment folder (path or URL)")
    p.add_argument("--predictions", metavar="PRED.zarr", help="prediction store from `rootzone predict`")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="output folder")
    p.add_argument("--basins", help="comma-separated basin ids for hydrographs (default: best, median and "
                                    "worst test NSE of Q)")
    p.add_argument("--polygons", metavar="FILE", help="basin polygons (GeoPackage, Shapefile, GeoJSON, ...) to draw "
                                                     "the S_max map on (default: points at the basins' coordinates)")
    p.add_argument("--id-column", metavar="COL", help="column of --polygons holding the basin ids (default: the "
                                                      "first of basin, basin_id, gauge_id, id, ID)")
    p.set_defaults(func=run_report_command)


def run_report_command(args: argparse.Namespace) -> None:
    from rootzone.report import make_report

    basins = [b.strip() for b in args.basins.split(",") if b.strip()] if args.basins else None
    result = make_report(args.experiment, args.out, args.predictions, basins, args.polygons, args.id_column)
    print(f"wrote {Path(args.out) / 'index.html'}: {len(result['figures'])} figures, "
          f"{len(result['tables'])} tables")
    for note in result["skipped"]:
        print(f"report: not drawn: {note}")
