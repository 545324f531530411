"""Where a benchmark figure came from: git commit, whether the tree had uncommitted code, date, machine.

Every ``bench_*.py`` stamps its result JSON with :func:`provenance` so a figure can be traced to the code
that produced it. Files under ``benchmarks/results/`` are ignored when deciding whether the tree is dirty:
rewriting a result file is not a code change.
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_state(root: Path = ROOT) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout at ``root``; ``(None, None)`` outside git."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", ".",
                                 ":(exclude)benchmarks/results"], capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, bool(status.strip())


def provenance() -> dict:
    """Commit, dirty flag, UTC date and a CPU description, ready to merge into a result dict."""
    commit, dirty = git_state()
    return {"commit": commit, "dirty_tree": dirty,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "python": platform.python_version()}}
