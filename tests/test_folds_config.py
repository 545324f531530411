"""Temporal folds never overlap; the config refuses bad values by name."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rootzone.config import Config, parse_override
from rootzone.data.folds import temporal_fold, whole_years
from rootzone.errors import ConfigError, RootzoneError


@settings(max_examples=30, deadline=None)
@given(years=st.integers(4, 25), k=st.integers(2, 6), val=st.integers(1, 2), offset=st.integers(0, 200))
def test_folds_partition_whole_years(years, k, val, offset):
    time = pd.date_range(pd.Timestamp("1990-01-01") + pd.Timedelta(days=offset), periods=365 * years, freq="D")
    full = whole_years(time)
    # every block holds a year, and the largest test block leaves validation plus >= 1 training year
    if len(full) < k or len(full) - math.ceil(len(full) / k) - val < 1:
        with pytest.raises(RootzoneError, match="whole years"):
            temporal_fold(time, k, 0, val)
        return
    tests = []
    for fold in range(k):
        split = temporal_fold(time, k, fold, val)
        m = split.masks
        assert not (m["train"] & m["validation"]).any()
        assert not (m["train"] & m["test"]).any()
        assert not (m["validation"] & m["test"]).any()
        assert m["train"].any() and m["validation"].any() and m["test"].any()
        assert len(split.years["validation"]) == val
        assert sorted(sum(split.years.values(), [])) == full  # whole years, each in exactly one split
        # partial years are in no split
        partial = ~np.isin(time.year, full)
        assert not (m["train"] | m["validation"] | m["test"])[partial].any()
        tests += split.years["test"]
    assert sorted(tests) == full  # the test blocks tile the record


def test_fold_index_out_of_range():
    time = pd.date_range("2000-01-01", "2009-12-31")
    with pytest.raises(RootzoneError, match="out of range"):
        temporal_fold(time, 5, 5)


def test_config_defaults_and_overrides(tmp_path):
    cfg = Config()
    assert cfg.folds == 5 and cfg.fold == 0 and cfg.hidden_size == 128
    f = tmp_path / "c.toml"
    f.write_text('lr = 0.01\nhidden_size = 16\n[target_weights]\nq = 2.0\n')
    cfg = Config.from_sources(f, dict([parse_override("hidden_size=32"), parse_override("physics=eager")]))
    assert cfg.lr == 0.01 and cfg.hidden_size == 32 and cfg.physics == "eager" and cfg.target_weights == {"q": 2.0}
    cfg.save(tmp_path / "round.toml")
    assert Config.from_sources(tmp_path / "round.toml") == cfg


@pytest.mark.parametrize("values, field", [
    ({"learning_rate": 1.0}, "learning_rate"),
    ({"lr": -1.0}, "lr"),
    ({"fold": 5}, "fold"),
    ({"folds": 1}, "folds"),
    ({"physics": "magic"}, "physics"),
    ({"hidden_size": "big"}, "hidden_size"),
    ({"seq_len": 100, "warmup_days": 365}, "seq_len"),
    ({"param_ranges": {"smax": [0.0, 100.0]}}, "param_ranges"),
    ({"targets": ["q", "runoff"]}, "targets"),
    ({"dropout": 1.5}, "dropout"),
])
def test_config_errors_name_the_field(values, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        Config.from_dict(values)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Config.from_sources(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.from_sources(bad)
