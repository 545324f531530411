"""``python -m rootzone ARGS`` = ``rootzone ARGS``."""

from rootzone.cli.main import entry

if __name__ == "__main__":
    entry()
