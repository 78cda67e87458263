"""Where feedstocks and their pull requests live: the ``Forge`` protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


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

    def open_pr(self, project: str, branch: str, title: str, body: str) -> PullRequest: ...

    def pull_requests(
        self, project: str | None = None, state: str | None = None
    ) -> list[PullRequest]: ...

    def get_pr(self, number: int) -> PullRequest: ...

    def diff(self, number: int) -> str: ...

    def merge_pr(self, number: int, by: str) -> PullRequest: ...

    def close_pr(self, number: int, by: str) -> PullRequest: ...
