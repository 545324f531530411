"""The ``rootzone`` command line: ``rootzone data …``, ``rootzone train`` and the ensemble/report verbs.

Every verb turns user errors (:class:`RootzoneError`) into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except RootzoneError as exc:
        print(f"rootzone: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rootzone: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
