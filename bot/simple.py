"""The simple repository API's page model: files and pages, PEP 691 JSON and PEP 503 HTML
parsed from bytes already in hand. No network here (the client is ``bot.upstream``)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from bot.dists import is_bare_filename
from bot.errors import UpstreamError, first_line
from bot.typed import Mismatch, as_dict, as_int, as_list, as_str

# PEP 691: JSON preferred, HTML accepted; text/html last so PEP 503-only servers still answer.
JSON_V1 = "application/vnd.pypi.simple.v1+json"


HTML_V1 = "application/vnd.pypi.simple.v1+html"


ACCEPT = f"{JSON_V1}, {HTML_V1};q=0.2, text/html;q=0.1"


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


# URLs as indexes write them: http(s), an ASCII host name with a letter in it or a valid
# IPv4 address, a port, a path of URL-safe characters. httpx accepts every one of them, so
# its parse (half the cost of reading a JSON page) is skipped for them.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"


_PLAIN_URL = re.compile(
    rf"https?://(?:(?=[^/:]*[A-Za-z])[A-Za-z0-9.-]+|(?:{_OCTET}\.){{3}}{_OCTET})"
    r"(?::(\d{1,5}))?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?"
)


def url_problem(url: str) -> str | None:
    """Why `url` cannot be parsed or fetched as written (one line), or None when it can."""
    plain = _PLAIN_URL.fullmatch(url)
    if plain is not None and int(plain.group(1) or 0) <= 65535:
        return None
    # Only for the rare URL that is not plain: the page model itself needs no HTTP client.
    import httpx

    try:
        # .port is checked lazily by urllib; httpx parses once more the way it will fetch.
        urlsplit(url).port  # noqa: B018
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        return first_line(exc)
    return None


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


def _json_document(data: Any, key: str, page_url: str) -> list[Any]:
    """The list under ``key`` of a PEP 691 document whose api-version this client speaks."""
    document = as_dict(data, "the document", expected="a JSON object")
    meta = document.get("meta")
    if isinstance(meta, dict):
        _check_api_version(meta.get("api-version"), page_url)
    return as_list(document.get(key), key)


def parse_json_page(data: Any, page_url: str) -> tuple[DistFile, ...]:
    """Files of a PEP 691 JSON project page; relative URLs resolved against page_url."""

    def bad(path: str, what: str) -> UpstreamError:
        return UpstreamError(f"upstream {page_url} sent an invalid project page: {path} {what}")

    try:
        entries = _json_document(data, "files", page_url)
        return tuple(
            _json_file(entry, f"files[{index}]", page_url, bad)
            for index, entry in enumerate(entries)
        )
    except Mismatch as exc:
        raise bad(exc.where, f"is not {exc.expected}") from None


def _json_file(
    data: object, at: str, page_url: str, bad: Callable[[str, str], UpstreamError]
) -> DistFile:
    """One file entry of a PEP 691 page; a typed.Mismatch names the first bad field."""
    entry = as_dict(data, at)
    # An empty name or URL is as good as none: "is not a string" too.
    filename = as_str(entry.get("filename"), f"{at}.filename", nonempty=True, expected="a string")
    if not is_bare_filename(filename):
        # The name becomes a path on disk: never a directory, a parent or a hidden file.
        raise bad(f"{at}.filename", f"is not a bare file name: {filename!r}")
    url = as_str(entry.get("url"), f"{at}.url", nonempty=True, expected="a string")
    hashes = as_dict(entry.get("hashes", {}), f"{at}.hashes")
    sha256 = hashes.get("sha256")
    if sha256 is not None:
        sha256 = as_str(sha256, f"{at}.hashes.sha256")
    requires_python = entry.get("requires-python")
    if requires_python is not None:
        requires_python = as_str(requires_python, f"{at}.requires-python")
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
        upload_value = as_str(upload_value, f"{at}.upload-time")
        try:
            upload_time = _parse_time(upload_value)
        except ValueError:
            what = f"is not an ISO 8601 time: {upload_value!r}"
            raise bad(f"{at}.upload-time", what) from None
    size = entry.get("size")
    if size is not None:
        size = as_int(size, f"{at}.size", nonnegative=True)
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
    if resolved is None or url_problem(resolved) is not None:
        raise bad(f"{at}.url", f"is not a valid URL: {url!r}")
    return DistFile(
        filename=filename,
        url=resolved,
        sha256=sha256.lower() if sha256 else None,
        requires_python=requires_python,
        yanked=yanked,
        upload_time=upload_time,
        size=size,
        core_metadata=core_metadata,
    )


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
        if not base or url_problem(base) is not None:
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
        if url_problem(url) is not None:
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


# The largest serial kept: what an SQLite INTEGER holds. One beyond it, on a page or on the
# root page, is no serial upstream can mean.
MAX_SERIAL = 2**63 - 1


def parse_root_serials(data: Any, page_url: str) -> dict[str, int] | None:
    """The change feed in a PEP 691 JSON root page: each project's ``_last-serial``.

    An index may add private keys (PEP 691 reserves a leading underscore for them); one that
    numbers every change carries the serial of each project's last change there. Returns
    canonical name -> serial, or None when the page carries no serials at all, so the caller
    falls back to conditional requests. A page that carries them for some projects and not
    others, or carries something else under the key, is refused: a feed that cannot be read
    whole must not be read in part.
    """

    def bad(what: str) -> UpstreamError:
        return UpstreamError(f"upstream {page_url} sent an invalid root page: {what}")

    serials: dict[str, int] = {}
    missing = 0
    try:
        projects = _json_document(data, "projects", page_url)
        for index, item in enumerate(projects):
            at = f"projects[{index}]"
            entry = as_dict(item, at, expected="an object with a name")
            name = as_str(entry.get("name"), at, expected="an object with a name")
            serial = entry.get("_last-serial")
            if serial is None:
                missing += 1
                continue
            serial = as_int(serial, f"{at}._last-serial", nonnegative=True)
            if serial > MAX_SERIAL:
                raise Mismatch(f"{at}._last-serial", "a serial below 2**63")
            name = canonicalize_name(name)
            serials[name] = max(serial, serials.get(name, serial))
    except Mismatch as exc:
        raise bad(f"{exc.where} is not {exc.expected}") from None
    if not serials:
        return None
    if missing:
        raise bad(f"{missing} of {len(projects)} projects have no _last-serial")
    return serials
