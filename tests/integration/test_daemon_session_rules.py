"""Session rules through the real daemon: `permissions add --scope session` (op add_session_rule)
and `permissions list` showing them with their scope (op list_rules)."""

from __future__ import annotations

import json
import subprocess
import sys

from test_daemon_helpers import start_daemon, write_policy

POLICY = """\
version: 1
mode: strict
rules:
  - rule: "read_file(/srv/**)"
    action: allow
"""


def test_session_rule_is_added_listed_and_decides(cmdop_env):
    write_policy(cmdop_env, POLICY)
    d = start_daemon(cmdop_env)
    try:
        denied = d.call("execute_command", {"command": "echo sess"}, as_caller="remote")
        assert denied["error"] == "permission_denied"
        add = cmdop_env.run("permissions", "add", "execute_command(echo sess)", "--action", "allow",
                            "--scope", "session", "--reason", "for now", "--json")
        assert add.returncode == 0, add.stderr
        added = json.loads(add.stdout)
        assert added["scope"] == "session" and added["rule_id"].startswith("r-")
        # the running gate uses it at once, and the file is untouched
        out = d.call("execute_command", {"command": "echo sess"}, as_caller="remote")
        assert out["stdout"] == "sess\n"
        assert "echo sess" not in (cmdop_env.config_dir / "permissions.yaml").read_text()

        rows = json.loads(cmdop_env.run("permissions", "list", "--json").stdout)
        assert [(r["scope"], r["rule"]) for r in rows] == [
            ("global", "read_file(/srv/**)"), ("session", "execute_command(echo sess)")]
        assert rows[1]["rule_id"] == added["rule_id"] and rows[1]["reason"] == "for now"
        human = cmdop_env.run("permissions", "list").stdout
        assert "session" in human and "execute_command(echo sess)" in human

        bad = cmdop_env.run("permissions", "add", "execute_command(", "--action", "allow",
                            "--scope", "session")
        assert bad.returncode == 1 and "Traceback" not in bad.stderr
    finally:
        assert d.stop() == 0
    # the agent is gone, so are its session rules
    rows = json.loads(cmdop_env.run("permissions", "list", "--json").stdout)
    assert [r["scope"] for r in rows] == ["global"]


def test_session_scope_without_an_agent_fails_with_a_hint(cmdop_env):
    write_policy(cmdop_env, POLICY)
    r = cmdop_env.run("permissions", "add", "execute_command(ls)", "--action", "allow",
                      "--scope", "session")
    assert r.returncode == 1
    assert r.stderr.startswith("cmdop: error: no agent is running")
    assert "session rules live in the running agent; start it with `cmdop agent run`" in r.stderr


def test_root_cli_without_overrides_finds_a_system_like_agent(cmdop_env, tmp_path):
    """The system service's paths, moved under a fake root: a CLI with no CMDOP_* path override
    and no per-user agent finds that agent (cmdop.adapters.service_paths)."""
    fake = tmp_path / "fakeroot"
    sys_sock, sys_state = fake / "run/cmdop/agent.sock", fake / "var/lib/cmdop"
    write_policy(cmdop_env, POLICY)
    d = start_daemon(cmdop_env, extra_env={"CMDOP_SOCKET_PATH": str(sys_sock),
                                           "CMDOP_STATE_DIR": str(sys_state)})
    shell_env = {k: v for k, v in cmdop_env.env.items() if not k.startswith(("CMDOP_", "XDG_"))}
    shell_env["XDG_RUNTIME_DIR"] = str(tmp_path / "xdg-run")

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        code = ("import sys; import cmdop.adapters.service_paths as s;"
                f"s.SYSTEM_SOCKET = {str(sys_sock)!r}; s.SYSTEM_STATE_DIR = {str(sys_state)!r};"
                "from cmdop.cli.main import main; sys.exit(main(sys.argv[1:]))")
        return subprocess.run([sys.executable, "-c", code, *args], env=dict(shell_env, **extra),
                              capture_output=True, text=True, timeout=60, cwd=str(cmdop_env.home))

    try:
        status = json.loads(cli("agent", "status", "--json").stdout)
        assert status["state"] == "ONLINE" and status["pid"] == d.proc.pid
        run = cli("run", "execute_command", "--input", '{"command": "echo sys"}')
        assert run.returncode == 0 and json.loads(run.stdout)["stdout"] == "sys\n", run.stderr
        assert "echo sys" in (sys_state / "audit.log").read_text()
        # an explicit override still wins
        mine = cli("agent", "status", "--json", CMDOP_STATE_DIR=str(tmp_path / "mine"))
        assert json.loads(mine.stdout)["state"] == "STOPPED"
    finally:
        assert d.stop() == 0
