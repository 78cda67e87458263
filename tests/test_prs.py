"""Tests for bot.prs: picking upstream links, comparing metadata, and the bump PR's body."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from bot.feedstock import Source
from bot.forge import PullRequest
from bot.metadata import ProjectMetadata
from bot.prs import (
    Bump,
    Change,
    OpenPR,
    Plan,
    _code,
    changelog_url,
    metadata_changes,
    normalize_label,
    plan_proposal,
    source_url,
    supersessions,
    unwanted,
)

SHA = "3f" * 32
SOURCE = Source(
    filename="demo-1.1.tar.gz", url="https://files.invalid/demo/demo-1.1.tar.gz", sha256=SHA
)
PAGE = "https://upstream.invalid/simple/demo/"
LOG = "https://example.invalid/demo/changes.html"
REPO = "https://example.invalid/git/demo"
NO_CHANGES = "- no changes in dependencies, Requires-Python, build system or license"


def meta(version: str = "1.0", **changes: Any) -> ProjectMetadata:
    base = ProjectMetadata(
        project="demo",
        version=version,
        requires_dist=("requests>=2", 'tomli>=1; python_version < "3.11"'),
        requires_python=">=3.8",
        build_requires=("setuptools>=61",),
        build_backend="setuptools.build_meta",
        source="sdist",
        license="MIT",
    )
    return dataclasses.replace(base, **changes)


OLD = meta("1.0")
NEW = meta("1.1")


def bump(**fields: Any) -> Bump:
    defaults: dict[str, Any] = {
        "project": "demo",
        "old": "1.0",
        "new": "1.1",
        "source": SOURCE,
        "maintainers": ("alice", "bob"),
        "page_url": PAGE,
    }
    return Bump(**{**defaults, **fields})


def section(body: str, title: str) -> list[str]:
    """The non-blank lines under the bold `title` line, up to the next bold title."""
    lines = body.splitlines()
    start = lines.index(f"**{title}**") + 1
    found = []
    for line in lines[start:]:
        if line.startswith("**"):
            break
        if line.strip():
            found.append(line)
    return found


def outside_code(body: str) -> str:
    """The body without its code spans and autolinks: what Markdown reads as markup."""
    without_code = re.sub(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", "", body)
    return re.sub(r"<https?://[^\s<>]*>", "", without_code)


# --- labels and links -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "normal"),
    [
        ("Changelog", "changelog"),
        ("Change Log", "changelog"),
        ("change-log", "changelog"),
        ("Release Notes", "releasenotes"),
        ("What's New", "whatsnew"),
        ("Source\tCode", "sourcecode"),
    ],
)
def test_normalize_label(label: str, normal: str) -> None:
    assert normalize_label(label) == normal


@pytest.mark.parametrize(
    ("urls", "expected"),
    [
        pytest.param((("Changelog", LOG),), LOG, id="Changelog"),
        pytest.param((("Change Log", LOG),), LOG, id="Change Log"),
        pytest.param((("Release Notes", LOG),), LOG, id="Release Notes"),
        pytest.param((("What's New", LOG),), LOG, id="What's New"),
        pytest.param((("CHANGES", LOG),), LOG, id="CHANGES"),
        pytest.param((("History", LOG),), LOG, id="History"),
        pytest.param((("news", LOG),), LOG, id="news"),
        pytest.param((("Homepage", PAGE), ("Documentation", REPO)), None, id="none"),
        pytest.param((), None, id="no urls"),
        pytest.param(
            (("Docs", REPO), ("Release notes", LOG), ("Changelog", PAGE)), LOG, id="first wins"
        ),
        pytest.param(
            (("Changelog", "javascript:alert(1)"), ("History", LOG)), LOG, id="not a web url"
        ),
        pytest.param((("Changelog", "https://x.invalid/a b"),), None, id="url with a space"),
        pytest.param((("Changelog", "https://x.invalid/`a`"),), None, id="url with backticks"),
    ],
)
def test_changelog_url(urls: tuple[tuple[str, str], ...], expected: str | None) -> None:
    assert changelog_url(urls) == expected


GITHUB = "https://github.com/demo-org/demo"


@pytest.mark.parametrize(
    ("urls", "expected"),
    [
        pytest.param((("Source", REPO),), REPO, id="Source"),
        pytest.param((("Source Code", REPO),), REPO, id="Source Code"),
        pytest.param((("Repository", REPO),), REPO, id="Repository"),
        pytest.param((("GitHub", REPO),), REPO, id="GitHub"),
        pytest.param((("GitLab", REPO),), REPO, id="GitLab"),
        pytest.param((("code", REPO),), REPO, id="code"),
        pytest.param((("Homepage", GITHUB),), GITHUB, id="homepage on a code host"),
        pytest.param((("Homepage", GITHUB), ("Source", REPO)), REPO, id="label beats homepage"),
        pytest.param((("Homepage", "https://github.com/demo-org"),), None, id="owner only"),
        pytest.param((("Homepage", "https://demo.invalid/a/b"),), None, id="not a code host"),
        pytest.param((("Documentation", GITHUB),), None, id="only homepages fall back"),
        pytest.param((("Changelog", LOG),), None, id="none"),
    ],
)
def test_source_url(urls: tuple[tuple[str, str], ...], expected: str | None) -> None:
    assert source_url(urls) == expected


# --- metadata changes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(OLD, NEW, [], id="same"),
        pytest.param(
            OLD,
            meta("1.1", requires_dist=(*OLD.requires_dist, "attrs>=23")),
            [Change("Requires-Dist", (), ("attrs>=23",))],
            id="Requires-Dist added",
        ),
        pytest.param(
            OLD,
            meta("1.1", requires_dist=("requests>=2",)),
            [Change("Requires-Dist", ('tomli>=1; python_version < "3.11"',), ())],
            id="Requires-Dist removed",
        ),
        pytest.param(
            OLD,
            meta("1.1", requires_dist=tuple(reversed(OLD.requires_dist))),
            [],
            id="Requires-Dist reordered only",
        ),
        pytest.param(
            OLD,
            meta("1.1", requires_dist=("Requests >= 2", "tomli >=1 ; python_version<'3.11'")),
            [],
            id="Requires-Dist spacing, quoting and case only",
        ),
        pytest.param(
            meta(requires_dist=("rich[Jupyter,extra_b]",)),
            meta("1.1", requires_dist=("rich[extra-b,jupyter]",)),
            [],
            id="extras reordered and normalised",
        ),
        pytest.param(
            meta(requires_dist=("not a requirement ((",)),
            meta("1.1", requires_dist=(" not a requirement ((", "also @@ broken")),
            [Change("Requires-Dist", (), ("also @@ broken",))],
            id="unparsable compared as text",
        ),
        pytest.param(
            OLD,
            meta("1.1", requires_python=">=3.9"),
            [Change("Requires-Python", (">=3.8",), (">=3.9",))],
            id="Requires-Python changed",
        ),
        pytest.param(
            meta(requires_python=">=3.8, <4"),
            meta("1.1", requires_python="<4,>=3.8"),
            [],
            id="Requires-Python spelt differently",
        ),
        pytest.param(
            meta(requires_python=None),
            meta("1.1", requires_python=">=3.10"),
            [Change("Requires-Python", (), (">=3.10",))],
            id="Requires-Python added",
        ),
        pytest.param(
            OLD,
            meta("1.1", build_backend="hatchling.build", build_requires=("hatchling",)),
            [
                Change("build backend", ("setuptools.build_meta",), ("hatchling.build",)),
                Change("build requires", ("setuptools>=61",), ("hatchling",)),
            ],
            id="setuptools to hatchling",
        ),
        pytest.param(
            OLD,
            meta("1.1", build_requires=("setuptools>=64", "setuptools-scm>=8")),
            [
                Change(
                    "build requires", ("setuptools>=61",), ("setuptools>=64", "setuptools-scm>=8")
                )
            ],
            id="build requires changed",
        ),
        pytest.param(
            meta(build_backend="", build_requires=(), source="wheel; no sdist"),
            NEW,
            [],
            id="build system unknown on one side is not a change",
        ),
        pytest.param(
            OLD,
            meta("1.1", license="Apache-2.0"),
            [Change("license", ("MIT",), ("Apache-2.0",))],
            id="license changed",
        ),
        pytest.param(
            OLD,
            meta("1.1", license=None),
            [Change("license", ("MIT",), ())],
            id="license dropped",
        ),
        pytest.param(None, NEW, [], id="old unknown"),
        pytest.param(OLD, None, [], id="new unknown"),
        pytest.param(None, None, [], id="both unknown"),
    ],
)
def test_metadata_changes(
    old: ProjectMetadata | None, new: ProjectMetadata | None, expected: list[Change]
) -> None:
    assert metadata_changes(old, new) == expected


# --- the body ---------------------------------------------------------------------------------


def test_title_branch_and_commit_message_are_unchanged() -> None:
    pr = bump(old_meta=OLD, new_meta=NEW, affected=("beta",), supersedes=(3,))
    assert pr.title == "demo 1.0 → 1.1"
    assert pr.branch == "wheelstock/demo-1.1"
    assert pr.commit_message == f"Bump demo to 1.1\n\nsdist demo-1.1.tar.gz sha256 {SHA}"


def test_body_parts_in_order() -> None:
    body = bump(
        old_meta=OLD,
        new_meta=dataclasses.replace(NEW, project_urls=(("Changelog", LOG), ("Source", REPO))),
        requires_python=">=3.8",
    ).body()

    lines = body.splitlines()
    assert lines[0] == (
        "This pull request moves the demo feedstock from 1.0 to 1.1, "
        "the release upstream published."
    )
    titles = [line for line in lines if line.startswith("**")]
    assert titles == [
        "**Upstream**",
        "**Verified sdist**",
        "**What changed from 1.0 to 1.1**",
        "**Affected enrolled projects**",
        "**Reviewer checklist**",
        "**Bot commands**",
    ]
    assert section(body, "Upstream") == [
        f"- project page: <{PAGE}>",
        f"- sdist: <{SOURCE.url}>",
        f"- changelog: <{LOG}>",
        f"- source: <{REPO}>",
    ]
    assert section(body, "Verified sdist") == [
        "- file: `demo-1.1.tar.gz`",
        f"- sha256: `{SHA}`",
        "- Requires-Python on the index: `>=3.8`",
        "wheelstock downloaded the sdist and checked this sha256 before opening the pull request.",
    ]
    assert section(body, "Reviewer checklist") == [
        "- [ ] the version and sdist above are the release upstream announced",
        "- [ ] the changes above need no change to the feedstock",
        "- [ ] the changelog has nothing that breaks building",
        "Merging builds the wheels; they reach the index only after a listed maintainer",
        "(@alice, @bob) approves them with",
        "`wheelstock review approve demo 1.1 --as HANDLE`.",
    ]
    assert section(body, "Bot commands") == [
        "A listed maintainer can comment on this pull request:",
        "- `@wheelstock rerender`: re-render the template files on this branch",
        "- `@wheelstock rebuild`: build this feedstock again",
        "- `@wheelstock close`: close this pull request",
        'On the local forge that is `wheelstock pr comment N --as HANDLE "@wheelstock rebuild"`.',
    ]
    assert body.endswith("\n") and "\n\n\n" not in body


@pytest.mark.parametrize(
    ("label", "shown"),
    [
        ("Changelog", f"- changelog: <{LOG}>"),
        ("Change Log", f"- changelog: <{LOG}>"),
        ("Release Notes", f"- changelog: <{LOG}>"),
        ("What's New", f"- changelog: <{LOG}>"),
        ("Documentation", "- changelog: no changelog found"),
        (None, "- changelog: no changelog found"),
    ],
)
def test_body_changelog(label: str | None, shown: str) -> None:
    new = NEW if label is None else dataclasses.replace(NEW, project_urls=((label, LOG),))
    upstream = section(bump(old_meta=OLD, new_meta=new).body(), "Upstream")
    assert upstream[2] == shown
    # No source link without a source URL.
    assert len(upstream) == 3


def test_body_without_metadata_says_no_changelog() -> None:
    body = bump().body()
    assert "- changelog: no changelog found" in body
    assert "Requires-Python on the index" not in body


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(OLD, NEW, [NO_CHANGES], id="no changes"),
        pytest.param(
            OLD,
            meta("1.1", requires_dist=("requests >= 2", "attrs>=23")),
            [
                "- Requires-Dist",
                '  - removed `tomli>=1; python_version < "3.11"`',
                "  - added `attrs>=23`",
            ],
            id="Requires-Dist",
        ),
        pytest.param(
            OLD,
            meta("1.1", requires_python=">=3.9", license="Apache-2.0"),
            [
                "- Requires-Python",
                "  - removed `>=3.8`",
                "  - added `>=3.9`",
                "- license",
                "  - removed `MIT`",
                "  - added `Apache-2.0`",
            ],
            id="Requires-Python and license",
        ),
        pytest.param(
            OLD,
            meta("1.1", build_backend="hatchling.build", build_requires=("hatchling>=1.20",)),
            [
                "- build backend",
                "  - removed `setuptools.build_meta`",
                "  - added `hatchling.build`",
                "- build requires",
                "  - removed `setuptools>=61`",
                "  - added `hatchling>=1.20`",
            ],
            id="setuptools to hatchling",
        ),
        pytest.param(None, NEW, ["- metadata of 1.0 unknown"], id="old unknown"),
        pytest.param(OLD, None, ["- metadata of 1.1 unknown"], id="new unknown"),
        pytest.param(
            None,
            None,
            ["- metadata of 1.0 unknown", "- metadata of 1.1 unknown"],
            id="both unknown",
        ),
        pytest.param(
            meta(
                build_backend="",
                build_requires=(),
                source="wheel; no sdist: build requirements unknown",
            ),
            NEW,
            [NO_CHANGES, "- metadata of 1.0: no sdist: build requirements unknown"],
            id="old without sdist",
        ),
    ],
)
def test_body_changes(
    old: ProjectMetadata | None, new: ProjectMetadata | None, expected: list[str]
) -> None:
    body = bump(old_meta=old, new_meta=new).body()
    assert section(body, "What changed from 1.0 to 1.1") == expected


@pytest.mark.parametrize(
    ("affected", "expected"),
    [
        ((), ["- none of the enrolled projects depend on demo"]),
        (("beta",), ["- beta"]),
        (("beta", "gamma-pkg"), ["- beta", "- gamma-pkg"]),
    ],
)
def test_body_affected(affected: tuple[str, ...], expected: list[str]) -> None:
    body = bump(affected=affected).body()
    assert section(body, "Affected enrolled projects") == expected


@pytest.mark.parametrize(
    ("supersedes", "kept_open", "expected"),
    [
        ((), (), []),
        ((7,), (), ["Supersedes #7"]),
        ((3, 4), (), ["Supersedes #3", "Supersedes #4"]),
        (
            (4,),
            (2, 3),
            [
                "Supersedes #4",
                "#2 was left open because someone other than the bot pushed to it.",
                "#3 was left open because someone other than the bot pushed to it.",
            ],
        ),
    ],
)
def test_body_supersedes_and_kept_open(
    supersedes: tuple[int, ...], kept_open: tuple[int, ...], expected: list[str]
) -> None:
    body = bump(affected=("beta",), supersedes=supersedes, kept_open=kept_open).body()
    assert section(body, "Affected enrolled projects") == ["- beta", *expected]
    # Each line is its own paragraph: a list here would continue the affected list.
    for line in expected:
        assert f"\n\n{line}\n\n" in body


def test_hostile_values_stay_inside_their_markup() -> None:
    old = meta(requires_dist=("ok",), license="MIT")
    new = meta(
        "1.1",
        requires_dist=("ok", "evil | `rm -rf`", "``x``"),
        license="MIT | `Apache`\n# heading",
        project_urls=(
            ("Changelog", "https://x.invalid/`a`|b"),
            ("Source", "https://x.invalid/a|b"),
        ),
    )
    body = bump(
        old_meta=old,
        new_meta=new,
        page_url="javascript:`alert`|1",
        affected=("a|b*c", "<img>"),
        maintainers=("eve`|", "mal_lory"),
    ).body()

    assert section(body, "Upstream") == [
        "- project page: ``javascript:`alert`|1``",
        f"- sdist: <{SOURCE.url}>",
        "- changelog: no changelog found",
        "- source: <https://x.invalid/a|b>",
    ]
    assert section(body, "What changed from 1.0 to 1.1") == [
        "- Requires-Dist",
        "  - added `` evil | `rm -rf` ``",
        "  - added ``` ``x`` ```",
        "- license",
        "  - removed `MIT`",
        "  - added ``MIT | `Apache` # heading``",
    ]
    assert section(body, "Affected enrolled projects") == [r"- a\|b\*c", r"- \<img\>"]
    assert r"(@eve\`\|, @mal\_lory) approves them with" in body
    # Outside code spans and autolinks nothing is left that Markdown would read as markup.
    markup = outside_code(body)
    assert re.search(r"(?<!\\)[`|<>]", markup) is None, markup


@pytest.mark.parametrize(
    ("value", "span"),
    [
        ("a", "`a`"),
        ("a`b", "``a`b``"),
        ("`a", "`` `a ``"),
        ("a``b`", "``` a``b` ```"),
        (" a", "`  a `"),
        ("x\ny\r\tz", "`x y z`"),
        ("", '""'),
    ],
)
def test_code_span(value: str, span: str) -> None:
    assert _code(value) == span


# --- which open bot PRs a newer one makes moot -----------------------------------------------


def _pr(number: int, branch: str, state: str = "open") -> PullRequest:
    return PullRequest(
        number=number,
        project="demo",
        branch=branch,
        title=branch,
        body="",
        state=state,
        base_commit="0" * 40,
        head_commit="1" * 40,
        created_at="2026-11-21T00:00:00Z",
    )


def test_supersessions_rank_within_each_kind_only() -> None:
    prs = [
        _pr(1, "wheelstock/demo-1.1"),
        _pr(2, "wheelstock/rerender/v2"),
        _pr(3, "wheelstock/demo-1.10"),  # 1.10 > 1.9 > 1.1 by PEP 440, not by text
        _pr(4, "wheelstock/demo-1.9"),
        _pr(5, "wheelstock/rerender/v3"),
        _pr(6, "wheelstock/demo-2.0", state="closed"),  # closed PRs rank for nothing
        _pr(7, "feature/demo-9"),  # not a bot branch
    ]
    moot = supersessions("demo", prs, touched=lambda pr: pr.number == 4)
    assert [(m.old.number, m.new.number, m.close) for m in moot] == [
        (1, 3, True),
        (2, 5, True),
        (4, 3, False),  # someone pushed to it: left open
    ]


def test_supersessions_with_one_pr_per_kind_is_empty() -> None:
    prs = [_pr(1, "wheelstock/demo-1.1"), _pr(2, "wheelstock/rerender/v2")]
    assert supersessions("demo", prs, touched=lambda pr: False) == []


# --- plans: facts in, a decision out -----------------------------------------------------------

BUMP_11 = OpenPR(11, "bump", "1.1", touched=False)
BUMP_12_TOUCHED = OpenPR(12, "bump", "1.2", touched=True)
RERENDER_3 = OpenPR(13, "rerender", "3", touched=False)
WAITS = "'demo 1.0 → 1.3' waits"


@pytest.mark.parametrize(
    ("facts", "plan"),
    [
        pytest.param({}, Plan("open"), id="nothing-open"),
        pytest.param({"branch_has_pr": True}, Plan("skip"), id="branch-had-a-pr-ever"),
        pytest.param({"open_prs": [BUMP_11]}, Plan("open", closes=(11,)), id="supersedes-older"),
        pytest.param(
            {"open_prs": [BUMP_11, BUMP_12_TOUCHED]},
            Plan("open", closes=(11,), kept=(12,)),
            id="keeps-one-someone-pushed-to",
        ),
        pytest.param(
            {"open_prs": [OpenPR(14, "bump", "1.4", touched=False)]},
            Plan("open"),
            id="a-newer-open-one-is-not-older",
        ),
        pytest.param(
            {"open_prs": [BUMP_11, RERENDER_3], "max_open": 1},
            Plan("defer", f"demo: 1 bot PRs already open (limit 1); {WAITS}"),
            id="limit-counts-what-stays-open",
        ),
        pytest.param(
            {"open_prs": [BUMP_11], "max_open": 1},
            Plan("open", closes=(11,)),
            id="one-it-closes-does-not-count",
        ),
        pytest.param(
            {"open_prs": [BUMP_12_TOUCHED], "max_open": 1},
            Plan("defer", f"demo: 1 bot PRs already open (limit 1); {WAITS}"),
            id="one-it-keeps-counts",
        ),
        pytest.param(
            {"opened": 20},
            Plan("defer", f"demo: 20 PRs opened this tick (the limit); {WAITS}"),
            id="new-prs-per-tick",
        ),
    ],
)
def test_plan_proposal(facts: dict[str, Any], plan: Plan) -> None:
    given: dict[str, Any] = {
        "branch_has_pr": False,
        "open_prs": [],
        "max_open": 3,
        "opened": 0,
        "max_new": 20,
        **facts,
    }
    assert (
        plan_proposal(project="demo", kind="bump", version="1.3", title="demo 1.0 → 1.3", **given)
        == plan
    )


@pytest.mark.parametrize(
    ("current", "wanted", "prs", "closing"),
    [
        pytest.param("1.0", "1.1", [BUMP_11], [], id="still-wanted"),
        pytest.param(
            "1.0",
            None,
            [BUMP_11],
            [(11, "upstream's 1.1 is no longer a release to build (yanked or ignored)")],
            id="yanked-or-ignored",
        ),
        pytest.param("1.1", None, [BUMP_11], [(11, "main is already at 1.1")], id="main-got-there"),
        pytest.param("1.0", None, [BUMP_12_TOUCHED], [], id="someone-pushed"),
        pytest.param("1.0", None, [RERENDER_3], [], id="not-a-bump"),
    ],
)
def test_unwanted(
    current: str, wanted: str | None, prs: list[OpenPR], closing: list[tuple[int, str]]
) -> None:
    assert unwanted(current, wanted, prs) == closing
