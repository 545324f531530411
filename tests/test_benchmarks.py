"""The benchmark scripts' own logic: the fused pre-timing check can fail, the launch-config sweep runs and
compares configs, provenance ignores result files, and the bf16 verdict compares like with like. (The
benchmarks' figures are not tested here.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_physics  # noqa: E402
import bench_precision  # noqa: E402
import provenance  # noqa: E402


def test_fused_check_passes_the_op_and_fails_a_wrong_one(monkeypatch):
    import torch

    good = bench_physics.check_fused(8, 30, torch.device("cpu"))
    assert good["ok"] and good["fused"]["values"] < 1e-5 and good["fused"]["non_finite"] == 0

    real = bench_physics.fused.run_buckets_fused

    def off_by_a_little(forcing, params):
        out = real(forcing, params)
        return type(out)(*(o * (1 + 1e-3) for o in out))

    monkeypatch.setattr(bench_physics.fused, "run_buckets_fused", off_by_a_little)
    bad = bench_physics.check_fused(8, 30, torch.device("cpu"))
    assert not bad["ok"] and bad["fused"]["values"] > 5e-4
    assert bad["eager_fp32"]["values"] < 1e-5  # the reference side is untouched


def test_launch_config_sweep_under_the_interpreter(tmp_path):
    """bench_physics --tune end to end on the Triton interpreter: every (block, stages) row, forward and
    forward+backward, with the default config flagged and every config equal to it (block 4 at 8 basins:
    two programs)."""
    pytest.importorskip("triton")
    from rootzone.physics.fused_kernels import BLOCK_B, NUM_STAGES

    out = tmp_path / "tune.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(BENCH / "bench_physics.py"), "--interpret", "--impl", "fused",
                           "--sizes", "8x12", "--no-train", "--tune", "8x12", "--tune-blocks", f"4,{BLOCK_B}",
                           "--tune-stages", f"1,{NUM_STAGES}", "--min-time", "0", "--max-reps", "1", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [r for r in json.loads(out.read_text())["results"] if r["kind"] == "fused-config"]
    assert {(r["block"], r["stages"], r["mode"]) for r in rows} == {
        (b, s, m) for b in (4, BLOCK_B) for s in (1, NUM_STAGES) for m in ("forward", "forward+backward")}
    assert all(r["ok"] and r["max_rel_diff_vs_default"] <= 1e-6 and r["seconds"] > 0 for r in rows)
    assert {(r["block"], r["stages"]) for r in rows if r["default"]} == {(BLOCK_B, NUM_STAGES)}


def test_parse_sizes():
    assert bench_physics.parse_sizes("2048x730,16X3650") == [(2048, 730), (16, 3650)]
    with pytest.raises(SystemExit, match="expected BxT"):
        bench_physics.parse_sizes("2048")


def test_provenance_ignores_result_files(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "r.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    commit, dirty = provenance.git_state(tmp_path)
    assert len(commit) == 40 and dirty is False
    (tmp_path / "benchmarks" / "results" / "r.json").write_text('{"new": 1}\n')
    assert provenance.git_state(tmp_path)[1] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.git_state(tmp_path)[1] is True
    assert provenance.git_state(tmp_path / "nowhere") == (None, None)


def test_precision_verdict():
    def row(precision, seed, q):
        return {"precision": precision, "seed": seed, "nse": {"q": q, "et": 0.9}}

    same = bench_precision.verdict([row("fp32", 0, 0.90), row("bf16", 0, 0.89), row("fp32", 1, 0.91),
                                    row("bf16", 1, 0.905)], tolerance=0.02)
    assert same["q"]["ok"] and same["et"]["diff"] == 0.0
    worse = bench_precision.verdict([row("fp32", 0, 0.90), row("bf16", 0, 0.80), row("fp32", 1, 0.91),
                                     row("bf16", 1, 0.81)], tolerance=0.02)
    assert not worse["q"]["ok"] and worse["q"]["diff"] == pytest.approx(-0.10)


def test_bench_aggregate_smoke(tmp_path):
    """bench_aggregate end to end on a tiny grid: two time lengths, each in its own process, with throughput,
    peak RSS and the flat-in-time verdict recorded."""
    pytest.importorskip("exactextract")
    out = tmp_path / "agg.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(BENCH / "bench_aggregate.py"), "--sizes", "12x16", "--steps", "3", "7",
                           "--basins", "3", "--time-chunk", "2", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(r["grid"], r["months"], r["chunks"]) for r in result["runs"]] == [("12x16", 3, 2), ("12x16", 7, 4)]
    assert all(r["basin_cell_months_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in result["runs"])
    assert set(result["peak_rss_ratio_longest_vs_shortest"]) == {"12x16"}
    assert isinstance(result["peak_rss_flat_in_time"], bool) and "commit" in result
