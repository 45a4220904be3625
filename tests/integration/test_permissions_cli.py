"""`cmdop permissions ...` through the real CLI in a private HOME (CONTRACT §4)."""

from __future__ import annotations

import json
import os
import stat

from tests.conftest import CmdopEnv

CONTRACT_EXAMPLE = """\
version: 1
mode: strict            # default | strict | bypass
ask_timeout_s: 60
self_bypass: true
rules:
  - rule: "execute_command(git *)"
    action: allow       # allow | ask | deny
    reason: "developer convenience"
tests:                  # optional; checked on every load, a failing test rejects the file
  - call: "execute_command(rm -rf ./build)"
    expect: ask
"""


def write_policy(env: CmdopEnv, text: str) -> None:
    env.config_dir.mkdir(parents=True, exist_ok=True)
    path = env.config_dir / "permissions.yaml"
    path.write_text(text)
    os.chmod(path, 0o600)


def check(env: CmdopEnv, *args: str, **extra: str) -> dict[str, str]:
    r = env.run("permissions", "check", "--json", *args, **extra)
    assert r.returncode == 0, r.stderr
    out: dict[str, str] = json.loads(r.stdout)
    return out


def test_check_follows_the_contract_examples(cmdop_env: CmdopEnv) -> None:
    write_policy(cmdop_env, CONTRACT_EXAMPLE)
    out = check(cmdop_env, "execute_command", "git status")
    assert out == {"decision": "allow", "source": "rule", "rule_id": out["rule_id"], "reason": out["reason"],
                   "mode": "strict", "tool": "execute_command", "target": "git status"}
    assert out["rule_id"].startswith("r-") and len(out["rule_id"]) == 14
    assert check(cmdop_env, "execute_command", "/usr/bin/git status")["decision"] == "allow"
    assert check(cmdop_env, "execute_command", "/tmp/git status")["decision"] == "deny"
    assert check(cmdop_env, "execute_command", "./git status")["decision"] == "deny"
    assert check(cmdop_env, "execute_command", "git status && rm -rf x")["decision"] == "deny"
    assert check(cmdop_env, "--mode", "default", "execute_command", "rm -rf ./build")["decision"] == "ask"
    assert check(cmdop_env, "--mode", "bypass", "execute_command", "uptime")["source"] == "mode"
    floor = check(cmdop_env, "--caller", "local", "--mode", "bypass", "execute_command", "sudo rm -rf --no-preserve-root /")
    assert (floor["decision"], floor["source"]) == ("deny", "floor")
    assert check(cmdop_env, "--caller", "local", "execute_command", "uptime")["source"] == "bypass"
    assert check(cmdop_env, "--caller", "self", "execute_command", "uptime")["source"] == "bypass"


def test_check_paths_resolve_against_cwd_and_see_the_floor(cmdop_env: CmdopEnv) -> None:
    proj = cmdop_env.home / "proj"
    proj.mkdir()
    (proj / "link").symlink_to(cmdop_env.home / ".ssh")
    out = check(cmdop_env, "--cwd", str(proj), "--mode", "bypass", "read_file", ".env")
    assert (out["decision"], out["source"], out["target"]) == ("deny", "floor", f"{proj}/.env")
    assert check(cmdop_env, "--cwd", str(proj), "read_file", "link/id_rsa")["source"] == "floor"
    assert check(cmdop_env, "--mode", "bypass", "read_file", "/etcetera/x")["decision"] == "allow"
    assert check(cmdop_env, "--mode", "bypass", "read_file", "/proc/self/root/etc/passwd")["source"] == "floor"
    host = check(cmdop_env, "connect", "--op", "exec", "DB.Example.COM")
    assert (host["target"], host["operation"]) == ("db.example.com", "exec")


def test_env_overrides_file_mode(cmdop_env: CmdopEnv) -> None:
    write_policy(cmdop_env, CONTRACT_EXAMPLE)
    out = check(cmdop_env, "execute_command", "uptime", CMDOP_PERMISSIONS_MODE="default")
    assert (out["decision"], out["mode"]) == ("ask", "default")


def test_invalid_policy_exits_1_with_the_line(cmdop_env: CmdopEnv) -> None:
    write_policy(cmdop_env, "version: 1\nrules:\n  - rule: 'execute_command(x)'\n    action: alow\n")
    r = cmdop_env.run("permissions", "check", "--json", "execute_command", "ls")
    assert r.returncode == 1 and r.stdout == ""
    policy = cmdop_env.config_dir / "permissions.yaml"
    assert r.stderr.startswith(f"cmdop: error: {policy}: line 4:") and "Traceback" not in r.stderr


def test_add_list_rm_mode(cmdop_env: CmdopEnv) -> None:
    r = cmdop_env.run("permissions", "add", "execute_command(make *)", "--action", "allow", "--reason", "builds", "--json")
    assert r.returncode == 0, r.stderr
    added = json.loads(r.stdout)
    path = cmdop_env.config_dir / "permissions.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    listed = json.loads(cmdop_env.run("permissions", "list", "--json").stdout)
    assert listed == [{"rule_id": added["rule_id"], "rule": "execute_command(make *)", "action": "allow",
                       "reason": "builds", "scope": "global"}]
    assert check(cmdop_env, "execute_command", "make all")["rule_id"] == added["rule_id"]
    bad = cmdop_env.run("permissions", "add", "execute_command(make", "--action", "allow")
    assert bad.returncode == 1 and "cmdop: error:" in bad.stderr
    assert cmdop_env.run("permissions", "mode", "default").returncode == 0
    assert json.loads(cmdop_env.run("permissions", "mode", "--json").stdout)["mode"] == "default"
    r = cmdop_env.run("permissions", "mode", "bypass")
    assert r.returncode == 0 and "WARNING" in r.stderr
    assert cmdop_env.run("permissions", "rm", added["rule_id"]).returncode == 0
    assert json.loads(cmdop_env.run("permissions", "list", "--json").stdout) == []
    missing = cmdop_env.run("permissions", "rm", added["rule_id"])
    assert missing.returncode == 1 and "no rule with id" in missing.stderr


def test_explain_names_floor_rules_and_mode(cmdop_env: CmdopEnv) -> None:
    write_policy(cmdop_env, CONTRACT_EXAMPLE)
    r = cmdop_env.run("permissions", "explain", "--mode", "default", "execute_command", "git status; ls -la")
    assert r.returncode == 0, r.stderr
    assert "floor: no floor entry applies" in r.stdout
    assert "MATCHES 'git status'" in r.stdout and "'ls -la'" in r.stdout
    assert "mode: default → ask" in r.stdout and "decision: ask" in r.stdout
    r = cmdop_env.run("permissions", "explain", "read_file", "~/.ssh/id_rsa")
    assert "floor: HIT" in r.stdout and "decision: deny" in r.stdout


def test_test_command_runs_policy_tests_and_adversarial_suite(cmdop_env: CmdopEnv) -> None:
    write_policy(cmdop_env, CONTRACT_EXAMPLE)
    r = cmdop_env.run("permissions", "test", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["tests"][0]["ok"] and out["adversarial"]["failed"] == []
    other = cmdop_env.home / "p.yaml"
    other.write_text("rules:\n  - {rule: 'execute_command(ls *)', action: allow}\n"
                     "tests:\n  - {call: 'execute_command(ls -la)', expect: deny}\n")
    os.chmod(other, 0o600)
    r = cmdop_env.run("permissions", "test", str(other))
    assert r.returncode == 1 and "FAIL" in r.stdout


def test_unknown_tool_is_a_deny_not_a_crash(cmdop_env: CmdopEnv) -> None:
    out = check(cmdop_env, "--caller", "local", "format_disk", "/dev/sda")
    assert (out["decision"], out["source"]) == ("deny", "floor") and "unknown tool" in out["reason"]


def test_explain_shows_the_admission_checks_before_the_gate(cmdop_env: CmdopEnv) -> None:
    write_policy(cmdop_env, CONTRACT_EXAMPLE)
    r = cmdop_env.run("permissions", "explain", "read_file", "~/notes.txt")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    checks = [line for line in lines if line.startswith("admission ")]
    assert [c.split(":")[0] for c in checks] == ["admission known_tool", "admission guest_tools",
                                                 "admission password_session",
                                                 "admission audit_writable", "admission sandbox_available"]
    assert all(": pass — " in c for c in checks)
    assert lines.index(checks[-1]) < next(i for i, line in enumerate(lines) if line.startswith("1. floor"))
    out = json.loads(cmdop_env.run("permissions", "explain", "--json", "--caller", "local",
                                   "format_disk", "/dev/sda").stdout)
    assert out["decision"]["rule_id"] == "admission:unknown_tool"
    assert out["decision"]["reason"] == "unknown tool: format_disk"
    assert "admission known_tool: FAIL (admission:unknown_tool) — unknown tool: format_disk" in out["steps"]
    assert out["steps"][-1] == "decision: deny (source floor, rule admission:unknown_tool) — unknown tool: format_disk"
