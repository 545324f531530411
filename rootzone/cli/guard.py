"""One place that turns errors into an exit status: user errors (RootzoneError, OSError) one line and 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from rootzone.errors import RootzoneError


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _os_error_line(exc: OSError) -> str:
    """``[Errno 28] No space left on device: 'x'`` as one line that names the path."""
    what = exc.strerror or type(exc).__name__
    where = exc.filename if exc.filename is not None else ""
    return _one_line(f"{what}: {where}" if where else f"{what}: {exc}")


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


def exit_process(main: Callable[[], int]) -> None:
    """Run ``main`` (an entry point returning an exit status) and exit with it; after an interrupt, exit without
    interpreter teardown (Zarr's background event loop would otherwise print pages of "Task was destroyed"
    warnings). Used by the ``rootzone`` console script and the ``ray_jobs/`` scripts."""
    try:
        code = main()
    except KeyboardInterrupt:  # a second Ctrl-C while the first is being handled
        code = 130
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)
