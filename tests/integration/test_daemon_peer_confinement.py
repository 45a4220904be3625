"""The real daemon refuses clients more seccomp-confined than itself: a command it ran for a remote
caller cannot come back through its socket as a local caller (no gate bypass, no session rules),
while the operator's own clients (this test process, the CLI) are served as before. Also: hostile
JSON frames get a `bad_json` error frame and no traceback."""

from __future__ import annotations

import json
import shlex
import socket
import struct
import sys

import pytest
from test_daemon_helpers import start_daemon, wait_for, write_policy

from cmdop.adapters.launcher import Sandbox

PY = sys.executable
POLICY = f"""\
version: 1
mode: strict
rules:
  - rule: "execute_command({PY} -c *)"     # a rule must spell the inline code it allows
    action: allow
"""

# Run inside the sandboxed command: send the request in argv[2] on the socket in argv[1] and print
# the answer (one line: rules match a command's text, and `*` does not cross a newline). An answer
# this small arrives in one write, so one recv holds it.
CLIENT = ("import socket,sys;s=socket.socket(socket.AF_UNIX);s.settimeout(10);s.connect(sys.argv[1]);"
          "b=sys.argv[2].encode();s.sendall(len(b).to_bytes(4,\"big\")+b);d=s.recv(65536);"
          "print(d[4:].decode())")
REQUESTS = [{"v": 1, "id": 1, "op": "ping"},
            {"v": 1, "id": 2, "op": "add_session_rule", "rule": "execute_command", "action": "allow"}]


@pytest.fixture(scope="module", autouse=True)
def _needs_seccomp():
    sandbox = Sandbox()
    try:
        if not sandbox.available:
            pytest.skip(f"needs the seccomp sandbox: {sandbox.reason}")
    finally:
        sandbox.close()


@pytest.fixture
def daemon(cmdop_env):
    write_policy(cmdop_env, POLICY)
    d = start_daemon(cmdop_env)
    yield d
    if d.proc.poll() is None:
        assert d.stop() == 0
    assert "Traceback" not in d.log(), d.log()


def _session_rules(d) -> list[dict]:
    with d.client() as c:
        return [r for r in c.list_rules()["rules"] if r["scope"] == "session"]


def test_a_remote_command_cannot_use_the_agents_socket(daemon):
    answers = []
    for req in REQUESTS:
        command = " ".join(shlex.quote(x) for x in (PY, "-c", CLIENT, daemon.socket_path,
                                                     json.dumps(req)))
        out = daemon.call("execute_command", {"command": command}, as_caller="remote")
        assert out.get("exit_code") == 0 and out["sandboxed"] is True, json.dumps(out)
        answers.append(json.loads(out["stdout"]))
    for answer in answers:
        assert answer["ok"] is False and answer["error"]["code"] == "forbidden", answer
        assert answer["error"]["message"] == "a command run by the agent cannot use the agent's socket"
    assert _session_rules(daemon) == []
    # the refusal is logged with the peer's pid and uid and both filter counts, and counted
    wait_for(lambda: daemon.log().count("refused local client") >= 2, 10, "the refusals logged")
    line = next(x for x in daemon.log().splitlines() if "refused local client" in x)
    assert "a command run by the agent" in line and "peer_seccomp_filters=" in line
    with daemon.client() as c:
        counters = c.status()["counters"]
    assert counters["refused_peers"] == 2 and counters["refused_confined_peers"] == 2
    # and the remote caller is still gated: the rule it tried to add would have allowed this
    denied = daemon.call("execute_command", {"command": "echo hi"}, as_caller="remote")
    assert denied["error"] == "permission_denied"


def test_permissions_add_session_run_as_a_remote_command_fails(daemon, cmdop_env):
    # The same socket, through the real CLI: its environment lost CMDOP_* (the agent scrubs them),
    # so the command names the socket itself.
    code = ("import os, sys; os.environ['CMDOP_SOCKET_PATH'] = sys.argv[1];"
            "from cmdop.cli.main import main;"
            "sys.exit(main(['permissions', 'add', 'execute_command', '--action', 'allow',"
            " '--scope', 'session']))")
    command = f"{PY} -c {shlex.quote(code)} {shlex.quote(daemon.socket_path)}"
    out = daemon.call("execute_command", {"command": command}, as_caller="remote")
    assert out["sandboxed"] is True and out["exit_code"] == 1, out
    # (the CLI reads a refused ping as "no agent is running": connect_if_running never raises)
    assert out["stderr"].startswith("cmdop: error:") and "Traceback" not in out["stderr"]
    assert _session_rules(daemon) == []
    wait_for(lambda: "refused local client" in daemon.log(), 10, "the refusal logged")


def test_the_operators_own_clients_are_still_served(daemon, cmdop_env):
    with daemon.client() as c:
        assert c.ping()["pid"] == daemon.proc.pid
    add = cmdop_env.run("permissions", "add", "execute_command(echo ok)", "--action", "allow",
                        "--scope", "session", "--json")
    assert add.returncode == 0, add.stderr
    assert [r["rule"] for r in _session_rules(daemon)] == ["execute_command(echo ok)"]
    run = cmdop_env.run("run", "execute_command", "--input", '{"command": "echo ok"}')
    assert run.returncode == 0 and json.loads(run.stdout)["stdout"] == "ok\n", run.stderr
    assert "refused local client" not in daemon.log()
    with daemon.client() as c:
        assert c.status()["counters"].get("refused_peers", 0) == 0


def _raw_exchange(path: str, body: bytes) -> dict:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    with s:
        s.sendall(struct.pack(">I", len(body)) + body)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = s.recv(65536)
            assert chunk, f"connection closed without an answer after {data!r}"
            data += chunk
        return json.loads(data[4:], parse_constant=_not_json)


def _not_json(name: str) -> None:
    raise AssertionError(f"the daemon answered with {name}, which is not JSON")


@pytest.mark.parametrize("body", [
    b"[" * 100_000,
    b'{"v":1,"id":' + b"9" * 5000 + b',"op":"ping"}',
    b'{"v":1,"id":NaN,"op":"ping"}',
    b'{"v":1,"id":-Infinity,"op":"ping"}',
    b'{"v":1,"id":1e999,"op":"ping"}',
], ids=["deep-nesting", "huge-int", "nan", "-infinity", "overflow"])
def test_hostile_frames_get_bad_json_and_the_daemon_answers_after(daemon, body):
    answer = _raw_exchange(daemon.socket_path, body)
    assert answer["ok"] is False and answer["error"]["code"] == "bad_json" and answer["id"] is None
    with daemon.client() as c:
        assert c.ping()["pid"] == daemon.proc.pid
    assert "internal error" not in daemon.log() and "Traceback" not in daemon.log()
