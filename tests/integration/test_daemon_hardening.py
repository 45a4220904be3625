"""The daemon's own secrets and records: CMDOP_API_KEY is unreadable from the commands it runs
(its /proc environ and every ancestor's), it is undumpable, a downgraded call's audit lines say
`as_caller`, and config.yaml's problems show in its status."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

from test_daemon_helpers import start_daemon, write_policy

POLICY = "version: 1\nmode: strict\nrules: []\n"

# Walk up the ppid chain from the command's shell, printing each pid and its environment.
WALK = ("p=$$; while [ \"$p\" -gt 1 ]; do echo \"pid=$p\"; tr '\\0' '\\n' < /proc/$p/environ "
        "2>/dev/null; p=$(awk '/^PPid:/{print $2}' /proc/$p/status); done")


def audit_lines(env) -> list[dict]:
    path = Path(env.state_dir) / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_commands_cannot_read_the_agents_secrets_and_downgrades_are_audited(cmdop_env):
    write_policy(cmdop_env, POLICY)
    key, token = "ck-" + secrets.token_hex(16), "tok-" + secrets.token_hex(16)
    d = start_daemon(cmdop_env, extra_env={"CMDOP_API_KEY": key, "CMDOP_TOKEN": token})
    try:
        out = d.call("execute_command", {"command": WALK})
        assert out["exit_code"] == 0, out
        pids = [int(x[4:]) for x in out["stdout"].splitlines() if x.startswith("pid=")]
        assert d.proc.pid in pids, out["stdout"]      # the walk went through the daemon
        assert key not in out["stdout"] and token not in out["stdout"]
        assert "CMDOP_API_KEY" not in out["stdout"]
        # nor can the command find them in the daemon's environ by its pid directly
        direct = d.call("execute_command",
                        {"command": f"cat /proc/{d.proc.pid}/environ | tr '\\0' '\\n'"})
        assert key not in direct["stdout"] and "CMDOP_TOKEN" not in direct["stdout"]
        assert "removed CMDOP_API_KEY, CMDOP_TOKEN" in d.log()
        assert "undumpable" not in d.log()

        # a local call's line has no as_caller; a downgraded one keeps it even where the
        # pipeline writes the reason itself ("no approver attached")
        assert "as_caller" not in audit_lines(cmdop_env)[-1]
        denied = d.call("execute_command", {"command": "echo x"}, as_caller="remote")
        assert denied["error"] == "permission_denied"
        line = audit_lines(cmdop_env)[-1]
        assert line["as_caller"] == "remote" and line["user"] == "root"
        assert line["decision"] == "deny" and line["source"] == "mode"
        d.call("execute_command", {"command": "echo y"}, as_caller="self")
        line = audit_lines(cmdop_env)[-1]
        assert line["as_caller"] == "self" and line["source"] == "bypass"
    finally:
        assert d.stop() == 0


def test_make_undumpable_takes_effect():
    code = ("import ctypes; from cmdop.adapters.process_hardening import make_undumpable;"
            "print(make_undumpable(), ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stdout.split() == ["True", "0"], r.stderr


def test_scrub_blanks_the_proc_environ_block():
    code = ("import os; from cmdop.adapters.process_hardening import scrub_secret_env;"
            "print(scrub_secret_env());"
            "print(open('/proc/self/environ','rb').read().count(b'sekrit-value'));"
            "print(os.environ.get('CMDOP_API_KEY'), os.environ['CMDOP_STATE_DIR'])")
    env = {"PATH": "/usr/bin:/bin", "CMDOP_API_KEY": "sekrit-value", "CMDOP_STATE_DIR": "/x",
           "CMDOP_OAUTH_SECRET": "sekrit-value", "PYTHONPATH": str(Path(__file__).parents[2])}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.stdout.splitlines() == ["['CMDOP_API_KEY', 'CMDOP_OAUTH_SECRET']", "0", "None /x"], r.stderr


def test_bad_config_yaml_degrades_the_agent_but_it_serves(cmdop_env):
    write_policy(cmdop_env, POLICY)
    cfg = Path(cmdop_env.config_dir) / "config.yaml"
    cfg.write_text("sandbox_required: true\nsandbox_requird: false\n")
    cfg.chmod(0o600)
    d = start_daemon(cmdop_env)
    try:
        st = json.loads(cmdop_env.run("agent", "status", "--json").stdout)
        assert st["state"] == "DEGRADED" and "line 2: unknown key 'sandbox_requird'" in st["detail"]
        assert d.call("execute_command", {"command": "echo ok"})["stdout"] == "ok\n"
    finally:
        assert d.stop() == 0
    # `cmdop run` in-process reports it as an error
    r = cmdop_env.run("run", "execute_command", "--input", '{"command": "echo hi"}')
    assert r.returncode == 1 and "line 2: unknown key" in r.stderr


def test_make_context_reads_sandbox_required(cmdop_env, monkeypatch):
    from cmdop.core.settings import Settings
    from cmdop.pipeline import make_context

    settings = Settings.from_env(cmdop_env.env, str(cmdop_env.home))
    cfg = Path(settings.config_file)
    cfg.parent.mkdir(parents=True, mode=0o700)
    for text, want in (("", True), ("sandbox_required: false\n", False)):
        cfg.write_text(text)
        cfg.chmod(0o600)
        ctx = make_context(settings, hostname="h")
        try:
            assert ctx.sandbox_required is want
        finally:
            ctx.close()
