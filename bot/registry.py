"""Registry entries: load, validate and lint ``registry/<name>.yaml`` with line numbers."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from packaging.utils import canonicalize_name
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from bot.errors import RegistryError

# A forge handle as GitHub spells them: alphanumerics and single inner hyphens, at most 39 long.
HANDLE_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
REQUIRED = ("project", "maintainers", "consent")
KNOWN = frozenset(REQUIRED)


@dataclass(frozen=True)
class Problem:
    """One lint finding, printed as ``path:line: message`` (line is 1-based)."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Entry:
    """One enrolled project."""

    project: str
    maintainers: tuple[str, ...]
    consent: str
    path: Path

    @property
    def name(self) -> str:
        """The PEP 503 normalized name, used for files, feedstocks and index pages."""
        return canonicalize_name(self.project)

    def is_maintainer(self, handle: str) -> bool:
        # Forge handles are case-insensitive (GitHub treats @Foo and @foo as one account).
        return handle.casefold() in {m.casefold() for m in self.maintainers}


@dataclass(frozen=True)
class Registry:
    """The valid entries of a registry directory, and the problems of the invalid ones."""

    entries: tuple[Entry, ...]
    problems: tuple[Problem, ...]

    def get(self, project: str) -> Entry:
        name = canonicalize_name(project)
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise RegistryError(f"project '{project}' is not enrolled in the registry")


def registry_files(directory: Path) -> list[Path]:
    """The entry files of a registry directory, sorted; an error if the directory is missing."""
    if not directory.is_dir():
        raise RegistryError(f"{directory}: no such registry directory")
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _line_of(node: CommentedMap, key: str) -> int:
    try:
        return int(node.lc.key(key)[0]) + 1
    except (KeyError, AttributeError, TypeError):
        return int(getattr(node.lc, "line", 0)) + 1


def _value_line(node: CommentedMap, key: str) -> int:
    try:
        return int(node.lc.value(key)[0]) + 1
    except (KeyError, AttributeError, TypeError):
        return _line_of(node, key)


def _check_url(value: object) -> str | None:
    if not isinstance(value, str):
        return "consent must be a URL string"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"consent must be an http(s) URL, got {value!r}"
    return None


def _check_maintainers(doc: CommentedMap, path: Path) -> Iterator[Problem]:
    value = doc["maintainers"]
    line = _value_line(doc, "maintainers")
    if not isinstance(value, list):
        yield Problem(path, line, "maintainers must be a list of forge handles")
        return
    if not value:
        yield Problem(path, line, "maintainers must name at least one handle")
        return
    seen: set[str] = set()
    for index, handle in enumerate(value):
        try:
            item_line = int(value.lc.item(index)[0]) + 1  # type: ignore[attr-defined]
        except (AttributeError, KeyError, TypeError):
            item_line = line
        if not isinstance(handle, str) or not HANDLE_RE.match(handle):
            yield Problem(path, item_line, f"maintainer {handle!r} is not a valid forge handle")
        elif handle.casefold() in seen:
            yield Problem(path, item_line, f"maintainer {handle!r} is listed twice")
        else:
            seen.add(handle.casefold())


def _check_document(doc: Any, path: Path) -> list[Problem]:
    if not isinstance(doc, CommentedMap):
        return [Problem(path, 1, "an entry must be a mapping with project, maintainers, consent")]
    problems: list[Problem] = []
    for key in doc:
        if key not in KNOWN:
            problems.append(Problem(path, _line_of(doc, str(key)), f"unknown key {key!r}"))
    for key in REQUIRED:
        if key not in doc:
            problems.append(Problem(path, 1, f"missing required key {key!r}"))
    if "project" in doc:
        project = doc["project"]
        line = _value_line(doc, "project")
        if not isinstance(project, str) or not project.strip():
            problems.append(Problem(path, line, "project must be a non-empty string"))
        elif path.stem != canonicalize_name(project):
            problems.append(
                Problem(
                    path,
                    line,
                    f"file name must be the normalized project name: "
                    f"{canonicalize_name(project)}{path.suffix}",
                )
            )
    if "maintainers" in doc:
        problems.extend(_check_maintainers(doc, path))
    if "consent" in doc:
        message = _check_url(doc["consent"])
        if message:
            problems.append(Problem(path, _value_line(doc, "consent"), message))
    return problems


def load_entry(path: Path) -> tuple[Entry | None, list[Problem]]:
    """Read one entry file; return the entry when it is valid, and every problem found."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(path, 1, f"cannot read file: {exc}")]
    yaml = YAML(typ="rt")
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        reason = exc.problem or exc.context or "invalid YAML"
        return None, [Problem(path, line, f"invalid YAML: {reason}")]
    except YAMLError as exc:
        return None, [Problem(path, 1, f"invalid YAML: {str(exc).splitlines()[0]}")]
    problems = _check_document(doc, path)
    if problems:
        return None, problems
    entry = Entry(
        project=str(doc["project"]).strip(),
        maintainers=tuple(str(m) for m in doc["maintainers"]),
        consent=str(doc["consent"]),
        path=path,
    )
    return entry, []


def load(paths: Iterable[Path]) -> Registry:
    """Load entry files, collecting every problem, including one project enrolled twice."""
    entries: list[Entry] = []
    problems: list[Problem] = []
    by_name: dict[str, Entry] = {}
    for path in paths:
        entry, found = load_entry(path)
        problems.extend(found)
        if entry is None:
            continue
        first = by_name.get(entry.name)
        if first is not None:
            problems.append(
                Problem(path, 1, f"project {entry.project!r} is already enrolled in {first.path}")
            )
            continue
        by_name[entry.name] = entry
        entries.append(entry)
    return Registry(tuple(entries), tuple(problems))


def load_directory(directory: Path) -> Registry:
    return load(registry_files(directory))


def lint(paths: Sequence[Path]) -> list[Problem]:
    """Every problem in the given files and directories, in file order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(registry_files(path))
        elif path.exists():
            files.append(path)
        else:
            raise RegistryError(f"{path}: no such file or directory")
    return list(load(files).problems)
