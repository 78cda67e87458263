"""The registry cache: a cached load is the uncached one, and a stale cache is never trusted."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bot import registry, registry_cache
from bot.errors import RegistryError

GOOD = "project: {name}\nmaintainers:\n  - alice\nconsent: https://example.invalid/issues/{n}\n"
OLD_NS = 1_600_000_000 * 10**9  # 2020: far outside the racy window


def write(directory: Path, name: str, text: str | bytes, *, backdate: bool = True) -> Path:
    """An entry file; backdated so the cache may keep it (a fresh file is racy)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    if backdate:
        os.utime(path, ns=(OLD_NS, OLD_NS))
    return path


def mixed_registry(directory: Path) -> None:
    """Valid entries, each kind of per-file problem, a project enrolled twice, and noise."""
    for n in range(5):
        write(directory, f"proj-{n}.yaml", GOOD.format(name=f"proj-{n}", n=n))
    write(directory, "broken.yaml", "project: broken\nmaintainers: [alice\nconsent: x\n")
    write(directory, "schema.yml", "project: schema\nmaintainers: alice\nconsent: ftp://x\n")
    write(directory, "latin.yaml", b"project: caf\xe9\n")
    # Enrolled twice: also WS120 for the second file's name.
    write(directory, "twice.yaml", GOOD.format(name="twice", n=90))
    write(directory, "twice-again.yaml", GOOD.format(name="Twice", n=91))
    write(directory, "notes.txt", "not an entry\n")
    (directory / "folder.yaml").mkdir()
    (directory / "dangling.yaml").symlink_to(directory / "nowhere.yaml")
    (directory / "loop.yaml").symlink_to(directory / "loop.yaml")


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files parsed, in order, by any load."""
    seen: list[Path] = []
    real = registry._load_entry

    def counting(path: Path, text: str | None = None) -> registry._Loaded:
        seen.append(path)
        return real(path, text)

    # Both loads, the uncached one (bot.registry) and the cached one (bot.registry_cache).
    monkeypatch.setattr(registry, "_load_entry", counting)
    monkeypatch.setattr(registry_cache, "_load_entry", counting)
    return seen


def test_cached_load_equals_uncached(tmp_path: Path, parses: list[Path]) -> None:
    reg_dir, cache = tmp_path / "registry", tmp_path / "state" / "registry-cache.json"
    mixed_registry(reg_dir)
    uncached = registry.load_directory(reg_dir)
    codes = {p.code for p in uncached.problems}
    assert {"WS100", "WS112", "WS120", "WS121", "WS140"} <= codes
    assert any(p.code == "WS100" and p.line == 3 for p in uncached.problems)
    parses.clear()

    assert registry.load_directory(reg_dir, cache=cache) == uncached  # cold: writes the cache
    assert len(parses) == len(uncached.files) and cache.is_file()
    parses.clear()
    assert registry.load_directory(reg_dir, cache=cache) == uncached  # warm: parses nothing
    assert parses == []


def test_edits_additions_and_deletions(tmp_path: Path, parses: list[Path]) -> None:
    reg_dir, cache = tmp_path / "registry", tmp_path / "registry-cache.json"
    mixed_registry(reg_dir)
    registry.load_directory(reg_dir, cache=cache)
    edited = write(reg_dir, "proj-1.yaml", GOOD.format(name="proj-1", n=1) + "skip: paused\n")
    added = write(reg_dir, "proj-9.yaml", GOOD.format(name="proj-9", n=9))
    (reg_dir / "proj-2.yaml").unlink()
    (reg_dir / "twice-again.yaml").unlink()  # twice.yaml is valid again, though not re-parsed
    write(reg_dir, "broken.yaml", "project: [\n")  # same mtime as before: the size differs
    parses.clear()

    cached = registry.load_directory(reg_dir, cache=cache)
    assert sorted(parses) == sorted([edited, added, reg_dir / "broken.yaml"])
    parses.clear()
    assert cached == registry.load_directory(reg_dir)
    assert cached.get("twice").path.name == "twice.yaml"
    assert cached.get("proj-1").skip == "paused"
    assert sorted(json.loads(cache.read_text())["files"]) == sorted(map(str, cached.files))


def test_no_change_writes_nothing(tmp_path: Path) -> None:
    reg_dir, cache = tmp_path / "registry", tmp_path / "registry-cache.json"
    mixed_registry(reg_dir)
    registry.load_directory(reg_dir, cache=cache)
    os.utime(cache, ns=(OLD_NS, OLD_NS))
    before = cache.stat()
    registry.load_directory(reg_dir, cache=cache)
    after = cache.stat()
    assert (after.st_mtime_ns, after.st_ino) == (OLD_NS, before.st_ino)


def tamper(cache: Path, **stamp: object) -> None:
    """Rename the cached proj-0 to 'tampered' (visible if trusted) and change the stamp."""
    document = json.loads(cache.read_text())
    for record in document["files"].values():
        fields = record[5]
        if fields is not None and fields[0] == "proj-0":
            fields[0] = "tampered"
    document["stamp"].update(stamp)
    cache.write_text(json.dumps(document))


def test_a_trusted_cache_is_used_as_is(tmp_path: Path) -> None:
    """The control for the tests below: a tampered cache with a good stamp is believed."""
    reg_dir, cache = tmp_path / "registry", tmp_path / "registry-cache.json"
    mixed_registry(reg_dir)
    registry.load_directory(reg_dir, cache=cache)
    tamper(cache)
    assert "tampered" in {e.project for e in registry.load_directory(reg_dir, cache=cache).entries}


def _missing(cache: Path) -> None:
    cache.unlink()


def _truncated(cache: Path) -> None:
    tamper(cache)
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])


def _old_format(cache: Path) -> None:
    tamper(cache, format=registry_cache.CACHE_FORMAT - 1)


def _old_wheelstock(cache: Path) -> None:
    tamper(cache, wheelstock="0.0.1")


def _other_code(cache: Path) -> None:
    tamper(cache, code="0" * 64)


def _other_parser(cache: Path) -> None:
    tamper(cache, **{"ruamel.yaml": "0.0.1"})


def _deeply_nested(cache: Path) -> None:
    cache.write_text("[" * 100_000)


def _not_utf8(cache: Path) -> None:
    cache.write_bytes(b"\xff\xfe\x00garbage")


def _wrong_shape(cache: Path) -> None:
    document = json.loads(cache.read_text())
    document["files"] = list(document["files"])
    cache.write_text(json.dumps(document))


def _a_directory(cache: Path) -> None:
    cache.unlink()
    cache.mkdir()
    (cache / "x").write_text("{}")


@pytest.mark.parametrize(
    "spoil",
    [
        _missing,
        _truncated,
        _old_format,
        _old_wheelstock,
        _other_code,
        _other_parser,
        _deeply_nested,
        _not_utf8,
        _wrong_shape,
        _a_directory,
    ],
)
def test_a_bad_cache_is_ignored_and_rebuilt(
    tmp_path: Path, parses: list[Path], spoil: Callable[[Path], None]
) -> None:
    reg_dir, cache = tmp_path / "registry", tmp_path / "registry-cache.json"
    mixed_registry(reg_dir)
    uncached = registry.load_directory(reg_dir)
    registry.load_directory(reg_dir, cache=cache)
    spoil(cache)
    parses.clear()
    if cache.is_dir():  # unreadable, and in the way of the rebuilt one: one line, no traceback
        with pytest.raises(RegistryError, match="cannot write the registry cache"):
            registry.load_directory(reg_dir, cache=cache)
        return
    assert registry.load_directory(reg_dir, cache=cache) == uncached
    assert len(parses) == len(uncached.files)
    parses.clear()
    assert registry.load_directory(reg_dir, cache=cache) == uncached  # rebuilt: warm again
    assert parses == []


def test_a_damaged_record_is_parsed_again(tmp_path: Path, parses: list[Path]) -> None:
    reg_dir, cache = tmp_path / "registry", tmp_path / "registry-cache.json"
    mixed_registry(reg_dir)
    uncached = registry.load_directory(reg_dir)
    registry.load_directory(reg_dir, cache=cache)
    document = json.loads(cache.read_text())
    document["files"][str(reg_dir / "proj-0.yaml")][5].append("one field too many")
    document["files"][str(reg_dir / "proj-1.yaml")] = "not a record"
    cache.write_text(json.dumps(document))
    parses.clear()
    assert registry.load_directory(reg_dir, cache=cache) == uncached
    assert parses == [reg_dir / "proj-0.yaml", reg_dir / "proj-1.yaml"]


def test_racy_edit_is_seen(tmp_path: Path) -> None:
    """Rewritten within one mtime tick at the same size: the stat alone cannot tell."""
    reg_dir, cache = tmp_path / "registry", tmp_path / "registry-cache.json"
    write(reg_dir, "other.yaml", GOOD.format(name="other", n=1))
    path = write(reg_dir, "demo.yaml", GOOD.format(name="demo", n=1), backdate=False)
    first = registry.load_directory(reg_dir, cache=cache)
    assert first.get("demo").consent.endswith("/1")
    assert str(path) not in json.loads(cache.read_text())["files"]  # too fresh to keep
    mtime = path.stat().st_mtime_ns
    path.write_text(GOOD.format(name="demo", n=2))  # same size, same inode
    os.utime(path, ns=(mtime, mtime))  # as a filesystem with a coarse clock would leave it
    assert registry.load_directory(reg_dir, cache=cache).get("demo").consent.endswith("/2")


def test_a_restored_mtime_does_not_hide_an_edit(tmp_path: Path) -> None:
    """Same inode, size and (restored, old) mtime, as after touch -d: the ctime tells."""
    reg_dir, cache = tmp_path / "registry", tmp_path / "registry-cache.json"
    path = write(reg_dir, "demo.yaml", GOOD.format(name="demo", n=1))
    assert registry.load_directory(reg_dir, cache=cache).get("demo").consent.endswith("/1")
    assert str(path) in json.loads(cache.read_text())["files"]
    write(reg_dir, "demo.yaml", GOOD.format(name="demo", n=2))
    assert registry.load_directory(reg_dir, cache=cache).get("demo").consent.endswith("/2")


def test_a_racy_file_is_kept_once_it_settles(tmp_path: Path, parses: list[Path]) -> None:
    reg_dir, cache = tmp_path / "registry", tmp_path / "registry-cache.json"
    path = write(reg_dir, "demo.yaml", GOOD.format(name="demo", n=1), backdate=False)
    registry.load_directory(reg_dir, cache=cache)
    registry.load_directory(reg_dir, cache=cache)
    assert parses == [path, path]
    os.utime(path, ns=(OLD_NS, OLD_NS))
    registry.load_directory(reg_dir, cache=cache)
    parses.clear()
    registry.load_directory(reg_dir, cache=cache)
    assert parses == []


def test_missing_directory_with_cache(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no such registry directory"):
        registry.load_directory(tmp_path / "nope", cache=tmp_path / "cache.json")
