"""A real upstream simple index (PEP 503 HTML / PEP 691 JSON) on 127.0.0.1 for tests."""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import html
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, unquote, urlsplit

from packaging.utils import canonicalize_name

from bot.simple import DistFile

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
# PEP 691: what a client may ask for, mapped to what we answer with.
_OFFERS = {
    JSON_V1: JSON_V1,
    "application/vnd.pypi.simple.latest+json": JSON_V1,
    HTML_V1: HTML_V1,
    "application/vnd.pypi.simple.latest+html": HTML_V1,
    "text/html": "text/html",
}


@dataclass(frozen=True)
class _Entry:
    filename: str
    path: Path
    sha256: str
    size: int
    upload_time: datetime
    requires_python: str | None
    yanked: str | None


@dataclass(frozen=True)
class Fault:
    """One way to answer a project's page badly, on purpose."""

    status: int = 503
    retry_after: str | None = None  # sent as Retry-After
    drop: bool = False  # close the connection without answering
    hang: float = 0.0  # seconds to wait before answering (longer than a client's timeout)


@dataclass(frozen=True)
class Seen:
    """A request as the server saw it, and what it answered (status 0: dropped)."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    at: float  # time.monotonic() on arrival
    connection: int  # which TCP connection carried it (numbered from 1)
    status: int = 0
    body_bytes: int = 0


@dataclass
class _Misbehaviour:
    faults: list[Fault] = field(default_factory=list)
    forever: bool = False


def _negotiate(accept: str) -> str:
    """Pick the answer type for an Accept header (PEP 691); no header means HTML."""
    best, best_q = "text/html", 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        answer = _OFFERS.get(media.lower())
        if answer is not None and q > best_q:
            best, best_q = answer, q
    return best


class UpstreamServer:
    """Serves /simple/, /simple/<name>/ and /files/... from an in-memory registry of files."""

    def __init__(
        self,
        root: Path,
        *,
        mode: str = "json",
        etags: bool = True,
        last_modified: bool = True,
        serials: bool = False,
    ) -> None:
        if mode not in ("json", "html"):
            raise ValueError(f"mode must be 'json' or 'html', not {mode!r}")
        self.root = Path(root)
        self.mode = mode
        # RFC 9110 validators on project pages, and 304s for conditional requests that match.
        self.etags = etags
        self.last_modified = last_modified
        # A change feed: every change numbered; each project's last on the JSON root page
        # (`_last-serial`, with an ETag and 304s) and on its page (X-PyPI-Last-Serial).
        self.serials = serials
        self._serial = 0
        self._last_serial: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_next: list[int] = []
        # Every request with its headers, when it came, on which connection, and the answer.
        self.log: list[Seen] = []
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        # Seconds every project page takes to answer, so concurrent requests overlap.
        self.delay = 0.0
        self._misbehaving: dict[str, _Misbehaviour] = {}
        self._projects: dict[str, list[_Entry]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    def _bind(self) -> int:
        # Bound lazily so add_file() and url work before entering the context; after exit the
        # old URL is still reported (for messages) but nothing is bound again.
        if self._port is None:
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
            self._server.daemon_threads = True
            self._port = int(self._server.server_address[1])
        return self._port

    def __enter__(self) -> UpstreamServer:
        if self._closed:
            raise RuntimeError("an UpstreamServer can't be restarted; make a new one")
        self._bind()
        assert self._server is not None
        server = self._server
        self._thread = threading.Thread(
            # A short poll keeps shutdown() quick at teardown.
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()
                self._thread.join()
            self._server.server_close()
        self._server = None
        self._thread = None
        self._closed = True

    @property
    def port(self) -> int:
        return self._bind()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/simple/"

    # -- registry ---------------------------------------------------------------------------

    def add_file(
        self,
        project: str,
        path: Path,
        *,
        requires_python: str | None = None,
        yanked: str | None = None,
        upload_time: datetime | None = None,
    ) -> str:
        """Publish a copy of path under project; returns the file's absolute URL."""
        name = canonicalize_name(project)
        target_dir = self.root / "files" / name
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / Path(path).name
        shutil.copyfile(path, target)
        data = target.read_bytes()
        entry = _Entry(
            filename=target.name,
            path=target,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            upload_time=upload_time or datetime.now(UTC),
            requires_python=requires_python,
            yanked=yanked,
        )
        with self._lock:
            entries = [e for e in self._projects.get(name, []) if e.filename != entry.filename]
            self._projects[name] = [*entries, entry]
            self._numbered(name)
        return self.file_url(name, entry.filename)

    def _numbered(self, name: str) -> None:
        self._serial += 1
        self._last_serial[name] = self._serial

    def last_serial(self, project: str) -> int:
        with self._lock:
            return self._last_serial.get(canonicalize_name(project), 0)

    def remove_file(self, project: str, filename: str) -> None:
        """Delete a file from project's page, as an upstream index deletes a release."""
        name = canonicalize_name(project)
        with self._lock:
            self._projects[name] = [
                e for e in self._projects.get(name, []) if e.filename != filename
            ]
            self._numbered(name)

    def remove_project(self, project: str) -> None:
        """Delete the whole project: its page answers 404, as for a project deleted upstream."""
        name = canonicalize_name(project)
        with self._lock:
            self._projects.pop(name, None)
            self._numbered(name)

    def misbehave(self, project: str, *faults: Fault, forever: bool = False) -> None:
        """Answer the project's page with these faults, one per request, then normally.

        With forever=True the last fault is never used up.
        """
        with self._lock:
            self._misbehaving[canonicalize_name(project)] = _Misbehaviour(list(faults), forever)

    def seen(self, path: str) -> list[Seen]:
        """The logged requests for path (e.g. "/simple/demo/"), oldest first."""
        with self._lock:
            return [entry for entry in self.log if entry.path == path]

    def _fault_for(self, raw_path: str) -> Fault | None:
        parts = unquote(urlsplit(raw_path).path).strip("/").split("/")
        if len(parts) != 2 or parts[0] != "simple":
            return None
        with self._lock:
            plan = self._misbehaving.get(parts[1])
            if plan is None or not plan.faults:
                return None
            if plan.forever and len(plan.faults) == 1:
                return plan.faults[0]
            return plan.faults.pop(0)

    def _validators(self, entries: list[_Entry], body: bytes) -> dict[str, str]:
        headers = {}
        if self.etags:
            headers["ETag"] = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        if self.last_modified and entries:
            newest = max(e.upload_time for e in entries)
            headers["Last-Modified"] = email.utils.format_datetime(newest, usegmt=True)
        return headers

    @staticmethod
    def _not_modified(validators: dict[str, str], request: dict[str, str]) -> bool:
        # RFC 9110 §13.1.2: If-None-Match (weak comparison) wins; If-Modified-Since is only
        # looked at without it.
        if "if-none-match" in request:
            etag = validators.get("ETag")
            if etag is None:
                return False
            asked = [tag.strip().removeprefix("W/") for tag in request["if-none-match"].split(",")]
            return "*" in asked or etag.removeprefix("W/") in asked
        if "if-modified-since" in request and "Last-Modified" in validators:
            try:
                since = email.utils.parsedate_to_datetime(request["if-modified-since"])
                modified = email.utils.parsedate_to_datetime(validators["Last-Modified"])
            except (TypeError, ValueError):
                return False
            return modified <= since
        return False

    def file_url(self, project: str, filename: str) -> str:
        return f"{self.base}/files/{canonicalize_name(project)}/{quote(filename)}"

    def dist_files(self, project: str) -> list[DistFile]:
        """What a correct client should parse from the project's page."""
        name = canonicalize_name(project)
        with self._lock:
            entries = list(self._projects.get(name, []))
        return [
            DistFile(
                filename=e.filename,
                url=self.file_url(name, e.filename),
                sha256=e.sha256,
                requires_python=e.requires_python,
                yanked=e.yanked,
                upload_time=e.upload_time if self.mode == "json" else None,
                size=e.size if self.mode == "json" else None,
            )
            for e in entries
        ]

    # -- pages ------------------------------------------------------------------------------

    def _answer(self, method: str, raw_path: str, accept: str) -> tuple[int, str, bytes]:
        with self._lock:
            self.requests.append((method, raw_path))
            if self.fail_next:
                status = self.fail_next.pop(0)
                return status, "text/plain", f"injected failure {status}\n".encode()
            projects = {name: list(entries) for name, entries in self._projects.items()}
            serials = dict(self._last_serial)
        path = unquote(urlsplit(raw_path).path)
        kind = "text/html" if self.mode == "html" else _negotiate(accept)
        if path == "/simple/":
            return self._root_page(sorted(projects), kind, serials)
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "simple" and path.endswith("/"):
            entries = projects.get(parts[1])
            if entries is None:
                return 404, "text/plain", b"not found\n"
            if self.delay:
                time.sleep(self.delay)
            return self._project_page(parts[1], entries, kind)
        if len(parts) == 3 and parts[0] == "files":
            for entry in projects.get(parts[1], []):
                if entry.filename == parts[2]:
                    return 200, "application/octet-stream", entry.path.read_bytes()
        return 404, "text/plain", b"not found\n"

    def _root_page(
        self, names: list[str], kind: str, serials: dict[str, int]
    ) -> tuple[int, str, bytes]:
        if kind == JSON_V1:
            meta: dict[str, object] = {"api-version": "1.1"}
            projects: list[dict[str, object]] = [{"name": n} for n in names]
            if self.serials:
                meta["_last-serial"] = max(serials.values(), default=0)
                for item in projects:
                    item["_last-serial"] = serials.get(str(item["name"]), 0)
            body = {"meta": meta, "projects": projects}
            return 200, kind, json.dumps(body).encode()
        links = "".join(f'<a href="{n}/">{n}</a>\n' for n in names)
        return 200, kind, _html_document("Simple index", links).encode()

    def _project_page(self, name: str, entries: list[_Entry], kind: str) -> tuple[int, str, bytes]:
        if kind == JSON_V1:
            # PEP 691 v1.1 with PEP 700's versions, size and upload-time; absolute URLs.
            versions = sorted({str(v) for e in entries if (v := _version_of(e.filename))})
            files = []
            for e in entries:
                item: dict[str, object] = {
                    "filename": e.filename,
                    "url": self.file_url(name, e.filename),
                    "hashes": {"sha256": e.sha256},
                    "size": e.size,
                    "upload-time": e.upload_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                }
                if e.requires_python is not None:
                    item["requires-python"] = e.requires_python
                if e.yanked is not None:
                    item["yanked"] = e.yanked or True
                files.append(item)
            body = {
                "meta": {"api-version": "1.1"},
                "name": name,
                "versions": versions,
                "files": files,
            }
            return 200, kind, json.dumps(body).encode()
        # PEP 503 with relative hrefs, as many mirrors write them; attribute values escaped.
        links = []
        for e in entries:
            attrs = f' href="../../files/{name}/{quote(e.filename)}#sha256={e.sha256}"'
            if e.requires_python is not None:
                attrs += f' data-requires-python="{html.escape(e.requires_python)}"'
            if e.yanked is not None:
                attrs += f' data-yanked="{html.escape(e.yanked)}"'
            links.append(f"<a{attrs}>{html.escape(e.filename)}</a><br/>\n")
        return 200, kind, _html_document(f"Links for {name}", "".join(links)).encode()


def _version_of(filename: str) -> str | None:
    version = DistFile(filename=filename, url="", sha256=None).version
    return str(version) if version is not None else None


def _html_document(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html><head>"
        '<meta name="pypi:repository-version" content="1.1">'
        f"<title>{html.escape(title)}</title></head>\n<body>\n{body}</body></html>\n"
    )


def _make_handler(owner: UpstreamServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        connection_number = 0

        def setup(self) -> None:
            super().setup()
            with owner._lock:
                owner.connections += 1
                self.connection_number = owner.connections

        head_only = False

        def do_HEAD(self) -> None:
            # Installers ask for a file's size first (uv does, for range requests).
            self.head_only = True
            try:
                self.do_GET()
            finally:
                self.head_only = False  # the connection may carry a GET next

        def do_GET(self) -> None:
            seen = Seen(
                method="HEAD" if self.head_only else "GET",
                path=self.path,
                headers={key.lower(): value for key, value in self.headers.items()},
                at=time.monotonic(),
                connection=self.connection_number,
            )
            with owner._lock:
                owner.in_flight += 1
                owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
            try:
                self._answer(seen)
            finally:
                with owner._lock:
                    owner.in_flight -= 1

        def _log(self, seen: Seen) -> None:
            # Before the answer leaves, so a client that has it finds its request logged.
            with owner._lock:
                owner.log.append(seen)

        def _answer(self, seen: Seen) -> None:
            fault = owner._fault_for(self.path)
            if fault is not None:
                with owner._lock:
                    owner.requests.append(("GET", self.path))
                if fault.hang:
                    time.sleep(fault.hang)
                if fault.drop:
                    self._log(seen)
                    self.close_connection = True
                    return
                body = f"injected failure {fault.status}\n".encode()
                headers = {"Content-Type": "text/plain"}
                if fault.retry_after is not None:
                    headers["Retry-After"] = fault.retry_after
                return self._send(seen, fault.status, headers, body)
            status, content_type, body = owner._answer(
                "GET", self.path, self.headers.get("Accept", "")
            )
            headers = {"Content-Type": content_type}
            parts = unquote(urlsplit(self.path).path).strip("/").split("/")
            if status == 200 and parts == ["simple"] and owner.serials:
                validators = {"ETag": f'"{hashlib.sha256(body).hexdigest()[:16]}"'}
                headers.update(validators)
                if owner._not_modified(validators, seen.headers):
                    return self._send(seen, 304, validators, b"")
            if status == 200 and len(parts) == 2 and parts[0] == "simple":
                with owner._lock:
                    entries = list(owner._projects.get(parts[1], []))
                    serial = owner._last_serial.get(parts[1], 0)
                validators = owner._validators(entries, body)
                if owner.serials:
                    validators["X-PyPI-Last-Serial"] = str(serial)
                headers.update(validators)
                if owner._not_modified(validators, seen.headers):
                    # RFC 9110 §15.4.5: the validators again, and no body.
                    return self._send(seen, 304, validators, b"")
            return self._send(seen, status, headers, body)

        def _send(self, seen: Seen, status: int, headers: dict[str, str], body: bytes) -> None:
            self._log(dataclasses.replace(seen, status=status, body_bytes=len(body)))
            try:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if status != 304:
                    self.send_header("Content-Length", str(len(body)))
                self.send_header("Vary", "Accept")
                self.end_headers()
                if not self.head_only:
                    self.wfile.write(body)
            except OSError:
                # The client gave up (a hang longer than its timeout).
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            # Tests read owner.requests instead of stderr noise.
            pass

    return Handler


def clean_env() -> dict[str, str]:
    """The environment for installers: no pip or uv configuration of this machine leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", UV_NO_CONFIG="1")
    return env
