"""Tests for bot.index: pages, metadata files, immutability and incremental writes."""

from __future__ import annotations

import hashlib
import json
import zipfile
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from bot.errors import PublishError
from bot.index import IndexedFile, project_files, publish, rebuild, stray_files

from projects import assemble_wheel

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
LATER = datetime(2024, 6, 1, 8, 30, 15, 250000, tzinfo=UTC)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (the lock file aside) with its bytes."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != ".index.lock"
    }


class Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.meta: list[dict[str, str | None]] = []
        self._open: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open = dict(attrs)
        elif tag == "meta":
            self.meta.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.anchors.append((self._open, data))
            self._open = None


def parse_html(path: Path) -> Anchors:
    parser = Anchors()
    parser.feed(path.read_text("utf-8"))
    return parser


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    return tmp_path / "in"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "index"


def test_publish_writes_json_page_with_hashes_of_the_real_bytes(root: Path, wheels: Path) -> None:
    wheel = assemble_wheel(wheels, "Demo_Pkg", "1.0", requires_python=">=3.8,<4")

    [entry] = publish(root, "Demo.Pkg", [wheel], now=NOW)

    published = root / "files" / "demo-pkg" / wheel.name
    metadata = root / "files" / "demo-pkg" / f"{wheel.name}.metadata"
    assert published.read_bytes() == wheel.read_bytes()
    page = json.loads((root / "simple" / "demo-pkg" / "index.json").read_text("utf-8"))
    assert page == {
        "meta": {"api-version": "1.1"},
        "name": "demo-pkg",
        "files": [
            {
                "filename": wheel.name,
                "url": f"../../files/demo-pkg/{wheel.name}",
                "hashes": {"sha256": sha256(wheel.read_bytes())},
                "requires-python": ">=3.8,<4",
                "size": wheel.stat().st_size,
                "upload-time": "2024-05-01T12:00:00.000000Z",
                "core-metadata": {"sha256": sha256(metadata.read_bytes())},
            }
        ],
        "versions": ["1.0"],
    }
    assert entry == IndexedFile(
        filename=wheel.name,
        sha256=sha256(wheel.read_bytes()),
        size=wheel.stat().st_size,
        requires_python=">=3.8,<4",
        upload_time="2024-05-01T12:00:00.000000Z",
        metadata_sha256=sha256(metadata.read_bytes()),
    )
    # The relative URL lands on the file from the page's own address.
    assert urljoin("http://h/simple/demo-pkg/", page["files"][0]["url"]) == (
        f"http://h/files/demo-pkg/{wheel.name}"
    )


def test_metadata_file_is_the_wheels_own_metadata(root: Path, wheels: Path) -> None:
    wheel = assemble_wheel(wheels, "demo", "1.0", requires_python=">=3.9")
    [entry] = publish(root, "demo", [wheel], now=NOW)

    with zipfile.ZipFile(wheel) as archive:
        expected = archive.read("demo-1.0.dist-info/METADATA")
    served = (root / "files" / "demo" / f"{wheel.name}.metadata").read_bytes()
    assert served == expected
    assert entry.metadata_sha256 == sha256(expected)


def test_html_page_has_pep503_anchors_and_metadata_attributes(root: Path, wheels: Path) -> None:
    wheel = assemble_wheel(wheels, "demo", "1.0", requires_python=">=3.8,<4")
    [entry] = publish(root, "demo", [wheel], now=NOW)

    page = root / "simple" / "demo" / "index.html"
    raw = page.read_text("utf-8")
    assert raw.startswith("<!DOCTYPE html>")
    assert 'data-requires-python="&gt;=3.8,&lt;4"' in raw  # PEP 503 escaping
    parsed = parse_html(page)
    assert {"name": "pypi:repository-version", "content": "1.1"} in parsed.meta
    [(attrs, text)] = parsed.anchors
    assert text == wheel.name
    assert attrs["href"] == f"../../files/demo/{wheel.name}#sha256={sha256(wheel.read_bytes())}"
    assert attrs["data-requires-python"] == ">=3.8,<4"
    assert attrs["data-core-metadata"] == f"sha256={entry.metadata_sha256}"
    assert attrs["data-dist-info-metadata"] == f"sha256={entry.metadata_sha256}"
    assert "data-yanked" not in attrs


def test_root_pages_list_every_project(root: Path, wheels: Path) -> None:
    publish(root, "beta", [assemble_wheel(wheels, "beta", "1.0")], now=NOW)
    publish(root, "Alpha", [assemble_wheel(wheels, "alpha", "1.0")], now=NOW)

    listing = json.loads((root / "simple" / "index.json").read_text("utf-8"))
    assert listing == {
        "meta": {"api-version": "1.1"},
        "projects": [{"name": "alpha"}, {"name": "beta"}],
    }
    anchors = parse_html(root / "simple" / "index.html").anchors
    assert [(a["href"], text) for a, text in anchors] == [("alpha/", "alpha"), ("beta/", "beta")]


def test_project_files_reads_back_what_publish_listed(root: Path, wheels: Path) -> None:
    assert project_files(root, "demo") == []
    published = publish(root, "demo", [assemble_wheel(wheels, "demo", "1.0")], now=NOW)
    assert project_files(root, "DEMO") == published


def test_republishing_the_same_bytes_is_a_no_op(root: Path, wheels: Path) -> None:
    wheel = assemble_wheel(wheels, "demo", "1.0")
    [first] = publish(root, "demo", [wheel], now=NOW)
    before = snapshot(root)

    [again] = publish(root, "demo", [wheel, wheel], now=LATER)

    assert again == first  # upload-time stays the original one
    assert snapshot(root) == before


def test_other_bytes_under_a_published_filename_are_refused(root: Path, wheels: Path) -> None:
    publish(root, "demo", [assemble_wheel(wheels / "a", "demo", "1.0")], now=NOW)
    before = snapshot(root)
    impostor = assemble_wheel(wheels / "b", "demo", "1.0", body="VALUE = 2\n")

    with pytest.raises(PublishError, match="already published with other content"):
        publish(root, "demo", [impostor], now=LATER)

    assert snapshot(root) == before


def test_same_filename_twice_with_different_bytes_is_refused(root: Path, wheels: Path) -> None:
    one = assemble_wheel(wheels / "a", "demo", "1.0")
    two = assemble_wheel(wheels / "b", "demo", "1.0", body="VALUE = 2\n")
    with pytest.raises(PublishError, match="given twice"):
        publish(root, "demo", [one, two], now=NOW)
    assert snapshot(root) == {}


@pytest.mark.parametrize(
    ("project", "factory", "message"),
    [
        ("other", lambda d: assemble_wheel(d, "demo", "1.0"), "not of other"),
        (
            "demo",
            lambda d: assemble_wheel(d, "demo", "1.0", metadata_name="evil"),
            "METADATA says evil",
        ),
        (
            "demo",
            lambda d: assemble_wheel(d, "demo", "1.0", requires_python=">=3.x"),
            "Requires-Python",
        ),
        ("../etc", lambda d: assemble_wheel(d, "demo", "1.0"), "not a valid project name"),
    ],
)
def test_invalid_wheels_are_refused(
    root: Path, wheels: Path, project: str, factory: object, message: str
) -> None:
    assert callable(factory)
    with pytest.raises(PublishError, match=message):
        publish(root, project, [factory(wheels)], now=NOW)
    assert snapshot(root) == {}


def test_files_that_are_not_wheels_are_refused(root: Path, wheels: Path) -> None:
    wheels.mkdir()
    not_zip = wheels / "demo-1.0-py3-none-any.whl"
    not_zip.write_bytes(b"not a zip")
    bad_name = wheels / "demo-1.0.tar.gz"
    bad_name.write_bytes(b"")
    with pytest.raises(PublishError, match="not a readable zip file"):
        publish(root, "demo", [not_zip], now=NOW)
    with pytest.raises(PublishError, match="not a wheel filename"):
        publish(root, "demo", [bad_name], now=NOW)
    with pytest.raises(PublishError, match="nothing to publish"):
        publish(root, "demo", [], now=NOW)
    assert snapshot(root) == {}


def test_one_bad_input_publishes_nothing(root: Path, wheels: Path) -> None:
    good = assemble_wheel(wheels, "demo", "1.0")
    bad = assemble_wheel(wheels, "other", "1.0")
    with pytest.raises(PublishError):
        publish(root, "demo", [good, bad], now=NOW)
    assert snapshot(root) == {}


def test_publishing_one_project_leaves_other_pages_untouched(root: Path, wheels: Path) -> None:
    publish(root, "alpha", [assemble_wheel(wheels, "alpha", "1.0")], now=NOW)
    alpha = root / "simple" / "alpha"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in alpha.iterdir()}

    publish(root, "beta", [assemble_wheel(wheels, "beta", "1.0")], now=LATER)

    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in alpha.iterdir()}
    assert after == before
    assert set(before) == {"index.html", "index.json"}


def test_new_versions_are_added_and_versions_sorted_by_pep440(root: Path, wheels: Path) -> None:
    publish(root, "demo", [assemble_wheel(wheels, "demo", "1.10")], now=NOW)
    publish(
        root,
        "demo",
        [
            assemble_wheel(wheels, "demo", "1.9"),
            assemble_wheel(wheels, "demo", "1.9", tag="py2.py3-none-any"),
        ],
        now=LATER,
    )

    page = json.loads((root / "simple" / "demo" / "index.json").read_text("utf-8"))
    assert page["versions"] == ["1.9", "1.10"]
    filenames = [f["filename"] for f in page["files"]]
    assert filenames == sorted(filenames)
    assert len(filenames) == 3
    times = {f["filename"]: f["upload-time"] for f in page["files"]}
    assert times["demo-1.10-py3-none-any.whl"] == "2024-05-01T12:00:00.000000Z"
    assert times["demo-1.9-py3-none-any.whl"] == "2024-06-01T08:30:15.250000Z"
    anchors = parse_html(root / "simple" / "demo" / "index.html").anchors
    assert [text for _, text in anchors] == filenames


def test_writes_leave_no_temp_files_and_are_world_readable(root: Path, wheels: Path) -> None:
    publish(root, "demo", [assemble_wheel(wheels, "demo", "1.0")], now=NOW)
    files = [p for p in root.rglob("*") if p.is_file() and p.name != ".index.lock"]
    assert not [p for p in files if p.name.startswith(".")]
    # A static web server running as another user has to read them.
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}


def test_rebuild_reproduces_the_same_bytes(root: Path, wheels: Path) -> None:
    publish(root, "alpha", [assemble_wheel(wheels, "alpha", "1.0")], now=NOW)
    publish(
        root, "beta", [assemble_wheel(wheels, "beta", "2.0", requires_python=">=3.10")], now=LATER
    )
    before = snapshot(root)
    for page in (root / "simple").rglob("index.html"):
        page.unlink()
    (root / "simple" / "index.json").unlink()

    assert rebuild(root) == 2
    assert snapshot(root) == before


def test_rebuild_keeps_yanks(root: Path, wheels: Path) -> None:
    publish(root, "demo", [assemble_wheel(wheels, "demo", "1.0")], now=NOW)
    publish(root, "demo", [assemble_wheel(wheels, "demo", "2.0")], now=LATER)
    page_path = root / "simple" / "demo" / "index.json"
    page = json.loads(page_path.read_text("utf-8"))
    page["files"][0]["yanked"] = "broken <build>"
    page_path.write_text(json.dumps(page), "utf-8")

    assert rebuild(root) == 1

    entries = {e.filename: e for e in project_files(root, "demo")}
    assert entries["demo-1.0-py3-none-any.whl"].yanked == "broken <build>"
    assert entries["demo-2.0-py3-none-any.whl"].upload_time == "2024-06-01T08:30:15.250000Z"
    html_text = (root / "simple" / "demo" / "index.html").read_text("utf-8")
    assert 'data-yanked="broken &lt;build&gt;"' in html_text
    rebuilt = json.loads(page_path.read_text("utf-8"))
    assert rebuilt["versions"] == ["1.0", "2.0"]
    assert "yanked" not in rebuilt["files"][1]


def test_rebuild_never_lists_files_copied_in_by_hand(root: Path, wheels: Path) -> None:
    # index.json, written only by publish, is the source of truth: a wheel nobody approved does
    # not reach the pages by being put into files/, even for a project with no page at all.
    publish(root, "demo", [assemble_wheel(wheels, "demo", "1.0")], now=NOW)
    assert stray_files(root) == []
    extra = assemble_wheel(wheels, "demo", "2.0")
    stray = root / "files" / "demo" / extra.name
    stray.write_bytes(extra.read_bytes())
    stray_metadata = root / "files" / "demo" / "demo-3.0-py3-none-any.whl.metadata"
    stray_metadata.write_bytes(b"Metadata-Version: 2.1\nName: demo\nVersion: 3.0\n")
    other = assemble_wheel(wheels, "other", "1.0")
    unlisted_project = root / "files" / "other" / other.name
    unlisted_project.parent.mkdir()
    unlisted_project.write_bytes(other.read_bytes())
    before = snapshot(root)

    assert rebuild(root) == 1

    assert [e.filename for e in project_files(root, "demo")] == ["demo-1.0-py3-none-any.whl"]
    for page in ("index.json", "index.html"):
        assert extra.name not in (root / "simple" / "demo" / page).read_text("utf-8")
    assert not (root / "simple" / "other").exists()
    assert "other" not in (root / "simple" / "index.json").read_text("utf-8")
    # Stray files are left exactly as they were, and nothing is written for them.
    assert snapshot(root) == before
    assert stray_files(root) == sorted([stray, stray_metadata, unlisted_project])


def test_stray_files_of_an_empty_or_missing_tree(root: Path) -> None:
    assert stray_files(root) == []
    assert not root.exists()  # asking does not create the tree
    (root / "files" / "demo" / ".demo-1.0-py3-none-any.whl.part").parent.mkdir(parents=True)
    (root / "files" / "demo" / ".demo-1.0-py3-none-any.whl.part").write_bytes(b"partial")
    assert stray_files(root) == []  # a temp file of an interrupted write is not a stray


def test_rebuild_refuses_a_listed_file_that_is_missing(root: Path, wheels: Path) -> None:
    wheel = assemble_wheel(wheels, "demo", "1.0")
    publish(root, "demo", [wheel], now=NOW)
    (root / "files" / "demo" / wheel.name).unlink()
    before = snapshot(root)

    with pytest.raises(PublishError, match=f"files/demo/{wheel.name} is listed but missing"):
        rebuild(root)
    assert snapshot(root) == before


def test_rebuild_refuses_a_listed_filename_that_is_a_path(root: Path, wheels: Path) -> None:
    publish(root, "demo", [assemble_wheel(wheels, "demo", "1.0")], now=NOW)
    publish(root, "other", [assemble_wheel(wheels, "other", "1.0")], now=NOW)
    page_path = root / "simple" / "demo" / "index.json"
    page = json.loads(page_path.read_text("utf-8"))
    page["files"][0]["filename"] = "../other/other-1.0-py3-none-any.whl"
    page_path.write_text(json.dumps(page), "utf-8")
    before = snapshot(root)

    with pytest.raises(PublishError, match="not a bare file name"):
        rebuild(root)
    assert snapshot(root) == before


def test_empty_yank_reason_is_json_true(root: Path, wheels: Path) -> None:
    publish(root, "demo", [assemble_wheel(wheels, "demo", "1.0")], now=NOW)
    page_path = root / "simple" / "demo" / "index.json"
    page = json.loads(page_path.read_text("utf-8"))
    page["files"][0]["yanked"] = True
    page_path.write_text(json.dumps(page), "utf-8")

    rebuild(root)

    assert json.loads(page_path.read_text("utf-8"))["files"][0]["yanked"] is True
    assert project_files(root, "demo")[0].yanked == ""
    assert 'data-yanked=""' in (root / "simple" / "demo" / "index.html").read_text("utf-8")


def test_rebuild_refuses_a_file_whose_bytes_changed(root: Path, wheels: Path) -> None:
    publish(root, "demo", [assemble_wheel(wheels / "a", "demo", "1.0")], now=NOW)
    tampered = assemble_wheel(wheels / "b", "demo", "1.0", body="VALUE = 666\n")
    target = root / "files" / "demo" / tampered.name
    target.write_bytes(tampered.read_bytes())
    before = snapshot(root)

    with pytest.raises(PublishError, match="differs from its listed sha256"):
        rebuild(root)
    assert snapshot(root) == before


def test_a_corrupt_project_page_is_reported_with_its_key_path(root: Path, wheels: Path) -> None:
    publish(root, "demo", [assemble_wheel(wheels, "demo", "1.0")], now=NOW)
    page_path = root / "simple" / "demo" / "index.json"
    page = json.loads(page_path.read_text("utf-8"))
    del page["files"][0]["hashes"]
    page_path.write_text(json.dumps(page), "utf-8")

    with pytest.raises(PublishError, match=r"files\[0\]\.hashes: expected an object"):
        project_files(root, "demo")
    page_path.write_text("{", "utf-8")
    with pytest.raises(PublishError, match="not valid JSON"):
        publish(root, "demo", [assemble_wheel(wheels, "demo", "2.0")], now=NOW)


def root_pages(root: Path) -> tuple[bytes, bytes]:
    simple = root / "simple"
    return (simple / "index.json").read_bytes(), (simple / "index.html").read_bytes()


def test_a_new_project_is_spliced_into_the_root_pages_as_a_full_render_lists_it(
    root: Path, wheels: Path
) -> None:
    # Before, between and after the names already listed, and one whose name sorts first.
    order = ["mid", "zeta", "alpha", "mid-2", "a0", "zz", "beta"]
    for i, name in enumerate(order, 1):
        publish(root, name, [assemble_wheel(wheels, name.replace("-", "_"), "1.0")], now=NOW)
        spliced = root_pages(root)
        listing = json.loads(spliced[0])
        assert [p["name"] for p in listing["projects"]] == sorted(order[:i])
        anchors = parse_html(root / "simple" / "index.html").anchors
        assert [text for _, text in anchors] == sorted(order[:i])
        rebuild(root)  # renders the root pages from the project directories, in full
        assert root_pages(root) == spliced


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda json_page, html_page: (json_page, b""), id="html-emptied"),
        pytest.param(
            lambda json_page, html_page: (
                json.dumps(json.loads(json_page), indent=2).encode(),  # an older layout
                html_page,
            ),
            id="json-indented",
        ),
        pytest.param(
            lambda json_page, html_page: (
                json_page,
                html_page.replace(b'    <a href="beta/">beta</a><br>\n', b""),
            ),
            id="html-lacks-one",
        ),
        pytest.param(
            lambda json_page, html_page: (json_page.replace(b'"beta"', b"7"), html_page),
            id="json-name-not-a-string",
        ),
    ],
)
def test_root_pages_that_cannot_take_a_splice_are_listed_again_in_full(
    root: Path, wheels: Path, damage: Any
) -> None:
    for name in ("alpha", "beta", "delta"):
        publish(root, name, [assemble_wheel(wheels, name, "1.0")], now=NOW)
    json_page, html_page = damage(*root_pages(root))
    (root / "simple" / "index.json").write_bytes(json_page)
    (root / "simple" / "index.html").write_bytes(html_page)

    publish(root, "gamma", [assemble_wheel(wheels, "gamma", "1.0")], now=NOW)
    spliced = root_pages(root)
    listing = json.loads(spliced[0])
    assert [p["name"] for p in listing["projects"]] == ["alpha", "beta", "delta", "gamma"]
    rebuild(root)
    assert root_pages(root) == spliced
