"""``rootzone export``: the S_max climatology of a prediction store as CSV and GeoPackage."""

from __future__ import annotations

import argparse

from rootzone.cli.options import add_verb


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(sub, "export", "write per-basin S_max (climatology, spread) as CSV and GeoPackage",
                 run_export_command)
    p.add_argument("--predictions", required=True, metavar="PRED.zarr", help="a complete `rootzone predict` store")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="CSV file to write (one row per basin)")
    p.add_argument("--polygons", metavar="FILE",
                   help="basin polygons (GeoPackage, Shapefile, GeoJSON, ...): also writes a GeoPackage with one "
                        "feature per basin carrying the S_max fields")
    p.add_argument("--gpkg", metavar="FILE.gpkg", help="GeoPackage to write (default: --out with .gpkg)")
    p.add_argument("--id-column", metavar="COL",
                   help="column of the polygon file holding the basin ids (default: the first of basin, "
                        "basin_id, gauge_id, id, ID)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def run_export_command(args: argparse.Namespace) -> None:
    """Per basin of the predictions, after the spin-up: the time mean of the ensemble-mean S_max, the lowest and
    highest calendar-month mean and their months, and the ensemble spread (std over members of their time-mean
    S_max, with the 5-95 % quantiles); as CSV, and with --polygons as a GeoPackage (layer 'smax') joined to the
    basin polygons. Every basin must have exactly one polygon."""
    from pathlib import Path

    from rootzone.predict.export import export_smax
    from rootzone.report.predictions import open_predictions

    gpkg = args.gpkg or (str(Path(args.out).with_suffix(".gpkg")) if args.polygons else None)
    pred = open_predictions(args.predictions)
    table = export_smax(pred, args.out, gpkg, args.polygons, args.id_column, args.overwrite)
    print(f"wrote {args.out}" + (f" and {gpkg}" if gpkg else "") + f": {len(table)} basins")
