"""The built cmdop.pyz run by a CPython other than the one it was built for: one clear line and
exit 1 (for every command, `agent run` included), instead of an ImportError from a native module.
Reuses the session's one zipapp build (test_zipapp.built_pyz)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

from test_zipapp import _BUILT, base_python, built_pyz, run_pyz

pytestmark = pytest.mark.slow
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def other_python() -> str | None:
    """An absolute path to a CPython 3.x of another minor version (pyenv), if any."""
    for minor in ("3.12", "3.13", "3.10"):
        if minor == HERE:
            continue
        for candidate in sorted(Path("/root/.pyenv/versions").glob(f"{minor}.*/bin/python{minor}")):
            return str(candidate)
    return None


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_pyz(tmp_path_factory)


def test_the_build_records_its_python(pyz: Path) -> None:
    with zipfile.ZipFile(pyz) as zf:
        text = zf.read("site-packages/cmdop/_build_info.py").decode()
    assert f"PYTHON_VERSION = {HERE!r}" in text


@pytest.mark.parametrize("args", [["agent", "status"], ["agent", "run"],
                                  ["run", "execute_command", "--input", '{"command": "true"}']])
def test_another_python_gets_one_line_and_exit_1(pyz: Path, tmp_path: Path, args: list[str]) -> None:
    python = other_python()
    if python is None:
        pytest.skip("no CPython of another minor version under /root/.pyenv/versions")
    env = dict(CMDOP_STATE_DIR=str(tmp_path / "state"), CMDOP_CONFIG_DIR=str(tmp_path / "cfg"),
               CMDOP_SOCKET_PATH=str(tmp_path / "agent.sock"), HOME=str(tmp_path))
    r = run_pyz(pyz, _BUILT["shiv_root"], *args, cwd=tmp_path, python=python, **env)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    other = python.rsplit("python", 1)[1]
    assert lines[0].startswith(f"cmdop: error: this cmdop.pyz is built for CPython {HERE}; this is {other}.")
    assert lines[1].startswith(f"hint: run it with python{HERE}")
    assert "Traceback" not in r.stderr and "ImportError" not in r.stderr
    assert not (tmp_path / "agent.sock").exists()


def test_version_stays_fast_and_works_anywhere(pyz: Path, tmp_path: Path) -> None:
    python = other_python()
    if python is None:
        pytest.skip("no CPython of another minor version under /root/.pyenv/versions")
    r = run_pyz(pyz, _BUILT["shiv_root"], "--version", cwd=tmp_path, python=python)
    assert r.returncode == 0 and r.stdout.startswith("cmdop ")


def test_the_right_python_runs(pyz: Path, tmp_path: Path) -> None:
    env = dict(CMDOP_STATE_DIR=str(tmp_path / "state"), CMDOP_CONFIG_DIR=str(tmp_path / "cfg"),
               CMDOP_SOCKET_PATH=str(tmp_path / "agent.sock"), HOME=str(tmp_path))
    r = run_pyz(pyz, _BUILT["shiv_root"], "agent", "status", cwd=tmp_path, python=base_python(), **env)
    assert "built for CPython" not in r.stderr, r.stderr
