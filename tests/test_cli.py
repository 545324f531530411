"""The CLI end to end on a tiny store, and one-line errors for bad input."""

import json

import pytest
from conftest import TINY_TRAIN

from rootzone.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_end_to_end(tiny_store, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--store", tiny_store, "--out", str(out_dir), "--epochs", "2",
                         "--fold", "1", "--seed", "4", *TINY_TRAIN)
    assert code == 0, err
    assert "NSE" in out and "S_max" in out
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["fold"] == 1 and metrics["seed"] == 4 and metrics["epochs_run"] == 2
    for split in ("train", "validation", "test"):
        assert set(metrics["splits"][split]) == {"q", "et", "swe", "twsa", "twsa_seasonal", "twsa_interannual"}
        assert len(metrics["splits"][split]["q"]["basins"]) == 6
    assert metrics["splits"]["test"]["q"]["median"]["nse"] > -10
    assert "smax_pearson_r" in metrics["truth_recovery"]
    assert (out_dir / "config.toml").exists() and (out_dir / "best.pt").exists()
    assert "epoch 2" in (out_dir / "train.log").read_text()
    # resume: a finished run resumes without training more
    code, _, err = run(capsys, "train", "--store", tiny_store, "--out", str(out_dir), "--epochs", "2",
                       "--fold", "1", "--seed", "4", "--resume", *TINY_TRAIN)
    assert code == 0, err
    assert "resumed from" in (out_dir / "train.log").read_text()


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--store", "--out", "--folds", "--fold", "--seed", "--epochs", "--config", "--set"):
        assert flag in text


@pytest.mark.parametrize("extra, message", [
    (["--store", "{tmp}/missing.zarr"], "does not exist"),
    (["--store", "{tmp}"], "not a readable Zarr store"),
    (["--store", "{store}", "--fold", "3"], "'fold'"),
    (["--store", "{store}", "--set", "colour=blue"], "'colour': unknown field"),
    (["--store", "{store}", "--set", "lr=-1"], "'lr'"),
    (["--store", "{store}", "--folds", "9"], "whole years"),
    (["--store", "{store}", "--config", "{tmp}/none.toml"], "does not exist"),
    ([], "no store given"),
])
def test_bad_input_is_one_clear_line(tiny_store, tmp_path, capsys, extra, message):
    argv = [a.format(tmp=tmp_path, store=tiny_store) for a in extra]
    code, out, err = run(capsys, "train", "--out", str(tmp_path / "r"), "--folds", "3", *argv,
                         *TINY_TRAIN[:3])
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_demo_command(tmp_path, capsys):
    path = str(tmp_path / "d.zarr")
    code, out, _ = run(capsys, "data", "demo", path, "--basins", "3", "--years", "2")
    assert code == 0 and "3 basins" in out
    code, _, err = run(capsys, "data", "demo", path, "--basins", "3", "--years", "2")
    assert code == 2 and "--overwrite" in err
    code, _, err = run(capsys, "data", "demo", path, "--basins", "0")
    assert code == 2 and "--basins" in err


def test_resume_continues_exactly(tmp_path, capsys):
    """Training 1 epoch, then resuming to 3, gives bit-identical weights to 3 epochs in one go: the
    checkpoint carries the random streams and the block sampler's position (3 blocks of 2 basins, 3 batches
    per block, 2 batches per epoch: the epoch ends inside a block), so no batch is redrawn."""
    import torch

    from rootzone.data.demo import build_demo
    from rootzone.data.schema import write_store

    store = str(tmp_path / "blocks.zarr")
    write_store(build_demo(basins=6, years=7, seed=3), store, basin_chunk=2)
    common = ["--store", store, "--fold", "0", "--seed", "2", *TINY_TRAIN, "--set", "patience=10",
              "--set", "batches_per_block=3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(capsys, "train", "--out", str(straight), "--epochs", "3", *common)[0] == 0
    assert run(capsys, "train", "--out", str(split), "--epochs", "1", *common)[0] == 0
    assert run(capsys, "train", "--out", str(split), "--epochs", "3", "--resume", *common)[0] == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(split / "checkpoint.pt", weights_only=False)
    assert a["state"]["epoch"] == b["state"]["epoch"] == 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
