"""Rendering the feedstock template and round-trip edits of feedstock.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import feedstock
from bot.errors import FeedstockError
from bot.feedstock import Source

TEMPLATE = Path(__file__).resolve().parent.parent / "feedstock-template"
SHA_A = "a" * 64
SHA_B = "b" * 64


def render(
    version: str = "1.0", url: str = "http://127.0.0.1:1/files/demo-1.0.tar.gz"
) -> dict[str, str]:
    return feedstock.render(
        TEMPLATE,
        project="demo",
        version=version,
        source=Source(f"demo-{version}.tar.gz", url, SHA_A),
        maintainers=("alice", "bob"),
        consent="https://example.org/demo/issues/1",
    )


def test_render_produces_valid_feedstock() -> None:
    files = render()
    assert {"feedstock.yaml", "README.md", ".gitattributes", ".github/workflows/build.yml"} <= set(
        files
    )
    assert "TEMPLATE_VERSION" not in files
    fs = feedstock.parse(files["feedstock.yaml"])
    assert (fs.project, fs.version, fs.source.sha256) == ("demo", "1.0", SHA_A)
    assert fs.template == feedstock.template_version(TEMPLATE)
    assert "@alice, @bob" in files["README.md"]


def test_render_keeps_versions_strings() -> None:
    # 1.10 must not become the float 1.1 when the file is read back.
    assert feedstock.parse(render("1.10")["feedstock.yaml"]).version == "1.10"


def test_render_quotes_awkward_urls() -> None:
    url = "http://127.0.0.1:1/files/demo 1.0.tar.gz?x=1#frag: no"
    assert feedstock.parse(render(url=url)["feedstock.yaml"]).source.url == url


def test_bump_round_trip_keeps_comments_and_order() -> None:
    text = render()["feedstock.yaml"]
    new = feedstock.bump(text, "1.1", Source("demo-1.1.tar.gz", "http://h/demo-1.1.tar.gz", SHA_B))
    fs = feedstock.parse(new)
    assert (fs.version, fs.source.filename, fs.source.sha256) == ("1.1", "demo-1.1.tar.gz", SHA_B)
    old_lines, new_lines = text.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    assert len(changed) == 4  # version, filename, url, sha256: nothing else moves
    assert all(line.startswith("#") for line in new_lines[:3])
    assert "# verified before anything reads the sdist" in new


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("project: x\nversion: '1'\n", "source must be a mapping"),
        (
            f"project: x\nversion: 'one'\nsource: {{filename: a, url: b, sha256: {SHA_A}}}\n",
            "not a PEP 440 version",
        ),
        (
            "project: x\nversion: '1'\nsource: {filename: a, url: b, sha256: XYZ}\n",
            "source.sha256 must be 64",
        ),
        (f"project: x\nversion: '1'\nsource: {{url: b, sha256: {SHA_A}}}\n", "source.filename"),
        ("[1, 2]\n", "mapping at the top level"),
        ("a: [\n", "invalid YAML"),
    ],
)
def test_parse_names_the_bad_field(text: str, message: str) -> None:
    with pytest.raises(FeedstockError, match=message.replace(".", r"\.")):
        feedstock.parse(text, "x-feedstock/feedstock.yaml")


def test_template_without_version_file(tmp_path: Path) -> None:
    with pytest.raises(FeedstockError, match="not a feedstock template"):
        feedstock.template_version(tmp_path)


@pytest.mark.parametrize(
    ("filename", "message"),
    [
        ("../../index/files/demo/demo-6.6.6-py3-none-any.whl", "must be a bare file name"),
        ("sub/demo-1.0.tar.gz", "must be a bare file name"),
        (".demo-1.0.tar.gz", "must be a bare file name"),
        ("demo-1.0-py3-none-any.whl", "is not an sdist"),
        ("other-1.0.tar.gz", "is not demo 1.0"),
        ("demo-2.0.tar.gz", "is not demo 1.0"),
    ],
)
def test_source_filename_must_be_this_projects_sdist(filename: str, message: str) -> None:
    # A merged feedstock.yaml is input from volunteers: its filename becomes a path on disk.
    text = render()["feedstock.yaml"].replace("demo-1.0.tar.gz", filename, 1)
    with pytest.raises(FeedstockError, match=message):
        feedstock.parse(text)


def test_source_url_must_be_http() -> None:
    text = render()["feedstock.yaml"].replace("http://127.0.0.1:1/", "file:///etc/", 1)
    with pytest.raises(FeedstockError, match="source.url must be an http"):
        feedstock.parse(text)
