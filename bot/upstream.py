"""Talking to the upstream simple index: PEP 691 JSON and PEP 503 HTML pages, downloads."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
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
from tenacity import Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_random_exponential

import bot
from bot.errors import HashMismatch, ProjectNotFound, UpstreamError, UpstreamUnavailable

__all__ = [
    "ACCEPT",
    "USER_AGENT",
    "DistFile",
    "ProjectPage",
    "Upstream",
    "default_index_url",
    "make_client",
    "parse_html_page",
    "parse_json_page",
    "parse_pip_config_list",
    "pip_config_list",
]

USER_AGENT = f"wheelstock/{bot.__version__}"

# PEP 691: JSON preferred, HTML accepted; text/html last so PEP 503-only servers still answer.
JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
ACCEPT = f"{JSON_V1}, {HTML_V1};q=0.2, text/html;q=0.1"

_T = TypeVar("_T")


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


def _url_problem(url: str) -> str | None:
    """Why `url` cannot be parsed or fetched as written (one line), or None when it can."""
    try:
        # .port is checked lazily by urllib; httpx parses once more the way it will fetch.
        urlsplit(url).port  # noqa: B018
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _parse_time(text: str) -> datetime:
    # PEP 700: ISO 8601 "yyyy-mm-ddThh:mm:ss.ffffffZ"; fromisoformat takes "Z" since 3.11.
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


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
        if not filename:
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


def make_client(*, timeout: float = 30.0) -> httpx.Client:
    """An HTTP client for upstream: redirects followed, our User-Agent, pooled connections."""
    return httpx.Client(
        follow_redirects=True,
        headers={"User-Agent": USER_AGENT},
        timeout=timeout,
        limits=httpx.Limits(max_keepalive_connections=10, keepalive_expiry=30.0),
    )


class _ServerError(Exception):
    """A 5xx (or 429) answer, retried like a transport error."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.status_code = response.status_code
        self.reason = response.reason_phrase


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

    def _retrying(self, url: str, call: Callable[[], _T]) -> _T:
        """Run `call` with the retry policy; translate what's left into wheelstock errors."""
        tries = 0

        def attempt() -> _T:
            nonlocal tries
            tries += 1
            return call()

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=self.wait,
            retry=retry_if_exception(_is_retryable_error),
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
            raise UpstreamUnavailable(
                f"upstream {url} unavailable: HTTP {exc.status_code} {exc.reason}".rstrip()
                + f" (after {_plural(tries)})"
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
        page_url = str(response.url)
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type == JSON_V1:
            try:
                data = json.loads(response.content)
            except ValueError as exc:
                raise UpstreamError(f"upstream {page_url} sent invalid JSON: {exc}") from exc
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
