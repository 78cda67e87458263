"""Lint never crashes: mutated YAML documents always give problems with a file and a line."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import lint, registry

VALID = {
    "project": "demo",
    "maintainers": ["alice"],
    "consent": "https://example.org/demo/1",
    "build": {"pythons": ["3.12"], "platforms": ["linux"]},
    "versions": {"ignore": ["==1.0"], "prereleases": False},
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.just("x" * 100_000),  # huge string
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def dump(doc: object, indent: int = 0) -> str:
    """YAML text for a value, with flow collections so any shape stays parseable."""
    pad = " " * indent
    if isinstance(doc, dict):
        if not doc:
            return "{}\n"
        return "".join(
            f"{pad}{key!r}: {dump(value, indent + 2).lstrip()}" for key, value in doc.items()
        )
    if isinstance(doc, list):
        return "[" + ", ".join(dump(v).strip() or "null" for v in doc) + "]\n"
    if doc is None:
        return "null\n"
    if isinstance(doc, str):
        return repr(doc).replace("\\", "\\\\") + "\n"
    return f"{doc}\n"


@st.composite
def mutated_entry(draw: st.DrawFn) -> str:
    doc: dict[str, object] = {
        k: v for k, v in VALID.items() if draw(st.booleans()) or k == "project"
    }
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*VALID, "build", "versions", "skip", "maintainer", "xyz"]))
        doc[key] = draw(values)
    return "".join(f"{k}: {dump(v, 2).lstrip()}" for k, v in doc.items())


deep = st.integers(1, 3000).map(lambda n: "project: " + "[" * n + "]" * n + "\n")
deep_maps = st.integers(1, 1500).map(lambda n: "".join(f"{' ' * i}k{i}:\n" for i in range(n)))
aliases = st.sampled_from(
    [
        "project: &p demo\nmaintainers: [*p, *p]\nconsent: *p\n",
        "a: &a [*a]\n",
        "project: demo\nmaintainers: &m [alice]\nconsent: https://e.org/x\nbuild: {pythons: *m}\n",
        "a: &a [1,2,3,4,5,6,7,8,9]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nproject: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n",
        "<<: *undefined\n",
        "project: !!python/object:os.system demo\n",
        "project: !custom demo\n",
    ]
)
duplicates = st.lists(
    st.sampled_from(["project", "consent", "maintainers"]), min_size=2, max_size=5
).map(lambda keys: "".join(f"{k}: demo\n" for k in keys))
documents = st.one_of(
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.text(max_size=300),
    mutated_entry(),
    deep,
    deep_maps,
    aliases,
    duplicates,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=documents, raw=st.booleans())
def test_lint_never_crashes(text: str, raw: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.yaml"
        if raw:
            path.write_bytes(text.encode("utf-8", "surrogatepass")[:1_000_000])
        else:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        problems = lint.lint([path])
        entries = registry.load([path]).entries
    assert bool(problems) != bool(entries)  # either a valid entry or at least one problem
    for problem in problems:
        assert problem.path == path
        assert problem.line >= 1 and problem.column >= 1
        assert problem.code in registry.CODES
        assert problem.message and "\n" not in problem.message
