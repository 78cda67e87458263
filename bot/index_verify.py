"""``wheelstock index verify``: the whole static tree checked against what its pages say.

Every listed file exists with its size and sha256, every ``.metadata`` file is its wheel's
METADATA and every provenance document is signed for its wheel; every page parses and agrees
with its twin (HTML with JSON); the root lists exactly the projects; nothing unlisted sits in
the tree. It takes the writers' lock only to list the tree and read its pages.

Just over the ~500 lines a module here aims for: each check is small, and they share one
walk of the tree and one list of problems.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

from packaging.utils import (
    canonicalize_name,
)

from bot import dists
from bot.errors import PublishError
from bot.fsutil import file_digest

# The tree's own readers and rules, shared with the writer rather than written twice.
from bot.index import _locked, _read_metadata
from bot.index_pages import (
    PROVENANCE_KEY,
    PROVENANCE_SUFFIX,
    IndexedFile,
    UpstreamEntry,
    _file_url,
    _our_paths,
    _sha256_bytes,
    _versions,
)
from bot.typed import Mismatch, as_dict, as_list, as_str, is_sha256


@dataclass(frozen=True)
class TreeReport:
    """What `verify_tree` checked (project pages, files of ours) and one line per problem."""

    projects: int
    files: int
    problems: tuple[str, ...]


def verify(root: Path) -> list[str]:
    """One line per problem in the index tree at `root`; [] when it is consistent."""
    return list(verify_tree(root).problems)


def verify_tree(root: Path) -> TreeReport:
    """Check the tree (`wheelstock index verify`, DESIGN "Index rules").

    Every file of ours a page lists exists with its size and sha256, its .metadata is the
    wheel's METADATA (PEP 658) and its provenance is signed for it; every page parses and
    agrees with its twin (HTML vs JSON); the root pages list exactly the projects with a
    page; and nothing that no page lists sits in the tree (hidden names aside). Upstream's
    files (absolute URLs) are only checked for agreement between the pages.
    """
    if not root.is_dir():
        return TreeReport(0, 0, ())  # nothing published yet: an empty index is consistent
    # A reader takes the writers' lock too, but briefly. Without it, a publish seen mid-way
    # shows files it has not listed yet and twins that disagree; taking it also finishes a
    # write that died (_recover), so what is reported is what stays. Under the lock we only
    # list the tree and read the pages; hashing every file, the slow part, happens after, as
    # a listed file is immutable and never deleted (DESIGN "Trust rules"): a publish meanwhile
    # only adds files and pages this snapshot does not know. A tree we cannot write (a
    # read-only copy on a web host) has no writer to wait for.
    guard = _locked(root) if os.access(root, os.W_OK) else contextlib.nullcontext()
    with guard:
        tree = _tree_files(root)
        pages = {rel: _read_or_error(root / rel) for rel in tree if _is_page(rel)}
    return _Verifier(root, tree, pages).run()


def _tree_files(root: Path) -> set[str]:
    """Every file (or symlink) under root by relative POSIX path, hidden names left out.

    Hidden: the lock, the journal and the temp files of a write (fsutil.atomic_target), which
    neither serve nor nginx ever serves.
    """
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        base = here.relative_to(root)
        links = [d for d in dirnames if (here / d).is_symlink()]
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in links]
        found.update((base / n).as_posix() for n in [*filenames, *links] if n[0] != ".")
    return found


def _is_page(rel: str) -> bool:
    parts = rel.split("/")
    return parts[0] == "simple" and len(parts) in (2, 3) and parts[-1] in _PAGE_NAMES


_PAGE_NAMES = ("index.json", "index.html")


def _read_or_error(path: Path) -> bytes | OSError:
    try:
        return path.read_bytes()
    except OSError as exc:
        return exc


class _Anchors(HTMLParser):
    """The <a> elements (attributes, text) and <meta> names of a simple-API page (PEP 503)."""

    def __init__(self) -> None:
        super().__init__()  # convert_charrefs: attribute values and text arrive unescaped
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.meta: dict[str, str | None] = {}
        self._open: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._finish()
            self._open = dict(attrs)
        elif tag == "meta":
            found = dict(attrs)
            if found.get("name"):
                self.meta[str(found["name"])] = found.get("content")

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._finish()

    def close(self) -> None:
        super().close()
        self._finish()

    def _finish(self) -> None:
        if self._open is not None:
            self.anchors.append((self._open, "".join(self._text).strip()))
        self._open, self._text = None, []


def _html_twin(entry: Mapping[str, Any]) -> dict[str, str | None]:
    """The PEP 503/592/658/714 anchor attributes a PEP 691 file entry renders to."""
    hashes = entry.get("hashes")
    sha256 = hashes.get("sha256") if isinstance(hashes, dict) else None
    href = f"{entry['url']}#sha256={sha256}" if isinstance(sha256, str) else str(entry["url"])
    core = entry.get("core-metadata")
    yanked = entry.get("yanked")
    provenance = entry.get(PROVENANCE_KEY)
    requires_python = entry.get("requires-python")
    return {
        "href": href,
        "data-requires-python": requires_python if isinstance(requires_python, str) else None,
        "data-core-metadata": (
            f"sha256={core['sha256']}"
            if isinstance(core, dict) and isinstance(core.get("sha256"), str)
            else "true"
            if core is True
            else None
        ),
        "data-yanked": "" if yanked is True else yanked if isinstance(yanked, str) else None,
        f"data-{PROVENANCE_KEY}": provenance if isinstance(provenance, str) else None,
    }


def _same_attribute(key: str, html_value: str | None, json_value: str | None) -> bool:
    if key == "data-core-metadata" and json_value == "true":
        # JSON `true` is metadata without a usable sha256: upstream's own value is kept in
        # HTML then (UpstreamEntry.html_attributes), anything but a sha256 we could check.
        return html_value is not None and not (
            html_value.startswith("sha256=") and is_sha256(html_value[7:])
        )
    return html_value == json_value


def _shown(value: str | None) -> str:
    return "absent" if value is None else repr(value)


class _Verifier:
    """One pass of `verify_tree` over a snapshot: the tree's paths and its pages' bytes."""

    def __init__(self, root: Path, tree: set[str], pages: Mapping[str, bytes | OSError]) -> None:
        self.root = root
        self.tree = tree
        self.pages = pages
        self.problems: list[str] = []
        self.listed: set[str] = set()  # paths a page accounts for
        self.unchecked: list[str] = []  # folders whose page cannot say what they should hold
        self.files = 0
        self._key: Any = None  # the index's public key, once loaded
        self._key_loaded = False

    def say(self, line: str) -> None:
        self.problems.append(line)

    def run(self) -> TreeReport:
        names = self._project_names()
        self._root_pages(names)
        for name in names:
            self._project(name)
        self._strays()
        return TreeReport(len(names), self.files, tuple(self.problems))

    def _project_names(self) -> list[str]:
        names = []
        for rel in sorted(self.tree):
            parts = rel.split("/")
            if len(parts) != 3 or parts[0] != "simple" or parts[2] != "index.json":
                continue
            if dists.is_project_name(parts[1]) and canonicalize_name(parts[1]) == parts[1]:
                names.append(parts[1])
            else:
                self.say(f"simple/{parts[1]}: not a normalized project name")
                self.unchecked.append(f"simple/{parts[1]}/")
        return names

    def _load(self, rel: str) -> bytes | None:
        if rel not in self.tree:
            self.say(f"{rel}: missing")
            return None
        data = self.pages[rel]
        if isinstance(data, OSError):
            self.say(f"{rel}: cannot read: {data.strerror}")
            return None
        return data

    def _json(self, rel: str) -> dict[str, Any] | None:
        raw = self._load(rel)
        if raw is None:
            return None
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            self.say(f"{rel}: not valid JSON: {exc}")
            return None
        if not isinstance(document, dict):
            self.say(f"{rel}: expected a JSON object")
            return None
        meta = document.get("meta")
        if not isinstance(meta, dict) or not isinstance(meta.get("api-version"), str):
            self.say(f"{rel}: meta.api-version: expected a string (PEP 629)")
        return document

    def _html(self, rel: str) -> _Anchors | None:
        raw = self._load(rel)
        if raw is None:
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.say(f"{rel}: not UTF-8")
            return None
        parser = _Anchors()
        parser.feed(text)
        parser.close()
        if "pypi:repository-version" not in parser.meta:
            self.say(f"{rel}: no pypi:repository-version meta tag (PEP 629)")
        return parser

    def _root_pages(self, names: list[str]) -> None:
        json_rel, html_rel = "simple/index.json", "simple/index.html"
        self.listed.update((json_rel, html_rel))
        if json_rel not in self.tree and html_rel not in self.tree and not names:
            return  # nothing published yet
        in_json: list[str] | None = None
        document = self._json(json_rel)
        if document is not None:
            try:
                projects = as_list(document.get("projects"), f"{json_rel}: projects")
                in_json = [
                    as_str(
                        as_dict(item, f"{json_rel}: projects[{i}]").get("name"),
                        f"{json_rel}: projects[{i}].name",
                    )
                    for i, item in enumerate(projects)
                ]
            except Mismatch as exc:
                self.say(str(exc))
        if in_json is not None:
            self._twice(json_rel, in_json)
            for name in sorted(set(names) - set(in_json)):
                self.say(f"{json_rel}: does not list {name}, which has simple/{name}/index.json")
            for name in sorted(set(in_json) - set(names)):
                self.say(f"{json_rel}: lists {name}, which has no simple/{name}/index.json")
        parsed = self._html(html_rel)
        if parsed is None:
            return
        in_html = []
        for attrs, text in parsed.anchors:
            href, want = attrs.get("href"), f"{quote(text)}/"
            if href != want:
                self.say(f"{html_rel}: the link to {text} is {_shown(href)}, not {want!r}")
            in_html.append(text)
        self._twice(html_rel, in_html)
        if in_json is not None:
            twin = f"{html_rel} disagrees with index.json"
            for name in sorted(set(in_json) - set(in_html)):
                self.say(f"{twin}: {name} is not in index.html")
            for name in sorted(set(in_html) - set(in_json)):
                self.say(f"{twin}: {name} is not in index.json")
        else:  # nothing to agree with: hold it to the project pages instead
            for name in sorted(set(names) - set(in_html)):
                self.say(f"{html_rel}: does not list {name}, which has simple/{name}/index.json")
            for name in sorted(set(in_html) - set(names)):
                self.say(f"{html_rel}: lists {name}, which has no simple/{name}/index.json")

    def _twice(self, rel: str, names: list[str]) -> None:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                self.say(f"{rel}: lists {name} twice")
            seen.add(name)

    def _project(self, name: str) -> None:
        json_rel, html_rel = f"simple/{name}/index.json", f"simple/{name}/index.html"
        self.listed.update((json_rel, html_rel))
        document = self._json(json_rel)
        items: list[Any] | None = None
        if document is not None:
            if document.get("name") != name:
                self.say(f"{json_rel}: name is {document.get('name')!r}, not {name!r}")
            try:
                items = as_list(document.get("files"), f"{json_rel}: files")
            except Mismatch as exc:
                self.say(str(exc))
        if document is None or items is None:
            # What belongs in files/<name>/ is unknown: one line for the page, not one a file.
            self.unchecked.append(f"files/{name}/")
            return
        entries: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            at = f"{json_rel}: files[{i}]"
            try:
                entry = as_dict(item, at)
                filename = as_str(entry.get("filename"), f"{at}.filename")
                url = as_str(entry.get("url"), f"{at}.url")
            except Mismatch as exc:
                self.say(str(exc))
                continue
            if any(filename == e["filename"] for e in entries):
                self.say(f"{json_rel}: lists {filename} twice")
                continue
            entries.append(entry)
            if "://" in url:  # upstream's: only the pages' agreement is ours to check
                try:
                    UpstreamEntry.from_json(entry, at)
                except PublishError as exc:
                    self.say(str(exc))
            else:
                self._ours(name, json_rel, at, entry)
        versions = _versions([e["filename"] for e in entries])
        if document.get("versions") != versions:
            self.say(f"{json_rel}: versions is {document.get('versions')!r}, its files {versions}")
        self._twin(html_rel, entries)

    def _ours(self, name: str, json_rel: str, at: str, raw: Mapping[str, Any]) -> None:
        filename = str(raw["filename"])
        if not dists.is_bare_filename(filename):
            self.say(f"{json_rel}: lists {filename!r}: not a bare file name")
            return
        for key, want in (
            ("url", _file_url(name, filename)),
            (PROVENANCE_KEY, _file_url(name, filename + PROVENANCE_SUFFIX)),
        ):
            if key in raw and raw[key] != want:
                self.say(f"{at}.{key}: {raw[key]!r}, not {want!r}")
        self.listed.update(f"files/{name}/{filename}{s}" for s in ("", ".metadata"))
        try:
            entry = IndexedFile.from_json(raw, at)
        except PublishError as exc:
            self.say(str(exc))
            return
        self.files += 1
        self.listed.update(f"files/{name}/{path}" for path in _our_paths(entry))
        self._check_file(name, json_rel, entry)

    def _check_file(self, name: str, json_rel: str, entry: IndexedFile) -> None:
        rel = f"files/{name}/{entry.filename}"
        path = self.root / rel
        if rel not in self.tree or not path.is_file():
            self.say(f"{json_rel}: lists {entry.filename}, which is missing")
            return
        try:
            size = path.stat().st_size
            sha256 = file_digest(path)[0] if size == entry.size else None
        except OSError as exc:
            self.say(f"{rel}: cannot read: {exc.strerror}")
            return
        if size != entry.size:
            self.say(f"{rel}: size {size}, listed {entry.size}")
        elif sha256 != entry.sha256:
            self.say(f"{rel}: sha256 {sha256}, listed {entry.sha256}")
        intact = sha256 == entry.sha256
        self._check_metadata(json_rel, rel, entry, intact)
        if entry.provenance:
            self._check_provenance(json_rel, rel, entry, intact)

    def _check_metadata(self, json_rel: str, rel: str, entry: IndexedFile, intact: bool) -> None:
        real: str | None = None  # sha256 of the wheel's own METADATA, when it can be trusted
        if intact and entry.filename.endswith(".whl"):
            try:
                real = _sha256_bytes(_read_metadata(self.root / rel))
            except PublishError as exc:
                self.say(f"{rel}: {exc}")
        if real is not None and entry.metadata_sha256 not in (None, real):
            self.say(
                f"{json_rel}: core-metadata of {entry.filename} is sha256 "
                f"{entry.metadata_sha256}, its METADATA has {real}"
            )
        meta_rel = f"{rel}.metadata"
        if meta_rel not in self.tree:
            if entry.metadata_sha256 is not None:
                self.say(f"{json_rel}: lists core-metadata of {entry.filename}, which is missing")
            return
        try:
            found = file_digest(self.root / meta_rel)[0]
        except OSError as exc:
            self.say(f"{meta_rel}: cannot read: {exc.strerror}")
            return
        if real is not None:
            if found != real:
                self.say(f"{meta_rel}: differs from the wheel's METADATA")
        elif entry.metadata_sha256 is not None and found != entry.metadata_sha256:
            self.say(f"{meta_rel}: sha256 {found}, listed {entry.metadata_sha256}")

    def _check_provenance(self, json_rel: str, rel: str, entry: IndexedFile, intact: bool) -> None:
        # Imported here: bot.signing builds on this module (PROVENANCE_KEY, PROVENANCE_SUFFIX).
        from bot import signing

        doc_rel = rel + PROVENANCE_SUFFIX
        if doc_rel not in self.tree:
            self.say(f"{json_rel}: links the provenance of {entry.filename}, which is missing")
            return
        key = self._public_key()
        if key is None or not intact:
            return
        try:
            envelope = json.loads((self.root / doc_rel).read_bytes())
            signing.check_wheel(entry.filename, entry.sha256, envelope, key)
        except (OSError, ValueError, signing.SignatureError) as exc:
            self.say(f"{doc_rel}: {exc}")

    def _public_key(self) -> Any:
        from bot import signing

        if not self._key_loaded:
            self._key_loaded = True
            path = self.root / signing.PUBLIC_KEY_PATH
            where = signing.PUBLIC_KEY_PATH
            if where not in self.tree:
                self.say(f"{where}: missing, and pages link provenance signed with it")
                return None
            try:
                self._key = signing.load_public_key(path.read_bytes(), where)
            except (OSError, signing.SignatureError) as exc:
                self.say(f"{where}: {exc}")
        return self._key

    def _twin(self, html_rel: str, entries: list[dict[str, Any]]) -> None:
        parsed = self._html(html_rel)
        if parsed is None:
            return
        twin = f"{html_rel} disagrees with index.json"
        anchors: dict[str, dict[str, str | None]] = {}
        for attrs, text in parsed.anchors:
            if text in anchors:
                self.say(f"{twin}: {text} is linked twice")
                continue
            anchors[text] = attrs
        for entry in entries:
            filename = entry["filename"]
            if filename not in anchors:
                self.say(f"{twin}: {filename} is not in index.html")
                continue
            attrs = anchors.pop(filename)
            for key, want in _html_twin(entry).items():
                # A valueless attribute (<a data-yanked>) is present and empty (PEP 592).
                got = (attrs[key] or "") if key in attrs else None
                if not _same_attribute(key, got, want):
                    self.say(f"{twin}: {filename} {key} is {_shown(got)}, JSON {_shown(want)}")
            if attrs.get("data-dist-info-metadata") != attrs.get("data-core-metadata"):
                # PEP 714: both names carry one value (pip before 23.2 reads the old one).
                self.say(
                    f"{html_rel}: {filename} data-dist-info-metadata is "
                    f"{_shown(attrs.get('data-dist-info-metadata'))}, data-core-metadata "
                    f"{_shown(attrs.get('data-core-metadata'))}"
                )
        for text in anchors:
            self.say(f"{twin}: {text} is not in index.json")

    def _strays(self) -> None:
        from bot import signing

        for rel in sorted(self.tree - self.listed):
            # The key sits at its fixed place in the tree; no page links it (bot.signing).
            if rel == signing.PUBLIC_KEY_PATH or rel.startswith(tuple(self.unchecked)):
                continue
            self.say(f"{rel}: not listed")


__all__ = ["TreeReport", "verify", "verify_tree"]
