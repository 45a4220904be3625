"""Tables of allow/ask/deny decisions for every feature of the rule grammar and the gate order
(CONTRACT §4). Pure: no files."""

from __future__ import annotations

import pytest

from cmdop.core.calls import TOOL_TARGET_FIELD, Caller, CallerKind, ToolCall
from cmdop.core.policy.gate import Policy, decide
from cmdop.core.policy.index import RuleSet
from cmdop.core.policy.rules import RuleError, literal_rule, literal_rules, parse_rule, rule_id

HOME = "/home/u"
CWD = "/home/u/proj"


def policy(*rules: tuple[str, str], mode: str = "strict", session: tuple[tuple[str, str], ...] = (),
           self_bypass: bool = True) -> Policy:
    g = [parse_rule(r, a, home=HOME, order=i) for i, (r, a) in enumerate(rules)]
    s = [parse_rule(r, a, home=HOME, scope="session", order=10_000 + i) for i, (r, a) in enumerate(session)]
    return Policy(mode=mode, self_bypass=self_bypass, global_rules=RuleSet(g), session_rules=RuleSet(s))


def check(p: Policy, tool: str, arg: str, caller: str = "remote", op: str = "", mode: str | None = None,
          cwd: str = CWD) -> tuple[str, str]:
    d = decide(ToolCall(tool, {TOOL_TARGET_FIELD[tool]: arg}, op, cwd), Caller(CallerKind(caller)), p, HOME, mode)
    return d.decision, d.source


DEV = policy(
    ("execute_command(git *)", "allow"),
    ("execute_command(git push *)", "deny"),
    ("execute_command(ls *)", "allow"),
    ("execute_command(echo *)", "allow"),
    ("execute_command(npm publish*)", "ask"),
    ("execute_command(npm *)", "allow"),
    ("execute_command(sudo systemctl restart *)", "allow"),
    ("execute_command(make * > *.log)", "allow"),
    ("read_file(~/proj/**)", "allow"),
    ("read_file(~/proj/secrets/*)", "deny"),
    ("write_file(~/proj/src/*.py)", "allow"),
    ("list_dir(/srv/*/logs)", "allow"),
    ("grep(~/proj/**/*.md)", "ask"),
    ("download_file(/tmp/**)", "allow"),
    ("connect(*.example.com)", "allow"),
    ("connect(exec:db.example.com)", "deny"),
    ("ssh_session(bastion.example.com)", "ask"),
    mode="strict",
)


@pytest.mark.parametrize("tool, arg, op, expected", [
    # command globs, program normalisation, assignments
    ("execute_command", "git status", "", ("allow", "rule")),
    ("execute_command", "git", "", ("allow", "rule")),
    ("execute_command", "/usr/bin/git status", "", ("allow", "rule")),
    ("execute_command", "/tmp/git status", "", ("deny", "mode")),
    ("execute_command", "./git status", "", ("deny", "mode")),
    ("execute_command", "git push origin main", "", ("deny", "rule")),
    ("execute_command", "sudo git push origin", "", ("deny", "rule")),
    ("execute_command", "/tmp/git push origin", "", ("deny", "rule")),
    ("execute_command", "LD_PRELOAD=x.so ls", "", ("deny", "mode")),
    ("execute_command", "env LD_PRELOAD=x.so ls", "", ("deny", "mode")),
    ("execute_command", "git commit -m 'fix: a; b | c'", "", ("allow", "rule")),
    # compound commands: every part must be allowed; any deny denies; ask wins over allow
    ("execute_command", "git status && ls -la", "", ("allow", "rule")),
    ("execute_command", "git status && rm -rf build", "", ("deny", "mode")),
    ("execute_command", "git status; git push x", "", ("deny", "rule")),
    ("execute_command", "npm publish && git status", "", ("ask", "rule")),
    ("execute_command", "npm publish && git push x", "", ("deny", "rule")),
    ("execute_command", "ls $(rm -rf x)", "", ("deny", "mode")),
    ("execute_command", "echo `git status`", "", ("deny", "mode")),
    ("execute_command", "bash -c 'git status && ls'", "", ("allow", "rule")),
    ("execute_command", "bash -c 'git status && rm x'", "", ("deny", "mode")),
    ("execute_command", "sudo systemctl restart nginx", "", ("allow", "rule")),
    ("execute_command", "systemctl restart nginx", "", ("deny", "mode")),
    ("execute_command", "sudo ls", "", ("deny", "mode")),
    # redirections are not spanned by `*`
    ("execute_command", "echo hi > out.txt", "", ("deny", "mode")),
    ("execute_command", "echo hi 2>/dev/null", "", ("allow", "rule")),
    ("execute_command", "make all > build.log", "", ("allow", "rule")),
    ("execute_command", "make all > build.sh", "", ("deny", "mode")),
    # unknown words never match allow rules
    ("execute_command", "ls $HOME", "", ("deny", "mode")),
    ("execute_command", "$CMD status", "", ("deny", "mode")),
    ("execute_command", "l? -la", "", ("deny", "mode")),
    ("execute_command", "ls 'unterminated", "", ("deny", "mode")),
    # most specific: `npm publish*` (ask) beats `npm *` (allow) by action order anyway
    ("execute_command", "npm publish --tag x", "", ("ask", "rule")),
    ("execute_command", "npm install", "", ("allow", "rule")),
    # paths: anchored, canonical, ** and *
    ("read_file", "~/proj/README.md", "", ("allow", "rule")),
    ("read_file", "README.md", "", ("allow", "rule")),
    ("read_file", "~/proj/a/b/c.txt", "", ("allow", "rule")),
    ("read_file", "~/proj/secrets/key", "", ("deny", "rule")),
    ("read_file", "~/proj/../other/x", "", ("deny", "mode")),
    ("read_file", "~/project2/x", "", ("deny", "mode")),
    ("write_file", "src/main.py", "", ("allow", "rule")),
    ("write_file", "src/pkg/main.py", "", ("deny", "mode")),
    ("list_dir", "/srv/app/logs", "", ("allow", "rule")),
    ("list_dir", "/srv/app/x/logs", "", ("deny", "mode")),
    ("grep", "~/proj/docs/a.md", "", ("ask", "rule")),
    ("download_file", "/tmp/x/y.tar", "", ("allow", "rule")),
    # hostnames: lower-cased; operations
    ("connect", "Web.Example.COM", "", ("allow", "rule")),
    ("connect", "example.com", "", ("deny", "mode")),
    ("connect", "db.example.com", "exec", ("deny", "rule")),
    ("connect", "db.example.com", "shell", ("allow", "rule")),
    ("ssh_session", "bastion.example.com", "", ("ask", "rule")),
    ("connect", "evil.com/../x", "", ("deny", "mode")),
])
def test_rules_decide(tool: str, arg: str, op: str, expected: tuple[str, str]) -> None:
    assert check(DEV, tool, arg, op=op) == expected


@pytest.mark.parametrize("mode, expected", [("default", "ask"), ("strict", "deny"), ("bypass", "allow")])
def test_mode_default(mode: str, expected: str) -> None:
    assert check(policy(mode=mode), "execute_command", "uptime") == (expected, "mode")


def test_mode_is_strict_when_nothing_sets_it() -> None:
    d = decide(ToolCall("execute_command", {"command": "uptime"}), Caller(CallerKind.REMOTE), Policy(), HOME)
    assert (d.decision, d.mode) == ("deny", "strict")


def test_unparseable_command_is_not_allowed_even_in_bypass() -> None:
    assert check(policy(mode="bypass"), "execute_command", "echo 'unterminated") == ("deny", "mode")
    assert check(policy(mode="default"), "execute_command", "echo 'unterminated") == ("ask", "mode")


def test_callers() -> None:
    p = policy(mode="strict")
    assert check(p, "execute_command", "uptime", caller="local") == ("allow", "bypass")
    assert check(p, "execute_command", "uptime", caller="self") == ("allow", "bypass")
    assert check(policy(self_bypass=False), "execute_command", "uptime", caller="self") == ("deny", "mode")
    assert check(p, "execute_command", "rm -rf /", caller="local") == ("deny", "floor")


def test_no_good_policy_denies_remote_and_self_but_not_local() -> None:
    bad = Policy(mode="bypass", ok=False, problem="line 3: bad")
    assert check(bad, "execute_command", "uptime") == ("deny", "mode")
    assert check(bad, "execute_command", "uptime", caller="self") == ("deny", "mode")
    assert check(bad, "execute_command", "uptime", caller="local") == ("allow", "bypass")


def test_scopes_deny_anywhere_wins_then_session_then_global() -> None:
    p = policy(("execute_command(uptime)", "allow"), session=(("execute_command(uptime)", "deny"),))
    assert check(p, "execute_command", "uptime") == ("deny", "rule")
    p = policy(("execute_command(uptime)", "deny"), session=(("execute_command(uptime)", "allow"),))
    assert check(p, "execute_command", "uptime") == ("deny", "rule")
    p = policy(("execute_command(uptime)", "ask"), session=(("execute_command(uptime)", "allow"),))
    assert check(p, "execute_command", "uptime") == ("allow", "rule")   # session decides first
    p = policy(("execute_command(uptime)", "allow"), session=(("execute_command(up*)", "ask"),))
    assert check(p, "execute_command", "uptime") == ("ask", "rule")


def test_most_specific_rule_is_reported_ties_in_file_order() -> None:
    p = policy(("execute_command(git *)", "deny"), ("execute_command(git push *)", "deny"),
               ("execute_command(git pu* *)", "deny"))
    d = decide(ToolCall("execute_command", {"command": "git push x"}), Caller(CallerKind.REMOTE), p, HOME)
    assert d.rule_id == rule_id("execute_command(git push *)", "deny")
    p = policy(("read_file(/a/*)", "allow"), ("read_file(/a/?)", "allow"))
    d = decide(ToolCall("read_file", {"path": "/a/b"}), Caller(CallerKind.REMOTE), p, HOME)
    assert d.rule_id == rule_id("read_file(/a/*)", "allow")


def test_unknown_tool_and_bad_input_are_denied_with_a_reason() -> None:
    d = decide(ToolCall("format_disk", {"x": 1}), Caller(CallerKind.LOCAL), Policy(mode="bypass"), HOME)
    assert d.decision == "deny" and "unknown tool" in d.reason
    d = decide(ToolCall("read_file", {"path": 3}), Caller(CallerKind.REMOTE), Policy(mode="bypass"), HOME)
    assert d.decision == "deny" and "path" in d.reason


def test_decision_json_shape() -> None:
    p = policy(("execute_command(git *)", "allow"))
    d = decide(ToolCall("execute_command", {"command": "git status"}), Caller(CallerKind.REMOTE), p, HOME)
    assert d.to_json() == {"decision": "allow", "source": "rule", "rule_id": rule_id("execute_command(git *)", "allow"),
                           "reason": d.reason, "mode": "strict", "tool": "execute_command", "target": "git status"}


def test_rule_id_is_as_specified() -> None:
    import hashlib
    want = "r-" + hashlib.sha256(b"execute_command(git *)\nallow").hexdigest()[:12]
    assert rule_id("execute_command(git *)", "allow") == want


@pytest.mark.parametrize("tool, target, other", [
    ("execute_command", "ls -la *.py", "ls -la x.py"),
    ("execute_command", "git log --format='%H [x]'", "git log --format=x"),
    ("read_file", "/home/u/a[1]*.txt", "/home/u/a1x.txt"),
    ("connect", "Db.Example.com", "db2.example.com"),
])
def test_literal_rule_matches_exactly_one_target(tool: str, target: str, other: str) -> None:
    p = policy((literal_rule(tool, target), "allow"))
    assert check(p, tool, target)[0] == "allow"
    assert check(p, tool, other)[0] == "deny"


@pytest.mark.parametrize("command, others", [
    ("ls -la | grep py", ["ls -la | grep pyc", "ls | grep py", "grep py | sh"]),
    ("cd /srv && make build", ["cd /srv && make install", "cd / && make build"]),
    ("echo a; echo a; uptime", ["echo b; uptime"]),
])
def test_an_allowed_compound_command_is_kept_as_one_exact_rule_per_part(command: str,
                                                                         others: list[str]) -> None:
    """Approving `a | b` "always" must let exactly `a | b` through next time (each part exactly),
    never anything a part does not spell out."""
    rules = literal_rules("execute_command", command, "", "allow")
    assert len(rules) == len(set(rules)) > 1
    p = policy(*[(r, "allow") for r in rules])
    assert check(p, "execute_command", command)[0] == "allow"
    for other in others:
        assert check(p, "execute_command", other)[0] == "deny", other


@pytest.mark.parametrize("command, action", [
    ("ls | grep py", "deny"),               # which part was refused is not known
    ("echo $(date) && ls", "allow"),        # a dynamic part no allow rule can match
    ("ls; $CMD", "allow"),
])
def test_answers_no_exact_rule_can_express_keep_no_rule(command: str, action: str) -> None:
    assert literal_rules("execute_command", command, "", action) == []


def test_single_targets_keep_one_literal_rule() -> None:
    assert literal_rules("execute_command", "make  build", "", "deny") == [
        literal_rule("execute_command", "make  build")]
    assert literal_rules("read_file", "/srv/a*.txt", "", "allow") == ["read_file(/srv/a\\*.txt)"]


@pytest.mark.parametrize("text, action", [
    ("nope(x)", "allow"), ("execute_command(x", "allow"), ("read_file(relative/*)", "allow"),
    ("read_file(/a/../b)", "allow"), ("read_file(/a/[bc)", "allow"), ("execute_command(x)", "permit"),
    ("execute_command()", "allow"), ("", "deny"),
])
def test_bad_rules_are_refused(text: str, action: str) -> None:
    with pytest.raises(RuleError):
        parse_rule(text, action, home=HOME)


@pytest.mark.parametrize("host", ["-oProxyCommand=sh", "evil.com#.example.com", "evil.com:1.example.com",
                                  "user@web.example.com", "web.example.com/x", "wеb.example.com"])
def test_hostnames_a_glob_could_be_fooled_by_are_denied_even_in_bypass(host: str) -> None:
    p = policy(("connect(*.example.com)", "allow"), ("connect(*)", "allow"), mode="bypass")
    assert check(p, "connect", host)[0] == "deny"


@pytest.mark.parametrize("host", ["web.example.com", "10.0.0.7", "[::1]", "fe80::1", "WEB.EXAMPLE.COM."])
def test_real_hostnames_are_matched(host: str) -> None:
    assert check(policy(("connect(*)", "allow")), "connect", host) == ("allow", "rule")


@pytest.mark.parametrize("command", ["$(" * 400 + "ls" + ")" * 400, "(" * 2000 + "ls" + ")" * 2000,
                                     "echo " + "a" * 70_000])
def test_commands_too_big_or_deep_to_inspect_are_floor_denied(command: str) -> None:
    assert check(policy(mode="bypass"), "execute_command", command, caller="local") == ("deny", "floor")


@pytest.mark.parametrize("command", ["echo " + "a" * 60_000, "echo " + "$(x)" * 3000, "cat " + "*" * 5000 + ".env",
                                     "echo " + "a " * 20_000])
def test_large_inputs_are_decided_without_blowing_up(command: str) -> None:
    assert check(policy(mode="default"), "execute_command", command)[0] in ("ask", "deny")


@pytest.mark.parametrize("command, named", [
    # The part a reason names is the part that failed, with the redirection that made it fail
    # (it said 'echo hi' for `echo hi > f`; found by a black-box pass).
    ("sh -c 'echo hi > f'", "'echo hi >f'"),
    ("echo a && echo b >> log.txt", "'echo b >>log.txt'"),
    ("sh -c 'echo hi 2>&1 > out'", "'echo hi >out'"),      # what no rule needs to spell is left out
    ("echo a && rm x", "'rm x'"),
    ("ls && cat <in", "'cat <in'"),
])
def test_a_denied_part_is_named_as_the_rule_must_match_it(command: str, named: str) -> None:
    p = policy(("execute_command(echo *)", "allow"), ("execute_command(sh -c *)", "allow"),
               ("execute_command(ls)", "allow"))
    d = decide(ToolCall("execute_command", {"command": command}, "", CWD), Caller(CallerKind.REMOTE), p, HOME)
    assert d.decision == "deny" and d.reason.startswith(f"no rule matched {named}"), d.reason


@pytest.mark.parametrize("cwd, command, suffix", [
    ("/etc", "cat shadow", "(named in the command: it runs in /etc)"),  # every word is in /etc
    ("/etc", "ls", "(named in the command: it runs in /etc)"),
    ("/tmp", "cat /etc/shadow", "(named in the command)"),
    ("/tmp", "cat ../etc/shadow", "(named in the command)"),
])
def test_a_floor_denial_says_when_the_directory_is_what_it_protects(cwd: str, command: str,
                                                                    suffix: str) -> None:
    """It said "(named in the command)" for `cat shadow` in /etc, where the command names no
    protected path: the directory it runs in is one (found by a black-box pass)."""
    d = decide(ToolCall("execute_command", {"command": command}, "", cwd), Caller(CallerKind.REMOTE),
               policy(), HOME)
    assert d.source == "floor" and d.reason.endswith(suffix), d.reason
