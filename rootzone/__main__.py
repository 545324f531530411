"""``python -m rootzone.cli ARGS`` = ``rootzone ARGS``."""

from rootzone.cli.main import entry

if __name__ == "__main__":
    entry()
