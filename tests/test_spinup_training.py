"""Training scores what evaluation scores ("Train what is scored": W1, M1, M4).

- W1: windows start from the stored storages of a no-grad whole-record pass that is spun up at the record's
  start; on a twin store with noise-free targets the TRUE parameters fit every training and validation window;
  a window started from stored states reproduces the continuous run; fold 0's first test year is scored.
- M1: TWSA is re-centred on whole-record reference levels (interannual change and trends are trained), and a
  basin with < 3 valid months in a window has no TWSA term.
- M4: dropout does not make the parameters jitter over days.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from rootzone.config import Config
from rootzone.data.demo import build_demo
from rootzone.data.folds import temporal_fold
from rootzone.data.loader import StoreData
from rootzone.data.schema import month_index, write_store
from rootzone.evaluation import evaluate_record, record_pass
from rootzone.loss import hybrid_loss
from rootzone.model import HybridModel
from rootzone.physics.equations import PARAM_NAMES, BucketOutputs, run_buckets, spinup_state
from rootzone.train import _loss_on, epoch_windows, validation_loss

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def twin_store(tmp_path_factory) -> str:
    """6 basins × 5 years whose q, et, swe and twsa are the noise-free run of the TRUE parameters from
    storages spun up over the first year (float64)."""
    ds = build_demo(basins=6, years=5, seed=11)
    truth = np.stack([ds[f"true_{k}"].values.astype(np.float64) for k in PARAM_NAMES], axis=-1)
    forcing = torch.from_numpy(np.stack([ds[v].values.astype(np.float64)
                                         for v in ("precipitation", "temperature", "pet", "lai")], -1))
    params = torch.from_numpy(truth)
    state0 = spinup_state(forcing[:, :365], params[:, :365], max_cycles=50, tol_mm=1e-3)
    out = run_buckets(forcing, params, state0)
    ds["q"].values[:] = out.q.numpy()
    ds["et"].values[:] = out.et.numpy()
    ds["swe"].values[:] = out.w.numpy()
    time = pd.DatetimeIndex(ds["time"].values)
    months = month_index(time)
    tws = pd.DataFrame(out.tws.numpy().T, index=time).resample("MS").mean().reindex(months).to_numpy().T
    ds["twsa"].values[:] = tws - np.nanmean(tws, axis=1, keepdims=True)
    path = str(tmp_path_factory.mktemp("twin") / "twin.zarr")
    write_store(ds, path)
    return path


class TruthModel(HybridModel):
    """A model whose parameters are the store's TRUE ones for the basins and days last loaded."""

    def __init__(self, data: StoreData, cfg: Config):
        super().__init__(len(data.dynamic_names), len(data.normaliser.static_names), cfg, "eager")
        self.truth = torch.from_numpy(np.stack([data.ds[f"true_{k}"].values for k in PARAM_NAMES], -1)).float()
        self.where = None
        load = data.load

        def tracked(basins, start, length):
            batch = load(basins, start, length)
            self.where = (batch.basins, start, length)
            return batch

        data.load = tracked

    def parameters_from(self, x_dynamic, x_static):
        basins, start, length = self.where
        return self.truth[basins, start : start + length]


def _data(store: str, fold: int = 1, **kw) -> StoreData:
    fields = dict(store=store, folds=5, fold=fold, seq_len=400, warmup_days=120, batch_size=3, hidden_size=8,
                  physics="eager", progress=False)
    cfg = Config(**{**fields, **kw})
    from rootzone.data.schema import open_store

    ds = open_store(store)
    return StoreData(ds, cfg, temporal_fold(ds.indexes["time"], cfg.folds, cfg.fold, cfg.validation_years))


def test_true_parameters_fit_every_window(twin_store):
    data = _data(twin_store)
    model = TruthModel(data, data.cfg)
    record = record_pass(model, data, CPU)
    rng = np.random.default_rng(0)
    warm, cold = [], []
    for basins, start, length in epoch_windows(data, rng, 0):
        batch = data.load(basins, start, length)
        warmup = min(data.cfg.warmup_days, length - 1)
        with torch.no_grad():
            warm.append(float(_loss_on(model, data, batch, "train", warmup, CPU, record)[0]))
            cold.append(float(_loss_on(model, data, batch, "train", warmup, CPU)[0]))
    val = validation_loss(model, data, CPU, chunk=2, record=record)
    print(f"twin at TRUE params: train windows max {max(warm):.2e} (cold start {max(cold):.2e}), "
          f"validation {val:.2e}")
    assert len(warm) >= 2 and max(warm) <= 1e-3
    assert val <= 1e-3


def test_window_from_stored_states_continues_the_record(twin_store):
    data = _data(twin_store)
    model = TruthModel(data, data.cfg)
    record = record_pass(model, data, CPU)
    basins, start, length = np.array([1, 4]), 700, 300
    batch = data.load(basins, start, length)
    with torch.no_grad():
        out = model(batch.x_dynamic, batch.x_static, batch.forcing, record.state0(basins, start))
    whole = torch.from_numpy(record.states[:, basins, start + 1 : start + length + 1])
    torch.testing.assert_close(torch.stack([out.buckets.w, out.buckets.s, out.buckets.g]), whole)


def test_fold0_first_test_year_is_scored(twin_store):
    data = _data(twin_store, fold=0, warmup_days=365, seq_len=730)
    assert data.split.years["test"] == [2000]  # 5 years, 5 folds: fold 0 tests the record's first year
    record = evaluate_record(TruthModel(data, data.cfg), data, CPU)
    for t in ("q", "et"):
        nse = [m["nse"] for m in record.scores["test"][t]["basins"].values()]
        assert np.isfinite(nse).all() and min(nse) > 0.999, (t, nse)
    assert record.scores["test"]["swe"]["median"]["nse"] > 0.999  # (a basin without snow has no SWE NSE)
    assert record.scores["test"]["twsa"]["median"]["nse"] > 0.999
    for part in ("twsa_seasonal", "twsa_interannual"):
        assert part in record.scores["train"]
    assert record.scores["train"]["twsa_seasonal"]["median"]["nse"] > 0.999


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_dropout_never_jitters_over_days(mode):
    cfg = Config(param_mode=mode, dropout=0.5, hidden_size=16)
    model = HybridModel(3, 4, cfg, "eager").train()
    torch.manual_seed(0)
    x_dyn, x_stat = torch.randn(5, 30, 3), torch.randn(5, 4)
    params = model.parameters_from(x_dyn, x_stat)
    if mode == "static":
        assert (params == params[:, :1]).all()
    # the mask is one per sequence: the same dropped units on every day
    hidden = torch.ones(5, 30, 16)
    masked = model._sequence_dropout(hidden)
    assert (masked == masked[:, :1]).all() and (masked == 0).any()
    assert torch.equal(model.eval()._sequence_dropout(hidden), hidden)


def _twsa_loss(model_monthly, obs, ref=None, month_mask=None):
    b, m = obs.shape
    day_month = torch.arange(m).repeat_interleave(2)  # two days per month slot
    tws = model_monthly.repeat_interleave(2, dim=1)
    zero = torch.zeros_like(tws)
    outs = BucketOutputs(q=zero, et=zero, w=zero, s=tws, g=zero)
    mask = torch.ones(m, dtype=torch.bool) if month_mask is None else month_mask
    total, parts = hybrid_loss(outs, {"twsa": obs}, torch.ones(2 * m, dtype=torch.bool), mask, day_month,
                               {"twsa": torch.ones(b)}, {"twsa": 1.0}, None if ref is None else {"twsa": ref})
    return total, parts


def test_twsa_keeps_interannual_change():
    months = torch.arange(24, dtype=torch.float64)
    season = 30 * torch.sin(2 * math.pi * months / 12)
    obs = (season + 2.0 * months)[None, :]  # a trend of 2 mm/month
    same = (season + 2.0 * months + 500)[None, :]  # the same trend, another level
    flat = (season + 500)[None, :]  # no trend
    # reference levels: the means over the "training months" of the whole record (here: all 24)
    ref_same = (same.mean(1), obs.mean(1))
    ref_flat = (flat.mean(1), obs.mean(1))
    # a window of the first 12 months: within-window re-centring would hide the trend, the reference does not
    window = torch.zeros(24, dtype=torch.bool)
    window[:12] = True
    assert float(_twsa_loss(same, obs, ref_same, window)[0]) < 1e-12
    assert float(_twsa_loss(flat, obs, ref_flat, window)[0]) > 10.0


def test_twsa_needs_three_months_per_basin():
    obs = torch.tensor([[1.0, math.nan, math.nan, 4.0], [1.0, 2.0, 3.0, 4.0]])
    model = torch.zeros_like(obs)
    ref = (torch.zeros(2), torch.zeros(2))
    _, parts = _twsa_loss(model, obs, ref)
    assert parts["twsa"] == pytest.approx((1 + 4 + 9 + 16) / 4 / (1 + 0.1))  # basin 0 (2 months) is absent
    _, parts = _twsa_loss(model[:1], obs[:1], (ref[0][:1], ref[1][:1]))
    assert parts.get("twsa", 0.0) == 0.0  # no basin with a term: absent (or 0)


def test_whole_record_anomaly_value_and_level_gradient():
    """The TWSA anomaly against the record reference keeps its value (interannual part included) while a
    uniform shift of the window's storage level gets no gradient (the record mean moves with it), so windows
    cannot chase a reference that only changes at the next refresh."""
    from rootzone.loss import anomalies

    model = torch.tensor([[10.0, 12.0, 14.0, 13.0]], requires_grad=True)
    obs = torch.tensor([[1.0, 2.0, float("nan"), 4.0]])
    mask = torch.ones(4, dtype=torch.bool)
    ref = (torch.tensor([11.0]), torch.tensor([0.5]))
    mod_a, obs_a, valid = anomalies(model, obs, mask, ref, min_months=3)
    assert valid.tolist() == [[True, True, False, True]]
    torch.testing.assert_close(mod_a.detach(), model.detach() - 11.0)
    torch.testing.assert_close(obs_a[valid], torch.tensor([0.5, 1.5, 3.5]))
    # d/d(level) of the valid anomalies' sum is 0: a uniform shift is not a gradient direction
    (mod_a * valid).sum().backward()
    assert float(model.grad[valid].sum()) == pytest.approx(0.0, abs=1e-6)
