"""The gate judges a command in the directory it will run in: the input's `cwd` when given
(relative to the call's cwd), in every entry point (the red team's `{"command": "cat
etc/hostname", "cwd": "/"}` passed when the gate used the call's cwd instead)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmdop.adapters.gatekeeper import Gatekeeper, resolve_for_gate
from cmdop.core.calls import Caller, CallerKind, ToolCall, command_dir
from cmdop.core.settings import Settings


@pytest.mark.parametrize("tool_input,call_cwd,expect", [
    ({"command": "ls", "cwd": "/"}, "/tmp", "/"),
    ({"command": "ls", "cwd": "sub"}, "/tmp", "sub"),
    ({"command": "ls", "cwd": ""}, "/tmp", "/tmp"),
    ({"command": "ls"}, "/tmp", "/tmp"),
    ({"command": "ls", "cwd": 7}, "/tmp", "/tmp"),      # not a string: the tool refuses it anyway
])
def test_command_dir(tool_input: dict, call_cwd: str, expect: str) -> None:
    assert command_dir(tool_input, call_cwd) == expect


@pytest.fixture
def gate(tmp_path: Path) -> Gatekeeper:
    home = tmp_path / "home"
    (home / ".config" / "cmdop").mkdir(parents=True)
    policy = home / ".config" / "cmdop" / "permissions.yaml"
    policy.write_text("version: 1\nmode: bypass\nrules: []\n")
    policy.chmod(0o600)
    return Gatekeeper(Settings.from_env({"HOME": str(home)}, str(home)))


@pytest.mark.parametrize("kind", [CallerKind.REMOTE, CallerKind.LOCAL])
@pytest.mark.parametrize("command,cwd", [
    ("cat etc/hostname", "/"),
    ("cat hostname", "/etc"),
    ("cat ../etc/passwd", "/usr"),
    ("cat id_rsa", "~/.ssh"),
    ("cat ./config.yaml", "~/.config/cmdop"),
])
def test_the_input_cwd_is_where_the_floor_is_judged(gate: Gatekeeper, kind: CallerKind, command: str,
                                                     cwd: str) -> None:
    call = ToolCall("execute_command", {"command": command, "cwd": cwd}, cwd="/tmp")
    d = gate.evaluate(call, Caller(kind))
    assert (d.decision, d.source) == ("deny", "floor"), d
    # The same command from the call's cwd alone is fine (bypass mode): the input cwd decided.
    plain = gate.evaluate(ToolCall("execute_command", {"command": "true"}, cwd="/tmp"), Caller(kind))
    assert plain.decision == "allow"


def test_check_and_explain_use_the_same_answer(gate: Gatekeeper) -> None:
    call = ToolCall("execute_command", {"command": "cat x", "cwd": "sub/dir"}, cwd="/srv")
    assert resolve_for_gate(call, "/home/u") == (None, "/srv/sub/dir")
