"""Registry entries: loading, validation and lint positions, on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import registry
from bot.cli import main
from bot.errors import RegistryError

GOOD = """\
# enrolment of demo
project: Demo_Pkg
maintainers:
  - alice
  - bob-b
consent: https://example.org/demo/issues/1
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


def test_good_entry_loads(tmp_path: Path) -> None:
    write(tmp_path, "demo-pkg.yaml", GOOD)
    reg = registry.load_directory(tmp_path)
    assert reg.problems == ()
    (entry,) = reg.entries
    assert entry.project == "Demo_Pkg"
    assert entry.name == "demo-pkg"
    assert entry.maintainers == ("alice", "bob-b")
    assert entry.is_maintainer("ALICE")
    assert not entry.is_maintainer("mallory")
    assert reg.get("demo.pkg") is entry
    with pytest.raises(RegistryError, match="not enrolled"):
        reg.get("other")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("project: demo\nmaintainers: [alice]\nconsent: [\n", 4, "invalid YAML"),
        ("project: demo\nmaintainers: []\nconsent: https://e.org/x\n", 2, "at least one handle"),
        ("project: demo\nmaintainers: alice\nconsent: https://e.org/x\n", 2, "must be a list"),
        (
            "project: demo\nmaintainers:\n  - alice\n  - -bad-\nconsent: https://e.org/x\n",
            4,
            "not a valid forge handle",
        ),
        (
            "project: demo\nmaintainers:\n  - alice\n  - Alice\nconsent: https://e.org/x\n",
            4,
            "listed twice",
        ),
        ("project: demo\nmaintainers: [alice]\nconsent: not a url\n", 3, "http(s) URL"),
        (
            "project: demo\nmaintainers: [alice]\nconsent: https://e.org/x\ncolour: red\n",
            4,
            "unknown key 'colour'",
        ),
        ("project: demo\nmaintainers: [alice]\n", 1, "missing required key 'consent'"),
        (
            "project: other\nmaintainers: [alice]\nconsent: https://e.org/x\n",
            1,
            "normalized project name: other.yaml",
        ),
        ("- just\n- a list\n", 1, "must be a mapping"),
        (
            "project: demo\nproject: demo\nmaintainers: [alice]\nconsent: https://e.org/x\n",
            2,
            "invalid YAML",
        ),
        ("project: 12\nmaintainers: [alice]\nconsent: https://e.org/x\n", 1, "non-empty string"),
    ],
)
def test_lint_reports_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, "demo.yaml", text)
    problems = registry.lint([tmp_path])
    assert problems, "a bad entry must produce a problem"
    assert any(p.line == line and message in p.message for p in problems), problems
    assert all(p.path == path for p in problems)
    assert str(problems[0]).startswith(f"{path}:")


def test_lint_reports_every_problem_at_once(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "project: a\nmaintainers: []\nconsent: nope\nextra: 1\n")
    write(tmp_path, "b.yaml", "project: b\nmaintainers: [ok]\nconsent: https://e.org/b\n")
    write(tmp_path, "c.yaml", "{{{")
    problems = registry.lint([tmp_path])
    assert sorted((p.path.name, p.line) for p in problems) == [
        ("a.yaml", 2),
        ("a.yaml", 3),
        ("a.yaml", 4),
        ("c.yaml", 1),
    ]


def test_same_project_twice_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "demo-pkg.yaml", GOOD)
    sub = tmp_path / "more"
    write(sub, "demo-pkg.yaml", GOOD.replace("Demo_Pkg", "demo.pkg"))
    reg = registry.load([tmp_path / "demo-pkg.yaml", sub / "demo-pkg.yaml"])
    assert len(reg.entries) == 1
    (problem,) = reg.problems
    assert "already enrolled" in problem.message


def test_cli_lint_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "demo-pkg.yaml", GOOD)
    assert main(["registry", "lint", str(tmp_path)]) == 0
    bad = write(tmp_path, "zzz.yaml", "project: zzz\nmaintainers: []\nconsent: https://e.org\n")
    assert main(["registry", "lint", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.strip() == f"{bad}:2: maintainers must name at least one handle"


def test_cli_lint_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["registry", "lint", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
