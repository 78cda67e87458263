"""Where feedstocks and their pull requests live: the ``Forge`` protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

# The handle the bot acts under on every forge: its commits, PRs and comments.
BOT_HANDLE = "wheelstock-bot"


@dataclass(frozen=True)
class PullRequest:
    """A pull request on a feedstock, as every forge reports it."""

    number: int
    project: str
    branch: str
    title: str
    body: str
    state: str  # open | merged | closed
    base_commit: str
    head_commit: str
    created_at: str
    merged_commit: str | None = None
    closed_by: str | None = None


@dataclass(frozen=True)
class Changes:
    """What changed on a forge since a cursor: the answer to one per-tick question.

    ``projects``: feedstocks whose branches, pull requests or comments changed (pushes by
    anyone, PRs opened, merged, closed or edited, comments). ``commented``: the numbers of
    the pull requests that got comments. ``complete`` is False when the forge cannot say
    (no cursor yet, or one it does not know): then everything counts as changed.
    ``cursor`` is passed back on the next call; it is opaque to the bot.
    """

    cursor: str
    projects: frozenset[str] = frozenset()
    commented: frozenset[int] = frozenset()
    complete: bool = True


@dataclass(frozen=True)
class Comment:
    """A comment on a pull request; ``id`` grows with time on every forge."""

    id: int
    number: int  # the pull request's
    author: str
    body: str
    created_at: str


class Forge(Protocol):
    """What the bot needs from a forge; ``LocalForge`` is the embedded default."""

    def has_feedstock(self, project: str) -> bool: ...

    def feedstocks(self) -> list[str]:
        """Names of the projects that have a feedstock, sorted."""
        ...

    def create_feedstock(self, project: str, files: Mapping[str, str], message: str) -> str:
        """Create ``<project>-feedstock`` with one commit on ``main``; return its sha."""
        ...

    def head(self, project: str, ref: str = "main") -> str: ...

    def read_file(self, project: str, path: str, ref: str = "main") -> str: ...

    def branches(self, project: str) -> list[str]: ...

    def push_change(self, project: str, branch: str, files: Mapping[str, str], message: str) -> str:
        """Commit ``files`` onto a new ``branch`` cut from ``main``; return the commit sha."""
        ...

    def update_branch(
        self, project: str, branch: str, files: Mapping[str, str], message: str
    ) -> str | None:
        """Commit ``files`` on top of ``branch``; None when they change nothing."""
        ...

    def branch_authors(self, project: str, branch: str) -> set[str]:
        """Who authored or committed the commits on ``branch`` that ``main`` lacks."""
        ...

    def open_pr(self, project: str, branch: str, title: str, body: str) -> PullRequest: ...

    def pull_requests(
        self, project: str | None = None, state: str | None = None
    ) -> list[PullRequest]: ...

    def get_pr(self, number: int) -> PullRequest: ...

    def diff(self, number: int) -> str: ...

    def merge_pr(self, number: int, by: str) -> PullRequest: ...

    def close_pr(self, number: int, by: str) -> PullRequest: ...

    def comment(self, number: int, author: str, body: str) -> Comment: ...

    def comments(self, number: int, *, after: int = 0) -> list[Comment]:
        """Comments on pull request ``number`` with an id above ``after``, oldest first."""
        ...

    def changes(self, since: str | None) -> Changes:
        """What changed since ``since`` (a cursor an earlier call returned; None: the start).

        One call per tick, whatever the number of feedstocks: a hosted forge answers it from
        one paginated, conditional query, the local forge from its own event log.
        """
        ...
