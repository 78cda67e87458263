"""Tests for watching upstream (Upstream.check, watch, the pages state) on loopback servers."""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from tenacity import wait_none

import bot
from bot.errors import UpstreamError
from bot.simple import DistFile, ProjectPage, parse_html_page, parse_json_page
from bot.state import State
from bot.upstream import Checked, ThreadLocalTransport, Upstream, Validators, make_client
from bot.watch import watch

from support import Fault, UpstreamServer


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with make_client(timeout=5.0) as c:
        yield c


def publish(
    server: UpstreamServer, tmp_path: Path, project: str, version: str, **kw: object
) -> None:
    source = tmp_path / "src" / project
    source.mkdir(parents=True, exist_ok=True)
    path = source / f"{project.replace('-', '_')}-{version}.tar.gz"
    path.write_bytes(f"{project} {version}".encode())
    server.add_file(project, path, **kw)  # type: ignore[arg-type]


def upstream_for(server: UpstreamServer, client: httpx.Client, **kw: object) -> Upstream:
    options: dict[str, object] = {"attempts": 3, "wait": wait_none(), **kw}
    return Upstream(server.url, client, **options)  # type: ignore[arg-type]


def assert_one_line(message: str | None) -> None:
    assert message
    assert "\n" not in message
    assert "Traceback" not in message


# --- conditional requests ---------------------------------------------------------------------


def test_etag_is_sent_back_and_a_304_is_not_parsed(
    server: UpstreamServer, client: httpx.Client, tmp_path: Path
) -> None:
    publish(server, tmp_path, "demo", "1.0")
    upstream = upstream_for(server, client)

    first = upstream.check("Demo")
    assert first.status == "changed"
    assert first.name == "demo"
    assert first.page is not None
    assert list(first.page.files) == server.dist_files("demo")
    assert first.validators.etag and first.validators.etag.startswith('"')
    assert first.validators.last_modified
    assert first.error is None

    second = upstream.check("demo", first.validators)
    assert second == Checked("demo", "unchanged", None, first.validators)

    seen = server.seen("/simple/demo/")
    assert len(seen) == 2
    assert "if-none-match" not in seen[0].headers
    assert seen[1].headers["if-none-match"] == first.validators.etag
    assert seen[1].headers["if-modified-since"] == first.validators.last_modified
    assert (seen[0].status, seen[1].status) == (200, 304)
    assert seen[0].body_bytes > 0
    assert seen[1].body_bytes == 0


def test_requests_name_wheelstock_and_its_version(
    server: UpstreamServer, client: httpx.Client, tmp_path: Path
) -> None:
    publish(server, tmp_path, "demo", "1.0")
    upstream_for(server, client).check("demo")
    (seen,) = server.log
    assert seen.headers["user-agent"] == f"wheelstock/{bot.__version__}"
    assert "application/vnd.pypi.simple.v1+json" in seen.headers["accept"]


def test_a_changed_page_after_a_304_brings_new_files_and_validators(
    server: UpstreamServer, client: httpx.Client, tmp_path: Path
) -> None:
    old = datetime.now(UTC) - timedelta(hours=1)
    publish(server, tmp_path, "demo", "1.0", upload_time=old)
    upstream = upstream_for(server, client)
    first = upstream.check("demo")
    assert upstream.check("demo", first.validators).status == "unchanged"

    publish(server, tmp_path, "demo", "1.1")
    third = upstream.check("demo", first.validators)
    assert third.status == "changed"
    assert third.page is not None
    assert {f.filename for f in third.page.files} == {"demo-1.0.tar.gz", "demo-1.1.tar.gz"}
    assert third.validators.etag != first.validators.etag
    assert third.validators.last_modified != first.validators.last_modified
    assert upstream.check("demo", third.validators).status == "unchanged"


def test_last_modified_only_servers(tmp_path: Path, client: httpx.Client) -> None:
    with UpstreamServer(tmp_path / "up", etags=False) as server:
        publish(server, tmp_path, "demo", "1.0", upload_time=datetime(2026, 1, 2, tzinfo=UTC))
        upstream = upstream_for(server, client)
        first = upstream.check("demo")
        assert first.validators == Validators(None, "Fri, 02 Jan 2026 00:00:00 GMT")
        assert upstream.check("demo", first.validators).status == "unchanged"
        assert "if-none-match" not in server.log[1].headers
        assert server.log[1].headers["if-modified-since"] == first.validators.last_modified

        publish(server, tmp_path, "demo", "1.1", upload_time=datetime(2026, 1, 3, tzinfo=UTC))
        third = upstream.check("demo", first.validators)
        assert third.status == "changed"
        assert third.validators.last_modified == "Sat, 03 Jan 2026 00:00:00 GMT"


def test_servers_without_validators_are_fetched_every_time(
    tmp_path: Path, client: httpx.Client
) -> None:
    with UpstreamServer(tmp_path / "up", etags=False, last_modified=False) as server:
        publish(server, tmp_path, "demo", "1.0")
        upstream = upstream_for(server, client)
        first = upstream.check("demo")
        assert first.validators == Validators()
        assert upstream.check("demo", first.validators).status == "changed"
        assert "if-none-match" not in server.log[1].headers


def test_a_304_to_an_unconditional_request_is_a_failure(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(304)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    checked = Upstream("http://mirror.test/simple/", client, wait=wait_none()).check("demo")
    assert checked.status == "failed"
    assert (
        checked.error == "upstream http://mirror.test/simple/demo/ answered HTTP 304 Not Modified"
    )


def test_missing_project(server: UpstreamServer, client: httpx.Client) -> None:
    checked = upstream_for(server, client).check("nope", Validators(etag='"x"'))
    assert checked.status == "missing"
    assert checked.page is None
    assert checked.error == f"project 'nope' not found at {server.url}"


# --- retries and misbehaving servers -----------------------------------------------------------


def test_503_is_retried_then_succeeds(
    server: UpstreamServer, client: httpx.Client, tmp_path: Path
) -> None:
    publish(server, tmp_path, "demo", "1.0")
    server.misbehave("demo", Fault(503), Fault(502))
    checked = upstream_for(server, client).check("demo")
    assert checked.status == "changed"
    assert [s.status for s in server.seen("/simple/demo/")] == [503, 502, 200]


def test_429_honours_retry_after_in_seconds(tmp_path: Path, client: httpx.Client) -> None:
    with UpstreamServer(tmp_path / "up") as server:
        publish(server, tmp_path, "demo", "1.0")
        server.misbehave("demo", Fault(429, retry_after="1"))
        # wait_none: without the header there would be no pause at all.
        checked = upstream_for(server, client, attempts=2).check("demo")
        assert checked.status == "changed"
        first, second = server.seen("/simple/demo/")
        assert first.status == 429
        assert second.at - first.at >= 0.95


def test_429_honours_retry_after_as_an_http_date(tmp_path: Path, client: httpx.Client) -> None:
    with UpstreamServer(tmp_path / "up") as server:
        publish(server, tmp_path, "demo", "1.0")
        # HTTP-dates have whole seconds: two from now is more than one from now.
        later = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
        server.misbehave("demo", Fault(429, retry_after=later))
        checked = upstream_for(server, client, attempts=2).check("demo")
        assert checked.status == "changed"
        first, second = server.seen("/simple/demo/")
        assert second.at - first.at >= 0.95


def test_a_retry_after_beyond_the_limit_fails_at_once(tmp_path: Path, client: httpx.Client) -> None:
    with UpstreamServer(tmp_path / "up") as server:
        publish(server, tmp_path, "demo", "1.0")
        server.misbehave("demo", Fault(429, retry_after="120"))
        upstream = upstream_for(server, client, max_retry_after=5.0)
        started = time.monotonic()
        checked = upstream.check("demo")
        assert time.monotonic() - started < 2
        assert checked.status == "failed"
        assert checked.error == (
            f"upstream {server.url}demo/ unavailable: HTTP 429 Too Many Requests "
            "(after 1 attempt, asked to retry after 120 s)"
        )
        assert len(server.seen("/simple/demo/")) == 1


def test_an_unreadable_retry_after_falls_back_to_backoff(
    tmp_path: Path, client: httpx.Client
) -> None:
    with UpstreamServer(tmp_path / "up") as server:
        publish(server, tmp_path, "demo", "1.0")
        server.misbehave("demo", Fault(429, retry_after="soon"), Fault(503, retry_after="-1"))
        assert upstream_for(server, client).check("demo").status == "changed"


def test_a_dropped_connection_is_retried(tmp_path: Path, client: httpx.Client) -> None:
    with UpstreamServer(tmp_path / "up") as server:
        publish(server, tmp_path, "demo", "1.0")
        server.misbehave("demo", Fault(drop=True))
        assert upstream_for(server, client).check("demo").status == "changed"
        assert [s.status for s in server.seen("/simple/demo/")] == [0, 200]


def test_a_hang_longer_than_the_timeout_is_retried_then_failed(tmp_path: Path) -> None:
    with UpstreamServer(tmp_path / "up") as server, make_client(timeout=0.2) as client:
        publish(server, tmp_path, "once", "1.0")
        publish(server, tmp_path, "always", "1.0")
        server.misbehave("once", Fault(hang=0.6))
        server.misbehave("always", Fault(hang=0.6), forever=True)
        upstream = upstream_for(server, client, attempts=2)
        assert upstream.check("once").status == "changed"
        checked = upstream.check("always")
        assert checked.status == "failed"
        assert (
            checked.error
            == f"upstream {server.url}always/ unreachable: timed out (after 2 attempts)"
        )


def test_one_failing_project_never_stops_the_others(
    server: UpstreamServer, client: httpx.Client, tmp_path: Path
) -> None:
    names = [f"proj-{i}" for i in range(12)]
    for name in names:
        publish(server, tmp_path, name, "1.0")
    server.misbehave("proj-3", Fault(503), forever=True)
    server.misbehave("proj-7", Fault(drop=True), forever=True)
    upstream = upstream_for(server, client, attempts=2)
    results = {c.name: c for c in watch(upstream, [(n, None) for n in names], threads=4)}

    assert sorted(results) == sorted(names)
    for name in names:
        if name in ("proj-3", "proj-7"):
            assert results[name].status == "failed"
            assert_one_line(results[name].error)
        else:
            assert results[name].status == "changed", results[name]
    assert results["proj-3"].error == (
        f"upstream {server.url}proj-3/ unavailable: HTTP 503 Service Unavailable (after 2 attempts)"
    )
    assert results["proj-7"].error is not None
    assert results["proj-7"].error.startswith(f"upstream {server.url}proj-7/ unreachable: ")


def test_a_dead_server_fails_every_project_in_one_line(client: httpx.Client) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port is closed now: every connection is refused.
    upstream = Upstream(f"http://127.0.0.1:{port}/simple/", client, attempts=2, wait=wait_none())
    results = list(watch(upstream, [("a", None), ("b", Validators(etag='"1"')), ("c", None)]))
    assert sorted(c.name for c in results) == ["a", "b", "c"]
    for checked in results:
        assert checked.status == "failed"
        assert_one_line(checked.error)
        assert checked.error is not None and "(after 2 attempts)" in checked.error
    # The validators sent are kept, so the stored page stays usable.
    assert next(c for c in results if c.name == "b").validators == Validators(etag='"1"')


# --- watch: concurrency, keep-alive, processes --------------------------------------------------


def test_keep_alive_and_bounded_concurrency(tmp_path: Path, client: httpx.Client) -> None:
    with UpstreamServer(tmp_path / "up") as server:
        names = [f"proj-{i}" for i in range(40)]
        for name in names:
            publish(server, tmp_path, name, "1.0")
        server.delay = 0.03
        progress: list[tuple[int, int]] = []
        results = list(
            watch(
                upstream_for(server, client),
                [(n, None) for n in names],
                threads=4,
                chunk=15,
                progress=lambda done, total: progress.append((done, total)),
            )
        )
        assert len(results) == 40
        assert {c.status for c in results} == {"changed"}
        assert len(server.log) == 40
        # One keep-alive connection per thread, never more requests at once than threads.
        assert server.connections <= 4
        assert server.max_in_flight <= 4
        assert server.max_in_flight >= 2
        assert progress == [(15, 40), (30, 40), (40, 40)]


def test_two_processes_give_what_one_does(tmp_path: Path) -> None:
    with UpstreamServer(tmp_path / "up", mode="html") as server:
        names = [f"proj-{i}" for i in range(9)]
        for name in names:
            publish(server, tmp_path, name, "1.0")
        server.misbehave("proj-4", Fault(503), forever=True)
        items: list[tuple[str, Validators | None]] = [(n, None) for n in [*names, "missing"]]

        def run(processes: int) -> list[Checked]:
            with make_client(timeout=5.0) as client:
                upstream = upstream_for(server, client, attempts=2)
                found = watch(upstream, items, processes=processes, threads=2, chunk=3)
                return sorted(found, key=lambda c: c.name)

        one, two = run(1), run(2)
        assert one == two
        assert [c.status for c in one].count("changed") == 8
        # The workers spoke for wheelstock too.
        assert {s.headers["user-agent"] for s in server.log} == {f"wheelstock/{bot.__version__}"}
        # Warm, through the worker processes: conditional requests, 304s.
        warm = list(
            watch(server.url, [(c.name, c.validators) for c in one if c.page], processes=2, chunk=3)
        )
        assert sorted(c.status for c in warm) == ["unchanged"] * 8


def test_watch_of_nothing_and_bad_arguments(client: httpx.Client) -> None:
    upstream = Upstream("http://127.0.0.1:9/simple/", client)
    assert list(watch(upstream, [])) == []
    with pytest.raises(ValueError):
        list(watch(upstream, [("a", None)], threads=0))
    with pytest.raises(ValueError):
        list(watch(upstream, [("a", None)] * 3, processes=0, chunk=1))


def test_thread_local_transport_closes_what_dead_threads_left(tmp_path: Path) -> None:
    with UpstreamServer(tmp_path / "up") as server:
        publish(server, tmp_path, "demo", "1.0")
        transport = ThreadLocalTransport()
        with httpx.Client(transport=transport) as client:

            def fetch() -> None:
                assert client.get(server.url + "demo/").status_code == 200

            for _ in range(3):
                worker = threading.Thread(target=fetch)
                worker.start()
                worker.join()
            fetch()
            # Each new thread's first request swept the pools of threads that had ended.
            assert len(transport._by_thread) == 1
        assert transport._by_thread == {}
        assert server.connections == 4


# --- what the state keeps ----------------------------------------------------------------------


def test_state_keeps_validators_pages_and_failures(tmp_path: Path) -> None:
    state = State(tmp_path / "state")
    files = (
        DistFile(
            filename="demo-1.0.tar.gz",
            url="https://mirror.test/files/demo-1.0.tar.gz",
            sha256="ab" * 32,
            requires_python=">=3.9",
            yanked="broken",
            upload_time=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
            size=123,
            core_metadata="sha256=" + "cd" * 32,
        ),
        DistFile(filename="demo-1.0-py3-none-any.whl", url="https://mirror.test/w", sha256=None),
    )
    page = ProjectPage("demo", "https://mirror.test/simple/demo/", files)
    tagged = Validators(etag='W/"1"', last_modified="Fri, 02 Jan 2026 00:00:00 GMT")
    state.record_checks(
        [
            Checked("demo", "changed", page, tagged),
            Checked("bare", "changed", ProjectPage("bare", "u", ()), Validators()),
            Checked("flaky", "failed", None, Validators(), "upstream x unreachable: timed out"),
            Checked("gone", "missing", None, Validators(), "project 'gone' not found"),
        ]
    )
    assert state.validators() == {"demo": tagged}
    assert state.cached_page("Demo") == page
    assert state.cached_page("bare") == ProjectPage("bare", "u", ())
    assert state.cached_page("flaky") is None
    assert state.page_errors() == {
        "flaky": ("upstream x unreachable: timed out", 1),
        "gone": ("project 'gone' not found", 1),
    }

    # A 304 that brings a new ETag; a failure that keeps the page; a page that came back.
    newer = Validators(etag='"2"', last_modified=tagged.last_modified)
    state.record_checks(
        [
            Checked("demo", "unchanged", None, newer),
            Checked("flaky", "failed", None, Validators(), "still down"),
            Checked("gone", "changed", ProjectPage("gone", "g", ()), Validators(etag='"g"')),
        ]
    )
    assert state.validators() == {"demo": newer, "gone": Validators(etag='"g"')}
    assert state.page_errors() == {"flaky": ("still down", 2)}

    state.record_checks([Checked("demo", "failed", None, newer, "HTTP 503")] * 1)
    assert state.cached_page("demo") == page
    assert state.validators()["demo"] == newer
    assert state.page_errors()["demo"] == ("HTTP 503", 1)
    state.record_checks([Checked("demo", "unchanged", None, newer)])
    assert "demo" not in state.page_errors()

    state.record_checks([Checked("demo", "missing", None, Validators(), "not found")])
    assert state.cached_page("demo") is None
    assert "demo" not in state.validators()
    state.close()

    reopened = State(tmp_path / "state")
    assert reopened.validators() == {"gone": Validators(etag='"g"')}
    reopened.close()


def test_a_watch_round_trips_through_the_state(
    server: UpstreamServer, client: httpx.Client, tmp_path: Path
) -> None:
    for name in ("a", "b", "c"):
        publish(server, tmp_path, name, "1.0")
    state = State(tmp_path / "state")
    upstream = upstream_for(server, client)
    names = ["a", "b", "c"]
    state.record_checks(watch(upstream, [(n, state.validators().get(n)) for n in names]))
    known = state.validators()
    assert sorted(known) == names
    state.record_checks(watch(upstream, [(n, known.get(n)) for n in names]))
    assert [s.status for s in server.log] == [200] * 3 + [304] * 3
    for name in names:
        page = state.cached_page(name)
        assert page is not None and list(page.files) == server.dist_files(name)
    state.close()


# --- hostile pages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filename",
    ["../../tmp/x/demo-1.0.tar.gz", "/etc/demo-1.0.tar.gz", "sub\\demo-1.0.tar.gz", ".demo.tar.gz"],
)
def test_a_json_page_naming_a_path_instead_of_a_file_is_refused(filename: str) -> None:
    page = {"meta": {"api-version": "1.0"}, "files": [{"filename": filename, "url": "x"}]}
    with pytest.raises(UpstreamError, match="is not a bare file name"):
        parse_json_page(page, "http://127.0.0.1/simple/demo/")


def test_an_html_link_whose_name_unquotes_to_a_path_is_skipped() -> None:
    html = (
        '<a href="../../files/..%2F..%2Fevil%2Fdemo-1.0.tar.gz">x</a>'
        '<a href="../../files/demo-1.0.tar.gz#sha256=' + "0" * 64 + '">ok</a>'
    )
    files = parse_html_page(html, "http://127.0.0.1/simple/demo/")
    assert [f.filename for f in files] == ["demo-1.0.tar.gz"]


def _answering(body: bytes, content_type: str) -> Upstream:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": content_type})

    return Upstream(
        "http://upstream.test/simple/", httpx.Client(transport=httpx.MockTransport(handler))
    )


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (
            b'{"files": [{"filename": "demo-1.0.tar.gz", "url": "f",'
            b' "upload-time": "0001-01-01T00:00:00+23:59"}]}',
            "upload-time",
        ),
    ],
)
def test_a_hostile_page_fails_its_project_and_not_the_watch(body: bytes, why: str) -> None:
    upstream = _answering(body, "application/vnd.pypi.simple.v1+json")
    (checked,) = watch(upstream, [("demo", None)])
    assert checked.status == "failed" and checked.error is not None and why in checked.error


def test_make_client_goes_through_a_configured_proxy(
    server: UpstreamServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(server, tmp_path, "demo", "1.0")
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    # The loopback server answers absolute-form requests, as a forwarding proxy would.
    monkeypatch.setenv("HTTP_PROXY", server.base)
    with make_client(timeout=5.0) as proxied:
        page = Upstream("http://index.invalid/simple/", proxied, attempts=1).project("demo")
    assert [f.filename for f in page.files] == ["demo-1.0.tar.gz"]
