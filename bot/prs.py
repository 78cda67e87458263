"""What the bot proposes on a feedstock: which PRs to open or supersede, titles and bodies."""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import jinja2
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from bot.feedstock import Source
from bot.forge import PullRequest

if TYPE_CHECKING:  # annotations only: the PR plan needs no HTTP client at import
    from bot.metadata import ProjectMetadata

__all__ = [
    "COMMANDS",
    "Bump",
    "Change",
    "OpenPR",
    "Plan",
    "Rerender",
    "Supersede",
    "backoff",
    "bump_branch",
    "changelog_url",
    "metadata_changes",
    "normalize_label",
    "parse_branch",
    "parse_commands",
    "plan_proposal",
    "rank_of",
    "rerender_branch",
    "source_url",
    "supersessions",
    "unwanted",
]

# Core metadata, "Well-known Project URLs": labels are compared after normalize_label.
CHANGELOG_LABELS = frozenset(
    {"changelog", "changes", "releasenotes", "news", "whatsnew", "history"}
)
SOURCE_LABELS = frozenset({"source", "sourcecode", "repository", "code", "github", "gitlab"})
HOMEPAGE_LABELS = frozenset({"homepage", "home"})
# Hosts whose /<owner>/<repo> path is a repository, so a homepage there is the source too.
CODE_HOSTS = frozenset({"github.com", "gitlab.com", "codeberg.org", "bitbucket.org", "git.sr.ht"})

_LABEL_REMOVALS = str.maketrans("", "", string.punctuation + string.whitespace)
# A URL that can stand in an autolink (<...>) and that a reviewer's browser opens as a page.
_WEB_URL = re.compile(r"https?://[^\s<>`\\\x00-\x1f\x7f]+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
# CommonMark backslash-escapable punctuation that could start markup inside running text.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#!])")


def normalize_label(label: str) -> str:
    """The Project-URL label as the core metadata spec compares it ("Change Log" = "changelog")."""
    return label.translate(_LABEL_REMOVALS).lower()


def _is_web_url(url: str) -> bool:
    return _WEB_URL.fullmatch(url) is not None


def _labelled(project_urls: Iterable[tuple[str, str]], labels: frozenset[str]) -> str | None:
    for label, url in project_urls:
        if normalize_label(label) in labels and _is_web_url(url):
            return url
    return None


def changelog_url(project_urls: Iterable[tuple[str, str]]) -> str | None:
    """The first web URL labelled as a changelog or release notes, in the project's order."""
    return _labelled(project_urls, CHANGELOG_LABELS)


def source_url(project_urls: Iterable[tuple[str, str]]) -> str | None:
    """The source repository: a URL labelled so, else a homepage that is a code host repo."""
    project_urls = tuple(project_urls)
    found = _labelled(project_urls, SOURCE_LABELS)
    if found is not None:
        return found
    for label, url in project_urls:
        if normalize_label(label) in HOMEPAGE_LABELS and _is_web_url(url):
            parts = urlsplit(url)
            segments = [segment for segment in parts.path.split("/") if segment]
            if (parts.hostname or "").lower() in CODE_HOSTS and len(segments) >= 2:
                return url
    return None


@dataclass(frozen=True)
class Change:
    """One metadata field that differs between the old and the new release."""

    field: str
    removed: tuple[str, ...]
    added: tuple[str, ...]


def _requirement_key(text: str) -> str:
    # str(Requirement) is packaging's normal form: spacing, marker quoting and the order of
    # extras no longer differ; names and extras compare normalised (PEP 503, PEP 685).
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return text.strip()
    requirement.name = canonicalize_name(requirement.name)
    requirement.extras = {canonicalize_name(extra) for extra in requirement.extras}
    return str(requirement)


def _specifier_key(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return str(SpecifierSet(text))
    except InvalidSpecifier:
        return text.strip()


def _by_key(requirements: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for requirement in requirements:
        found.setdefault(_requirement_key(requirement), requirement.strip())
    return found


def _set_change(field: str, old: Sequence[str], new: Sequence[str]) -> list[Change]:
    # Compared as sets of normal forms, shown as upstream wrote them, in upstream's order.
    old_by_key, new_by_key = _by_key(old), _by_key(new)
    removed = tuple(text for key, text in old_by_key.items() if key not in new_by_key)
    added = tuple(text for key, text in new_by_key.items() if key not in old_by_key)
    return [Change(field, removed, added)] if removed or added else []


def _value_change(field: str, old: str | None, new: str | None) -> list[Change]:
    return [Change(field, (old,) if old else (), (new,) if new else ())]


def metadata_changes(old: ProjectMetadata | None, new: ProjectMetadata | None) -> list[Change]:
    """What a reviewer must look at: dependencies, Requires-Python, build system, license.

    Nothing when either side is unknown; so is the build system when either side had no sdist
    (an empty build_backend), since "unknown" is not "changed".
    """
    if old is None or new is None:
        return []
    changes = _set_change("Requires-Dist", old.requires_dist, new.requires_dist)
    if _specifier_key(old.requires_python) != _specifier_key(new.requires_python):
        changes += _value_change("Requires-Python", old.requires_python, new.requires_python)
    if old.build_backend and new.build_backend:
        if old.build_backend != new.build_backend:
            changes += _value_change("build backend", old.build_backend, new.build_backend)
        changes += _set_change("build requires", old.build_requires, new.build_requires)
    if old.license != new.license:
        changes += _value_change("license", old.license, new.license)
    return changes


def _code(value: object) -> str:
    """An inline code span holding value whatever backticks it contains (CommonMark 6.1)."""
    text = _CONTROL.sub(" ", str(value))
    if not text.strip():
        return '""' if not text else f"`{text}`"
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    # One space each side is stripped by the renderer; it keeps a leading or trailing
    # backtick from joining the fence.
    if text[0] in "` " or text[-1] in "` ":
        text = f" {text} "
    return f"{fence}{text}{fence}"


def _text(value: object) -> str:
    """Running text with markup characters escaped, on one line."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _CONTROL.sub(" ", str(value)))


def _link(url: str) -> str:
    # An autolink needs no escaping; anything that can't be one is shown, not linked.
    return f"<{url}>" if _is_web_url(url) else _code(url)


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("bot", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    # Block tags on their own lines leave no blank lines behind (Markdown is line-sensitive).
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_ENV.filters.update(code=_code, text=_text, link=_link)


@dataclass(frozen=True)
class Bump:
    """A version-bump pull request the bot wants to open."""

    project: str
    old: str
    new: str
    source: Source
    maintainers: tuple[str, ...]
    page_url: str
    requires_python: str | None = None
    old_meta: ProjectMetadata | None = None
    new_meta: ProjectMetadata | None = None
    # Enrolled projects that depend on this one.
    affected: tuple[str, ...] = ()
    # Older bot PRs of this project that this one closes.
    supersedes: tuple[int, ...] = ()
    # Older bot PRs left open because someone other than the bot pushed to them.
    kept_open: tuple[int, ...] = ()

    @property
    def branch(self) -> str:
        # One branch per (project, version): the branch name is the duplicate key.
        return bump_branch(self.project, self.new)

    @property
    def title(self) -> str:
        return f"{self.project} {self.old} → {self.new}"

    @property
    def commit_message(self) -> str:
        return (
            f"Bump {self.project} to {self.new}\n\n"
            f"sdist {self.source.filename} sha256 {self.source.sha256}"
        )

    def body(self) -> str:
        urls = self.new_meta.project_urls if self.new_meta is not None else ()
        return _ENV.get_template("bump.md.j2").render(
            project=self.project,
            old=self.old,
            new=self.new,
            source=self.source,
            maintainers=self.maintainers,
            page_url=self.page_url,
            requires_python=self.requires_python,
            changelog=changelog_url(urls),
            source_repo=source_url(urls),
            changes=metadata_changes(self.old_meta, self.new_meta),
            unknown=[
                version
                for version, meta in ((self.old, self.old_meta), (self.new, self.new_meta))
                if meta is None
            ],
            notes=[
                (version, note)
                for version, meta in ((self.old, self.old_meta), (self.new, self.new_meta))
                if meta is not None
                for note in meta.source.split("; ")[1:]
            ],
            affected=self.affected,
            supersedes=self.supersedes,
            kept_open=self.kept_open,
        )


def bump_branch(project: str, version: str) -> str:
    return f"wheelstock/{project}-{version}"


def rerender_branch(template: int) -> str:
    # A path below "wheelstock/rerender" never clashes with a bump branch, which always
    # ends in "-<version>" right after the project name.
    return f"wheelstock/rerender/v{template}"


def parse_branch(project: str, branch: str) -> tuple[str, str] | None:
    """("bump", version) or ("rerender", template) for the bot's own branches, else None."""
    match = re.fullmatch(r"wheelstock/rerender/v(\d+)", branch)
    if match:
        return "rerender", match.group(1)
    prefix = f"wheelstock/{project}-"
    if branch.startswith(prefix):
        try:
            return "bump", str(Version(branch[len(prefix) :]))
        except InvalidVersion:
            return None
    return None


def rank_of(kind: str, version: str) -> Version:
    """Orders bot PRs of one kind: bump releases by PEP 440, rerenders by template number."""
    return Version(version) if kind == "bump" else Version(f"0!{int(version)}")


@dataclass(frozen=True)
class Supersede:
    """An older bot PR made moot by a newer one of the same kind."""

    old: PullRequest
    new: PullRequest
    close: bool  # False when someone other than the bot pushed to the old branch


def supersessions(
    project: str, prs: Iterable[PullRequest], touched: Callable[[PullRequest], bool]
) -> list[Supersede]:
    """For each kind, every open bot PR older than the newest open one of that kind.

    ``touched(pr)`` says whether anyone but the bot pushed to the PR's branch: such a PR
    carries someone's work, so it is left open (and the newer PR says so).
    """
    newest: dict[str, tuple[Version, PullRequest]] = {}
    ours = []
    for pr in prs:
        parsed = parse_branch(project, pr.branch) if pr.state == "open" else None
        if parsed is None:
            continue
        kind, version = parsed
        rank = rank_of(kind, version)
        ours.append((kind, rank, pr))
        if kind not in newest or rank > newest[kind][0]:
            newest[kind] = (rank, pr)
    return [
        Supersede(old=pr, new=newest[kind][1], close=not touched(pr))
        for kind, rank, pr in sorted(ours, key=lambda item: item[2].number)
        if rank < newest[kind][0]
    ]


# --- what to do with a proposal: facts in, a plan out -------------------------------------------


@dataclass(frozen=True)
class OpenPR:
    """One open PR of the bot's on the feedstock, as a plan needs to know it."""

    number: int
    kind: str  # bump | rerender
    version: str
    touched: bool  # someone other than the bot pushed to its branch: their work stays open


@dataclass(frozen=True)
class Plan:
    """What to do with a proposal: ``skip`` it, ``defer`` it (``reason`` says why), or
    ``open`` it, closing ``closes`` and naming ``kept``, the older ones someone pushed to."""

    action: str
    reason: str = ""
    closes: tuple[int, ...] = ()
    kept: tuple[int, ...] = ()


def plan_proposal(
    *,
    project: str,
    kind: str,
    version: str,
    title: str,
    branch_has_pr: bool,
    open_prs: Sequence[OpenPR],
    max_open: int,
    opened: int,
    max_new: int,
) -> Plan:
    """Decide a proposal: never a second PR for one branch, within both noise limits.

    ``branch_has_pr``: a PR for the proposal's branch exists, in any state (one a volunteer
    closed stays closed). The older open PRs of the same kind would be closed by the new one
    and so do not count against ``max_open``, unless someone pushed to them. ``opened``:
    PRs opened so far this tick, against ``max_new``.
    """
    if branch_has_pr:
        return Plan("skip")
    rank = rank_of(kind, version)
    older = [pr for pr in open_prs if pr.kind == kind and rank_of(pr.kind, pr.version) < rank]
    staying = sum(1 for pr in open_prs if pr not in older or pr.touched)
    if staying >= max_open:
        return Plan(
            "defer",
            f"{project}: {staying} bot PRs already open (limit {max_open}); {title!r} waits",
        )
    if opened >= max_new:
        return Plan(
            "defer", f"{project}: {max_new} PRs opened this tick (the limit); {title!r} waits"
        )
    return Plan(
        "open",
        closes=tuple(pr.number for pr in older if not pr.touched),
        kept=tuple(pr.number for pr in older if pr.touched),
    )


def unwanted(current: str, wanted: str | None, open_prs: Sequence[OpenPR]) -> list[tuple[int, str]]:
    """Open bump PRs to close, with why: for releases the rules no longer pick.

    A release yanked or ignored after its PR was opened (above ``wanted``, or above main's
    ``current`` when nothing is wanted), or one that main already reached. A PR someone
    pushed to stays open.
    """
    floor = Version(wanted) if wanted is not None else Version(current)
    closing = []
    for pr in open_prs:
        if pr.kind != "bump" or pr.touched:
            continue
        if Version(pr.version) > floor:
            closing.append(
                (
                    pr.number,
                    f"upstream's {pr.version} is no longer a release to build (yanked or ignored)",
                )
            )
        elif Version(pr.version) <= Version(current):
            closing.append((pr.number, f"main is already at {current}"))
    return closing


# --- comment commands -------------------------------------------------------------------------

COMMANDS = ("rerender", "rebuild", "close")
_COMMAND = re.compile(r"^\s*@wheelstock\s+(\S+)", re.IGNORECASE | re.MULTILINE)


def parse_commands(body: str) -> list[str]:
    """The commands in a comment, one per line that starts with ``@wheelstock``, in order.

    An unknown word comes back as it was written, so the bot can answer that it does not
    know it rather than stay silent.
    """
    return [match.group(1).lower().rstrip(".,!:;") for match in _COMMAND.finditer(body)]


# --- backoff ----------------------------------------------------------------------------------

BACKOFF_BASE = timedelta(hours=2)
BACKOFF_CAP = timedelta(days=7)


def backoff(failures: int) -> timedelta:
    """How long to leave a project alone after ``failures`` failed attempts in a row.

    2 h after the first, doubling each time (2 h x 2^(failures-1)), never more than a week.
    """
    if failures < 1:
        return timedelta(0)
    # Capped before it is computed, so a huge count cannot overflow the timedelta.
    doublings = min(failures - 1, 16)
    return min(BACKOFF_BASE * (1 << doublings), BACKOFF_CAP)


# --- rerender PRs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rerender:
    """A pull request that brings a feedstock's files to the current feedstock-template."""

    project: str
    old: int
    new: int
    changed: tuple[str, ...]  # paths the re-render touches
    maintainers: tuple[str, ...]
    supersedes: tuple[int, ...] = ()
    kept_open: tuple[int, ...] = ()

    @property
    def branch(self) -> str:
        return rerender_branch(self.new)

    @property
    def title(self) -> str:
        return f"{self.project}: re-render with feedstock-template v{self.new}"

    @property
    def commit_message(self) -> str:
        return (
            f"Re-render {self.project}-feedstock with feedstock-template v{self.new}\n\n"
            f"The files were rendered from v{self.old}."
        )

    def body(self) -> str:
        return _ENV.get_template("rerender.md.j2").render(
            project=self.project,
            old=self.old,
            new=self.new,
            changed=self.changed,
            maintainers=self.maintainers,
            supersedes=self.supersedes,
            kept_open=self.kept_open,
        )
