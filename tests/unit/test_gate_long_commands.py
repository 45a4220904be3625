"""A long command costs the gate in proportion to its length. bench/gate.py times it; here it is
counted without a clock: how many times the floor judges a simple command (`_check_simple`) and
how many times a text is parsed, for a line of N commands and one of 4N. The floor judges each
command in every directory the line may be in (each `cd` adds one, up to 8), so a line that
keeps changing directory once cost up to 8 judgements per command, and more as it grew."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.policy import floor_cmd, shell, targets
from cmdop.core.policy.gate import Policy, decide
from cmdop.core.policy.index import RuleSet
from cmdop.core.policy.rules import parse_rule

HOME = "/home/u"
# Realistic pieces: each moves to a new directory now and then, names relative and absolute
# paths, pipes, loops, an inline program, a command line in an argument, an unknown directory.
PIECES = [
    "cd /srv/app{i} && make -j4 build && echo done-{i}",
    "git -C /srv/app{i} log --oneline -n {i}",
    "ls -la logs/app{i} | grep -i err{i} | head -n 5",
    "for f in /srv/app{i}/*.log; do gzip -9 \"$f\"; done",
    "tar czf /tmp/backup-{i}.tgz -C /srv app{i}",
    "python3 -c 'import sys; print(sys.argv[1:])' {i}",
    "docker ps --filter name=web{i} --format '{{{{.Names}}}} {i}'",
    "curl -fsS http://127.0.0.1:80{i}/health && echo ok",
    "find src{i} -name '*.py' -mtime -3 | xargs wc -l",
    "cd \"$D{i}\" && rm -f build.log",
    "awk -F: '$3 >= {i} {{print $1}}' users.txt | sort | uniq -c",
]


def line(n: int) -> str:
    """n pieces (about 2.5 simple commands each), one after another."""
    return "; ".join(PIECES[i % len(PIECES)].format(i=i) for i in range(n))


@contextmanager
def counting(module: Any, name: str) -> Iterator[list[int]]:
    """Count the calls of module.name while inside."""
    original: Callable[..., Any] = getattr(module, name)
    calls = [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(module, name, counted)
    try:
        yield calls
    finally:
        setattr(module, name, original)


def cost(text: str) -> tuple[int, int, int]:
    """(simple commands, judgements, parses) of one cold decision of `text`."""
    shell.analyse.cache_clear()
    floor_cmd.check_command.cache_clear()
    targets.parts_for_command.cache_clear()
    policy = Policy(mode="default", global_rules=RuleSet([parse_rule("execute_command(git *)", "allow", home=HOME)]))
    with counting(floor_cmd, "_check_simple") as judged, counting(shell, "_parse") as parsed:
        d = decide(ToolCall("execute_command", {"command": text}, "", "/srv/work"), Caller(CallerKind.REMOTE),
                   policy, HOME)
    assert d.source == "mode" and d.decision == "ask", d      # judged in full, found nothing
    return len(shell.analyse(text).commands), judged[0], parsed[0]


@pytest.mark.parametrize("n", [len(PIECES) * 4, len(PIECES) * 12])
def test_judgements_and_parses_grow_linearly(n: int) -> None:
    commands, judged, parsed = cost(line(n))
    commands4, judged4, parsed4 = cost(line(4 * n))
    assert commands4 == 4 * commands
    # A simple command is judged about once, not once per directory the line reaches: again in
    # the unknown directory when it removes or finds, and in each when its words depend on it.
    assert judged4 <= 2.5 * commands4, (judged, judged4, commands4)
    assert judged4 <= 4.4 * judged, (judged, judged4)
    assert parsed4 <= 4.4 * parsed, (parsed, parsed4)
