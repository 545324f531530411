"""``rootzone data info STORE``: what a store holds (basins, period, variables, units, missing data)."""

from __future__ import annotations

import dask
import numpy as np
import xarray as xr
from rich.console import Console
from rich.table import Table

from rootzone.data.schema import forcing_names, open_store, target_names


def summarise(ds: xr.Dataset) -> dict:
    """Facts about an opened store; reads targets once to count missing values (lazily, chunk by chunk)."""
    basins = [str(b) for b in ds["basin"].values]
    variables = [v for v in ds.data_vars if v != "attributes"]
    missing = {v: ds[v].isnull().mean() for v in target_names(ds)}
    (missing,) = dask.compute(missing)
    return {
        "basins": len(basins),
        "basin_examples": basins[:5],
        "start": str(ds["time"].values[0])[:10],
        "end": str(ds["time"].values[-1])[:10],
        "days": int(ds.sizes["time"]),
        "months": int(ds.sizes["month"]),
        "attributes": [str(a) for a in ds["attribute"].values],
        "variables": {v: {"role": ds[v].attrs.get("role", ""), "units": ds[v].attrs.get("units", ""),
                          "dims": list(ds[v].dims)} for v in variables},
        "missing_fraction": {v: float(np.asarray(m)) for v, m in missing.items()},
        "forcing": forcing_names(ds),
        "source": ds.attrs.get("source", ""),
        "schema": ds.attrs.get("rootzone_schema"),
        "legacy_splits": ds.attrs.get("legacy_splits"),
    }


def show_info(url: str, console: Console | None = None) -> dict:
    """Print the summary of the store at ``url`` as rich tables; returns it."""
    console = console or Console()
    info = summarise(open_store(url))
    more = ", ..." if info["basins"] > len(info["basin_examples"]) else ""
    console.print(f"[bold]{url}[/bold]  (rootzone schema {info['schema']}; source: {info['source']})")
    console.print(f"basins: {info['basins']} ({', '.join(info['basin_examples'])}{more})")
    console.print(f"period: {info['start']} to {info['end']} ({info['days']} days, {info['months']} months)")
    names = info["attributes"]
    console.print(f"attributes: {len(names)} ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
    if info["legacy_splits"]:
        splits = info["legacy_splits"].items()
        console.print("splits: " + "; ".join(f"{k} {a} to {b}" for k, (a, b) in splits))
    table = Table(title="variables")
    for col in ("variable", "role", "dims", "units", "missing"):
        table.add_column(col, justify="right" if col == "missing" else "left")
    for name, v in info["variables"].items():
        frac = info["missing_fraction"].get(name)
        missing = "" if frac is None else f"{100 * frac:.1f}%"
        table.add_row(name, v["role"], "×".join(v["dims"]), v["units"], missing)
    console.print(table)
    return info
