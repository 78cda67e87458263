"""Unpack an sdist into an empty directory under limits, refusing anything that could leave it.

Over the ~500 lines a module here aims for: tar and zip are held to the same limits, counted
on the bytes really written, and the same filter rules; the two readers share them.
"""

from __future__ import annotations

import calendar
import contextlib
import gzip
import io
import os
import re
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO

from bot.errors import one_line
from bot.fsutil import CHUNK


@dataclass(frozen=True)
class Limits:
    """How much an sdist may unpack to; each is checked while streaming, not from headers alone."""

    # The largest honest sdists on the upstream index unpack to a few hundred MB: 1 GiB leaves
    # them room to grow while a bomb is stopped long before it fills a build host's disk.
    max_bytes: int = 1 << 30
    # The biggest single files honest sdists carry (vendored archives, test data) are tens of
    # MB; half of max_bytes lets one such file be most of the sdist.
    max_member_bytes: int = 512 << 20
    # Sdists that vendor whole C and C++ libraries hold tens of thousands of files. Each member
    # costs an inode and tens of microseconds, so a flood of millions is stopped in seconds.
    max_members: int = 100_000
    # Source code and data compress 3-10 times, and rarely 30; a bomb compresses about 1,000 times
    # with gzip or deflate. Checked only past ratio_floor, so a small sdist holding one very
    # compressible file (a table of zeros, a generated lexer) still unpacks.
    max_ratio: float = 100.0
    ratio_floor: int = 64 << 20
    # Tar headers (PAX records, GNU long names and sparse maps) are read into memory whole before a
    # member is seen; honest ones are a few hundred bytes.
    max_header_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value < 0 or (value == 0 and field.name != "ratio_floor"):
                raise ValueError(f"Limits.{field.name} must be positive, not {value}")


DEFAULT_LIMITS = Limits()


class ExtractionRefused(Exception):
    """An sdist was refused or could not be read; the message is one line, fit for a build log."""


# No honest sdist holds more, and each one costs memory while the archive is read.
_MAX_GLOBAL_PAX_FIELDS = 64
_MAX_LINK_TARGET = 4096  # PATH_MAX on Linux
_MAX_SYMLINK_HOPS = 40  # Linux's MAXSYMLINKS: a path the kernel would not follow is refused too

# What the archive modules raise for a corrupt, truncated or forged archive (a forged offset
# reaches seek as ValueError or OverflowError, an encrypted zip is a RuntimeError).
_READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    OverflowError,
    NotImplementedError,
    RuntimeError,
    struct.error,
)

_DRIVE = re.compile(r"[A-Za-z]:")
_SEPARATORS = re.compile(r"[/\\]")
_TAR_SPECIAL = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
}
_ZIP_SPECIAL = {
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
}


def extract_sdist(sdist: Path, dest: Path, limits: Limits = DEFAULT_LIMITS) -> int:
    """Unpack sdist (.tar.gz, .tgz or .zip) into the empty dir dest; return its newest mtime."""
    # The newest mtime, in epoch seconds, is the build's SOURCE_DATE_EPOCH; 0 when there is none.
    lower = sdist.name.lower()
    unpack: Callable[[IO[bytes], _Tree], float | None]
    if lower.endswith((".tar.gz", ".tgz")):
        unpack = _unpack_tar
    elif lower.endswith(".zip"):
        unpack = _unpack_zip
    else:
        raise ExtractionRefused(f"unsupported sdist format: {sdist.name}")
    if any(dest.iterdir()):
        # Everything under dest is removed on refusal, so it must hold nothing of anyone else's.
        raise ValueError(f"{dest} is not empty")
    try:
        with open(sdist, "rb") as fp:
            tree = _Tree(dest, sdist.name, limits, os.fstat(fp.fileno()).st_size)
            newest = unpack(fp, tree)
            tree.finish()
    except BaseException as exc:
        _clear(dest)
        if isinstance(exc, ExtractionRefused) or not isinstance(exc, _READ_ERRORS):
            raise
        raise ExtractionRefused(f"cannot read sdist {sdist.name}: {one_line(exc)}") from exc
    return 0 if newest is None else int(newest)


def _clear(dest: Path) -> None:
    with os.scandir(dest) as scan:
        entries = list(scan)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


# --- tar ------------------------------------------------------------------------------------------


class _Streaming(tarfile.TarFile):
    """A TarFile whose member list the reader may empty, so memory does not grow per member."""

    members: list[tarfile.TarInfo]  # set by TarFile.__init__; typeshed leaves it out


class _Meter:
    """The decompressed tar stream; while headers are read, refuses reading more than a budget."""

    def __init__(self, raw: gzip.GzipFile, budget: int) -> None:
        self._raw = raw
        self._budget = budget
        self.left: int | None = budget

    def headers_next(self) -> None:
        self.left = self._budget

    def data_next(self) -> None:
        # Member data is counted by _Tree.file against the size limits instead.
        self.left = None

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        if self.left is not None:
            self.left -= len(data)
            if self.left < 0:
                raise ExtractionRefused(
                    f"sdist refused: a member's headers are larger than {_size(self._budget)}"
                    " (limit max_header_bytes, configurable)"
                )
        return data

    def write(self, b: bytes, /) -> int:
        raise io.UnsupportedOperation("write")

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("seek")

    def close(self) -> None:
        pass


def _unpack_tar(fp: IO[bytes], tree: _Tree) -> float | None:
    limits = tree.limits
    newest: float | None = None
    with gzip.GzipFile(fileobj=fp, mode="rb") as gz:
        meter = _Meter(gz, limits.max_header_bytes)
        # "r|": one member at a time, front to back, so a member count or a bomb is met as it
        # comes instead of after getmembers() has read (and held) the whole archive.
        with _Streaming.open(fileobj=meter, mode="r|") as tar:
            count = 0
            while (member := tar.next()) is not None:
                tar.members.clear()
                count += 1
                if count > limits.max_members:
                    raise _too_many(limits)
                # Global PAX headers accumulate for the whole archive; git archive writes one.
                if len(tar.pax_headers) > _MAX_GLOBAL_PAX_FIELDS:
                    raise ExtractionRefused(
                        f"sdist refused: more than {_MAX_GLOBAL_PAX_FIELDS} global PAX fields"
                    )
                newest = member.mtime if newest is None else max(newest, member.mtime)
                _unpack_tar_member(tar, member, tree, meter)
                meter.headers_next()
    return newest


def _unpack_tar_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, tree: _Tree, meter: _Meter
) -> None:
    name = member.name
    parts = _safe_parts(name)
    if parts is None:
        raise _unsafe(name)
    # The data filter (PEP 706) gives the verdict on links, devices and FIFOs and the mode to
    # write with (no setuid, setgid or sticky bits, no group or other write, the owner's exec bit
    # kept). It judges each link against the disk as it stands when the link is written, so a
    # later link can turn an earlier one out of the tree (3.11.7 lets "a -> b/../.." then
    # "b -> .." through); _Tree judges every link again against the whole archive.
    try:
        safe = tarfile.data_filter(member, str(tree.dest))
    except tarfile.FilterError as exc:
        raise _unsafe(name, _filter_reason(member, exc)) from exc
    if member.isreg():
        src = tar.extractfile(member)
        if src is None:  # tarfile returns None only for non-regular members
            raise _unsafe(name, "special file")
        meter.data_next()
        with src:
            tree.file(parts, name, src, safe.mode, member.mtime, member.size)
    elif member.isdir():
        tree.directory(parts, name, member.mtime)
    elif member.issym():
        tree.symlink(parts, name, member.linkname, member.mtime)
    elif member.islnk():
        tree.hardlink(parts, name, member.linkname)
    else:  # the data filter refuses these already
        raise _unsafe(name, _TAR_SPECIAL.get(member.type, "special file"))


def _filter_reason(member: tarfile.TarInfo, exc: tarfile.FilterError) -> str:
    if isinstance(exc, tarfile.AbsoluteLinkError | tarfile.LinkOutsideDestinationError):
        return f"link to {_shown(member.linkname)} leaves the tree"
    if isinstance(exc, tarfile.SpecialFileError):
        return _TAR_SPECIAL.get(member.type, "special file")
    return "outside the tree"


# --- zip ------------------------------------------------------------------------------------------


def _unpack_zip(fp: IO[bytes], tree: _Tree) -> float | None:
    limits = tree.limits
    # ZipFile reads the whole central directory into objects before anything can be counted
    # (about 500 bytes each), so the records are counted first, from the bytes.
    if _zip_records_beyond(fp, tree.archive_size, limits.max_members):
        raise _too_many(limits)
    newest: float | None = None
    with zipfile.ZipFile(fp) as zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise _too_many(limits)
        for info in infos:
            mtime = calendar.timegm((*info.date_time, 0, 0, 0))
            newest = mtime if newest is None else max(newest, mtime)
            _unpack_zip_member(zf, info, tree, mtime)
    return newest


def _unpack_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, tree: _Tree, mtime: int) -> None:
    name = info.filename
    # Zip names use "/" only (APPNOTE 4.4.17); a backslash is a separator to Windows tools, so a
    # name holding one unpacks differently there and no honest sdist has it.
    parts = None if "\\" in name else _safe_parts(name)
    if parts is None:
        raise _unsafe(name)
    mode = info.external_attr >> 16  # the Unix st_mode, where the writer recorded one
    kind = stat.S_IFMT(mode)
    if info.is_dir() or kind == stat.S_IFDIR:
        tree.directory(parts, name, mtime)
    elif kind == stat.S_IFLNK:
        # Unix zip tools store a symlink as an entry whose data is the target; it is made a real
        # link, as unzip does, once _Tree has found it stays in the tree.
        with zf.open(info) as src:
            raw = src.read(_MAX_LINK_TARGET + 1)
        if len(raw) > _MAX_LINK_TARGET:
            raise _unsafe(name, "link target longer than PATH_MAX")
        tree.symlink(parts, name, os.fsdecode(raw), mtime)
    elif kind in (0, stat.S_IFREG):
        # As the data filter does for tar: no setuid, setgid, sticky or group/other write bits,
        # the owner's exec bit kept; no recorded mode (a DOS-made zip) is 0o644.
        perm = mode & 0o755 if mode & 0o777 else 0o644
        if not perm & 0o100:
            perm &= ~0o111
        with zf.open(info) as src:
            tree.file(parts, name, src, perm | 0o600, mtime, info.file_size)
    else:
        raise _unsafe(name, _ZIP_SPECIAL.get(kind, "special file"))


_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_LENGTHS = struct.Struct("<3H")  # name, extra and comment lengths, at offset 28


def _zip_records_beyond(fp: IO[bytes], size: int, limit: int) -> bool:
    """Whether the central directory declares or holds more than limit records."""
    # The same walk ZipFile makes (it trusts the directory's size, not its count), without
    # building anything; an archive this cannot make sense of is left to ZipFile to reject.
    tail_size = min(size, _EOCD.size + 0xFFFF)
    fp.seek(size - tail_size)
    tail = fp.read(tail_size)
    # As ZipFile looks: a record without a comment at the very end, else the last signature.
    at = len(tail) - _EOCD.size
    if at < 0 or tail[at : at + 4] != b"PK\x05\x06" or tail[-2:] != b"\0\0":
        at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        return False
    _, _, _, _, count, cd_size, _, _ = _EOCD.unpack_from(tail, at)
    cd_end = size - tail_size + at
    if cd_end >= _EOCD64_LOCATOR.size + _EOCD64.size:
        fp.seek(cd_end - _EOCD64_LOCATOR.size - _EOCD64.size)
        head = fp.read(_EOCD64.size + _EOCD64_LOCATOR.size)
        if head[_EOCD64.size : _EOCD64.size + 4] == b"PK\x06\x07" and head[:4] == b"PK\x06\x06":
            _, _, _, _, _, _, _, count, cd_size, _ = _EOCD64.unpack_from(head)
            cd_end -= _EOCD64.size + _EOCD64_LOCATOR.size
    if count > limit:
        return True
    if cd_size > cd_end:
        return False
    fp.seek(cd_end - cd_size)
    directory = fp.read(cd_size)
    pos = records = 0
    while pos + 46 <= len(directory) and directory[pos : pos + 4] == b"PK\x01\x02":
        pos += 46 + sum(_CENTRAL_LENGTHS.unpack_from(directory, pos + 28))
        records += 1
        if records > limit:
            return True
    return False


# --- the tree being written -----------------------------------------------------------------------


class _Tree:
    """What this extraction has written under dest: bytes so far, and where its links lead."""

    def __init__(self, dest: Path, label: str, limits: Limits, archive_size: int) -> None:
        self.dest = dest
        self.label = label
        self.limits = limits
        self.archive_size = max(archive_size, 1)
        self.total = 0
        # Only this extraction writes under dest, so these are the truth about it; links are
        # resolved against them instead of the disk.
        self.links: dict[tuple[str, ...], str] = {}
        self.files: set[tuple[str, ...]] = set()
        self.dirs: list[tuple[Path, float]] = []

    def directory(self, parts: tuple[str, ...], name: str, mtime: float) -> None:
        if not parts:  # "./", the root itself
            return
        path = self._path(parts, name)
        if parts in self.links:
            raise _unsafe(name, "a directory over a symlink")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise self._clash(name) from exc
        self.dirs.append((path, mtime))

    def file(
        self,
        parts: tuple[str, ...],
        name: str,
        src: IO[bytes],
        mode: int,
        mtime: float,
        declared: int,
    ) -> None:
        # The header's size refuses early; the count while copying is what holds, since a
        # header may lie.
        self._check(name, declared, self.total + declared)
        path = self._prepare(parts, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
            written = 0
            while chunk := src.read(CHUNK):
                # Checked before writing, so the disk never holds more than a limit allows.
                self._check(name, written + len(chunk), self.total + len(chunk))
                out.write(chunk)
                written += len(chunk)
                self.total += len(chunk)
            out.flush()
            os.fchmod(out.fileno(), mode)
            # mtimes as in the sdist: Cython and make compare them to decide what to regenerate.
            _set_mtime(out.fileno(), mtime)
        self.files.add(parts)

    def symlink(self, parts: tuple[str, ...], name: str, target: str, mtime: float) -> None:
        self._path(parts, name)
        if (
            not target
            or "\0" in target
            or target.startswith("/")
            or self._resolve((*parts[:-1], target)) is None
        ):
            raise _unsafe(name, f"link to {_shown(target)} leaves the tree")
        path = self._prepare(parts, name)
        os.symlink(target, path)
        self.links[parts] = target
        _set_mtime(path, mtime, follow_symlinks=False)

    def hardlink(self, parts: tuple[str, ...], name: str, target: str) -> None:
        # tar names a hard link's target from the archive root; only a regular file this sdist
        # has already written is accepted, so a link can neither leave nor pass through a symlink.
        target_parts = _safe_parts(target)
        if target_parts is None or target_parts not in self.files:
            raise _unsafe(name, f"link to {_shown(target)} is not a file earlier in the sdist")
        path = self._prepare(parts, name)
        os.link(self.dest.joinpath(*target_parts), path, follow_symlinks=False)
        self.files.add(parts)

    def finish(self) -> None:
        # A later link can change where an earlier one leads ("a -> b/../.." then "b -> .."),
        # so every link is judged again against the final tree.
        for parts, target in self.links.items():
            if self._resolve((*parts[:-1], target)) is None:
                raise _unsafe("/".join(parts), f"link to {_shown(target)} leaves the tree")
        # Last, and deepest first, since writing inside a directory changes its mtime.
        for path, mtime in reversed(self.dirs):
            _set_mtime(path, mtime, follow_symlinks=False)

    def _check(self, name: str, member_bytes: int, total: int) -> None:
        limits = self.limits
        if member_bytes > limits.max_member_bytes:
            raise ExtractionRefused(
                f"sdist refused: {_shown(name)} unpacks to more than"
                f" {_size(limits.max_member_bytes)} (limit max_member_bytes, configurable)"
            )
        if total > limits.max_bytes:
            raise ExtractionRefused(
                f"sdist refused: unpacks to more than {_size(limits.max_bytes)}"
                " (limit max_bytes, configurable)"
            )
        if total > limits.ratio_floor and total > limits.max_ratio * self.archive_size:
            raise ExtractionRefused(
                f"sdist refused: unpacks to more than {limits.max_ratio:g} times its"
                f" {_size(self.archive_size)} (limit max_ratio, configurable)"
            )

    def _path(self, parts: tuple[str, ...], name: str) -> Path:
        # Nothing is written through a symlink: tar and zip tools store a linked directory's
        # contents under their real path, so an honest sdist never names a path inside a link.
        for i in range(1, len(parts)):
            if parts[:i] in self.links:
                raise _unsafe(name, "inside a symlink")
        return self.dest.joinpath(*parts)

    def _prepare(self, parts: tuple[str, ...], name: str) -> Path:
        """Make parts' parents and remove an earlier member of the same name; return its path."""
        if not parts:
            raise _unsafe(name)
        path = self._path(parts, name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            st = os.lstat(path)
        except FileNotFoundError:
            return path
        except (FileExistsError, NotADirectoryError) as exc:
            raise self._clash(name) from exc
        if stat.S_ISDIR(st.st_mode):
            raise self._clash(name)
        # Replaced, not written through: the old entry may be a link or share a hard link's inode.
        os.unlink(path)
        self.files.discard(parts)
        self.links.pop(parts, None)
        return path

    def _clash(self, name: str) -> ExtractionRefused:
        # A file where a directory must be, or the other way round: tar and zip would each
        # unpack it differently, so it is an archive that cannot be read as meant.
        return ExtractionRefused(
            f"cannot read sdist {self.label}: {_shown(name)} clashes with an earlier member"
        )

    def _resolve(self, path: Sequence[str]) -> tuple[str, ...] | None:
        """Where path (parts relative to dest) leads, following this sdist's links; None if out."""
        todo = [p for part in reversed(path) for p in reversed(part.split("/"))]
        here: list[str] = []
        hops = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not here:
                    return None
                here.pop()
                continue
            here.append(part)
            target = self.links.get(tuple(here))
            if target is not None:
                hops += 1
                if hops > _MAX_SYMLINK_HOPS or target.startswith("/"):
                    return None
                here.pop()
                todo.extend(reversed(target.split("/")))
        return tuple(here)


# --- helpers --------------------------------------------------------------------------------------


def _safe_parts(name: str) -> tuple[str, ...] | None:
    """Name's parts under dest; None if it is absolute, names a drive or climbs with ".."."""
    # The data filter strips a leading "/" instead of refusing it; no honest sdist holds an
    # absolute path, a drive or "..", so all are refused before anything is written. Backslashes
    # count as separators here because Windows tools read them so.
    if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in _SEPARATORS.split(name):
        return None
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _set_mtime(path: int | Path, mtime: float, *, follow_symlinks: bool = True) -> None:
    # As tarfile does, a time the filesystem cannot hold is not worth refusing the sdist for.
    with contextlib.suppress(OSError, OverflowError, ValueError):
        os.utime(path, (mtime, mtime), follow_symlinks=follow_symlinks)


def _too_many(limits: Limits) -> ExtractionRefused:
    return ExtractionRefused(
        f"sdist refused: more than {limits.max_members} members (limit max_members, configurable)"
    )


def _unsafe(name: str, reason: str | None = None) -> ExtractionRefused:
    why = f" ({reason})" if reason else ""
    return ExtractionRefused(f"unsafe path in sdist: {_shown(name)}{why}")


def _shown(text: str) -> str:
    # Names come from the archive; a newline in one must not break the one-line message.
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{int(n)} bytes"
