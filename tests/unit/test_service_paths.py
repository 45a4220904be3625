"""A root shell's CLI finds the system service's agent (cmdop.adapters.service_paths), checked on
a fake root of paths: nothing under the real /run or /var/lib is touched."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cmdop.adapters.service_paths import owned_by_me, with_system_service
from cmdop.core.settings import Settings


def _settings(tmp_path: Path) -> tuple[Settings, dict[str, str]]:
    env = {"HOME": str(tmp_path / "root"), "XDG_RUNTIME_DIR": str(tmp_path / "run" / "user" / "0")}
    return Settings.from_env(env, str(tmp_path / "root")), env


def _mk(path: Path, sock: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if sock:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    else:
        path.mkdir()


def _discover(tmp_path: Path, env: dict[str, str], s: Settings) -> Settings:
    return with_system_service(s, env, owned_by_me, root=str(tmp_path))


def test_nothing_of_the_service_exists_keeps_the_per_user_paths(tmp_path: Path) -> None:
    s, env = _settings(tmp_path)
    assert _discover(tmp_path, env, s) == s


def test_a_running_system_agent_is_found(tmp_path: Path) -> None:
    s, env = _settings(tmp_path)
    _mk(tmp_path / "run/cmdop/agent.sock", sock=True)
    _mk(tmp_path / "var/lib/cmdop")
    _mk(Path(s.state_dir))   # an old per-user state dir does not hide a running system agent
    got = _discover(tmp_path, env, s)
    assert got.socket_path == str(tmp_path / "run/cmdop/agent.sock")
    assert got.state_dir == str(tmp_path / "var/lib/cmdop")
    assert got.config_dir == s.config_dir and got.home == s.home


def test_a_stopped_system_agent_s_audit_log_is_found(tmp_path: Path) -> None:
    s, env = _settings(tmp_path)
    _mk(tmp_path / "var/lib/cmdop")
    got = _discover(tmp_path, env, s)
    assert got.state_dir == str(tmp_path / "var/lib/cmdop")
    # ... unless this user has state of their own
    _mk(Path(s.state_dir))
    assert _discover(tmp_path, env, s) == s


def test_a_per_user_agent_wins(tmp_path: Path) -> None:
    s, env = _settings(tmp_path)
    _mk(Path(s.socket_path), sock=True)
    _mk(tmp_path / "run/cmdop/agent.sock", sock=True)
    assert _discover(tmp_path, env, s) == s


@pytest.mark.parametrize("name", ["CMDOP_SOCKET_PATH", "CMDOP_STATE_DIR", "CMDOP_CONFIG_DIR"])
def test_any_explicit_override_wins(tmp_path: Path, name: str) -> None:
    s, env = _settings(tmp_path)
    _mk(tmp_path / "run/cmdop/agent.sock", sock=True)
    env[name] = str(tmp_path / "elsewhere")
    s = Settings.from_env(env, env["HOME"])
    assert _discover(tmp_path, env, s) == s


def test_paths_of_another_user_are_not_taken(tmp_path: Path) -> None:
    s, env = _settings(tmp_path)
    owner = {str(tmp_path / "run/cmdop/agent.sock"): False}
    got = with_system_service(s, env, lambda p: owner.get(p, False), root=str(tmp_path))
    assert got == s
    if os.geteuid() == 0:
        sock = tmp_path / "run/cmdop/agent.sock"
        _mk(sock, sock=True)
        os.lchown(sock, 65534, 65534)
        assert not owned_by_me(str(sock))
        assert _discover(tmp_path, env, s) == s
