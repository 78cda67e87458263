"""`index verify` proves the tree consistent, and a publish killed at any point keeps it so."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bot import index, signing
from bot.cli import main
from bot.errors import PublishError
from bot.index import PROVENANCE_SUFFIX
from bot.index_verify import TreeReport, verify, verify_tree
from bot.simple import DistFile

from conftest import Workspace
from projects import assemble_wheel, fixture_sdist

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LATER = datetime(2024, 7, 1, 9, 30, tzinfo=UTC)
DEMO_10 = "demo-1.0-py3-none-any.whl"
DEMO_11 = "demo-1.1-py3-none-any.whl"
OTHER_20 = "other-2.0-py3-none-any.whl"
UPSTREAM_WHEEL = "demo-0.9-py3-none-any.whl"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dist(filename: str, *, yanked: str | None = None) -> DistFile:
    return DistFile(
        filename=filename,
        url=f"https://upstream.invalid/files/{filename}",
        sha256="a" * 64,
        requires_python=">=3.8",
        yanked=yanked,
        upload_time=datetime(2024, 4, 1, 8, 0, tzinfo=UTC),
        size=123,
        core_metadata=f"sha256={'b' * 64}" if filename.endswith(".whl") else None,
    )


def signed(key: Ed25519PrivateKey, wheels: list[Path]) -> dict[str, bytes]:
    """Each wheel's provenance document as the gate writes it (bot.gate.signed_provenance)."""
    documents = {}
    for wheel in wheels:
        statement = signing.publication(
            wheel.name,
            sha256(wheel.read_bytes()),
            {"predicateType": "https://slsa.dev/provenance/v1", "predicate": {}},
            {"predicate": {"approver": "alice"}},
        )
        documents[wheel.name] = (json.dumps(signing.sign(statement, key), indent=2) + "\n").encode()
    return documents


def build_index(root: Path, wheels: Path) -> Ed25519PrivateKey:
    """Two projects of ours (one with signed provenance), and upstream's files on demo's page."""
    key = Ed25519PrivateKey.generate()
    signing.publish_public_key(root, key)
    demo = [
        assemble_wheel(wheels, "demo", "1.0", requires_python=">=3.8"),
        assemble_wheel(wheels, "demo", "1.1"),
    ]
    index.publish(root, "demo", demo, now=NOW, provenance=signed(key, demo))
    index.publish(root, "other", [assemble_wheel(wheels, "other", "2.0")], now=NOW)
    index.refresh(
        root,
        {
            "demo": [
                dist("demo-1.0.tar.gz"),
                dist("demo-1.1.tar.gz"),
                dist(UPSTREAM_WHEEL, yanked="old"),
            ]
        },
    )
    return key


@pytest.fixture
def root(tmp_path: Path) -> Path:
    tree = tmp_path / "index"
    build_index(tree, tmp_path / "wheels")
    return tree


def test_a_clean_index_verifies(root: Path) -> None:
    report = verify_tree(root)
    assert report.problems == ()
    assert (report.projects, report.files) == (2, 3)
    # What it checked is really there: our files, their sidecars, upstream's links, the key.
    assert (root / "files" / "demo" / (DEMO_10 + PROVENANCE_SUFFIX)).is_file()
    assert UPSTREAM_WHEEL in (root / "simple" / "demo" / "index.html").read_text()
    assert (root / signing.PUBLIC_KEY_PATH).is_file()


def test_an_empty_or_missing_tree_verifies(tmp_path: Path) -> None:
    assert verify(tmp_path / "nothing") == []
    assert not (tmp_path / "nothing").exists()  # verify creates nothing
    (tmp_path / "empty").mkdir()
    assert verify_tree(tmp_path / "empty") == TreeReport(0, 0, ())


def test_publishing_more_files_of_a_project_verifies(root: Path, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    index.publish(root, "demo", [assemble_wheel(wheels, "demo", "1.2")], now=LATER)
    index.publish(root, "demo", [assemble_wheel(wheels, "demo", "1.0", requires_python=">=3.8")])
    assert verify_tree(root) == TreeReport(2, 4, ())


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) >= 1, old
    path.write_text(text.replace(old, new, 1))


def _page(root: Path, rel: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((root / rel).read_bytes())
    return data


def _missing_file(root: Path) -> list[str]:
    (root / "files" / "demo" / DEMO_10).unlink()
    return [f"simple/demo/index.json: lists {DEMO_10}, which is missing"]


def _truncated_file(root: Path) -> list[str]:
    path = root / "files" / "demo" / DEMO_10
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:10])
    return [f"files/demo/{DEMO_10}: size 10, listed {size}"]


def _changed_bytes(root: Path) -> list[str]:
    path = root / "files" / "demo" / DEMO_10
    data = bytearray(path.read_bytes())
    listed = sha256(bytes(data))
    data[-1] ^= 0xFF  # the end of the zip's central directory: same size, other bytes
    path.write_bytes(bytes(data))
    return [f"files/demo/{DEMO_10}: sha256 {sha256(bytes(data))}, listed {listed}"]


def _wrong_metadata(root: Path) -> list[str]:
    path = root / "files" / "demo" / (DEMO_11 + ".metadata")
    path.write_bytes(b"Metadata-Version: 2.1\nName: demo\nVersion: 6.6.6\n")
    return [f"files/demo/{DEMO_11}.metadata: differs from the wheel's METADATA"]


def _html_attribute_of_upstreams_file(root: Path) -> list[str]:
    _edit(root / "simple" / "demo" / "index.html", 'data-yanked="old"', 'data-yanked="other"')
    return [
        "simple/demo/index.html disagrees with index.json: "
        f"{UPSTREAM_WHEEL} data-yanked is 'other', JSON 'old'"
    ]


def _html_attribute_of_ours(root: Path) -> list[str]:
    page = root / "simple" / "demo" / "index.html"
    (line,) = [line for line in page.read_text().splitlines() if f">{DEMO_10}</a>" in line]
    _edit(page, line, line.replace(' data-requires-python="&gt;=3.8"', ""))
    return [
        "simple/demo/index.html disagrees with index.json: "
        f"{DEMO_10} data-requires-python is absent, JSON '>=3.8'"
    ]


def _html_hash_fragment(root: Path) -> list[str]:
    listed = index.project_files(root, "other")[0].sha256
    _edit(root / "simple" / "other" / "index.html", f"#sha256={listed}", f"#sha256={'0' * 64}")
    url = f"../../files/other/{OTHER_20}"
    return [
        "simple/other/index.html disagrees with index.json: "
        f"{OTHER_20} href is '{url}#sha256={'0' * 64}', JSON '{url}#sha256={listed}'"
    ]


def _root_pages_miss_a_project(root: Path) -> list[str]:
    page = _page(root, "simple/index.json")
    page["projects"] = [{"name": "demo"}]
    (root / "simple" / "index.json").write_text(json.dumps(page, indent=2))
    _edit(root / "simple" / "index.html", '    <a href="other/">other</a><br>\n', "")
    return ["simple/index.json: does not list other, which has simple/other/index.json"]


def _root_html_misses_a_project(root: Path) -> list[str]:
    _edit(root / "simple" / "index.html", '    <a href="other/">other</a><br>\n', "")
    return ["simple/index.html disagrees with index.json: other is not in index.html"]


def _stray_file(root: Path) -> list[str]:
    (root / "files" / "demo" / "stray.whl").write_bytes(b"not listed anywhere")
    (root / "files" / "demo" / ".stray.whl.1234.tmp").write_bytes(b"a write in progress")
    return ["files/demo/stray.whl: not listed"]


def _stray_page(root: Path) -> list[str]:
    (root / "simple" / "ghost").mkdir()
    (root / "simple" / "ghost" / "index.html").write_text("<a href='x'>x</a>")
    return ["simple/ghost/index.html: not listed"]


def _project_page_not_json(root: Path) -> list[str]:
    (root / "simple" / "other" / "index.json").write_text("<!DOCTYPE html>\n")
    return ["simple/other/index.json: not valid JSON: Expecting value: line 1 column 1 (char 0)"]


def _root_page_not_json(root: Path) -> list[str]:
    (root / "simple" / "index.json").write_bytes(b'{"projects": [')
    return ["simple/index.json: not valid JSON: Expecting value: line 1 column 15 (char 14)"]


def _provenance_of_another_wheel(root: Path) -> list[str]:
    files = root / "files" / "demo"
    shutil.copyfile(files / (DEMO_11 + PROVENANCE_SUFFIX), files / (DEMO_10 + PROVENANCE_SUFFIX))
    return [f"files/demo/{DEMO_10}{PROVENANCE_SUFFIX}: the provenance is not about {DEMO_10}"]


def _listed_size_edited(root: Path) -> list[str]:
    rel = "simple/other/index.json"
    page = _page(root, rel)
    entry = page["files"][0]  # type: ignore[index]
    size = entry["size"]
    entry["size"] = size + 1
    (root / rel).write_text(json.dumps(page))
    return [f"files/other/{OTHER_20}: size {size}, listed {size + 1}"]


@pytest.mark.parametrize(
    "corrupt",
    [
        _missing_file,
        _truncated_file,
        _changed_bytes,
        _wrong_metadata,
        _html_attribute_of_upstreams_file,
        _html_attribute_of_ours,
        _html_hash_fragment,
        _root_pages_miss_a_project,
        _root_html_misses_a_project,
        _stray_file,
        _stray_page,
        _project_page_not_json,
        _root_page_not_json,
        _provenance_of_another_wheel,
        _listed_size_edited,
    ],
    ids=lambda corrupt: corrupt.__name__.strip("_"),
)
def test_each_corruption_is_one_line(root: Path, corrupt: Callable[[Path], list[str]]) -> None:
    expected = corrupt(root)
    assert verify(root) == expected


def test_problems_add_up_one_line_each(root: Path) -> None:
    lines = [*_missing_file(root), *_stray_file(root), *_html_attribute_of_upstreams_file(root)]
    assert sorted(verify(root)) == sorted(lines)


def test_cli_verify_prints_problems_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    build_index(state / "index", tmp_path / "wheels")
    argv = ["index", "verify", "--state-dir", str(state)]
    assert main(argv) == 0
    assert capsys.readouterr().out == "index: 2 projects, 3 files: ok\n"
    _missing_file(state / "index")
    _stray_file(state / "index")
    assert main(argv) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"simple/demo/index.json: lists {DEMO_10}, which is missing",
        "files/demo/stray.whl: not listed",
        "index: 2 projects, 3 files: 2 problems",
    ]


def test_what_review_approve_publishes_verifies(workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    ws.enrol("demo", "alice")
    ws.upstream.add_file("demo", fixture_sdist(tmp_path, "demo", "1.0"))
    assert ws.run("tick").code == 0
    assert ws.run("review", "approve", "demo", "1.0", "--as", "alice").code == 0
    result = ws.run("index", "verify")
    assert (result.code, result.out) == (0, "index: 1 projects, 1 files: ok\n")


def test_a_journal_that_is_not_ours_is_an_error_not_a_guess(root: Path) -> None:
    (root / ".index.journal").write_text('{"projects": {"demo": ["../../etc/passwd"]}}')
    with pytest.raises(PublishError, match="not a journal wheelstock wrote"):
        verify(root)


# --- SIGKILL at every file operation of a publish --------------------------------------------

# The child publishes as the gate does, with every operation that changes the tree counted:
# at the N-th it kills itself with SIGKILL (no finally, no atexit, no temp-file cleanup), or,
# with N = 0, runs through and prints how many there were.
CHILD = r"""
import os, signal, sys, tempfile
from datetime import datetime, timezone
from pathlib import Path

from bot import index

root, kill_at, project, *wheels = sys.argv[1:]
kill_at = int(kill_at)
count = 0


def counting(real):
    def call(*args, **kwargs):
        global count
        count += 1
        if count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    return call


for module, name in [
    (os, "replace"), (os, "rename"), (os, "unlink"), (os, "rmdir"), (os, "mkdir"),
    (os, "chmod"), (os, "fsync"), (tempfile, "mkstemp"),
]:
    setattr(module, name, counting(getattr(module, name)))
documents = {Path(w).name: Path(w + ".provenance.json") for w in wheels}
print("ready", flush=True)
index.publish(
    Path(root),
    project,
    [Path(w) for w in wheels],
    now=datetime(2024, 7, 1, 9, 30, tzinfo=timezone.utc),
    provenance={name: path.read_bytes() for name, path in documents.items() if path.exists()},
)
print(count)
"""


def _child(
    root: Path, kill_at: int, project: str, wheels: list[Path]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(kill_at), project, *map(str, wheels)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def _snapshot(root: Path) -> dict[str, bytes]:
    """The tree as a web server shows it: every file but hidden ones (lock, journal, temps)."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(root).parts)
    }


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href") or "")


def _every_page_links_only_whole_files(root: Path) -> None:
    """What a client that reads one page sees: each file ours it links is there, entire."""
    for page in (root / "simple").glob("*/index.*"):
        if page.suffix == ".json":
            links = [
                (f["url"], f["hashes"]["sha256"])
                for f in json.loads(page.read_bytes())["files"]
                if "://" not in f["url"]
            ]
        else:
            parser = _Links()
            parser.feed(page.read_text())
            links = [tuple(h.split("#sha256=")) for h in parser.hrefs if "://" not in h]
        for url, digest in links:
            target = page.parent / url
            assert target.is_file(), f"{page} links {url}, which is missing"
            assert sha256(target.read_bytes()) == digest, f"{page} links {url}, not whole"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["new project", "update"])
def test_publish_killed_at_every_file_operation_leaves_old_or_new(
    tmp_path: Path, case: str
) -> None:
    template = tmp_path / "template"
    wheels = tmp_path / "wheels"
    key = build_index(template, wheels)
    if case == "new project":  # the root pages change too
        project = "fresh"
        new = [assemble_wheel(wheels, "fresh", "1.0"), assemble_wheel(wheels, "fresh", "1.1")]
    else:  # demo already has files of ours and upstream's, and yanks to carry over
        project = "demo"
        new = [assemble_wheel(wheels, "demo", "1.2"), assemble_wheel(wheels, "demo", "1.1")]
    documents = signed(key, new)
    for wheel, document in documents.items():
        (wheels / (wheel + PROVENANCE_SUFFIX)).write_bytes(document)
    before = _snapshot(template)

    reference = tmp_path / "reference"
    shutil.copytree(template, reference)
    run = _child(reference, 0, project, new)
    assert run.returncode == 0, run.stderr
    operations = int(run.stdout.split()[-1])
    after = _snapshot(reference)
    assert after != before and verify(reference) == []

    assert operations >= 20  # journal, two wheels with sidecars, two or four pages
    outcomes = set()
    for kill_at in range(1, operations + 1):
        tree = tmp_path / f"killed-{kill_at}"
        shutil.copytree(template, tree)
        run = _child(tree, kill_at, project, new)
        assert run.returncode == -signal.SIGKILL, (kill_at, run.stdout, run.stderr)
        # Before anyone takes the lock: each page, JSON or HTML, is old or new, whole, and
        # links only files that are there with the bytes it names.
        seen = _snapshot(tree)
        for rel, data in seen.items():
            if rel.startswith("simple/"):
                assert data in (before.get(rel), after.get(rel)), (kill_at, rel)
        _every_page_links_only_whole_files(tree)
        page = f"simple/{project}/index"
        if seen.get(f"{page}.json") == after[f"{page}.json"] != seen.get(f"{page}.html"):
            outcomes.add("twins apart")  # the window the journal is for
        # verify takes the lock, so the interrupted write is finished first: all old or all new.
        assert verify(tree) == [], kill_at
        state = _snapshot(tree)
        assert state in (before, after), kill_at
        outcomes.add("new" if state == after else "old")
        # ...and publishing again completes it, to the very bytes of an uninterrupted run.
        index.publish(tree, project, new, now=LATER, provenance=documents)
        assert _snapshot(tree) == after and verify(tree) == [], kill_at
        shutil.rmtree(tree)
    assert outcomes == {"old", "new", "twins apart"}


@pytest.mark.slow
def test_publish_killed_at_random_moments_leaves_old_or_new(tmp_path: Path) -> None:
    template = tmp_path / "template"
    wheels = tmp_path / "wheels"
    build_index(template, wheels)
    # Wheels of a few MiB (stored, not deflated), so that a kill often lands inside a copy.
    body = "DATA = " + repr(random.Random(503).randbytes(1 << 20).hex()) + "\n"
    new = [assemble_wheel(wheels, "big", v, body=body) for v in ("1.0", "1.1", "1.2")]
    before = _snapshot(template)
    reference = tmp_path / "reference"
    shutil.copytree(template, reference)
    started = time.monotonic()
    assert _child(reference, 0, "big", new).returncode == 0
    took = time.monotonic() - started
    after = _snapshot(reference)

    rng = random.Random(658)
    for attempt in range(20):
        tree = tmp_path / f"killed-{attempt}"
        shutil.copytree(template, tree)
        command = [sys.executable, "-c", CHILD, str(tree), "0", "big", *map(str, new)]
        with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0, took))
            child.send_signal(signal.SIGKILL)
        _every_page_links_only_whole_files(tree)
        assert verify(tree) == [], attempt
        assert _snapshot(tree) in (before, after), attempt
        shutil.rmtree(tree)
