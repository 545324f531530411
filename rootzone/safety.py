"""Safe filesystem operations: rootzone deletes only what rootzone wrote, and writes files atomically.

Every command that removes or replaces output goes through this module:

- :func:`check_output_path` refuses paths that must never be replaced (``/``, the home directory, the
  current directory and its ancestors, symlinks, regular files where a store is expected).
- :func:`remove_owned_store` removes a Zarr group only when its ``zarr.json`` carries rootzone's own
  attribute (``rootzone_schema`` for data stores, ``prediction_job`` for prediction stores).
- :func:`temp_sibling` names temporary stores after the host and process that write them, so that
  :func:`clean_stale_temps` can remove the leftovers of a killed build (same host, process gone) and never
  those of a build that is still running.
- :func:`atomic_write_bytes` / :func:`atomic_torch_save` write to a temporary file and ``os.replace`` it.
- :class:`DirLock` is a lock file (owner pid and host) so two writers never share one output.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from rootzone.errors import RootzoneError

DATA_STORE_KEY = "rootzone_schema"
PREDICTION_STORE_KEY = "prediction_job"
LOCK_NAME = ".rootzone.lock"
_TMP_TAG = ".tmp-"


def fs_and_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``url`` and the path within it (a missing driver, e.g. s3fs for ``s3://``, or
    an unknown protocol is a one-line RootzoneError)."""
    try:
        return fsspec.core.url_to_fs(str(url))
    except ImportError as exc:
        raise RootzoneError(f"'{url}': {' '.join(str(exc).split())}") from None
    except ValueError as exc:
        raise RootzoneError(f"'{url}': not a path or URL rootzone can open ({' '.join(str(exc).split())})") from None


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def protocol_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URL of ``path`` on ``fs`` (a plain path on the local filesystem)."""
    if is_local(fs):
        return path
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{protocol}://{path}"


def absolute_url(url: str) -> str:
    """``url`` made absolute when it is a local path (remote URLs are returned as given)."""
    fs, path = fs_and_path(url)
    return str(Path(path).resolve()) if is_local(fs) else str(url)


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def check_output_path(url: str, what: str = "output") -> None:
    """Refuse an output path that rootzone must never replace or delete.

    Refused: ``/``, the user's home directory, the current directory and any of its ancestors, a symlink,
    and (for remote URLs) a bucket root. Existing regular files are refused by :func:`remove_owned_store`.
    """
    fs, path = fs_and_path(url)
    if not is_local(fs):
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if protocol == "memory":  # fsspec's in-process filesystem has no buckets
            if not path.strip("/"):
                raise RootzoneError(f"{what} '{url}' is the filesystem root; refusing to write there")
            return
        if not path.strip("/") or "/" not in path.strip("/"):
            raise RootzoneError(f"{what} '{url}' is a bucket root; give a path inside the bucket")
        return
    p = Path(path)
    if p.is_symlink():
        raise RootzoneError(f"{what} '{url}' is a symbolic link; give the real path")
    resolved = p.resolve()
    cwd = Path.cwd().resolve()
    if resolved == Path(resolved.anchor):
        raise RootzoneError(f"{what} '{url}' is the filesystem root; refusing to write there")
    if resolved == Path.home().resolve():
        raise RootzoneError(f"{what} '{url}' is the home directory; refusing to replace it")
    if resolved == cwd or resolved in cwd.parents:
        raise RootzoneError(f"{what} '{url}' is the current directory or one of its parents; "
                            "refusing to replace it")


def owner_attributes(url: str) -> dict[str, Any] | None:
    """The group attributes of the Zarr v3 group at ``url``, or None when it is not one."""
    fs, path = fs_and_path(url)
    meta = f"{path.rstrip('/')}/zarr.json"
    try:
        doc = json.loads(fs.cat_file(meta))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, OSError):
        return None
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return None
    attrs = doc.get("attributes", {})
    return attrs if isinstance(attrs, dict) else None


def ensure_replaceable(url: str, owner_key: str, what: str = "output") -> None:
    """Raise unless whatever is at ``url`` may be replaced: nothing, or a Zarr group written by rootzone
    (its attributes carry ``owner_key``)."""
    check_output_path(url, what)
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        return
    if not fs.isdir(path):
        raise RootzoneError(f"{what} '{url}' is a file, not a rootzone store; refusing to replace it")
    attrs = owner_attributes(url)
    if attrs is None or owner_key not in attrs:
        kind = "prediction store" if owner_key == PREDICTION_STORE_KEY else "rootzone data store"
        raise RootzoneError(f"{what} '{url}' exists and is not a {kind}; rootzone only replaces what it "
                            "wrote (remove it yourself or choose another path)")


def remove_owned_store(url: str, owner_key: str, what: str = "output") -> None:
    """Remove the store at ``url`` after :func:`ensure_replaceable` (nothing happens if it does not exist)."""
    ensure_replaceable(url, owner_key, what)
    fs, path = fs_and_path(url)
    if fs.exists(path):
        _rm_tree(fs, path)


def _rm_tree(fs: fsspec.AbstractFileSystem, path: str) -> None:
    if is_local(fs):
        shutil.rmtree(path)
    else:
        fs.rm(path, recursive=True)


def temp_sibling(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, str]:
    """A fresh temporary path beside ``path``, tagged with this host and pid (path, and its URL)."""
    base = path.rstrip("/")
    if not base:
        raise RootzoneError("refusing to write a store at the filesystem root")
    tmp = _temp_name(base)
    return tmp, protocol_url(fs, tmp)


def _temp_name(base: str) -> str:
    """``base`` + ``.tmp-<host>-<pid>-<hex8>``: every temporary of rootzone (stores and atomic files), so
    :func:`clean_stale_temps` can tell a killed writer's leftovers from a running one's."""
    return f"{base}{_TMP_TAG}{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Remove temporary siblings of ``path`` (stores or atomically written files) left by a killed writer on
    this host; return what was removed.

    Only local paths named by :func:`_temp_name` on this host whose process no longer runs are removed.
    """
    if not is_local(fs):
        return []
    base = Path(path.rstrip("/"))
    pattern = re.compile(re.escape(base.name + _TMP_TAG + _host_tag()) + r"-(\d+)-[0-9a-f]{8}$")
    removed = []
    if not base.parent.is_dir():
        return removed
    for sibling in base.parent.iterdir():
        m = pattern.match(sibling.name)
        if m and not sibling.is_symlink() and not pid_alive(int(m.group(1))):
            if sibling.is_dir():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    sibling.unlink()
            removed.append(str(sibling))
    return removed


def move_into_place(fs: fsspec.AbstractFileSystem, tmp: str, path: str, owner_key: str) -> None:
    """Replace ``path`` by the finished temporary store ``tmp`` (the old one must be rootzone's own)."""
    url = protocol_url(fs, path)
    if fs.exists(path):
        remove_owned_store(url, owner_key)
    fs.mv(tmp, path, recursive=True)


def atomic_write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` through a temporary file and a rename, so readers never see half a file."""
    fs, path = fs_and_path(url)
    if is_local(fs):
        p = Path(path)
        tmp = Path(_temp_name(str(p)))
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    else:  # object stores publish an object only when its upload completes
        with fs.open(path, "wb") as fh:
            fh.write(data)


def atomic_write_text(url: str, text: str) -> None:
    atomic_write_bytes(url, text.encode("utf-8"))


def atomic_torch_save(obj: Any, url: str) -> None:
    """``torch.save`` through a temporary file and a rename (a kill mid-write keeps the old file)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(url, buf.getvalue())


class DirLock:
    """An exclusive lock on an output directory: a file ``.rootzone.lock`` holding the owner's pid and host.

    A second writer is refused with a one-line error naming the owner. A lock left by a process that no
    longer runs on this host is taken over. On remote filesystems the check is best effort (no atomic
    create), which still catches the common case of a second job started on the same output.
    """

    def __init__(self, url: str, what: str = "output", sibling: bool = False):
        """Lock ``url`` (a directory): the lock file is ``url/.rootzone.lock``, or ``url.lock`` beside it
        with ``sibling=True`` (for an output that may be deleted and recreated while locked)."""
        self.url, self.what = str(url), what
        self.fs, target = fs_and_path(url)
        target = target.rstrip("/")
        self.dir = target.rsplit("/", 1)[0] if sibling else target
        self.path = f"{target}.lock" if sibling else f"{target}/{LOCK_NAME}"
        self.held = False

    def _owner(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except (FileNotFoundError, ValueError, OSError):
            return None

    def _stale(self, owner: dict[str, Any] | None) -> bool:
        if owner is None:
            return True
        return owner.get("host") == socket.gethostname() and not pid_alive(int(owner.get("pid", -1)))

    def acquire(self) -> DirLock:
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        self.fs.makedirs(self.dir, exist_ok=True)
        for _ in range(2):
            if is_local(self.fs):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    pass
                else:
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(me)
                    self.held = True
                    return self
            elif not self.fs.exists(self.path):
                self.fs.pipe_file(self.path, me)
                self.held = True
                return self
            owner = self._owner()
            if not self._stale(owner):
                raise RootzoneError(
                    f"{self.what} '{self.url}' is in use by another rootzone process (pid {owner.get('pid')} "
                    f"on {owner.get('host')}); wait for it to finish, or remove {self.path} if it is gone")
            with contextlib.suppress(FileNotFoundError, OSError):
                self.fs.rm_file(self.path)
        raise RootzoneError(f"{self.what} '{self.url}': could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError, OSError):
                self.fs.rm_file(self.path)
            self.held = False

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(url: str, what: str = "output", sibling: bool = False) -> Iterator[DirLock]:
    """``with locked(run_dir): ...``: hold :class:`DirLock` on ``url`` for the block."""
    lock = DirLock(url, what, sibling)
    with lock:
        yield lock
