"""The upstream index client: HTTP with keep-alive, retries (tenacity) and conditional requests
for project pages, the change feed on the root page, and verified downloads.

Just over the ~500 lines a module here aims for: every request here goes through one retry
policy and one translation of what is left into one-line errors; the page model and its
parsers are in ``bot.simple``, the worker pool in ``bot.watch``.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import httpx
from packaging.utils import (
    canonicalize_name,
)
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_random_exponential

import bot
from bot.errors import HashMismatch, ProjectNotFound, UpstreamError, UpstreamUnavailable, first_line
from bot.simple import (
    ACCEPT,
    JSON_V1,
    MAX_SERIAL,
    ProjectPage,
    parse_html_page,
    parse_json_page,
    parse_root_serials,
    url_problem,
)

USER_AGENT = f"wheelstock/{bot.__version__}"


_T = TypeVar("_T")


# A canonical project name (PEP 503) that is safe in a URL path as it is.
_PLAIN_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


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
    # The serial of the project's last change, where the page says it (SERIAL_HEADER).
    serial: int | None = None


# The header an index that numbers its changes sends with each project page: the serial of
# the project's last change, the same number its root page lists (bot.simple.parse_root_serials).
SERIAL_HEADER = "X-PyPI-Last-Serial"


# A root page larger than this is not read as a change feed (the watch checks every page
# instead): a real index's, listing about a million projects with serials, is near 50 MB.
MAX_ROOT_BYTES = 256 << 20


@dataclass(frozen=True)
class Feed:
    """What the root page said of every project (`Upstream.feed`).

    status "changed": the page was sent and carries serials; "unchanged": a 304 to the
    validators sent, so the serials read from it last time still hold; "none": the index
    offers no change feed (an HTML root, no serials on it, or no root page at all).
    """

    status: str
    serials: dict[str, int] | None  # canonical name -> serial, when "changed"
    validators: Validators


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


def _serial_of(response: httpx.Response) -> int | None:
    value = response.headers.get(SERIAL_HEADER, "").strip()
    # The digit count first: int() refuses a string of more than 4,300 digits with an error.
    if not (value.isascii() and value.isdigit()) or len(value.lstrip("0")) > 19:
        return None
    serial = int(value)
    return serial if serial <= MAX_SERIAL else None


def _content_type(response: httpx.Response) -> str:
    return str(response.headers.get("content-type", "")).split(";", 1)[0].strip().lower()


def _json(content: bytes, url: object) -> Any:
    try:
        return json.loads(content)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise UpstreamError(f"upstream {url} sent invalid JSON: {reason}") from exc


def _status_message(url: str, response: httpx.Response) -> str:
    return f"upstream {url} answered HTTP {response.status_code} {response.reason_phrase}".rstrip()


def _plural(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def _check_url(url: str) -> None:
    problem = url_problem(url)
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
        problem = url_problem(self.index_url)
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
            raise UpstreamError(f"invalid upstream URL {url!r}: {first_line(exc)}") from exc
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
            raise UpstreamError(f"upstream {url} failed: {first_line(exc)}") from exc

    def _get(self, url: str, headers: dict[str, str]) -> httpx.Response:
        """GET with the retry policy; a status worth retrying is retried, any other returned."""

        def fetch() -> httpx.Response:
            response = self.client.get(url, headers=headers)
            if _is_retryable_status(response.status_code):
                raise _ServerError(response)
            return response

        return self._retrying(url, fetch)

    def project(self, name: str) -> ProjectPage:
        """Fetch and parse the project's page (JSON if upstream offers it, else HTML)."""
        canonical = canonicalize_name(name)
        url = f"{self.index_url}{canonical}/"
        _check_url(url)
        response = self._get(url, {"Accept": ACCEPT})
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

        try:
            if not _PLAIN_NAME.fullmatch(canonical):
                # Only names with unusual characters need the (slower) full URL check.
                _check_url(url)
            response = self._get(url, headers)
            status = response.status_code
            if status == 304 and (sent.etag or sent.last_modified):
                validators = _validators_of(response, sent)
                return Checked(
                    canonical, "unchanged", None, validators, serial=_serial_of(response)
                )
            if status == 404:
                error = f"project {name!r} not found at {self.index_url}"
                return Checked(canonical, "missing", None, Validators(), error)
            if status != 200:
                # Includes a 304 to a request that was not conditional: there is nothing to
                # keep, so it is as useless as any other unexpected status.
                raise UpstreamError(_status_message(url, response))
            page = self._page(canonical, response)
        except UpstreamError as exc:
            return Checked(canonical, "failed", None, sent, first_line(exc))
        except (ValueError, RecursionError, OverflowError, UnicodeError) as exc:
            # Whatever a hostile page trips in a parser costs that project, never the watch.
            reason = f"upstream {url} sent a page that cannot be read: {type(exc).__name__}"
            return Checked(canonical, "failed", None, sent, reason)
        validators = _validators_of(response, Validators())
        return Checked(canonical, "changed", page, validators, serial=_serial_of(response))

    def feed(self, validators: Validators | None = None) -> Feed:
        """Read the change feed on the root page, conditionally when validators are given.

        One request for every project: a JSON root page that lists each project's serial
        (bot.simple.parse_root_serials). An index without one answers "none", and the body of
        a root page that is not JSON (tens of megabytes at a large index) is never read.
        Trouble that outlasts the retries, or a feed that cannot be read, raises UpstreamError.
        """
        sent = validators if validators is not None else Validators()
        url = self.index_url
        request = self.client.build_request(
            "GET", url, headers={"Accept": ACCEPT, **sent.headers()}
        )

        def fetch() -> tuple[httpx.Response, bytes]:
            response = self.client.send(request, stream=True)
            body = bytearray()
            try:
                if _is_retryable_status(response.status_code):
                    raise _ServerError(response)
                if response.status_code == 200 and _content_type(response) == JSON_V1:
                    for chunk in response.iter_bytes():  # decoded: a gzip bomb counts in full
                        body += chunk
                        if len(body) > MAX_ROOT_BYTES:
                            raise UpstreamError(
                                f"upstream {url} sent a root page of more than "
                                f"{MAX_ROOT_BYTES >> 20} MiB"
                            )
            finally:
                response.close()
            return response, bytes(body)

        response, content = self._retrying(url, fetch)
        status = response.status_code
        if status == 304 and (sent.etag or sent.last_modified):
            return Feed("unchanged", None, _validators_of(response, sent))
        if status in (404, 410):
            return Feed("none", None, Validators())
        if status != 200:
            raise UpstreamError(_status_message(url, response))
        if _content_type(response) != JSON_V1:
            return Feed("none", None, Validators())
        serials = parse_root_serials(_json(content, response.url), str(response.url))
        if serials is None:
            return Feed("none", None, Validators())
        return Feed("changed", serials, _validators_of(response, Validators()))

    def _page(self, canonical: str, response: httpx.Response) -> ProjectPage:
        page_url = str(response.url)
        content_type = _content_type(response)
        if content_type == JSON_V1:
            files = parse_json_page(_json(response.content, response.url), page_url)
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
