"""Registry entries: load, validate and lint ``registry/<name>.yaml`` with positions.

A little over the ~500 lines a module here aims for: the loader and the lint are one
reading of each file (the lint's coded problems are what the loader refuses), so they stay
together; the per-file cache lives in ``bot.registry_cache``.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from bot import dists
from bot.errors import RegistryError

# A forge handle as GitHub spells them: alphanumerics and single inner hyphens, at most 39 long.
HANDLE_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
# PEP 508 names: what upstream accepts, and so what may become a file, branch or URL segment.
PYTHON_RE = re.compile(r"^3\.\d{1,2}$")
# sys_platform values (PEP 508 markers), the vocabulary the dependency graph evaluates with.
PLATFORMS = ("darwin", "linux", "win32")

CODES = {
    "WS100": "the file cannot be read or is not valid YAML",
    "WS101": "a key appears twice in one mapping",
    "WS102": "the entry is not a mapping",
    "WS110": "unknown key",
    "WS111": "a required key is missing",
    "WS112": "a value has the wrong type",
    "WS113": "project is not a valid project name (PEP 508)",
    "WS120": "the file name is not the normalized project name",
    "WS121": "the project is enrolled in more than one file",
    "WS122": "the project does not exist upstream",
    "WS123": "upstream could not be asked whether the project exists",
    "WS130": "maintainers is empty",
    "WS131": "a maintainer is not a valid forge handle",
    "WS132": "a maintainer is listed twice",
    "WS140": "consent is not an http(s) URL",
    "WS150": "a versions.ignore item is not a PEP 440 specifier",
    "WS151": "a build.pythons item is not a Python version like '3.12'",
    "WS152": "a build.platforms item is not a known platform",
    "WS160": "skip must give a reason",
}

# key -> (expected type, required); nested tables list their own keys.
TOP_KEYS = ("project", "maintainers", "consent", "build", "versions", "skip")
REQUIRED = ("project", "maintainers", "consent")
TABLE_KEYS = {
    "build": ("pythons", "platforms", "import-check", "verify-reproducible"),
    "versions": ("ignore", "prereleases"),
}


@dataclass(frozen=True)
class Problem:
    """One lint finding; line and column are 1-based."""

    path: Path
    line: int
    column: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.code} {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "line": self.line,
            "column": self.column,
            "code": self.code,
            "message": self.message,
        }


@dataclass(frozen=True)
class Entry:
    """One enrolled project."""

    project: str
    maintainers: tuple[str, ...]
    consent: str
    path: Path
    pythons: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    prereleases: bool = False
    skip: str | None = None
    # Import the built wheel in a fresh venv before staging (off for projects that need a
    # display or hardware to import), and build twice to compare the wheels byte for byte.
    import_check: bool = True
    verify_reproducible: bool = False

    @property
    def name(self) -> str:
        """The PEP 503 normalized name, used for files, feedstocks and index pages."""
        return canonicalize_name(self.project)

    @property
    def ignored(self) -> tuple[SpecifierSet, ...]:
        return tuple(SpecifierSet(s) for s in self.ignore)

    def is_maintainer(self, handle: str) -> bool:
        # Forge handles are case-insensitive (GitHub treats @Foo and @foo as one account).
        return handle.casefold() in {m.casefold() for m in self.maintainers}


@dataclass(frozen=True)
class Registry:
    """The valid entries of a registry directory, and the problems of the invalid ones."""

    entries: tuple[Entry, ...]
    problems: tuple[Problem, ...]
    files: tuple[Path, ...] = ()
    # Where each file names its project, for problems about the project as a whole.
    positions: Mapping[Path, tuple[int, int]] = field(default_factory=dict)

    def get(self, project: str) -> Entry:
        name = canonicalize_name(project)
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise RegistryError(f"project '{project}' is not enrolled in the registry")

    @functools.cached_property
    def claimed(self) -> frozenset[str]:
        """Names that have a file, valid or not: a broken entry does not retire a feedstock.

        Computed once: a tick asks it for every feedstock (recomputing it each time made
        retiring quadratic, 20 s of a no-change tick at 2,500 projects under cProfile).
        """
        return frozenset(canonicalize_name(p.stem) for p in self.files) | {
            e.name for e in self.entries
        }


def registry_files(directory: Path) -> list[Path]:
    """The entry files of a registry directory, sorted; an error if the directory is missing."""
    if not directory.is_dir():
        raise RegistryError(f"{directory}: no such registry directory")
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _position(node: Any, key: Any = None, *, value: bool = False) -> tuple[int, int]:
    """1-based (line, column) of a mapping key, its value, a list item, or the node itself."""
    lc = getattr(node, "lc", None)
    try:
        if lc is not None and key is not None:
            if isinstance(node, CommentedSeq):
                line, col = lc.item(key)
            elif value:
                line, col = lc.value(key)
            else:
                line, col = lc.key(key)
            return int(line) + 1, int(col) + 1
        if lc is not None:
            return int(lc.line) + 1, int(lc.col) + 1
    except (KeyError, IndexError, TypeError, AttributeError):
        pass
    return 1, 1


def _type_name(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


@dataclass
class _Checker:
    """Walks one parsed entry, collecting problems with positions."""

    path: Path
    problems: list[Problem] = field(default_factory=list)

    def add(self, node: Any, key: Any, code: str, message: str, *, value: bool = True) -> None:
        if value and isinstance(node, CommentedMap) and node.get(key) is None:
            value = False  # an empty value has no position of its own; point at its key
        line, col = _position(node, key, value=value)
        self.problems.append(Problem(self.path, line, col, code, message))

    def keys(self, node: CommentedMap, allowed: Sequence[str], where: str) -> None:
        for key in node:
            if key in allowed:
                continue
            hint = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            self.add(node, key, "WS110", f"unknown key {where}{key!r}{suggestion}", value=False)

    def string(self, node: CommentedMap, key: str, what: str) -> str | None:
        value = node[key]
        if not isinstance(value, str) or not value.strip():
            self.add(
                node, key, "WS112", f"{what} must be a non-empty string, not {_type_name(value)}"
            )
            return None
        return value

    def string_list(self, node: CommentedMap, key: str, what: str) -> list[tuple[int, str]]:
        """The string items of a list value, with their indexes; reports the rest."""
        value = node[key]
        if not isinstance(value, list):
            self.add(node, key, "WS112", f"{what} must be a list, not {_type_name(value)}")
            return []
        items = []
        for index, item in enumerate(value):
            if isinstance(item, str):
                items.append((index, item))
            else:
                hint = " (quote it: '3.10' is not 3.1)" if isinstance(item, float) else ""
                self.add(
                    value,
                    index,
                    "WS112",
                    f"{what} items must be strings, not {_type_name(item)}{hint}",
                )
        return items


def _check_maintainers(check: _Checker, doc: CommentedMap) -> tuple[str, ...]:
    items = check.string_list(doc, "maintainers", "maintainers")
    if isinstance(doc["maintainers"], list) and not doc["maintainers"]:
        check.add(doc, "maintainers", "WS130", "maintainers must name at least one handle")
    seen: set[str] = set()
    for index, handle in items:
        seq = doc["maintainers"]
        if not HANDLE_RE.match(handle):
            check.add(seq, index, "WS131", f"maintainer {handle!r} is not a valid forge handle")
        elif handle.casefold() in seen:
            check.add(seq, index, "WS132", f"maintainer {handle!r} is listed twice")
        seen.add(handle.casefold())
    return tuple(h for _, h in items)


def _check_build(check: _Checker, table: CommentedMap) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pythons: list[str] = []
    platforms: list[str] = []
    if "pythons" in table:
        for index, item in check.string_list(table, "pythons", "build.pythons"):
            if PYTHON_RE.match(item):
                pythons.append(item)
            else:
                check.add(
                    table["pythons"],
                    index,
                    "WS151",
                    f"{item!r} is not a Python version like '3.12'",
                )
    if "platforms" in table:
        for index, item in check.string_list(table, "platforms", "build.platforms"):
            if item in PLATFORMS:
                platforms.append(item)
            else:
                hint = difflib.get_close_matches(item, PLATFORMS, n=1, cutoff=0.4)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                check.add(
                    table["platforms"],
                    index,
                    "WS152",
                    f"unknown platform {item!r}{suggestion}; use one of {', '.join(PLATFORMS)}",
                )
    return tuple(pythons), tuple(platforms)


def _flag(check: _Checker, table: CommentedMap | None, key: str, where: str, default: bool) -> bool:
    if table is None or key not in table:
        return default
    value = table[key]
    if not isinstance(value, bool):
        check.add(table, key, "WS112", f"{where} must be true or false, not {_type_name(value)}")
        return default
    return value


def _check_versions(check: _Checker, table: CommentedMap) -> tuple[tuple[str, ...], bool]:
    ignore: list[str] = []
    if "ignore" in table:
        for index, item in check.string_list(table, "ignore", "versions.ignore"):
            try:
                SpecifierSet(item)
            except InvalidSpecifier:
                check.add(table["ignore"], index, "WS150", f"{item!r} is not a PEP 440 specifier")
                continue
            if not item.strip():
                check.add(
                    table["ignore"], index, "WS150", "an empty specifier would ignore every release"
                )
                continue
            ignore.append(item)
    prereleases = table.get("prereleases", False)
    if not isinstance(prereleases, bool):
        check.add(
            table,
            "prereleases",
            "WS112",
            f"versions.prereleases must be true or false, not {_type_name(prereleases)}",
        )
        prereleases = False
    return tuple(ignore), prereleases


def _check_document(doc: Any, path: Path) -> tuple[Entry | None, list[Problem]]:
    check = _Checker(path)
    if not isinstance(doc, CommentedMap):
        check.add(
            doc, None, "WS102", "an entry must be a mapping with project, maintainers, consent"
        )
        return None, check.problems
    check.keys(doc, TOP_KEYS, "")
    for key in REQUIRED:
        if key not in doc:
            line, col = _position(doc)
            check.problems.append(
                Problem(path, line, col, "WS111", f"missing required key {key!r}")
            )
    project = check.string(doc, "project", "project") if "project" in doc else None
    if project is not None and not dists.is_project_name(project.strip()):
        check.add(doc, "project", "WS113", f"{project!r} is not a valid project name (PEP 508)")
        project = None
    if project is not None and path.stem != canonicalize_name(project):
        check.add(
            doc,
            "project",
            "WS120",
            f"the file name must be the normalized project name: {canonicalize_name(project)}.yaml",
        )
    maintainers = _check_maintainers(check, doc) if "maintainers" in doc else ()
    consent = None
    if "consent" in doc:
        consent = check.string(doc, "consent", "consent")
        if consent is not None:
            parts = urlsplit(consent)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                check.add(
                    doc, "consent", "WS140", f"consent must be an http(s) URL, got {consent!r}"
                )
    tables: dict[str, CommentedMap] = {}
    for key, allowed in TABLE_KEYS.items():
        if key not in doc:
            continue
        if isinstance(doc[key], CommentedMap):
            tables[key] = doc[key]
            check.keys(doc[key], allowed, f"{key}.")
        else:
            check.add(doc, key, "WS112", f"{key} must be a mapping, not {_type_name(doc[key])}")
    pythons, platforms = _check_build(check, tables["build"]) if "build" in tables else ((), ())
    build_table = tables.get("build")
    import_check = _flag(check, build_table, "import-check", "build.import-check", True)
    reproducible = _flag(
        check, build_table, "verify-reproducible", "build.verify-reproducible", False
    )
    ignore, prereleases = (
        _check_versions(check, tables["versions"]) if "versions" in tables else ((), False)
    )
    skip = doc.get("skip")
    if "skip" in doc and (not isinstance(skip, str) or not skip.strip()):
        # `skip:` alone or `skip: true` would silence a project without saying why.
        check.add(
            doc, "skip", "WS160", "skip must give a reason, e.g. skip: 'upstream asked to pause'"
        )
        skip = None
    if check.problems or project is None or consent is None:
        return None, check.problems
    entry = Entry(
        project=project.strip(),
        maintainers=maintainers,
        consent=consent,
        path=path,
        pythons=pythons,
        platforms=platforms,
        ignore=ignore,
        prereleases=prereleases,
        skip=skip,
        import_check=import_check,
        verify_reproducible=reproducible,
    )
    return entry, []


def _parse(path: Path) -> tuple[Any, list[Problem]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(path, 1, 1, "WS100", f"cannot read file: {exc}")]
    return _parse_text(text, path)


MAX_DEPTH = 32  # an entry needs three levels; deeper input only costs the parser time


def _too_deep(text: str) -> tuple[int, int] | None:
    """Where flow brackets or indentation nest past MAX_DEPTH, found without parsing."""
    depth = 0
    for number, line in enumerate(text.splitlines(), 1):
        if len(line) - len(line.lstrip(" ")) > MAX_DEPTH * 4:
            return number, 1
        for column, char in enumerate(line, 1):
            depth += char in "[{"
            depth -= char in "]}"
            if depth > MAX_DEPTH:
                return number, column
    return None


def _parse_text(text: str, path: Path) -> tuple[Any, list[Problem]]:
    deep = _too_deep(text)
    if deep is not None:
        message = f"invalid YAML: nested more than {MAX_DEPTH} levels deep"
        return None, [Problem(path, *deep, "WS100", message)]
    try:
        return YAML(typ="rt").load(text), []
    except DuplicateKeyError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        key = (exc.problem or "").split('"')[1] if '"' in (exc.problem or "") else "a key"
        return None, [Problem(path, line, col, "WS101", f"duplicate key {key!r}")]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        reason = exc.problem or exc.context or "invalid YAML"
        return None, [Problem(path, line, col, "WS100", f"invalid YAML: {reason}")]
    except (YAMLError, RecursionError, ValueError, TypeError) as exc:
        # ruamel raises plain errors for some inputs (deep nesting, odd tags); still one line.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, [Problem(path, 1, 1, "WS100", f"invalid YAML: {reason}")]


def load_entry(path: Path, text: str | None = None) -> tuple[Entry | None, list[Problem]]:
    """Read one entry file (or ``text`` as if it were that file); the entry if valid, problems."""
    entry, problems, _ = _load_entry(path, text)
    return entry, problems


# One file's own result: its entry if valid, its problems, the project it claims and where.
_Loaded = tuple[Entry | None, list[Problem], tuple[str, int, int] | None]


def _load_entry(path: Path, text: str | None = None) -> _Loaded:
    """The entry, its problems, and the project name it claims with its position."""
    doc, problems = _parse(path) if text is None else _parse_text(text, path)
    if problems:
        return None, problems, None
    claim = None
    if isinstance(doc, CommentedMap) and isinstance(doc.get("project"), str):
        claim = (str(doc["project"]), *_position(doc, "project", value=True))
    try:
        entry, problems = _check_document(doc, path)
    except RecursionError:
        message = "invalid YAML: the document is nested too deeply"
        return None, [Problem(path, 1, 1, "WS100", message)], claim
    return entry, problems, claim


def load(paths: Iterable[Path]) -> Registry:
    """Load entry files, collecting every problem, including one project enrolled twice."""
    files = list(paths)
    return _assemble(files, [_load_entry(path) for path in files])


def _assemble(files: Sequence[Path], results: Sequence[_Loaded]) -> Registry:
    """The registry from each file's own result: what spans files is worked out here, always.

    A cached load and an uncached one both end here, so they cannot disagree about a project
    enrolled twice, the order of problems or the positions.
    """
    entries: list[Entry] = []
    problems: list[Problem] = []
    claims: dict[str, list[tuple[Path, int, int]]] = defaultdict(list)
    positions: dict[Path, tuple[int, int]] = {}
    for path, (entry, found, claim) in zip(files, results, strict=True):
        problems.extend(found)
        if entry is not None:
            entries.append(entry)
        if claim is not None and claim[0].strip():
            project, line, col = claim
            claims[canonicalize_name(project)].append((path, line, col))
            positions[path] = (line, col)
    twice = {name for name, where in claims.items() if len(where) > 1}
    for name in sorted(twice):
        where = claims[name]
        for path, line, col in where:
            others = ", ".join(str(p) for p, _, _ in where if p != path)
            problems.append(
                Problem(path, line, col, "WS121", f"project {name!r} is also enrolled in {others}")
            )
    valid = tuple(e for e in entries if e.name not in twice)
    order = {p: i for i, p in enumerate(files)}
    problems.sort(key=lambda p: (order.get(p.path, 0), p.line, p.column, p.code))
    return Registry(valid, tuple(problems), tuple(files), positions)


def load_directory(directory: Path, *, cache: Path | None = None) -> Registry:
    """Load a registry directory; with ``cache``, parse only the files changed since last time
    (``bot.registry_cache``, the same Registry an uncached load gives)."""
    if cache is None:
        return load(registry_files(directory))
    from bot.registry_cache import load_cached  # it builds on this module

    return load_cached(directory, cache)
