"""``rootzone data info STORE``: what a store holds (basins, period, variables, units, missing data)."""

from __future__ import annotations

import dask
import numpy as np
import xarray as xr
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rootzone.data.schema import forcing_names, open_store, store_reads, store_where, target_names


def summarise(ds: xr.Dataset) -> dict:
    """Facts about an opened store. Reads every target and forcing chunk once (lazily, chunk by chunk): the
    fraction of missing values per target, and per forcing the count of NaN/inf values (and of negative
    precipitation), which training refuses. A corrupt chunk is a StoreError."""
    basins = [str(b) for b in ds["basin"].values]
    variables = [v for v in ds.data_vars if v != "attributes"]
    missing = {v: ds[v].isnull().mean() for v in target_names(ds)}
    forcing = forcing_names(ds)
    nonfinite = {v: (~np.isfinite(ds[v])).sum() for v in forcing}
    negative = {v: (ds[v] < 0).sum() for v in forcing if v == "precipitation"}
    with store_reads(store_where(ds)):
        missing, nonfinite, negative = dask.compute(missing, nonfinite, negative)
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
        "forcing_nonfinite": {v: int(np.asarray(n)) for v, n in nonfinite.items()},
        "forcing_negative": {v: int(np.asarray(n)) for v, n in negative.items()},
        "forcing": forcing,
        "source": ds.attrs.get("source", ""),
        "schema": ds.attrs.get("rootzone_schema"),
        "legacy_splits": ds.attrs.get("legacy_splits"),
    }


def show_info(url: str, console: Console | None = None) -> dict:
    """Print the summary of the store at ``url`` as rich tables; returns it. Every name taken from the
    store (basin ids, attributes, variables, units, source) is escaped: it is data, never rich markup."""
    console = console or Console()
    info = summarise(open_store(url))
    e = lambda text: escape(str(text))  # noqa: E731
    more = ", ..." if info["basins"] > len(info["basin_examples"]) else ""
    console.print(f"[bold]{e(url)}[/bold]  (rootzone schema {e(info['schema'])}; source: {e(info['source'])})")
    console.print(f"basins: {info['basins']} ({e(', '.join(info['basin_examples']))}{more})")
    console.print(f"period: {info['start']} to {info['end']} ({info['days']} days, {info['months']} months)")
    names = info["attributes"]
    console.print(f"attributes: {len(names)} ({e(', '.join(names[:8]))}{', ...' if len(names) > 8 else ''})")
    if info["legacy_splits"]:
        splits = info["legacy_splits"].items()
        console.print("splits: " + e("; ".join(f"{k} {a} to {b}" for k, (a, b) in splits)))
    table = Table(title="variables")
    for col in ("variable", "role", "dims", "units", "missing"):
        table.add_column(col, justify="right" if col == "missing" else "left")
    for name, v in info["variables"].items():
        frac = info["missing_fraction"].get(name)
        missing = "" if frac is None else f"{100 * frac:.1f}%"
        table.add_row(e(name), e(v["role"]), e("×".join(v["dims"])), e(v["units"]), missing)
    console.print(table)
    for name, n in info["forcing_nonfinite"].items():
        if n:
            console.print(f"[yellow]warning:[/yellow] forcing '{e(name)}' holds {n} NaN/inf values; "
                          "train refuses this store")
    for name, n in info["forcing_negative"].items():
        if n:
            console.print(f"[yellow]warning:[/yellow] '{e(name)}' holds {n} negative values; "
                          "train refuses this store")
    show_external_water(url, console)
    return info


def show_external_water(url: str, console: Console) -> dict[str, float]:
    """Flag basins whose runoff exceeds precipitation over the record (:mod:`rootzone.data.balance`)."""
    from rootzone.data.balance import describe, external_water_basins

    flagged = external_water_basins(open_store(url))
    if flagged:
        console.print(f"[yellow]flag:[/yellow] {escape(describe(flagged))}")
    return flagged
