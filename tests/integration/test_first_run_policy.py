"""A first run that just works: the agent writes a starter permissions.yaml and comes up ONLINE;
`cmdop permissions init|path`; reloads judge the file's owner and mode, and an empty file, keeping
the last good policy (the real CLI and daemon as subprocesses)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from test_daemon_helpers import start_daemon, wait_for, write_policy

from cmdop.adapters import policy_store


def status(env) -> dict:
    out = env.run("agent", "status", "--json")
    assert out.returncode == 0, out.stderr
    st: dict = json.loads(out.stdout)
    return st


def test_first_run_writes_the_starter_policy_and_comes_up_online(cmdop_env):
    path = cmdop_env.config_dir / "permissions.yaml"
    assert not path.exists()
    d = start_daemon(cmdop_env)
    try:
        st = wait_for(lambda: (s := status(cmdop_env))["state"] == "ONLINE" and s, 20, "ONLINE")
        assert st["policy_ok"] is True and st["mode"] == "strict" and not st["policy_error"], st
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        doc, policy = policy_store.parse_text(path.read_text(), str(cmdop_env.home))
        assert (doc.mode, doc.rules, policy.mode) == ("strict", (), "strict")
        assert "# - rule: execute_command(uptime)" in path.read_text()
        assert str(path) in d.log() and "starter policy" in d.log()
        # strict with no rules: a remote call is denied by the mode
        out = d.call("execute_command", {"command": "uptime"}, as_caller="remote")
        assert out.get("error") == "permission_denied", out
    finally:
        assert d.stop() == 0
    # a second start keeps the file as it is
    write_policy(cmdop_env, "version: 1\nmode: default\nrules: []\n")
    d = start_daemon(cmdop_env)
    try:
        assert "starter policy" not in d.log()
        assert wait_for(lambda: status(cmdop_env)["mode"] == "default", 20, "mode default")
    finally:
        assert d.stop() == 0


def test_permissions_init_writes_once_then_refuses(cmdop_env):
    path = cmdop_env.config_dir / "permissions.yaml"
    mode = cmdop_env.run("permissions", "mode")
    assert mode.returncode == 0 and "from permissions.yaml" not in mode.stdout, mode.stdout
    assert "default" in mode.stdout and "strict" in mode.stdout
    out = cmdop_env.run("permissions", "init")
    assert out.returncode == 0, out.stderr
    assert str(path) in out.stdout and "cmdop permissions add" in out.stdout
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text() == policy_store.STARTER
    assert cmdop_env.run("permissions", "mode").stdout.strip() == "strict (from permissions.yaml)"
    path.write_text(path.read_text() + "# mine\n")
    again = cmdop_env.run("permissions", "init")
    assert again.returncode == 1
    assert f"already exists at {path}" in again.stderr and "hint: edit" in again.stderr
    assert "--force" not in again.stderr
    assert path.read_text().endswith("# mine\n")
    js = cmdop_env.run("permissions", "init", "--json")
    assert js.returncode == 1


def test_permissions_init_json(cmdop_env):
    out = cmdop_env.run("permissions", "init", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["created"] == str(cmdop_env.config_dir / "permissions.yaml")


def test_permissions_path(cmdop_env):
    out = cmdop_env.run("permissions", "path", "--json")
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout)
    cfg, state = cmdop_env.config_dir, cmdop_env.state_dir
    assert p["policy"] == str(cfg / "permissions.yaml") and p["policy_exists"] is False
    assert p["config"] == str(cfg / "config.yaml")
    assert p["state_dir"] == str(state) and p["audit_log"] == str(state / "audit.log")
    assert p["socket"] == str(cmdop_env.socket_path) and p["socket_fallback"] is False
    assert p["socket_source"] == "CMDOP_SOCKET_PATH"
    assert p["credentials_dir"] == str(cmdop_env.cmdop_home) and p["system_service"] is False
    human = cmdop_env.run("permissions", "path")
    assert human.returncode == 0 and str(cfg / "permissions.yaml") in human.stdout
    assert "permissions init" in human.stdout           # says the policy is missing

    # no CMDOP_SOCKET_PATH and no XDG_RUNTIME_DIR: the socket falls back under ~/.cmdop
    env = {k: v for k, v in cmdop_env.env.items() if k not in ("CMDOP_SOCKET_PATH", "XDG_RUNTIME_DIR")}
    run = subprocess.run([sys.executable, "-m", "cmdop", "permissions", "path", "--json"], env=env,
                         text=True, capture_output=True, timeout=60, cwd=cmdop_env.home)
    p = json.loads(run.stdout)
    assert p["socket"] == str(cmdop_env.cmdop_home / "agent.sock") and p["socket_fallback"] is True
    assert "XDG_RUNTIME_DIR is not set" in p["socket_source"]
    human = subprocess.run([sys.executable, "-m", "cmdop", "permissions", "path"], env=env,
                           text=True, capture_output=True, timeout=60, cwd=cmdop_env.home)
    assert "XDG_RUNTIME_DIR is not set" in human.stdout
    env["XDG_RUNTIME_DIR"] = str(cmdop_env.home / "rt")
    p = json.loads(subprocess.run([sys.executable, "-m", "cmdop", "permissions", "path", "--json"],
                                  env=env, text=True, capture_output=True, timeout=60).stdout)
    assert p["socket"] == str(cmdop_env.home / "rt" / "cmdop" / "agent.sock")
    assert p["socket_fallback"] is False and p["socket_source"] == "XDG_RUNTIME_DIR"


ECHO_ALLOWED = """\
version: 1
mode: strict
rules:
  - rule: "execute_command(echo *)"
    action: allow
"""


def test_reload_judges_mode_and_empty_files_keeping_the_last_good_policy(cmdop_env):
    path = write_policy(cmdop_env, ECHO_ALLOWED)
    d = start_daemon(cmdop_env)
    probe = {"command": "echo kept"}
    try:
        assert wait_for(lambda: status(cmdop_env)["state"] == "ONLINE", 20, "ONLINE")
        assert d.call("execute_command", probe, as_caller="remote")["stdout"] == "kept\n"

        os.chmod(path, 0o666)      # only the mode changes: no new content
        st = wait_for(lambda: (s := status(cmdop_env))["state"] == "DEGRADED" and s, 15,
                      "DEGRADED after chmod 666")
        assert "writable by other users" in st["policy_error"] and st["policy_ok"] is False, st
        assert d.call("execute_command", probe, as_caller="remote")["stdout"] == "kept\n"

        os.chmod(path, 0o600)
        st = wait_for(lambda: (s := status(cmdop_env))["state"] == "ONLINE" and s, 15,
                      "ONLINE after chmod 600")
        assert st["policy_ok"] is True and not st["policy_error"]

        write_policy(cmdop_env, "")     # an empty (e.g. truncated) file
        st = wait_for(lambda: (s := status(cmdop_env))["state"] == "DEGRADED" and s, 15,
                      "DEGRADED after an empty file")
        assert "empty" in st["policy_error"], st
        assert st["mode"] == "strict"
        assert d.call("execute_command", probe, as_caller="remote")["stdout"] == "kept\n"

        write_policy(cmdop_env, ECHO_ALLOWED.replace("echo *", "printf *"))
        wait_for(lambda: status(cmdop_env)["state"] == "ONLINE", 15, "ONLINE after a good file")
        assert d.call("execute_command", probe, as_caller="remote")["error"] == "permission_denied"
    finally:
        assert d.stop() == 0
