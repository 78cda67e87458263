"""A C extension built by the real builder: sandboxed, repaired, import-checked, per Python."""

from __future__ import annotations

import glob
import subprocess
import zipfile
from pathlib import Path

import pytest
from test_builder import file_member, write_tar

from bot.build.release import ReleaseBuild, build_release
from bot.build.sandbox import Sandbox, SandboxUnavailable, find_sandbox
from bot.build.targets import Interpreter, find_pythons, host_interpreter

pytestmark = pytest.mark.slow

C_SOURCE = """\
#include <Python.h>
#include <unistd.h>
static PyObject *answer(PyObject *self, PyObject *args) {
    return PyLong_FromLong(42 + 0 * getpid());
}
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, NULL}, {NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "wsdemo", NULL, -1, methods};
PyMODINIT_FUNC PyInit_wsdemo(void) { return PyModule_Create(&module); }
"""
PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "wsdemo"
version = "1.0"
"""
SETUP_PY = """\
from setuptools import Extension, setup
setup(ext_modules=[Extension("wsdemo", ["wsdemo.c"])])
"""


@pytest.fixture(scope="module")
def box() -> Sandbox:
    try:
        return find_sandbox()
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))


def c_sdist(tmp_path: Path) -> Path:
    return write_tar(
        tmp_path / "wsdemo-1.0.tar.gz",
        [
            file_member("wsdemo-1.0/pyproject.toml", PYPROJECT),
            file_member("wsdemo-1.0/setup.py", SETUP_PY),
            file_member("wsdemo-1.0/wsdemo.c", C_SOURCE),
        ],
    )


def other_python() -> Interpreter | None:
    """One more CPython than the host, where the machine has one (pyenv keeps them aside)."""
    host = host_interpreter()
    for candidate in sorted(glob.glob("/root/.pyenv/versions/3.1[2-9]*/bin/python3.1[2-9]")):
        version = Path(candidate).name.removeprefix("python")
        if version == host.version:
            continue
        found, _ = find_pythons([version], {version: candidate})
        if version in found:
            return found[version]
    return None


def test_c_extension_gets_a_manylinux_wheel_per_python_that_imports(
    box: Sandbox, tmp_path: Path
) -> None:
    pythons = [host_interpreter()]
    extra = other_python()
    if extra is not None:
        pythons.append(extra)
    out = tmp_path / "out"
    result = build_release(
        c_sdist(tmp_path),
        out,
        project="wsdemo",
        version="1.0",
        pythons=pythons,
        missing={"3.99": "not on PATH"},
        sandbox=box,
        frontends=tmp_path / "frontends",
        temp_root=tmp_path,
    )
    assert result.ok, result.log
    assert "Python 3.99 is not available here: not on PATH" in result.log
    assert result.pythons == tuple(p.version for p in pythons)
    assert len(result.wheels) == len(pythons)
    for interpreter, wheel in zip(pythons, result.wheels, strict=True):
        tag = f"cp{interpreter.version.replace('.', '')}"
        assert wheel.name.startswith(f"wsdemo-1.0-{tag}-{tag}-"), wheel.name
        assert "manylinux_" in wheel.name and "linux_x86_64" not in wheel.name.split(".")[0]
        # Host side: the staged wheel installs into a fresh venv of its Python and works.
        venv = tmp_path / f"venv-{interpreter.version}"
        subprocess.run([interpreter.path, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
            check=True,
        )
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import wsdemo; print(wsdemo.answer())"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.strip() == "42"
    assert "import of" not in result.log  # the import check passed for each
    assert list(tmp_path.glob("wheelstock-*")) == []  # no temporary tree left behind


def test_a_failing_import_check_keeps_the_wheel_out(box: Sandbox, tmp_path: Path) -> None:
    broken = C_SOURCE.replace(
        "return PyModule_Create(&module);",
        'PyErr_SetString(PyExc_ImportError, "needs a GPU"); return NULL;',
    )
    sdist = write_tar(
        tmp_path / "wsdemo-1.0.tar.gz",
        [
            file_member("wsdemo-1.0/pyproject.toml", PYPROJECT),
            file_member("wsdemo-1.0/setup.py", SETUP_PY),
            file_member("wsdemo-1.0/wsdemo.c", broken),
        ],
    )
    out = tmp_path / "out"

    def build(import_check: bool) -> ReleaseBuild:
        return build_release(
            sdist,
            out,
            project="wsdemo",
            version="1.0",
            pythons=[host_interpreter()],
            sandbox=box,
            temp_root=tmp_path,
            import_check=import_check,
        )

    result = build(import_check=True)
    assert not result.ok
    assert result.reason is not None and "needs a GPU" in result.reason
    assert "Traceback" in result.log
    assert not list(out.glob("*.whl"))
    # The registry's opt-out stages it all the same.
    skipped = build(import_check=False)
    assert skipped.ok, skipped.log
    assert "import check off" in skipped.log
    with zipfile.ZipFile(skipped.wheels[0]) as zf:
        assert any(n.startswith("wsdemo.") and n.endswith(".so") for n in zf.namelist())
