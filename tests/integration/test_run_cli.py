"""`cmdop run TOOL --input JSON [--cwd DIR]` end to end: real gate, real audit log, real sandbox."""

from __future__ import annotations

import json
import os
import pwd
import socket
from pathlib import Path

import pytest

pytest.importorskip("cmdop.adapters.gatekeeper", reason="the gate adapter has not landed yet")


def audit_lines(cmdop_env) -> list[dict]:  # type: ignore[no-untyped-def]
    path = cmdop_env.state_dir / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_execute_command_runs_and_prints_one_json_document(cmdop_env) -> None:  # type: ignore[no-untyped-def]
    r = cmdop_env.run("run", "execute_command", "--input", '{"command": "echo hi; exit 4"}')
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["stdout"] == "hi\n" and out["exit_code"] == 4
    [rec] = audit_lines(cmdop_env)
    assert rec["decision"] == "allow" and rec["source"] == "bypass" and rec["tool"] == "execute_command"
    assert rec["user"] == pwd.getpwuid(os.geteuid()).pw_name and rec["hostname"] == socket.gethostname()


def test_floor_is_not_bypassed_by_local_callers(cmdop_env) -> None:  # type: ignore[no-untyped-def]
    ssh = cmdop_env.home / ".ssh"
    ssh.mkdir()
    (ssh / "id_rsa").write_text("PRIVATE KEY")
    r = cmdop_env.run("run", "read_file", "--input", '{"path": "~/.ssh/id_rsa"}')
    assert r.returncode == 3, r.stderr
    out = json.loads(r.stdout)
    assert out["error"] == "permission_denied" and out["source"] == "floor"
    assert "PRIVATE KEY" not in r.stdout
    assert audit_lines(cmdop_env)[-1]["decision"] == "deny"


def test_cwd_flag_resolves_relative_paths(cmdop_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "notes.txt").write_text("a\nb\n")
    r = cmdop_env.run("run", "read_file", "--input", '{"path": "notes.txt", "start": 2}',
                      "--cwd", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["content"] == "b\n"


def test_list_dir_prints_a_json_list(cmdop_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    r = cmdop_env.run("run", "list_dir", "--input", json.dumps({"path": str(tmp_path / "d")}))
    assert json.loads(r.stdout) == [{"name": "f", "type": "file", "size": 1}]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"str"'])
def test_bad_json_is_a_usage_error(cmdop_env, text: str) -> None:  # type: ignore[no-untyped-def]
    r = cmdop_env.run("run", "read_file", "--input", text)
    assert r.returncode == 2
    assert r.stderr.startswith("cmdop: error: --input")
    assert "Traceback" not in r.stderr


def test_unknown_tool_is_a_usage_error_listing_the_tools(cmdop_env) -> None:  # type: ignore[no-untyped-def]
    r = cmdop_env.run("run", "format_disk", "--input", "{}")
    assert r.returncode == 2
    assert r.stdout == "" and "permission_denied" not in r.stderr
    assert r.stderr.startswith("cmdop: error: unknown tool 'format_disk'")
    for tool in ("execute_command", "read_file", "write_file", "list_dir", "grep", "glob"):
        assert tool in r.stderr


def test_tool_error_is_reported_as_json(cmdop_env) -> None:  # type: ignore[no-untyped-def]
    r = cmdop_env.run("run", "read_file", "--input", '{"path": "/nonexistent-cmdop-file"}')
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"] == "not_found"


def test_agent_secrets_do_not_reach_the_command(cmdop_env) -> None:  # type: ignore[no-untyped-def]
    r = cmdop_env.run("run", "execute_command", "--input", '{"command": "env"}',
                      CMDOP_API_KEY="sk-cli-secret-42")
    assert r.returncode == 0
    assert "sk-cli-secret-42" not in json.loads(r.stdout)["stdout"]
