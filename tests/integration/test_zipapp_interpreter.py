"""The built cmdop.pyz run by a CPython it carries no native modules for: one clear line naming
the versions it does carry, and exit 1 (for every command, `agent run` included), instead of an
ImportError from a native module. Reuses the session's one zipapp build (test_zipapp.built_pyz,
CPython 3.10-3.13) and builds one single-version pyz (3.11) for the single-version message."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

from test_zipapp import _BUILT, base_python, build, built_pyz, run_pyz

pytestmark = pytest.mark.slow
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
CARRIED = ("3.10", "3.11", "3.12", "3.13")


def other_python(not_in: tuple[str, ...]) -> str | None:
    """An absolute path to a CPython 3.x (pyenv) whose minor version is not in `not_in`."""
    for minor in ("3.9", "3.8", "3.12", "3.13", "3.10", "3.11"):
        if minor in not_in:
            continue
        for candidate in sorted(Path("/root/.pyenv/versions").glob(f"{minor}.*/bin/python{minor}")):
            return str(candidate)
    return None


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_pyz(tmp_path_factory)


@pytest.fixture(scope="module")
def single_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build for this CPython alone (--python-version X.Y), as before the multi-version pyz."""
    return build(tmp_path_factory.mktemp("single"), "--python-version", HERE)


def test_the_build_records_its_pythons(pyz: Path, single_pyz: Path) -> None:
    with zipfile.ZipFile(pyz) as zf:
        text = zf.read("site-packages/cmdop/_build_info.py").decode()
    assert f"PYTHON_VERSIONS = {CARRIED!r}" in text
    with zipfile.ZipFile(single_pyz) as zf:
        text = zf.read("site-packages/cmdop/_build_info.py").decode()
    assert f"PYTHON_VERSIONS = {(HERE,)!r}" in text
    assert single_pyz.read_bytes().startswith(f"#!/usr/bin/env python{HERE}\n".encode())


@pytest.mark.parametrize("which", ["multi", "single"])
@pytest.mark.parametrize("args", [["agent", "status"], ["agent", "run"],
                                  ["run", "execute_command", "--input", '{"command": "true"}']])
def test_another_python_gets_one_line_and_exit_1(pyz: Path, single_pyz: Path, tmp_path: Path,
                                                 args: list[str], which: str) -> None:
    carried = CARRIED if which == "multi" else (HERE,)
    python = other_python(carried)
    if python is None:
        pytest.skip(f"no CPython outside {', '.join(carried)} under /root/.pyenv/versions")
    env = dict(CMDOP_STATE_DIR=str(tmp_path / "state"), CMDOP_CONFIG_DIR=str(tmp_path / "cfg"),
               CMDOP_SOCKET_PATH=str(tmp_path / "agent.sock"), HOME=str(tmp_path))
    r = run_pyz(pyz if which == "multi" else single_pyz, _BUILT["shiv_root"], *args,
                cwd=tmp_path, python=python, **env)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    other = python.rsplit("python", 1)[1]
    assert lines[0].startswith(f"cmdop: error: this cmdop.pyz is built for CPython "
                               f"{', '.join(carried)}; this is {other}.")
    if which == "multi":
        assert lines[1].startswith("hint: run it with one of python3.10, python3.11, python3.12, "
                                   "python3.13 (e.g. `python3.13 ")
    else:
        assert lines[1].startswith(f"hint: run it with python{HERE}")
    assert "Traceback" not in r.stderr and "ImportError" not in r.stderr
    assert not (tmp_path / "agent.sock").exists()


def test_version_stays_fast_and_works_anywhere(pyz: Path, tmp_path: Path) -> None:
    python = other_python(CARRIED)
    if python is None:
        pytest.skip("no CPython outside 3.10-3.13 under /root/.pyenv/versions")
    r = run_pyz(pyz, _BUILT["shiv_root"], "--version", cwd=tmp_path, python=python)
    assert r.returncode == 0 and r.stdout.startswith("cmdop ")


def test_the_right_python_runs(pyz: Path, tmp_path: Path) -> None:
    env = dict(CMDOP_STATE_DIR=str(tmp_path / "state"), CMDOP_CONFIG_DIR=str(tmp_path / "cfg"),
               CMDOP_SOCKET_PATH=str(tmp_path / "agent.sock"), HOME=str(tmp_path))
    r = run_pyz(pyz, _BUILT["shiv_root"], "agent", "status", cwd=tmp_path, python=base_python(), **env)
    assert "built for CPython" not in r.stderr, r.stderr
