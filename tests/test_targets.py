"""Tests for bot.build.targets: real interpreters and shims, and upstream coverage by tags."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.build.targets import (
    Coverage,
    Interpreter,
    find_pythons,
    host_interpreter,
    parse_python_option,
    upstream_coverage,
)

# A glibc 2.35 x86_64 host, as packaging.tags.platform_tags() lists it (linux_* last).
GLIBC = [
    *(f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
MUSL = [*(f"musllinux_1_{minor}_x86_64" for minor in range(2, -1, -1)), "linux_x86_64"]


def coverage(
    names: list[str], pythons: tuple[str, ...], plats: list[str] = GLIBC, **kw: Any
) -> Coverage:
    return upstream_coverage(
        names, pythons, machine="x86_64", platform_tags=plats, host_platform="linux", **kw
    )


@pytest.mark.parametrize(
    ("names", "pythons", "covered", "missing"),
    [
        pytest.param(["demo-1.0-py3-none-any.whl"], ("3.11", "3.12"), True, (), id="py3-pure"),
        pytest.param(["demo-1.0-py2.py3-none-any.whl"], ("3.12",), True, (), id="py2.py3-pure"),
        pytest.param(["demo-1.0-py2-none-any.whl"], ("3.12",), False, ("3.12",), id="py2-only"),
        pytest.param(
            ["python_geohash-0.9.2-cp38-abi3-manylinux_2_17_x86_64.whl"],
            ("3.11", "3.12"),
            True,
            (),
            id="abi3-covers-later",
        ),
        pytest.param(
            ["demo-1.0-cp312-abi3-manylinux_2_17_x86_64.whl"],
            ("3.11", "3.12"),
            False,
            ("3.11",),
            id="abi3-not-earlier",
        ),
        pytest.param(
            ["demo-1.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"],
            ("3.11", "3.12"),
            False,
            ("3.11",),
            id="cp312-only",
        ),
        pytest.param(
            [
                "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                "demo-1.0-cp312-cp312-manylinux_2_28_x86_64.whl",
            ],
            ("3.11", "3.12"),
            True,
            (),
            id="one-per-python",
        ),
        pytest.param(
            ["demo-1.0-cp312-cp312-manylinux_2_39_x86_64.whl"],
            ("3.12",),
            False,
            ("3.12",),
            id="glibc-newer-than-host",
        ),
        pytest.param(
            ["demo-1.0-cp312-cp312-musllinux_1_2_x86_64.whl"],
            ("3.12",),
            False,
            ("3.12",),
            id="musl-on-glibc",
        ),
        pytest.param(
            ["demo-1.0-cp312-cp312-manylinux_2_17_aarch64.whl"],
            ("3.12",),
            False,
            ("3.12",),
            id="other-arch",
        ),
        pytest.param(
            [
                "demo-1.0-cp312-cp312-macosx_11_0_arm64.whl",
                "demo-1.0-cp312-cp312-win_amd64.whl",
            ],
            ("3.12",),
            False,
            ("3.12",),
            id="macos-windows",
        ),
        pytest.param(
            ["demo-1.0-cp312-cp312-linux_x86_64.whl"], ("3.12",), False, ("3.12",), id="linux_*"
        ),
        pytest.param(
            ["demo-1.0-py3-none-manylinux_2_17_x86_64.whl"],
            ("3.11", "3.12"),
            True,
            (),
            id="py3-none-platform",
        ),
        pytest.param(
            ["demo-1.0-cp312-none-any.whl"], ("3.11", "3.12"), False, ("3.11",), id="cp312-any"
        ),
        pytest.param([], ("3.11", "3.12"), False, ("3.11", "3.12"), id="no-wheels"),
        pytest.param(
            ["demo-1.0.tar.gz", "demo-1.0-py3-none.whl", "demo-x!y-py3-none-any.whl", "README"],
            ("3.12",),
            False,
            ("3.12",),
            id="invalid-ignored",
        ),
    ],
)
def test_upstream_coverage(
    names: list[str], pythons: tuple[str, ...], covered: bool, missing: tuple[str, ...]
) -> None:
    result = coverage(names, pythons)
    assert (result.covered, result.missing) == (covered, missing)


def test_musllinux_wheel_covers_a_musl_host() -> None:
    assert coverage(["demo-1.0-cp312-cp312-musllinux_1_1_x86_64.whl"], ("3.12",), MUSL).covered


def test_reason_names_the_pure_wheel() -> None:
    result = coverage(["demo-1.0.tar.gz", "demo-1.0-py3-none-any.whl"], ("3.12",))
    assert result == Coverage(True, "upstream ships a pure wheel (demo-1.0-py3-none-any.whl)", ())


def test_reason_names_the_pythons_and_platform() -> None:
    result = coverage(["g-0.9.2-cp38-abi3-manylinux_2_17_x86_64.whl"], ("3.11", "3.12"))
    assert result.reason == "upstream ships wheels for cp311, cp312 (linux x86_64)"


def test_reason_for_a_partial_cover_and_none_for_nothing() -> None:
    partial = coverage(["demo-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"], ("3.11", "3.12"))
    assert partial.reason == "upstream ships wheels for cp312 (linux x86_64), not cp311"
    assert coverage(["demo-1.0-cp312-cp312-win_amd64.whl"], ("3.12",)).reason is None


def test_only_the_host_platform_is_judged() -> None:
    linux = ["demo-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"]
    assert coverage(linux, ("3.12",), platforms=("linux", "darwin")).covered
    elsewhere = coverage([], ("3.12",), platforms=("darwin", "win32"))
    assert elsewhere == Coverage(
        True, "targets darwin, win32 only; this builder makes linux wheels", ()
    )


def test_a_pure_wheel_covers_any_platform() -> None:
    result = coverage(["demo-1.0-py3-none-any.whl"], ("3.12",), platforms=("darwin",))
    assert result.reason == "upstream ships a pure wheel (demo-1.0-py3-none-any.whl)"


def test_duplicate_pythons_count_once() -> None:
    assert coverage([], ("3.12", "3.12")).missing == ("3.12",)


@pytest.mark.parametrize("pythons", [(), ("3",), ("three",)])
def test_bad_pythons_are_refused(pythons: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        coverage([], pythons)


def test_host_platform_tags_by_default() -> None:
    # The host's own default: whatever it is, a pure wheel covers and no wheel does not.
    host = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert upstream_coverage(["d-1-py3-none-any.whl"], (host,)).covered
    assert not upstream_coverage([], (host,)).covered


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3.12=/x", ("3.12", "/x")),
        ("3.9=/opt/py/bin/python3.9", ("3.9", "/opt/py/bin/python3.9")),
        ("3.12=/odd=name", ("3.12", "/odd=name")),
    ],
)
def test_parse_python_option(text: str, expected: tuple[str, str]) -> None:
    assert parse_python_option(text) == expected


@pytest.mark.parametrize("text", ["3.12", "=/x", "3.1x=/x", "3=/x", "3.12=", "3.12=  "])
def test_parse_python_option_refuses(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_python_option(text)
    assert "\n" not in str(info.value)
    assert repr(text) in str(info.value)


def host_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def script(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def answer(major: int, minor: int, implementation: str = "cpython") -> str:
    info = {
        "version": [major, minor],
        "full_version": f"{major}.{minor}.0",
        "implementation": implementation,
        "executable": "/fake/python",
    }
    return f"echo 'a warning first'\necho '{json.dumps(info)}'\n"


def test_host_interpreter() -> None:
    host = host_interpreter()
    assert host == Interpreter(host_version(), sys.executable, "cpython", platform.python_version())


def test_configured_interpreter_is_run() -> None:
    found, missing = find_pythons([host_version()], {host_version(): sys.executable}, path="")
    assert missing == {}
    assert found[host_version()].full_version == platform.python_version()
    assert found[host_version()].implementation == sys.implementation.name
    assert os.path.isabs(found[host_version()].path)


def test_discovered_on_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    link = bin_dir / f"python{host_version()}"
    link.symlink_to(sys.executable)
    found, missing = find_pythons([host_version()], path=str(bin_dir))
    assert (found[host_version()].path, missing) == (str(link), {})


def test_wrong_version_shim_and_absent_are_missing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    script(bin_dir, "python3.99", answer(3, 11))
    script(bin_dir, "python3.98", "echo 'pyenv: python3.98: command not found' >&2\nexit 127\n")
    found, missing = find_pythons(
        ["3.99", "3.98", "3.97", "3.96"], {"3.96": str(tmp_path / "nope")}, path=str(bin_dir)
    )
    assert found == {}
    assert list(missing) == ["3.99", "3.98", "3.97", "3.96"]
    assert missing["3.99"].endswith("is Python 3.11.0, not 3.99")
    assert missing["3.98"] == (
        f"python3.98 on PATH ({bin_dir / 'python3.98'}): "
        "exit 127: pyenv: python3.98: command not found"
    )
    assert missing["3.97"] == "no python3.97 on PATH"
    assert missing["3.96"].startswith(f"configured {tmp_path / 'nope'}: cannot run: ")


def test_configured_wins_and_does_not_fall_back(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    (bin_dir).mkdir()
    (bin_dir / f"python{host_version()}").symlink_to(sys.executable)
    found, missing = find_pythons(
        [host_version()], {host_version(): str(tmp_path / "nope")}, path=str(bin_dir)
    )
    assert found == {}
    assert list(missing) == [host_version()]


def test_a_good_answer_from_a_wrapper_uses_its_executable(tmp_path: Path) -> None:
    found, missing = find_pythons(
        ["3.99"], path=str(script(tmp_path, "python3.99", answer(3, 99)).parent)
    )
    assert missing == {}
    assert found["3.99"] == Interpreter("3.99", "/fake/python", "cpython", "3.99.0")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (answer(3, 99, "pypy"), "is pypy 3.99.0, not CPython"),
        ("echo hello\n", "did not answer like a Python: hello"),
        ("exit 0\n", "did not answer like a Python: no output"),
        ('echo \'{"version": "3.99"}\'\n', 'did not answer like a Python: {"version": "3.99"}'),
        ("exec sleep 5\n", "did not answer within 0.3 s"),
    ],
)
def test_unusable_answers(tmp_path: Path, body: str, reason: str) -> None:
    bin_dir = script(tmp_path, "python3.99", body).parent
    found, missing = find_pythons(["3.99"], path=str(bin_dir), timeout=0.3)
    assert found == {}
    assert missing["3.99"].endswith(": " + reason)


def test_runner_is_called_isolated_with_a_timeout() -> None:
    calls: list[tuple[list[str], dict[str, Any]]] = []

    def runner(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append((args, kwargs))
        return subprocess.CompletedProcess(args, 0, stdout="")

    find_pythons(["3.12"], {"3.12": "/x/python"}, runner=runner, timeout=2)
    [(args, kwargs)] = calls
    assert args[:3] == ["/x/python", "-I", "-c"]
    assert kwargs["timeout"] == 2


def test_bad_wanted_version_is_refused() -> None:
    with pytest.raises(ValueError):
        find_pythons(["3"], path="")
