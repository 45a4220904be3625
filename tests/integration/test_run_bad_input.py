"""`cmdop run`: bad input is its own outcome (never a floor denial), an unknown tool is a usage
error, and a tool's OS error names the path the caller gave, not an fd number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("cmdop.adapters.gatekeeper", reason="the gate adapter has not landed yet")


def audit_lines(cmdop_env) -> list[dict]:  # type: ignore[no-untyped-def]
    path = cmdop_env.state_dir / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("args, field", [
    (["--input", "{}"], "command"),
    (["--input", '{"cmd": "ls"}'], "command"),
    ([], "command"),                                     # no --input at all
    (["--input", '{"command": 5}'], "command"),
    (["--input", '{"command": "   "}'], "command"),
    (["--input", '{"command": "true", "timeout_ms": "5"}'], "timeout_ms"),
    (["--input", '{"command": "true", "timeout_ms": 0}'], "timeout_ms"),  # the tool's own check
])
def test_execute_command_bad_input(cmdop_env, args: list[str], field: str) -> None:  # type: ignore[no-untyped-def]
    r = cmdop_env.run("run", "execute_command", *args)
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["error"] == "bad_input" and out["field"] == field and out["message"]
    assert "source" not in out and "floor" not in r.stdout
    line, hint = r.stderr.strip().splitlines()
    assert line.startswith("cmdop: error: bad input for execute_command:") and repr(field) in line
    assert hint.startswith("hint: execute_command takes {command, ")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("tool, text, field", [
    ("read_file", "{}", "path"),
    ("read_file", '{"path": "x", "start": "1"}', "start"),
    ("write_file", '{"content": "x"}', "path"),
    ("grep", '{"path": "."}', "pattern"),
    ("glob", '{"pattern": 1}', "pattern"),
    ("list_dir", '{"path": ["."]}', "path"),
])
def test_other_tools_bad_input(cmdop_env, tool: str, text: str, field: str) -> None:  # type: ignore[no-untyped-def]
    r = cmdop_env.run("run", tool, "--input", text)
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert (out["error"], out["field"], out["tool"]) == ("bad_input", field, tool)
    assert f"bad input for {tool}" in r.stderr


def test_unknown_tool_is_a_usage_error(cmdop_env) -> None:  # type: ignore[no-untyped-def]
    r = cmdop_env.run("run", "no_such_tool")
    assert r.returncode == 2
    assert r.stdout == ""
    assert "unknown tool 'no_such_tool'" in r.stderr and "execute_command" in r.stderr
    assert audit_lines(cmdop_env) == []          # nothing reached the gate


def test_bad_input_says_what_the_tool_takes(cmdop_env) -> None:  # type: ignore[no-untyped-def]
    r = cmdop_env.run("run", "read_file", "--input", "{}")
    assert r.returncode == 1 and "hint: read_file takes {path, start?, end?}" in r.stderr, r.stderr


def test_list_dir_and_grep_need_a_path(cmdop_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`path` is a required field of both (`.` is spelled out); relative to --cwd."""
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "f.txt").write_text("needle\n")
    for argv in (("list_dir",), ("grep", "--input", '{"pattern": "needle"}')):
        r = cmdop_env.run("run", *argv, "--cwd", str(tmp_path / "w"))
        assert r.returncode == 1 and json.loads(r.stdout)["field"] == "path", r.stdout + r.stderr
    r = cmdop_env.run("run", "list_dir", "--input", '{"path": "."}', "--cwd", str(tmp_path / "w"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [e["name"] for e in json.loads(r.stdout)] == ["f.txt"]
    r = cmdop_env.run("run", "grep", "--input", '{"pattern": "needle", "path": "."}', "--cwd", str(tmp_path / "w"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "needle" in r.stdout


def test_floor_still_denies_good_input(cmdop_env) -> None:  # type: ignore[no-untyped-def]
    (cmdop_env.home / ".ssh").mkdir()
    (cmdop_env.home / ".ssh" / "id_rsa").write_text("K")
    r = cmdop_env.run("run", "read_file", "--input", '{"path": "~/.ssh/id_rsa"}')
    assert r.returncode == 3
    assert json.loads(r.stdout)["source"] == "floor"


def test_read_file_on_a_directory_names_the_path(cmdop_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "adir"
    d.mkdir()
    r = cmdop_env.run("run", "read_file", "--input", json.dumps({"path": str(d)}))
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["error"] == "is_a_directory"
    assert out["message"].startswith(f"{d}: ")


@pytest.mark.parametrize("tool, sub", [("read_file", "missing"), ("read_file", "f/x"),
                                       ("list_dir", "f"), ("write_file", "nodir/x")])
def test_os_errors_name_the_whole_path(cmdop_env, tmp_path: Path, tool: str, sub: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "f").write_text("x")
    path = tmp_path / sub
    r = cmdop_env.run("run", tool, "--input", json.dumps({"path": str(path), "content": ""}))
    assert r.returncode == 1, r.stdout
    message = json.loads(r.stdout)["message"]
    shown = str(path.parent) if tool == "write_file" else str(path)
    assert message.startswith(f"{shown}: "), message
