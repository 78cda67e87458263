"""Atomic writes: whole files or none, readable by a server, no temp files left behind."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import pytest

from bot import fsutil


def test_a_write_creates_its_directory_and_a_world_readable_file(tmp_path: Path) -> None:
    old = os.umask(0o077)  # a strict umask must not hide pages from a web server
    try:
        target = tmp_path / "a" / "b" / "page.json"
        fsutil.atomic_write_bytes(target, b"{}\n")
        fsutil.atomic_write_bytes(target, b"[]\n", durable=False)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"[]\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["page.json"]


def test_a_leftover_temp_file_of_a_dead_writer_is_stepped_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fsutil, "_temp_numbers", itertools.count())
    leftover = tmp_path / f".page.json.{os.getpid()}-0.tmp"
    leftover.write_bytes(b"half a page")
    fsutil.atomic_write_bytes(tmp_path / "page.json", b"whole")
    assert (tmp_path / "page.json").read_bytes() == b"whole"
    assert leftover.read_bytes() == b"half a page"  # not ours to remove or reuse


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "page.json"
    target.write_bytes(b"old")
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        fsutil.atomic_write_bytes(tmp_path / "dir", b"new")  # rename onto a directory fails
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "page.json"]

