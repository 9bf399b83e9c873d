"""Atomic file writes and output-path checks.

Every file the benchmark writes goes through :func:`atomic_write_bytes` (or the text/JSON
wrappers): data land in a temporary file in the same directory, are flushed and fsynced, then
``os.replace``-d over the target. A crash leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def check_writable(path: str | Path, is_dir: bool = False) -> Path:
    """Raise UserError unless ``path`` (a file, or a directory if ``is_dir``) can be written.

    Creates missing parent directories. Nothing existing is modified.
    """
    path = Path(path)
    target_dir = path if is_dir else path.parent
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create directory {target_dir} ({e.strerror}); choose another --out") from None
    if not os.access(target_dir, os.W_OK | os.X_OK):
        raise UserError(f"directory {target_dir} is not writable; choose another --out")
    if not is_dir and path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"file {path} is not writable; choose another path")
    return path


def check_creatable(path: str | Path) -> Path:
    """UserError unless the file ``path`` could be created later: its nearest existing ancestor is
    a writable directory. Creates nothing (for checks made before any work)."""
    path = Path(path)
    anc = path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UserError(f"cannot create {path}: {anc} is a file, not a directory; choose another path")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {path}: directory {anc} is not writable; choose another path")
    return path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (streamed in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


LOCK_NAME = ".lock"


@contextlib.contextmanager
def writer_lock(directory: str | Path, what: str = "directory", name: str = LOCK_NAME) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``directory/<name>`` (default ``.lock``) for the block:
    one writer per directory (independent shards of one run each lock their own name). A second writer gets a one-line :class:`UserError` naming the holder's pid, at once
    (no waiting). The lock file holds the holder's pid; the lock dies with its process. Creates
    ``directory`` (only) if missing. No-op where ``fcntl`` is unavailable.
    """
    directory = Path(directory)
    check_writable(directory, is_dir=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    path = directory / name
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise UserError(
                f"another lmconv-bench process (pid {holder}) is writing to the {what} {directory}; "
                "wait for it to finish, or choose another output"
            ) from None
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
