"""Files written atomically (temp name, fsync, rename) and hashed in chunks."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_target(path: Path, *, durable: bool = True) -> Iterator[IO[bytes]]:
    """Yield a temp file beside ``path``; on success fsync it and rename it over ``path``.

    Readers see the old file or the new one, never a part; on any error the temp file is removed.
    ``durable=False`` skips both fsyncs, for a bulk write that ends with `sync_filesystem`:
    the rename is as atomic for readers and for a killed writer, only not yet on disk.
    """
    directory, name = os.path.split(os.fspath(path))
    # Same directory, so os.replace is an atomic rename on one filesystem; the leading dot
    # keeps half-written files out of directory scans.
    prefix, where = f".{name}.", directory or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=where)
    except FileNotFoundError:  # the directory first, only when it is missing
        os.makedirs(where, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=where)
    with _installing(tmp, path, where, durable=durable), os.fdopen(fd, "wb") as handle:
        yield handle
        handle.flush()
        # mkstemp makes 0600 files; a static web server running as another user reads them.
        os.fchmod(handle.fileno(), 0o644)
        if durable:
            os.fsync(handle.fileno())


@contextlib.contextmanager
def _installing(tmp: str, path: Path, directory: str, *, durable: bool) -> Iterator[None]:
    """Around the writing of ``tmp``: then rename it over ``path`` (and make the rename
    durable), or, on any error, remove it. The one ending of both atomic writers."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(Path(directory))


def sync_filesystem(path: Path) -> None:
    """Write back everything dirty on the filesystem that holds ``path`` (syncfs(2)).

    One write-back at the end of a bulk write instead of a wait per file: 50,000 pages each
    fsynced with their directory took half of a full index write (benchmarks/index.py).
    Falls back to sync(2) where syncfs cannot be called.
    """
    syncfs = _libc_syncfs()
    if syncfs is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    os.sync()


@functools.cache
def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        import ctypes

        # The process's own symbols, libc's among them: no library search (and no subprocess).
        libc = ctypes.CDLL(None, use_errno=True)
        function: Callable[[int], int] = libc.syncfs
    except (ImportError, OSError, AttributeError):  # pragma: no cover - not Linux
        return None
    return function


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened like this elsewhere.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_temp_numbers = itertools.count()


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """`atomic_target` for bytes in hand, in plain system calls.

    No file object and no random name: a full index write makes 50,000 of these, and the
    file object alone cost a quarter of each (benchmarks/index.py). The temp name is unique
    to this process (pid and a counter); O_EXCL makes a leftover of a dead one a retry.
    """
    directory, name = os.path.split(os.fspath(path))
    directory = directory or "."
    fd, tmp = _create_temp(directory, name)
    with _installing(tmp, path, directory, durable=durable):
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # The mode as atomic_target gives it, whatever the umask.
            os.fchmod(fd, 0o644)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)


def _create_temp(directory: str, name: str) -> tuple[int, str]:
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{os.getpid()}-{next(_temp_numbers)}.tmp")
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o644), tmp
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)  # the directory first, only when missing
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {directory}")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def file_digest(path: Path) -> tuple[str, int]:
    """The sha256 hex digest and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> str:
    return file_digest(path)[0]
