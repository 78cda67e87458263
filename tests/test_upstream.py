"""Tests for bot.upstream against a real loopback index and httpx.MockTransport."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import stat
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from tenacity import wait_none

from bot.errors import HashMismatch, ProjectNotFound, UpstreamError, UpstreamUnavailable
from bot.pipconfig import default_index_url, parse_pip_config_list, pip_config_list
from bot.simple import ACCEPT, DistFile, parse_html_page, parse_json_page
from bot.upstream import USER_AGENT, ThreadLocalTransport, Upstream, _Cookies, make_client

from support import UpstreamServer


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with make_client(timeout=10.0) as c:
        yield c


def make_file(directory: Path, name: str, content: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(content)
    return path


JSON_TYPE = "application/vnd.pypi.simple.v1+json"


def mock_upstream(
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    attempts: int = 3,
    index_url: str = "http://mirror.test/simple",
) -> Upstream:
    client = httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=True)
    return Upstream(index_url, client, attempts=attempts, wait=wait_none())


def assert_one_line(message: str) -> None:
    assert message
    assert "\n" not in message
    assert "Traceback" not in message


# --- DistFile ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "is_sdist", "is_wheel", "version"),
    [
        ("demo-1.0.tar.gz", True, False, "1.0"),
        ("demo-1.0.zip", True, False, "1.0"),
        ("demo_pkg-2!1.0.post1.tar.gz", True, False, "2!1.0.post1"),
        ("demo-1.0-py3-none-any.whl", False, True, "1.0"),
        ("demo-1.0rc1-1-cp312-cp312-manylinux_2_17_x86_64.whl", False, True, "1.0rc1"),
        ("demo-1.0.tar.bz2", False, False, None),
        ("demo-nightly.tar.gz", False, False, None),
        ("demo.tar.gz", False, False, None),
        ("demo-1.0-py3-none-any.whl.metadata", False, False, None),
        ("demo-1.0.whl", False, False, None),
    ],
)
def test_distfile_kinds(filename: str, is_sdist: bool, is_wheel: bool, version: str | None) -> None:
    dist = DistFile(filename=filename, url="http://mirror.test/x", sha256=None)
    assert dist.is_sdist is is_sdist
    assert dist.is_wheel is is_wheel
    assert (str(dist.version) if dist.version else None) == version


# --- project pages from a real server ---------------------------------------------------------


def test_project_page_round_trip(
    server: UpstreamServer, client: httpx.Client, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    server.add_file("Demo_Pkg", make_file(src, "demo_pkg-1.0.tar.gz", b"sdist one"))
    server.add_file(
        "demo-pkg",
        make_file(src, "demo_pkg-1.1.tar.gz", b"sdist two"),
        requires_python=">=3.8,<4",
    )
    server.add_file(
        "demo-pkg",
        make_file(src, "demo_pkg-1.1-py3-none-any.whl", b"wheel"),
        yanked="broken <metadata>",
    )
    server.add_file("demo.pkg", make_file(src, "demo_pkg-1.2.tar.gz", b"x"), yanked="")

    upstream = Upstream(server.url, client, wait=wait_none())
    page = upstream.project("Demo.PKG")

    assert page.name == "demo-pkg"
    assert page.url == server.url + "demo-pkg/"
    assert list(page.files) == server.dist_files("demo-pkg")
    by_name = {f.filename: f for f in page.files}
    assert by_name["demo_pkg-1.1.tar.gz"].requires_python == ">=3.8,<4"
    assert by_name["demo_pkg-1.1-py3-none-any.whl"].yanked == "broken <metadata>"
    assert by_name["demo_pkg-1.2.tar.gz"].yanked == ""
    assert by_name["demo_pkg-1.0.tar.gz"].yanked is None
    assert by_name["demo_pkg-1.0.tar.gz"].sha256 == hashlib.sha256(b"sdist one").hexdigest()
    if server.mode == "json":
        upload_time = by_name["demo_pkg-1.0.tar.gz"].upload_time
        assert upload_time is not None and upload_time.tzinfo is not None
        assert upload_time.utcoffset() == timedelta(0)
        assert by_name["demo_pkg-1.0.tar.gz"].size == len(b"sdist one")
    assert server.requests == [("GET", "/simple/demo-pkg/")]


def test_server_negotiates_like_pep_691(tmp_path: Path, client: httpx.Client) -> None:
    for mode, expected in [("json", "application/vnd.pypi.simple.v1+json"), ("html", "text/html")]:
        with UpstreamServer(tmp_path / mode, mode=mode) as srv:
            srv.add_file("demo", make_file(tmp_path, "demo-1.0.tar.gz", b"x"))
            asked = client.get(srv.url + "demo/", headers={"Accept": ACCEPT})
            assert asked.headers["content-type"] == expected
            plain = client.get(srv.url + "demo/")
            assert plain.headers["content-type"] == "text/html"
            assert "demo-1.0.tar.gz" in plain.text


def test_html_escapes_requires_python_on_the_wire(tmp_path: Path, client: httpx.Client) -> None:
    with UpstreamServer(tmp_path / "up", mode="html") as srv:
        srv.add_file("demo", make_file(tmp_path, "demo-1.0.tar.gz", b"x"), requires_python="<4")
        raw = client.get(srv.url + "demo/").text
        assert 'data-requires-python="&lt;4"' in raw
        assert 'href="../../files/demo/demo-1.0.tar.gz#sha256=' in raw
        page = Upstream(srv.url, client).project("demo")
    assert page.files[0].requires_python == "<4"
    assert page.files[0].url == srv.file_url("demo", "demo-1.0.tar.gz")


def test_unknown_project_is_not_found(server: UpstreamServer, client: httpx.Client) -> None:
    upstream = Upstream(server.url, client, wait=wait_none())
    with pytest.raises(ProjectNotFound) as caught:
        upstream.project("nope")
    assert str(caught.value) == f"project 'nope' not found at {server.url}"
    # A 404 is an answer, not a failure: asked once.
    assert server.requests == [("GET", "/simple/nope/")]


def test_retries_503_then_succeeds(
    server: UpstreamServer, client: httpx.Client, tmp_path: Path
) -> None:
    server.add_file("demo", make_file(tmp_path, "demo-1.0.tar.gz", b"x"))
    server.fail_next = [503, 503]
    page = Upstream(server.url, client, wait=wait_none()).project("demo")
    assert [f.filename for f in page.files] == ["demo-1.0.tar.gz"]
    assert server.requests == [("GET", "/simple/demo/")] * 3
    assert server.fail_next == []


def test_keeps_failing_503_is_unavailable(
    server: UpstreamServer, client: httpx.Client, tmp_path: Path
) -> None:
    server.add_file("demo", make_file(tmp_path, "demo-1.0.tar.gz", b"x"))
    server.fail_next = [503, 502, 500, 503]
    upstream = Upstream(server.url, client, attempts=3, wait=wait_none())
    with pytest.raises(UpstreamUnavailable) as caught:
        upstream.project("demo")
    message = str(caught.value)
    assert_one_line(message)
    assert message == (
        f"upstream {server.url}demo/ unavailable: HTTP 500 Internal Server Error (after 3 attempts)"
    )
    assert len(server.requests) == 3
    assert server.fail_next == [503]


def test_other_4xx_is_upstream_error_without_retry(
    server: UpstreamServer, client: httpx.Client
) -> None:
    server.fail_next = [403]
    with pytest.raises(UpstreamError) as caught:
        Upstream(server.url, client, wait=wait_none()).project("demo")
    assert not isinstance(caught.value, (ProjectNotFound, UpstreamUnavailable))
    assert str(caught.value) == f"upstream {server.url}demo/ answered HTTP 403 Forbidden"
    assert len(server.requests) == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_dead_server_is_unavailable(client: httpx.Client) -> None:
    url = f"http://127.0.0.1:{closed_port()}/simple/"
    upstream = Upstream(url, client, attempts=2, wait=wait_none())
    with pytest.raises(UpstreamUnavailable) as caught:
        upstream.project("demo")
    message = str(caught.value)
    assert_one_line(message)
    assert re.fullmatch(
        rf"upstream {re.escape(url)}demo/ unreachable: [a-z][^\[\]]* \(after 2 attempts\)", message
    ), message
    assert "refused" in message.lower()
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


# --- project pages from MockTransport ---------------------------------------------------------


def test_json_page_fields_and_relative_urls() -> None:
    seen: list[httpx.Request] = []
    body = {
        "meta": {"api-version": "1.1"},
        "name": "demo",
        "files": [
            {
                "filename": "demo-1.0.tar.gz",
                "url": "../../packages/ab/demo-1.0.tar.gz#sha256=ignored",
                "hashes": {"sha256": "AB" * 32},
                "requires-python": ">=3.9",
                "yanked": False,
                "upload-time": "2024-01-02T03:04:05.123456Z",
                "size": 1234,
            },
            {
                "filename": "demo-1.1.tar.gz",
                "url": "https://files.mirror.test/demo-1.1.tar.gz",
                "hashes": {},
                "yanked": True,
                "upload-time": "2024-01-02T05:04:05+02:00",
            },
            {
                "filename": "demo-1.2.tar.gz",
                "url": "/abs/demo-1.2.tar.gz",
                "hashes": {"sha256": "cd" * 32, "md5": "00"},
                "yanked": "security issue",
            },
        ],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            headers={"Content-Type": "application/vnd.pypi.simple.v1+json"},
            content=json.dumps(body).encode(),
        )

    page = mock_upstream(handler).project("Demo")
    assert seen[0].headers["Accept"] == ACCEPT
    assert str(seen[0].url) == "http://mirror.test/simple/demo/"
    first, second, third = page.files
    assert first == DistFile(
        filename="demo-1.0.tar.gz",
        url="http://mirror.test/packages/ab/demo-1.0.tar.gz",
        sha256="ab" * 32,
        requires_python=">=3.9",
        yanked=None,
        upload_time=datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        size=1234,
    )
    assert second.url == "https://files.mirror.test/demo-1.1.tar.gz"
    assert second.sha256 is None
    assert second.yanked == ""
    assert second.upload_time == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert second.upload_time.tzinfo == UTC
    assert third.url == "http://mirror.test/abs/demo-1.2.tar.gz"
    assert third.yanked == "security issue"
    assert third.upload_time is None and third.size is None


def test_html_page_fields_even_when_json_was_asked() -> None:
    html_page = """<!DOCTYPE html><html><body>
    <a href="https://cdn.mirror.test/d/demo-1.0.tar.gz#sha256=EF0123"
       data-requires-python="&lt;4,&gt;=3.8">demo-1.0.tar.gz</a>
    <a href="../../x/demo-1.1-py3-none-any.whl#md5=abc" data-yanked>demo-1.1-py3-none-any.whl</a>
    <a href="demo%2B1.2.tar.gz" data-yanked="no &amp; good"
       data-upload-time="2024-03-04T05:06:07Z">t</a>
    <a>no href</a>
    </body></html>"""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Type": "text/html; charset=utf-8"}, text=html_page
        )

    page = mock_upstream(handler).project("demo")
    first, second, third = page.files
    assert first == DistFile(
        filename="demo-1.0.tar.gz",
        url="https://cdn.mirror.test/d/demo-1.0.tar.gz",
        sha256="ef0123",
        requires_python="<4,>=3.8",
    )
    assert second.url == "http://mirror.test/x/demo-1.1-py3-none-any.whl"
    assert second.sha256 is None
    assert second.yanked == ""
    assert third.filename == "demo+1.2.tar.gz"
    assert third.url == "http://mirror.test/simple/demo/demo%2B1.2.tar.gz"
    assert third.yanked == "no & good"
    assert third.upload_time == datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC)


def test_html_base_href_and_redirected_page_url() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/simple/demo/":
            return httpx.Response(301, headers={"Location": "http://other.test/pypi/demo/"})
        body = '<base href="/files/"><a href="demo-1.0.tar.gz">demo-1.0.tar.gz</a>'
        return httpx.Response(200, headers={"Content-Type": "text/html"}, text=body)

    page = mock_upstream(handler).project("demo")
    assert page.url == "http://other.test/pypi/demo/"
    assert page.files[0].url == "http://other.test/files/demo-1.0.tar.gz"


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        (
            "application/vnd.pypi.simple.v1+json",
            b'{"meta": {"api-version": "1.0"}, "files": [{"filename": "demo-1.0.tar.gz"}]}',
            "upstream http://mirror.test/simple/demo/ sent an invalid project page: "
            "files[0].url is not a string",
        ),
        (
            "application/vnd.pypi.simple.v1+json",
            b'{"meta": {"api-version": "1.0"}, "files": [{"filename": "d-1.tar.gz", "url": "u",'
            b' "upload-time": "yesterday"}]}',
            "upstream http://mirror.test/simple/demo/ sent an invalid project page: "
            "files[0].upload-time is not an ISO 8601 time: 'yesterday'",
        ),
        (
            "application/vnd.pypi.simple.v1+json",
            b"{not json",
            "upstream http://mirror.test/simple/demo/ sent invalid JSON",
        ),
        (
            "application/vnd.pypi.simple.v1+json",
            b'{"meta": {"api-version": "2.0"}, "files": []}',
            "upstream http://mirror.test/simple/demo/ speaks simple API version 2.0; "
            "only 1.x is supported",
        ),
        (
            "text/html",
            b'<meta name="pypi:repository-version" content="2.0"><a href="x.tar.gz">x</a>',
            "upstream http://mirror.test/simple/demo/ speaks simple API version 2.0; "
            "only 1.x is supported",
        ),
        (
            "application/vnd.pypi.simple.v2+json",
            b"{}",
            "upstream http://mirror.test/simple/demo/ answered with unsupported content type "
            "application/vnd.pypi.simple.v2+json",
        ),
    ],
)
def test_bad_pages_are_upstream_errors(content_type: str, body: bytes, expected: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": content_type}, content=body)

    with pytest.raises(UpstreamError) as caught:
        mock_upstream(handler).project("demo")
    assert str(caught.value).startswith(expected)
    assert_one_line(str(caught.value))


def test_timeouts_are_retried_then_unavailable() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(UpstreamUnavailable) as caught:
        mock_upstream(handler, attempts=4).project("demo")
    assert str(caught.value) == (
        "upstream http://mirror.test/simple/demo/ unreachable: timed out (after 4 attempts)"
    )
    assert calls == ["/simple/demo/"] * 4


def test_one_attempt_is_singular() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(UpstreamUnavailable) as caught:
        mock_upstream(handler, attempts=1).project("demo")
    assert str(caught.value) == (
        "upstream http://mirror.test/simple/demo/ unreachable: connection refused (after 1 attempt)"
    )


def test_non_http_index_is_refused_without_retry(client: httpx.Client) -> None:
    upstream = Upstream("ftp://mirror.test/simple/", client, wait=wait_none())
    with pytest.raises(UpstreamError) as caught:
        upstream.project("demo")
    assert not isinstance(caught.value, UpstreamUnavailable)
    assert "only http and https are supported" in str(caught.value)


def test_constructor_normalises_and_validates() -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    assert Upstream("http://mirror.test/simple", client).index_url == "http://mirror.test/simple/"
    with pytest.raises(ValueError):
        Upstream("http://mirror.test/simple/", client, attempts=0)


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1/simple/", "https://h.invalid:x/"])
def test_constructor_refuses_an_invalid_url(url: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        mock_upstream(lambda request: httpx.Response(200), index_url=url)
    assert str(caught.value).startswith(f"invalid upstream URL {url!r}: ")
    assert_one_line(str(caught.value))


def test_invalid_url_raised_while_fetching_is_an_upstream_error() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        # What httpx raises when it cannot build a request, e.g. from a mangled redirect.
        calls.append(request)
        raise httpx.InvalidURL("Invalid port: 'x'")

    with pytest.raises(UpstreamError) as caught:
        mock_upstream(handler).project("demo")
    assert not isinstance(caught.value, UpstreamUnavailable)
    assert str(caught.value) == (
        "invalid upstream URL 'http://mirror.test/simple/demo/': Invalid port: 'x'"
    )
    assert len(calls) == 1  # not retried


def test_an_index_url_made_invalid_later_is_an_upstream_error() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(404)

    upstream = mock_upstream(handler)
    upstream.index_url = "http://[::1/simple/"
    with pytest.raises(UpstreamError) as caught:
        upstream.project("demo")
    assert not isinstance(caught.value, UpstreamUnavailable)
    assert str(caught.value).startswith("invalid upstream URL 'http://[::1/simple/demo/'")
    assert_one_line(str(caught.value))
    assert calls == []


@pytest.mark.parametrize("url", ["http://[oops/demo-1.0.tar.gz", "http://mirror.test:x/d.tar.gz"])
def test_download_of_an_invalid_url_is_an_upstream_error(tmp_path: Path, url: str) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=b"x")

    with pytest.raises(UpstreamError) as caught:
        mock_upstream(handler).download(url, tmp_path / "out" / "demo-1.0.tar.gz", "0" * 64)
    assert not isinstance(caught.value, UpstreamUnavailable)
    assert str(caught.value).startswith(f"invalid upstream URL {url!r}")
    assert_one_line(str(caught.value))
    assert calls == []
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_html_anchor_with_an_invalid_href_is_skipped() -> None:
    html_page = """<!DOCTYPE html><html><body>
    <a href="demo-1.0.tar.gz#sha256=aa">demo-1.0.tar.gz</a>
    <a href="http://[oops/demo-1.1.tar.gz">demo-1.1.tar.gz</a>
    <a href="http://[::1]:x/demo-1.2.tar.gz">demo-1.2.tar.gz</a>
    <a href="demo-1.3.tar.gz#sha256=bb">demo-1.3.tar.gz</a>
    </body></html>"""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "text/html"}, text=html_page)

    page = mock_upstream(handler).project("demo")
    assert [(f.filename, f.url, f.sha256) for f in page.files] == [
        ("demo-1.0.tar.gz", "http://mirror.test/simple/demo/demo-1.0.tar.gz", "aa"),
        ("demo-1.3.tar.gz", "http://mirror.test/simple/demo/demo-1.3.tar.gz", "bb"),
    ]


def test_html_invalid_base_href_is_an_upstream_error() -> None:
    body = '<base href="http://[oops/"><a href="demo-1.0.tar.gz">demo-1.0.tar.gz</a>'

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "text/html"}, text=body)

    with pytest.raises(UpstreamError) as caught:
        mock_upstream(handler).project("demo")
    assert str(caught.value) == (
        "upstream http://mirror.test/simple/demo/ sent an invalid project page: "
        "<base href> is not a valid URL: 'http://[oops/'"
    )


@pytest.mark.parametrize("bad", ["http://[oops/demo-1.1.tar.gz", "http://[::1]:x/d-1.1.tar.gz"])
def test_json_file_with_an_invalid_url_names_its_key(bad: str) -> None:
    entries = [
        {"filename": "demo-1.0.tar.gz", "url": "demo-1.0.tar.gz"},
        {"filename": "demo-1.1.tar.gz", "url": bad},
    ]
    body = json.dumps({"meta": {"api-version": "1.1"}, "files": entries}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": JSON_TYPE}, content=body)

    with pytest.raises(UpstreamError) as caught:
        mock_upstream(handler).project("demo")
    assert str(caught.value) == (
        "upstream http://mirror.test/simple/demo/ sent an invalid project page: "
        f"files[1].url is not a valid URL: {bad!r}"
    )
    assert_one_line(str(caught.value))


def test_make_client_identifies_itself() -> None:
    assert USER_AGENT.startswith("wheelstock/")
    with make_client() as c:
        assert c.headers["User-Agent"] == USER_AGENT
        assert c.follow_redirects is True


# --- downloads --------------------------------------------------------------------------------


def test_download_verifies_and_places_file(
    server: UpstreamServer, client: httpx.Client, tmp_path: Path
) -> None:
    content = b"sdist bytes " * 1000
    url = server.add_file("demo", make_file(tmp_path / "src", "demo-1.0.tar.gz", content))
    server.fail_next = [500]
    dest_dir = tmp_path / "out" / "nested"
    dest = Upstream(server.url, client, wait=wait_none()).download(
        url, dest_dir / "demo-1.0.tar.gz", hashlib.sha256(content).hexdigest().upper()
    )
    assert dest == dest_dir / "demo-1.0.tar.gz"
    assert dest.read_bytes() == content
    assert os.listdir(dest_dir) == ["demo-1.0.tar.gz"]
    assert server.requests == [("GET", "/files/demo/demo-1.0.tar.gz")] * 2


def test_download_hash_mismatch_leaves_nothing(
    server: UpstreamServer, client: httpx.Client, tmp_path: Path
) -> None:
    content = b"real bytes"
    url = server.add_file("demo", make_file(tmp_path / "src", "demo-1.0.tar.gz", content))
    dest_dir = tmp_path / "out"
    wrong = "0" * 64
    with pytest.raises(HashMismatch) as caught:
        Upstream(server.url, client).download(url, dest_dir / "demo-1.0.tar.gz", wrong)
    assert str(caught.value) == (
        f"sha256 mismatch for demo-1.0.tar.gz: expected {wrong}, "
        f"got {hashlib.sha256(content).hexdigest()}"
    )
    assert os.listdir(dest_dir) == []
    # A mismatch is a fact about the bytes, not a transient failure: fetched once.
    assert len(server.requests) == 1


def test_download_missing_file_is_upstream_error(
    server: UpstreamServer, client: httpx.Client, tmp_path: Path
) -> None:
    url = server.url.replace("/simple/", "/files/demo/demo-9.tar.gz")
    with pytest.raises(UpstreamError) as caught:
        Upstream(server.url, client, wait=wait_none()).download(
            url, tmp_path / "out" / "d.tar.gz", "0" * 64
        )
    assert not isinstance(caught.value, UpstreamUnavailable)
    assert str(caught.value) == f"upstream {url} answered HTTP 404 Not Found"
    assert os.listdir(tmp_path / "out") == []
    assert len(server.requests) == 1


def test_download_keeps_failing_leaves_nothing(
    server: UpstreamServer, client: httpx.Client, tmp_path: Path
) -> None:
    url = server.add_file("demo", make_file(tmp_path / "src", "demo-1.0.tar.gz", b"x"))
    server.fail_next = [503, 503]
    with pytest.raises(UpstreamUnavailable) as caught:
        Upstream(server.url, client, attempts=2, wait=wait_none()).download(
            url, tmp_path / "out" / "demo-1.0.tar.gz", hashlib.sha256(b"x").hexdigest()
        )
    assert str(caught.value) == (
        f"upstream {url} unavailable: HTTP 503 Service Unavailable (after 2 attempts)"
    )
    assert os.listdir(tmp_path / "out") == []


class _BrokenStream(httpx.SyncByteStream):
    """Yields one chunk, then the connection drops."""

    def __iter__(self) -> Iterator[bytes]:
        yield b"partial"
        raise httpx.ReadError("connection reset by peer")


def test_download_retries_a_dropped_stream_and_cleans_up(tmp_path: Path) -> None:
    content = b"complete file"
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            return httpx.Response(200, stream=_BrokenStream())
        return httpx.Response(200, content=content)

    dest = tmp_path / "demo-1.0.tar.gz"
    mock_upstream(handler).download(
        "http://mirror.test/files/demo-1.0.tar.gz", dest, hashlib.sha256(content).hexdigest()
    )
    assert dest.read_bytes() == content
    assert os.listdir(tmp_path) == ["demo-1.0.tar.gz"]
    assert calls == ["/files/demo-1.0.tar.gz"] * 2


def test_download_mismatch_keeps_existing_dest(tmp_path: Path) -> None:
    dest = tmp_path / "demo-1.0.tar.gz"
    dest.write_bytes(b"previously verified")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"tampered")

    with pytest.raises(HashMismatch):
        mock_upstream(handler).download("http://mirror.test/f/demo-1.0.tar.gz", dest, "0" * 64)
    assert dest.read_bytes() == b"previously verified"
    assert os.listdir(tmp_path) == ["demo-1.0.tar.gz"]


# --- which index pip uses ---------------------------------------------------------------------


def assert_index_url(url: str) -> None:
    assert re.fullmatch(r"https?://[^/\s]+/\S*", url), url
    assert url.endswith("/")


@pytest.mark.parametrize(
    ("environ", "config", "expected"),
    [
        pytest.param(
            {"PIP_INDEX_URL": "http://env.test/simple"},
            {"install.index-url": "http://install.test/simple/"},
            "http://env.test/simple/",
            id="environment-wins",
        ),
        pytest.param(
            {"PIP_INDEX_URL": ""},
            {"global.index-url": "http://global.test/simple"},
            "http://global.test/simple/",
            id="empty-environment-ignored",
        ),
        pytest.param(
            {},
            {
                "global.index-url": "http://global.test/simple/",
                "install.index-url": "http://install.test/simple/",
            },
            "http://install.test/simple/",
            id="install-over-global",
        ),
        pytest.param(
            {},
            {"global.index-url": "https://global.test/pypi"},
            "https://global.test/pypi/",
            id="global",
        ),
    ],
)
def test_default_index_url_precedence(
    environ: dict[str, str], config: dict[str, str], expected: str
) -> None:
    assert default_index_url(environ, pip_config=lambda: config) == expected


def test_default_index_url_falls_back_to_pip_itself() -> None:
    # `:env:` entries describe the process environment, which the caller replaced with {}.
    config = {":env:.index-url": "http://env.test/simple/", "global.timeout": "60"}
    url = default_index_url({}, pip_config=lambda: config)
    assert_index_url(url)
    assert url != "http://env.test/simple/"
    assert url == default_index_url({}, pip_config=dict)


def test_default_index_url_with_real_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    # No config files, so the answer is pip's own default, asked of the real `pip config list`.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    config = pip_config_list()
    assert config.get(":env:.config-file") == os.devnull
    assert [key for key in config if not key.startswith(":env:")] == []
    url = default_index_url({})
    assert_index_url(url)


def test_default_index_url_nothing_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pip._internal.models.index", None)
    with pytest.raises(UpstreamError) as caught:
        default_index_url({}, pip_config=dict)
    assert str(caught.value) == (
        "no upstream index configured; pass --upstream URL or set PIP_INDEX_URL"
    )


def test_parse_pip_config_list() -> None:
    text = (
        ":env:.index-url='http://env.test/simple/'\n"
        "global.index-url='http://global.test/simple/'\n"
        'install.index-url="http://install.test/it\'s/"\n'
        "global.extra-index-url='file:///a file:///b'\n"
        "garbage line\n"
        "site.raw=unquoted\n"
    )
    assert parse_pip_config_list(text) == {
        ":env:.index-url": "http://env.test/simple/",
        "global.index-url": "http://global.test/simple/",
        "install.index-url": "http://install.test/it's/",
        "global.extra-index-url": "file:///a file:///b",
        "site.raw": "unquoted",
    }


def fake_python(directory: Path, script: str) -> str:
    path = directory / "python"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.skipif(sys.platform == "win32", reason="uses a POSIX shell script as the interpreter")
def test_pip_config_list_runs_the_interpreter(tmp_path: Path) -> None:
    python = fake_python(
        tmp_path,
        'test "$*" = "-m pip config list" || exit 3\n'
        "echo \"install.index-url='http://cfg.test/simple'\"\n",
    )
    assert pip_config_list(python) == {"install.index-url": "http://cfg.test/simple"}


@pytest.mark.skipif(sys.platform == "win32", reason="uses a POSIX shell script as the interpreter")
def test_pip_config_list_unrunnable_pip_is_empty(tmp_path: Path) -> None:
    failing = fake_python(tmp_path, "echo \"global.index-url='http://half.test/'\"\nexit 1\n")
    assert pip_config_list(failing) == {}
    assert pip_config_list(str(tmp_path / "missing" / "python")) == {}


def test_naive_offsets_and_timezones_normalise_to_utc() -> None:
    body = {
        "meta": {"api-version": "1.0"},
        "files": [
            {"filename": "d-1.tar.gz", "url": "d-1.tar.gz", "upload-time": "2024-01-01T00:00:00"},
            {
                "filename": "d-2.tar.gz",
                "url": "d-2.tar.gz",
                "upload-time": "2024-01-01T00:00:00-05:00",
            },
        ],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Type": "application/vnd.pypi.simple.v1+json"}, json=body
        )

    naive, offset = mock_upstream(handler).project("d").files
    assert naive.upload_time == datetime(2024, 1, 1, tzinfo=UTC)
    assert offset.upload_time == datetime(2024, 1, 1, 5, tzinfo=UTC)


# --- PEP 658/714 core metadata ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"core-metadata": False}, None),
        ({"core-metadata": True}, "true"),
        ({"core-metadata": {}}, "true"),
        ({"core-metadata": {"md5": "00"}}, "true"),
        ({"core-metadata": {"sha256": "AB" * 32, "md5": "00"}}, "sha256=" + "ab" * 32),
        # PEP 714: the PEP 658 key is still read, and loses to the new one.
        ({"dist-info-metadata": {"sha256": "cd" * 32}}, "sha256=" + "cd" * 32),
        ({"dist-info-metadata": True, "core-metadata": False}, None),
        ({"dist-info-metadata": False, "core-metadata": True}, "true"),
    ],
)
def test_json_core_metadata(fields: dict[str, object], expected: str | None) -> None:
    entry = {"filename": "demo-1.0-py3-none-any.whl", "url": "demo-1.0-py3-none-any.whl"}
    (dist,) = parse_json_page({"files": [{**entry, **fields}]}, "http://mirror.test/simple/demo/")
    assert dist.core_metadata == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"core-metadata": "yes"}, "files[0].core-metadata is neither a boolean nor an object"),
        ({"core-metadata": {"sha256": 1}}, "files[0].core-metadata has a sha256 that is not"),
        ({"dist-info-metadata": []}, "files[0].dist-info-metadata is neither a boolean"),
    ],
)
def test_json_core_metadata_invalid(fields: dict[str, object], expected: str) -> None:
    entry = {"filename": "demo-1.0-py3-none-any.whl", "url": "demo-1.0-py3-none-any.whl", **fields}
    with pytest.raises(UpstreamError, match=re.escape(expected)) as caught:
        parse_json_page({"files": [entry]}, "http://mirror.test/simple/demo/")
    assert_one_line(str(caught.value))


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ("", None),
        (' data-core-metadata="true"', "true"),
        (' data-core-metadata="sha256=EF01"', "sha256=ef01"),
        (' data-core-metadata="sha512=00"', "true"),
        (' data-dist-info-metadata="sha256=ab"', "sha256=ab"),
        (' data-dist-info-metadata="true" data-core-metadata="sha256=cd"', "sha256=cd"),
        (' data-core-metadata="false"', None),
        (" data-core-metadata", None),
    ],
)
def test_html_core_metadata(attributes: str, expected: str | None) -> None:
    text = f'<a href="demo-1.0-py3-none-any.whl#sha256=00"{attributes}>demo</a>'
    (dist,) = parse_html_page(text, "http://mirror.test/simple/demo/")
    assert dist.core_metadata == expected


def test_core_metadata_is_the_last_field_and_defaults_to_none() -> None:
    dist = DistFile("demo-1.0.tar.gz", "http://mirror.test/d", None, None, None, None, None)
    assert dist.core_metadata is None
    assert [f.name for f in dataclasses.fields(DistFile)][-1] == "core_metadata"


# --- Retry-After, cookies, one pool per thread ------------------------------------------------


def test_project_honours_retry_after_and_its_limit() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            return httpx.Response(503, headers={"Retry-After": "0"})
        return httpx.Response(429, headers={"Retry-After": "3600"})

    upstream = mock_upstream(handler, attempts=5)
    with pytest.raises(UpstreamUnavailable) as caught:
        upstream.project("demo")
    # Retried after the 503's zero-second wait; the 429 asked for more than 60 s: no retry.
    assert calls == ["/simple/demo/"] * 2
    assert str(caught.value) == (
        "upstream http://mirror.test/simple/demo/ unavailable: HTTP 429 Too Many Requests "
        "(after 2 attempts, asked to retry after 3600 s)"
    )


def test_cookies_are_still_kept_when_a_response_sets_one() -> None:
    jar = _Cookies()
    request = httpx.Request("GET", "http://mirror.test/simple/")
    jar.extract_cookies(httpx.Response(200, request=request))
    assert dict(jar) == {}
    jar.extract_cookies(httpx.Response(200, headers={"Set-Cookie": "a=b"}, request=request))
    assert dict(jar) == {"a": "b"}


def test_make_client_keeps_one_connection_per_thread(tmp_path: Path) -> None:
    with UpstreamServer(tmp_path / "up") as srv, make_client(timeout=10.0) as c:
        srv.add_file("demo", make_file(tmp_path, "demo-1.0.tar.gz", b"x"))
        assert isinstance(c._transport, ThreadLocalTransport)
        upstream = Upstream(srv.url, c, wait=wait_none())
        for _ in range(5):
            upstream.project("demo")
        assert srv.connections == 1
        assert len(srv.log) == 5
