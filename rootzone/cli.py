"""The ``rootzone`` command line: ``rootzone data …``, ``rootzone train`` and the ensemble/report verbs.

Every verb turns user errors (:class:`RootzoneError`) into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rootzone.config import Config, parse_override
from rootzone.errors import RootzoneError


def add_config_options(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set key=value``, common to every verb that trains."""
    p.add_argument("--config", metavar="FILE", help="TOML config file (see README: Configuration)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override any config field, e.g. --set lr=1e-3 --set hidden_size=64 (repeatable)")


def config_from_args(args: argparse.Namespace, **explicit: Any) -> Config:
    """Defaults < --config file < --set overrides < explicit flags (those not None)."""
    overrides = dict(parse_override(o) for o in args.overrides)
    overrides.update({k: v for k, v in explicit.items() if v is not None})
    return Config.from_sources(args.config, overrides)


def build_parser() -> argparse.ArgumentParser:
    from rootzone import train
    from rootzone.data import commands as data_commands

    parser = argparse.ArgumentParser(
        prog="rootzone",
        description="Hybrid LSTM + bucket model of the active root zone storage of river basins: "
                    "build stores, train trials and ensembles, predict and report.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data = sub.add_parser("data", help="build, import and inspect rootzone Zarr stores",
                          description="Build, import and inspect rootzone Zarr stores.")
    data_commands.register(data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND"))
    train.register(sub)
    for module in _optional_command_modules():
        module.register(sub)
    return parser


def _optional_command_modules() -> list:
    """Verbs that live beside their implementation (ensemble, tune, predict, report)."""
    import importlib

    modules = []
    for name in ("rootzone.ensemble", "rootzone.predict", "rootzone.report"):
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return modules


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _os_error_line(exc: OSError) -> str:
    """``[Errno 28] No space left on device: 'x'`` as one line that names the path."""
    what = exc.strerror or type(exc).__name__
    where = exc.filename if exc.filename is not None else ""
    return _one_line(f"{what}: {where}" if where else f"{what}: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rootzone ARGV``; user errors give one line on stderr and exit status 2, never a traceback."""

    def run() -> int | None:
        args = build_parser().parse_args(argv)
        return args.func(args)

    return guarded(run)


def guarded(func: Callable[..., int | None], *args: object) -> int:
    """``func(*args)`` as an exit status: RootzoneError and OSError give one line on stderr and 2, an interrupt
    130, anything else one line and 1 (``ROOTZONE_DEBUG=1`` re-raises it with its traceback, for bug reports).
    Used by :func:`main` and the ``ray_jobs/`` entry points."""
    try:
        return int(func(*args) or 0)
    except RootzoneError as exc:
        print(f"rootzone: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # read-only or full disk, a file where a directory is expected, ...
        print(f"rootzone: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rootzone: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("ROOTZONE_DEBUG"):
            raise
        print(f"rootzone: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(set ROOTZONE_DEBUG=1 for the traceback and please report it)", file=sys.stderr)
        return 1


def entry() -> None:
    """Console entry point: :func:`main`, then exit without interpreter teardown after an interrupt
    (Zarr's background event loop would otherwise print pages of "Task was destroyed" warnings)."""
    try:
        code = main()
    except KeyboardInterrupt:  # a second Ctrl-C while the first is being handled
        code = 130
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    entry()
