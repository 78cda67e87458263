"""Tests for bot.metadata against real wheels and sdists served on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import html
import io
import json
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tenacity import wait_none

from bot.errors import UpstreamError
from bot.metadata import (
    CACHE_FORMAT,
    LEGACY_BACKEND,
    LEGACY_REQUIRES,
    MetadataCache,
    ProjectMetadata,
    fetch_metadata,
)
from bot.simple import DistFile
from bot.upstream import Upstream, make_client

from projects import fixture_sdist, make_project
from projects import make_sdist as build_sdist
from projects import make_wheel as build_wheel
from support import JSON_V1, UpstreamServer

REQUIRES = (
    "requests>=2.0",
    'tomli>=1.1; python_version < "3.11"',
    'pytest[testing]>=7; extra == "test"',
    "rich[jupyter]",
)

PYPROJECT = """\
[build-system]
requires = ["hatchling>=1.20", "hatch-vcs"]
build-backend = "hatchling.build"

[project]
name = "demo-pkg"
version = "1.0"
"""


def core_metadata(
    name: str = "demo_pkg",
    version: str = "1.0",
    requires: tuple[str, ...] = REQUIRES,
    *,
    metadata_version: str = "2.1",
    extra_headers: str = "",
) -> bytes:
    lines = [f"Metadata-Version: {metadata_version}", f"Name: {name}", f"Version: {version}"]
    lines.append("Requires-Python: >=3.9")
    lines += [f"Requires-Dist: {r}" for r in requires]
    lines.append("Provides-Extra: test")
    # The body is not headers: a Requires-Dist line there must not be read.
    text = "\n".join(lines) + "\n" + extra_headers + "\nA description.\nRequires-Dist: body-only\n"
    return text.encode("utf-8")


def make_wheel(
    directory: Path, metadata: bytes, *, name: str = "demo_pkg", version: str = "1.0"
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}-py3-none-any.whl"
    dist_info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "")
        archive.writestr(f"{dist_info}/METADATA", metadata)
        archive.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
        archive.writestr(f"{dist_info}/RECORD", "")
    return path


def make_sdist(
    directory: Path,
    members: dict[str, bytes],
    *,
    name: str = "demo_pkg",
    version: str = "1.0",
) -> Path:
    """A .tar.gz whose members live under `<name>-<version>/` like every sdist."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for member, data in members.items():
            info = tarfile.TarInfo(f"{name}-{version}/{member}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def metadata_file(directory: Path, wheel: Path, data: bytes) -> Path:
    """The PEP 658 file served next to a wheel: `<wheel filename>.metadata`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{wheel.name}.metadata"
    path.write_bytes(data)
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[UpstreamServer]:
    with UpstreamServer(tmp_path / "upstream") as running:
        yield running


@pytest.fixture
def upstream(server: UpstreamServer) -> Iterator[Upstream]:
    with make_client(timeout=10.0) as client:
        yield Upstream(server.url, client, attempts=1, wait=wait_none())


@pytest.fixture
def cache(tmp_path: Path) -> MetadataCache:
    return MetadataCache(tmp_path / "cache")


def dists(server: UpstreamServer, project: str = "demo-pkg") -> list[DistFile]:
    # .metadata files are published as plain files on the test server; a client never lists them.
    return [f for f in server.dist_files(project) if not f.filename.endswith(".metadata")]


def only(server: UpstreamServer, suffix: str) -> DistFile:
    (found,) = [f for f in dists(server) if f.filename.endswith(suffix)]
    return found


def paths(server: UpstreamServer) -> list[str]:
    return [path for _, path in server.requests]


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message


# --- where Requires-Dist comes from -----------------------------------------------------------


def test_wheel_and_sdist(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    server.add_file("demo-pkg", make_wheel(src, core_metadata()))
    server.add_file(
        "demo-pkg",
        make_sdist(
            src,
            {
                "PKG-INFO": core_metadata(requires=("from-pkg-info",)),
                "pyproject.toml": PYPROJECT.encode(),
            },
        ),
    )
    workdir = tmp_path / "work"

    meta = fetch_metadata(upstream, dists(server), "Demo_Pkg", "1.0", cache, workdir=workdir)

    assert meta == ProjectMetadata(
        project="demo-pkg",
        version="1.0",
        requires_dist=REQUIRES,
        requires_python=">=3.9",
        build_requires=("hatchling>=1.20", "hatch-vcs"),
        build_backend="hatchling.build",
        source="wheel",
    )
    assert sorted(paths(server)) == [
        "/files/demo-pkg/demo_pkg-1.0-py3-none-any.whl",
        "/files/demo-pkg/demo_pkg-1.0.tar.gz",
    ]
    # Downloads are read and deleted; nothing is left in the work directory.
    assert list(workdir.iterdir()) == []


def test_only_files_of_the_asked_release_are_used(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    server.add_file("demo-pkg", make_wheel(tmp_path / "a", core_metadata()))
    server.add_file(
        "demo-pkg",
        make_wheel(tmp_path / "b", core_metadata(version="2.0", requires=("new",)), version="2.0"),
    )
    server.add_file("demo-pkg", make_sdist(tmp_path / "b", {"PKG-INFO": b""}, version="2.0"))

    # 1.0.0 is 1.0 (PEP 440); 2.0's files are neither downloaded nor read.
    meta = fetch_metadata(upstream, dists(server), "demo-pkg", "1.0.0", cache, workdir=tmp_path)

    assert meta.requires_dist == REQUIRES
    assert meta.source == "wheel; no sdist: build requirements unknown"
    assert (meta.build_requires, meta.build_backend) == ((), "")
    assert paths(server) == ["/files/demo-pkg/demo_pkg-1.0-py3-none-any.whl"]


def test_sdist_only_reads_pkg_info(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    sdist = make_sdist(
        tmp_path / "src",
        {"PKG-INFO": core_metadata(), "pyproject.toml": PYPROJECT.encode(), "setup.py": b""},
    )
    server.add_file("demo-pkg", sdist)

    meta = fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    assert meta.requires_dist == REQUIRES
    assert meta.requires_python == ">=3.9"
    assert meta.source == "sdist"
    assert meta.build_backend == "hatchling.build"
    assert paths(server) == ["/files/demo-pkg/demo_pkg-1.0.tar.gz"]


def test_an_sdist_already_verified_is_read_where_it_was_kept(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    # The bot keeps each sdist it verified for a PR; reading its metadata must not fetch it
    # again, and a kept copy that is not upstream's file is never trusted.
    members = {"PKG-INFO": core_metadata(), "pyproject.toml": PYPROJECT.encode()}
    sdist = make_sdist(tmp_path / "src", members)
    server.add_file("demo-pkg", sdist)
    kept = tmp_path / "downloads" / "demo-pkg"
    kept.mkdir(parents=True)
    shutil.copyfile(sdist, kept / sdist.name)

    meta = fetch_metadata(
        upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w", downloaded=kept
    )
    assert (meta.source, meta.build_backend) == ("sdist", "hatchling.build")
    assert paths(server) == []
    assert (kept / sdist.name).read_bytes() == sdist.read_bytes()  # still kept for the build

    other = make_sdist(tmp_path / "other", {**members, "setup.py": b"# not upstream's\n"})
    shutil.copyfile(other, kept / sdist.name)
    meta = fetch_metadata(
        upstream,
        dists(server),
        "demo-pkg",
        "1.0",
        MetadataCache(tmp_path / "cache2"),
        workdir=tmp_path / "w",
        downloaded=kept,
    )
    assert meta.build_backend == "hatchling.build"
    assert paths(server) == ["/files/demo-pkg/demo_pkg-1.0.tar.gz"]


def test_sdist_with_dynamic_requires_dist_says_so(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    # PEP 643: Requires-Dist named in Dynamic may change when the wheel is built.
    pkg_info = core_metadata(metadata_version="2.2", extra_headers="Dynamic: Requires-Dist\n")
    server.add_file("demo-pkg", make_sdist(tmp_path, {"PKG-INFO": pkg_info}))

    meta = fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    assert meta.source == "sdist; Requires-Dist dynamic (PEP 643)"
    assert meta.requires_dist == REQUIRES


def test_real_flit_sdist(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    server.add_file("fixture-pkg", fixture_sdist(tmp_path, "fixture-pkg", "0.3"))

    meta = fetch_metadata(
        upstream, dists(server, "fixture-pkg"), "fixture-pkg", "0.3", cache, workdir=tmp_path / "w"
    )

    assert meta.build_requires == ("flit_core>=3.9",)
    assert meta.build_backend == "flit_core.buildapi"
    assert meta.requires_python == ">=3.8"
    assert meta.requires_dist == ()
    assert meta.source == "sdist"


URLS = (
    ("Changelog", "https://example.invalid/demo/changes.html"),
    ("Homepage", "https://example.invalid/demo"),
    ("Source", "https://example.invalid/git/demo"),
)


@pytest.mark.parametrize("kinds", [("sdist",), ("sdist", "wheel")])
def test_real_flit_release_license_and_urls(
    server: UpstreamServer,
    upstream: Upstream,
    cache: MetadataCache,
    tmp_path: Path,
    kinds: tuple[str, ...],
) -> None:
    project = make_project(
        tmp_path / "src", "fixture-pkg", "0.4", license="MIT OR Apache-2.0", urls=URLS
    )
    if "wheel" in kinds:
        server.add_file("fixture-pkg", build_wheel(project, tmp_path / "wheel"))
    server.add_file("fixture-pkg", build_sdist(project, tmp_path / "sdist"))

    meta = fetch_metadata(
        upstream, dists(server, "fixture-pkg"), "fixture-pkg", "0.4", cache, workdir=tmp_path / "w"
    )

    assert meta.source == kinds[-1]
    # flit writes the PEP 639 License-Expression; Project-URL keeps labels as written.
    assert meta.license == "MIT OR Apache-2.0"
    assert meta.project_urls == URLS
    assert cache.get("fixture-pkg", "0.4") == meta


MIT_TEXT = (
    "License: Copyright (c) 2024 Demo Authors\n"
    "        \n"
    "        Permission is hereby granted, free of charge, to any person\n"
)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param("", None, id="nothing declared"),
        pytest.param(
            "License-Expression: Apache-2.0\nLicense: BSD\n"
            "Classifier: License :: OSI Approved :: MIT License\n",
            "Apache-2.0",
            id="PEP 639 expression wins",
        ),
        pytest.param(
            "License: BSD-3-Clause\nClassifier: License :: OSI Approved :: MIT License\n",
            "BSD-3-Clause",
            id="short License field",
        ),
        pytest.param(
            "License: MIT License\n        \n        Permission is hereby granted\n",
            "MIT License",
            id="first line of a license text that starts with its name",
        ),
        pytest.param(
            MIT_TEXT + "Classifier: License :: OSI Approved :: MIT License\n",
            "MIT License",
            id="license text starting with copyright falls back to classifiers",
        ),
        pytest.param(
            "License: UNKNOWN\n"
            "Classifier: Programming Language :: Python\n"
            "Classifier: License :: OSI Approved :: MIT License\n"
            "Classifier: License :: OSI Approved\n"
            "Classifier: License :: OSI Approved :: Apache Software License\n"
            "Classifier: License :: OSI Approved :: MIT License\n",
            "MIT License, Apache Software License",
            id="classifiers joined, deduplicated",
        ),
        pytest.param(f"License: {'x' * 81}\n", None, id="one long line is not a name"),
        pytest.param("Classifier: License :: OSI Approved\n", None, id="no license named"),
    ],
)
def test_license(
    server: UpstreamServer,
    upstream: Upstream,
    cache: MetadataCache,
    tmp_path: Path,
    headers: str,
    expected: str | None,
) -> None:
    server.add_file("demo-pkg", make_wheel(tmp_path, core_metadata(extra_headers=headers)))

    meta = fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    assert meta.license == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param("", (), id="none"),
        pytest.param(
            "Project-URL: Documentation, https://docs.invalid/\n"
            "Project-URL: Change Log , https://example.invalid/log?a=1,2\n"
            "Home-page: https://example.invalid/\n",
            (
                ("Documentation", "https://docs.invalid/"),
                ("Change Log", "https://example.invalid/log?a=1,2"),
                ("Homepage", "https://example.invalid/"),
            ),
            id="file order, home page last, comma in the url",
        ),
        pytest.param(
            "Home-page: https://example.invalid/\nProject-URL: Home, https://example.invalid/\n",
            (("Home", "https://example.invalid/"),),
            id="home page already listed",
        ),
        pytest.param(
            "Home-page: UNKNOWN\nProject-URL: no comma here\nProject-URL: Empty,\n",
            (),
            id="placeholders and malformed entries are dropped",
        ),
    ],
)
def test_project_urls(
    server: UpstreamServer,
    upstream: Upstream,
    cache: MetadataCache,
    tmp_path: Path,
    headers: str,
    expected: tuple[tuple[str, str], ...],
) -> None:
    server.add_file("demo-pkg", make_wheel(tmp_path, core_metadata(extra_headers=headers)))

    meta = fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    assert meta.project_urls == expected


def test_non_ascii_header_values_are_decoded(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    requirement = 'demo-extra; platform_machine == "ärm"'
    server.add_file("demo-pkg", make_wheel(tmp_path, core_metadata(requires=(requirement,))))

    meta = fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    assert meta.requires_dist == (requirement,)


# --- build requirements ([build-system], PEP 517/518) -----------------------------------------


@pytest.mark.parametrize(
    ("members", "requires", "backend"),
    [
        pytest.param(
            {"setup.py": b"from setuptools import setup\nsetup()\n"},
            LEGACY_REQUIRES,
            LEGACY_BACKEND,
            id="setup.py only",
        ),
        pytest.param(
            {"pyproject.toml": b"[tool.black]\nline-length = 99\n"},
            LEGACY_REQUIRES,
            LEGACY_BACKEND,
            id="pyproject without build-system",
        ),
        pytest.param(
            {"pyproject.toml": b'[build-system]\nrequires = ["setuptools>=64", "cython"]\n'},
            ("setuptools>=64", "cython"),
            LEGACY_BACKEND,
            id="build-system without backend",
        ),
        pytest.param(
            {"pyproject.toml": b'[build-system]\nrequires = []\nbuild-backend = "b.api"\n'},
            (),
            "b.api",
            id="empty requires",
        ),
    ],
)
def test_build_system_defaults(
    server: UpstreamServer,
    upstream: Upstream,
    cache: MetadataCache,
    tmp_path: Path,
    members: dict[str, bytes],
    requires: tuple[str, ...],
    backend: str,
) -> None:
    assert LEGACY_REQUIRES == ("setuptools>=40.8.0", "wheel")
    assert LEGACY_BACKEND == "setuptools.build_meta:__legacy__"
    server.add_file("demo-pkg", make_wheel(tmp_path / "w", core_metadata()))
    server.add_file("demo-pkg", make_sdist(tmp_path / "s", {"PKG-INFO": b"", **members}))

    meta = fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "x")

    assert (meta.build_requires, meta.build_backend) == (requires, backend)
    assert meta.source == "wheel"


@pytest.mark.parametrize(
    ("pyproject", "expected"),
    [
        (b"[build-system\n", "pyproject.toml in sdist demo_pkg-1.0.tar.gz is invalid"),
        (b"build-system = 3\n", "build-system is not a table"),
        (b"[build-system]\nbuild-backend = 'x'\n", "build-system.requires is not a list"),
        (b"[build-system]\nrequires = [1]\n", "build-system.requires is not a list"),
        (b"[build-system]\nrequires = []\nbuild-backend = 1\n", "build-backend is not a string"),
        (b"\xff\xfe", "is invalid"),
    ],
)
def test_bad_pyproject_is_an_upstream_error(
    server: UpstreamServer,
    upstream: Upstream,
    cache: MetadataCache,
    tmp_path: Path,
    pyproject: bytes,
    expected: str,
) -> None:
    server.add_file(
        "demo-pkg", make_sdist(tmp_path, {"PKG-INFO": core_metadata(), "pyproject.toml": pyproject})
    )
    with pytest.raises(UpstreamError, match=expected) as caught:
        fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")
    assert_one_line(str(caught.value))
    assert cache.get("demo-pkg", "1.0") is None
    assert list((tmp_path / "w").iterdir()) == []


# --- PEP 658 ----------------------------------------------------------------------------------


def test_pep658_metadata_with_hash_skips_the_wheel(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    data = core_metadata()
    wheel = make_wheel(tmp_path / "src", data)
    server.add_file("demo-pkg", wheel)
    server.add_file("demo-pkg", metadata_file(tmp_path / "src", wheel, data))
    server.add_file(
        "demo-pkg", make_sdist(tmp_path / "src", {"pyproject.toml": PYPROJECT.encode()})
    )
    files = [
        dataclasses.replace(f, core_metadata=f"sha256={hashlib.sha256(data).hexdigest()}")
        if f.is_wheel
        else f
        for f in dists(server)
    ]

    meta = fetch_metadata(upstream, files, "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    assert meta.source == "pep658"
    assert meta.requires_dist == REQUIRES
    assert meta.build_backend == "hatchling.build"
    assert sorted(paths(server)) == [
        "/files/demo-pkg/demo_pkg-1.0-py3-none-any.whl.metadata",
        "/files/demo-pkg/demo_pkg-1.0.tar.gz",
    ]
    assert list((tmp_path / "w").iterdir()) == []


def test_pep658_metadata_without_hash(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    data = core_metadata(requires=("only-in-sidecar",))
    wheel = make_wheel(tmp_path / "src", core_metadata())
    server.add_file("demo-pkg", wheel)
    server.add_file("demo-pkg", metadata_file(tmp_path / "src", wheel, data))
    files = [dataclasses.replace(f, core_metadata="true") for f in dists(server)]

    meta = fetch_metadata(upstream, files, "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    # Different from the wheel's METADATA on purpose, to show which one was read.
    assert meta.requires_dist == ("only-in-sidecar",)
    assert meta.source == "pep658; no sdist: build requirements unknown"
    assert paths(server) == ["/files/demo-pkg/demo_pkg-1.0-py3-none-any.whl.metadata"]


def test_pep658_hash_mismatch_is_an_upstream_error(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    data = core_metadata()
    wheel = make_wheel(tmp_path / "src", data)
    server.add_file("demo-pkg", wheel)
    server.add_file("demo-pkg", metadata_file(tmp_path / "src", wheel, data + b"tampered"))
    files = [
        dataclasses.replace(f, core_metadata=f"sha256={hashlib.sha256(data).hexdigest()}")
        for f in dists(server)
    ]

    with pytest.raises(UpstreamError, match="sha256 mismatch for .*whl.metadata") as caught:
        fetch_metadata(upstream, files, "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    assert_one_line(str(caught.value))
    assert cache.get("demo-pkg", "1.0") is None
    assert list((tmp_path / "w").iterdir()) == []


@pytest.mark.parametrize("core", ["true", "sha256=" + "0" * 64])
def test_pep658_file_missing_is_an_upstream_error(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path, core: str
) -> None:
    server.add_file("demo-pkg", make_wheel(tmp_path, core_metadata()))
    files = [dataclasses.replace(f, core_metadata=core) for f in dists(server)]

    with pytest.raises(UpstreamError, match="HTTP 404") as caught:
        fetch_metadata(upstream, files, "demo-pkg", "1.0", cache, workdir=tmp_path / "w")
    assert_one_line(str(caught.value))


class Pep658Server(UpstreamServer):
    """Lists `<file>.metadata` beside its file as PEP 658/714 does, instead of as a file."""

    def _project_page(self, name: str, entries: list[Any], kind: str) -> tuple[int, str, bytes]:
        suffix = ".metadata"
        sidecars = {
            e.filename[: -len(suffix)]: e.sha256 for e in entries if e.filename.endswith(suffix)
        }
        listed = [e for e in entries if not e.filename.endswith(suffix)]
        status, content_type, body = super()._project_page(name, listed, kind)
        if kind == JSON_V1:
            page = json.loads(body)
            for item in page["files"]:
                if item["filename"] in sidecars:
                    item["core-metadata"] = {"sha256": sidecars[item["filename"]]}
            return status, content_type, json.dumps(page).encode()
        text = body.decode()
        for filename, sha256 in sidecars.items():
            anchor_end = f">{html.escape(filename)}</a>"
            text = text.replace(anchor_end, f' data-core-metadata="sha256={sha256}"{anchor_end}')
        return status, content_type, text.encode()


@pytest.mark.parametrize("mode", ["json", "html"])
def test_pep658_end_to_end_from_the_project_page(
    tmp_path: Path, cache: MetadataCache, mode: str
) -> None:
    data = core_metadata()
    wheel = make_wheel(tmp_path / "src", data)
    with Pep658Server(tmp_path / "up", mode=mode) as srv, make_client(timeout=10.0) as client:
        srv.add_file("demo-pkg", wheel)
        srv.add_file("demo-pkg", metadata_file(tmp_path / "src", wheel, data))
        srv.add_file("demo-pkg", make_sdist(tmp_path / "src", {"PKG-INFO": data}))
        upstream = Upstream(srv.url, client, attempts=1)
        page = upstream.project("demo-pkg")
        meta = fetch_metadata(
            upstream, page.files, "demo-pkg", "1.0", cache, workdir=tmp_path / "w"
        )

    by_name = {f.filename: f for f in page.files}
    assert set(by_name) == {wheel.name, "demo_pkg-1.0.tar.gz"}
    assert by_name[wheel.name].core_metadata == f"sha256={hashlib.sha256(data).hexdigest()}"
    assert by_name["demo_pkg-1.0.tar.gz"].core_metadata is None
    assert meta.source == "pep658"
    assert meta.build_backend == LEGACY_BACKEND
    assert f"/files/demo-pkg/{wheel.name}" not in [p for _, p in srv.requests]


# --- failures ---------------------------------------------------------------------------------


def test_no_files_for_the_release(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    server.add_file("demo-pkg", make_wheel(tmp_path, core_metadata()))
    with pytest.raises(UpstreamError, match=r"^demo-pkg 2\.0 has no wheel or sdist upstream$"):
        fetch_metadata(upstream, dists(server), "demo-pkg", "2.0", cache, workdir=tmp_path / "w")
    assert server.requests == []


def test_invalid_version_is_an_upstream_error(
    upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    with pytest.raises(UpstreamError, match="invalid version 'nightly'"):
        fetch_metadata(upstream, [], "demo-pkg", "nightly", cache, workdir=tmp_path)
    with pytest.raises(UpstreamError, match="invalid project name"):
        fetch_metadata(upstream, [], "../etc", "1.0", cache, workdir=tmp_path)


def test_wheel_hash_mismatch_is_an_upstream_error(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    server.add_file("demo-pkg", make_wheel(tmp_path, core_metadata()))
    files = [dataclasses.replace(f, sha256="0" * 64) for f in dists(server)]
    with pytest.raises(UpstreamError, match="sha256 mismatch for demo_pkg-1.0-py3-none-any.whl"):
        fetch_metadata(upstream, files, "demo-pkg", "1.0", cache, workdir=tmp_path / "w")
    assert list((tmp_path / "w").iterdir()) == []


def test_file_without_a_hash_is_refused(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    server.add_file("demo-pkg", make_wheel(tmp_path, core_metadata()))
    files = [dataclasses.replace(f, sha256=None) for f in dists(server)]
    with pytest.raises(UpstreamError, match="has no sha256 on the index"):
        fetch_metadata(upstream, files, "demo-pkg", "1.0", cache, workdir=tmp_path / "w")
    assert server.requests == []


def test_missing_download_is_an_upstream_error(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    gone = DistFile(
        filename="demo_pkg-1.0.tar.gz", url=server.file_url("demo-pkg", "gone"), sha256="0" * 64
    )
    with pytest.raises(UpstreamError, match="HTTP 404") as caught:
        fetch_metadata(upstream, [gone], "demo-pkg", "1.0", cache, workdir=tmp_path / "w")
    assert_one_line(str(caught.value))


def test_metadata_of_another_release_is_refused(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    server.add_file("demo-pkg", make_wheel(tmp_path, core_metadata(name="evil", version="1.0")))
    with pytest.raises(UpstreamError, match="describes evil 1.0, not demo-pkg 1.0"):
        fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a zip", "is not a readable zip file"),
        (b"", "is not a readable zip file"),
    ],
)
def test_broken_wheel(
    server: UpstreamServer,
    upstream: Upstream,
    cache: MetadataCache,
    tmp_path: Path,
    content: bytes,
    expected: str,
) -> None:
    path = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    path.write_bytes(content)
    server.add_file("demo-pkg", path)
    with pytest.raises(UpstreamError, match=expected) as caught:
        fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")
    assert_one_line(str(caught.value))


def test_wheel_without_metadata(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    path = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("demo_pkg/__init__.py", "")
        archive.writestr("other-1.0.dist-info/METADATA", core_metadata())
    server.add_file("demo-pkg", path)
    with pytest.raises(UpstreamError, match="has no single .dist-info/METADATA"):
        fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")


def test_sdist_problems(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    # No PKG-INFO and no wheel: nothing says what it requires.
    server.add_file("demo-pkg", make_sdist(tmp_path / "a", {"setup.py": b""}))
    with pytest.raises(UpstreamError, match="sdist demo_pkg-1.0.tar.gz has no PKG-INFO"):
        fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    # PKG-INFO as a symlink is not read, whatever it points at.
    linked = tmp_path / "b" / "demo_pkg-1.0.tar.gz"
    linked.parent.mkdir()
    with tarfile.open(linked, "w:gz") as archive:
        info = tarfile.TarInfo("demo_pkg-1.0/PKG-INFO")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        archive.addfile(info)
    server.add_file("demo-pkg", linked)
    with pytest.raises(UpstreamError, match="PKG-INFO in sdist .* is not a regular file"):
        fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    # Two top-level directories is not an sdist.
    two = tmp_path / "c" / "demo_pkg-1.0.tar.gz"
    two.parent.mkdir()
    with tarfile.open(two, "w:gz") as archive:
        for member in ("demo_pkg-1.0/PKG-INFO", "other/PKG-INFO"):
            info = tarfile.TarInfo(member)
            archive.addfile(info, io.BytesIO(b""))
    server.add_file("demo-pkg", two)
    with pytest.raises(UpstreamError, match="does not have exactly one top-level directory"):
        fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    garbage = tmp_path / "d" / "demo_pkg-1.0.tar.gz"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a tarball")
    server.add_file("demo-pkg", garbage)
    with pytest.raises(UpstreamError, match="is not a readable archive") as caught:
        fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")
    assert_one_line(str(caught.value))
    assert list((tmp_path / "w").iterdir()) == []


def test_zip_sdist(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    path = tmp_path / "demo_pkg-1.0.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("demo_pkg-1.0/PKG-INFO", core_metadata())
        archive.writestr("demo_pkg-1.0/pyproject.toml", PYPROJECT)
    server.add_file("demo-pkg", path)

    meta = fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    assert (meta.requires_dist, meta.build_backend) == (REQUIRES, "hatchling.build")


def test_unreachable_pep658_without_hash_is_an_upstream_error(
    cache: MetadataCache, tmp_path: Path
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = httpx.Client(transport=httpx.MockTransport(refuse))
    upstream = Upstream("http://mirror.test/simple/", client, attempts=1)
    wheel = DistFile(
        filename="demo_pkg-1.0-py3-none-any.whl",
        url="http://mirror.test/demo_pkg-1.0-py3-none-any.whl",
        sha256="0" * 64,
        core_metadata="true",
    )
    with pytest.raises(UpstreamError, match="unreachable: connection refused"):
        fetch_metadata(upstream, [wheel], "demo-pkg", "1.0", cache, workdir=tmp_path)


# --- the cache --------------------------------------------------------------------------------


def test_second_fetch_makes_no_requests(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    server.add_file("demo-pkg", make_wheel(tmp_path, core_metadata()))
    server.add_file("demo-pkg", make_sdist(tmp_path, {"pyproject.toml": PYPROJECT.encode()}))
    first = fetch_metadata(
        upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w"
    )
    count = len(server.requests)
    assert count == 2

    again = fetch_metadata(upstream, dists(server), "Demo.Pkg", "1.0.0", cache, workdir=tmp_path)
    fresh_cache = MetadataCache(tmp_path / "cache")
    reread = fetch_metadata(
        upstream, dists(server), "demo_pkg", "1.0", fresh_cache, workdir=tmp_path
    )

    assert again == first == reread
    assert len(server.requests) == count
    document = json.loads(cache.path("demo-pkg", "1.0").read_text())
    assert document["metadata"] == first.to_json()
    assert cache.path("demo-pkg", "1.0").parent == tmp_path / "cache" / "demo-pkg"
    # Even with the files gone upstream, the cache answers: the graph rebuilds offline.
    assert fetch_metadata(upstream, [], "demo-pkg", "1", fresh_cache, workdir=tmp_path) == first


@pytest.mark.parametrize(
    "content",
    [
        "{ not json",
        "[]",
        '{"format": 999, "metadata": {}}',
        '{"format": 2, "metadata": {"project": "demo-pkg"}}',
        '{"format": 2, "metadata": {"project": "other", "version": "1.0", "requires_dist": [],'
        ' "requires_python": null, "build_requires": [], "build_backend": "x", "source": "wheel",'
        ' "license": null, "project_urls": []}}',
        # Format 1 had no license or URLs: read as today's shape it would claim "none declared".
        '{"format": 1, "metadata": {"project": "demo-pkg", "version": "1.0", "requires_dist": [],'
        ' "requires_python": null, "build_requires": [], "build_backend": "x", "source": "wheel"}}',
    ],
)
def test_corrupted_cache_file_is_refetched(
    server: UpstreamServer,
    upstream: Upstream,
    cache: MetadataCache,
    tmp_path: Path,
    content: str,
) -> None:
    server.add_file("demo-pkg", make_wheel(tmp_path, core_metadata()))
    server.add_file("demo-pkg", make_sdist(tmp_path, {"pyproject.toml": PYPROJECT.encode()}))
    path = cache.path("demo-pkg", "1.0")
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert cache.get("demo-pkg", "1.0") is None

    meta = fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    assert meta.requires_dist == REQUIRES
    assert len(server.requests) == 2
    assert cache.get("demo-pkg", "1.0") == meta


def test_cached_no_sdist_result_is_refetched_once_an_sdist_appears(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    server.add_file("demo-pkg", make_wheel(tmp_path, core_metadata()))
    early = fetch_metadata(
        upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w"
    )
    assert early.build_backend == ""
    assert (
        fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path) == early
    )
    assert len(server.requests) == 1

    # Files may be added to a release later; the new sdist shows in the page's files.
    server.add_file("demo-pkg", make_sdist(tmp_path, {"pyproject.toml": PYPROJECT.encode()}))
    late = fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")

    assert late.build_backend == "hatchling.build"
    assert late.source == "wheel"
    assert cache.get("demo-pkg", "1.0") == late


def test_failed_fetch_leaves_no_cache_entry(
    server: UpstreamServer, upstream: Upstream, cache: MetadataCache, tmp_path: Path
) -> None:
    server.add_file("demo-pkg", make_wheel(tmp_path, core_metadata()))
    server.fail_next.append(503)
    with pytest.raises(UpstreamError, match="HTTP 503") as caught:
        fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")
    assert_one_line(str(caught.value))
    assert not cache.path("demo-pkg", "1.0").exists()

    meta = fetch_metadata(upstream, dists(server), "demo-pkg", "1.0", cache, workdir=tmp_path / "w")
    assert meta.requires_dist == REQUIRES


def test_project_metadata_json_round_trip_and_errors() -> None:
    meta = ProjectMetadata(
        project="demo-pkg",
        version="1.0",
        requires_dist=("a", "b; extra == 'x'"),
        requires_python=None,
        build_requires=("setuptools",),
        build_backend="setuptools.build_meta",
        source="sdist",
        license="MIT",
        project_urls=(("Changelog", "https://example.invalid/c"), ("Homepage", "https://h")),
    )
    assert ProjectMetadata.from_json(json.loads(json.dumps(meta.to_json()))) == meta
    bare = dataclasses.replace(meta, license=None, project_urls=())
    assert ProjectMetadata.from_json(json.loads(json.dumps(bare.to_json()))) == bare
    assert CACHE_FORMAT == 2

    good = meta.to_json()
    for bad, expected in [
        ([], "metadata: is not a JSON object"),
        ({**good, "project": 3}, "metadata.project: is not a string"),
        ({**good, "requires_dist": "a"}, "metadata.requires_dist: is not a list"),
        ({**good, "build_requires": ["a", 2]}, r"metadata.build_requires\[1\]: is not a string"),
        ({**good, "requires_python": 3.9}, "metadata.requires_python: is not a string"),
        ({**good, "license": ["MIT"]}, "metadata.license: is not a string"),
        ({**good, "project_urls": {"a": "b"}}, "metadata.project_urls: is not a list"),
        ({**good, "project_urls": [["a", "b"], ["a"]]}, r"metadata.project_urls\[1\]: is not a"),
        ({**good, "project_urls": [["a", 1]]}, r"metadata.project_urls\[0\]: is not a \[label"),
        ({k: v for k, v in good.items() if k != "project_urls"}, "project_urls: is not a list"),
    ]:
        with pytest.raises(ValueError, match=expected):
            ProjectMetadata.from_json(bad)


def test_cache_rejects_unsafe_names(tmp_path: Path) -> None:
    cache = MetadataCache(tmp_path)
    with pytest.raises(ValueError, match="invalid project name"):
        cache.get("../../etc", "1.0")
    with pytest.raises(ValueError, match="invalid version"):
        cache.get("demo", "../1")
