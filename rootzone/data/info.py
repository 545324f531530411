"""``rootzone data info STORE``: what a store holds (basins, period, variables, units, missing data)."""

from __future__ import annotations

import dask
import numpy as np
import xarray as xr
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rootzone.data.checks import plural
from rootzone.data.schema import (
    RECORD_VARIABLES,
    forcing_names,
    forcing_records,
    open_store,
    record_mask,
    store_reads,
    store_where,
    target_names,
)

BASIN_COUNTS = {"pet_negative_days": "negative PET set to 0 (condensation)",
                "forcing_gap_days": "forcing gaps filled by linear interpolation"}


def summarise(ds: xr.Dataset) -> dict:
    """Facts about an opened store. Reads every target and forcing chunk once (lazily, chunk by chunk): the
    fraction of missing values per target (daily ones inside the basins' forcing records), and per forcing
    the count of NaN/inf values inside the records (and of negative precipitation), which training refuses;
    the basins' records, PET sources and per-basin counts of the build. A corrupt chunk is a StoreError."""
    basins = [str(b) for b in ds["basin"].values]
    variables = [v for v in ds.data_vars if v != "attributes" and ds[v].dims != ("basin",)]
    forcing = forcing_names(ds)
    inside = record_mask(ds) if RECORD_VARIABLES[0] in ds else True
    missing = {v: (ds[v].isnull().where(inside) if inside is not True and "time" in ds[v].dims
                   else ds[v].isnull()).mean() for v in target_names(ds)}
    nonfinite = {v: ((~np.isfinite(ds[v])) & inside).sum() for v in forcing}
    negative = {v: (ds[v] < 0).sum() for v in forcing if v == "precipitation"}
    counts = {v: ds[v] for v in BASIN_COUNTS if v in ds}
    pet_method = ds["pet_method"] if "pet_method" in ds else None
    with store_reads(store_where(ds)):
        missing, nonfinite, negative, counts, pet_method = dask.compute(missing, nonfinite, negative, counts,
                                                                        pet_method)
    first, last = forcing_records(ds)
    short = (first > ds["time"].values[0]) | (last < ds["time"].values[-1])
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
        "records": {basins[b]: (str(first[b])[:10], str(last[b])[:10]) for b in np.flatnonzero(short)},
        "basin_counts": {v: {basins[b]: int(n) for b, n in enumerate(np.asarray(c)) if n}
                         for v, c in counts.items()},
        "pet_method": _pet_methods(pet_method, basins),
        "dropped_basins": list(ds.attrs.get("dropped_basins") or []),
    }


def _pet_methods(codes: xr.DataArray | None, basins: list[str]) -> dict[str, list[str]]:
    """{PET source (a column or a --pet-method): [basins]} from the coded per-basin variable ``pet_method``."""
    if codes is None:
        return {}
    names = str(codes.attrs.get("flag_meanings", "")).split()
    out: dict[str, list[str]] = {}
    for basin, code in zip(basins, np.asarray(codes).tolist()):
        out.setdefault(names[code] if 0 <= code < len(names) else f"code {code}", []).append(basin)
    return out


def show_info(url: str, console: Console | None = None) -> dict:
    """Print the summary of the store at ``url`` as rich tables; returns it. Every name taken from the
    store (basin ids, attributes, variables, units, source) is escaped: it is data, never rich markup."""
    console = console or Console()
    info = summarise(open_store(url))
    e = lambda text: escape(str(text))  # noqa: E731
    more = ", ..." if info["basins"] > len(info["basin_examples"]) else ""
    console.print(f"[bold]{e(url)}[/bold]  (rootzone schema {e(info['schema'])}; source: {e(info['source'])})")
    console.print(f"basins: {info['basins']} ({e(', '.join(info['basin_examples']))}{more})")
    console.print(f"period: {info['start']} to {info['end']} ({plural(info['days'], 'day')}, "
                  f"{plural(info['months'], 'month')})")
    names = info["attributes"]
    console.print(f"attributes: {len(names)} ({e(', '.join(names[:8]))}{', ...' if len(names) > 8 else ''})")
    if info["records"]:
        rec = info["records"]
        shown = "; ".join(f"{b} {a} to {z}" for b, (a, z) in list(rec.items())[:3]) + ("; ..." if len(rec) > 3 else "")
        console.print(f"forcing records: {len(rec)} of {plural(info['basins'], 'basin')} shorter than the "
                      f"period, forcing NaN outside them ({e(shown)})")
    elif info["pet_method"]:
        console.print("forcing records: every basin covers the whole period")
    if info["pet_method"]:
        console.print("PET: " + e("; ".join(f"{m} ({plural(len(b), 'basin')})" for m, b in info["pet_method"].items())))
    for name, per in info["basin_counts"].items():
        if per:
            top = sorted(per.items(), key=lambda kv: -kv[1])
            console.print(f"{BASIN_COUNTS[name]}: {plural(sum(per.values()), 'day')} in {plural(len(per), 'basin')} "
                          f"({e(', '.join(f'{b} {n}' for b, n in top[:3]) + (', ...' if len(top) > 3 else ''))})")
    if info["dropped_basins"]:
        console.print(f"dropped at build (--drop-bad-basins): {plural(len(info['dropped_basins']), 'basin')}")
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
            where = " inside the basins' records" if info["records"] else ""
            console.print(f"[yellow]warning:[/yellow] forcing '{e(name)}' holds {n} NaN/inf values{where}; "
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
