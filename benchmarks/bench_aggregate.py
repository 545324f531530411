"""Grid -> basin aggregation benchmark: throughput and peak RSS of ``rootzone data aggregate``.

    python benchmarks/bench_aggregate.py                       # 400x400 and 800x800 cells, 120 and 480 months
    python benchmarks/bench_aggregate.py --sizes 50x50 --steps 6 12 --basins 5 --out /tmp/a.json

Synthetic monthly TWSA-like grids (float32 NetCDF-4, cm, CF packing-free, fill values on a few cells) over a
40° x 40° region and random star-shaped basin polygons inside it. Every aggregation runs in its own process
(``os.wait4`` ru_maxrss, as benchmarks/bench_data.py). Claims checked: throughput in basins x grid cells x
months per second, and peak RSS that does not grow with the number of time steps (the grid is read in time
chunks of about 256 MB, so every run here has several chunks; the grid files are bigger than that budget). Results go to
benchmarks/results/aggregate_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from child import run_child
from provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
WEST, SOUTH, SPAN = -100.0, 20.0, 40.0  # region of the synthetic grids, degrees


def make_grid(path: Path, nlat: int, nlon: int, steps: int, seed: int = 0) -> float:
    """Write a [steps, nlat, nlon] float32 NetCDF-4 grid slab by slab (bounded memory); returns its MB."""
    import h5netcdf

    rng = np.random.default_rng(seed)
    lat = SOUTH + (np.arange(nlat) + 0.5) * SPAN / nlat
    lon = WEST + (np.arange(nlon) + 0.5) * SPAN / nlon
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"time": steps, "lat": nlat, "lon": nlon}
        t = f.create_variable("time", ("time",), "f8")
        t[:] = np.arange(steps) * 30.4375 + 15
        t.attrs.update(units="days since 2002-01-01", calendar="standard")
        la = f.create_variable("lat", ("lat",), "f8")
        la[:] = lat[::-1]  # descending, like many products
        la.attrs.update(units="degrees_north", standard_name="latitude")
        lo = f.create_variable("lon", ("lon",), "f8")
        lo[:] = np.mod(lon, 360)  # 0..360 (the region is 260..300)
        lo.attrs.update(units="degrees_east", standard_name="longitude")
        v = f.create_variable("lwe_thickness", ("time", "lat", "lon"), "f4", fillvalue=np.float32(-99999.0),
                              chunks=(1, nlat, nlon))
        v.attrs["units"] = "cm"
        base = rng.normal(0, 5, (nlat, nlon)).astype(np.float32)
        base[rng.random((nlat, nlon)) < 0.01] = -99999.0  # fill value cells
        for i in range(steps):
            v[i] = np.where(base > -99999, base + np.float32(3 * np.sin(i / 6)), base)
    return path.stat().st_size / 2**20


def make_polygons(path: Path, n: int, seed: int = 0) -> None:
    """``n`` random star-shaped basins of 0.3° to 4° radius inside the region (GeoPackage, EPSG:4326)."""
    import geopandas as gpd
    import shapely

    rng = np.random.default_rng(seed)
    geoms = []
    for _ in range(n):
        r = rng.uniform(0.3, 4.0)
        cx, cy = rng.uniform(WEST + r, WEST + SPAN - r), rng.uniform(SOUTH + r, SOUTH + SPAN - r)
        a = np.sort(rng.uniform(0, 2 * np.pi, 24))
        rad = r * rng.uniform(0.4, 1.0, 24)
        geoms.append(shapely.Polygon(np.c_[cx + rad * np.cos(a), cy + rad * np.sin(a)]))
    gpd.GeoDataFrame({"gauge_id": [f"b{i:05d}" for i in range(n)]}, geometry=geoms, crs="EPSG:4326").to_file(
        path, engine="pyogrio")


def child(grid: str, polys: str, out: str, time_chunk: int | None) -> None:
    """In the child process: one aggregation through rootzone.data.aggregate (the CLI's code path without the
    CLI's imports), timed; prints one JSON line."""
    t0 = time.perf_counter()
    from rootzone.data.aggregate import AggregateJob, aggregate

    t1 = time.perf_counter()
    s = aggregate(AggregateJob(grid=grid, polygons=polys, out=out, product="twsa", time_chunk=time_chunk),
                  show_progress=False)
    t2 = time.perf_counter()
    print(json.dumps({"import_s": round(t1 - t0, 2), "aggregate_s": round(t2 - t1, 2), "chunks": s["chunks"]}))


def run_aggregate(grid: Path, polys: Path, out: Path, time_chunk: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", str(grid), str(polys), str(out)]
    if time_chunk:
        cmd += ["--time-chunk", str(time_chunk)]
    t0 = time.perf_counter()
    stdout, _, peak_mb = run_child(cmd, "aggregate")
    return {"wall_s": round(time.perf_counter() - t0, 2), **json.loads(stdout.strip().splitlines()[-1]),
            "peak_rss_mb": round(peak_mb, 1)}


def parse_size(text: str) -> tuple[int, int]:
    try:
        a, b = text.lower().split("x")
        return int(a), int(b)
    except ValueError:
        raise SystemExit(f"--sizes: expected NLATxNLON, got {text!r}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["400x400", "800x800"], help="grids, NLATxNLON")
    ap.add_argument("--steps", type=int, nargs="+", default=[120, 480], help="time steps (months) per grid")
    ap.add_argument("--basins", type=int, default=200, help="basin polygons (default 200)")
    ap.add_argument("--time-chunk", type=int, help="pass --time-chunk (default: the command's own budget)")
    ap.add_argument("--workdir", help="where to put grids and tables (default: a temporary folder)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/aggregate_cpu.json"), help="JSON results")
    ap.add_argument("--child", nargs=3, metavar=("GRID", "POLYGONS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.time_chunk)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rootzone-bench-agg-"))
    runs = []
    try:
        polys = work / "basins.gpkg"
        make_polygons(polys, args.basins)
        for size in args.sizes:
            nlat, nlon = parse_size(size)
            for steps in args.steps:
                grid = work / f"grid_{nlat}x{nlon}_{steps}.nc"
                t0 = time.perf_counter()
                mb = make_grid(grid, nlat, nlon, steps)
                res = {"grid": f"{nlat}x{nlon}", "cells": nlat * nlon, "months": steps, "basins": args.basins,
                       "grid_mb": round(mb, 1), "generate_s": round(time.perf_counter() - t0, 1),
                       **run_aggregate(grid, polys, work / "tables", args.time_chunk)}
                res["basin_cell_months_per_s"] = round(args.basins * nlat * nlon * steps / res["aggregate_s"])
                res["grid_mb_per_s"] = round(mb / res["aggregate_s"], 1)
                runs.append(res)
                print(json.dumps(res), flush=True)
                grid.unlink()
                shutil.rmtree(work / "tables")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    growth = {}
    for size in {r["grid"] for r in runs}:
        rss = [r["peak_rss_mb"] for r in sorted((r for r in runs if r["grid"] == size), key=lambda r: r["months"])]
        growth[size] = round(rss[-1] / rss[0], 3)
    result = {
        "benchmark": "rootzone data aggregate: basins x grid cells x months per second and peak RSS",
        **provenance(), "device": "cpu", "runs": runs,
        "peak_rss_ratio_longest_vs_shortest": growth,
        "peak_rss_flat_in_time": all(g <= 1.15 for g in growth.values()),
        "notes": "Each run is a child process calling rootzone.data.aggregate.aggregate (what `rootzone data "
                 "aggregate` runs, without the CLI's other imports); aggregate_s is that call (open, weights, "
                 "streamed means, tables written), wall_s the whole process, peak_rss_mb its own maximum "
                 "resident set (os.wait4), Python, xarray, dask and geopandas included. The grid is a float32 NetCDF-4 "
                 "file (latitudes descending, longitudes 0..360, 1% fill-value cells, cm -> mm), read in time "
                 "chunks of about 256 MB; the basin x cell weights (exactextract coverage x spherical cell area) "
                 "are computed once per run. Throughput counts every cell of the grid, not only those the "
                 "basins touch. peak_rss_flat_in_time: the longest run's peak RSS within 15% of the shortest's "
                 "for each grid size.",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
