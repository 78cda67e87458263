"""The lint that answers a registry PR, and ``wheelstock enrol``'s new entry files.

Reads entries with ``bot.registry``, asks upstream whether their projects exist through
``bot.watch``, and reports in text, JSON or Markdown for a PR comment.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from packaging.utils import canonicalize_name

from bot.errors import RegistryError
from bot.fsutil import atomic_write_text
from bot.registry import CODES, Problem, load, load_entry, registry_files
from bot.upstream import Upstream
from bot.watch import watch


def expand(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(registry_files(path))
        elif path.exists():
            files.append(path)
        else:
            raise RegistryError(f"{path}: no such file or directory")
    return files


def changed_since(ref: str, directory: Path) -> list[Path]:
    """Registry files added or modified since ``ref`` (merge base), as a PR check sees them."""
    import git  # here only: importing GitPython runs `git version` (twice), in every command

    try:
        repo = git.Repo(directory, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise RegistryError(f"{directory}: not inside a git repository") from exc
    root = Path(str(repo.working_tree_dir)).resolve()
    try:
        out = repo.git.diff(
            "--name-only", "--diff-filter=d", f"{ref}...HEAD", "--", str(directory.resolve())
        )
    except git.GitCommandError as exc:
        raise RegistryError(f"--changed-since: git cannot compare with {ref!r}") from exc
    changed = [root / line for line in out.splitlines() if line.endswith((".yaml", ".yml"))]
    return [p for p in changed if p.is_file()]


# Asks upstream about projects, all at once: (code, message) for each that is not there.
ProjectCheck = Callable[[Sequence[str]], Mapping[str, tuple[str, str]]]


# More projects than this: upstream_check reports its progress.
PROGRESS_FROM = 1000


def upstream_check(
    upstream: Upstream, progress: Callable[[int, int], None] | None = None
) -> ProjectCheck:
    """A ProjectCheck that asks ``upstream`` about every project at once, through the
    tick's watch (threads, worker processes, keep-alive, its retries): 25,000 entries are
    one watch's work. ``progress(done, total)`` is called past PROGRESS_FROM projects."""

    def check(projects: Sequence[str]) -> dict[str, tuple[str, str]]:
        spelled: dict[str, str] = {canonicalize_name(p): p for p in projects}
        items = [(project, None) for project in spelled.values()]
        report = progress if len(items) > PROGRESS_FROM else None
        found: dict[str, tuple[str, str]] = {}
        for checked in watch(upstream, items, processes=None, progress=report):
            project = spelled[checked.name]
            if checked.status == "missing":
                why = f"project {project!r} not found upstream at {upstream.index_url}"
                found[project] = ("WS122", why)
            elif checked.status == "failed":
                found[project] = ("WS123", f"could not check {project!r} upstream: {checked.error}")
        return found

    return check


def lint(
    paths: Sequence[Path],
    *,
    only: Sequence[Path] | None = None,
    exists: ProjectCheck | None = None,
) -> list[Problem]:
    """Every problem in the given files and directories, in file order.

    ``only`` restricts the report to those files (the whole registry is still read, so a
    project enrolled twice is caught); ``exists`` asks upstream about each valid entry.
    """
    files = expand(paths)
    registry = load(files)
    problems = list(registry.problems)
    wanted = None if only is None else {p.resolve() for p in only}
    if exists is not None:
        asked = [e for e in registry.entries if wanted is None or e.path.resolve() in wanted]
        found = exists([entry.project for entry in asked])
        for entry in asked:
            if entry.project in found:
                line, col = registry.positions.get(entry.path, (1, 1))
                problems.append(Problem(entry.path, line, col, *found[entry.project]))
    if wanted is not None:
        problems = [p for p in problems if p.path.resolve() in wanted]
    return problems


def format_text(problems: Sequence[Problem]) -> str:
    return "".join(f"{p}\n" for p in problems)


def format_json(problems: Sequence[Problem], checked: Sequence[Path]) -> str:
    document = {
        "files": [str(p) for p in checked],
        "problems": [p.to_json() for p in problems],
        "codes": {code: CODES[code] for code in sorted({p.code for p in problems})},
    }
    return json.dumps(document, indent=2) + "\n"


def format_markdown(problems: Sequence[Problem], checked: Sequence[Path]) -> str:
    """The comment for an enrolment PR: every problem per file, then what happens next."""
    lines = ["### wheelstock registry lint", ""]
    if not checked:
        lines += ["No registry entries changed; nothing to check.", ""]
        return "\n".join(lines)
    if not problems:
        names = ", ".join(f"`{p.name}`" for p in checked)
        lines += [
            f"All good: {names} passed every check.",
            "",
            "**What happens next**",
            "- A volunteer reviews and merges this pull request.",
            "- On its next run the bot creates the project's feedstock at the newest final",
            "  upstream release, builds its wheels, and waits for one of the listed maintainers",
            "  to approve them with `wheelstock review approve PROJECT VERSION --as HANDLE`.",
            "- Only approved wheels reach the index.",
            "",
        ]
        return "\n".join(lines)
    by_file: dict[Path, list[Problem]] = defaultdict(list)
    for problem in problems:
        by_file[problem.path].append(problem)
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    lines += [f"Found {count} in {len(by_file)} file{'s' if len(by_file) != 1 else ''}.", ""]
    for path, found in by_file.items():
        lines += [f"#### `{path}`", ""]
        lines += [f"- line {p.line}, column {p.column}: `{p.code}` {p.message}" for p in found]
        lines.append("")
    lines += [
        "**What happens next**",
        "- Fix the problems above and push to this branch; the check runs again and this",
        "  comment is replaced.",
        "- Once the check passes, a volunteer reviews and merges the entry, and the bot builds",
        "  the project's wheels for a listed maintainer to approve.",
        "",
    ]
    return "\n".join(lines)


def entry_text(project: str, maintainers: Sequence[str], consent: str) -> str:
    """A new entry file, in the same shape as the README's annotated example."""
    handles = "".join(f"  - {m}\n" for m in maintainers)
    return (
        f"project: {json.dumps(project)}\n"
        f"maintainers:  # forge handles who may approve builds\n{handles}"
        f"consent: {json.dumps(consent)}  # where the project agreed to these builds\n"
    )


def add(directory: Path, project: str, maintainers: Sequence[str], consent: str) -> Path:
    """Write a new, valid entry under its canonical file name."""
    path = directory / f"{canonicalize_name(project)}.yaml"
    if path.exists():
        raise RegistryError(f"{path} already exists")
    text = entry_text(project, maintainers, consent)
    # Validate the exact text before it lands, so a bad handle or URL never writes a file.
    _, problems = load_entry(path, text)
    if problems:
        raise RegistryError("; ".join(p.message for p in problems))
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path
