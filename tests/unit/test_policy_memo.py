"""The command line's memo of the last policy text it parsed (policy_store.load(memo=...)): a
hit answers exactly as a fresh parse, an edit is seen at once, and a memo file anyone else could
have written is never believed."""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cmdop.adapters import policy_store
from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.errors import PolicyError
from cmdop.core.policy.gate import decide

HOME = "/home/u"
POLICIES = [
    "version: 1\nmode: strict\n",
    "version: 1\nmode: default\nask_timeout_s: 5\nself_bypass: false\nrules:\n"
    "  - rule: execute_command(ls *)\n    action: allow\n    reason: read-only\n"
    "  - rule: read_file(~/projects/**)\n    action: allow\n"
    "  - rule: execute_command(rm *)\n    action: deny\n"
    "tests:\n  - call: execute_command(ls -la)\n    expect: allow\n"
    "  - call: execute_command(rm -rf x)\n    expect: deny\n",
    "# only a comment and a mode\nmode: bypass\nrules: []\n",
]
CALLS = [ToolCall("execute_command", {"command": c}, cwd=HOME) for c in ("ls -la", "rm x", "id")] + [
    ToolCall("read_file", {"path": p}, cwd=HOME) for p in ("~/projects/a", "/etc/passwd")]


def _policy_file(tmp_path: Path, text: str) -> str:
    """`text` as the policy file, beside a state dir (an agent has run here)."""
    (tmp_path / "state").mkdir(mode=0o700, exist_ok=True)
    path = tmp_path / "cfg" / "permissions.yaml"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def _answers(loaded: tuple[policy_store.PolicyDoc, object]) -> list[tuple[str, str, str]]:
    doc, policy = loaded
    remote = Caller(CallerKind.REMOTE)
    return [(d.decision, d.source, d.rule_id) for d in
            (decide(c, remote, policy, HOME) for c in CALLS)]  # type: ignore[arg-type]


@pytest.mark.parametrize("text", POLICIES)
def test_a_remembered_parse_answers_as_a_fresh_one(tmp_path: Path, text: str) -> None:
    path = _policy_file(tmp_path, text)
    memo = str(tmp_path / "state" / "permissions.memo")
    fresh = policy_store.load(path, HOME)
    first = policy_store.load(path, HOME, memo=memo)     # parses, remembers
    assert os.path.exists(memo) and os.stat(memo).st_mode & 0o777 == 0o600
    again = policy_store.load(path, HOME, memo=memo)     # from the memo
    assert fresh is not None and first is not None and again is not None
    assert fresh[0] == first[0] == again[0]
    assert _answers(fresh) == _answers(first) == _answers(again)


def test_an_edit_is_seen_at_once(tmp_path: Path) -> None:
    path = _policy_file(tmp_path, "version: 1\nmode: strict\nrules:\n  - rule: execute_command(id)\n    action: allow\n")
    memo = str(tmp_path / "state" / "permissions.memo")
    assert _answers(policy_store.load(path, HOME, memo=memo))[2][0] == "allow"  # type: ignore[arg-type]
    _policy_file(tmp_path, "version: 1\nmode: strict\nrules:\n  - rule: execute_command(id)\n    action: deny\n")
    assert _answers(policy_store.load(path, HOME, memo=memo))[2][0] == "deny"  # type: ignore[arg-type]
    _policy_file(tmp_path, "version: 1\nmode: strict\nrules:\n  - rule: execute_command(id\n    action: deny\n")
    with pytest.raises(PolicyError):    # an error is never remembered away
        policy_store.load(path, HOME, memo=memo)
    with pytest.raises(PolicyError):
        policy_store.load(path, HOME, memo=memo)


def _forge(memo: Path, text: str) -> None:
    """A memo that says `text` allows every command (the file says strict, no rules)."""
    document = {"mode": "bypass", "ask_timeout_s": 60.0, "self_bypass": True, "mode_set": True,
                "rules": [("execute_command", "allow", "", 1, 1)], "tests": []}
    memo.parent.mkdir(mode=0o700, exist_ok=True)
    memo.write_bytes(marshal.dumps((policy_store._memo_key(text), document)))


@pytest.mark.parametrize("how", ["mode 0644", "mode 0620", "directory 0777", "another owner", "garbage"])
def test_a_memo_others_could_write_is_never_believed(tmp_path: Path, how: str) -> None:
    text = "version: 1\nmode: strict\n"
    path = _policy_file(tmp_path, text)
    memo = tmp_path / "state" / "permissions.memo"
    _forge(memo, text)
    memo.chmod(0o600)
    assert _answers(policy_store.load(path, HOME, memo=str(memo)))[2][0] == "allow"  # type: ignore[arg-type]  # the control
    if how.startswith("mode"):
        memo.chmod(int(how.split()[1], 8))
    elif how == "directory 0777":
        memo.parent.chmod(0o777)
    elif how == "another owner":
        if os.geteuid() != 0:
            pytest.skip("giving a file to another user needs root")
        os.chown(memo, 65534, 65534)
    else:
        memo.write_bytes(b"\x00not marshal")
        memo.chmod(0o600)
    assert _answers(policy_store.load(path, HOME, memo=str(memo)))[2][0] == "deny"  # type: ignore[arg-type]


def test_a_state_dir_swapped_after_its_check_is_not_read_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a red team: with a directory on the way that another user can write, they could
    swap the state dir for their own between the checks and the read (root believed their
    memo 10 times in 160). The swap is made here at the last moment, as the memo file is
    opened: what is read must still come from the directory that was checked."""
    text = "version: 1\nmode: strict\n"
    path = _policy_file(tmp_path, text)
    state, evil = tmp_path / "state", tmp_path / "evil"
    policy_store.load(path, HOME, memo=str(state / "permissions.memo"))   # the real memo: strict
    evil.mkdir(mode=0o700)
    _forge(evil / "permissions.memo", text)          # the planted one would allow everything
    (evil / "permissions.memo").chmod(0o600)

    def swap_first(opener: Any) -> Any:
        def opening(file: Any, *args: Any, **kwargs: Any) -> Any:
            if str(file).endswith("permissions.memo") and evil.exists():
                state.rename(tmp_path / "was-state")
                evil.rename(state)
            return opener(file, *args, **kwargs)
        return opening

    monkeypatch.setattr(os, "open", swap_first(os.open))
    monkeypatch.setattr("builtins.open", swap_first(open))
    answers = _answers(policy_store.load(path, HOME, memo=str(state / "permissions.memo")))  # type: ignore[arg-type]
    monkeypatch.undo()
    assert not evil.exists()                          # (the swap happened)
    assert answers[2][0] == "deny"


@pytest.mark.parametrize("body", [{}, {"rules": None}, "not a dict",
                                  {"mode": "strict", "ask_timeout_s": 60.0, "self_bypass": True,
                                   "mode_set": True, "rules": [("execute_command", "allow")], "tests": []}])
def test_a_memo_of_another_shape_is_parsed_again_not_an_error(tmp_path: Path, body: object) -> None:
    """Found by a red team: every read-only command failed with an internal KeyError."""
    text = "version: 1\nmode: strict\n"
    path = _policy_file(tmp_path, text)
    memo = tmp_path / "state" / "permissions.memo"
    memo.write_bytes(marshal.dumps((policy_store._memo_key(text), body)))
    memo.chmod(0o600)
    loaded = policy_store.load(path, HOME, memo=str(memo))
    assert loaded is not None and loaded[0].mode == "strict" and not loaded[0].rules


def test_a_killed_writers_leftover_is_removed_by_the_next_write(tmp_path: Path) -> None:
    path = _policy_file(tmp_path, "version: 1\nmode: strict\n")
    leftover = tmp_path / "state" / ".permissions.memo.tmp-0123456789abcdef"
    leftover.write_bytes(b"x" * 100)
    policy_store.load(path, HOME, memo=str(tmp_path / "state" / "permissions.memo"))
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["permissions.memo"]


@pytest.mark.parametrize("how", ["0777", "1777", "another owner"])
def test_nothing_is_written_into_a_state_dir_others_can_write(tmp_path: Path, how: str) -> None:
    """Found by a red team: root wrote its memo (the policy's text) where it would not read one."""
    path = _policy_file(tmp_path, "version: 1\nmode: strict\n")
    state = tmp_path / "state"
    if how == "another owner":
        if os.geteuid() != 0:
            pytest.skip("giving a directory to another user needs root")
        os.chown(state, 65534, 65534)
    else:
        state.chmod(int(how, 8))
    policy_store.load(path, HOME, memo=str(state / "permissions.memo"))
    assert list(state.iterdir()) == []


@pytest.mark.parametrize("state", ["missing", "a file"])
def test_a_memo_is_kept_only_in_a_state_dir_that_exists(tmp_path: Path, state: str) -> None:
    """A read-only command makes no state dir: its absence is how `agent status` and a root
    shell's commands tell that no agent has run as this user."""
    text = "version: 1\nmode: strict\n"
    path = _policy_file(tmp_path, text)
    (tmp_path / "state").rmdir()
    if state == "a file":
        (tmp_path / "state").write_text("a file where the state dir should be")
    for _ in range(2):
        loaded = policy_store.load(path, HOME, memo=str(tmp_path / "state" / "permissions.memo"))
        assert loaded is not None and loaded[0].mode == "strict"   # the memo is skipped, not an error
    assert (tmp_path / "state").exists() == (state == "a file")


# Several mistakes in one file: the first one is reported, as a read from the top would find it
# (the YAML is read before the rules' grammar is compiled, and the tests after the rules).
FIRST_MISTAKE = [
    ("rules:\n  - rule: nosuchtool(x)\n    action: allow\n  - rule: execute_command(ls)\n", 2),
    ("rules:\n  - rule: execute_command(ls\n    action: allow\n"
     "tests:\n  - call: execute_command(ls)\n", 2),
    ("rules:\n  - rule: read_file(../x)\n    action: allow\n  - rule: x\n    action: allow\n"
     "    extra: 1\n", 2),
    ("rules:\n  - rule: execute_command(ls)\n    action: allow\n  - rule: execute_command(ls\n"
     "    action: allow\n  - rule: execute_command(id)\n    action: maybe\n", 4),
    ("rules:\n  - rule: execute_command(ls)\n    action: allow\n"
     "tests:\n  - call: execute_command(ls)\n    expect: deny\n", 5),
]


@pytest.mark.parametrize("body, line", FIRST_MISTAKE)
def test_the_first_of_several_mistakes_is_reported(tmp_path: Path, body: str, line: int) -> None:
    path = _policy_file(tmp_path, "version: 1\nmode: strict\n" + body)
    for memo in (None, str(tmp_path / "state" / "permissions.memo"), str(tmp_path / "state" / "permissions.memo")):
        with pytest.raises(PolicyError) as err:
            policy_store.load(path, HOME, memo=memo)
        assert err.value.line == line + 2, err.value.message   # every time, memo or not


def test_a_repeated_check_does_not_import_yaml(tmp_path: Path) -> None:
    """The point of the memo: the second `permissions check` of an unchanged file parses no YAML."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMDOP_", "XDG_"))}
    env.update(HOME=str(tmp_path), CMDOP_CONFIG_DIR=str(tmp_path / "cfg"),
               CMDOP_STATE_DIR=str(tmp_path / "state"), CMDOP_HOME=str(tmp_path / ".cmdop"))
    _policy_file(tmp_path, "version: 1\nmode: strict\nrules:\n  - rule: execute_command(ls)\n    action: allow\n")
    code = ("import sys\nfrom cmdop.cli import main\n"
            "code = main.main(['permissions', 'check', 'execute_command', 'ls'])\n"
            "print('YAML', 'yaml' in sys.modules)\nsys.exit(code)\n")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env=env, cwd=Path(__file__).resolve().parents[2]) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert "allow (source rule" in runs[0].stdout and "YAML True" in runs[0].stdout
    assert runs[1].stdout.replace("YAML False", "YAML True") == runs[0].stdout


def test_a_state_dir_reached_through_another_users_directory_is_not_used(tmp_path: Path) -> None:
    """Found by a second red team: a user who owns a directory on the way to root's state dir
    chose, with a link, which directory of root's the memo went to (/root, /etc/...)."""
    if os.geteuid() != 0:
        pytest.skip("another user's directory needs root to make")
    text = "version: 1\nmode: strict\n"
    path = _policy_file(tmp_path, text)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    target = tmp_path / "roots"
    target.mkdir(mode=0o700)
    (theirs / "state").symlink_to(target)
    os.lchown(theirs / "state", 65534, 65534)
    os.chown(theirs, 65534, 65534)
    for _ in range(2):
        loaded = policy_store.load(path, HOME, memo=str(theirs / "state" / "permissions.memo"))
        assert loaded is not None and loaded[0].mode == "strict"
    assert list(target.iterdir()) == []


def test_a_memo_that_does_not_build_never_blames_the_file(tmp_path: Path) -> None:
    """Found by a second red team: a memo of the right shape with a bad action made every
    read-only command fail with an error about a correct file."""
    text = "version: 1\nmode: strict\n"
    path = _policy_file(tmp_path, text)
    memo = tmp_path / "state" / "permissions.memo"
    document = {"mode": "strict", "ask_timeout_s": 60.0, "self_bypass": True, "mode_set": True,
                "rules": [("execute_command(rm *)", "allowx", "", 4, 4)], "tests": []}
    memo.write_bytes(marshal.dumps((policy_store._memo_key(text), document)))
    memo.chmod(0o600)
    loaded = policy_store.load(path, HOME, memo=str(memo))
    assert loaded is not None and loaded[0].rules == ()
    assert policy_store.load(path, HOME, memo=str(memo))[0].rules == ()  # type: ignore[index]  # rewritten


@pytest.mark.parametrize("text, words", [
    ("version: 1\nrules: " + "[" * 600 + "]" * 600 + "\n", "nested too deeply"),
])
def test_a_pathological_file_is_an_error_not_a_crash(tmp_path: Path, text: str, words: str) -> None:
    path = _policy_file(tmp_path, text)
    with pytest.raises(PolicyError, match=words):
        policy_store.load(path, HOME)


def test_a_file_too_large_for_a_policy_is_refused_unread(tmp_path: Path) -> None:
    path = _policy_file(tmp_path, "version: 1\n")
    with open(path, "r+b") as f:
        f.truncate(policy_store.MAX_POLICY_BYTES + 1)     # sparse: nothing is written
    with pytest.raises(PolicyError, match="more than a policy may be"):
        policy_store.load(path, HOME)
