"""The plain LSTM (``model = "lstm"``, issue 14): trained through the CLI like the hybrid, predicted and
reported from an experiment of LSTM members; checkpoints of one kind are never loaded as the other."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from conftest import TINY_TRAIN, assert_refused, run_cli

from rootzone.config import Config
from rootzone.errors import ConfigError, RootzoneError
from rootzone.experiment import Checkpoint, ExperimentDir, load_member
from rootzone.model import HybridModel, build_model
from rootzone.model_lstm import LSTMModel, output_scales


def test_config_model_field_is_validated(capsys, tiny_store, tmp_path):
    assert Config().model == "hybrid" and Config(model="lstm").model == "lstm"
    with pytest.raises(ConfigError, match="'model'.*hybrid.*lstm"):
        Config(model="gru")
    code, _, err = run_cli(capsys, "train", "--store", tiny_store, "--out", tmp_path / "r", *TINY_TRAIN,
                           "--set", "model=gru")
    assert_refused(code, err, "model", "gru")
    assert not (tmp_path / "r").exists()


def test_build_model_and_outputs_are_non_negative_in_store_units():
    cfg = Config(model="lstm", hidden_size=6)
    torch.manual_seed(0)
    assert isinstance(build_model(Config(hidden_size=6), 3, 2), HybridModel)
    model = build_model(cfg, 3, 2, scales=[2.0, 1.5, 40.0, 30.0])
    assert isinstance(model, LSTMModel) and not model.stateful
    torch.manual_seed(0)
    x, s = torch.randn(4, 50, 3), torch.randn(4, 2)
    out = model(x, s, torch.zeros(4, 50, 4))
    assert out.params is None
    for name in ("q", "et", "swe"):
        assert (getattr(out.buckets, name) >= 0).all()
    # the scales multiply the head: the same weights with scale 1 give outputs smaller by that factor
    plain = build_model(cfg, 3, 2)
    plain.load_state_dict({**model.state_dict(), "output_scale": torch.ones(4)})
    torch.testing.assert_close(plain(x, s, None).buckets.w * 40.0, out.buckets.w)
    rec, spun = model.run_record(x, s, torch.zeros(4, 50, 4))
    assert spun.cycles == 0 and spun.converged and spun.state.shape == (3, 4)
    torch.testing.assert_close(rec.buckets.q, model.eval()(x, s, None).buckets.q)
    scales = output_scales({"q": np.array([4.0, 9.0, np.nan]), "swe": np.zeros(3)})
    assert scales == [pytest.approx(math.sqrt(6.5)), 1.0, 0.1, 1.0]
    with torch.no_grad():  # storage: linear (any level, anomalies only); the others: softplus, >= 0
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([-5.0, 0.0, 2.0, -5.0]))
    fixed = model(x, s, None).buckets
    torch.testing.assert_close(fixed.tws, torch.full((4, 50), -5.0 * 30.0))
    torch.testing.assert_close(fixed.q, torch.full((4, 50), 2.0 * math.log1p(math.exp(-5.0))))
    torch.testing.assert_close(fixed.w, torch.full((4, 50), 40.0 * math.log1p(math.exp(2.0))))


@pytest.fixture(scope="module")
def lstm_experiment(tmp_path_factory) -> Path:
    """EXP with the tiny demo store and two LSTM trials (folds 0 and 1) trained through the CLI."""
    from rootzone.cli import main
    from rootzone.data.demo import build_demo
    from rootzone.data.schema import write_store

    root = tmp_path_factory.mktemp("lstm_exp")
    store = str(root / "demo.zarr")
    write_store(build_demo(basins=6, years=7, seed=3), store)
    for fold in (0, 1):
        code = main(["train", "--store", store, "--out", str(root / "trials" / f"fold{fold}_seed0"), *TINY_TRAIN,
                     "--set", "model=lstm", "--set", "epochs=2", "--set", "threads=1", "--fold", str(fold)])
        assert code == 0
    (root / "experiment.json").write_text(json.dumps({"config": Config(model="lstm").to_dict(), "folds": 3,
                                                       "seeds": [0], "store": store}))
    return root


def test_train_lstm_through_the_cli_gives_finite_metrics(lstm_experiment):
    metrics = json.loads((lstm_experiment / "trials" / "fold0_seed0" / "metrics.json").read_text())
    assert metrics["model"] == "lstm" and metrics["smax_mean"] == {} and "truth_recovery" not in metrics
    for target in ("q", "et", "swe", "twsa"):
        median = metrics["splits"]["test"][target]["median"]
        assert math.isfinite(median["nse"]) and math.isfinite(median["rmse"]), target
    ckpt = Checkpoint.load(lstm_experiment / "trials" / "fold0_seed0" / "best.pt")
    assert ckpt.kind == "lstm" and ckpt.config["model"] == "lstm"
    assert (ckpt.model["output_scale"] > 0).all()


def test_predict_and_report_on_lstm_members(lstm_experiment, tmp_path, capsys):
    pred = tmp_path / "pred.zarr"
    code, _, err = run_cli(capsys, "predict", "--experiment", lstm_experiment, "--out", pred, "--members", "all",
                           "--device", "cpu", "--quiet")
    assert code == 0, err
    p = xr.open_zarr(pred)
    assert {"q", "et", "swe", "w", "tws"} <= set(p.data_vars) and not {"smax", "s", "g"} & set(p.data_vars)
    assert np.isfinite(p["q"].values).all() and (p["q"].values >= 0).all()
    code, _, err = run_cli(capsys, "predict", "--experiment", lstm_experiment, "--out", tmp_path / "p2",
                           "--variables", "q,smax", "--quiet")
    assert_refused(code, err, "smax", "lstm")
    out = tmp_path / "report"
    code, _, err = run_cli(capsys, "report", "--experiment", lstm_experiment, "--predictions", pred, "--out", out)
    assert code == 0, err
    index = (out / "index.html").read_text()
    assert "hydrograph_" in index and "seasonal_cycle.png" in index and "smax_distribution" not in index
    assert "no member has buckets" in index
    basins = pd.read_csv(out / "metrics_basins.csv")
    assert np.isfinite(basins.loc[basins["target"] == "q", "ensemble_nse"]).all()


def test_a_checkpoint_of_one_kind_is_not_loaded_as_the_other(lstm_experiment, tmp_path, capsys):
    exp = ExperimentDir.open(str(lstm_experiment))
    (member,) = exp.members("fold0_seed0")
    loaded = load_member(member, "cpu")
    assert isinstance(loaded.model, LSTMModel)
    # a best.pt whose config was edited to say hybrid: refused, naming both kinds
    ckpt = Checkpoint.load(member.checkpoint)
    ckpt.config = {**ckpt.config, "model": "hybrid"}
    forged = tmp_path / "forged.pt"
    ckpt.save(forged)
    with pytest.raises(RootzoneError, match="holds a 'lstm' model, not a 'hybrid'"):
        load_member(member.__class__(member.name, 0, 0, str(forged), 0.0), "cpu")
    # resuming an LSTM run as a hybrid is refused before anything is written
    run = tmp_path / "run"
    shutil.copytree(lstm_experiment / "trials" / "fold0_seed0", run)
    before = {f.name: f.read_bytes() for f in run.iterdir()}
    code, _, err = run_cli(capsys, "train", "--store", exp.store, "--out", run, *TINY_TRAIN, "--set", "epochs=3",
                           "--set", "threads=1", "--resume")
    assert_refused(code, err, "model")
    assert {f.name: f.read_bytes() for f in run.iterdir()} == before


def test_report_and_summary_of_an_experiment_with_both_kinds(lstm_experiment, tmp_path, capsys):
    """Hybrid trials beside LSTM trials (named as `rootzone ensemble --models hybrid,lstm` names them): the
    report's ablation table holds each kind's per-basin metrics.json values and their difference, and the
    experiment summary the same medians."""
    from rootzone.ensemble import aggregate
    from rootzone.experiment import experiment_record
    from rootzone.train import train_trial

    exp = tmp_path / "exp"
    shutil.copytree(lstm_experiment, exp)
    store = str(exp / "demo.zarr")
    for fold in (0, 1):
        (exp / "trials" / f"fold{fold}_seed0").rename(exp / "trials" / f"fold{fold}_seed0_lstm")
        train_trial(Config(store=store, folds=3, fold=fold, epochs=1, batches_per_epoch=2, seq_len=400,
                           warmup_days=120, hidden_size=8, physics="eager", progress=False, threads=1,
                           out=str(exp / "trials" / f"fold{fold}_seed0")))
    base = Config(store=store, folds=3)
    (exp / "experiment.json").write_text(json.dumps(experiment_record(base, 3, [0], ["hybrid", "lstm"])))
    import zarr  # a basin with more runoff than rain (glacier melt): flagged at the top of the report
    group = zarr.open_group(store, mode="r+")
    group["q"][4, :] = group["precipitation"][4, :] * 2.0 + 0.5
    out = tmp_path / "report"
    code, _, err = run_cli(capsys, "report", "--experiment", exp, "--out", out)
    assert code == 0, err
    index = (out / "index.html").read_text()
    assert 'src="ablation.png"' in index and "Flag:" in index and "demo_0004 (Q/P = 2." in index
    table = pd.read_csv(out / "ablation.csv", dtype={"basin": str})
    metrics = {(k, f): json.loads((exp / "trials" / f"fold{f}_seed0{'_lstm' if k == 'lstm' else ''}" /
                                   "metrics.json").read_text()) for k in ("hybrid", "lstm") for f in (0, 1)}
    assert len(table) == 6 * table["target"].nunique() and {"q", "et", "swe", "twsa"} <= set(table["target"])
    row = table[(table["basin"] == "demo_0003") & (table["target"] == "q")].iloc[0]
    for kind in ("hybrid", "lstm"):
        want = np.median([metrics[kind, f]["splits"]["test"]["q"]["basins"]["demo_0003"]["nse"] for f in (0, 1)])
        assert row[f"nse_{kind}"] == pytest.approx(want) and row[f"members_{kind}"] == 2
    assert row["diff_nse"] == pytest.approx(row["nse_hybrid"] - row["nse_lstm"])
    summary = aggregate(str(exp), ensemble_mean=False)  # fold 2 was not trained: reported missing
    assert "fold2_seed0_lstm" in summary["missing"] and summary["n_members"] == 4
    q = summary["ablation"]["q"]
    qt = table[table["target"] == "q"]
    assert q["nse_lstm"] == pytest.approx(qt["nse_lstm"].median())
    assert q["diff_nse"] == pytest.approx(qt["diff_nse"].median())
    assert q["hybrid_better_nse"] == int((qt["diff_nse"] > 0).sum()) and q["basins"] == 6
    assert json.loads((exp / "summary.json").read_text())["ablation"]["q"]["per_basin"]["demo_0003"]["diff_nse"] \
        == pytest.approx(row["diff_nse"])
    assert "hybrid vs LSTM" in capsys.readouterr().out
    # a prediction of both kinds: S_max statistics over the hybrid members only, Q over all four
    pred = tmp_path / "pred.zarr"
    code, _, err = run_cli(capsys, "predict", "--experiment", exp, "--out", pred, "--members", "all", "--quiet")
    assert code == 0, err
    p = xr.open_zarr(pred).isel(basin=slice(0, 2), time=slice(400, 500)).load()
    hybrid = [m for m in p["member"].values if not str(m).endswith("_lstm")]
    assert len(hybrid) == 2 and np.isnan(p["smax"].sel(member="fold0_seed0_lstm")).all()
    np.testing.assert_allclose(p["smax_mean"], p["smax"].sel(member=hybrid).mean("member"), rtol=1e-5)
    np.testing.assert_allclose(p["smax_std"], p["smax"].sel(member=hybrid).std("member"), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(p["q_mean"], p["q"].mean("member"), rtol=1e-5, atol=1e-6)


def test_ensemble_models_option_is_checked_before_ray(tiny_store, tmp_path, capsys):
    from rootzone.experiment import record_models, trial_name

    assert trial_name(1, 2) == "fold1_seed2" and trial_name(1, 2, "lstm") == "fold1_seed2_lstm"
    assert record_models({"config": {}}) == ["hybrid"] and record_models({"models": ["hybrid", "lstm"]}) == \
        ["hybrid", "lstm"]
    code, _, err = run_cli(capsys, "ensemble", "--store", tiny_store, "--out", tmp_path / "e", "--models",
                           "hybrid,gru", "--seeds", "1")
    assert_refused(code, err, "--models", "gru")
    assert not (tmp_path / "e").exists()
