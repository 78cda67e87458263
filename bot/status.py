"""``wheelstock status``: what the bot knows of each project, from state and forge; no network."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from bot import feedstock, registry
from bot.feedstock import FEEDSTOCK_FILE
from bot.forge import Forge
from bot.state import FORGE_CURSOR, State, iso


@dataclass(frozen=True)
class ProjectStatus:
    """One line of ``wheelstock status``: what the bot knows of a project, without network."""

    name: str
    state: str  # active | skipped | retired | invalid
    feedstock: str | None  # version on main
    open_prs: tuple[int, ...]
    last_build: str | None  # "<version> <status>"
    note: str | None  # skip reason, failure reason, or the registry problem

    def line(self) -> str:
        prs = ",".join(f"#{n}" for n in self.open_prs) or "-"
        note = f"  ({self.note})" if self.note else ""
        return (
            f"{self.name:<24} {self.state:<8} {self.feedstock or '-':<12} {prs:<8} "
            f"{self.last_build or '-'}{note}"
        )


def status(state: State, forge: Forge, registry_dir: Path) -> list[ProjectStatus]:
    """Every project's line, from a handful of queries: no git for a feedstock that did not
    move since the last tick, whose version the state keeps from that tick's sync."""
    reg = registry.load_directory(registry_dir, cache=state.registry_cache)
    retired = state.retired()
    problems: dict[str, str] = {canonicalize_name(p.path.stem): str(p) for p in reg.problems}
    feedstocks = set(forge.feedstocks())
    names = sorted(feedstocks | {e.name for e in reg.entries} | set(problems))
    entries = {e.name: e for e in reg.entries}
    attempts = state.attempts()
    # main's version where the last complete sync left it and the forge says nothing of the
    # project changed since; the rest are read from the forge.
    known = state.settled_versions(forge.changes(state.get_meta(FORGE_CURSOR)))
    last_builds = {build.project: build for build in state.builds()}  # in id order: the last
    open_prs: dict[str, list[int]] = defaultdict(list)
    for pr in forge.pull_requests(state="open"):
        open_prs[pr.project].append(pr.number)
    rows = []
    for name in names:
        entry = entries.get(name)
        note = None
        if entry is not None and entry.skip is not None:
            kind, note = "skipped", entry.skip
        elif entry is not None:
            kind = "active"
        elif name in problems:
            kind, note = "invalid", problems[name]
        else:
            kind = "retired" if name in retired else "removed"
        version = None
        if name in feedstocks:
            version = known.get(name)
            if version is None:
                text = forge.read_file(name, FEEDSTOCK_FILE)
                version = feedstock.parse(text, f"{name}-feedstock/{FEEDSTOCK_FILE}").version
        last = last_builds.get(name)
        attempt = attempts.get(name)
        if attempt is not None and note is None:
            note = (
                f"backing off after {attempt.failures} failed attempts: {attempt.reason}; "
                f"next attempt after {iso(attempt.next_attempt)}"
            )
        if last is not None and note is None and last.status in ("failed", "refused", "skipped"):
            note = last.reason
        rows.append(
            ProjectStatus(
                name=name,
                state=kind,
                feedstock=version,
                open_prs=tuple(open_prs.get(name, ())),
                last_build=None if last is None else f"{last.version} {last.status}",
                note=note,
            )
        )
    return rows
