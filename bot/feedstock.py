"""Feedstocks: rendering ``feedstock-template/`` and editing ``feedstock.yaml`` round-trip."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from packaging.utils import InvalidSdistFilename, canonicalize_name, parse_sdist_filename
from packaging.version import InvalidVersion, Version
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from bot.dists import is_bare_filename
from bot.errors import FeedstockError
from bot.typed import Mismatch, as_mapping, as_sha256, as_str

FEEDSTOCK_FILE = "feedstock.yaml"
TEMPLATE_VERSION_FILE = "TEMPLATE_VERSION"


@dataclass(frozen=True)
class Source:
    """The upstream sdist a feedstock builds from."""

    filename: str
    url: str
    sha256: str


@dataclass(frozen=True)
class Feedstock:
    """The parsed ``feedstock.yaml``."""

    project: str
    version: str
    source: Source
    template: int

    @property
    def name(self) -> str:
        return canonicalize_name(self.project)

    @classmethod
    def from_dict(cls, data: Any, where: str = FEEDSTOCK_FILE) -> Feedstock:
        """Validate a loaded document, naming the key path of the first bad field."""
        if not isinstance(data, Mapping):
            raise FeedstockError(f"{where}: expected a mapping at the top level")
        try:
            source = as_mapping(data.get("source"), "source")
            version = as_str(data.get("version"), "version", nonempty=True)
            try:
                Version(version)
            except InvalidVersion as exc:
                what = f"version {version!r} is not a PEP 440 version"
                raise FeedstockError(f"{where}: {what}") from exc
            sha256 = as_str(source.get("sha256"), "source.sha256", nonempty=True)
            sha256 = as_sha256(sha256, "source.sha256")
            filename = as_str(source.get("filename"), "source.filename", nonempty=True)
            project = as_str(data.get("project"), "project", nonempty=True)
            check_sdist_name(filename, project, version, where)
            url = as_str(source.get("url"), "source.url", nonempty=True)
        except Mismatch as exc:
            raise FeedstockError(f"{where}: {exc.where} must be {exc.expected}") from exc
        if urlsplit(url).scheme not in ("http", "https"):
            raise FeedstockError(f"{where}: source.url must be an http(s) URL")
        template = data.get("template", 0)
        # Not typed.as_int, which refuses a bool: `template: true` has always passed here.
        if not isinstance(template, int):
            raise FeedstockError(f"{where}: template must be an integer")
        return cls(
            project=project,
            version=version,
            source=Source(filename=filename, url=url, sha256=sha256),
            template=template,
        )


def check_sdist_name(filename: str, project: str, version: str, where: str) -> None:
    """The sdist must be a bare filename of this project at this version.

    The filename becomes a path on disk; a feedstock must never name another project's
    files or reach outside its download directory (DESIGN, trust rules).
    """
    if not is_bare_filename(filename):
        raise FeedstockError(f"{where}: source.filename must be a bare file name")
    try:
        name, parsed = parse_sdist_filename(filename)
    except (InvalidSdistFilename, InvalidVersion) as exc:
        raise FeedstockError(f"{where}: source.filename {filename!r} is not an sdist") from exc
    if name != canonicalize_name(project) or parsed != Version(version):
        raise FeedstockError(f"{where}: source.filename {filename!r} is not {project} {version}")


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long URL onto two lines
    return yaml


def _load(text: str, where: str) -> CommentedMap:
    try:
        data = _yaml().load(text)
    except YAMLError as exc:
        raise FeedstockError(f"{where}: invalid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, CommentedMap):
        raise FeedstockError(f"{where}: expected a mapping at the top level")
    return data


def parse(text: str, where: str = FEEDSTOCK_FILE) -> Feedstock:
    return Feedstock.from_dict(_load(text, where), where)


def bump(text: str, version: str, source: Source, where: str = FEEDSTOCK_FILE) -> str:
    """Return ``feedstock.yaml`` naming another release, comments and key order kept."""
    data = _load(text, where)
    Feedstock.from_dict(data, where)  # refuse to edit a file that is already invalid
    old = data["version"]
    # Keep the quoting style of the file (a bare 1.10 would read back as a float).
    data["version"] = type(old)(version) if isinstance(old, str) else version
    data["source"]["filename"] = source.filename
    data["source"]["url"] = source.url
    data["source"]["sha256"] = source.sha256
    out = io.StringIO()
    _yaml().dump(data, out)
    return out.getvalue()


def set_template(text: str, version: int, where: str = FEEDSTOCK_FILE) -> str:
    """Return ``feedstock.yaml`` with only its ``template`` number changed, round-trip."""
    data = _load(text, where)
    Feedstock.from_dict(data, where)
    data["template"] = version
    out = io.StringIO()
    _yaml().dump(data, out)
    return out.getvalue()


def rerender(
    template_dir: Path,
    text: str,
    *,
    maintainers: tuple[str, ...],
    consent: str,
    where: str = FEEDSTOCK_FILE,
) -> dict[str, str]:
    """The files a re-render writes onto a feedstock whose ``feedstock.yaml`` is ``text``.

    Every template file is rendered anew from the feedstock's own version and source, except
    ``feedstock.yaml`` itself: a reviewer may have edited it, so only its ``template`` number
    changes (DESIGN: it is edited round-trip, comments kept).
    """
    current = parse(text, where)
    files = render(
        template_dir,
        project=current.project,
        version=current.version,
        source=current.source,
        maintainers=maintainers,
        consent=consent,
    )
    files[FEEDSTOCK_FILE] = set_template(text, template_version(template_dir), where)
    return files


# Where the template is looked for when no --template is given: the working directory's
# own copy wins (an operator's customised template), then the one installed with the package,
# then the source tree's (a checkout or an editable install, where the package data is not
# copied).
DEFAULT_TEMPLATE = Path("feedstock-template")
_PACKAGE = Path(__file__).resolve().parent
_INSTALLED_TEMPLATE = _PACKAGE / "feedstock_template"
_SOURCE_TEMPLATE = _PACKAGE.parent / "feedstock-template"


def default_template(cwd: Path | None = None) -> Path:
    """The template to use without --template: ./feedstock-template, else the shipped one."""
    local = (cwd or Path.cwd()) / DEFAULT_TEMPLATE
    for candidate in (local, _INSTALLED_TEMPLATE, _SOURCE_TEMPLATE):
        if (candidate / TEMPLATE_VERSION_FILE).is_file():
            return candidate
    # Names the working directory's path, so the error says where a template was expected.
    return local


def template_version(template_dir: Path) -> int:
    path = template_dir / TEMPLATE_VERSION_FILE
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except FileNotFoundError as exc:
        raise FeedstockError(
            f"{template_dir} is not a feedstock template (no {path.name})"
        ) from exc
    except ValueError as exc:
        raise FeedstockError(f"{path}: expected an integer template version") from exc


def render(
    template_dir: Path,
    *,
    project: str,
    version: str,
    source: Source,
    maintainers: tuple[str, ...],
    consent: str,
) -> dict[str, str]:
    """Render every file of the template; ``*.j2`` files through jinja2, others as they are."""
    version_number = template_version(template_dir)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    # JSON strings are valid YAML double-quoted scalars: safe for any filename or URL.
    env.filters["yaml"] = lambda value: json.dumps(str(value))
    context = {
        "project": project,
        "version": version,
        "source": source,
        "maintainers": maintainers,
        "consent": consent,
        "template_version": version_number,
    }
    files: dict[str, str] = {}
    for path in sorted(template_dir.rglob("*")):
        if not path.is_file() or path.name == TEMPLATE_VERSION_FILE:
            continue
        relative = path.relative_to(template_dir).as_posix()
        if relative.endswith(".j2"):
            try:
                files[relative[:-3]] = env.get_template(relative).render(context)
            except jinja2.TemplateError as exc:
                raise FeedstockError(f"{path}: cannot render: {exc}") from exc
        else:
            files[relative] = path.read_text(encoding="utf-8")
    parse(files.get(FEEDSTOCK_FILE, ""), f"{template_dir}/{FEEDSTOCK_FILE}.j2")
    return files
