"""First run and reload safety of permissions.yaml (policy_store, Gatekeeper, the daemon's
watcher stamp): the starter file, empty files, owner/mode judged on every reload."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cmdop.adapters import policy_store
from cmdop.adapters.gatekeeper import Gatekeeper
from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.errors import PolicyError
from cmdop.core.settings import Settings

REMOTE = Caller(CallerKind.REMOTE)
GOOD = "version: 1\nmode: strict\nrules:\n  - rule: execute_command(uptime)\n    action: allow\n"


def settings_for(tmp_path: Path) -> Settings:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return Settings.from_env({"HOME": str(home)}, str(home))


def write(path: str, text: str, mode: int = 0o600) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def cmd(command: str) -> ToolCall:
    return ToolCall("execute_command", {"command": command}, "", "/tmp")


def test_starter_is_strict_with_no_rules_and_commented_examples() -> None:
    doc, policy = policy_store.parse_text(policy_store.STARTER, "/home/u")
    assert (doc.mode, doc.rules, doc.tests, policy.mode) == ("strict", (), (), "strict")
    text = policy_store.STARTER
    assert "# - rule: execute_command(uptime)\n#   action: allow" in text
    assert "read_file(/var/log/" in text and "action: ask" in text and "cmdop permissions add" in text
    assert "CONTRACT" not in text and "§" not in text
    # the commented examples are valid rules once uncommented
    lines = text.splitlines()
    start = lines.index("# rules:")
    block = []
    for line in lines[start:]:
        if not line.startswith("# ") or not (line.startswith("# rules:") or line.startswith(("# -", "#  "))):
            break
        block.append(line[2:])
    doc, _ = policy_store.parse_text("version: 1\nmode: strict\n" + "\n".join(block) + "\n", "/home/u")
    assert [a for _, a, _ in doc.rules] == ["allow", "allow", "ask"]


def test_rendered_header_cites_nothing_outside_the_repository(tmp_path: Path) -> None:
    text = policy_store.render(policy_store.PolicyDoc())
    assert "CONTRACT" not in text and "§" not in text


def test_write_starter_creates_0600_once(tmp_path: Path) -> None:
    path = str(tmp_path / "cfg" / "permissions.yaml")
    assert policy_store.write_starter(path) is True
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    write(path, GOOD)
    assert policy_store.write_starter(path) is False
    assert Path(path).read_text() == GOOD


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "   \n# x\n"])
def test_an_empty_file_is_an_error(text: str) -> None:
    with pytest.raises(PolicyError, match="empty"):
        policy_store.parse_text(text, "/home/u")


def test_gatekeeper_first_run_writes_and_loads_the_starter(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    gk = Gatekeeper(s, first_run=True)
    assert gk.created_starter and gk.policy_ok and gk.mode == "strict"
    assert stat.S_IMODE(os.stat(s.permissions_file).st_mode) == 0o600
    assert gk.evaluate(cmd("uptime"), REMOTE).decision == "deny"
    assert Gatekeeper(s, first_run=True).created_starter is False


def test_gatekeeper_without_first_run_writes_nothing(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    gk = Gatekeeper(s)
    assert not gk.policy_ok and not os.path.exists(s.permissions_file)


def test_reload_judges_mode_and_empty_file_keeping_the_last_good(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    write(s.permissions_file, GOOD)
    gk = Gatekeeper(s)
    assert gk.policy_ok and gk.evaluate(cmd("uptime"), REMOTE).decision == "allow"
    os.chmod(s.permissions_file, 0o666)
    err = gk.reload()
    assert isinstance(err, PolicyError) and "writable by other users" in err.message
    assert gk.evaluate(cmd("uptime"), REMOTE).decision == "allow"        # last good kept
    os.chmod(s.permissions_file, 0o620)
    assert isinstance(gk.reload(), PolicyError)
    os.chmod(s.permissions_file, 0o600)
    assert gk.reload() is None
    write(s.permissions_file, "")
    err = gk.reload()
    assert isinstance(err, PolicyError) and "empty" in err.message
    assert gk.policy_ok and gk.evaluate(cmd("uptime"), REMOTE).decision == "allow"


def test_the_watchers_stamp_sees_a_chmod(tmp_path: Path) -> None:
    from cmdop.daemon.app import Daemon

    s = settings_for(tmp_path)
    write(s.permissions_file, GOOD)
    daemon = Daemon.__new__(Daemon)
    daemon.settings = s
    before = daemon._policy_stamp()
    os.chmod(s.permissions_file, 0o666)
    assert daemon._policy_stamp() != before
    os.unlink(s.permissions_file)
    assert daemon._policy_stamp() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_reload_refuses_a_file_owned_by_another_user(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    write(s.permissions_file, GOOD)
    gk = Gatekeeper(s)
    assert gk.policy_ok
    os.chown(s.permissions_file, 65534, 65534)
    from cmdop.daemon.app import Daemon

    daemon = Daemon.__new__(Daemon)
    daemon.settings = s
    before = daemon._policy_stamp()
    err = gk.reload()
    assert isinstance(err, PolicyError) and "owned by uid 65534" in err.message
    assert gk.evaluate(cmd("uptime"), REMOTE).decision == "allow"      # last good kept
    os.chown(s.permissions_file, 0, 0)
    assert daemon._policy_stamp() != before and gk.reload() is None


def test_atomic_create_never_replaces_and_leaves_no_temp_file(tmp_path):
    """The starter policy and the relay's signing key are created this way: a second writer
    (another process at the same moment) finds the first one's file and changes nothing."""
    import os
    import stat

    from cmdop.adapters.secure_file import atomic_create

    path = tmp_path / "d" / "f"
    assert atomic_create(str(path), "first") is True
    assert atomic_create(str(path), "second") is False
    assert path.read_text() == "first"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(path.parent)) == ["f"]
