"""A simulated upstream simple index on 127.0.0.1, in its own process, for benchmarks/watch.py."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qs, urlsplit

JSON_V1 = "application/vnd.pypi.simple.v1+json"
# Three releases of sdist + wheel per project: a typical small project's page is 1-3 kB.
RELEASES = 3


def project_name(index: int) -> str:
    return f"proj-{index:05d}"


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

    def __init__(self, projects: int, mode: str, start: float) -> None:
        self.projects = projects
        self.mode = mode
        self.start = start
        self.pages: dict[str, _Page] = {}
        self.requests = 0
        self.not_modified = 0
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

    def change(self, fraction: float, seed: int) -> list[str]:
        count = max(1, round(self.projects * fraction))
        chosen = random.Random(seed).sample(range(self.projects), count)
        names = [project_name(i) for i in chosen]
        now = time.time()
        for name in names:
            page = self.page(name)
            assert page is not None
            page.generation += 1
            page.bodies.clear()
            page.modified = now
        return names

    def render(self, name: str, page: _Page, kind: str) -> _Rendered:
        cached = page.bodies.get(kind)
        if cached is not None:
            return cached
        releases = [f"1.{n}" for n in range(RELEASES + page.generation)]
        files = []
        for version in releases:
            stem = f"{name.replace('-', '_')}-{version}"
            for filename in (f"{stem}.tar.gz", f"{stem}-py3-none-any.whl"):
                digest = hashlib.sha256(filename.encode()).hexdigest()
                files.append((filename, digest))
        if kind == "json":
            body = json.dumps(
                {
                    "meta": {"api-version": "1.1"},
                    "name": name,
                    "versions": releases,
                    "files": [
                        {
                            "filename": filename,
                            "url": f"/files/{name}/{filename}",
                            "hashes": {"sha256": digest},
                            "requires-python": ">=3.8",
                            "size": 1000 + i,
                            "upload-time": "2026-01-01T00:00:00.000000Z",
                        }
                        for i, (filename, digest) in enumerate(files)
                    ],
                }
            ).encode()
        else:
            links = "".join(
                f'<a href="../../files/{name}/{filename}#sha256={digest}" '
                f'data-requires-python="&gt;=3.8">{filename}</a><br/>\n'
                for filename, digest in files
            )
            body = (
                "<!DOCTYPE html>\n<html><head>"
                '<meta name="pypi:repository-version" content="1.1">'
                f"<title>Links for {name}</title></head>\n<body>\n{links}</body></html>\n"
            ).encode()
        # Strong ETag per representation: the page varies on Accept (PEP 691).
        etag = f'"{hashlib.sha1(body).hexdigest()[:20]}"'
        validators = f"ETag: {etag}\r\nLast-Modified: {formatdate(page.modified, usegmt=True)}\r\n"
        content_type = JSON_V1 if kind == "json" else "text/html"
        rendered = _Rendered(
            etag=etag,
            ok=_response("200 OK", f"Content-Type: {content_type}\r\n{validators}", body),
            not_modified=_response("304 Not Modified", validators, b""),
        )
        page.bodies[kind] = rendered
        return rendered


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
        json_type = "Content-Type: application/json\r\n"
        split = urlsplit(target)
        if split.path == "/_control/change":
            query = parse_qs(split.query)
            fraction = float(query.get("fraction", ["0.01"])[0])
            seed = int(query.get("seed", ["0"])[0])
            names = index.change(fraction, seed)
            return _response("200 OK", json_type, json.dumps(names).encode())
        if split.path == "/_control/stats":
            stats = {
                "requests": index.requests,
                "not_modified": index.not_modified,
                "connections": index.connections,
                "max_in_flight": index.max_in_flight,
            }
            index.max_in_flight = 0
            return _response("200 OK", json_type, json.dumps(stats).encode())
        return _NOT_FOUND


async def serve(projects: int, mode: str, delay: float) -> None:
    index = Index(projects, mode, time.time() - 86400)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(index, delay), "127.0.0.1", 0, backlog=1024, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    async with server:
        await server.serve_forever()


class Simulator:
    """Runs the simulated index in a child process; `url` is its /simple/."""

    def __init__(self, projects: int, *, mode: str = "json", delay: float = 0.030) -> None:
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(projects), mode, str(delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.process.kill()
            raise RuntimeError("the simulator did not start")
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
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.projects, args.mode, args.delay))


if __name__ == "__main__":
    main(sys.argv[1:])
