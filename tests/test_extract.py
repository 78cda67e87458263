"""Tests for bot.build.extract: honest sdists, bombs, member floods, lying headers, unsafe paths."""

from __future__ import annotations

import calendar
import functools
import io
import os
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.build import extract
from bot.build.extract import DEFAULT_LIMITS, ExtractionRefused, Limits, extract_sdist

MTIME = 1_700_000_000
MIB = 1 << 20
ZEROS = bytes(MIB)
# A raw deflate stream may be cut into pieces, each ending in a full flush (no back-references
# across it); the pieces concatenate into one stream, so gigabytes of zeros cost one compression.
END = b"\x03\x00"  # an empty final block


def deflate(data: bytes, level: int = 9) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)


@functools.cache
def zero_mib() -> bytes:
    return deflate(ZEROS)


@functools.cache
def zeros_crc(mib: int) -> int:
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(ZEROS, crc)
    return crc


def gzip_of(pieces: list[bytes]) -> bytes:
    """A gzip file around raw deflate pieces."""
    # The trailer's CRC is left 0: tarfile stops at the end-of-archive blocks without reading it,
    # and a pass over gigabytes to compute it would only slow the tests down.
    return b"\x1f\x8b\x08\x00\0\0\0\0\x02\xff" + b"".join(pieces) + END + bytes(8)


def header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, MTIME
    return info.tobuf(tarfile.GNU_FORMAT)


# --- writing archives -----------------------------------------------------------------------------


def member(
    name: str,
    data: bytes | None = b"",
    *,
    kind: bytes = tarfile.REGTYPE,
    linkname: str = "",
    mode: int = 0o644,
    mtime: float = MTIME,
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, mode, mtime
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    if data is not None:
        info.size = len(data)
    return info, data


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


DATE = (2023, 11, 14, 22, 13, 20)


def zip_entry(
    name: str,
    data: bytes = b"",
    *,
    mode: int | None = 0o100644,
    date: tuple[int, int, int, int, int, int] = DATE,
) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name, date_time=date)
    info.compress_type = zipfile.ZIP_DEFLATED
    if mode is None:  # as Windows tools write: DOS attributes only (the archive bit)
        info.create_system, info.external_attr = 0, 0x20
    else:
        info.create_system, info.external_attr = 3, mode << 16
    return info, data


def write_zip(path: Path, entries: list[tuple[zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


@dataclass(frozen=True)
class Raw:
    """A zip entry written byte by byte: its headers may say anything."""

    name: str
    stored: bytes  # as it sits in the archive (deflated unless method is 0)
    size: int  # the uncompressed size both headers declare
    crc: int
    method: int = zipfile.ZIP_DEFLATED
    shares: int | None = None  # index of an earlier entry whose local record this one points at


LOCAL = struct.Struct("<4s2B4HL2L2H")
CENTRAL = struct.Struct("<4s4B4HL2L5H2L")


def write_raw_zip(path: Path, entries: list[Raw], *, declared: int | None = None) -> Path:
    """Write a zip by hand (zip64 end records when there are more than 65,535 entries)."""
    body, central, offsets = bytearray(), bytearray(), []
    for entry in entries:
        name = entry.name.encode()
        if entry.shares is None:
            offsets.append(len(body))
            body += LOCAL.pack(
                b"PK\x03\x04", 20, 0, 0, entry.method, 0, 0x21,
                entry.crc, len(entry.stored), entry.size, len(name), 0,
            )  # fmt: skip
            body += name + entry.stored
        else:
            offsets.append(offsets[entry.shares])
        central += CENTRAL.pack(
            b"PK\x01\x02", 20, 3, 20, 0, 0, entry.method, 0, 0x21,
            entry.crc, len(entry.stored), entry.size, len(name), 0, 0, 0, 0,
            0o100644 << 16, offsets[-1],
        )  # fmt: skip
        central += name
    count = len(entries) if declared is None else declared
    end = b""
    if count > 0xFFFF:
        zip64_at = len(body) + len(central)
        end += struct.pack(
            "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(central), len(body)
        )
        end += struct.pack("<4sLQL", b"PK\x06\x07", 0, zip64_at, 1)
    short = min(count, 0xFFFF)
    end += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, short, short, len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path


# --- checking what is left behind -----------------------------------------------------------------


def tree(root: Path) -> list[str]:
    """Every path under root, links not followed."""
    found = []
    for top, dirs, files in os.walk(root):
        found += [os.path.relpath(os.path.join(top, n), root) for n in dirs + files]
    return sorted(found)


def bytes_under(root: Path) -> int:
    seen: dict[int, int] = {}
    for top, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(top, name))
            if stat.S_ISREG(st.st_mode):
                seen[st.st_ino] = st.st_size
    return sum(seen.values())


def empty(path: Path) -> None:
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path


@pytest.fixture
def peak(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes on disk under dest at each refusal, just before they are removed."""
    seen: list[int] = []
    clear = extract._clear

    def spy(dest: Path) -> None:
        seen.append(bytes_under(dest))
        clear(dest)

    monkeypatch.setattr(extract, "_clear", spy)
    return seen


def refused(sdist: Path, dest: Path, match: str | None, limits: Limits = DEFAULT_LIMITS) -> str:
    """Extract sdist expecting a refusal; check nothing is left under dest nor anywhere else."""
    before = tree(sdist.parent)
    with pytest.raises(ExtractionRefused, match=match) as caught:
        extract_sdist(sdist, dest, limits)
    assert list(dest.iterdir()) == []
    assert tree(sdist.parent) == before
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- honest sdists --------------------------------------------------------------------------------


def test_honest_tar_gz_unpacks_with_content_modes_links_and_mtimes(
    tmp_path: Path, dest: Path
) -> None:
    init = "src/demo/__init__.py"
    sdist = write_tar(
        tmp_path / "demo-1.0.tar.gz",
        [
            member("demo-1.0", None, kind=tarfile.DIRTYPE, mode=0o755, mtime=MTIME - 50),
            member("demo-1.0/pyproject.toml", b"[project]\n", mtime=MTIME - 10),
            member(f"demo-1.0/{init}", b"x = 1\n", mtime=MTIME),
            member("demo-1.0/tools/run.sh", b"#!/bin/sh\n", mode=0o775, mtime=MTIME - 20),
            member("demo-1.0/README", None, kind=tarfile.SYMTYPE, linkname="docs/README.rst"),
            member("demo-1.0/docs/README.rst", b"hello\n", mtime=MTIME - 30),
            member("demo-1.0/copy.py", None, kind=tarfile.LNKTYPE, linkname=f"demo-1.0/{init}"),
        ],
    )
    assert extract_sdist(sdist, dest) == MTIME
    top = dest / "demo-1.0"
    assert (top / "pyproject.toml").read_bytes() == b"[project]\n"
    assert (top / "src/demo/__init__.py").read_bytes() == b"x = 1\n"
    assert (top / "README").is_symlink() and (top / "README").read_text() == "hello\n"
    assert os.readlink(top / "README") == "docs/README.rst"
    assert os.path.samefile(top / "copy.py", top / "src/demo/__init__.py")
    # As the data filter does: group and other write dropped, the owner's exec bit kept.
    assert stat.S_IMODE((top / "tools/run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((top / "pyproject.toml").stat().st_mode) == 0o644
    assert (top / "pyproject.toml").stat().st_mtime == MTIME - 10
    assert (top / "tools/run.sh").stat().st_mtime == MTIME - 20
    assert top.stat().st_mtime == MTIME - 50


def test_honest_zip_unpacks_with_content_modes_links_and_mtimes(
    tmp_path: Path, dest: Path
) -> None:
    sdist = write_zip(
        tmp_path / "demo-1.0.zip",
        [
            zip_entry("demo-1.0/", mode=0o40755),
            zip_entry("demo-1.0/pyproject.toml", b"[project]\n", date=(2023, 1, 2, 3, 4, 6)),
            zip_entry("demo-1.0/run.sh", b"#!/bin/sh\n", mode=0o100775),
            zip_entry("demo-1.0/dos.txt", b"made on DOS\n", mode=None),
            zip_entry("demo-1.0/docs/index.rst", b"hello\n"),
            zip_entry("demo-1.0/README", b"docs/index.rst", mode=0o120777),
        ],
    )
    newest = calendar.timegm(DATE)
    assert extract_sdist(sdist, dest) == newest
    top = dest / "demo-1.0"
    assert (top / "pyproject.toml").read_bytes() == b"[project]\n"
    assert (top / "pyproject.toml").stat().st_mtime == calendar.timegm((2023, 1, 2, 3, 4, 6))
    assert stat.S_IMODE((top / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((top / "dos.txt").stat().st_mode) == 0o644
    assert os.readlink(top / "README") == "docs/index.rst"
    assert (top / "README").read_text() == "hello\n"


def test_an_empty_archive_gives_epoch_zero(tmp_path: Path, dest: Path) -> None:
    assert extract_sdist(write_tar(tmp_path / "demo-1.0.tgz", []), dest) == 0
    assert extract_sdist(write_zip(tmp_path / "demo-1.0.zip", []), dest) == 0


@pytest.mark.parametrize(
    ("mode", "kept"), [(0o4755, 0o755), (0o2755, 0o755), (0o1777, 0o755), (0o6664, 0o644)]
)
def test_setuid_setgid_and_sticky_bits_are_dropped(
    tmp_path: Path, dest: Path, mode: int, kept: int
) -> None:
    tar = write_tar(tmp_path / "demo-1.0.tar.gz", [member("demo-1.0/x", b"x", mode=mode)])
    extract_sdist(tar, dest)
    assert stat.S_IMODE((dest / "demo-1.0/x").stat().st_mode) == kept
    zipped = write_zip(tmp_path / "demo-1.0.zip", [zip_entry("demo-1.0/x", b"x", mode=mode)])
    other = tmp_path / "other"
    other.mkdir()
    extract_sdist(zipped, other)
    assert stat.S_IMODE((other / "demo-1.0/x").stat().st_mode) == kept


def test_a_later_member_replaces_an_earlier_link_instead_of_writing_through_it(
    tmp_path: Path, dest: Path
) -> None:
    sdist = write_tar(
        tmp_path / "demo-1.0.tar.gz",
        [
            member("demo-1.0/target", b"original"),
            member("demo-1.0/x", None, kind=tarfile.SYMTYPE, linkname="target"),
            member("demo-1.0/x", b"replaced"),
        ],
    )
    extract_sdist(sdist, dest)
    assert (dest / "demo-1.0/target").read_bytes() == b"original"
    assert not (dest / "demo-1.0/x").is_symlink()
    assert (dest / "demo-1.0/x").read_bytes() == b"replaced"


# --- unsafe members -------------------------------------------------------------------------------

TAR_REFUSALS: dict[str, Callable[[Path], list[tuple[tarfile.TarInfo, bytes | None]]]] = {
    "dotdot": lambda tmp: [member("demo-1.0/../../evil", b"pwned")],
    "absolute": lambda tmp: [member(str(tmp / "evil"), b"pwned")],
    "drive": lambda tmp: [member("C:/evil", b"pwned")],
    "backslash-dotdot": lambda tmp: [member("demo-1.0\\..\\..\\evil", b"pwned")],
    "symlink-absolute": lambda tmp: [
        member("demo-1.0/passwd", None, kind=tarfile.SYMTYPE, linkname="/etc/passwd")
    ],
    "symlink-out": lambda tmp: [
        member("demo-1.0/up", None, kind=tarfile.SYMTYPE, linkname="../../..")
    ],
    "hardlink-absolute": lambda tmp: [
        member("demo-1.0/passwd", None, kind=tarfile.LNKTYPE, linkname="/etc/passwd")
    ],
    "hardlink-out": lambda tmp: [
        member("demo-1.0/passwd", None, kind=tarfile.LNKTYPE, linkname="../etc/passwd")
    ],
    "hardlink-not-yet-written": lambda tmp: [
        member("demo-1.0/a", None, kind=tarfile.LNKTYPE, linkname="demo-1.0/b"),
        member("demo-1.0/b", b"b"),
    ],
    "char-device": lambda tmp: [member("demo-1.0/null", None, kind=tarfile.CHRTYPE)],
    "block-device": lambda tmp: [member("demo-1.0/sda", None, kind=tarfile.BLKTYPE)],
    "fifo": lambda tmp: [member("demo-1.0/pipe", None, kind=tarfile.FIFOTYPE)],
    "symlink-loop": lambda tmp: [
        member("demo-1.0/a", None, kind=tarfile.SYMTYPE, linkname="b"),
        member("demo-1.0/b", None, kind=tarfile.SYMTYPE, linkname="a"),
    ],
    "through-symlink": lambda tmp: [
        member("demo-1.0/d", None, kind=tarfile.SYMTYPE, linkname="sub"),
        member("demo-1.0/d/x", b"x"),
    ],
    # Each link stays inside when written, and the data filter lets both through, but once
    # b -> .. exists, a -> b/../.. leads two levels above dest.
    "link-redirected-by-a-later-link": lambda tmp: [
        member("demo-1.0/a", None, kind=tarfile.SYMTYPE, linkname="b/../.."),
        member("demo-1.0/b", None, kind=tarfile.SYMTYPE, linkname=".."),
    ],
}


@pytest.mark.parametrize("case", TAR_REFUSALS)
def test_unsafe_tar_member_is_refused_leaving_nothing(
    tmp_path: Path, dest: Path, case: str
) -> None:
    honest = [member("demo-1.0/pyproject.toml", b"[project]\n")]
    sdist = write_tar(tmp_path / "demo-1.0.tar.gz", honest + TAR_REFUSALS[case](tmp_path))
    refused(sdist, dest, "^unsafe path in sdist: ")


def test_unsafe_name_message_is_the_member_name(tmp_path: Path, dest: Path) -> None:
    sdist = write_tar(tmp_path / "demo-1.0.tar.gz", [member("demo-1.0/../../evil", b"x")])
    assert refused(sdist, dest, None) == "unsafe path in sdist: demo-1.0/../../evil"
    device = member("demo-1.0/null", None, kind=tarfile.CHRTYPE)
    sdist = write_tar(tmp_path / "demo-1.0.tar.gz", [device])
    assert refused(sdist, dest, None) == "unsafe path in sdist: demo-1.0/null (character device)"
    sdist = write_tar(tmp_path / "demo-1.0.tar.gz", [member("../x\nforged line", b"x")])
    assert refused(sdist, dest, None) == "unsafe path in sdist: ../x\\nforged line"


ZIP_REFUSALS: dict[str, tuple[str, bytes, int]] = {
    "dotdot": ("demo-1.0/../../evil", b"pwned", 0o100644),
    "absolute": ("/tmp/evil", b"pwned", 0o100644),
    "backslash": ("demo-1.0\\..\\..\\evil", b"pwned", 0o100644),
    "backslash-only": ("demo-1.0\\evil", b"pwned", 0o100644),
    "drive": ("C:/evil", b"pwned", 0o100644),
    "drive-relative": ("c:evil", b"pwned", 0o100644),
    "symlink-absolute": ("demo-1.0/passwd", b"/etc/passwd", 0o120777),
    "symlink-out": ("demo-1.0/up", b"../../..", 0o120777),
    "symlink-through-dotdot": ("demo-1.0/up", b"../x/../..", 0o120777),
    "fifo": ("demo-1.0/pipe", b"", 0o10644),
    "char-device": ("demo-1.0/null", b"", 0o20644),
    "block-device": ("demo-1.0/sda", b"", 0o60644),
    "socket": ("demo-1.0/sock", b"", 0o140644),
}


@pytest.mark.parametrize("case", ZIP_REFUSALS)
def test_unsafe_zip_entry_is_refused_leaving_nothing(
    tmp_path: Path, dest: Path, case: str
) -> None:
    honest = [zip_entry("demo-1.0/pyproject.toml", b"[project]\n")]
    name, data, mode = ZIP_REFUSALS[case]
    sdist = write_zip(tmp_path / "demo-1.0.zip", [*honest, zip_entry(name, data, mode=mode)])
    refused(sdist, dest, "^unsafe path in sdist: ")


def test_zip_links_are_judged_against_the_final_tree(tmp_path: Path, dest: Path) -> None:
    sdist = write_zip(
        tmp_path / "demo-1.0.zip",
        [
            zip_entry("demo-1.0/a", b"b/../..", mode=0o120777),
            zip_entry("demo-1.0/b", b"..", mode=0o120777),
        ],
    )
    refused(sdist, dest, r"^unsafe path in sdist: demo-1\.0/a \(link to b/\.\./\.\. leaves")


# --- limits ---------------------------------------------------------------------------------------


def test_limits_are_honoured_as_configured(tmp_path: Path, dest: Path, peak: list[int]) -> None:
    ten = Limits(max_member_bytes=10)
    for size, ok in ((10, True), (11, False)):
        tar = write_tar(tmp_path / "demo-1.0.tar.gz", [member("demo-1.0/f", b"x" * size)])
        zipped = write_zip(tmp_path / "demo-1.0.zip", [zip_entry("demo-1.0/f", b"x" * size)])
        for sdist in (tar, zipped):
            if ok:
                extract_sdist(sdist, dest, ten)
                assert (dest / "demo-1.0/f").stat().st_size == size
                empty(dest)
            else:
                message = refused(sdist, dest, None, ten)
                assert message == (
                    "sdist refused: demo-1.0/f unpacks to more than 10 bytes"
                    " (limit max_member_bytes, configurable)"
                )
    assert peak == [0, 0]


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_total_and_member_count_limits(tmp_path: Path, dest: Path, suffix: str) -> None:
    files = {f"demo-1.0/f{i}": b"x" * 6 for i in range(3)}

    def sdist() -> Path:
        path = tmp_path / f"demo-1.0{suffix}"
        if suffix == ".zip":
            return write_zip(path, [zip_entry(n, d) for n, d in files.items()])
        return write_tar(path, [member(n, d) for n, d in files.items()])

    total = r"^sdist refused: unpacks to more than 17 bytes \(limit max_bytes, configurable\)$"
    refused(sdist(), dest, total, Limits(max_bytes=17))
    extract_sdist(sdist(), dest, Limits(max_bytes=18))
    empty(dest)
    members = r"^sdist refused: more than 2 members \(limit max_members, configurable\)$"
    refused(sdist(), dest, members, Limits(max_members=2))
    extract_sdist(sdist(), dest, Limits(max_members=3))


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_ratio_applies_only_past_its_floor(tmp_path: Path, dest: Path, suffix: str) -> None:
    path = tmp_path / f"demo-1.0{suffix}"
    if suffix == ".zip":
        sdist = write_zip(path, [zip_entry("demo-1.0/table", bytes(4 * MIB))])
    else:
        sdist = write_tar(path, [member("demo-1.0/table", bytes(4 * MIB))])
    assert sdist.stat().st_size < 40 * 1024  # about 1000:1
    extract_sdist(sdist, dest)  # the default floor, 64 MiB, lets a small sdist of zeros through
    empty(dest)
    message = refused(sdist, dest, None, Limits(ratio_floor=MIB))
    assert message.startswith("sdist refused: unpacks to more than 100 times its ")
    assert message.endswith(" KiB (limit max_ratio, configurable)")


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="Limits.max_members must be positive, not 0"):
        Limits(max_members=0)
    Limits(ratio_floor=0)


# --- bombs ----------------------------------------------------------------------------------------

GIB2 = 2048  # MiB


def tar_bomb(path: Path, mib: int = GIB2) -> Path:
    """One member of mib MiB of zeros; the archive is about 2 MB for 2 GiB."""
    first = deflate(header("demo-1.0/zeros", mib * MIB))
    path.write_bytes(gzip_of([first, *[zero_mib()] * mib, deflate(bytes(1024))]))
    return path


def tar_bomb_of_members(path: Path, count: int = GIB2) -> Path:
    """count members of 1 MiB of zeros each, so no one header is out of bounds."""
    pieces = []
    for i in range(count):
        pieces += [deflate(header(f"demo-1.0/z{i:04d}", MIB)), zero_mib()]
    path.write_bytes(gzip_of([*pieces, deflate(bytes(1024))]))
    return path


def zip_bomb(path: Path, mib: int = GIB2) -> Path:
    stored = zero_mib() * mib + END
    return write_raw_zip(path, [Raw("demo-1.0/zeros", stored, mib * MIB, zeros_crc(mib))])


def zip_bomb_of_members(path: Path, count: int = GIB2) -> Path:
    stored = zero_mib() + END
    entries = [Raw(f"demo-1.0/z{i:04d}", stored, MIB, zeros_crc(1)) for i in range(count)]
    return write_raw_zip(path, entries)


@pytest.mark.parametrize("bomb", [tar_bomb, zip_bomb], ids=["tar.gz", "zip"])
@pytest.mark.parametrize(
    ("limits", "match"),
    [
        (
            Limits(),
            r"^sdist refused: demo-1\.0/zeros unpacks to more than 512 MiB"
            r" \(limit max_member_bytes, configurable\)$",
        ),
        (
            Limits(max_bytes=4 << 30, max_member_bytes=4 << 30),
            r"^sdist refused: unpacks to more than 100 times its 2\.\d+ MiB"
            r" \(limit max_ratio, configurable\)$",
        ),
    ],
    ids=["defaults", "only-the-ratio"],
)
def test_a_2_gib_bomb_is_refused_from_its_header(
    tmp_path: Path,
    dest: Path,
    peak: list[int],
    bomb: Callable[[Path], Path],
    limits: Limits,
    match: str,
) -> None:
    suffix = ".tar.gz" if bomb is tar_bomb else ".zip"
    sdist = bomb(tmp_path / f"demo-1.0{suffix}")
    assert sdist.stat().st_size < 3 * MIB
    refused(sdist, dest, match, limits)
    assert peak == [0]


@pytest.mark.parametrize("bomb", [tar_bomb_of_members, zip_bomb_of_members], ids=["tar.gz", "zip"])
def test_a_2_gib_bomb_of_small_members_is_stopped_with_default_limits(
    tmp_path: Path, dest: Path, peak: list[int], bomb: Callable[[Path], Path]
) -> None:
    suffix = ".tar.gz" if bomb is tar_bomb_of_members else ".zip"
    sdist = bomb(tmp_path / f"demo-1.0{suffix}")
    ratio = r"^sdist refused: unpacks to more than 100 times its .* \(limit max_ratio, config"
    refused(sdist, dest, ratio)
    assert 64 * MIB < peak[0] <= 100 * sdist.stat().st_size


@pytest.mark.parametrize("limits", [Limits(), Limits(max_bytes=32 * MIB, max_ratio=1e9)])
def test_overlapping_zip_entries_count_every_time(
    tmp_path: Path, dest: Path, peak: list[int], limits: Limits
) -> None:
    # One 1 MiB local record, 2,048 central records pointing at it: the archive is 140 KB and
    # says 2 GiB. ZipFile refuses to read overlapping entries since 3.11.8 and 3.12.2
    # (gh-109858); before that only the limits stop it.
    stored = zero_mib() + END
    entries = [Raw("demo-1.0/z", stored, MIB, zeros_crc(1))]
    entries += [Raw("demo-1.0/z", stored, MIB, zeros_crc(1), shares=0)] * (GIB2 - 1)
    sdist = write_raw_zip(tmp_path / "demo-1.0.zip", entries)
    assert sdist.stat().st_size < 200_000
    match = r"^(sdist refused: unpacks to more than |cannot read sdist .*: Overlapped entries)"
    refused(sdist, dest, match, limits)
    assert peak[0] <= MIB


def test_zip_header_declaring_less_than_the_data_inflates_to(
    tmp_path: Path, dest: Path, peak: list[int]
) -> None:
    # The central and local headers both say 10 bytes; the data inflates to 1 MiB.
    stored = zero_mib() + END
    sdist = write_raw_zip(tmp_path / "demo-1.0.zip", [Raw("demo-1.0/f", stored, 10, zeros_crc(1))])
    limits = Limits(max_member_bytes=99)
    refused(sdist, dest, r"^cannot read sdist demo-1\.0\.zip: Bad CRC-32", limits)
    # zipfile stops at the declared 10 bytes and checks the CRC in that same read.
    assert peak == [0]


def test_a_member_stream_longer_than_its_header_is_cut_off_mid_copy(
    tmp_path: Path, dest: Path, peak: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # tarfile and zipfile read no more than a header declares, so a lying stream (a GNU sparse
    # member gone wrong, say) is simulated: the copy, not the header, must be what holds.
    sdist = write_tar(tmp_path / "demo-1.0.tar.gz", [member("demo-1.0/f", b"0123456789")])
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: io.BytesIO(bytes(5 * MIB)))
    limits = Limits(max_member_bytes=3 * MIB)
    refused(sdist, dest, r"^sdist refused: demo-1\.0/f unpacks to more than 3 MiB", limits)
    # Checked before each 1 MiB chunk is written, never after.
    assert peak == [3 * MIB]


# --- member floods --------------------------------------------------------------------------------


def tar_flood(path: Path, count: int, *, then: bytes = b"") -> Path:
    """count empty files, then `then` (raw tar bytes)."""
    # tarfile takes ~20 us a header to write; patching a template's name and checksum takes 1.
    template = bytearray(header("demo-1.0/f000000"))
    rest = sum(template) - sum(b"000000") - sum(template[148:156]) + sum(b" " * 8)
    headers = bytearray()
    for i in range(count):
        digits = b"%06d" % i
        template[10:16] = digits
        template[148:156] = b"%06o\0 " % (rest + sum(digits))
        headers += template
    path.write_bytes(gzip_of([deflate(bytes(headers) + then, 1), deflate(bytes(1024))]))
    return path


def test_200000_tar_members_are_refused_as_they_stream(
    tmp_path: Path, dest: Path, peak: list[int]
) -> None:
    sdist = tar_flood(tmp_path / "demo-1.0.tar.gz", 200_000)
    # A low limit: with the default, the 100,000 files written first make this a slow test.
    limits = Limits(max_members=100)
    refused(sdist, dest, r"^sdist refused: more than 100 members \(limit max_members", limits)
    assert peak == [0]


def test_tar_reading_stops_at_the_member_limit(tmp_path: Path, dest: Path) -> None:
    # After member 300 comes a PAX header of 8 MiB, refused if it is ever read. (A corrupt
    # header would not do: past the first, tarfile takes one as the end of the archive.)
    beyond = header("././@PaxHeader", 8 * MIB, tarfile.XHDTYPE)
    sdist = tar_flood(tmp_path / "demo-1.0.tar.gz", 300, then=beyond + bytes(8 * MIB))
    refused(sdist, dest, "^sdist refused: more than 100 members", Limits(max_members=100))
    refused(sdist, dest, "limit max_header_bytes, configurable", Limits(max_members=500))


@pytest.mark.parametrize("declared", [None, 1], ids=["honest-count", "lying-count"])
def test_200000_zip_members_are_refused_before_zipfile_reads_them(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch, declared: int | None
) -> None:
    entries = [Raw(f"demo-1.0/f{i:06d}", b"", 0, 0, method=0) for i in range(200_000)]
    sdist = write_raw_zip(tmp_path / "demo-1.0.zip", entries, declared=declared)

    def unread(*args: object, **kwargs: object) -> None:
        raise AssertionError("ZipFile was opened")

    monkeypatch.setattr(zipfile, "ZipFile", unread)
    refused(sdist, dest, r"^sdist refused: more than 100000 members \(limit max_members")


# --- headers --------------------------------------------------------------------------------------


def test_an_oversized_pax_header_is_refused_before_it_is_held(tmp_path: Path, dest: Path) -> None:
    info, data = member("demo-1.0/f", b"x")
    info.pax_headers = {"comment": "x" * (2 * MIB)}
    sdist = write_tar(tmp_path / "demo-1.0.tar.gz", [(info, data)])
    match = r"^sdist refused: a member's headers are larger than 1 MiB \(limit max_header_bytes,"
    refused(sdist, dest, match + r" configurable\)$")
    extract_sdist(sdist, dest, Limits(max_header_bytes=3 * MIB))


def test_global_pax_fields_cannot_pile_up(tmp_path: Path, dest: Path) -> None:
    pieces = []
    for i in range(100):
        pieces.append(_global_header({f"wheelstock.k{i}": "v"}))
        pieces.append(header(f"demo-1.0/f{i}"))
    sdist = tmp_path / "demo-1.0.tar.gz"
    sdist.write_bytes(gzip_of([deflate(b"".join(pieces)), deflate(bytes(1024))]))
    refused(sdist, dest, r"^sdist refused: more than 64 global PAX fields$")


def _global_header(fields: dict[str, str]) -> bytes:
    records = b""
    for key, value in fields.items():
        body = f" {key}={value}\n".encode()
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n += 1
        records += str(n).encode() + body
    head = header("pax_global_header", len(records), tarfile.XGLTYPE)
    return head + records + bytes(-len(records) % 512)


# --- unreadable and unsupported -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content", "match"),
    [
        ("demo-1.0.tar.gz", b"not a tarball", r"^cannot read sdist demo-1\.0\.tar\.gz: "),
        ("demo-1.0.tar.gz", gzip_of([b"\xff\xff"]), r"^cannot read sdist demo-1\.0\.tar\.gz: "),
        ("demo-1.0.zip", b"not a zip", r"^cannot read sdist demo-1\.0\.zip: "),
        ("demo-1.0.tar.bz2", b"", r"^unsupported sdist format: demo-1\.0\.tar\.bz2$"),
        ("demo-1.0.whl", b"", r"^unsupported sdist format: demo-1\.0\.whl$"),
    ],
)
def test_unreadable_or_unsupported_sdist(
    tmp_path: Path, dest: Path, filename: str, content: bytes, match: str
) -> None:
    sdist = tmp_path / filename
    sdist.write_bytes(content)
    refused(sdist, dest, match)


def test_a_truncated_tar_gz_leaves_nothing(tmp_path: Path, dest: Path, peak: list[int]) -> None:
    sdist = write_tar(
        tmp_path / "demo-1.0.tar.gz",
        [member(f"demo-1.0/f{i}", os.urandom(4096)) for i in range(20)],
    )
    sdist.write_bytes(sdist.read_bytes()[: sdist.stat().st_size // 2])
    refused(sdist, dest, r"^cannot read sdist demo-1\.0\.tar\.gz: ")
    assert peak[0] > 0  # some members were written, and removed


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (member("demo-1.0/x/y", b"y"), member("demo-1.0/x", b"x")),
        (member("demo-1.0/x", b"x"), member("demo-1.0/x", None, kind=tarfile.DIRTYPE)),
        (member("demo-1.0/x", b"x"), member("demo-1.0/x/y", b"y")),
    ],
    ids=["file-over-directory", "directory-over-file", "file-under-file"],
)
def test_a_file_where_a_directory_is_cannot_be_read(
    tmp_path: Path,
    dest: Path,
    first: tuple[tarfile.TarInfo, bytes | None],
    second: tuple[tarfile.TarInfo, bytes | None],
) -> None:
    sdist = write_tar(tmp_path / "demo-1.0.tar.gz", [first, second])
    match = r"^cannot read sdist demo-1\.0\.tar\.gz: demo-1\.0/x(/y)? clashes with an earlier"
    refused(sdist, dest, match)


def test_a_zip_crc_error_is_cannot_read(tmp_path: Path, dest: Path) -> None:
    sdist = write_zip(
        tmp_path / "demo-1.0.zip",
        [zip_entry("demo-1.0/a", b"a" * 100), zip_entry("demo-1.0/b", b"b" * 100)],
    )
    data = bytearray(sdist.read_bytes())
    at = data.index(b"PK\x01\x02", 0) + 16  # the first central record's CRC
    data[at] ^= 0xFF
    sdist.write_bytes(bytes(data))
    refused(sdist, dest, r"^cannot read sdist demo-1\.0\.zip: Bad CRC-32 for file 'demo-1\.0/a'$")


def test_dest_must_be_empty(tmp_path: Path, dest: Path) -> None:
    (dest / "mine").write_text("keep")
    sdist = write_tar(tmp_path / "demo-1.0.tar.gz", [member("demo-1.0/../x", b"x")])
    with pytest.raises(ValueError, match="is not empty"):
        extract_sdist(sdist, dest)
    assert (dest / "mine").read_text() == "keep"
