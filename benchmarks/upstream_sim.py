"""A simulated upstream simple index on 127.0.0.1, in its own process, for benchmarks/watch.py
and benchmarks/tick.py.

With ``files`` on (benchmarks/tick.py), the files a page lists can be fetched: each sdist is a
tiny valid ``.tar.gz`` (``PKG-INFO`` and ``pyproject.toml`` under one top directory) whose real
sha256 the page gives, and each wheel's core metadata is served at ``<wheel url>.metadata``
(PEP 658), marked on the page (PEP 691/714 ``core-metadata``, ``data-core-metadata``) with its
sha256. The wheels themselves are not served. Without it (benchmarks/watch.py), pages are as
they always were: each file's "sha256" is that of its name, and only pages are served.

With ``serials`` on (benchmarks/tick.py's timed ticks), the index numbers its changes, as an
index with a change feed does: project i's serial is ``generation * projects + i + 1`` (it
grows with each of its changes, no two projects share one, and it is the same after a restart
from saved generations). The root page ``/simple/`` is served: in JSON (PEP 691), every
project with its ``name`` and ``_last-serial`` and ``meta._last-serial`` the greatest (about
1 MB at 25,000 projects), rendered once and kept until a change, with a strong ETag (304 to
If-None-Match) and the same per-response delay as any page. Each project page gains the
header ``X-PyPI-Last-Serial`` (on the 200 and the 304) and, in JSON, ``meta._last-serial``.
A page's ETag stays that of its body without the serial: the serial is a function of the
page's generation, so the ETag still names one representation, and validators taken with
serials off (tick.py's setup) get their 304s with them on. With ``root_projects`` the root
page also lists projects no one enrolled (``other-NNNNNNN``, no page), up to that many in all,
so it is as large as a real index's (927,088 projects, 40 MB of HTML, on the day the tick
benchmark's figures were taken). Without ``serials``, ``/simple/``
answers 404 as it always did, and pages are byte for byte what they were.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qs, urlsplit

JSON_V1 = "application/vnd.pypi.simple.v1+json"
SERIAL_HEADER = "X-PyPI-Last-Serial"
# Three releases of sdist + wheel per project: a typical small project's page is 1-3 kB.
RELEASES = 3


def other_name(index: int) -> str:
    """A project upstream lists on its root page that no one enrolled (``root_projects``)."""
    return f"other-{index:07d}"


def project_name(index: int) -> str:
    return f"proj-{index:05d}"


def version_of(number: int) -> str:
    """The n-th release of every project (0-based): 1.0, 1.1, ..."""
    return f"1.{number}"


def requires_of(index: int) -> tuple[str, ...]:
    """Requires-Dist of project ``index`` (the same in every release): 0-4 projects of lower
    index, drawn towards the first ones, so the dependency graph has hubs and a long tail."""
    if index == 0:
        return ()
    rng = random.Random(index)
    count = rng.choice((0, 0, 1, 1, 2, 3, 4))
    return tuple(sorted({project_name(int(index * rng.random() ** 3)) for _ in range(count)}))


def core_metadata(name: str, version: str) -> bytes:
    """The core metadata of ``name`` ``version``: its wheel's METADATA and its sdist's PKG-INFO."""
    requires = "".join(f"Requires-Dist: {r}\n" for r in requires_of(int(name[5:])))
    return (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        f"Requires-Python: >=3.8\nLicense: MIT\n{requires}"
    ).encode()


PYPROJECT = (
    b'[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
)


def sdist_bytes(name: str, version: str) -> bytes:
    """A tiny valid sdist, the same bytes every time (no timestamps)."""
    stem = f"{name.replace('-', '_')}-{version}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        members = (("PKG-INFO", core_metadata(name, version)), ("pyproject.toml", PYPROJECT))
        for member, data in members:
            info = tarfile.TarInfo(f"{stem}/{member}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), mtime=0)


@dataclass(frozen=True)
class _Rendered:
    etag: str
    ok: bytes  # the 200, headers and body
    not_modified: bytes  # the 304


def _response(status: str, headers: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nVary: Accept\r\n{headers}\r\n"
    return head.encode() + body


@dataclass
class _Page:
    generation: int = 0
    # Whole responses per kind ("json"/"html"), dropped when the project changes.
    bodies: dict[str, _Rendered] = field(default_factory=dict)
    modified: float = 0.0


_NOT_FOUND = _response("404 Not Found", "Content-Type: text/plain\r\n", b"not found\n")


class Index:
    """The pages: project i has RELEASES releases; each change adds one more."""

    def __init__(
        self,
        projects: int,
        mode: str,
        start: float,
        *,
        files: bool = False,
        serials: bool = False,
        root_projects: int = 0,
        generations: dict[str, int] | None = None,
    ) -> None:
        self.projects = projects
        # The root page lists this many projects in all (at least ``projects``): the others
        # are upstream's projects nobody enrolled, each with a serial of its own and no page,
        # so the root is as large as a real index's.
        self.others = max(0, root_projects - projects)
        self._other_entries: list[dict[str, object]] | None = None
        # Changes upstream made to projects no one enrolled (``churn``): the root page moves
        # as a real index's does every few seconds, while no enrolled page does.
        self.churns = 0
        self.mode = mode
        self.start = start
        self.files = files
        self.serials = serials
        self.pages: dict[str, _Page] = {}
        # The root page per kind, with serials on; dropped on every change.
        self.roots: dict[str, _Rendered] = {}
        for name, generation in (generations or {}).items():
            page = self.page(name)
            if page is not None:
                page.generation = generation
        # sha256 of (name, version)'s sdist and metadata: releases never change.
        self.digests: dict[tuple[str, str], tuple[str, str]] = {}
        self.requests = 0
        self.not_modified = 0
        self.file_requests = 0
        self.metadata_requests = 0
        self.root_requests = 0
        self.root_not_modified = 0
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def page(self, name: str) -> _Page | None:
        page = self.pages.get(name)
        if page is None:
            if not name.startswith("proj-") or not name[5:].isdigit():
                return None
            if int(name[5:]) >= self.projects:
                return None
            page = self.pages[name] = _Page(modified=self.start)
        return page

    def change(self, fraction: float, seed: int, names: list[str] | None = None) -> list[str]:
        if names is None:
            count = max(1, round(self.projects * fraction))
            chosen = random.Random(seed).sample(range(self.projects), count)
            names = [project_name(i) for i in chosen]
        now = time.time()
        for name in names:
            page = self.page(name)
            if page is None:
                continue
            page.generation += 1
            page.bodies.clear()
            page.modified = now
        self.roots.clear()
        if self.serials:
            self.root(self.root_kind(asked_json=True))  # rendered now, not in a client's time
        return names

    @property
    def churn_serial(self) -> int:
        """The serial of the last change to a project no one enrolled (0: none yet)."""
        return 10**12 + self.churns if self.churns else 0

    def churn(self) -> int:
        """A change to a project no one enrolled: the root page changes, no enrolled page."""
        self.churns += 1
        if self.others:
            self.root("json")  # the entries exist once the root was rendered
            assert self._other_entries is not None
            self._other_entries[self.churns % self.others]["_last-serial"] = self.churn_serial
        self.roots.clear()
        if self.serials:
            self.root(self.root_kind(asked_json=True))  # rendered now, not in a client's time
        return self.churn_serial

    def serial(self, name: str, page: _Page | None) -> int:
        """The serial of ``name``'s last change (see the module's docstring)."""
        return (page.generation if page else 0) * self.projects + int(name[5:]) + 1

    def root_kind(self, asked_json: bool) -> str:
        return "json" if self.mode == "json" and asked_json else "html"

    def root(self, kind: str) -> _Rendered:
        """The root page ``/simple/`` (serials on): every project, and its serial in JSON."""
        cached = self.roots.get(kind)
        if cached is not None:
            return cached
        names = [project_name(i) for i in range(self.projects)]
        serials = [self.serial(name, self.pages.get(name)) for name in names]
        last = max(serials, default=0)
        others = [other_name(i) for i in range(self.others)]
        if kind == "json":
            if self._other_entries is None:
                # Serials below every enrolled project's, as if they changed before the start.
                self._other_entries = [
                    {"name": name, "_last-serial": i % max(1, self.projects)}
                    for i, name in enumerate(others)
                ]
            body = json.dumps(
                {
                    "meta": {"api-version": "1.1", "_last-serial": max(last, self.churn_serial)},
                    "projects": [
                        {"name": name, "_last-serial": serial}
                        for name, serial in zip(names, serials, strict=True)
                    ]
                    + self._other_entries,
                }
            ).encode()
        else:
            links = "".join(f'<a href="{name}/">{name}</a>\n' for name in names + others)
            body = (
                "<!DOCTYPE html>\n<html><head>"
                '<meta name="pypi:repository-version" content="1.1">'
                f"<title>Simple index</title></head>\n<body>\n{links}</body></html>\n"
            ).encode()
        modified = max((p.modified for p in self.pages.values()), default=self.start)
        rendered = self._rendered(body, kind, modified, last, hashlib.sha1(body).hexdigest())
        self.roots[kind] = rendered
        return rendered

    @staticmethod
    def _rendered(
        body: bytes, kind: str, modified: float, serial: int | None, digest: str
    ) -> _Rendered:
        # Strong ETag per representation: the page varies on Accept (PEP 691).
        etag = f'"{digest[:20]}"'
        validators = f"ETag: {etag}\r\nLast-Modified: {formatdate(modified, usegmt=True)}\r\n"
        if serial is not None:
            validators += f"{SERIAL_HEADER}: {serial}\r\n"
        content_type = JSON_V1 if kind == "json" else "text/html"
        return _Rendered(
            etag=etag,
            ok=_response("200 OK", f"Content-Type: {content_type}\r\n{validators}", body),
            not_modified=_response("304 Not Modified", validators, b""),
        )

    def render(self, name: str, page: _Page, kind: str) -> _Rendered:
        cached = page.bodies.get(kind)
        if cached is not None:
            return cached
        releases = [version_of(n) for n in range(RELEASES + page.generation)]
        # (filename, sha256, sha256 of its core metadata or None)
        files: list[tuple[str, str, str | None]] = []
        for version in releases:
            stem = f"{name.replace('-', '_')}-{version}"
            sdist, wheel = f"{stem}.tar.gz", f"{stem}-py3-none-any.whl"
            if self.files:
                sdist_digest, metadata_digest = self.digest(name, version)
                files.append((sdist, sdist_digest, None))
                files.append((wheel, hashlib.sha256(wheel.encode()).hexdigest(), metadata_digest))
            else:
                for filename in (sdist, wheel):
                    files.append((filename, hashlib.sha256(filename.encode()).hexdigest(), None))
        if kind == "json":
            entries: list[dict[str, object]] = []
            for i, (filename, digest, metadata) in enumerate(files):
                entry: dict[str, object] = {
                    "filename": filename,
                    "url": f"/files/{name}/{filename}",
                    "hashes": {"sha256": digest},
                    "requires-python": ">=3.8",
                    "size": 1000 + i,
                    "upload-time": "2026-01-01T00:00:00.000000Z",
                }
                if metadata is not None:
                    entry["core-metadata"] = {"sha256": metadata}
                entries.append(entry)
            document: dict[str, object] = {
                "meta": {"api-version": "1.1"},
                "name": name,
                "versions": releases,
                "files": entries,
            }
            body = json.dumps(document).encode()
        else:
            links = "".join(
                f'<a href="../../files/{name}/{filename}#sha256={digest}" '
                f'data-requires-python="&gt;=3.8"'
                + ("" if metadata is None else f' data-core-metadata="sha256={metadata}"')
                + f">{filename}</a><br/>\n"
                for filename, digest, metadata in files
            )
            body = (
                "<!DOCTYPE html>\n<html><head>"
                '<meta name="pypi:repository-version" content="1.1">'
                f"<title>Links for {name}</title></head>\n<body>\n{links}</body></html>\n"
            ).encode()
        # The ETag of the body without the serial (see the module's docstring).
        digest = hashlib.sha1(body).hexdigest()
        serial = None
        if self.serials:
            serial = self.serial(name, page)
            if kind == "json":
                document["meta"] = {"api-version": "1.1", "_last-serial": serial}
                body = json.dumps(document).encode()
        rendered = self._rendered(body, kind, page.modified, serial, digest)
        page.bodies[kind] = rendered
        return rendered

    def digest(self, name: str, version: str) -> tuple[str, str]:
        """sha256 of the sdist and of the core metadata of ``name`` ``version``."""
        known = self.digests.get((name, version))
        if known is None:
            known = self.digests[(name, version)] = (
                hashlib.sha256(sdist_bytes(name, version)).hexdigest(),
                hashlib.sha256(core_metadata(name, version)).hexdigest(),
            )
        return known

    def file(self, path: str) -> bytes | None:
        """The bytes at ``/files/<name>/<filename>``: a listed sdist or wheel metadata."""
        name, _, filename = path.removeprefix("/files/").partition("/")
        page = self.page(name)
        if page is None or "/" in filename:
            return None
        stem = name.replace("-", "_") + "-"
        sdist, metadata = ".tar.gz", "-py3-none-any.whl.metadata"
        suffix = next((s for s in (sdist, metadata) if filename.endswith(s)), None)
        if suffix is None or not filename.startswith(stem):
            return None
        version = filename[len(stem) : -len(suffix)]
        if version not in {version_of(n) for n in range(RELEASES + page.generation)}:
            return None
        if suffix == metadata:
            self.metadata_requests += 1
            return core_metadata(name, version)
        self.file_requests += 1
        return sdist_bytes(name, version)


class Connection(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; one request at a time, answered after `delay` seconds."""

    def __init__(self, index: Index, delay: float) -> None:
        self.index = index
        self.delay = delay
        self.buffer = b""
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.index.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._next()

    def _next(self) -> None:
        if self.busy:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
        request_line, *lines = head.split("\r\n")
        headers = {}
        for line in lines:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        method, target, _ = [*request_line.split(" "), "", ""][:3]
        response = self._answer(method, target, headers)
        index = self.index
        index.requests += 1
        index.in_flight += 1
        index.max_in_flight = max(index.max_in_flight, index.in_flight)
        self.busy = True
        close = headers.get("connection", "").lower() == "close"
        if close:
            response = response.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        # The delay stands for upstream's time to first byte; call_later keeps every other
        # connection going meanwhile.
        asyncio.get_running_loop().call_later(self.delay, self._send, response, close)

    def _send(self, response: bytes, close: bool) -> None:
        self.index.in_flight -= 1
        self.busy = False
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(response)
        if close:
            self.transport.close()
        else:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def _answer(self, method: str, target: str, headers: dict[str, str]) -> bytes:
        index = self.index
        if target == "/simple/" and method == "GET":
            index.root_requests += 1
            if not index.serials:
                return _NOT_FOUND
            rendered = index.root(index.root_kind(JSON_V1 in headers.get("accept", "")))
            if headers.get("if-none-match") == rendered.etag:
                index.root_not_modified += 1
                return rendered.not_modified
            return rendered.ok
        if target.startswith("/simple/") and method == "GET":
            name = target[8:].rstrip("/")
            page = index.page(name) if target.endswith("/") and "/" not in name else None
            if page is None:
                return _NOT_FOUND
            # PEP 691: JSON only when the client asks for it (a simplification of q-values
            # that is exact for the Accept headers pip, uv and wheelstock send).
            json_asked = JSON_V1 in headers.get("accept", "")
            kind = "json" if index.mode == "json" and json_asked else "html"
            rendered = index.render(name, page, kind)
            if headers.get("if-none-match") == rendered.etag:
                index.not_modified += 1
                return rendered.not_modified
            return rendered.ok
        if index.files and target.startswith("/files/") and method == "GET":
            data = index.file(target)
            if data is None:
                return _NOT_FOUND
            return _response("200 OK", "Content-Type: application/octet-stream\r\n", data)
        json_type = "Content-Type: application/json\r\n"
        split = urlsplit(target)
        if split.path == "/_control/change":
            query = parse_qs(split.query)
            fraction = float(query.get("fraction", ["0.01"])[0])
            seed = int(query.get("seed", ["0"])[0])
            given = query.get("names")
            names = index.change(fraction, seed, given[0].split(",") if given else None)
            return _response("200 OK", json_type, json.dumps(names).encode())
        if split.path == "/_control/churn":
            return _response("200 OK", json_type, json.dumps(index.churn()).encode())
        if split.path == "/_control/generations":
            generations = {n: p.generation for n, p in index.pages.items() if p.generation}
            return _response("200 OK", json_type, json.dumps(generations).encode())
        if split.path == "/_control/stats":
            stats = {
                "requests": index.requests,
                "not_modified": index.not_modified,
                "files": index.file_requests,
                "metadata": index.metadata_requests,
                "root": index.root_requests,
                "root_not_modified": index.root_not_modified,
                "connections": index.connections,
                "max_in_flight": index.max_in_flight,
            }
            index.max_in_flight = 0
            return _response("200 OK", json_type, json.dumps(stats).encode())
        return _NOT_FOUND


async def serve(
    projects: int,
    mode: str,
    delay: float,
    files: bool,
    serials: bool,
    generations: dict[str, int],
    port: int,
    root_projects: int = 0,
) -> None:
    index = Index(
        projects,
        mode,
        time.time() - 86400,
        files=files,
        serials=serials,
        root_projects=root_projects,
        generations=generations,
    )
    if serials:
        index.root(index.root_kind(asked_json=True))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(index, delay), "127.0.0.1", port, backlog=1024, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    async with server:
        await server.serve_forever()


class Simulator:
    """Runs the simulated index in a child process; `url` is its /simple/."""

    def __init__(
        self,
        projects: int,
        *,
        mode: str = "json",
        delay: float = 0.030,
        files: bool = False,
        serials: bool = False,
        root_projects: int = 0,
        generations: str | None = None,
        port: int = 0,
    ) -> None:
        """``files``: serve sdists and metadata; ``serials``: number the changes, serve the
        root page with them (both: see the module's docstring); ``generations``:
        a JSON file {name: releases added}, as `generations()` returned, to start from;
        ``port``: a fixed port (0: any free one), for state that names the URL."""
        argv = [sys.executable, os.path.abspath(__file__), str(projects), mode, str(delay)]
        if files:
            argv.append("--files")
        if serials:
            argv.append("--serials")
        if root_projects:
            argv += ["--root-projects", str(root_projects)]
        if generations is not None:
            argv += ["--generations", generations]
        if port:
            argv += ["--port", str(port)]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.process.kill()
            raise RuntimeError("the simulator did not start")
        # benchmarks/tick.py: before each tick with the feed, change a project no one enrolled,
        # so the root page is a 200 as a real index's always is (see Index.churn).
        self.churning = False
        self.base = f"http://127.0.0.1:{int(line)}"
        self.url = f"{self.base}/simple/"

    def control(self, path: str) -> object:
        import httpx

        response = httpx.get(f"{self.base}/_control/{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def change(self, fraction: float, seed: int) -> list[str]:
        names = self.control(f"change?fraction={fraction}&seed={seed}")
        assert isinstance(names, list)
        return [str(n) for n in names]

    def release(self, names: list[str]) -> list[str]:
        """A new release of each of ``names`` (new page, new ETag)."""
        done = self.control("change?names=" + ",".join(names))
        assert isinstance(done, list)
        return [str(n) for n in done]

    def churn(self) -> int:
        """Upstream changes a project no one enrolled (the root page moves); its serial."""
        serial = self.control("churn")
        assert isinstance(serial, int)
        return serial

    def generations(self) -> dict[str, int]:
        """Releases added per project since the start (only the projects that have any)."""
        found = self.control("generations")
        assert isinstance(found, dict)
        return {str(k): int(v) for k, v in found.items()}

    def stats(self) -> dict[str, int]:
        stats = self.control("stats")
        assert isinstance(stats, dict)
        return {str(k): int(v) for k, v in stats.items()}

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("projects", type=int)
    parser.add_argument("mode", choices=["json", "html"])
    parser.add_argument("delay", type=float)
    parser.add_argument("--files", action="store_true", help="serve sdists and metadata")
    parser.add_argument(
        "--serials", action="store_true", help="number the changes: a root page that lists them"
    )
    parser.add_argument("--generations", help="JSON file: releases added per project")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--root-projects",
        type=int,
        default=0,
        help="projects the root page lists in all (with --serials; the rest have no page)",
    )
    args = parser.parse_args(argv)
    generations: dict[str, int] = {}
    if args.generations:
        with open(args.generations, encoding="utf-8") as handle:
            generations = {str(k): int(v) for k, v in json.load(handle).items()}
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(
                args.projects,
                args.mode,
                args.delay,
                args.files,
                args.serials,
                generations,
                args.port,
                args.root_projects,
            )
        )


if __name__ == "__main__":
    main(sys.argv[1:])
