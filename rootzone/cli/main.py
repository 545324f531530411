"""The ``rootzone`` command line: ``rootzone data …``, ``rootzone train`` and the ensemble/report verbs.

Every verb turns user errors (:class:`RootzoneError`) into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rootzone.cli import data as data_cli
from rootzone.cli import ensemble as ensemble_cli
from rootzone.cli import export as export_cli
from rootzone.cli import predict as predict_cli
from rootzone.cli import report as report_cli
from rootzone.cli import train as train_cli
from rootzone.cli.guard import exit_process, guarded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rootzone",
        description="Hybrid LSTM + bucket model of the active root zone storage of river basins: "
                    "build stores, train trials and ensembles, predict and report.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_cli.register(sub)
    train_cli.register(sub)
    ensemble_cli.register(sub)
    predict_cli.register(sub)
    export_cli.register(sub)
    report_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rootzone ARGV``; user errors give one line on stderr and exit status 2, never a traceback."""

    def run() -> int | None:
        args = build_parser().parse_args(argv)
        return args.func(args)

    return guarded(run)


def entry() -> None:
    """Console entry point: :func:`main` through :func:`rootzone.cli.guard.exit_process`."""
    exit_process(main)
