"""Bad and hostile inputs to ``rootzone predict`` / ``rootzone report`` and the Ray predict entrypoint (the
DEFECT rows of the reliability audit, /work/shared/reviews/reliability.md): each is refused with one line on
stderr and exit status 2, and writes or deletes nothing; or, for legal but odd input, works."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from conftest import assert_refused, run_cli, tree_snapshot
from test_predict import cached_experiment, cached_prediction

from rootzone.data.schema import open_store, write_store
from rootzone.errors import RootzoneError
from rootzone.predict import load_checkpoint_bytes, load_member, prediction, run

REPO = Path(__file__).resolve().parents[1]
FAST = ["--device", "cpu", "--physics", "eager", "--quiet"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """The shared tiny experiment (two trained trials); tests here never write into it."""
    return cached_experiment(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, experiment) -> Path:
    return cached_prediction(tmp_path_factory, experiment)


def _store(exp: Path) -> str:
    return str(exp / "demo.zarr")


def _own_experiment(exp: Path, root: Path) -> Path:
    """A copy of EXP's trials (and experiment.json, naming the shared store) that a test may change."""
    shutil.copytree(exp / "trials", root / "trials")
    shutil.copy(exp / "experiment.json", root / "experiment.json")
    return root


def _predict(out, exp, *extra, store=None) -> list[str]:
    return ["predict", "--experiment", exp, "--store", store or _store(Path(exp)), "--out", out, *FAST, *extra]


class _Evil:
    """Unpickling this runs ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------------------------------- #4 (C02)
def test_c02_hostile_best_pt_is_refused_and_runs_no_code(experiment, tmp_path, capsys):
    marker = tmp_path / "PWNED_predict_bestpt"
    trial = tmp_path / "hostile" / "trials" / "fold0_seed0"
    trial.mkdir(parents=True)
    torch.save({"model": _Evil(str(marker)), "normaliser": {}, "config": {}}, trial / "best.pt")
    (trial / "metrics.json").write_text(json.dumps({"fold": 0, "seed": 0, "best_validation_loss": 0.1}))
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, *_predict(tmp_path / "p.zarr", tmp_path / "hostile", store=_store(experiment)))
    assert_refused(code, err, "best.pt", "weights_only")
    assert not marker.exists()
    assert tree_snapshot(tmp_path) == before
    # the ensemble aggregation loads best.pt through the same safe loader
    with pytest.raises(RootzoneError, match="refusing to load"):
        load_checkpoint_bytes((trial / "best.pt").read_bytes(), "best.pt")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- #9 options
@pytest.mark.parametrize("row, option, words", [
    ("C03", ["--device", "bogus"], ["--device", "bogus"]),
    ("C04", ["--threads", "-1"], ["--threads"]),
    ("C05", ["--physics", "bogus"], ["--physics", "bogus"]),
])
def test_bad_options_are_refused_before_anything_is_written(experiment, tmp_path, capsys, row, option, words):
    before = tree_snapshot(tmp_path)
    argv = ["predict", "--experiment", experiment, "--store", _store(experiment), "--out", tmp_path / "o" / "p.zarr",
            "--quiet", *option]
    code, _, err = run_cli(capsys, *argv)
    assert_refused(code, err, *words)
    assert tree_snapshot(tmp_path) == before  # no OUT, no parent folder, no lock file


def test_c12_out_below_a_regular_file_is_refused(experiment, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("keep")
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, *_predict(tmp_path / "file.txt" / "p.zarr", experiment))
    assert_refused(code, err, "file.txt", "not a directory")
    assert tree_snapshot(tmp_path) == before


def test_c16_full_disk_gives_one_line_and_the_run_resumes(experiment, reference, tmp_path, capsys, monkeypatch):
    import rootzone.predict.store as rp

    out = tmp_path / "p.zarr"
    marked = []
    real_mark, real_set = rp.mark_done, zarr.storage.LocalStore.set

    def mark_done(job, index):
        real_mark(job, index)
        marked.append(index)

    async def full_disk(self, key, value):
        if marked:  # the disk fills up after chunk 0 is written and marked
            raise OSError(errno.ENOSPC, "No space left on device", str(out / key))
        return await real_set(self, key, value)

    monkeypatch.setattr(rp, "mark_done", mark_done)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", full_disk)
    code, _, err = run_cli(capsys, *_predict(out, experiment, "--chunk-basins", "3"))
    assert_refused(code, err, "No space left on device")
    monkeypatch.undo()
    partial = zarr.open_group(str(out), mode="r", use_consolidated=False).attrs
    assert partial["chunks_done"] == [0] and partial["prediction_complete"] is False
    assert not Path(f"{out}.lock").exists()
    code, printed, err = run_cli(capsys, *_predict(out, experiment, "--chunk-basins", "3"))
    assert code == 0, err
    assert "1 chunks run, 1 already done" in printed
    got, want = xr.open_zarr(out).load(), xr.open_zarr(reference).load()
    for v in ("q", "smax", "tws_mean", "s_std"):
        np.testing.assert_array_equal(got[v].values, want[v].values, err_msg=v)


# ---------------------------------------------------------------------------------------------- #1 overwrite
def test_c14_out_that_is_the_input_store_is_refused(experiment, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    shutil.copytree(_store(experiment), store)
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, *_predict(store, experiment, "--overwrite", store=str(store)))
    assert_refused(code, err, "input store")
    assert tree_snapshot(tmp_path) == before


def test_c15_out_that_is_the_current_directory_is_refused(experiment, tmp_path, capsys, monkeypatch):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "canary.txt").write_text("keep")
    monkeypatch.chdir(project)
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, *_predict(".", experiment, "--overwrite"))
    assert_refused(code, err, "current directory")
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("kind, words", [
    ("project_dir", ["not a prediction store"]),
    ("regular_file", ["is a file"]),
    ("symlink", ["symbolic link"]),
    ("inside_experiment", ["inside the experiment"]),
    ("foreign_zarr", ["not a prediction store"]),
])
def test_c18_overwrite_deletes_only_a_prediction_store(experiment, tmp_path, capsys, kind, words):
    exp = _own_experiment(experiment, tmp_path / "exp")
    project = tmp_path / "project"
    project.mkdir()
    (project / "canary.txt").write_text("keep")
    (project / "sub").mkdir()
    (project / "sub" / "data.csv").write_text("1,2\n")
    out = {"project_dir": project, "regular_file": project / "canary.txt", "symlink": tmp_path / "link.zarr",
           "inside_experiment": exp / "pred.zarr", "foreign_zarr": tmp_path / "foreign.zarr"}[kind]
    if kind == "symlink":
        out.symlink_to(project, target_is_directory=True)
    if kind == "foreign_zarr":
        zarr.open_group(str(out), mode="w", zarr_format=3).attrs["owner"] = "someone else"
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, *_predict(out, exp, "--overwrite", store=_store(experiment)))
    assert_refused(code, err, *words)
    assert tree_snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- #13 (P4)
def test_p4_second_prediction_into_a_locked_out_is_refused(experiment, reference, tmp_path, capsys):
    out = tmp_path / "p.zarr"
    shutil.copytree(reference, out)
    Path(f"{out}.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, *_predict(out, experiment, "--chunk-basins", "3", "--overwrite"))
    assert_refused(code, err, "in use", str(os.getpid()))
    assert tree_snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- #6 (P5)
def test_p5_member_retrained_in_place_is_not_mixed_into_a_resumed_store(experiment, tmp_path, capsys):
    exp = _own_experiment(experiment, tmp_path / "exp")
    out = tmp_path / "p.zarr"

    class Stop(Exception):
        pass

    def stop(result):
        raise Stop

    with pytest.raises(Stop), prediction(str(exp), _store(experiment), str(out), chunk_basins=3, device="cpu",
                                         physics="eager") as job:
        run(job, progress=False, on_chunk=stop)
    assert not Path(f"{out}.lock").exists()
    best = exp / "trials" / "fold0_seed0" / "best.pt"  # "retrain" fold0_seed0 in place
    saved = torch.load(best, weights_only=True)
    saved["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in saved["model"].items()}
    torch.save(saved, best)
    before = tree_snapshot(out)
    code, _, err = run_cli(capsys, *_predict(out, exp, "--chunk-basins", "3", store=_store(experiment)))
    assert_refused(code, err, "fold0_seed0", "--overwrite")
    assert tree_snapshot(out) == before
    # a worker loading a checkpoint that changed after the job was prepared refuses it too
    stale = [m for m in job.members if m.name == "fold0_seed0"][0]
    with pytest.raises(RootzoneError, match="changed since"):
        load_member(stale, torch.device("cpu"), "eager")
    code, printed, err = run_cli(capsys, *_predict(out, exp, "--chunk-basins", "3", "--overwrite",
                                                   store=_store(experiment)))
    assert code == 0, err
    assert "2 chunks run, 0 already done" in printed
    recorded = xr.open_zarr(out).attrs["prediction_job"]["checkpoints_sha256"]
    assert recorded["fold0_seed0"] == hashlib.sha256(best.read_bytes()).hexdigest() != stale.sha256


# ---------------------------------------------------------------------------------------------- report
def test_d01_basin_ids_get_distinct_figures_and_safe_csv_cells(experiment, tmp_path, capsys):
    formula = '=HYPERLINK("http://evil.example")'
    ds = open_store(_store(experiment)).load()
    ids = ["a/b", "a_b", formula, "<script>alert(1)</script>", "-2+3", "demo_0005"]
    ds = ds.assign_coords(basin=np.array(ids, dtype=object))
    store = str(tmp_path / "odd.zarr")
    write_store(ds, store)
    pred = tmp_path / "p.zarr"
    code, _, err = run_cli(capsys, *_predict(pred, experiment, store=store))
    assert code == 0, err
    rep = tmp_path / "report"
    code, _, err = run_cli(capsys, "report", "--experiment", experiment, "--predictions", pred, "--out", rep,
                           "--basins", f"a/b,a_b,{formula}")
    assert code == 0, err
    index = (rep / "index.html").read_text()
    hydro = sorted(p.name for p in rep.glob("hydrograph_*.png"))
    assert len(hydro) == 3 and "hydrograph_a_b.png" in hydro, hydro
    for name in hydro:
        assert f'src="{name}"' in index
    # each caption sits next to its own figure
    figures = [f for f in index.split("<figure>")[1:] if "hydrograph_" in f]
    captions = {f.split('src="')[1].split('"')[0]: f.split("<figcaption>")[1] for f in figures}
    assert captions["hydrograph_a_b.png"].startswith("Basin a_b:")
    assert [n for n, c in captions.items() if c.startswith("Basin a/b:")] != ["hydrograph_a_b.png"]
    assert "<script>" not in index
    with open(rep / "metrics_basins.csv", newline="") as fh:
        cells = [row["basin"] for row in csv.DictReader(fh)]
    assert f"'{formula}" in cells and "'-2+3" in cells and "a/b" in cells
    assert not any(c[:1] in ("=", "+", "-", "@", "\t", "\r") for c in cells)


def test_d02_report_out_that_is_a_file_is_refused(experiment, tmp_path, capsys):
    (tmp_path / "report").write_text("keep")
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(capsys, "report", "--experiment", experiment, "--out", tmp_path / "report")
    assert_refused(code, err, "is a file")
    assert tree_snapshot(tmp_path) == before


def test_d07_relative_store_is_recorded_absolute_and_report_runs_elsewhere(experiment, tmp_path, capsys,
                                                                          monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    rel = os.path.relpath(_store(experiment), work)
    code, _, err = run_cli(capsys, *_predict("p.zarr", experiment, store=rel))
    assert code == 0, err
    source = xr.open_zarr(work / "p.zarr").attrs["source_store"]
    assert Path(source).is_absolute() and Path(source) == Path(_store(experiment)).resolve()
    monkeypatch.chdir(elsewhere)
    code, _, err = run_cli(capsys, "report", "--experiment", experiment, "--predictions", work / "p.zarr",
                           "--out", "rep", "--basins", "demo_0002")
    assert code == 0, err
    assert (elsewhere / "rep" / "index.html").exists()


# ---------------------------------------------------------------------------------------------- Ray (E00)
def test_e00_ray_predict_entrypoint_bad_input_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "ray_jobs" / "predict.py"), "--experiment",
                           str(tmp_path / "missing"), "--out", str(tmp_path / "p.zarr")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "RAY_ADDRESS": ""})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("rootzone: error: ") and "missing" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []

