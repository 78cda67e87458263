"""Serving the index tree over HTTP with PEP 691 content negotiation."""

from __future__ import annotations

import hashlib
import http.server
import math
import shutil
import socket
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from packaging.utils import canonicalize_name

import bot
from bot import dists

Log = Callable[[str], None]

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html"
_LATEST_JSON = "application/vnd.pypi.simple.latest+json"
_LATEST_HTML = "application/vnd.pypi.simple.latest+html"

# What each offer is answered with: PEP 691 says a "latest" request MUST get the concrete
# version's Content-Type back, so those two map onto v1.
_ANSWER = {
    JSON_V1: JSON_V1,
    _LATEST_JSON: JSON_V1,
    HTML_V1: HTML_V1,
    _LATEST_HTML: HTML_V1,
    TEXT_HTML: TEXT_HTML,
}
# PEP 691 recommends the most featureful format, text/html only as a last resort ...
_PREFERRED = (JSON_V1, _LATEST_JSON, HTML_V1, _LATEST_HTML, TEXT_HTML)
# ... but a bare */* (browsers, curl, no Accept at all) is best answered with plain HTML.
_PREFERRED_WILDCARD = (TEXT_HTML, JSON_V1, _LATEST_JSON, HTML_V1, _LATEST_HTML)
_PAGE_FILE = {JSON_V1: "index.json", HTML_V1: "index.html", TEXT_HTML: "index.html"}

_CHUNK = 1024 * 1024


def negotiate(accept: str | None) -> str | None:
    """The Content-Type to answer a simple-API request with, or None for 406 (PEP 691)."""
    if accept is None or not accept.strip():
        # PEP 691: a missing Accept header counts as */*.
        accept = "*/*"
    ranges = _parse_accept(accept)
    best: tuple[float, int, int] | None = None
    chosen: str | None = None
    for offer in _PREFERRED:
        quality, specificity = _quality(offer, ranges)
        if quality <= 0:
            continue
        order = _PREFERRED_WILDCARD if specificity == 0 else _PREFERRED
        # Higher q wins, then the more specific match, then our own preference.
        key = (quality, specificity, -order.index(offer))
        if best is None or key > best:
            best, chosen = key, offer
    return None if chosen is None else _ANSWER[chosen]


def _parse_accept(header: str) -> list[tuple[str, str, float]]:
    """Media ranges of an Accept header as (type, subtype, q); malformed entries are dropped."""
    ranges: list[tuple[str, str, float]] = []
    for item in header.split(","):
        media, *params = item.split(";")
        kind, slash, subtype = media.strip().lower().partition("/")
        if not slash or not kind or not subtype or (kind == "*" and subtype != "*"):
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
                if not math.isfinite(quality):
                    quality = 0.0
                quality = min(max(quality, 0.0), 1.0)
        ranges.append((kind, subtype, quality))
    return ranges


def _quality(offer: str, ranges: list[tuple[str, str, float]]) -> tuple[float, int]:
    """RFC 9110 12.5.1: the most specific range matching `offer` decides its q."""
    kind, _, subtype = offer.partition("/")
    found: tuple[int, float] | None = None
    for range_kind, range_subtype, quality in ranges:
        if range_kind == kind and range_subtype == subtype:
            specificity = 2
        elif range_kind == kind and range_subtype == "*":
            specificity = 1
        elif range_kind == "*":
            specificity = 0
        else:
            continue
        if found is None or (specificity, quality) > found:
            found = (specificity, quality)
    if found is None:
        return 0.0, -1
    return found[1], found[0]


class IndexServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server that knows the index root and where to log."""

    # Worker threads must not keep the process alive after shutdown (keep-alive clients).
    daemon_threads = True

    def __init__(self, address: tuple[str, int], root: Path, log: Log | None) -> None:
        self.root = root.resolve()
        self.log = log
        super().__init__(address, _Handler)


class _IndexServer6(IndexServer):
    address_family = socket.AF_INET6


def make_server(
    root: Path, host: str = "127.0.0.1", port: int = 8080, *, log: Log | None = None
) -> http.server.ThreadingHTTPServer:
    """Bind a server for the tree at `root` (port 0 picks a free port); call serve_forever()."""
    server_class = _IndexServer6 if ":" in host else IndexServer
    return server_class((host, port), root, log)


def serve(root: Path, host: str, port: int, *, log: Log = print) -> None:
    """Serve `root` until KeyboardInterrupt, then close the socket cleanly."""
    server = make_server(root, host, port, log=log)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host!s}]" if ":" in str(bound_host) else str(bound_host)
    log(f"serving {root} at http://{shown}:{bound_port}/simple/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log("stopping")
    finally:
        server.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive for pip and uv; every response sets Content-Length.
    protocol_version = "HTTP/1.1"
    server_version = f"wheelstock/{bot.__version__}"
    sys_version = ""

    @property
    def _index(self) -> IndexServer:
        assert isinstance(self.server, IndexServer)
        return self.server

    def do_GET(self) -> None:
        self._dispatch(body=True)

    def do_HEAD(self) -> None:
        self._dispatch(body=False)

    def log_message(self, format: str, *args: object) -> None:
        log = self._index.log
        if log is not None:
            log(f"{self.address_string()} {format % args}")

    def _dispatch(self, *, body: bool) -> None:
        path = urlsplit(self.path).path
        try:
            decoded = unquote(path, errors="strict")
        except UnicodeDecodeError:
            decoded = ""
        # Checked after decoding, so %2e%2e and %2f cannot smuggle a ".." segment past us.
        segments = decoded.split("/")
        if (
            not decoded.startswith("/")
            or "\x00" in decoded
            or "\\" in decoded
            or any(segment in (".", "..") for segment in segments)
        ):
            self._send_text(HTTPStatus.BAD_REQUEST, "bad request path\n", body=body)
            return
        parts = segments[1:]
        if decoded == "/":
            self._send_status_page(body=body)
        elif parts[0] == "simple":
            self._route_simple(parts[1:], body=body)
        elif parts[0] == "files" and len(parts) > 1 and all(parts[1:]):
            self._send_file(parts[1:], body=body)
        elif parts[0] == "keys" and len(parts) > 1 and all(parts[1:]):
            # The public key that signs the provenance documents (bot.signing).
            self._send_file(parts[1:], body=body, folder="keys")
        else:
            self._send_text(HTTPStatus.NOT_FOUND, "not found\n", body=body)

    def _route_simple(self, rest: list[str], *, body: bool) -> None:
        if not rest:  # "/simple"
            self._redirect("/simple/", body=body)
        elif rest == [""]:
            self._send_page(self._index.root / "simple", body=body)
        elif len(rest) == 1 or (len(rest) == 2 and rest[1] == ""):
            name = rest[0]
            if not dists.is_project_name(name):
                self._send_text(HTTPStatus.NOT_FOUND, "not found\n", body=body)
                return
            normalized = canonicalize_name(name)
            # PEP 503: the URL is /<normalized>/ with a slash; anything else redirects there.
            if name != normalized or len(rest) == 1:
                self._redirect(f"/simple/{normalized}/", body=body)
            else:
                self._send_page(self._index.root / "simple" / normalized, body=body)
        else:
            self._send_text(HTTPStatus.NOT_FOUND, "not found\n", body=body)

    def _send_page(self, directory: Path, *, body: bool) -> None:
        accept = ", ".join(self.headers.get_all("Accept", []))
        # PEP 691: a ?format= naming a media type wins over Accept; an unknown one is a 406.
        # A literal "+" in it is the media type's own, not a form-encoded space.
        query = urlsplit(self.path).query.replace("+", "%2B")
        wanted = parse_qs(query).get("format")
        content_type = negotiate(wanted[0] if wanted else accept or None)
        # Every answer here depends on Accept, so caches must key on it (RFC 9110 12.5.5).
        vary = {"Vary": "Accept"}
        if content_type is None:
            offered = ", ".join((JSON_V1, HTML_V1, TEXT_HTML))
            self._send_text(
                HTTPStatus.NOT_ACCEPTABLE, f"acceptable: {offered}\n", body=body, headers=vary
            )
            return
        try:
            data = (directory / _PAGE_FILE[content_type]).read_bytes()
        except OSError:
            self._send_text(HTTPStatus.NOT_FOUND, "not found\n", body=body, headers=vary)
            return
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        if self._not_modified(etag, vary):
            return
        self._start(HTTPStatus.OK, content_type, len(data), {**vary, "ETag": etag})
        if body:
            self.wfile.write(data)

    def _send_file(self, parts: list[str], *, body: bool, folder: str = "files") -> None:
        base = self._index.root / folder
        if any(part.startswith(".") for part in parts):
            # Temp files of an in-flight atomic write are never part of the index.
            self._send_text(HTTPStatus.NOT_FOUND, "not found\n", body=body)
            return
        try:
            target = base.joinpath(*parts).resolve()
            inside = target.is_relative_to(base.resolve())
            stat = target.stat() if inside and target.is_file() else None
        except (OSError, ValueError):
            stat = None
        if stat is None:
            # Also what a symlink out of the tree gets: resolve() followed it outside `base`.
            self._send_text(HTTPStatus.NOT_FOUND, "not found\n", body=body)
            return
        # Published files are immutable, so size and mtime identify the bytes well enough.
        etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        if self._not_modified(etag, {}):
            return
        try:
            handle = target.open("rb")
        except OSError:
            self._send_text(HTTPStatus.NOT_FOUND, "not found\n", body=body)
            return
        with handle:
            self._start(HTTPStatus.OK, "application/octet-stream", stat.st_size, {"ETag": etag})
            if body:
                shutil.copyfileobj(handle, self.wfile, _CHUNK)

    def _send_status_page(self, *, body: bool) -> None:
        simple = self._index.root / "simple"
        count = 0
        if simple.is_dir():
            count = sum(1 for child in simple.iterdir() if (child / "index.json").is_file())
        page = (
            "<!DOCTYPE html>\n<html>\n  <head><title>wheelstock index</title></head>\n"
            f"  <body>\n    <h1>wheelstock index</h1>\n    <p>{count} projects.</p>\n"
            '    <p><a href="/simple/">/simple/</a></p>\n  </body>\n</html>\n'
        )
        data = page.encode("utf-8")
        self._start(HTTPStatus.OK, "text/html; charset=utf-8", len(data), {})
        if body:
            self.wfile.write(data)

    def _not_modified(self, etag: str, headers: dict[str, str]) -> bool:
        """Answer 304 when If-None-Match names `etag` (weak comparison, RFC 9110 13.1.2)."""
        header = self.headers.get("If-None-Match")
        if header is None:
            return False
        tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
        if "*" not in tags and etag not in tags:
            return False
        self.send_response(HTTPStatus.NOT_MODIFIED)
        for key, value in {**headers, "ETag": etag}.items():
            self.send_header(key, value)
        self.end_headers()
        return True

    def _redirect(self, location: str, *, body: bool) -> None:
        self._send_text(
            HTTPStatus.MOVED_PERMANENTLY,
            f"moved to {location}\n",
            body=body,
            headers={"Location": location, "Vary": "Accept"},
        )

    def _send_text(
        self,
        status: HTTPStatus,
        text: str,
        *,
        body: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = text.encode("utf-8")
        self._start(status, "text/plain; charset=utf-8", len(data), headers or {})
        if body:
            self.wfile.write(data)

    def _start(
        self, status: HTTPStatus, content_type: str, length: int, headers: dict[str, str]
    ) -> None:
        # HEAD gets the same headers, Content-Length included, as GET would (RFC 9110 9.3.2).
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()


__all__ = ["HTML_V1", "JSON_V1", "TEXT_HTML", "IndexServer", "make_server", "negotiate", "serve"]
