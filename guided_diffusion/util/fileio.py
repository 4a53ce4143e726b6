"""Crash-safe file writing: write to a temporary file beside the target, then rename."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from typing import IO, Iterator

from .errors import UserError, WriteError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success rename it over ``path``.

    A crash or exception leaves ``path`` untouched (the old file, or none) and
    removes the temporary file, so readers never see a half-written file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        # mkstemp makes 0600 files: give the result the usual permissions under the umask
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            # a failed write (full disk, read-only file system) says which file it was writing
            raise WriteError(f"{path}: {e.strerror}") from e
        raise


def atomic_save_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def ensure_writable_dir(path: str, flag: str) -> None:
    """Create the folder given by ``flag``; one that cannot be created or written is a clear
    error before any work is done."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create it ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path}: not writable")


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_folder(path: str, flag: str) -> Iterator[str]:
    """A hidden folder beside ``path`` to fill; on success it is renamed to ``path`` (which must not
    exist, or be an empty folder), so the folder appears complete or not at all."""
    path = os.path.normpath(path)
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise UserError(f"{flag} {path}: already exists and is not an empty folder; choose a new one")
    parent = os.path.dirname(os.path.abspath(path))
    ensure_writable_dir(parent, flag)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        yield staging
        if os.path.isdir(path):
            os.rmdir(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
