"""Ensemble pieces that need no Ray cluster: the experiment folder, refusals before Ray starts, and the
aggregation (table + ensemble mean) over trials trained directly with train_trial."""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pytest

from rootzone.cli import main
from rootzone.config import Config
from rootzone.data.demo import build_demo
from rootzone.data.schema import write_store
from rootzone.ensemble import aggregate, prepare_base
from rootzone.experiment import ExperimentDir, experiment_record
from rootzone.train import train_trial

TINY = {"physics": "eager", "batches_per_epoch": 1, "seq_len": 300, "warmup_days": 90, "hidden_size": 4,
        "batch_size": 3, "epochs": 1, "folds": 2, "progress": False}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ens_store") / "small.zarr")
    write_store(build_demo(basins=3, years=4, seed=3), path)
    return path


def make_experiment(exp, store: str, seeds: list[int], **changes) -> Config:
    base = prepare_base(Config.from_dict({**TINY, "store": store, **changes}), 2)
    ExperimentDir.open(str(exp)).write_text(json.dumps(experiment_record(base, 2, seeds)), "experiment.json")
    return base


def test_experiment_dir_local_and_file_url(tmp_path):
    for uri in (str(tmp_path / "a"), f"file://{tmp_path}/b"):
        exp = ExperimentDir.open(uri)
        assert exp.local
        exp.write_text("x", "trials", "fold0_seed0", "f.txt")
        assert exp.read_text("trials", "fold0_seed0", "f.txt") == "x"
        assert exp.trial_dirs() == ["fold0_seed0"]
        assert exp.url("ray").startswith(str(tmp_path)) and not exp.exists("nothing")


def test_resume_with_different_config_is_refused(store, tmp_path, capsys):
    make_experiment(tmp_path, store, [0, 1])
    args = ["ensemble", "--store", store, "--out", str(tmp_path), "--folds", "2", "--seeds", "2", "--resume",
            "--physics", "eager", *sum((["--set", f"{k}={v}"] for k, v in TINY.items()
                                        if k not in ("physics", "folds", "progress")), [])]
    assert main([*args, "--set", "lr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "was written by a different config (differs in: lr)" in err and len(err.splitlines()) == 1
    assert main([*args, "--seeds", "3"]) == 2
    assert "differs in: seeds" in capsys.readouterr().err


def test_existing_experiment_needs_resume_and_resume_needs_one(store, tmp_path, capsys):
    make_experiment(tmp_path / "a", store, [0])
    assert main(["ensemble", "--store", store, "--out", str(tmp_path / "a"), "--folds", "2"]) == 2
    assert "already holds an experiment; pass --resume" in capsys.readouterr().err
    assert main(["ensemble", "--store", store, "--out", str(tmp_path / "b"), "--folds", "2", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_unreachable_address_is_one_line(store, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    assert main(["ensemble", "--store", store, "--out", str(tmp_path / "e"), "--folds", "2",
                 "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rootzone: error: cannot reach a Ray cluster at --address '127.0.0.1:{port}'")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "e" / "experiment.json").exists()


def test_missing_store_fails_before_ray(tmp_path, capsys):
    assert main(["ensemble", "--store", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "e")]) == 2
    assert "none.zarr" in capsys.readouterr().err


def test_aggregate_table_and_ensemble_mean(store, tmp_path):
    """Members trained directly; with one seed per fold the ensemble mean must score exactly like the member,
    and with two seeds it must differ from both."""
    exp = ExperimentDir.open(str(tmp_path))
    base = make_experiment(tmp_path, store, [0])
    metrics = {}
    for fold in (0, 1):
        for seed in (0, 1):
            cfg = base.replace(fold=fold, seed=seed, out=exp.trial_dir(fold, seed))
            metrics[fold, seed] = train_trial(cfg)
    summary = aggregate(exp)  # experiment.json says seeds [0]: seed 1 is not a member
    table = pd.read_csv(tmp_path / "ensemble_metrics.csv")
    assert sorted(table[["fold", "seed"]].drop_duplicates().itertuples(index=False)) == [(0, 0), (1, 0)]
    targets = table["target"].nunique()  # q, et, swe, twsa (and its parts where metrics.json has them)
    assert targets >= 4 and len(table) == 2 * 3 * 3 * targets  # members x splits x basins x targets
    row = table.query("fold == 1 and seed == 0 and split == 'test' and target == 'q'").sort_values("basin")
    expect = metrics[1, 0].splits["test"]["q"]["basins"]
    np.testing.assert_allclose(row["nse"], [expect[b]["nse"] for b in sorted(expect)])
    for t in ("q", "et", "swe", "twsa"):
        per_member = [metrics[f, 0].splits["test"][t]["median"]["kge"] for f in (0, 1)]
        np.testing.assert_allclose(summary["ensemble_mean"][t]["kge"], np.median(per_member), rtol=1e-5)
        np.testing.assert_allclose(summary["members"][t]["kge"], np.median(per_member), rtol=1e-9)

    record = json.loads((tmp_path / "experiment.json").read_text())
    (tmp_path / "experiment.json").write_text(json.dumps({**record, "seeds": [0, 1]}))
    two = aggregate(exp)
    assert two["n_members"] == 4 and json.loads((tmp_path / "summary.json").read_text())["n_members"] == 4
    q0 = [metrics[0, s].splits["test"]["q"]["median"]["nse"] for s in (0, 1)]
    assert two["ensemble_mean"]["q"]["nse"] not in q0
