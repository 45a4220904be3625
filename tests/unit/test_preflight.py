"""cmdop.cli.preflight: a zipapp run by another CPython than it was built for, and an agent
whose gate, audit or sandbox cannot load, stop at start with one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cmdop.cli import preflight
from cmdop.cli.main import main

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
REPO = Path(__file__).resolve().parents[2]


def fake_build(monkeypatch: pytest.MonkeyPatch, version: str | tuple[str, ...]) -> None:
    """A build info as build_zipapp.py writes it: PYTHON_VERSIONS, or one PYTHON_VERSION (older
    single-version builds)."""
    mod = types.ModuleType(preflight.BUILD_INFO_MODULE)
    if isinstance(version, tuple):
        mod.PYTHON_VERSIONS = version  # type: ignore[attr-defined]
    else:
        mod.PYTHON_VERSION = version  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, preflight.BUILD_INFO_MODULE, mod)


def test_outside_a_zipapp_nothing_is_checked() -> None:
    assert not (REPO / "cmdop" / "_build_info.py").exists()
    assert preflight.built_for() is None
    preflight.check_interpreter()            # no error


def test_same_minor_version_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_build(monkeypatch, HERE)
    assert preflight.built_for() == (HERE,)
    preflight.check_interpreter()


@pytest.mark.parametrize("carried, runs", [
    (("3.10", "3.11", "3.12", "3.13", HERE), True),
    ((HERE, "3.99"), True),
    (("3.98", "3.99"), False),
    ((), False),                                  # names nothing: refused, not waved through
])
def test_a_multi_version_build_runs_on_each_python_it_carries(
        monkeypatch: pytest.MonkeyPatch, carried: tuple[str, ...], runs: bool) -> None:
    fake_build(monkeypatch, carried)
    if runs:
        preflight.check_interpreter()
    else:
        with pytest.raises(preflight.InterpreterMismatch):
            preflight.check_interpreter()


def test_a_multi_version_mismatch_names_every_version(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    fake_build(monkeypatch, ("3.99", "3.98"))
    assert main(["agent", "status"]) == 1
    err = capsys.readouterr().err.splitlines()
    v = sys.version_info
    assert err[0] == (f"cmdop: error: this cmdop.pyz is built for CPython 3.98, 3.99; "
                      f"this is {v.major}.{v.minor}.{v.micro}")
    assert err[1].startswith("hint: run it with one of python3.98, python3.99 (e.g. `python3.99 ")
    assert len(err) == 2


def test_other_version_is_one_line_and_a_hint(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    fake_build(monkeypatch, "3.99")
    assert main(["agent", "status"]) == 1
    err = capsys.readouterr().err.splitlines()
    v = sys.version_info
    assert err[0] == (f"cmdop: error: this cmdop.pyz is built for CPython 3.99; "
                      f"this is {v.major}.{v.minor}.{v.micro}")
    assert err[1].startswith("hint: run it with python3.99") and f"--python-version {HERE}" in err[1]
    assert len(err) == 2


def test_the_check_covers_agent_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CMDOP_SOCKET_PATH", str(tmp_path / "agent.sock"))
    monkeypatch.setenv("CMDOP_STATE_DIR", str(tmp_path / "state"))
    fake_build(monkeypatch, "3.99")
    assert main(["agent", "run"]) == 1
    assert "built for CPython 3.99" in capsys.readouterr().err
    assert not (tmp_path / "agent.sock").exists() and not (tmp_path / "state").exists()


def test_native_import_error_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    exc = ImportError("cannot import name '_binding' from 'tree_sitter'", name="tree_sitter")
    err = preflight.native_import_error(exc)
    assert err is not None and "native module" in err.message
    fake_build(monkeypatch, "3.99")
    err = preflight.native_import_error(exc)
    assert err is not None and "built for CPython 3.99" in err.message
    assert preflight.native_import_error(ImportError("No module named 'foo'", name="foo")) is None
    assert preflight.native_import_error(ValueError("x")) is None


def test_agent_parts_import_here() -> None:
    preflight.check_agent_parts()


@pytest.mark.parametrize("module", ["cmdop.adapters.gatekeeper", "cmdop.adapters.audit_log",
                                    "cmdop.pipeline", "cmdop.adapters.launcher"])
def test_agent_run_fails_at_start_when_a_part_cannot_import(tmp_path: Path, module: str) -> None:
    """No READY=1, no socket, exit 1 with one error line naming the part."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMDOP_", "XDG_", "NOTIFY_"))}
    env.update(HOME=str(tmp_path), CMDOP_CONFIG_DIR=str(tmp_path / "cfg"),
               CMDOP_STATE_DIR=str(tmp_path / "state"), CMDOP_HOME=str(tmp_path / ".cmdop"),
               CMDOP_SOCKET_PATH=str(tmp_path / "run" / "agent.sock"),
               NOTIFY_SOCKET=str(tmp_path / "notify"), PYTHONPATH=str(REPO))
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from cmdop.cli.main import main\n"
            "sys.exit(main(['agent', 'run']))\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("cmdop: error:")]
    assert len(lines) == 1 and "the agent cannot start" in lines[0] and "unavailable" in lines[0]
    assert "agent ready" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "agent.sock").exists()
    with pytest.raises(socket.timeout):
        notify.recv(4096)                      # nothing told systemd READY=1
    notify.close()
