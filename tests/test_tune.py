"""`rootzone tune` leakage (science review m3): which years the selection used, and for which test block the
tuned config is honest. Unit tests of the selection bookkeeping (no Ray)."""

import pandas as pd
import pytest
from conftest import run_cli

from rootzone.config import Config, tomllib
from rootzone.data.folds import temporal_fold
from rootzone.ensemble.tune import selection_note, selection_record

TIME = pd.date_range("2000-01-01", "2009-12-31", freq="D")  # 10 whole years


@pytest.mark.parametrize("fold", range(5))
def test_selection_is_honest_only_for_the_tuned_fold(fold):
    rec = selection_record(TIME, 5, fold, 1)
    split = temporal_fold(TIME, 5, fold, 1)
    assert rec["honest_for_fold"] == fold and rec["honest_test_years"] == split.years["test"]
    assert rec["selected_on"] == split.years["validation"]
    # the tuned fold's test years were never seen by the selection
    assert not set(rec["honest_test_years"]) & (set(rec["selected_on"]) | set(rec["trained_on"]))
    # every other fold's test block was seen (k-fold blocks cover the record), and the folds whose test block
    # holds the selection years are named
    assert sorted(rec["leaks_into"]) == [g for g in range(5) if g != fold]
    for g, years in rec["leaks_into"].items():
        assert years == temporal_fold(TIME, 5, g, 1).years["test"]
    holders = [g for g in range(5) if set(temporal_fold(TIME, 5, g, 1).years["test"]) & set(rec["selected_on"])]
    assert rec["selected_on_test_of"] == holders and fold not in holders and holders


def test_note_is_a_valid_toml_header():
    import textwrap

    rec = selection_record(TIME, 5, 2, 1)
    note = selection_note(rec)
    assert "honest only for fold 2" in note and str(rec["honest_test_years"]) in note
    text = "".join(f"# {line}\n" for line in textwrap.wrap(note, 110)) + Config().replace(fold=2).to_toml()
    assert tomllib.loads(text)["fold"] == 2


def test_tune_help_says_which_fold_is_honest(capsys):
    with pytest.raises(SystemExit):
        run_cli(capsys, "tune", "--help")
    out = capsys.readouterr().out
    assert "honest only for fold F's test block" in " ".join(out.split())
