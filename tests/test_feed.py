"""Upstream's change feed: one root-page request says which of the enrolled pages moved.

The loopback upstream numbers its changes as an index that offers a feed does: each
project's last serial on the JSON root page (with an ETag, so a root that did not change is a
304) and on the project's page (the X-PyPI-Last-Serial header).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_propose import Kit

from bot import tick
from bot import upstream as upstream_module
from bot.context import Bot, Summary
from bot.errors import UpstreamError, WheelstockError
from bot.registry import Entry
from bot.simple import ProjectPage, parse_root_serials
from bot.state import State
from bot.upstream import Checked, Upstream, Validators, make_client

from conftest import Workspace
from support import Fault, UpstreamServer


def _root(*projects: dict[str, Any]) -> dict[str, Any]:
    return {"meta": {"api-version": "1.1"}, "projects": list(projects)}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_root({"name": "Foo_Bar", "_last-serial": 7}), {"foo-bar": 7}),
        (
            _root({"name": "a", "_last-serial": 0}, {"name": "b", "_last-serial": 3}),
            {"a": 0, "b": 3},
        ),
        # Two spellings of one project: the later change counts.
        (_root({"name": "A.b", "_last-serial": 9}, {"name": "a-b", "_last-serial": 4}), {"a-b": 9}),
        # No serials at all: no feed, conditional requests instead.
        (_root({"name": "a"}, {"name": "b"}), None),
        (_root(), None),
    ],
)
def test_root_serials_are_read(data: dict[str, Any], expected: dict[str, int] | None) -> None:
    assert parse_root_serials(data, "http://127.0.0.1/simple/") == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "the document is not a JSON object"),
        ({"projects": {}}, "projects is not a list"),
        (_root("a"), "projects[0] is not an object with a name"),
        (_root({"_last-serial": 1}), "projects[0] is not an object with a name"),
        (_root({"name": "a", "_last-serial": "7"}), "projects[0]._last-serial is not"),
        (_root({"name": "a", "_last-serial": True}), "projects[0]._last-serial is not"),
        (_root({"name": "a", "_last-serial": -1}), "projects[0]._last-serial is not"),
        # Half a feed is no feed: a project without a serial would never be fetched.
        (_root({"name": "a", "_last-serial": 1}, {"name": "b"}), "1 of 2 projects have no"),
        ({"meta": {"api-version": "2.0"}, "projects": []}, "only 1.x is supported"),
    ],
)
def test_a_root_page_that_cannot_be_read_whole_is_refused(data: Any, message: str) -> None:
    with pytest.raises(UpstreamError, match="invalid root page|only 1.x") as caught:
        parse_root_serials(data, "http://127.0.0.1/simple/")
    assert message in str(caught.value)


@pytest.fixture
def feeding(tmp_path: Path) -> Iterator[UpstreamServer]:
    with UpstreamServer(tmp_path / "upstream", serials=True) as upstream:
        yield upstream


def test_feed_reads_serials_and_answers_304_when_nothing_changed(
    feeding: UpstreamServer, tmp_path: Path
) -> None:
    for name in ("alpha", "beta"):
        feeding.add_file(name, _sdist(tmp_path, name, "1.0"))
    upstream = Upstream(feeding.url, make_client(), attempts=1)
    first = upstream.feed()
    assert first.status == "changed"
    assert first.serials == {"alpha": 1, "beta": 2}
    assert first.validators.etag
    again = upstream.feed(first.validators)
    assert (again.status, again.serials) == ("unchanged", None)
    feeding.add_file("beta", _sdist(tmp_path, "beta", "1.1"))
    moved = upstream.feed(first.validators)
    assert moved.status == "changed"
    assert moved.serials == {"alpha": 1, "beta": 3}
    checked = upstream.check("beta")
    assert checked.serial == 3


def test_an_index_without_a_feed_says_none(server: UpstreamServer, tmp_path: Path) -> None:
    # The plain loopback upstream: a JSON root without serials, or (HTML mode) an HTML root.
    server.add_file("alpha", _sdist(tmp_path, "alpha", "1.0"))
    feed = Upstream(server.url, make_client(), attempts=1).feed()
    assert (feed.status, feed.serials) == ("none", None)


def test_a_failing_root_page_raises_one_error(feeding: UpstreamServer) -> None:
    feeding.fail_next = [503]
    with pytest.raises(UpstreamError, match="503"):
        Upstream(feeding.url, make_client(), attempts=1).feed()


def test_a_page_is_current_at_the_lower_of_the_feed_and_its_own_serial(tmp_path: Path) -> None:
    state = State(tmp_path / "state")
    try:
        from bot.simple import ProjectPage

        def page(name: str) -> ProjectPage:
            return ProjectPage(name, f"http://127.0.0.1/simple/{name}/", ())

        state.record_checks(
            [
                # Fetched after a feed that said 10; the page itself says 7: a stale copy.
                Checked("stale", "changed", page("stale"), Validators('"e"'), serial=7),
                # The page is newer than the feed read before it: current at the feed's 10.
                Checked("newer", "changed", page("newer"), Validators('"e"'), serial=12),
                # No serial on the page: the feed's.
                Checked("plain", "changed", page("plain"), Validators('"e"')),
                Checked("broken", "failed", None, Validators(), "upstream down"),
            ],
            {"stale": 10, "newer": 10, "plain": 10, "broken": 10},
        )
        assert state.unmoved() == {"newer", "plain"}
        state.record_feed({"newer": 11, "plain": 10, "stale": 10, "unknown": 5})
        assert state.unmoved() == {"plain"}
        assert state.feed_serials() == {"stale": 10, "newer": 11, "plain": 10}
        # Only pages fetched from the index being watched.
        assert state.unmoved("http://127.0.0.1/other/") == set()
    finally:
        state.close()


# -- the tick ------------------------------------------------------------------------------


@pytest.fixture
def kit(tmp_path: Path, feeding: UpstreamServer) -> Kit:
    kit = Kit(tmp_path, feeding, limits={"change_feed_from": 1})
    for name in ("alpha", "beta", "gamma"):
        kit.enrol(name, "alice")
        kit.release(name, "1.0")
    return kit


def _page_requests(upstream: UpstreamServer, start: int) -> list[str]:
    # Project pages only: files downloaded for a new feedstock or a bump are not the watch.
    return [
        path
        for _, path in upstream.requests[start:]
        if path.startswith("/simple/") and path != "/simple/"
    ]


def _root_requests(upstream: UpstreamServer, start: int) -> int:
    return sum(path == "/simple/" for _, path in upstream.requests[start:])


def test_a_tick_fetches_only_the_pages_the_feed_says_moved(kit: Kit) -> None:
    kit.tick()
    assert {pr.project for pr in kit.prs()} == set()  # 1.0 is what each feedstock builds
    start = len(kit.upstream.requests)
    summary = kit.tick()
    assert summary.errors == []
    assert _root_requests(kit.upstream, start) == 1
    assert _page_requests(kit.upstream, start) == []
    assert "upstream: change feed: 0 of 3 projects moved since their last check" in kit.lines

    kit.release("beta", "1.1")
    start = len(kit.upstream.requests)
    kit.tick()
    assert _root_requests(kit.upstream, start) == 1
    pages = _page_requests(kit.upstream, start)
    assert "/simple/beta/" in pages
    assert not {"/simple/alpha/", "/simple/gamma/"} & set(pages)
    assert [(pr.project, "1.1" in pr.title) for pr in kit.prs(state="open")] == [("beta", True)]
    # Quiet again: nothing but the root page.
    start = len(kit.upstream.requests)
    kit.tick()
    assert _page_requests(kit.upstream, start) == []


def test_every_page_is_checked_once_a_day_whatever_the_feed_says(kit: Kit) -> None:
    kit.tick()
    kit.now += timedelta(hours=23)
    start = len(kit.upstream.requests)
    kit.tick()
    assert _page_requests(kit.upstream, start) == []
    kit.now += timedelta(hours=2)
    start = len(kit.upstream.requests)
    kit.tick()
    pages = _page_requests(kit.upstream, start)
    assert sorted(pages) == ["/simple/alpha/", "/simple/beta/", "/simple/gamma/"]
    assert all(seen.status == 304 for p in pages for seen in kit.upstream.seen(p)[-1:])


def test_a_page_whose_check_failed_is_checked_again_though_the_feed_is_still(kit: Kit) -> None:
    kit.upstream.misbehave("gamma", Fault(status=500))
    summary = kit.tick()
    assert any("gamma" in line for line in summary.errors)
    kit.now += timedelta(hours=3)  # past the first backoff
    start = len(kit.upstream.requests)
    summary = kit.tick()
    assert summary.errors == []
    assert _page_requests(kit.upstream, start) == ["/simple/gamma/"]


def test_a_dead_feed_costs_one_line_and_the_tick_checks_every_page(kit: Kit) -> None:
    kit.tick()
    kit.upstream.fail_next = [500]  # the tick's first request is the root page
    start = len(kit.upstream.requests)
    summary = kit.tick()
    assert summary.errors == []
    assert any(
        line.startswith("upstream: change feed unavailable (upstream ")
        and line.endswith("; checking every page")
        for line in kit.lines
    ), kit.lines
    assert sorted(_page_requests(kit.upstream, start)) == [
        "/simple/alpha/",
        "/simple/beta/",
        "/simple/gamma/",
    ]


def test_without_the_feed_every_page_is_checked(kit: Kit) -> None:
    kit.limits = {"change_feed": False, "change_feed_from": 1}
    kit.tick()
    start = len(kit.upstream.requests)
    kit.tick()
    assert _root_requests(kit.upstream, start) == 0
    assert len(_page_requests(kit.upstream, start)) == 3


def test_a_tick_without_the_feed_leaves_the_next_one_with_it_nothing_to_relearn(
    kit: Kit,
) -> None:
    kit.tick()
    kit.limits = {"change_feed": False, "change_feed_from": 1}
    kit.tick()
    kit.limits = {"change_feed_from": 1}
    start = len(kit.upstream.requests)
    kit.tick()
    assert kit.upstream.seen("/simple/")[-1].status == 304
    assert _page_requests(kit.upstream, start) == []


def test_an_index_without_a_feed_is_asked_once_a_day(tmp_path: Path) -> None:
    with UpstreamServer(tmp_path / "upstream") as plain:
        kit = Kit(tmp_path, plain, limits={"change_feed_from": 1})
        kit.enrol("alpha", "alice")
        kit.release("alpha", "1.0")
        kit.tick()
        assert _root_requests(plain, 0) == 1
        start = len(plain.requests)
        kit.tick()
        assert _root_requests(plain, start) == 0
        assert _page_requests(plain, start) == ["/simple/alpha/"]
        kit.now += timedelta(hours=25)
        start = len(plain.requests)
        kit.tick()
        assert _root_requests(plain, start) == 1


def test_the_feed_is_asked_with_the_root_pages_etag(kit: Kit) -> None:
    kit.tick()
    kit.tick()
    first, second = kit.upstream.seen("/simple/")
    assert (first.status, second.status) == (200, 304)
    assert "if-none-match" not in first.headers
    assert second.headers["if-none-match"].startswith('"')


def _sdist(tmp_path: Path, name: str, version: str) -> Path:
    from test_propose import quick_sdist

    return quick_sdist(tmp_path / "dist" / name / version, name, version, ())


def test_a_small_watch_does_not_read_the_feed(tmp_path: Path, feeding: UpstreamServer) -> None:
    # Below change_feed_from, one conditional request a project costs less than a root page
    # that lists every project upstream.
    kit = Kit(tmp_path, feeding, limits={"change_feed_from": 3})
    for name in ("alpha", "beta"):
        kit.enrol(name, "alice")
        kit.release(name, "1.0")
    kit.tick()
    kit.tick()
    assert _root_requests(feeding, 0) == 0
    kit.enrol("gamma", "alice")
    kit.release("gamma", "1.0")
    start = len(feeding.requests)
    kit.tick()
    assert _root_requests(feeding, start) == 1


# -- what a watch leaves out, and what upstream may send ------------------------------------


def test_a_project_released_while_unenrolled_is_checked_after_a_root_304(kit: Kit) -> None:
    kit.tick()
    kit.tick()
    entry = (kit.registry / "gamma.yaml").read_text()
    (kit.registry / "gamma.yaml").unlink()
    kit.tick()
    kit.release("gamma", "1.1")
    kit.tick()  # the root page is a 200, but gamma is not watched: its serial is stored anyway
    (kit.registry / "gamma.yaml").write_text(entry)
    start = len(kit.upstream.requests)
    kit.tick()
    assert kit.upstream.seen("/simple/")[-1].status == 304
    assert "/simple/gamma/" in _page_requests(kit.upstream, start), kit.lines
    assert [pr.title for pr in kit.prs("gamma", "open")] == ["gamma 1.0 → 1.1"]


def test_a_project_released_during_its_backoff_is_checked_after_a_root_304(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit.tick()
    real = tick.sync_project
    failing = {"gamma"}

    def sync(bot: Bot, entry: Entry, page: ProjectPage, summary: Summary, affected: Any) -> Any:
        if entry.name in failing:
            raise WheelstockError("forge hiccup")
        return real(bot, entry, page, summary, affected)

    monkeypatch.setattr(tick, "sync_project", sync)
    kit.release("gamma", "1.0.1")  # gamma syncs, and fails: a backoff of 2 h
    assert any("forge hiccup" in e for e in kit.tick().errors)
    failing.clear()
    kit.release("gamma", "1.1")
    kit.tick()  # the root page is a 200 while gamma backs off
    kit.now += timedelta(hours=3)  # the backoff is over; nothing changed upstream since
    start = len(kit.upstream.requests)
    kit.tick()
    assert kit.upstream.seen("/simple/")[-1].status == 304
    assert "/simple/gamma/" in _page_requests(kit.upstream, start), kit.lines
    assert "gamma 1.0 → 1.1" in [pr.title for pr in kit.prs("gamma", "open")]


@pytest.mark.parametrize("serial", [2**63, "9" * 5000], ids=["past-sqlite", "5000-digits"])
@pytest.mark.parametrize(
    "limits", [{}, {"change_feed": False}, {"change_feed_from": 1}], ids=["small", "off", "feed"]
)
def test_a_serial_upstream_cannot_mean_costs_no_tick(
    tmp_path: Path, feeding: UpstreamServer, limits: dict[str, object], serial: object
) -> None:
    kit = Kit(tmp_path, feeding, limits=limits)  # type: ignore[arg-type]
    kit.enrol("alpha", "alice")
    kit.release("alpha", "1.0")
    feeding._last_serial["alpha"] = serial  # type: ignore[assignment]
    summary = kit.tick()
    assert summary.created == 1
    if limits.get("change_feed_from") == 1 and serial == 2**63:
        # On the root page too: the feed cannot be read, so every page is checked.
        assert any("change feed unavailable" in line for line in kit.lines), kit.lines


def test_the_lint_survives_a_serial_header_of_5000_digits(
    tmp_path: Path, feeding: UpstreamServer, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = Workspace(tmp_path, feeding, capsys)
    ws.enrol("alpha", "alice")
    feeding.add_file("alpha", _sdist(tmp_path, "alpha", "1.0"))
    feeding._last_serial["alpha"] = "9" * 5000  # type: ignore[assignment]
    result = ws.run("registry", "lint")
    assert result.code == 0, result.out + result.err


def test_a_root_page_too_large_is_not_read_as_a_feed(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit.tick()
    monkeypatch.setattr(upstream_module, "MAX_ROOT_BYTES", 64)
    with pytest.raises(UpstreamError, match="root page of more than"):
        Upstream(kit.upstream.url, make_client(), attempts=1).feed()
    kit.release("beta", "1.1")
    start = len(kit.upstream.requests)
    summary = kit.tick()
    assert summary.errors == []
    assert any(line.startswith("upstream: change feed unavailable") for line in kit.lines)
    assert len(_page_requests(kit.upstream, start)) == 3
    assert [pr.project for pr in kit.prs(state="open")] == ["beta"]
