"""What the bot proposes on a feedstock: branch names, titles and bodies of bump PRs."""

from __future__ import annotations

from dataclasses import dataclass

import jinja2

from bot.feedstock import Source

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("bot", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)


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
        return _ENV.get_template("bump.md.j2").render(
            project=self.project,
            old=self.old,
            new=self.new,
            source=self.source,
            maintainers=self.maintainers,
            page_url=self.page_url,
            requires_python=self.requires_python,
        )


def bump_branch(project: str, version: str) -> str:
    return f"wheelstock/{project}-{version}"
