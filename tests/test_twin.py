"""A small twin experiment: training on the demo store must beat the untrained model by a wide margin and
move the learned S_max towards the true one. (The full-size acceptance figures are in the README.)"""

import numpy as np

from rootzone.config import Config
from rootzone.train import train_trial


def test_training_recovers_the_twin(tiny_store, tmp_path):
    base = dict(store=tiny_store, folds=3, seq_len=400, warmup_days=120, hidden_size=16, batch_size=6,
                physics="eager", progress=False, lr=1e-2, patience=50, threads=1)
    untrained = train_trial(Config(out=str(tmp_path / "u"), epochs=1, batches_per_epoch=1, lr=1e-9,
                                   **{k: v for k, v in base.items() if k != "lr"}))
    # an epoch is one pass over the 6 basins (one batch of 6); every window starts from the stored storages
    trained = train_trial(Config(out=str(tmp_path / "t"), epochs=20, batches_per_epoch=0, **base))

    def nse(m, target):
        return m.splits["test"][target]["median"]["nse"]

    # Q and ET start far from the truth and must improve by a clear margin. The snow routine's initial
    # parameters already give a good SWE (NSE ~0.86 untrained), and since every run starts from spun-up
    # storages the untrained TWSA anomalies score ~0.81 too: there training must not hurt.
    for target in ("q", "et"):
        assert nse(trained, target) > nse(untrained, target) + 0.03, target
    for target in ("swe", "twsa"):
        assert nse(trained, target) > max(nse(untrained, target) - 0.01, 0.8), target
    assert nse(trained, "q") > 0.8
    rec, rec0 = trained.truth_recovery, untrained.truth_recovery
    assert rec["smax_rmse"] < rec0["smax_rmse"]
    assert rec["smax_median_abs_log_ratio"] < rec0["smax_median_abs_log_ratio"]
    assert trained.best_validation_loss < 0.7 * untrained.best_validation_loss
    assert np.isfinite(list(trained.smax_mean.values())).all()


def test_ci_sized_twin_recovers_smax(tmp_path_factory):
    """Issue 13 M5 at CI size: 32 basins, 10 years, one trial. The thresholds are the README's M5 figures for
    median |log ratio| and r, with a lower bound on the slope of log learned on log true (32 basins hold too
    few extremes to pin it to the full-size 0.85-1.15). The code before issue 13 (cold-start windows, per-window
    TWSA anomalies, per-day dropout), trained the same way on its own 32 x 10 demo store, gave r 0.930, median
    |log ratio| 0.222, slope 0.468 and fails all three; this code gave r 0.976, 0.121, 0.72 (2-core CPU)."""
    from rootzone.data.demo import build_demo
    from rootzone.data.schema import write_store

    root = tmp_path_factory.mktemp("twin32")
    store = str(root / "demo32.zarr")
    write_store(build_demo(basins=32, years=10, seed=0), store)
    cfg = Config(store=store, out=str(root / "run"), hidden_size=64, warmup_days=180, batch_size=8, epochs=40,
                 progress=False, threads=1)  # one thread: small tensors, and no oversubscription beside others
    rec = train_trial(cfg).truth_recovery
    assert rec["smax_pearson_r"] >= 0.95, rec
    assert rec["smax_median_abs_log_ratio"] <= 0.15, rec
    assert 0.65 <= rec["smax_log_slope"] <= 1.15, rec
