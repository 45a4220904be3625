"""execute_command: results, caps, timeouts that kill the whole group, cancel, env scrubbing."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from cmdop.adapters.launcher import Sandbox
from cmdop.core.calls import ToolCall
from cmdop.tools import execute_command as ec
from cmdop.tools.base import ToolEnv
from cmdop.tools.registry import run_tool


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    sb = Sandbox()
    yield sb
    sb.close()


@pytest.fixture
def env(tmp_path: Path, sandbox: Sandbox) -> ToolEnv:
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    # Local caller: runs unsandboxed (with a warning) where seccomp is missing.
    return ToolEnv(home=str(home), cwd=str(work), sandbox=sandbox, warn=lambda _m: None)


def run(env: ToolEnv, **tool_input: object) -> dict:
    out = run_tool(ToolCall("execute_command", tool_input), env)
    assert isinstance(out, dict)
    return out


def test_stdout_stderr_and_exit_code(env: ToolEnv) -> None:
    out = run(env, command="echo out; echo err >&2; exit 7")
    assert out["stdout"] == "out\n" and out["stderr"] == "err\n" and out["exit_code"] == 7
    assert out["timed_out"] is False and out["truncated"] is False and "signal" not in out


def test_runs_in_the_call_cwd_and_input_cwd(env: ToolEnv, tmp_path: Path) -> None:
    assert run(env, command="pwd")["stdout"] == f"{env.cwd}\n"
    assert run(env, command="pwd", cwd=str(tmp_path))["stdout"] == f"{tmp_path}\n"


def test_own_session_and_stdin_closed(env: ToolEnv) -> None:
    out = run(env, command="ps -o pid=,pgid=,sid= -p $$; cat; echo rc=$?")
    pid, pgid, sid = out["stdout"].split("\n")[0].split()
    assert pid == pgid == sid
    assert "rc=0" in out["stdout"]      # cat read EOF at once from /dev/null


def test_signal_is_reported(env: ToolEnv) -> None:
    out = run(env, command="kill -TERM $$")
    assert out["signal"] == "SIGTERM" and out["exit_code"] == 128 + 15


def test_timeout_kills_grandchildren(env: ToolEnv, tmp_path: Path) -> None:
    marker = tmp_path / "grandchild.pid"
    # The grandchild holds no pipe and ignores nothing special; the leader waits on it.
    command = f"(sleep 300 & echo $! > {marker}; wait) & sleep 300"
    out = run(env, command=command, timeout_ms=1500)   # room to write the marker on a loaded machine
    assert out["timed_out"] is True
    assert out["signal"] in ("SIGTERM", "SIGKILL")
    pid = int(marker.read_text())
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"grandchild {pid} survived the timeout")


def test_timeout_escalates_to_sigkill(env: ToolEnv) -> None:
    out = run(env, command="trap '' TERM; sleep 30", timeout_ms=1000)   # the trap is set before the TERM
    assert out["timed_out"] is True and out["signal"] == "SIGKILL"


def test_cancel_kills_the_group_promptly(env: ToolEnv) -> None:
    cancel = threading.Event()
    env.cancel = cancel
    threading.Timer(0.3, cancel.set).start()
    out = run(env, command="sleep 60")
    assert out["cancelled"] is True and out["timed_out"] is False
    assert out["duration_ms"] < 30_000


# -- processes left holding stdout/stderr: the call still returns ----------------------------

@pytest.fixture
def strays() -> list[int]:
    """Pids a test's command left running; SIGKILLed afterwards so no sleep outlives the test."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pid_after(word: str, stdout: str) -> int:
    """The number printed right after `word` in a command's stdout (`echo word $!`)."""
    return int(stdout.split(word, 1)[1].split()[0])


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture(params=["sandboxed", "unsandboxed"])
def any_env(request: pytest.FixtureRequest, env: ToolEnv) -> ToolEnv:
    """`env` through the seccomp fork server and through a plain Popen: their waits differ."""
    if request.param == "unsandboxed":
        env.sandbox = None
    return env


def test_escaped_session_holding_the_pipes_does_not_hang_the_call(any_env: ToolEnv,
                                                                  strays: list[int]) -> None:
    started = time.monotonic()
    out = run(any_env, command="setsid sleep 77 & echo started $!", timeout_ms=1000)
    strays.append(_pid_after("started", out["stdout"]))
    assert time.monotonic() - started < 1 + 15     # not the 77 s the escaped child holds the pipes
    assert out["stdout"].startswith("started ") and out["exit_code"] == 0
    assert out["output_left_open"] is True and out["timed_out"] is False


def test_escaped_session_survives_the_timeout_but_the_call_returns(env: ToolEnv,
                                                                   strays: list[int]) -> None:
    started = time.monotonic()
    out = run(env, command="setsid sleep 77 & echo started $!; sleep 30", timeout_ms=1000)
    pid = _pid_after("started", out["stdout"])
    strays.append(pid)
    assert time.monotonic() - started < 1 + 15     # not the 77 s the escaped child holds the pipes
    assert out["timed_out"] is True and out["output_left_open"] is True
    assert _running(pid)    # documented: a new session escapes the group kill (no cgroup yet)


def test_normal_exit_leaving_a_setsid_child_on_stdout_returns_promptly(any_env: ToolEnv,
                                                                       strays: list[int]) -> None:
    started = time.monotonic()
    out = run(any_env, command="echo before; setsid sleep 30 & echo after $!; echo err >&2")
    strays.append(_pid_after("after", out["stdout"]))
    assert time.monotonic() - started < 15         # not the 30 s the child holds stdout
    assert out["stdout"].startswith("before\nafter ") and out["stderr"] == "err\n"
    assert out["exit_code"] == 0 and out["timed_out"] is False and out["output_left_open"] is True


def test_background_job_outlives_a_normal_exit_without_holding_the_call(env: ToolEnv,
                                                                        strays: list[int]) -> None:
    started = time.monotonic()
    out = run(env, command="sleep 30 & echo job $!")
    pid = _pid_after("job", out["stdout"])
    strays.append(pid)
    assert time.monotonic() - started < 15 and out["exit_code"] == 0   # not the job's 30 s
    assert _running(pid)    # same group, but a normal exit kills nothing (unchanged behaviour)


def test_term_ignoring_group_member_is_still_killed_after_the_call_returns(env: ToolEnv,
                                                                          strays: list[int]) -> None:
    out = run(env, command="(trap '' TERM; exec sleep 30) & echo member $!; sleep 30", timeout_ms=1000)
    pid = _pid_after("member", out["stdout"])
    strays.append(pid)
    assert out["timed_out"] is True and out["duration_ms"] < 1000 + 15_000   # not the member's 30 s
    for _ in range(100):    # its SIGKILL is due one second after the TERM
        if not _running(pid):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"group member {pid} survived the timeout's SIGKILL")


def test_output_is_capped_and_flagged(env: ToolEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ec, "OUTPUT_CAP", 1000)
    out = run(env, command="head -c 5000 /dev/zero | tr '\\0' a; echo small >&2")
    assert len(out["stdout"]) == 1000 and out["stdout_truncated"] is True and out["truncated"] is True
    assert out["stderr"] == "small\n" and out["stderr_truncated"] is False
    assert out["exit_code"] == 0   # the child was drained, never blocked on a full pipe


def test_default_cap_is_one_megabyte(env: ToolEnv) -> None:
    out = run(env, command="head -c 1100000 /dev/zero | tr '\\0' b")
    assert len(out["stdout"]) == 1 << 20 and out["stdout_truncated"] is True


def test_chunks_are_streamed(env: ToolEnv) -> None:
    chunks: list[tuple[str, bytes]] = []
    env.on_chunk = lambda name, data: chunks.append((name, data))
    run(env, command="echo a; echo b >&2")
    assert b"".join(d for n, d in chunks if n == "stdout") == b"a\n"
    assert b"".join(d for n, d in chunks if n == "stderr") == b"b\n"


def test_environment_is_scrubbed_of_agent_secrets(env: ToolEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMDOP_API_KEY", "sk-secret-123")
    monkeypatch.setenv("CMDOP_TOKEN", "tok")
    monkeypatch.setenv("SOME_COPY", "Bearer sk-secret-123")
    monkeypatch.setenv("HARMLESS", "yes")
    env.api_key = "sk-secret-123"
    out = run(env, command="env")
    assert "sk-secret-123" not in out["stdout"] and "CMDOP_" not in out["stdout"]
    assert "HARMLESS=yes" in out["stdout"]


@pytest.mark.parametrize("tool_input,kind", [
    ({}, "bad_input"),
    ({"command": 3}, "bad_input"),
    ({"command": "  "}, "bad_input"),
    ({"command": "true", "timeout_ms": 600_001}, "bad_input"),
    ({"command": "true", "timeout_ms": 0}, "bad_input"),
    ({"command": "true", "timeout_ms": True}, "bad_input"),
    ({"command": "true", "cwd": "/nonexistent-cmdop-dir"}, "bad_input"),
])
def test_bad_input_is_a_result_not_an_exception(env: ToolEnv, tool_input: dict, kind: str) -> None:
    assert run(env, **tool_input)["error"] == kind


def test_floor_cwd_is_refused(env: ToolEnv) -> None:
    ssh = Path(env.home) / ".ssh"
    ssh.mkdir()
    out = run(env, command="ls", cwd="~/.ssh")
    assert out["error"] == "permission_denied" and out["source"] == "floor"
