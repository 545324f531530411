"""Benchmark steps that run in a child process, so that their peak memory is their own.

:func:`run_child` starts a command with this checkout on ``PYTHONPATH``, waits for it with ``os.wait4`` and
returns its output and its maximum resident set size (ru_maxrss). Output goes through temporary files, not
pipes, so a child that prints a lot cannot block on a full pipe while the parent waits.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the checkout first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_child(cmd: list[str], what: str) -> tuple[str, str, float]:
    """Run ``cmd`` in the checkout; ``(stdout, stderr, peak_rss_mb)``. A non-zero exit raises SystemExit
    naming ``what`` with the end of the child's stderr."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{what} failed:\n{stderr.strip()[-2000:]}")
    return stdout, stderr, usage.ru_maxrss / 1024
