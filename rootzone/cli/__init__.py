"""The ``rootzone`` command line: every argparse line of the package. It imports the implementation modules;
none of them imports it."""

from rootzone.cli.guard import guarded
from rootzone.cli.main import build_parser, entry, main

__all__ = ["build_parser", "entry", "guarded", "main"]
