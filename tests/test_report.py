"""``rootzone report`` on the demo experiment, with and without predictions: CSV tables, non-empty PNG
figures and an index.html that links them."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from test_predict import cached_experiment, cached_prediction

from rootzone.cli import main
from rootzone.errors import RootzoneError
from rootzone.metrics import basin_metrics
from rootzone.report import make_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    assert path.stat().st_size > 5_000, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200, path
    assert float(img[..., :3].std()) > 0.01, f"{path} is blank"


def test_report_with_predictions(tmp_path_factory, tmp_path, capsys):
    exp = cached_experiment(tmp_path_factory)
    pred = cached_prediction(tmp_path_factory, exp)
    out = tmp_path / "report"
    code = main(["report", "--experiment", str(exp), "--predictions", str(pred), "--out", str(out),
                 "--basins", "demo_0002,demo_0005"])
    assert code == 0, capsys.readouterr().err
    expected = ["cv_skill", "smax_distribution", "smax_vs_attributes", "smax_map", "smax_truth",
                "hydrograph_demo_0002", "hydrograph_demo_0005", "seasonal_cycle", "smax_seasonal"]
    for name in expected:
        check_png(out / f"{name}.png")
    index = (out / "index.html").read_text()
    assert all(f'src="{name}.png"' in index for name in expected) and "Not drawn" not in index
    members = pd.read_csv(out / "metrics_members.csv")
    assert set(members.columns) >= {"fold", "seed", "basin", "split", "target", "nse", "kge", "rmse"}
    targets = members["target"].nunique()  # q, et, swe, twsa (and its parts where metrics.json has them)
    assert targets >= 4 and len(members) == 2 * 3 * targets * 6  # trials x splits x targets x basins
    basins = pd.read_csv(out / "metrics_basins.csv")
    assert len(basins) == 6 * targets and basins["members"].eq(2).all()
    assert basins.loc[basins["target"] == "twsa", "ensemble_r"].notna().all()
    # the cross-validated ensemble series of a basin = each fold's member on its own test years
    p = xr.open_zarr(pred).sel(basin="demo_0002")
    years = pd.DatetimeIndex(p["time"].values).year
    sim = np.full(p.sizes["time"], np.nan)
    tested = np.zeros(p.sizes["time"], bool)
    for member in p["member"].values:
        test_years = json.loads((exp / "trials" / str(member) / "metrics.json").read_text())["years"]["test"]
        on = np.isin(years, test_years) & ~p["in_warmup"].values
        sim[on] = p["q"].sel(member=member).values[on]
        tested |= on
    obs = np.where(tested, xr.open_zarr(exp / "demo.zarr")["q"].sel(basin="demo_0002").values, np.nan)
    want = basin_metrics(sim, obs)["nse"]
    got = basins.loc[(basins["basin"] == "demo_0002") & (basins["target"] == "q"), "ensemble_nse"].item()
    assert got == pytest.approx(want, rel=1e-6)


def test_report_without_predictions_and_bad_basin(tmp_path_factory, tmp_path):
    exp = cached_experiment(tmp_path_factory)
    result = make_report(str(exp), tmp_path / "r")
    names = [name for name, _ in result["figures"]]
    assert names == ["cv_skill.png", "smax_distribution.png", "smax_vs_attributes.png", "smax_map.png",
                     "smax_truth.png"]
    for name in names:
        check_png(tmp_path / "r" / name)
    assert "--predictions" in (tmp_path / "r" / "index.html").read_text()
    smax = pd.read_csv(tmp_path / "r" / "metrics_basins.csv")
    assert np.isfinite(smax["member_nse"]).any()
    with pytest.raises(RootzoneError, match="not in the predictions"):
        make_report(str(exp), tmp_path / "r2", str(cached_prediction(tmp_path_factory, exp)), ["nowhere"])


def test_figure_names_never_collide_and_csv_cells_are_not_formulas():
    from rootzone.report import figure_stem
    from rootzone.report.tables import spreadsheet_safe

    used: set[str] = set()
    ids = ["demo_0002", "a/b", "a_b", "A_B", "a b", "x" * 300, "=cmd", "é"]
    stems = [figure_stem("hydrograph", b, used) for b in ids]
    assert stems[0] == "hydrograph_demo_0002" and stems[2] == "hydrograph_a_b"  # safe ids keep their name
    assert len({s.lower() for s in stems}) == len(ids)  # distinct, even on a case-insensitive file system
    assert all(len(s) < 100 and all(c.isascii() and (c.isalnum() or c in "-_") for c in s) for s in stems)
    table = pd.DataFrame({"basin": ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "ok", "a=b"],
                          "nse": [-1.0, 1, 2, 3, 4, 5, 6, 7]})
    safe = spreadsheet_safe(table)
    assert safe["basin"].tolist() == ["'=1+1", "'+1", "'-1", "'@SUM(A1)", "'\tx", "'\rx", "ok", "a=b"]
    assert safe["nse"].tolist() == table["nse"].tolist() and table["basin"][0] == "=1+1"  # numbers, input kept


def test_twsa_stitches_anomalies_of_each_members_test_months():
    """Two members, each perfect on its own test half but 60 mm apart in mean storage: the stitched TWSA is
    perfect (stitching storages and re-centring once gave NSE 0.713, science review M2)."""
    from rootzone.data.schema import target
    from rootzone.evaluation import score_basins
    from rootzone.report.predictions import cv_anomalies, month_masks

    n_months, days = 24, 30
    month_of_day = np.repeat(np.arange(n_months), days)
    rng = np.random.default_rng(0)
    obs = 30 * np.sin(np.arange(n_months) * 2 * np.pi / 12)[None, :] + rng.normal(0, 5, (1, n_months))
    members = np.stack([np.repeat(obs + level, days, axis=1) for level in (100.0, 160.0)])  # [2, 1, T]
    masks = np.stack([np.arange(n_months * days) < 12 * days, np.arange(n_months * days) >= 12 * days])
    sim_a, obs_a = cv_anomalies(members, obs, month_masks(masks, month_of_day, n_months), month_of_day)
    assert np.isfinite(sim_a).all() and np.isfinite(obs_a).all()
    for half in (slice(0, 12), slice(12, 24)):  # each half is centred on its own months
        assert obs_a[0, half].mean() == pytest.approx(0, abs=1e-9)
    assert score_basins(sim_a, obs_a, target("twsa"))[0]["nse"] == pytest.approx(1.0, abs=1e-12)


def test_report_twsa_of_one_fold_equals_its_metrics_json(tmp_path_factory):
    """With the predictions of one member, the report's per-basin test skill (TWSA included) is the member's
    own metrics.json test skill: the same days and months, re-centred over the same test months. Comparable
    for a member whose test years lie past the store's spin-up days (``in_warmup``, not scored by the report)."""
    from rootzone.experiment import ExperimentDir
    from rootzone.report.predictions import open_predictions, summarise_predictions

    exp = cached_experiment(tmp_path_factory)
    pred = open_predictions(str(cached_prediction(tmp_path_factory, exp)))
    spin_years = set(pd.DatetimeIndex(pred["time"].values[pred["in_warmup"].values]).year)
    trial = next(t for t in ExperimentDir.open(str(exp)).trials() if not spin_years & set(t.metrics.years["test"]))
    rows = summarise_predictions(pred, [trial]).ensemble_metrics.set_index(["target", "basin"])
    for t in ("twsa", "q", "et", "swe"):
        want = trial.metrics.splits["test"][t]["basins"]
        got = rows.loc[t]
        assert sorted(want) == sorted(got.index)
        for b, m in want.items():
            for k in ("nse", "kge", "rmse", "n_obs"):
                if k in m:
                    assert got.loc[b, k] == pytest.approx(m[k], rel=1e-4, abs=1e-5, nan_ok=True), (t, b, k)
