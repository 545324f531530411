import pytest

from rootzone.data.demo import build_demo
from rootzone.data.schema import write_store


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> str:
    """A small demo store: 6 basins, 7 years."""
    path = str(tmp_path_factory.mktemp("stores") / "tiny.zarr")
    write_store(build_demo(basins=6, years=7, seed=3), path)
    return path


TINY_TRAIN = ["--physics", "eager", "--quiet", "--set", "batches_per_epoch=2", "--set", "seq_len=400",
              "--set", "warmup_days=120", "--set", "hidden_size=8", "--set", "folds=3"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``rootzone ARGV`` in this process; (exit status, stdout, stderr)."""
    from rootzone.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, err: str, *words: str) -> None:
    """Exit status 2, exactly one line on stderr (``rootzone: error: …``) naming ``words``, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}, stderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("rootzone: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w.lower() in err.lower(), f"{w!r} not in {err!r}"


def tree_snapshot(path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and directory under ``path``: compare before/after to prove nothing
    was written or deleted."""
    from pathlib import Path

    root = Path(path)
    if not root.exists():
        return {}
    if root.is_file():
        return {".": root.read_bytes()}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}
