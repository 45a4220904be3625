"""permissions.yaml store, canonical paths and the Gatekeeper (real files in tmp_path)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from cmdop.adapters import policy_store
from cmdop.adapters.canonical import canonical_path
from cmdop.adapters.gatekeeper import Gatekeeper
from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.errors import PolicyError
from cmdop.core.policy.rules import rule_id
from cmdop.core.settings import Settings

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
REMOTE = Caller(CallerKind.REMOTE)


def settings_for(tmp_path: Path, **env: str) -> Settings:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return Settings.from_env({"HOME": str(home), "CMDOP_CONFIG_DIR": str(home / "cfg"), **env}, str(home))


def write_policy(s: Settings, text: str) -> None:
    os.makedirs(s.config_dir, exist_ok=True)
    Path(s.permissions_file).write_text(text)
    os.chmod(s.permissions_file, 0o600)


def cmd(command: str, cwd: str = "/tmp") -> ToolCall:
    return ToolCall("execute_command", {"command": command}, "", cwd)


def test_contract_example_loads_and_allows_git(tmp_path: Path) -> None:
    doc, policy = policy_store.parse_text(CONTRACT_EXAMPLE, "/home/u")
    assert (doc.mode, doc.ask_timeout_s, doc.self_bypass, len(policy.global_rules)) == ("strict", 60.0, True, 1)
    assert policy.global_rules.rules[0].id == rule_id("execute_command(git *)", "allow")


@pytest.mark.parametrize("text, line, words", [
    ("version: 1\nfoo: 2\n", 2, "unknown key 'foo'"),
    ("version: 2\n", 1, "version must be 1"),
    ("mode: lenient\n", 1, "mode 'lenient'"),
    ("rules:\n  - rule: 'execute_command(x)'\n    action: permit\n", 3, "action 'permit'"),
    ("rules:\n  - rule: 'read_file(/a/[b)'\n    action: allow\n", 2, "unclosed"),
    ("rules:\n  - rule: 'nosuchtool(x)'\n    action: allow\n", 2, "unknown tool"),
    ("rules:\n  - rule: 'ls'\n    action: allow\n    colour: red\n", 4, "unknown key 'colour'"),
    ("rules:\n  - action: allow\n", 2, "needs 'rule'"),
    ("rules:\n  - {rule: 'execute_command(x)', action: allow}\n  - {rule: 'execute_command(x)', action: allow}\n",
     3, "duplicate rule"),
    ("ask_timeout_s: -1\n", 1, "ask_timeout_s"),
    ("self_bypass: maybe\n", 1, "self_bypass"),
    ("rules: [\n", 2, "not valid YAML"),
    (("rules:\n  - {rule: 'execute_command(ls *)', action: allow}\ntests:\n  - call: 'execute_command(ls -l)'\n"
      "    expect: deny\n"), 4, "test failed"),
    ("tests:\n  - call: 'execute_command(ls)'\n    expect: maybe\n", 2, "expect 'maybe'"),
    # found by a black-box pass: internal errors, or taken for version 1
    ("rules:\n  - rule: \"execute_command(\\ud800)\"\n    action: allow\n", 2, "Unicode text"),
    ("version: 1\nmode: !!python/name:os.system\n", 2, "mode: could not determine a constructor"),
    ("version: true\n", 1, "version must be 1, not True"),
    ("version: 1.0\n", 1, "version must be 1, not 1.0"),
])
def test_invalid_files_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(PolicyError) as err:
        policy_store.parse_text(text, "/home/u")
    assert err.value.line == line and words in err.value.message and err.value.message.startswith(f"line {line}:")


def test_save_is_atomic_0600_and_round_trips(tmp_path: Path) -> None:
    path = str(tmp_path / "cfg" / "permissions.yaml")
    doc = policy_store.PolicyDoc(mode="default", rules=(("execute_command(git *)", "allow", "dev"),
                                                        ("read_file(~/x/**)", "deny", "")))
    policy_store.save(path, doc, "/home/u")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = policy_store.load(path, "/home/u")
    assert loaded is not None and loaded[0].rules == doc.rules and loaded[0].mode == "default"
    assert [f for f in os.listdir(tmp_path / "cfg") if f.startswith(".tmp")] == []


def test_world_writable_policy_is_refused(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    write_policy(s, "mode: bypass\n")
    os.chmod(s.permissions_file, 0o666)
    with pytest.raises(PolicyError) as err:
        policy_store.load(s.permissions_file, s.home)
    assert "chmod 600" in (err.value.hint or "")


def test_missing_file_at_start_denies_remote_but_not_local(tmp_path: Path) -> None:
    gk = Gatekeeper(settings_for(tmp_path, CMDOP_PERMISSIONS_MODE="bypass"))
    assert not gk.policy_ok
    d = gk.evaluate(cmd("uptime"), REMOTE)
    assert d.decision == "deny" and "no permissions file" in d.reason
    assert gk.evaluate(cmd("uptime"), Caller(CallerKind.SELF)).decision == "deny"
    assert gk.evaluate(cmd("uptime"), Caller(CallerKind.LOCAL)).decision == "allow"
    assert gk.evaluate(cmd("rm -rf /"), Caller(CallerKind.LOCAL)).source == "floor"


def test_invalid_file_at_start_denies_and_reload_keeps_last_good(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    write_policy(s, "mode: [\n")
    gk = Gatekeeper(s)
    assert not gk.policy_ok and gk.evaluate(cmd("git status"), REMOTE).decision == "deny"
    write_policy(s, CONTRACT_EXAMPLE)
    assert gk.reload() is None and gk.policy_ok
    assert gk.evaluate(cmd("git status"), REMOTE).decision == "allow"
    write_policy(s, "mode: bypass\nrules: 7\n")
    err = gk.reload()
    assert isinstance(err, PolicyError) and err.line == 2
    assert gk.mode == "strict" and gk.evaluate(cmd("git status"), REMOTE).decision == "allow"


def test_env_mode_overrides_file_and_a_typo_means_strict(tmp_path: Path) -> None:
    s = settings_for(tmp_path, CMDOP_PERMISSIONS_MODE="default")
    write_policy(s, CONTRACT_EXAMPLE)
    assert Gatekeeper(s).evaluate(cmd("uptime"), REMOTE).decision == "ask"
    s = settings_for(tmp_path, CMDOP_PERMISSIONS_MODE="bypas")
    assert Gatekeeper(s).mode == "strict"


def test_session_and_global_rules(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    write_policy(s, CONTRACT_EXAMPLE)
    gk = Gatekeeper(s)
    rid = gk.add_session_rule("execute_command(uptime)", "allow", "ok")
    assert rid == rule_id("execute_command(uptime)", "allow")
    assert gk.evaluate(cmd("uptime"), REMOTE).rule_id == rid
    assert "uptime" not in Path(s.permissions_file).read_text()        # session rules stay in memory
    gid = gk.add_global_rule("execute_command(git push *)", "deny")
    assert gk.evaluate(cmd("git push origin"), REMOTE).rule_id == gid
    assert "git push" in Path(s.permissions_file).read_text()
    assert stat.S_IMODE(os.stat(s.permissions_file).st_mode) == 0o600
    with pytest.raises(PolicyError):
        gk.add_session_rule("execute_command(x", "allow")


def test_evaluate_is_safe_while_reloading(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    write_policy(s, CONTRACT_EXAMPLE)
    gk = Gatekeeper(s)
    bad: list[str] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            d = gk.evaluate(cmd("git status"), REMOTE)
            if d.decision != "allow":
                bad.append(d.reason)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(30):
        gk.reload()
        gk.add_session_rule(f"execute_command(tool{i})", "allow")
    stop.set()
    for t in threads:
        t.join()
    assert bad == []


def test_evaluate_resolves_symlinks_and_proc_aliases(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    write_policy(s, f"mode: bypass\nrules:\n  - rule: 'read_file({tmp_path}/public/**)'\n    action: allow\n")
    gk = Gatekeeper(s)
    secret = Path(s.home) / ".ssh"
    secret.mkdir()
    (secret / "id_rsa").write_text("k")
    public = tmp_path / "public"
    public.mkdir()
    (public / "notes.txt").symlink_to(secret / "id_rsa")
    d = gk.evaluate(ToolCall("read_file", {"path": "notes.txt"}, "", str(public)), REMOTE)
    assert (d.decision, d.source) == ("deny", "floor")
    d = gk.evaluate(ToolCall("read_file", {"path": "/proc/self/root/etc/passwd"}, "", "/"), Caller(CallerKind.LOCAL))
    assert d.source == "floor"


def test_canonical_path(tmp_path: Path) -> None:
    home = str(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert canonical_path("~/link/x/../y", "/", home) == f"{tmp_path}/real/y"
    assert canonical_path("link/new/file", home, home) == f"{tmp_path}/real/new/file"
    assert canonical_path("//etc//./hosts", "/", home) == "/etc/hosts"
    assert canonical_path("/proc/self/root/etc/hosts", "/", home) == "/etc/hosts"
    with open(tmp_path / "real" / "f", "w") as f:
        assert canonical_path(f"/dev/fd/{f.fileno()}", "/", home) == f"{tmp_path}/real/f"
        assert canonical_path(f"/proc/self/fd/{f.fileno()}", "/", home) == f"{tmp_path}/real/f"


def test_cmdops_own_dirs_are_floor_wherever_the_environment_puts_them(tmp_path: Path) -> None:
    s = settings_for(tmp_path, CMDOP_CONFIG_DIR=str(tmp_path / "cfg"), CMDOP_STATE_DIR=str(tmp_path / "state"),
                     CMDOP_PERMISSIONS_MODE="bypass")
    write_policy(s, "mode: bypass\n")
    gk = Gatekeeper(s)
    for tool, target in (("write_file", str(tmp_path / "cfg" / "permissions.yaml")),
                         ("read_file", str(tmp_path / "state" / "audit.log")),
                         ("execute_command", f"echo x > {tmp_path}/state/audit.log")):
        field = "command" if tool == "execute_command" else "path"
        d = gk.evaluate(ToolCall(tool, {field: target}, "", "/"), Caller(CallerKind.LOCAL))
        assert (d.decision, d.source) == ("deny", "floor"), (tool, d.reason)
    assert gk.evaluate(ToolCall("read_file", {"path": str(tmp_path / "other")}, "", "/"), REMOTE).decision == "allow"
