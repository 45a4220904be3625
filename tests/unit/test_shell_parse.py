"""Shell parsing as the gate sees it: what each command splits into and what rules match."""

from __future__ import annotations

import pytest

from cmdop.core.policy.commands import program_name
from cmdop.core.policy.shell import analyse, remove_line_continuations
from cmdop.core.policy.targets import parts_for_command


def allow_texts(command: str) -> list[str | None]:
    return [p.allow_text for p in parts_for_command(command) if not p.deny_only]


@pytest.mark.parametrize("command, expected", [
    ("git status", ["git status"]),
    ("  git   status  ", ["git status"]),
    ("git status && ls -la", ["git status", "ls -la"]),
    ("git status || ls", ["git status", "ls"]),
    ("git status; ls", ["git status", "ls"]),
    ("git status\nls", ["git status", "ls"]),
    ("git log | head -5", ["git log", "head -5"]),
    ("git log |& head", ["git log", "head"]),
    ("(cd x && make)", ["cd x", "make"]),
    ("{ a; b; }", ["a", "b"]),
    ("git 'status'", ["git status"]),
    ('git "status"', ["git status"]),
    ("g\\it status", ["git status"]),
    ("$'git' status", ["git status"]),
    ("git st\\\natus", ["git status"]),
    ("ls # ; rm -rf x", ["ls"]),
    ("/usr/bin/git status", ["git status"]),
    ("//usr/bin/../bin/git status", ["git status"]),
    ("/tmp/git status", ["/tmp/git status"]),
    ("./git status", ["./git status"]),
    ("nice -n 5 git status", ["git status"]),
    ("nohup git status", ["git status"]),
    ("timeout -s KILL 5 git status", ["git status"]),
    ("command git status", ["git status"]),
    ("exec git status", ["git status"]),
    ("busybox ls", ["ls"]),
    ("env git status", ["git status"]),
    ("env FOO=1 git status", ["FOO=1 git status"]),
    ("LD_PRELOAD=x.so ls", ["LD_PRELOAD=x.so ls"]),
    ("sudo git status", ["sudo git status"]),
    ("sudo -u root git status", ["sudo -u root git status"]),
    ("xargs rm", ["xargs rm"]),
    ("bash -c 'git status && ls'", ["git status", "ls"]),
    ("sh -c \"echo hi\"", ["echo hi"]),
    ("eval 'git status'", ["git status"]),
    ("echo hi > out.txt", ["echo hi\n>out.txt"]),
    ("echo hi 2>&1 >/dev/null", ["echo hi"]),
    ("ls *.py", ["ls *.py"]),
])
def test_split_and_normalise(command: str, expected: list[str]) -> None:
    assert allow_texts(command) == expected


@pytest.mark.parametrize("command", [
    "ls $HOME", "ls ${X}", "ls $(whoami)", "ls `whoami`", "ls <(whoami)", "$X status", "l* -la",
    "ls {a,b}", "ls $((1+2))", "ls ../a/../../b", "ls 'unterminated", "if true; then ls; fi",
    "f() { ls; }", "bash -c \"$X\"", "X=$(id) ls", "ls ${X:-$(rm -rf x)}",
])
def test_unknown_parts_have_no_allow_text(command: str) -> None:
    assert None in allow_texts(command)


def test_substitutions_are_parts_of_their_own() -> None:
    texts = allow_texts("echo $(rm -rf x) `curl y` <(wget z)")
    assert "rm -rf x" in texts and "curl y" in texts and "wget z" in texts


def test_syntax_errors_are_marked() -> None:
    assert analyse("echo 'unterminated").opaque
    assert analyse("ls && ").opaque
    assert not analyse("ls && pwd").opaque


def test_line_continuations_outside_single_quotes_only() -> None:
    assert remove_line_continuations("r\\\nm -rf") == "rm -rf"
    assert remove_line_continuations("echo '\\\n'") == "echo '\\\n'"
    assert remove_line_continuations('echo "a\\\nb"') == 'echo "ab"'


@pytest.mark.parametrize("value, name", [
    ("/bin/rm", "rm"), ("/usr/local/bin/x", "x"), ("/sbin/ip", "ip"), ("/opt/bin/x", "/opt/bin/x"),
    ("rm", "rm"), ("./rm", "./rm"), ("///usr//bin/git", "git"),
])
def test_program_names(value: str, name: str) -> None:
    assert program_name(value) == name


def test_deny_texts_see_through_wrappers_and_paths() -> None:
    deny = [t for p in parts_for_command("sudo /tmp/curl http://x") for t in p.deny_texts]
    assert "curl http://x" in deny
