"""Registry entries: schema, every lint code with its position, output formats, add."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bot import lint, registry
from bot.cli import main
from bot.errors import RegistryError

from conftest import Workspace

GOOD = """\
# enrolment of demo
project: Demo_Pkg
maintainers:
  - alice
  - bob-b
consent: https://example.org/demo/issues/1
build:
  pythons: ["3.11", "3.12"]
  platforms: [linux, win32]
versions:
  ignore: ["==2.0.1", ">=3a0,<3"]
  prereleases: false
"""


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def test_shipped_registry_is_clean() -> None:
    root = Path(__file__).resolve().parent.parent / "registry"
    reg = registry.load_directory(root)
    assert reg.problems == ()
    assert 3 <= len(reg.entries) <= 5
    for entry in reg.entries:
        assert entry.path.stem == entry.name


def test_full_schema_loads(tmp_path: Path) -> None:
    write(tmp_path, "demo-pkg.yaml", GOOD)
    reg = registry.load_directory(tmp_path)
    assert reg.problems == ()
    (entry,) = reg.entries
    assert (entry.project, entry.name) == ("Demo_Pkg", "demo-pkg")
    assert entry.maintainers == ("alice", "bob-b")
    assert entry.pythons == ("3.11", "3.12") and entry.platforms == ("linux", "win32")
    assert entry.ignore == ("==2.0.1", ">=3a0,<3") and entry.prereleases is False
    assert entry.skip is None
    assert entry.is_maintainer("ALICE") and not entry.is_maintainer("mallory")
    assert reg.get("demo.pkg") is entry
    with pytest.raises(RegistryError, match="not enrolled"):
        reg.get("other")


def test_skip_reason_is_kept(tmp_path: Path) -> None:
    write(tmp_path, "demo-pkg.yaml", GOOD + "skip: upstream asked to pause\n")
    (entry,) = registry.load_directory(tmp_path).entries
    assert entry.skip == "upstream asked to pause"


BASE = "project: demo\nmaintainers: [alice]\nconsent: https://e.org/x\n"

# (file text, code, line, column, part of the message): one or more per code.
CASES = [
    (
        "project: foo bar\nmaintainers: [a]\nconsent: https://e.org/x\n",
        "WS113",
        1,
        10,
        "not a valid project name",
    ),
    (
        "project: ../x\nmaintainers: [a]\nconsent: https://e.org/x\n",
        "WS113",
        1,
        10,
        "not a valid project name",
    ),
    ("project: demo\nmaintainers: [alice\nconsent: x\n", "WS100", 3, 8, "invalid YAML"),
    (
        "project: demo\nproject: demo\nmaintainers: [alice]\nconsent: https://e.org/x\n",
        "WS101",
        2,
        1,
        "duplicate key 'project'",
    ),
    ("- just\n- a list\n", "WS102", 1, 1, "must be a mapping"),
    (
        BASE + "maintainer: [bob]\n",
        "WS110",
        4,
        1,
        "unknown key 'maintainer' (did you mean 'maintainers'?)",
    ),
    (
        BASE + "build:\n  python: ['3.12']\n",
        "WS110",
        5,
        3,
        "unknown key build.'python' (did you mean 'pythons'?)",
    ),
    ("project: demo\nmaintainers: [alice]\n", "WS111", 1, 1, "missing required key 'consent'"),
    (
        "project: 12\nmaintainers: [alice]\nconsent: https://e.org/x\n",
        "WS112",
        1,
        10,
        "project must be a non-empty string, not a number",
    ),
    (
        "project: demo\nmaintainers: alice\nconsent: https://e.org/x\n",
        "WS112",
        2,
        14,
        "maintainers must be a list, not a string",
    ),
    (BASE + "build:\n  pythons: [3.10]\n", "WS112", 5, 13, "'3.10' is not 3.1"),
    (BASE + "versions:\n  prereleases: 'yes'\n", "WS112", 5, 16, "must be true or false"),
    (BASE + "build: [linux]\n", "WS112", 4, 8, "build must be a mapping"),
    (
        "project: other\nmaintainers: [alice]\nconsent: https://e.org/x\n",
        "WS120",
        1,
        10,
        "normalized project name: other.yaml",
    ),
    (
        "project: demo\nmaintainers: []\nconsent: https://e.org/x\n",
        "WS130",
        2,
        14,
        "at least one handle",
    ),
    (
        "project: demo\nmaintainers:\n  - alice\n  - -bad-\nconsent: https://e.org/x\n",
        "WS131",
        4,
        5,
        "not a valid forge handle",
    ),
    (
        "project: demo\nmaintainers:\n  - alice\n  - Alice\nconsent: https://e.org/x\n",
        "WS132",
        4,
        5,
        "listed twice",
    ),
    ("project: demo\nmaintainers: [alice]\nconsent: not a url\n", "WS140", 3, 10, "http(s) URL"),
    (
        BASE + "versions:\n  ignore: ['>=1.0', '=>2']\n",
        "WS150",
        5,
        21,
        "'=>2' is not a PEP 440 specifier",
    ),
    (
        BASE + "build:\n  pythons: ['3.12', 'py3']\n",
        "WS151",
        5,
        21,
        "'py3' is not a Python version",
    ),
    (
        BASE + "build:\n  platforms: [linux, windows]\n",
        "WS152",
        5,
        22,
        "unknown platform 'windows'",
    ),
    (BASE + "skip:\n", "WS160", 4, 1, "skip must give a reason"),
    (BASE + "skip: true\n", "WS160", 4, 7, "skip must give a reason"),
]


@pytest.mark.parametrize(("text", "code", "line", "column", "message"), CASES)
def test_every_lint_code_with_its_position(
    tmp_path: Path, text: str, code: str, line: int, column: int, message: str
) -> None:
    path = write(tmp_path, "demo.yaml", text)
    problems = lint.lint([tmp_path])
    found = [p for p in problems if p.code == code]
    assert found, problems
    assert any(p.line == line and p.column == column and message in p.message for p in found), found
    assert all(p.path == path for p in problems)
    assert str(found[0]).startswith(f"{path}:{found[0].line}:{found[0].column}: {code} ")


def test_every_code_is_exercised_and_described() -> None:
    tested = {case[1] for case in CASES} | {"WS121", "WS122", "WS123"}
    assert tested == set(registry.CODES)


def test_duplicate_projects_across_files_by_spelling(tmp_path: Path) -> None:
    write(tmp_path, "demo-pkg.yaml", GOOD)
    write(tmp_path, "demo_pkg.yaml", GOOD.replace("Demo_Pkg", "demo.PKG"))
    problems = [p for p in lint.lint([tmp_path]) if p.code == "WS121"]
    assert [(p.path.name, p.line, p.column) for p in problems] == [
        ("demo-pkg.yaml", 2, 10),
        ("demo_pkg.yaml", 2, 10),
    ]
    assert "also enrolled in" in problems[0].message and "demo_pkg.yaml" in problems[0].message
    assert registry.load_directory(tmp_path).entries == ()


def test_lint_reports_every_problem_at_once(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "project: a\nmaintainers: []\nconsent: nope\nextra: 1\n")
    write(tmp_path, "b.yaml", "project: b\nmaintainers: [ok]\nconsent: https://e.org/b\n")
    write(tmp_path, "c.yaml", "{{{")
    problems = lint.lint([tmp_path])
    assert [(p.path.name, p.line, p.code) for p in problems] == [
        ("a.yaml", 2, "WS130"),
        ("a.yaml", 3, "WS140"),
        ("a.yaml", 4, "WS110"),
        ("c.yaml", 1, "WS100"),
    ]


def test_upstream_existence(workspace: Workspace, tmp_path: Path) -> None:
    sdist = tmp_path / "real-1.0.tar.gz"
    sdist.write_bytes(b"x")
    workspace.upstream.add_file("real", sdist)
    workspace.enrol("real", "alice")
    ghost = workspace.enrol("ghost", "alice")
    result = workspace.run("registry", "lint")
    assert result.code == 1
    assert result.out == (
        f"{ghost}:1:10: WS122 project 'ghost' not found upstream at {workspace.upstream.url}\n"
    )
    assert workspace.run("registry", "lint", "--offline").code == 0
    dead = workspace.run("registry", "lint", upstream="http://127.0.0.1:1/simple/")
    assert dead.code == 1 and dead.out.count("WS123") == 2


def test_markdown_and_json_formats(workspace: Workspace) -> None:
    bad = workspace.enrol("demo", "alice")
    bad.write_text("project: demo\nmaintainers: []\nconsent: https://e.org/x\ncolour: red\n")
    md = workspace.run("registry", "lint", "--offline", "--format", "markdown")
    assert md.code == 1
    assert "Found 2 problems in 1 file." in md.out
    assert f"#### `{bad}`" in md.out
    assert "- line 2, column 14: `WS130` maintainers must name at least one handle" in md.out
    assert "**What happens next**" in md.out and "push to this branch" in md.out
    data = json.loads(workspace.run("registry", "lint", "--offline", "--format", "json").out)
    assert [(p["line"], p["code"]) for p in data["problems"]] == [(2, "WS130"), (4, "WS110")]
    assert set(data["codes"]) == {"WS130", "WS110"}
    bad.write_text("project: demo\nmaintainers: [alice]\nconsent: https://e.org/x\n")
    ok = workspace.run("registry", "lint", "--offline", "--format", "markdown")
    assert ok.code == 0 and "All good: `demo.yaml` passed every check." in ok.out


def git(repo: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e.invalid",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout


def test_changed_since_lints_only_what_a_pr_touches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    reg = repo / "registry"
    write(reg, "old.yaml", "project: old\nmaintainers: []\nconsent: https://e.org/o\n")  # bad, old
    write(reg, "gone.yaml", "project: gone\nmaintainers: [a]\nconsent: https://e.org/g\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "base")
    git(repo, "checkout", "-qb", "enrol")
    new = write(reg, "new.yaml", "project: new\nmaintainers: [ok]\nconsent: nope\n")
    (reg / "gone.yaml").unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "enrol new")
    assert lint.changed_since("main", reg) == [new]
    code = main(
        ["registry", "lint", "--offline", "--registry", str(reg), "--changed-since", "main"]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert out == f"{new}:3:10: WS140 consent must be an http(s) URL, got 'nope'\n"
    # A duplicate of an unchanged entry is still caught, and reported on the changed file.
    write(reg, "OLD.yaml", "project: OLD\nmaintainers: [x]\nconsent: https://e.org/o\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "dup")
    problems = lint.lint([reg], only=lint.changed_since("main", reg))
    assert {(p.path.name, p.code) for p in problems} >= {("OLD.yaml", "WS121")}
    assert all(p.path.name != "old.yaml" for p in problems)
    with pytest.raises(RegistryError, match="cannot compare with 'nope'"):
        lint.changed_since("nope", reg)
    with pytest.raises(RegistryError, match="not inside a git repository"):
        lint.changed_since("main", write(tmp_path / "plain", "x.yaml", "").parent)


def test_add_writes_a_valid_entry(workspace: Workspace, tmp_path: Path) -> None:
    sdist = tmp_path / "Some.Project-1.0.tar.gz"
    sdist.write_bytes(b"x")
    workspace.upstream.add_file("Some.Project", sdist)
    done = workspace.run(
        "registry",
        "add",
        "Some.Project",
        "--maintainer",
        "alice",
        "--maintainer",
        "bob",
        "--consent",
        "https://example.org/some/issues/3",
    )
    assert done.code == 0, done.err
    path = workspace.registry / "some-project.yaml"
    (entry,) = registry.load([path]).entries
    assert (entry.project, entry.maintainers) == ("Some.Project", ("alice", "bob"))
    assert workspace.run("registry", "lint").code == 0
    again = workspace.run(
        "registry", "add", "some_project", "--maintainer", "a", "--consent", "https://e.org/1"
    )
    assert again.code == 1 and again.err == f"error: {path} already exists\n"
    unknown = workspace.run(
        "registry", "add", "ghost", "--maintainer", "a", "--consent", "https://e.org/1"
    )
    assert unknown.code == 1 and "ghost" in unknown.err and "not found" in unknown.err
    assert not (workspace.registry / "ghost.yaml").exists()
    bad = workspace.run(
        "registry", "add", "Some.Project2", "--maintainer=-x-", "--consent", "ftp://x"
    )
    assert bad.code == 1 and bad.err.count("\n") == 1


def test_cli_lint_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "demo-pkg.yaml", GOOD)
    assert main(["registry", "lint", "--offline", str(tmp_path)]) == 0
    bad = write(tmp_path, "zzz.yaml", "project: zzz\nmaintainers: []\nconsent: https://e.org\n")
    assert main(["registry", "lint", "--offline", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == f"{bad}:2:14: WS130 maintainers must name at least one handle\n"
    assert captured.err == "1 problem(s) in 2 file(s)\n"


def test_cli_lint_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["registry", "lint", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'nope.yaml'}: no such file or directory\n"
