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
    assert len(members) == 2 * 3 * 4 * 6  # trials x splits x targets x basins
    basins = pd.read_csv(out / "metrics_basins.csv")
    assert len(basins) == 6 * 4 and basins["members"].eq(2).all()
    assert basins.loc[basins["target"] == "twsa", "ensemble_r"].notna().all()
    # the cross-validated ensemble series of a basin = each fold's member on its own test years
    p = xr.open_zarr(pred).sel(basin="demo_0002")
    years = pd.DatetimeIndex(p["time"].values).year
    sim = np.full(p.sizes["time"], np.nan)
    for member in p["member"].values:
        test_years = json.loads((exp / "trials" / str(member) / "metrics.json").read_text())["years"]["test"]
        on = np.isin(years, test_years) & ~p["in_warmup"].values
        sim[on] = p["q"].sel(member=member).values[on]
    obs = xr.open_zarr(exp / "demo.zarr")["q"].sel(basin="demo_0002").values
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
