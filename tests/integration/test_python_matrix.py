"""One cmdop.pyz on every CPython it is built for (3.10-3.13), each by absolute path: `--version`,
`permissions check`, a sandboxed `cmdop run`, and `agent run` up to READY=1 serving a sandboxed
call on its socket.
Reuses the session's one build (test_zipapp.built_pyz) and its wheel cache; an interpreter that
is not installed is skipped, and the skip says which."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from cmdop.daemon.client import DaemonClient
from test_zipapp import _BUILT, built_pyz, clean_env

pytestmark = pytest.mark.slow
PYENV = Path("/root/.pyenv/versions")
VERSIONS = ("3.10", "3.11", "3.12", "3.13")
READY_TIMEOUT_S = 30.0


def interpreter(minor: str) -> Path | None:
    """An absolute CPython `minor` (pyenv's, never its shim), or None."""
    found = sorted(PYENV.glob(f"{minor}.*/bin/python{minor}"))
    return found[-1] if found else None


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_pyz(tmp_path_factory)


@pytest.fixture(params=VERSIONS)
def python(request: pytest.FixtureRequest) -> str:
    found = interpreter(request.param)
    if found is None:
        pytest.skip(f"CPython {request.param} is not installed under {PYENV}")
    return str(found)


def home_env(tmp_path: Path) -> dict[str, str]:
    """An isolated user: HOME, XDG and cmdop dirs under tmp_path, the pyz's shared cache."""
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(_BUILT["shiv_root"])
    env = {k: v for k, v in env.items() if not k.startswith(("XDG_", "NOTIFY_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_STATE_HOME=str(home / ".local/state"), XDG_RUNTIME_DIR=str(tmp_path / "run"),
               CMDOP_CONFIG_DIR=str(home / "cfg"), CMDOP_STATE_DIR=str(home / "state"),
               CMDOP_HOME=str(home / ".cmdop"), CMDOP_SOCKET_PATH=str(tmp_path / "agent.sock"))
    return env


def cmdop(python: str, pyz: Path, env: dict[str, str], *args: str,
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, str(pyz), *args], env=env, cwd=env["HOME"],
                          capture_output=True, text=True, timeout=120)


def test_one_pyz_serves_this_python(pyz: Path, python: str, tmp_path: Path) -> None:
    env = home_env(tmp_path)
    r = cmdop(python, pyz, env, "--version")
    assert r.returncode == 0 and r.stdout.startswith("cmdop "), r.stderr

    r = cmdop(python, pyz, env, "permissions", "check", "--json", "read_file", "/etc/shadow")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["decision"] == "deny"          # the floor, whatever the Python

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(READY_TIMEOUT_S)
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen([python, str(pyz), "agent", "run"], cwd=env["HOME"],
                                 env=dict(env, NOTIFY_SOCKET=str(tmp_path / "notify")),
                                 stdout=out, stderr=out)
    try:
        ready = b""
        while b"READY=1" not in ready:
            try:
                ready = notify.recv(4096)
            except socket.timeout:
                pytest.fail(f"no READY=1 from `agent run` on {python}:\n{log.read_text()}")
        assert agent.poll() is None, log.read_text()

        r = cmdop(python, pyz, env, "run", "execute_command", "--input",
                  json.dumps({"command": "echo hi from $0"}))
        assert r.returncode == 0, r.stdout + r.stderr
        result = json.loads(r.stdout)
        assert result["stdout"] == "hi from /bin/bash\n" and result["sandboxed"] is True, result

        # The agent this Python runs serves a call on its socket, in the sandbox too.
        with DaemonClient.connect(env["CMDOP_SOCKET_PATH"]) as client:
            served = client.call_tool("execute_command", {"command": "echo served"}, env["HOME"])
        assert "served" in json.dumps(served), served
        assert '"sandboxed": true' in json.dumps(served), served
    finally:
        notify.close()
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, log.read_text()
    assert not os.path.exists(env["CMDOP_SOCKET_PATH"])
