"""The registry's per-file cache: an unchanged entry file is not parsed again.

Every tick loads the whole registry, and parsing is what costs (25,000 files: 11 s cold,
0.44 s from the cache). Each file's own result is kept, keyed by its path and stat; what
depends on several files is computed afresh by ``bot.registry``, so the result is the same
Registry an uncached load gives.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import packaging
import ruamel.yaml

from bot import __version__
from bot.errors import RegistryError
from bot.fsutil import atomic_write_bytes
from bot.gcutil import gc_paused
from bot.registry import Entry, Problem, Registry, _assemble, _load_entry, _Loaded

# The registry cache. JSON, not pickle: an Entry is strings, tuples of strings and booleans
# besides its path, and a Problem two ints and two strings besides its path, so a few lines
# rebuild both exactly, and reading the file can never run code, whoever wrote it.
CACHE_FORMAT = 1
# A file changed within the same mtime tick as it was read keeps its stat (same size, same
# mtime on a coarse-clock filesystem): git's "racy" entries. Files whose mtime is this close
# to the start of the load that read them are parsed again next time instead of cached. The
# load's start is earlier than any read, so the window covers every read; 2 s covers FAT's
# 2-second mtimes and the 1-second ones of ext3 and HFS+.
RACY_NS = 2_000_000_000
# Entry's fields as a record stores them, in order; the path is the file's own.
_ENTRY_FIELDS = tuple(f.name for f in dataclasses.fields(Entry) if f.name != "path")
_PATH_AT = [f.name for f in dataclasses.fields(Entry)].index("path")

# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): ctime too, as git does, because tools
# that restore an mtime (touch -d, cp -p, rsync -t) cannot restore it.
_Signature = tuple[int, int, int, int, int]
# The stat errors for which Path.is_file() says False instead of raising, as registry_files has it.
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def load_cached(directory: Path, cache: Path) -> Registry:
    """Load a registry directory; with ``cache``, parse only the files changed since last time.

    Every tick loads the whole registry, and parsing is what costs (about 0.4 ms a file with
    ruamel's round-trip loader): the cache keeps each file's own result, keyed by its path and
    stat, and the result is the same Registry an uncached load gives.
    """
    started = time.time_ns()
    listing = _stat_files(directory)
    with gc_paused():
        old = _read_cache(cache)
        hits = [_cache_hit(old.get(str(path)), path, signature) for path, signature in listing]
    results = [
        hit if hit is not None else _load_entry(path)
        for (path, _), hit in zip(listing, hits, strict=True)
    ]
    kept = _kept(listing, results, hits, old, started)
    if kept is not None:
        _write_cache(cache, kept)
    with gc_paused():
        return _assemble([path for path, _ in listing], results)


def _kept(
    listing: Sequence[tuple[Path, _Signature]],
    results: Sequence[_Loaded],
    hits: Sequence[_Loaded | None],
    old: Mapping[str, list[Any]],
    started: int,
) -> dict[str, list[Any]] | None:
    """The records the cache should now hold, or None when they are the ones it holds."""
    kept: dict[str, list[Any]] = {}
    parsed = False  # a file parsed and kept
    for (path, signature), result, hit in zip(listing, results, hits, strict=True):
        if signature[3] >= started - RACY_NS:
            continue  # racy: parsed again next time
        key = str(path)
        record = old[key] if hit is not None else _record(signature, result, path)
        parsed = parsed or (hit is None and record is not None)
        if record is not None:
            kept[key] = record
    return kept if parsed or kept.keys() != old.keys() else None


def _stat_files(directory: Path) -> list[tuple[Path, _Signature]]:
    """``registry_files(directory)`` with each file's stat: its one stat a file, kept.

    The stat is taken before the file is read, so a change after it is never cached under it.
    """
    if not directory.is_dir():
        raise RegistryError(f"{directory}: no such registry directory")
    found: list[tuple[Path, _Signature]] = []
    for path in directory.iterdir():
        if path.suffix not in (".yaml", ".yml"):
            continue
        try:
            st = path.stat()
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
            continue
        if stat.S_ISREG(st.st_mode):
            found.append((path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)))
    # One directory, so by name is the order of sorted(paths), without comparing Paths.
    found.sort(key=lambda pair: pair[0].name)
    return found


@functools.cache
def _cache_stamp() -> dict[str, object]:
    """What a cache must have been written by: this format, this wheelstock, this code.

    The version alone is not enough while it stays a .dev version across commits, so the
    digest of this module (the schema, the checks and the record layout) is part of it too,
    and the parser's and packaging's versions, whose messages and rules the results hold.
    """
    try:
        code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    except OSError:  # pragma: no cover - run from a zip: the version has to do
        code = ""
    return {
        "format": CACHE_FORMAT,
        "wheelstock": __version__,
        "code": code,
        "ruamel.yaml": ruamel.yaml.__version__,
        "packaging": packaging.__version__,
    }


def _read_cache(cache: Path) -> dict[str, list[Any]]:
    """The cached records by path; empty (so rebuilt) if missing, truncated, unreadable or stale."""
    try:
        document = json.loads(cache.read_bytes())
        if not isinstance(document, dict) or document.get("stamp") != _cache_stamp():
            return {}
        files = document["files"]
        return {k: r for k, r in files.items() if isinstance(r, list) and len(r) == 8}
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return {}


def _write_cache(cache: Path, kept: Mapping[str, list[Any]]) -> None:
    """Write the cacheable records, atomically, so a killed tick leaves the old cache or this."""
    document = {"stamp": _cache_stamp(), "files": kept}
    # ensure_ascii: a YAML escape can put a lone surrogate in a value, which UTF-8 cannot hold.
    data = json.dumps(document, separators=(",", ":")).encode("ascii")
    try:
        atomic_write_bytes(cache, data)
    except OSError as exc:
        # Loud, not skipped: a cache that can never be written would slow every tick unseen.
        reason = exc.strerror or str(exc)
        raise RegistryError(f"{cache}: cannot write the registry cache: {reason}") from exc


def _record(signature: _Signature, result: _Loaded, path: Path) -> list[Any] | None:
    """One file's stat and result as JSON: signature, entry fields, problems, claim.

    Paths are left out, being the file's own; a result that names another is not cached.
    """
    entry, problems, claim = result
    if (entry is not None and entry.path != path) or any(p.path != path for p in problems):
        return None  # pragma: no cover - _load_entry names only the file it reads
    fields = [getattr(entry, name) for name in _ENTRY_FIELDS] if entry is not None else None
    found = [[p.line, p.column, p.code, p.message] for p in problems]
    return [*signature, fields, found, list(claim) if claim is not None else None]


def _cache_hit(record: list[Any] | None, path: Path, signature: _Signature) -> _Loaded | None:
    """The cached result if the file's stat is the one it was cached with, else None."""
    if record is None or tuple(record[:5]) != signature:
        return None
    try:
        fields, found, claim = record[5:]
        entry = None
        if fields is not None:
            if len(fields) != len(_ENTRY_FIELDS):
                return None
            values: list[Any] = [tuple(v) if isinstance(v, list) else v for v in fields]
            values.insert(_PATH_AT, path)
            entry = Entry(*values)
        problems = [Problem(path, int(line), int(col), code, msg) for line, col, code, msg in found]
        if claim is not None:
            claim = (str(claim[0]), int(claim[1]), int(claim[2]))
    except (ValueError, TypeError, IndexError):
        return None  # a damaged record: parse the file instead
    return entry, problems, claim
