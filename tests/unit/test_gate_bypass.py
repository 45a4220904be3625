"""Attempts to smuggle something past an allow rule: with `ls *`, `echo *`, `git status` and
`cat ~/proj/*` allowed, none of these may come out `allow` (they fall to the mode, strict here,
or hit a deny rule or the floor). The positive controls show the rules still work."""

from __future__ import annotations

import pytest

from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.policy.gate import Policy, decide
from cmdop.core.policy.index import RuleSet
from cmdop.core.policy.rules import parse_rule

HOME = "/home/u"
RULES = [("execute_command(ls *)", "allow"), ("execute_command(echo *)", "allow"),
         ("execute_command(git status)", "allow"), ("execute_command(cat ~/proj/*)", "allow"),
         ("execute_command(curl *)", "deny")]
POLICY = Policy(mode="strict", global_rules=RuleSet([parse_rule(r, a, home=HOME, order=i)
                                                     for i, (r, a) in enumerate(RULES)]))


def decision(command: str) -> tuple[str, str]:
    d = decide(ToolCall("execute_command", {"command": command}, "", HOME + "/proj"),
               Caller(CallerKind.REMOTE), POLICY, HOME)
    return d.decision, d.source


SMUGGLED = [
    # separators of every kind
    "ls; wget x", "ls && wget x", "ls || wget x", "ls | wget x", "ls & wget x", "ls\nwget x", "ls |& wget x",
    "ls;wget x", "(ls); wget x", "{ ls; wget x; }", "ls -la #\nwget x", "ls -la \\\n; wget x",
    # substitutions and expansions
    "ls `wget x`", "ls $(wget x)", "ls <(wget x)", "ls >(wget x)", "ls ${X:-$(wget x)}", "ls \"$(wget x)\"",
    "echo $(wget x)", "echo `wget x`", "ls $IFS", "ls${IFS}x", "echo ${PATH}", "echo $((1+2))", "echo $[1+2]",
    "ls {a,b}", "ls ~/../..", "ls a/../../b", "$L -la", "${L} -la", "l$S -la", "l* -la", "l? -la", "[l]s -la",
    # redirections
    "ls > ~/notes", "ls >> f", "ls 2> f", "ls &> f", "ls >| f", "ls < /tmp/f", "ls <<< x", "ls <<EOF\nx\nEOF",
    "echo x > /tmp/run.sh", "echo x >&3",
    # assignments and program paths
    "LD_PRELOAD=/tmp/x.so ls", "PATH=/tmp ls", "env PATH=/tmp ls", "env -C /tmp ls", "X=1; ls",
    "/tmp/ls -la", "./ls -la", "~/bin/ls", "/usr/local/sbin/ls", "/opt/bin/ls",
    # look-alikes: case, unicode, odd whitespace
    "LS -la", "Ls -la", "\uff4c\uff53 -la", "l\u0455 -la", "ls\u00a0-la", "git  status --porcelain",
    "git status --porcelain", "git status; git push", "GIT status",
    # wrappers that change privilege or arguments
    "sudo ls", "doas ls", "xargs ls", "watch ls", "su -c ls", "chroot / ls", "systemd-run ls",
    # nested scripts with a stowaway
    "bash -c 'ls; wget x'", "sh -c 'ls && wget x'", "eval 'ls; wget x'", "eval ls\\;wget x", "bash -c \"$X\"",
    "env -S 'ls; wget x'",
    # deny rules are not dodged by spelling
    "curl x", "/tmp/curl x", "c\\url x", "'curl' x", "\"cu\"rl x", "sudo curl x", "nice curl x",
    "command curl x", "bash -c 'curl x'", "ls && curl x", "echo $(curl x)",
    # paths the `cat ~/proj/*` rule must not reach
    "cat ~/proj/../secret", "cat /home/u/proj/../../etc/x", "cat ~/proj/x > ~/proj/y",
    # syntax errors
    "ls 'unterminated", "ls \"unterminated", "ls $(", "ls && ", "ls |", "ls )",
]


@pytest.mark.parametrize("command", SMUGGLED)
def test_smuggled_commands_are_not_allowed(command: str) -> None:
    assert decision(command)[0] != "allow", command


@pytest.mark.parametrize("command", [
    "ls -la", "ls", "l\\s -la", "'ls' -la", '"ls" -la', "$'ls' -la", "ls -la # note", "/bin/ls -la",
    "/usr/bin/ls -la", "command ls -la", "nice ls", "nohup ls", "timeout 5 ls", "ls -la && echo done",
    "git status", "ls *.py", "ls -la 2>/dev/null", "bash -c 'ls && echo hi'", "cat ~/proj/notes.txt",
    "ls \\\n -la", "echo 'a; b | c > d'",
])
def test_spellings_of_allowed_commands_are_allowed(command: str) -> None:
    assert decision(command) == ("allow", "rule"), command


@pytest.mark.parametrize("command", ["curl x", "/tmp/curl x", "c\\url x", "sudo curl x", "ls && curl x",
                                     "bash -c 'curl x'", "echo $(curl x)", "\"cu\"rl x"])
def test_deny_rule_sees_through_spellings(command: str) -> None:
    assert decision(command) == ("deny", "rule"), command
