"""Typed getters for untrusted JSON- and YAML-shaped data, each naming where a value is wrong."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Lowercase only, and the whole string: hashlib's hexdigest() is what every digest is compared to.
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Mismatch(ValueError):
    """A value is not what its reader expected: ``where`` it is, and what it should have been.

    Never meant to reach the user as is: each caller words it as its own error ("<where>:
    expected <expected>", "<where> is not <expected>", ...) and raises its own class from it.
    """

    def __init__(self, where: str, expected: str) -> None:
        super().__init__(f"{where}: expected {expected}")
        self.where = where
        self.expected = expected


def as_dict(value: object, where: str, *, expected: str = "an object") -> dict[str, Any]:
    """``value`` if it is a JSON object (a dict)."""
    if not isinstance(value, dict):
        raise Mismatch(where, expected)
    return value


def as_mapping(value: object, where: str, *, expected: str = "a mapping") -> Mapping[str, Any]:
    """``value`` if it is any mapping (a YAML document's, a read-only view)."""
    if not isinstance(value, Mapping):
        raise Mismatch(where, expected)
    return value


def as_list(value: object, where: str, *, expected: str = "a list") -> list[Any]:
    """``value`` if it is a JSON array (a list; a tuple or a string is not one)."""
    if not isinstance(value, list):
        raise Mismatch(where, expected)
    return value


def as_str(
    value: object, where: str, *, nonempty: bool = False, expected: str | None = None
) -> str:
    """``value`` if it is a string (and, with ``nonempty``, not ``""``)."""
    if not isinstance(value, str) or (nonempty and not value):
        raise Mismatch(where, expected or ("a non-empty string" if nonempty else "a string"))
    return value


def as_strings(value: object, where: str, *, expected: str = "a list") -> list[str]:
    """``value`` if it is a list of strings; a bad item is named ``where[index]``."""
    items = as_list(value, where, expected=expected)
    for index, item in enumerate(items):
        as_str(item, f"{where}[{index}]")
    return items


def as_int(
    value: object, where: str, *, nonnegative: bool = False, expected: str | None = None
) -> int:
    """``value`` if it is an integer (never a bool: JSON's ``true`` is not 1 here)."""
    if isinstance(value, bool) or not isinstance(value, int) or (nonnegative and value < 0):
        raise Mismatch(
            where, expected or ("a non-negative integer" if nonnegative else "an integer")
        )
    return value


def is_sha256(value: object) -> bool:
    """Whether ``value`` is a sha256 hex digest as hashlib writes it: 64 lowercase hex digits."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def as_sha256(value: object, where: str, *, expected: str = "64 lowercase hex digits") -> str:
    """``value`` if it is a string (else "a string") holding a sha256 hex digest."""
    text = as_str(value, where)
    if not is_sha256(text):
        raise Mismatch(where, expected)
    return text
