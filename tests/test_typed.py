"""Typed getters: what each accepts, and how a refusal names where and what was expected."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest

from bot import typed

SHA = "0123456789abcdef" * 4

Getter = Callable[[object, str], object]


@pytest.mark.parametrize(
    ("getter", "value"),
    [
        (typed.as_dict, {}),
        (typed.as_dict, {"a": 1}),
        (typed.as_mapping, {"a": 1}),
        (typed.as_mapping, MappingProxyType({"a": 1})),
        (typed.as_list, []),
        (typed.as_list, [1, "a"]),
        (typed.as_str, ""),
        (typed.as_str, "a"),
        (typed.as_strings, []),
        (typed.as_strings, ["a", ""]),
        (typed.as_int, 0),
        (typed.as_int, -3),
        (typed.as_sha256, SHA),
    ],
)
def test_a_good_value_comes_back_as_it_was(getter: Getter, value: object) -> None:
    assert getter(value, "x") is value


@pytest.mark.parametrize(
    ("getter", "value", "expected"),
    [
        (typed.as_dict, None, "an object"),
        (typed.as_dict, [("a", 1)], "an object"),
        (typed.as_dict, MappingProxyType({}), "an object"),
        (typed.as_mapping, [], "a mapping"),
        (typed.as_list, None, "a list"),
        (typed.as_list, (1,), "a list"),
        (typed.as_list, "ab", "a list"),
        (typed.as_str, None, "a string"),
        (typed.as_str, 1, "a string"),
        (typed.as_str, b"a", "a string"),
        (typed.as_strings, "ab", "a list"),
        (typed.as_int, None, "an integer"),
        (typed.as_int, True, "an integer"),
        (typed.as_int, 1.0, "an integer"),
        (typed.as_int, "1", "an integer"),
        (typed.as_sha256, None, "a string"),
        (typed.as_sha256, SHA.upper(), "64 lowercase hex digits"),
        (typed.as_sha256, SHA[:-1], "64 lowercase hex digits"),
        (typed.as_sha256, SHA + "0", "64 lowercase hex digits"),
        # A trailing newline is not a digest either (re's "$" would let it through).
        (typed.as_sha256, SHA + "\n", "64 lowercase hex digits"),
    ],
)
def test_a_bad_value_names_where_and_what_was_expected(
    getter: Getter, value: object, expected: str
) -> None:
    with pytest.raises(typed.Mismatch) as caught:
        getter(value, "files[0].x")
    assert (caught.value.where, caught.value.expected) == ("files[0].x", expected)
    assert str(caught.value) == f"files[0].x: expected {expected}"


def test_a_mismatch_is_a_value_error() -> None:
    # Callers that already translate ValueError (a bad cache entry, a journal) need no new clause.
    with pytest.raises(ValueError, match=r"^journal: expected an object$"):
        typed.as_dict([], "journal")


@pytest.mark.parametrize(
    ("call", "where", "expected"),
    [
        (lambda: typed.as_str("", "url", nonempty=True), "url", "a non-empty string"),
        (lambda: typed.as_str(3, "url", nonempty=True), "url", "a non-empty string"),
        (lambda: typed.as_str("", "url", nonempty=True, expected="a string"), "url", "a string"),
        (lambda: typed.as_int(-1, "size", nonnegative=True), "size", "a non-negative integer"),
        (lambda: typed.as_int(False, "size", nonnegative=True), "size", "a non-negative integer"),
        (
            lambda: typed.as_dict(1, "the document", expected="a JSON object"),
            "the document",
            "a JSON object",
        ),
        (lambda: typed.as_strings(["a", 2], "requires"), "requires[1]", "a string"),
    ],
)
def test_options_and_wording(call: Callable[[], Any], where: str, expected: str) -> None:
    with pytest.raises(typed.Mismatch) as caught:
        call()
    assert (caught.value.where, caught.value.expected) == (where, expected)


def test_options_accept_what_they_should() -> None:
    assert typed.as_str("a", "x", nonempty=True) == "a"
    assert typed.as_int(0, "x", nonnegative=True) == 0


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (SHA, True),
        (SHA.upper(), False),
        (SHA + "\n", False),
        ("", False),
        (None, False),
        (1, False),
    ],
)
def test_is_sha256(value: object, ok: bool) -> None:
    assert typed.is_sha256(value) is ok
