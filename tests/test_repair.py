"""bot/build/repair.py and importcheck.py: auditwheel repair and the import check, real wheels."""

from __future__ import annotations

import base64
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.build.importcheck import import_check, top_level_modules
from bot.build.repair import Checked, is_pure, repair, run_plain

ENV = {"PATH": os.environ.get("PATH", os.defpath)}
PLAIN_TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
LINUX_TAG = f"{PLAIN_TAG}-{PLAIN_TAG}-" + re.sub(r"[-.]", "_", sysconfig.get_platform())
EXT_SUFFIX = str(sysconfig.get_config_var("EXT_SUFFIX"))

DEMO_C = """\
#include <Python.h>
static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, "The answer."}, {NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "demo", NULL, -1, methods};
PyMODINIT_FUNC PyInit_demo(void) { return PyModule_Create(&module); }
"""
# Links libwsfoo.so, which no manylinux policy allows, so auditwheel must graft it or refuse.
# getpid() keeps libc in DT_NEEDED: auditwheel tells glibc from musl by it.
LINKED_C = """\
#include <Python.h>
#include <unistd.h>
int wsfoo(void);
static PyObject *f(PyObject *self, PyObject *args) {
    return PyLong_FromLong(wsfoo() + 0 * getpid());
}
static PyMethodDef methods[] = {{"f", f, METH_NOARGS, NULL}, {NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "linked", NULL, -1, methods};
PyMODINIT_FUNC PyInit_linked(void) { return PyModule_Create(&module); }
"""
SETUP_PY = """\
from setuptools import Extension, setup
setup(ext_modules=[
    Extension("demo", ["demo.c"]),
    Extension("linked", ["linked.c"], libraries=["wsfoo"], library_dirs=["ext"]),
])
"""
PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "demo"
version = "1.0"
"""


@dataclass
class Counting:
    """A plain runner that remembers every argv it was asked to run."""

    calls: list[list[str]] = field(default_factory=list)

    def __call__(
        self, argv: Sequence[str], cwd: Path, env: Mapping[str, str]
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append([str(a) for a in argv])
        return run_plain(argv, cwd, env)


def assemble(
    directory: Path,
    name: str,
    files: Mapping[str, bytes | str],
    *,
    tag: str = "py3-none-any",
    requires: Sequence[str] = (),
    top_level: str | None = None,
    unrecorded: Mapping[str, bytes] | None = None,
) -> Path:
    """A wheel with a hashed RECORD (PEP 427); `unrecorded` members are left out of RECORD."""
    info = f"{name}-1.0.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    purelib = "true" if tag.endswith("-any") else "false"
    members = {k: v.encode() if isinstance(v, str) else v for k, v in files.items()}
    members[f"{info}/METADATA"] = metadata.encode()
    members[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: {purelib}\nTag: {tag}\n"
    ).encode()
    if top_level is not None:
        members[f"{info}/top_level.txt"] = top_level.encode()
    record = ""
    for member, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{member},sha256={digest},{len(data)}\n"
    members[f"{info}/RECORD"] = f"{record}{info}/RECORD,,\n".encode()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-1.0-{tag}.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in {**members, **(unrecorded or {})}.items():
            archive.writestr(member, data)
    return path


@dataclass(frozen=True)
class Compiled:
    """The C fixture's two platform wheels and the directory that holds libwsfoo.so."""

    demo: Path
    linked: Path
    libdir: Path


@pytest.fixture(scope="session")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    """Compile the fixture project once with setuptools and gcc (about a second)."""
    pytest.importorskip("setuptools")
    compiler = shutil.which(str(sysconfig.get_config_var("CC") or "cc").split()[0])
    if compiler is None:
        pytest.skip("no C compiler")
    root = tmp_path_factory.mktemp("cext")
    project = root / "demo-1.0"
    (project / "ext").mkdir(parents=True)
    (project / "demo.c").write_text(DEMO_C)
    (project / "linked.c").write_text(LINKED_C)
    (project / "ext" / "wsfoo.c").write_text("int wsfoo(void) { return 7; }\n")
    (project / "setup.py").write_text(SETUP_PY)
    (project / "pyproject.toml").write_text(PYPROJECT)
    libwsfoo = project / "ext" / "libwsfoo.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-o", libwsfoo, project / "ext" / "wsfoo.c"], check=True
    )
    # No bdist_wheel: setuptools before 70.1 needs the `wheel` package for it, which the test
    # environment lacks; build_ext compiles the same way and the wheel is assembled around it.
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", "lib", "--build-temp", "o"],
        cwd=project,
        check=True,
        capture_output=True,
    )
    wheels = root / "wheels"

    def platform_wheel(module: str) -> Path:
        so = f"{module}{EXT_SUFFIX}"
        data = (project / "lib" / so).read_bytes()
        return assemble(wheels, module, {so: data}, tag=LINUX_TAG, top_level=f"{module}\n")

    return Compiled(platform_wheel("demo"), platform_wheel("linked"), libwsfoo.parent)


@pytest.fixture(scope="session")
def repaired(compiled: Compiled, tmp_path_factory: pytest.TempPathFactory) -> Checked:
    return repair(compiled.demo, tmp_path_factory.mktemp("repaired"), run=run_plain, env=ENV)


def venv_python(workdir: Path) -> str:
    (venv,) = workdir.glob("import-check-*/venv")
    return str(venv / "bin" / "python")


def test_is_pure() -> None:
    assert is_pure("demo-1.0-py3-none-any.whl")
    assert is_pure(Path("dist/demo-1.0-py2.py3-none-any.whl"))
    assert not is_pure("demo-1.0-cp311-cp311-linux_x86_64.whl")
    assert not is_pure("demo-1.0-cp311-abi3-manylinux_2_17_x86_64.whl")
    assert not is_pure("demo-1.0-cp311-abi3-any.whl")


def test_top_level_modules_prefers_top_level_txt(tmp_path: Path) -> None:
    wheel = assemble(
        tmp_path,
        "demo",
        {"demo/__init__.py": "", "other.py": ""},
        top_level="_demo\ndemo\nnot a name; import os\n\n",
    )
    # The private _demo is demo's business; the hostile line is no module name.
    assert top_level_modules(wheel) == ("demo",)


def test_top_level_modules_from_record(tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {
        "pkg/__init__.py": "",
        "pkg/sub.py": "",
        "mod.py": "",
        f"ext{EXT_SUFFIX}": b"\x7fELF",
        "_private.py": "",
        "ns/inner/__init__.py": "",  # ns is a PEP 420 namespace: its first regular package
        "ns/inner/x.py": "",
        "ns/README.txt": "",
        "demo-1.0.data/purelib/datapkg/__init__.py": "",
        "demo-1.0.data/scripts/tool.py": "",
        "__pycache__/mod.cpython-311.pyc": b"",
        "not-a-name/__init__.py": "",
        "README.txt": "",
    }
    wheel = assemble(tmp_path, "demo", files)
    assert top_level_modules(wheel) == ("datapkg", "ext", "mod", "ns.inner", "pkg")
    only_private = assemble(tmp_path / "private", "demo", {"_only.py": ""})
    assert top_level_modules(only_private) == ("_only",)


def test_pure_wheel_skips_auditwheel(tmp_path: Path) -> None:
    wheel = assemble(tmp_path / "dist", "pure", {"pure/__init__.py": "VALUE = 1\n"})
    runner = Counting()
    result = repair(wheel, tmp_path / "out", run=runner, env=ENV)
    assert runner.calls == []
    assert result.ok and result.policy is None and result.reason is None
    assert result.wheel == tmp_path / "out" / wheel.name
    assert result.wheel.read_bytes() == wheel.read_bytes()


def test_platform_wheel_without_elf_is_refused(tmp_path: Path) -> None:
    wheel = assemble(tmp_path / "dist", "noelf", {"noelf.py": "X = 1\n"}, tag=LINUX_TAG)
    result = repair(wheel, tmp_path / "out", run=run_plain, env=ENV)
    assert not result.ok and result.wheel is None
    assert result.reason == (
        f"auditwheel cannot repair {wheel.name}: This does not look like a platform wheel, no ELF "
        "executable or shared library file (including compiled Python C extension) found in the "
        "wheel archive"
    )
    assert "auditwheel repair --plat auto" in result.log
    assert list((tmp_path / "out").iterdir()) == []


def test_member_missing_from_record_is_refused_before_auditwheel(tmp_path: Path) -> None:
    # auditwheel audits only what RECORD lists, then repacks everything: a hidden ELF would
    # come out tagged manylinux without ever being looked at.
    wheel = assemble(
        tmp_path / "dist",
        "hidden",
        {"hidden.py": ""},
        tag=LINUX_TAG,
        unrecorded={"hidden/evil.so": b"\x7fELF"},
    )
    runner = Counting()
    result = repair(wheel, tmp_path / "out", run=runner, env=ENV)
    assert runner.calls == []
    assert not result.ok and result.reason is not None
    assert result.reason.startswith(f"auditwheel cannot repair {wheel.name}: bad RECORD: ")
    assert "hidden/evil.so is not mentioned in RECORD" in result.reason


@pytest.mark.slow
def test_c_extension_is_repaired_to_the_oldest_policy(
    compiled: Compiled, repaired: Checked
) -> None:
    assert repaired.ok, repaired.log
    assert repaired.wheel is not None and repaired.policy is not None
    assert re.fullmatch(rf"manylinux_\d+_\d+_{platform.machine()}", repaired.policy)
    platforms = repaired.wheel.name.removesuffix(".whl").split("-")[-1].split(".")
    assert repaired.policy in platforms
    assert all(p.startswith("manylinux") for p in platforms)
    assert list(repaired.wheel.parent.iterdir()) == [repaired.wheel]  # no scratch left behind
    # The oldest policy the wheel satisfies, as `auditwheel show` reports it for the input.
    show = run_plain(
        [sys.executable, "-m", "auditwheel", "show", str(compiled.demo)], compiled.demo.parent, ENV
    )
    shown = re.search(r'platform\s+tag:\s+"([^"]+)"', show.stdout)
    assert shown is not None and shown[1] == repaired.policy, show.stdout
    with zipfile.ZipFile(repaired.wheel) as archive:
        assert f"demo{EXT_SUFFIX}" in archive.namelist()


@pytest.mark.slow
def test_repaired_c_extension_imports_in_a_fresh_venv(repaired: Checked, tmp_path: Path) -> None:
    assert repaired.wheel is not None
    result = import_check(repaired.wheel, sys.executable, tmp_path, run=run_plain, env=ENV)
    assert result.ok, result.log
    assert result.wheel == repaired.wheel and result.reason is None
    python = venv_python(tmp_path)
    called = run_plain([python, "-I", "-c", "import demo; print(demo.answer())"], tmp_path, ENV)
    assert called.stdout.strip() == "42"
    # A fresh venv: nothing of the environment running the tests is importable there.
    assert run_plain([python, "-I", "-c", "import pytest"], tmp_path, ENV).returncode != 0


@pytest.mark.slow
def test_unlocatable_library_is_refused_with_auditwheels_reason(
    compiled: Compiled, tmp_path: Path
) -> None:
    result = repair(compiled.linked, tmp_path / "out", run=run_plain, env=ENV)
    assert not result.ok and result.wheel is None and result.policy is None
    assert result.reason == (
        f"auditwheel cannot repair {compiled.linked.name}: ValueError: Cannot repair wheel, "
        'because required library "libwsfoo.so" could not be located'
    )
    # auditwheel leaves a half-made linux_* wheel in its wheelhouse; none reaches out_dir.
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_findable_library_is_grafted_and_still_works(compiled: Compiled, tmp_path: Path) -> None:
    env = {**ENV, "LD_LIBRARY_PATH": str(compiled.libdir)}
    result = repair(compiled.linked, tmp_path / "out", run=run_plain, env=env)
    assert result.ok, result.log
    assert result.wheel is not None and result.policy is not None
    with zipfile.ZipFile(result.wheel) as archive:
        assert any(re.fullmatch(r"linked\.libs/libwsfoo-\w+\.so", n) for n in archive.namelist())
    checked = import_check(result.wheel, sys.executable, tmp_path / "check", run=run_plain, env=ENV)
    assert checked.ok, checked.log
    python = venv_python(tmp_path / "check")
    called = run_plain([python, "-I", "-c", "import linked; print(linked.f())"], tmp_path, ENV)
    assert called.stdout.strip() == "7"


@pytest.mark.slow
def test_import_failure_fails_with_the_traceback(tmp_path: Path) -> None:
    body = "import os\n\nraise ImportError('boom needs a GPU')\n"
    wheel = assemble(tmp_path / "dist", "boom", {"boom/__init__.py": body})
    runner = Counting()
    result = import_check(wheel, sys.executable, tmp_path / "work", run=runner, env=ENV)
    assert not result.ok and result.wheel is None
    assert result.reason == "import of boom failed: ImportError: boom needs a GPU"
    assert "Traceback (most recent call last)" in result.log
    assert "raise ImportError('boom needs a GPU')" in result.log
    # Only the import itself goes through the sandbox runner.
    assert len(runner.calls) == 1 and runner.calls[0][-1] == "boom"


@pytest.mark.slow
def test_crashing_import_names_the_signal(tmp_path: Path) -> None:
    wheel = assemble(tmp_path / "dist", "crash", {"crash.py": "import os\nos.abort()\n"})
    result = import_check(wheel, sys.executable, tmp_path / "work", run=run_plain, env=ENV)
    assert not result.ok
    assert result.reason == "import of crash failed: killed by SIGABRT"


def offline(tmp_path: Path, links: Path) -> dict[str, str]:
    """pip settings that reach no network: no index, only a local find-links directory."""
    links.mkdir(parents=True, exist_ok=True)
    return {
        **ENV,
        "HOME": str(tmp_path),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(links),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }


@pytest.mark.slow
def test_uninstallable_dependency_fails_with_one_line(tmp_path: Path) -> None:
    files = {"needy/__init__.py": "import nosuchdep\n"}
    wheel = assemble(tmp_path / "dist", "needy", files, requires=["nosuchdep>=1"])
    install_env = offline(tmp_path, tmp_path / "empty")
    result = import_check(
        wheel, sys.executable, tmp_path / "work", run=run_plain, env=ENV, install_env=install_env
    )
    assert not result.ok and result.reason is not None
    assert "\n" not in result.reason
    assert result.reason.startswith(
        "cannot install the dependencies of needy as wheels (nosuchdep>=1): ERROR: "
    )
    assert "--only-binary :all:" in result.log


@pytest.mark.slow
def test_dependencies_that_apply_are_installed_as_wheels(tmp_path: Path) -> None:
    links = tmp_path / "links"
    assemble(links, "helper", {"helper.py": "VALUE = 3\n"})
    requires = ["helper", "neverneeded; python_version < '3'", "extraonly; extra == 'x'"]
    files = {"user/__init__.py": "import helper\nassert helper.VALUE == 3\n"}
    wheel = assemble(tmp_path / "dist", "user", files, requires=requires)
    host = Counting()
    result = import_check(
        wheel,
        sys.executable,
        tmp_path / "work",
        run=run_plain,
        env=ENV,
        install_env=offline(tmp_path, links),
        host=host,
    )
    assert result.ok, result.log
    (pip,) = [argv for argv in host.calls if argv[1:3] == ["-m", "pip"]]
    assert pip[-1] == "helper" and "neverneeded" not in pip and "extraonly" not in pip


def test_wheel_without_modules_passes_with_a_note(tmp_path: Path) -> None:
    wheel = assemble(tmp_path, "empty", {"empty-1.0.data/data/share/doc.txt": "hi\n"})
    runner, host = Counting(), Counting()
    result = import_check(wheel, sys.executable, tmp_path / "work", run=runner, env=ENV, host=host)
    assert result.ok and result.wheel == wheel
    assert "no importable module" in result.log
    assert runner.calls == [] and host.calls == []


@pytest.mark.slow
def test_cached_base_venv_is_copied_not_made_again(repaired: Checked, tmp_path: Path) -> None:
    assert repaired.wheel is not None
    cache = tmp_path / "venvs"
    first, second = Counting(), Counting()
    for n, host in enumerate((first, second)):
        result = import_check(
            repaired.wheel,
            sys.executable,
            tmp_path / f"work{n}",
            run=run_plain,
            env=ENV,
            host=host,
            venv_cache=cache,
        )
        assert result.ok, result.log
    assert [argv[1:3] for argv in first.calls] == [["-m", "venv"], ["-I", "-c"]]
    assert second.calls == []  # the copy needs no interpreter start-up
    assert "venv: copied" in result.log
    # A damaged entry costs a venv of the check's own, not the check.
    (probe,) = cache.glob("*/probe.json")
    probe.write_text("{")
    result = import_check(
        repaired.wheel, sys.executable, tmp_path / "work2", run=run_plain, env=ENV, venv_cache=cache
    )
    assert result.ok, result.log


def test_missing_interpreter_fails_with_a_reason(tmp_path: Path) -> None:
    wheel = assemble(tmp_path, "some", {"some.py": ""})
    missing = str(tmp_path / "no" / "python")
    result = import_check(wheel, missing, tmp_path / "work", run=run_plain, env=ENV)
    assert not result.ok
    assert (
        result.reason
        == f"cannot create a venv with {missing}: {missing}: No such file or directory"
    )
