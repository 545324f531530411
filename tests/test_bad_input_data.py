"""Bad and hostile inputs of the data commands (audit rows A03-A27, F4, B14-B16, B30; reliability.md):
one line on stderr, exit status 2, and nothing written or deleted."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import assert_refused, run_cli, tree_snapshot
from test_data_caravan import make_caravan, write_timeseries
from test_data_pickle import START, X_NAMES, legacy
from torch.utils.data import TensorDataset

from rootzone import safety
from rootzone.data import demo as demo_module
from rootzone.data.demo import build_demo
from rootzone.data.schema import (
    SCHEMA_KEY,
    check_forcing_finite,
    open_store,
    write_store,
)
from rootzone.errors import StoreError


@pytest.fixture(scope="module")
def demo_ds() -> xr.Dataset:
    return build_demo(basins=3, years=4, seed=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_ds) -> Path:
    """A good store, copied by tests that damage it."""
    path = tmp_path_factory.mktemp("good") / "s.zarr"
    write_store(demo_ds, str(path))
    return path


def _raw_write(ds: xr.Dataset, path: Path) -> None:
    """Write ``ds`` as Zarr without rootzone's checks (to make a store that rootzone must refuse)."""
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True)


def _copy(store: Path, tmp_path: Path, name: str = "s.zarr") -> Path:
    dst = tmp_path / name
    shutil.copytree(store, dst)
    return dst


# ---------------------------------------------------------------------------------------------- data info
def test_a03_info_corrupt_forcing_chunk(store, tmp_path, capsys):
    bad = _copy(store, tmp_path)
    chunk = next(p for p in (bad / "precipitation").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"garbage" * 10)
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "info", bad)
    assert_refused(code, err, "cannot read its data", "corrupt", str(bad))
    assert tree_snapshot(tmp_path) == before
    with pytest.raises(StoreError, match="corrupt"):  # train's check of the forcing reads it the same way
        check_forcing_finite(open_store(str(bad)))


def test_a06_info_basin_ids_with_rich_markup(demo_ds, tmp_path, capsys):
    ds = demo_ds.assign_coords(basin=np.array(["[/]", "[bold]x", "ok"], dtype=object))
    path = tmp_path / "markup.zarr"
    write_store(ds, str(path))
    before = tree_snapshot(tmp_path)
    code, out, err = run_cli(capsys, "data", "info", path)
    assert code == 0, err
    assert "[/], [bold]x, ok" in out and "Traceback" not in err
    assert tree_snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- bad dates
def test_a07_demo_bad_start(tmp_path, capsys):
    code, _, err = run_cli(capsys, "data", "demo", tmp_path / "x.zarr", "--start", "notadate")
    assert_refused(code, err, "--start", "notadate", "YYYY-MM-DD")
    assert tree_snapshot(tmp_path) == {}


@pytest.mark.parametrize("flag, value", [("--start", "notadate"), ("--end", "2000-02-30")])
def test_a23_caravan_bad_start_end(tmp_path, capsys, flag, value):
    make_caravan(tmp_path / "c", n_per_source=1, days=60)
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--quiet", flag, value)
    assert_refused(code, err, flag, value)
    assert tree_snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- --overwrite
def test_a10_overwrite_regular_file(tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "demo", precious, "--overwrite", "--basins", "2", "--years", "2")
    assert_refused(code, err, "precious.txt", "is a file")
    assert tree_snapshot(tmp_path) == before


def test_a11_overwrite_symlink(store, tmp_path, capsys):
    target = _copy(store, tmp_path, "real.zarr")  # even a link to a rootzone store is refused
    (tmp_path / "link.zarr").symlink_to(target, target_is_directory=True)
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "demo", tmp_path / "link.zarr", "--overwrite", "--basins", "2",
                           "--years", "2")
    assert_refused(code, err, "symbolic link")
    assert tree_snapshot(tmp_path) == before and (tmp_path / "link.zarr").is_symlink()


def test_a12_overwrite_current_directory(tmp_path, capsys, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "canary.txt").write_text("alive")
    monkeypatch.chdir(project)
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "demo", ".", "--overwrite", "--basins", "2", "--years", "2")
    assert_refused(code, err, "current directory")
    code, _, err = run_cli(capsys, "data", "demo", "..", "--overwrite", "--basins", "2", "--years", "2")
    assert_refused(code, err, "current directory")
    assert tree_snapshot(tmp_path) == before


def test_a12_overwrite_foreign_directory(tmp_path, capsys):
    """A directory that is not a rootzone store (a project, another Zarr store) is never replaced."""
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_zarr(tmp_path / "other.zarr", zarr_format=3)
    before = tree_snapshot(tmp_path)
    for out in ("project", "other.zarr"):
        code, _, err = run_cli(capsys, "data", "demo", tmp_path / out, "--overwrite", "--basins", "2",
                               "--years", "2")
        assert_refused(code, err, "not a rootzone data store")
    assert tree_snapshot(tmp_path) == before


def test_a12b_overwrite_root_refused_before_anything(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: calls.append(("rmtree", a)))
    monkeypatch.setattr(safety, "_rm_tree", lambda *a, **k: calls.append(("rm_tree", a)))
    monkeypatch.setattr(demo_module, "build_demo", lambda *a, **k: calls.append(("build", a)))
    monkeypatch.setattr(xr.Dataset, "to_zarr", lambda *a, **k: calls.append(("to_zarr", a)))
    monkeypatch.chdir(tmp_path)
    for out in ("/", str(Path.home()), "file:///"):
        code, _, err = run_cli(capsys, "data", "demo", out, "--overwrite")
        assert_refused(code, err, "refusing")
    assert calls == []
    assert tree_snapshot(tmp_path) == {}


def test_overwrite_own_store_still_works(store, tmp_path, capsys):
    out = _copy(store, tmp_path)
    code, _, err = run_cli(capsys, "data", "demo", out, "--overwrite", "--basins", "2", "--years", "2")
    assert code == 0, err
    assert open_store(str(out)).sizes["basin"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


# ---------------------------------------------------------------------------------------------- F4
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_f4_stale_temporaries_of_a_killed_build_are_cleaned(tmp_path, capsys):
    out = tmp_path / "k.zarr"
    host = safety._host_tag()
    dead = tmp_path / f"k.zarr.tmp-{host}-{_dead_pid()}-0123abcd"
    live = tmp_path / f"k.zarr.tmp-{host}-{os.getpid()}-4567cdef"
    other_host = tmp_path / f"k.zarr.tmp-elsewhere{host}-{_dead_pid()}-89abcdef"
    for d in (dead, live, other_host):
        (d / "precipitation").mkdir(parents=True)
        (d / "zarr.json").write_text("{}")
    code, _, err = run_cli(capsys, "data", "demo", out, "--basins", "2", "--years", "2")
    assert code == 0, err
    assert not dead.exists()  # a build killed on this host: its process is gone
    assert live.is_dir() and other_host.is_dir()  # still running, or another host's: kept
    assert open_store(str(out)).sizes["basin"] == 2


# ---------------------------------------------------------------------------------------------- import-pickle
class _Hostile:
    """Unpickling this writes a marker file (stands for any code an attacker wants run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _names(tmp_path: Path) -> Path:
    nm = tmp_path / "names.json"
    nm.write_text(json.dumps({"x": X_NAMES, "y": ["Q", "ET", "SWE"], "z": ["TWSA", "soil_moisture"]}))
    return nm


@pytest.mark.parametrize("kind", ["pickle", "torch.save", "storage bytes"])
def test_a15_a16_hostile_pickles_do_not_run(tmp_path, capsys, kind):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pkl"
    data = {"train": _Hostile(marker)}
    if kind == "pickle":
        evil.write_bytes(pickle.dumps(data))
    elif kind == "torch.save":
        torch.save(data, evil)
    else:  # a plain pickle whose tensor storage bytes hide the payload (torch.storage._load_from_bytes)
        class Storage:
            def __reduce__(self):
                return (torch.storage._load_from_bytes, (pickle.dumps(data, protocol=2),))

        evil.write_bytes(pickle.dumps({"train": Storage()}))
    nm = _names(tmp_path)
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "import-pickle", evil, tmp_path / "s.zarr", "--names", nm,
                           "--start", START)
    assert_refused(code, err, "refused to unpickle", "--i-trust-this-file")
    assert not marker.exists()
    assert tree_snapshot(tmp_path) == before
    if kind == "storage bytes":
        return
    # the explicit opt-in unpickles fully, as documented: the code runs, after a warning on stderr
    code, _, err = run_cli(capsys, "data", "import-pickle", evil, tmp_path / "s.zarr", "--names", nm,
                           "--start", START, "--i-trust-this-file")
    lines = err.strip().splitlines()
    assert lines[0].startswith("rootzone: warning: --i-trust-this-file") and "runs any code" in lines[0]
    assert marker.exists()
    assert code == 2 and lines[-1].startswith("rootzone: error: ") and "Traceback" not in err
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("fmt", ["protocol 0", "protocol 2", "protocol 5", "torch.save legacy"])
def test_real_pickles_need_no_flag(tmp_path, capsys, fmt):
    """The original study's files (dicts of TensorDataset) import through the safe loader, whatever
    pickle protocol or torch.save format wrote them; numpy arrays load too."""
    data, full = legacy(n=2)
    data["val"] = tuple(t.numpy() for t in data["val"].tensors)  # numpy arrays in place of a dataset
    pkl = tmp_path / "legacy.pkl"
    if fmt.startswith("protocol"):
        pkl.write_bytes(pickle.dumps(data, protocol=int(fmt[-1])))
    else:
        torch.save(data, pkl, _use_new_zipfile_serialization=False)
    code, _, err = run_cli(capsys, "data", "import-pickle", pkl, tmp_path / "s.zarr", "--names", _names(tmp_path),
                           "--start", START)
    assert code == 0, err
    assert err == ""
    np.testing.assert_array_equal(open_store(str(tmp_path / "s.zarr")).q.values, full["y"][..., 0])


def _pickle_case(tmp_path: Path, edit) -> tuple[Path, Path]:
    data, _ = legacy(n=3)
    x, y, z = (t.clone() for t in data["train"].tensors)
    x, y, z = edit(x, y, z)
    data["train"] = TensorDataset(x, y, z)
    if x.shape[0] == 0:
        data = {"train": data["train"]}
    pkl = tmp_path / "legacy.pkl"
    torch.save(data, pkl)
    return pkl, _names(tmp_path)


def _set(t: torch.Tensor, index, value) -> torch.Tensor:
    t[index] = value
    return t


PICKLE_CASES = {
    "A17 +inf precipitation": (lambda x, y, z: (_set(x, (1, 30, 0), float("inf")), y, z),
                               ["infinite 'precipitation'", "basin legacy_00001"]),
    "A17 -inf temperature": (lambda x, y, z: (_set(x, (0, 3, 1), float("-inf")), y, z),
                             ["infinite 'temperature'", "-inf"]),
    "A17 +inf streamflow": (lambda x, y, z: (x, _set(y, (2, 9, 0), float("inf")), z), ["infinite 'q'"]),
    "A18 zero basins": (lambda x, y, z: (x[:0], y[:0], z[:0]), ["0 basins"]),
    "A27 negative ET": (lambda x, y, z: (x, _set(y, (0, 40, 1), -50.0), z),
                        ["negative 'et' -50", "basin legacy_00000, y column 1"]),
    "A27 implausible TWSA": (lambda x, y, z: (x, y, _set(z, (1, 2, 0), 1e7)),
                             ["implausible 'twsa' 1e+07 mm", "TWSA must be in mm"]),
}


@pytest.mark.parametrize("case", list(PICKLE_CASES))
def test_a17_a18_a27_pickle_physical_checks(tmp_path, capsys, case):
    edit, words = PICKLE_CASES[case]
    pkl, nm = _pickle_case(tmp_path, edit)
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "import-pickle", pkl, tmp_path / "s.zarr", "--names", nm,
                           "--start", START)
    assert_refused(code, err, *words)
    assert tree_snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- caravan
@pytest.mark.parametrize("value", ["inf", "-inf"])
def test_a24_caravan_infinite_precipitation(tmp_path, capsys, value):
    import pandas as pd

    make_caravan(tmp_path / "c", n_per_source=1, days=60)
    path = tmp_path / "c/timeseries/csv/lamah/lamah_0000.csv"
    df = pd.read_csv(path, dtype={"date": str})
    df.loc[12, "total_precipitation_sum"] = float(value)
    write_timeseries(path, df, "csv")
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "caravan", tmp_path / "c", tmp_path / "s.zarr", "--quiet")
    assert_refused(code, err, "infinite 'total_precipitation_sum'", "2000-01-13", "basin lamah_0000")
    assert tree_snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- stores
@pytest.mark.parametrize("var, unit, expected", [("temperature", "K", "degC"),
                                                 ("precipitation", "m/d", "mm/d"),
                                                 ("twsa", "cm", "mm")])
def test_b15_b16_store_units_checked_on_open(demo_ds, tmp_path, capsys, var, unit, expected):
    ds = demo_ds.copy(deep=True)
    ds[var].attrs["units"] = unit
    path = tmp_path / "units.zarr"
    _raw_write(ds, path)
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "info", path)
    assert_refused(code, err, f"'{var}' is in units '{unit}', expected {expected}")
    with pytest.raises(StoreError, match=f"units '{unit}'"):
        write_store(ds, str(tmp_path / "never.zarr"))
    assert tree_snapshot(tmp_path) == before
    ds[var].attrs["units"] = {"degC": "°C", "mm/d": "mm/day", "mm": "kg m-2"}[expected]  # spellings pass
    write_store(ds, str(tmp_path / "ok.zarr"))


def test_b14_b12_b13_forcing_checked(demo_ds, tmp_path, capsys):
    ds = demo_ds.copy(deep=True)
    ds["precipitation"][1, 10:15] = -5.0
    path = tmp_path / "neg.zarr"
    write_store(ds, str(path))  # a store may hold it (predict marks such basins) ...
    with pytest.raises(StoreError, match=r"'precipitation' has 5 negative values in 1 basin\(s\) "
                                         r"\(first at basin demo_0001"):
        check_forcing_finite(open_store(str(path)))  # ... train refuses it
    code, out, err = run_cli(capsys, "data", "info", path)
    assert code == 0 and "'precipitation' holds 5 negative values" in out, err
    for value, kind in ((np.nan, "NaN/inf"), (np.inf, "NaN/inf")):
        bad = demo_ds.copy(deep=True)
        bad["pet"][2, 100] = value
        with pytest.raises(StoreError, match=rf"'pet' has 1 {kind} values .*basin demo_0002"):
            check_forcing_finite(bad)


def test_b30_zero_basins(demo_ds, tmp_path, capsys):
    empty = demo_ds.isel(basin=slice(0, 0))
    with pytest.raises(StoreError, match="no basins"):
        write_store(empty, str(tmp_path / "zero.zarr"))
    assert tree_snapshot(tmp_path) == {}
    _raw_write(empty, tmp_path / "zero.zarr")
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, "data", "info", tmp_path / "zero.zarr")
    assert_refused(code, err, "no basins")
    assert tree_snapshot(tmp_path) == before
    with pytest.raises(StoreError, match="no basins"):  # train opens stores through open_store
        open_store(str(tmp_path / "zero.zarr"))


def test_b02_train_loader_corrupt_chunk(store, tmp_path):
    from rootzone.config import Config
    from rootzone.data.folds import temporal_fold
    from rootzone.data.loader import StoreData

    bad = _copy(store, tmp_path)
    for p in (bad / "temperature").rglob("*"):
        if p.is_file() and p.name != "zarr.json":
            p.write_bytes(b"\x00" * 7)
    ds = open_store(str(bad))
    assert ds.attrs[SCHEMA_KEY] == 1
    with pytest.raises(StoreError, match="cannot read its data"):
        StoreData(ds, Config(store=str(bad), folds=3, seq_len=400, warmup_days=100),
                  temporal_fold(ds.indexes["time"], 3, 0))


def test_remote_urls_without_a_driver_and_memory_paths(tmp_path):
    from rootzone.errors import RootzoneError
    from rootzone.safety import check_output_path

    check_output_path("memory://x.zarr")  # fsspec's in-process filesystem has no buckets
    with pytest.raises(RootzoneError, match="filesystem root"):
        check_output_path("memory://")
    with pytest.raises(RootzoneError, match="nosuchproto"):
        check_output_path("nosuchproto://bucket/x.zarr")
