"""Talking to the upstream simple index: PEP 691 JSON and PEP 503 HTML pages, downloads."""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import email.utils
import hashlib
import importlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import httpx
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_random_exponential

import bot
from bot.errors import HashMismatch, ProjectNotFound, UpstreamError, UpstreamUnavailable

__all__ = [
    "ACCEPT",
    "USER_AGENT",
    "Checked",
    "DistFile",
    "ProjectPage",
    "ThreadLocalTransport",
    "Upstream",
    "Validators",
    "default_index_url",
    "make_client",
    "parse_html_page",
    "parse_json_page",
    "parse_pip_config_list",
    "pip_config_list",
    "watch",
]

USER_AGENT = f"wheelstock/{bot.__version__}"

# PEP 691: JSON preferred, HTML accepted; text/html last so PEP 503-only servers still answer.
JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
ACCEPT = f"{JSON_V1}, {HTML_V1};q=0.2, text/html;q=0.1"

_T = TypeVar("_T")
_J = TypeVar("_J")
_R = TypeVar("_R")

# A canonical project name (PEP 503) that is safe in a URL path as it is.
_PLAIN_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


@dataclass(frozen=True)
class DistFile:
    """One file on a project page, as upstream described it."""

    filename: str
    url: str
    sha256: str | None
    requires_python: str | None = None
    # PEP 592: None means not yanked; any string (even "") means yanked, the string is the reason.
    yanked: str | None = None
    upload_time: datetime | None = None
    size: int | None = None
    # PEP 658/714: upstream serves this file's core metadata at `<url>.metadata`. None when it
    # doesn't; "sha256=<hex>" when a sha256 of that file was given; "true" when none was.
    core_metadata: str | None = None

    @property
    def is_sdist(self) -> bool:
        # PEP 625 names sdists .tar.gz; .zip is the legacy form pip still accepts.
        if not self.filename.endswith((".tar.gz", ".zip")):
            return False
        try:
            parse_sdist_filename(self.filename)
        except (InvalidSdistFilename, InvalidVersion):
            return False
        return True

    @property
    def is_wheel(self) -> bool:
        if not self.filename.endswith(".whl"):
            return False
        try:
            parse_wheel_filename(self.filename)
        except (InvalidWheelFilename, InvalidVersion):
            return False
        return True

    @property
    def version(self) -> Version | None:
        try:
            if self.filename.endswith(".whl"):
                return parse_wheel_filename(self.filename)[1]
            if self.filename.endswith((".tar.gz", ".zip")):
                return parse_sdist_filename(self.filename)[1]
        except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
            return None
        return None


@dataclass(frozen=True)
class ProjectPage:
    """A project's page on the upstream index."""

    name: str
    url: str
    files: tuple[DistFile, ...]


@dataclass(frozen=True)
class Validators:
    """What a conditional request sends back (RFC 9110 §13): the page's ETag and Last-Modified."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        # Both when both are known: a server that ignores If-None-Match may still honour
        # If-Modified-Since, and one that honours both gives If-None-Match precedence.
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


@dataclass(frozen=True)
class Checked:
    """The outcome of checking one project against upstream."""

    name: str  # canonical
    # "changed": 200, page parsed; "unchanged": 304; "missing": 404; "failed": after retries.
    status: str
    page: ProjectPage | None  # set when changed
    validators: Validators  # from the 200 (or 304) response, else the ones sent
    error: str | None = None  # one line, when failed or missing


# --- which index pip uses ---------------------------------------------------------------------


def parse_pip_config_list(text: str) -> dict[str, str]:
    """Parse `pip config list` output (`section.key='value'` lines) into a mapping."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        key, sep, value = raw.strip().partition("=")
        if not sep or not key:
            continue
        # pip prints values with repr(), so they come back through literal_eval.
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        values[key.strip()] = str(parsed)
    return values


def pip_config_list(python: str | None = None) -> dict[str, str]:
    """Run `python -m pip config list`; an empty mapping if pip can't be run."""
    command = [python or sys.executable, "-m", "pip", "config", "list"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    if result.returncode != 0:
        return {}
    return parse_pip_config_list(result.stdout)


def _pip_builtin_index() -> str | None:
    # Asked of pip itself so that no registry host is written down here; pip's internals may move,
    # so any failure just means "unknown".
    try:
        module = importlib.import_module("pip._internal.models.index")
        url = module.PyPI.simple_url
    except Exception:
        return None
    return url if isinstance(url, str) and url else None


def default_index_url(
    environ: Mapping[str, str],
    pip_config: Callable[[], Mapping[str, str]] | None = None,
) -> str:
    """The index pip on this machine would use, with a trailing slash."""
    url = environ.get("PIP_INDEX_URL", "").strip()
    if not url:
        config = (pip_config or pip_config_list)()
        # pip applies the [install] section over [global] for `pip install`. `:env:` keys are
        # ignored because the caller passed the environment explicitly.
        url = (config.get("install.index-url") or config.get("global.index-url") or "").strip()
    if not url:
        url = _pip_builtin_index() or ""
    if not url:
        raise UpstreamError(
            "no upstream index configured; pass --upstream URL or set PIP_INDEX_URL"
        )
    return url if url.endswith("/") else url + "/"


# --- parsing pages ----------------------------------------------------------------------------


# URLs as indexes write them: http(s), an ASCII host name with a letter in it or a valid
# IPv4 address, a port, a path of URL-safe characters. httpx accepts every one of them, so
# its parse (half the cost of reading a JSON page) is skipped for them.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_PLAIN_URL = re.compile(
    rf"https?://(?:(?=[^/:]*[A-Za-z])[A-Za-z0-9.-]+|(?:{_OCTET}\.){{3}}{_OCTET})"
    r"(?::(\d{1,5}))?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?"
)


def _url_problem(url: str) -> str | None:
    """Why `url` cannot be parsed or fetched as written (one line), or None when it can."""
    plain = _PLAIN_URL.fullmatch(url)
    if plain is not None and int(plain.group(1) or 0) <= 65535:
        return None
    try:
        # .port is checked lazily by urllib; httpx parses once more the way it will fetch.
        urlsplit(url).port  # noqa: B018
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def is_bare_filename(name: str) -> bool:
    """A name that is one file in one directory: no separators, no parent, not hidden."""
    return bool(name) and not ("/" in name or "\\" in name or "\0" in name or name.startswith("."))


def _parse_time(text: str) -> datetime:
    # PEP 700: ISO 8601 "yyyy-mm-ddThh:mm:ss.ffffffZ"; fromisoformat takes "Z" since 3.11.
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:  # e.g. year 1 with a positive offset
        raise ValueError(f"out of range: {text!r}") from exc


def _check_api_version(version: object, where: str) -> None:
    # PEP 629/691: a client must refuse a major version it doesn't know.
    if version is None:
        return
    major = str(version).split(".", 1)[0]
    if major != "1":
        raise UpstreamError(
            f"upstream {where} speaks simple API version {version}; only 1.x is supported"
        )


def _json_core_metadata(value: Any) -> str | None:
    """PEP 691/714 `core-metadata`: true/false or a mapping of hash names to hex digests."""
    if value is None or value is False:
        return None
    if value is True:
        return "true"
    if not isinstance(value, dict):
        raise ValueError("is neither a boolean nor an object")
    digest = value.get("sha256")
    if digest is None:
        # Metadata is there, only not with a hash we can check.
        return "true"
    if not isinstance(digest, str) or not digest:
        raise ValueError("has a sha256 that is not a string")
    return f"sha256={digest.lower()}"


def _html_core_metadata(anchor: Mapping[str, str | None]) -> str | None:
    """PEP 658/714 `data-core-metadata`: "true" or "<hashname>=<hexdigest>"."""
    # PEP 714 renamed the attribute; the old name is still read from indexes that predate it.
    for key in ("data-core-metadata", "data-dist-info-metadata"):
        if key in anchor:
            value = (anchor[key] or "").strip()
            break
    else:
        return None
    if value.lower() == "true":
        return "true"
    algorithm, sep, digest = value.partition("=")
    if not sep or not algorithm or not digest:
        # Neither form PEP 658 allows; not trusted to mean the file exists.
        return None
    if algorithm.lower() == "sha256":
        return f"sha256={digest.lower()}"
    return "true"


def parse_json_page(data: Any, page_url: str) -> tuple[DistFile, ...]:
    """Files of a PEP 691 JSON project page; relative URLs resolved against page_url."""

    def bad(path: str, what: str) -> UpstreamError:
        return UpstreamError(f"upstream {page_url} sent an invalid project page: {path} {what}")

    if not isinstance(data, dict):
        raise bad("the document", "is not a JSON object")
    meta = data.get("meta")
    if isinstance(meta, dict):
        _check_api_version(meta.get("api-version"), page_url)
    entries = data.get("files")
    if not isinstance(entries, list):
        raise bad("files", "is not a list")
    files: list[DistFile] = []
    for index, entry in enumerate(entries):
        at = f"files[{index}]"
        if not isinstance(entry, dict):
            raise bad(at, "is not an object")
        filename = entry.get("filename")
        if not isinstance(filename, str) or not filename:
            raise bad(f"{at}.filename", "is not a string")
        if not is_bare_filename(filename):
            # The name becomes a path on disk: never a directory, a parent or a hidden file.
            raise bad(f"{at}.filename", f"is not a bare file name: {filename!r}")
        url = entry.get("url")
        if not isinstance(url, str) or not url:
            raise bad(f"{at}.url", "is not a string")
        hashes = entry.get("hashes", {})
        if not isinstance(hashes, dict):
            raise bad(f"{at}.hashes", "is not an object")
        sha256 = hashes.get("sha256")
        if sha256 is not None and not isinstance(sha256, str):
            raise bad(f"{at}.hashes.sha256", "is not a string")
        requires_python = entry.get("requires-python")
        if requires_python is not None and not isinstance(requires_python, str):
            raise bad(f"{at}.requires-python", "is not a string")
        # PEP 691: yanked is a bool, or a string giving the reason.
        yanked_value = entry.get("yanked", False)
        if yanked_value is True:
            yanked: str | None = ""
        elif yanked_value is False or yanked_value is None:
            yanked = None
        elif isinstance(yanked_value, str):
            yanked = yanked_value
        else:
            raise bad(f"{at}.yanked", "is neither a boolean nor a string")
        upload_time: datetime | None = None
        upload_value = entry.get("upload-time")
        if upload_value is not None:
            if not isinstance(upload_value, str):
                raise bad(f"{at}.upload-time", "is not a string")
            try:
                upload_time = _parse_time(upload_value)
            except ValueError:
                what = f"is not an ISO 8601 time: {upload_value!r}"
                raise bad(f"{at}.upload-time", what) from None
        size = entry.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise bad(f"{at}.size", "is not a non-negative integer")
        # PEP 714: `core-metadata` wins; `dist-info-metadata` is the PEP 658 name older indexes use.
        metadata_key = "core-metadata" if "core-metadata" in entry else "dist-info-metadata"
        try:
            core_metadata = _json_core_metadata(entry.get(metadata_key))
        except ValueError as exc:
            raise bad(f"{at}.{metadata_key}", str(exc)) from None
        try:
            resolved = urldefrag(urljoin(page_url, url)).url
        except ValueError:
            resolved = None
        if resolved is None or _url_problem(resolved) is not None:
            raise bad(f"{at}.url", f"is not a valid URL: {url!r}")
        files.append(
            DistFile(
                filename=filename,
                url=resolved,
                sha256=sha256.lower() if sha256 else None,
                requires_python=requires_python,
                yanked=yanked,
                upload_time=upload_time,
                size=size,
                core_metadata=core_metadata,
            )
        )
    return tuple(files)


class _AnchorCollector(HTMLParser):
    """Collects <a> attributes, <base href> and the PEP 629 repository-version meta tag."""

    def __init__(self) -> None:
        # HTMLParser already unescapes attribute values, so `&lt;` in data-requires-python
        # arrives as `<` (PEP 503 requires the escaping).
        super().__init__(convert_charrefs=True)
        self.anchors: list[dict[str, str | None]] = []
        self.base: str | None = None
        self.repository_version: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.anchors.append(values)
        elif tag == "base" and values.get("href") and self.base is None:
            self.base = values["href"]
        elif tag == "meta" and values.get("name") == "pypi:repository-version":
            self.repository_version = values.get("content")


def parse_html_page(text: str, page_url: str) -> tuple[DistFile, ...]:
    """Files of a PEP 503 HTML project page; relative hrefs resolved against page_url."""
    collector = _AnchorCollector()
    collector.feed(text)
    collector.close()
    _check_api_version(collector.repository_version, page_url)
    base = page_url
    if collector.base:
        try:
            base = urljoin(page_url, collector.base)
        except ValueError:
            base = ""
        if not base or _url_problem(base) is not None:
            # Every relative link would resolve wrongly, so the page as a whole is unusable.
            raise UpstreamError(
                f"upstream {page_url} sent an invalid project page: "
                f"<base href> is not a valid URL: {collector.base!r}"
            )
    files: list[DistFile] = []
    for anchor in collector.anchors:
        href = anchor["href"] or ""
        # A bad link on upstream's page must not cost the other files: it is skipped.
        try:
            url, fragment = urldefrag(urljoin(base, href))
        except ValueError:
            continue
        if _url_problem(url) is not None:
            continue
        # PEP 503: the filename is the URL's last path segment.
        filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        if not is_bare_filename(filename):
            # `%2F` unquotes to "/": such a link would name a path, not a file.
            continue
        algorithm, _, digest = fragment.partition("=")
        sha256 = digest.lower() if algorithm == "sha256" and digest else None
        # PEP 592: the attribute's presence means yanked; its value (maybe empty) is the reason.
        yanked = (anchor["data-yanked"] or "") if "data-yanked" in anchor else None
        upload_time: datetime | None = None
        raw_time = anchor.get("data-upload-time")
        if raw_time:
            # Not standardised for HTML, so a bad value is dropped rather than fatal.
            with contextlib.suppress(ValueError):
                upload_time = _parse_time(raw_time)
        files.append(
            DistFile(
                filename=filename,
                url=url,
                sha256=sha256,
                requires_python=anchor.get("data-requires-python") or None,
                yanked=yanked,
                upload_time=upload_time,
                core_metadata=_html_core_metadata(anchor),
            )
        )
    return tuple(files)


# --- HTTP -------------------------------------------------------------------------------------


_LIMITS = httpx.Limits(max_keepalive_connections=10, keepalive_expiry=30.0)


class ThreadLocalTransport(httpx.BaseTransport):
    """One keep-alive `httpx.HTTPTransport` per thread, behind one shared `httpx.Client`.

    httpcore's pool serialises threads on its lock: measured on 2 cores against a loopback
    server answering in 30 ms, 32 threads sharing one pool managed 771 requests/s and 64
    threads 393-548/s, while a connection pool per thread managed 873/s (32) and 1,032/s (48).
    The client (headers, timeouts, redirects) stays shared; concurrency is bounded by the
    number of threads using it.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits = _LIMITS,
        verify: bool = True,
        trust_env: bool = True,
    ) -> None:
        self._limits = limits
        self._verify = verify
        self._trust_env = trust_env
        self._local = threading.local()
        self._lock = threading.Lock()
        self._ssl_context: Any = None
        self._by_thread: dict[threading.Thread, httpx.HTTPTransport] = {}

    def _transport(self) -> httpx.HTTPTransport:
        transport: httpx.HTTPTransport | None = getattr(self._local, "transport", None)
        if transport is not None:
            return transport
        with self._lock:
            if self._ssl_context is None:
                # Loading the CA bundle costs tens of milliseconds: done once, not per thread.
                self._ssl_context = httpx.create_ssl_context(
                    verify=self._verify, trust_env=self._trust_env
                )
            transport = httpx.HTTPTransport(verify=self._ssl_context, limits=self._limits)
            # Threads of finished pools leave idle connections behind: closed here, so a
            # long-lived client holds at most one pool per live thread.
            dead = [thread for thread in self._by_thread if not thread.is_alive()]
            stale = [self._by_thread.pop(thread) for thread in dead]
            self._by_thread[threading.current_thread()] = transport
        for old in stale:
            old.close()
        self._local.transport = transport
        return transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._transport().handle_request(request)

    def close(self) -> None:
        with self._lock:
            transports = list(self._by_thread.values())
            self._by_thread.clear()
            # Other threads' locals still point at their closed transports; a closed httpcore
            # pool reopens connections on demand, so a late request still works.
        for transport in transports:
            transport.close()


class _Cookies(httpx.Cookies):
    """httpx's cookie jar, skipped for the responses that set no cookie."""

    def extract_cookies(self, response: httpx.Response) -> None:
        # http.cookiejar builds a urllib request per response even when there is nothing to
        # extract: 11% of a 304's cost in the watch benchmark. Index pages set no cookies.
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


def make_client(*, timeout: float | httpx.Timeout = 30.0) -> httpx.Client:
    """An HTTP client for upstream: redirects followed, our User-Agent, keep-alive per thread.

    With a proxy configured in the environment (HTTP_PROXY and friends), httpx's own pool is
    used instead, because only it routes through the proxy; it is slower across threads.
    """
    proxied = any(urllib.request.getproxies().get(scheme) for scheme in ("http", "https", "all"))
    client = httpx.Client(
        follow_redirects=True,
        headers={"User-Agent": USER_AGENT},
        timeout=timeout,
        transport=None if proxied else ThreadLocalTransport(),
    )
    # Private in httpx (0.27-0.28); if it moves, this only stops saving time.
    if isinstance(getattr(client, "_cookies", None), httpx.Cookies):
        client._cookies = _Cookies(client.cookies.jar)
    return client


def _retry_after(value: str | None) -> float | None:
    """RFC 9110 §10.2.3 Retry-After: delay-seconds or an HTTP-date; seconds from now."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        # RFC 9110 HTTP-dates are always GMT.
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


class _ServerError(Exception):
    """A 5xx (or 429) answer, retried like a transport error."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.status_code = response.status_code
        self.reason = response.reason_phrase
        self.retry_after = _retry_after(response.headers.get("Retry-After"))


def _is_retryable_status(status: int) -> bool:
    # 5xx is the server's problem and often passes; 429 (RFC 6585) asks us to come back later.
    return status >= 500 or status == 429


def _is_retryable_error(exc: BaseException) -> bool:
    # A wrong URL scheme won't fix itself; connection trouble and timeouts may.
    if isinstance(exc, httpx.UnsupportedProtocol):
        return False
    return isinstance(exc, (httpx.TransportError, _ServerError))


def _describe(exc: httpx.TransportError) -> str:
    """A short, one-line reason for a transport failure."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    text = (str(exc).strip().splitlines() or [""])[0]
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    if not text:
        return type(exc).__name__
    return text[0].lower() + text[1:]


def _validators_of(response: httpx.Response, sent: Validators) -> Validators:
    # RFC 9111 §4.3.4: a 304 may carry updated validators; what it leaves out is kept.
    return Validators(
        etag=response.headers.get("ETag") or sent.etag,
        last_modified=response.headers.get("Last-Modified") or sent.last_modified,
    )


def _status_message(url: str, response: httpx.Response) -> str:
    return f"upstream {url} answered HTTP {response.status_code} {response.reason_phrase}".rstrip()


def _plural(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def _check_url(url: str) -> None:
    problem = _url_problem(url)
    if problem is not None:
        raise UpstreamError(f"invalid upstream URL {url!r}: {problem}")


class Upstream:
    """A simple index (PEP 503/691) reached through an `httpx.Client`."""

    def __init__(
        self,
        index_url: str,
        client: httpx.Client,
        *,
        attempts: int = 3,
        wait: wait_base | None = None,
        max_retry_after: float = 60.0,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.index_url = index_url if index_url.endswith("/") else index_url + "/"
        problem = _url_problem(self.index_url)
        if problem is not None:
            # Refused here, so a typo in --upstream is one line, never a traceback later on.
            raise UpstreamError(f"invalid upstream URL {index_url!r}: {problem}")
        self.client = client
        self.attempts = attempts
        # Exponential backoff with full jitter so many clients don't retry in lockstep.
        self.wait: wait_base = (
            wait if wait is not None else wait_random_exponential(multiplier=0.5, max=10)
        )
        # A Retry-After longer than this is not waited out: the check fails and the next tick
        # asks again, so a tick is never stuck behind a rate limit and never comes back early.
        self.max_retry_after = max_retry_after
        # RFC 6585: a 429 limits this client, not one URL, so every thread holds back until
        # the time upstream asked for (monotonic seconds).
        self._not_before = 0.0

    def _should_retry(self, exc: BaseException) -> bool:
        if isinstance(exc, _ServerError) and exc.retry_after is not None:
            return exc.retry_after <= self.max_retry_after
        return _is_retryable_error(exc)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _ServerError) and exc.retry_after is not None:
            # Honoured as given (RFC 9110 §10.2.3), no sooner; jitter would only shorten it.
            if exc.status_code == 429:
                self._not_before = max(self._not_before, time.monotonic() + exc.retry_after)
            return exc.retry_after
        return float(self.wait(state))

    def _hold_back(self) -> None:
        delay = self._not_before - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _retrying(self, url: str, call: Callable[[], _T]) -> _T:
        """Run `call` with the retry policy; translate what's left into wheelstock errors."""
        tries = 0

        def attempt() -> _T:
            nonlocal tries
            tries += 1
            self._hold_back()
            return call()

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=retry_if_exception(self._should_retry),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except httpx.InvalidURL as exc:
            # Not an httpx.HTTPError: raised while the request is built, never worth retrying.
            raise UpstreamError(f"invalid upstream URL {url!r}: {_first_line(exc)}") from exc
        except httpx.UnsupportedProtocol as exc:
            raise UpstreamError(
                f"upstream {url} cannot be fetched: only http and https are supported"
            ) from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(
                f"upstream {url} unreachable: {_describe(exc)} (after {_plural(tries)})"
            ) from exc
        except _ServerError as exc:
            later = ""
            if exc.retry_after is not None and exc.retry_after > self.max_retry_after:
                later = f", asked to retry after {exc.retry_after:.0f} s"
            raise UpstreamUnavailable(
                f"upstream {url} unavailable: HTTP {exc.status_code} {exc.reason}".rstrip()
                + f" (after {_plural(tries)}{later})"
            ) from exc
        except httpx.HTTPError as exc:
            # Bad or too many redirects, undecodable bodies: not worth retrying.
            raise UpstreamError(f"upstream {url} failed: {_first_line(exc)}") from exc

    def project(self, name: str) -> ProjectPage:
        """Fetch and parse the project's page (JSON if upstream offers it, else HTML)."""
        canonical = canonicalize_name(name)
        url = f"{self.index_url}{canonical}/"
        _check_url(url)

        def fetch() -> httpx.Response:
            response = self.client.get(url, headers={"Accept": ACCEPT})
            if _is_retryable_status(response.status_code):
                raise _ServerError(response)
            return response

        response = self._retrying(url, fetch)
        if response.status_code == 404:
            raise ProjectNotFound(f"project {name!r} not found at {self.index_url}")
        if response.status_code != 200:
            raise UpstreamError(_status_message(url, response))
        return self._page(canonical, response)

    def check(self, name: str, validators: Validators | None = None) -> Checked:
        """Check one project, conditionally when validators are given; never raises for it.

        A 304 costs no parsing and keeps the validators sent; a 200 is parsed and its own
        validators replace them. Trouble that outlasts the retries comes back as "failed"
        with a one-line reason, so one project never stops a watch of thousands.
        """
        canonical = canonicalize_name(name)
        sent = validators if validators is not None else Validators()
        url = f"{self.index_url}{canonical}/"
        headers = {"Accept": ACCEPT, **sent.headers()}

        def fetch() -> httpx.Response:
            response = self.client.get(url, headers=headers)
            if _is_retryable_status(response.status_code):
                raise _ServerError(response)
            return response

        try:
            if not _PLAIN_NAME.fullmatch(canonical):
                # Only names with unusual characters need the (slower) full URL check.
                _check_url(url)
            response = self._retrying(url, fetch)
            status = response.status_code
            if status == 304 and (sent.etag or sent.last_modified):
                return Checked(canonical, "unchanged", None, _validators_of(response, sent))
            if status == 404:
                error = f"project {name!r} not found at {self.index_url}"
                return Checked(canonical, "missing", None, Validators(), error)
            if status != 200:
                # Includes a 304 to a request that was not conditional: there is nothing to
                # keep, so it is as useless as any other unexpected status.
                raise UpstreamError(_status_message(url, response))
            page = self._page(canonical, response)
        except UpstreamError as exc:
            return Checked(canonical, "failed", None, sent, _first_line(exc))
        except (ValueError, RecursionError, OverflowError, UnicodeError) as exc:
            # Whatever a hostile page trips in a parser costs that project, never the watch.
            reason = f"upstream {url} sent a page that cannot be read: {type(exc).__name__}"
            return Checked(canonical, "failed", None, sent, reason)
        return Checked(canonical, "changed", page, _validators_of(response, Validators()))

    def _page(self, canonical: str, response: httpx.Response) -> ProjectPage:
        page_url = str(response.url)
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type == JSON_V1:
            try:
                data = json.loads(response.content)
            except (ValueError, RecursionError) as exc:
                reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
                raise UpstreamError(f"upstream {page_url} sent invalid JSON: {reason}") from exc
            files = parse_json_page(data, page_url)
        elif content_type.endswith("+json") or content_type == "application/json":
            # Anything else JSON-shaped is a format we never asked for (PEP 691 negotiation).
            raise UpstreamError(
                f"upstream {page_url} answered with unsupported content type {content_type}"
            )
        else:
            # Mirrors often ignore Accept and serve PEP 503 HTML; that's fine.
            files = parse_html_page(response.text, page_url)
        return ProjectPage(name=canonical, url=page_url, files=files)

    def download(self, url: str, dest: Path, sha256: str) -> Path:
        """Stream url to dest, verifying sha256; nothing is left at dest unless it matched."""
        _check_url(url)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or dest.name
        expected = sha256.lower()

        def fetch() -> tuple[Path, str]:
            # A fresh temp file per attempt, in dest's directory so os.replace stays atomic.
            handle, temp_name = tempfile.mkstemp(
                prefix=f".{dest.name}.", suffix=".part", dir=dest.parent
            )
            temp = Path(temp_name)
            try:
                digest = hashlib.sha256()
                with os.fdopen(handle, "wb") as out, self.client.stream("GET", url) as response:
                    if _is_retryable_status(response.status_code):
                        raise _ServerError(response)
                    if response.status_code != 200:
                        raise UpstreamError(_status_message(url, response))
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        out.write(chunk)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            return temp, digest.hexdigest()

        temp, actual = self._retrying(url, fetch)
        if actual != expected:
            temp.unlink(missing_ok=True)
            raise HashMismatch(f"sha256 mismatch for {filename}: expected {expected}, got {actual}")
        os.replace(temp, dest)
        return dest


# --- watching many projects -------------------------------------------------------------------


@dataclass(frozen=True)
class _WorkerSettings:
    """What a worker process needs to rebuild the caller's `Upstream` (clients don't pickle)."""

    index_url: str
    timeout: httpx.Timeout
    attempts: int
    wait: wait_base
    max_retry_after: float
    threads: int


_worker: tuple[Upstream, concurrent.futures.ThreadPoolExecutor] | None = None


def _start_worker(settings: _WorkerSettings) -> None:
    # Runs once per worker process: one client and one thread pool serve all its chunks, so
    # connections stay alive from one chunk to the next.
    global _worker
    upstream = Upstream(
        settings.index_url,
        make_client(timeout=settings.timeout),
        attempts=settings.attempts,
        wait=settings.wait,
        max_retry_after=settings.max_retry_after,
    )
    _worker = (upstream, concurrent.futures.ThreadPoolExecutor(settings.threads))


def _check_chunk(items: list[tuple[str, Validators | None]]) -> list[Checked]:
    assert _worker is not None, "worker process not initialised"
    upstream, pool = _worker
    return list(pool.map(lambda item: upstream.check(*item), items))


def watch(
    upstream: Upstream | str,
    items: Sequence[tuple[str, Validators | None]],
    *,
    processes: int | None = 1,
    threads: int = 48,
    chunk: int = 500,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Checked]:
    """Check every (name, validators) in items; yields one `Checked` each, in no set order.

    With processes=1 (or no more than `chunk` items) the work runs here on `upstream`'s client
    from `threads` threads. Otherwise items go in chunks to `processes` worker processes
    (None: one per CPU), each rebuilding `upstream` from its settings (URL, timeout, attempts,
    wait, max_retry_after) with `threads` threads of its own. `progress(done, total)` is called
    after every `chunk` results and at the end.
    """
    if threads < 1 or chunk < 1:
        raise ValueError("threads and chunk must be at least 1")
    if isinstance(upstream, str):
        owned = Upstream(upstream, make_client())
        try:
            yield from watch(
                owned, items, processes=processes, threads=threads, chunk=chunk, progress=progress
            )
        finally:
            owned.client.close()
        return
    count = (os.cpu_count() or 1) if processes is None else processes
    if count < 1:
        raise ValueError("processes must be at least 1")
    total = len(items)
    done = 0
    reported = 0
    # A single process can keep only about one core busy (the GIL): measured on 2 cores,
    # one process with 48 threads made about 1,000 requests/s, two made about 1,800/s.
    results = (
        _watch_here(upstream, items, threads)
        if count == 1 or total <= chunk
        else _watch_in_processes(upstream, items, count, threads, chunk)
    )
    try:
        for checked in results:
            done += 1
            yield checked
            if progress is not None and (done - reported >= chunk or done == total):
                reported = done
                progress(done, total)
    finally:
        results.close()


def _windowed(
    submit: Callable[[_J], concurrent.futures.Future[_R]], jobs: Iterable[_J], window: int
) -> Iterator[concurrent.futures.Future[_R]]:
    """Submit jobs keeping at most ``window`` in flight; yield each future once it is done.

    A bounded window: 25,000 futures at once would only cost memory.
    """
    pending: set[concurrent.futures.Future[_R]] = set()
    queue = iter(jobs)
    while True:
        for job in queue:
            pending.add(submit(job))
            if len(pending) >= window:
                break
        if not pending:
            return
        finished, pending = concurrent.futures.wait(
            pending, return_when=concurrent.futures.FIRST_COMPLETED
        )
        yield from finished


def _watch_here(
    upstream: Upstream, items: Sequence[tuple[str, Validators | None]], threads: int
) -> Generator[Checked, None, None]:
    if not items:
        return
    pool = concurrent.futures.ThreadPoolExecutor(min(threads, len(items)))
    try:
        for future in _windowed(
            lambda item: pool.submit(upstream.check, *item), items, threads * 4
        ):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _watch_in_processes(
    upstream: Upstream,
    items: Sequence[tuple[str, Validators | None]],
    processes: int,
    threads: int,
    chunk: int,
) -> Generator[Checked, None, None]:
    settings = _WorkerSettings(
        index_url=upstream.index_url,
        timeout=upstream.client.timeout,
        attempts=upstream.attempts,
        wait=upstream.wait,
        max_retry_after=upstream.max_retry_after,
        threads=threads,
    )
    chunks = (list(items[start : start + chunk]) for start in range(0, len(items), chunk))
    # "spawn": forking a process that runs threads (servers, pools) can copy held locks.
    pool = concurrent.futures.ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(settings,),
    )
    try:
        # Two chunks per worker in flight, so none waits for the parent between chunks.
        for future in _windowed(
            lambda part: pool.submit(_check_chunk, part), chunks, 2 * processes
        ):
            try:
                checked = future.result()
            except concurrent.futures.process.BrokenProcessPool as exc:
                raise UpstreamError(f"watching upstream failed: {_first_line(exc)}") from exc
            yield from checked
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
