"""`cmdop.core.replay`: batch lines and audit records into calls, and the replay comparison,
with a fake judge (the real gate is exercised in tests/integration/test_permissions_batch.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cmdop.core.calls import CallerKind, ToolCall
from cmdop.core.policy.decision import Decision
from cmdop.core.replay import (LineCall, NotJudged, gate_decision, judge_lines, parse_line, record_call,
                               record_caller, replay)

R = CallerKind.REMOTE


def rec(**kw: Any) -> dict[str, Any]:
    base = {"ts": "2026-01-01T00:00:00Z", "decision": "allow", "tool": "execute_command", "operation": "",
            "target": "ls", "mode": "strict", "source": "rule", "rule_id": "r-1", "reason": "r", "seq": 1}
    base.update(kw)
    return base


@pytest.mark.parametrize("record, expect", [
    (rec(decision="allow"), "allow"),
    (rec(decision="deny"), "deny"),
    (rec(decision="ask_allowed"), "ask"),
    (rec(decision="ask_denied"), "ask"),
    (rec(decision="ask_timeout"), "ask"),
    (rec(decision="deny", source="rule", reason="no approver attached"), "ask"),
    (rec(decision="deny", source="mode", reason="no approver attached"), "ask"),
    (rec(decision="deny", source="floor", reason="no approver attached"), "deny"),
    (rec(decision="maybe"), None),
    (rec(decision=None), None),
])
def test_gate_decision_is_the_gates_answer_before_any_ask(record: dict[str, Any], expect: str | None) -> None:
    assert gate_decision(record) == expect


def test_record_caller() -> None:
    assert record_caller(rec(as_caller="self", source="bypass", reason="local caller"), R) is CallerKind.SELF
    assert record_caller(rec(source="bypass", reason="local caller"), R) is CallerKind.LOCAL
    assert record_caller(rec(source="bypass", reason="self caller (self_bypass: true)"), R) is CallerKind.SELF
    assert record_caller(rec(source="rule"), CallerKind.SELF) is CallerKind.SELF      # the default
    assert record_caller(rec(as_caller="admin"), R) is R


def test_record_call_rebuilds_the_input_or_says_why_not() -> None:
    got = record_call(rec(tool="connect", operation="exec", target="db.example.com"), caller=R, cwd="/w")
    assert got == LineCall(ToolCall("connect", {"hostname": "db.example.com"}, "exec", "/w"), R)
    assert isinstance(record_call(rec(tool="frob", target="x"), caller=R, cwd=""), LineCall)
    assert record_call(rec(tool="frob", target="x"), caller=R, cwd="").call.input == {"target": "x"}  # type: ignore[union-attr]
    redacted = record_call(rec(target="mysql -p[REDACTED] db", redacted=True), caller=R, cwd="")
    assert isinstance(redacted, NotJudged) and redacted.why == "redacted"
    # only the reason was redacted: the target is the text the gate judged
    assert isinstance(record_call(rec(target="ls", redacted=True), caller=R, cwd=""), LineCall)
    # the mark typed by the caller itself, nothing redacted: judge it as it is
    assert isinstance(record_call(rec(target="echo [REDACTED]"), caller=R, cwd=""), LineCall)
    cut = record_call(rec(target="x" * 4096 + "…"), caller=R, cwd="")
    assert isinstance(cut, NotJudged) and cut.why == "truncated"
    assert isinstance(record_call(rec(target="x" * 4096), caller=R, cwd=""), LineCall)
    empty = record_call(rec(target=""), caller=R, cwd="")
    assert isinstance(empty, NotJudged) and empty.why == "no_target"
    bad = record_call(rec(operation=3), caller=R, cwd="")
    assert isinstance(bad, NotJudged) and bad.error == "bad_input"


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_parse_line_defaults_and_strictness() -> None:
    kw: dict[str, Any] = {"caller": R, "cwd": "/default", "workdir": "/proc-cwd", "op": "exec"}
    got = parse_line(line({"tool": "read_file", "input": {"path": "x"}}), **kw)
    assert got == LineCall(ToolCall("read_file", {"path": "x"}, "exec", "/default"), R)
    got = parse_line(line({"tool": "read_file", "input": {"path": "x"}, "cwd": "a/../b", "op": "",
                           "caller": "local"}), **kw)
    assert got == LineCall(ToolCall("read_file", {"path": "x"}, "", "/proc-cwd/b"), CallerKind.LOCAL)
    assert parse_line(line({"tool": "read_file", "input": {"path": "x"}, "cwd": ""}),
                      **kw).call.cwd == "/default"  # type: ignore[union-attr]
    # a mistake in the call is bad input, never a floor denial (only the judged field is needed)
    for obj, words in [({"tool": "read_file", "input": {}}, "'path'"),
                       ({"tool": "read_file", "input": {"path": 5}}, "'path'"),
                       ({"tool": "execute_command", "input": {"command": " "}}, "'command'")]:
        got = parse_line(line(obj), **kw)
        assert isinstance(got, NotJudged) and got.error == "bad_input" and words in got.message, obj
    assert isinstance(parse_line(line({"tool": "write_file", "input": {"path": "/x"}}), **kw), LineCall)
    for obj, words in [({"tool": "t", "input": {}, "extra": 1}, "unknown key 'extra'"),
                       ({"tool": "", "input": {}}, "'tool'"),
                       ({"tool": "t", "input": "x"}, "'input'"),
                       ({"tool": "t", "input": {}, "caller": "root"}, "'caller'"),
                       ({"tool": "t", "input": {}, "op": None}, "'op'"),
                       ({"tool": "t"}, "neither a call"),
                       (["tool"], "JSON array"), ("s", "JSON string"), (None, "JSON null")]:
        got = parse_line(line(obj), **kw)
        assert isinstance(got, NotJudged) and got.error == "bad_input" and words in got.message, obj
    for raw in (b"", b"   ", b"{", b"\xff", b"[" * 50_000):
        got = parse_line(raw, **kw)
        assert isinstance(got, NotJudged) and got.error == "bad_input", raw[:5]


def fake_judge(calls: list[tuple[ToolCall, CallerKind]], answer: dict[str, tuple[str, str]]) -> Any:
    """A judge answering by command text: target -> (decision, source); default allow by rule."""
    def judge(call: ToolCall, kind: CallerKind) -> Decision:
        calls.append((call, kind))
        target = str(next(iter(call.input.values())))
        decision, source = answer.get(target, ("allow", "rule"))
        return Decision(decision, source, "because", "strict", call.tool, call.operation,  # type: ignore[arg-type]
                        target, "r-2" if source == "rule" else "")
    return judge


def test_judge_lines_numbers_every_line() -> None:
    calls: list[tuple[ToolCall, CallerKind]] = []
    out = list(judge_lines([line({"tool": "execute_command", "input": {"command": "ls"}}), b"nope",
                            line(rec(target="id", source="bypass", reason="local caller"))],
                           fake_judge(calls, {}), caller=R, cwd="/c", workdir="/w"))
    assert [o["line"] for o in out] == [1, 2, 3]
    assert out[0]["decision"] == "allow" and out[1]["error"] == "bad_input"
    assert [k for _, k in calls] == [R, CallerKind.LOCAL]
    assert calls[1][0].cwd == "/c"                 # a record is judged in the run's cwd


def test_replay_compares_and_counts() -> None:
    calls: list[tuple[ToolCall, CallerKind]] = []
    records = [
        rec(seq=1, target="a", decision="allow"),                                   # unchanged
        rec(seq=2, target="b", decision="allow"),                                   # allow → deny
        rec(seq=3, target="c", decision="deny", source="mode"),                     # deny → allow
        rec(seq=4, target="d", decision="ask_timeout"),                             # ask → allow
        rec(seq=5, target="e", decision="deny", source="rule", reason="no approver attached"),  # ask = ask
        rec(seq=6, target="rm -rf /", decision="deny", source="floor"),             # kept, not judged
        rec(seq=7, target="f", decision="allow"),                                   # floor now: skip
        rec(seq=8, target="g", decision="deny", source="rule"),                     # floor deny = deny
        rec(seq=9, tool="frob", target="x", decision="allow"),                      # unknown tool
        rec(seq=10, target="k", decision="???"),                                    # unknown decision
        rec(seq=11, target="p -p[REDACTED]", redacted=True),                        # redacted
        rec(seq=12, target="s", source="bypass", reason="self caller (self_bypass: true)"),  # → deny
    ]
    answer = {"b": ("deny", "rule"), "c": ("allow", "rule"), "e": ("ask", "mode"), "f": ("deny", "floor"),
              "g": ("deny", "floor"), "s": ("deny", "mode")}
    result = replay(records, fake_judge(calls, answer))
    assert [(c.record["seq"], c.transition) for c in result.changed] == [
        (2, "allow → deny"), (3, "deny → allow"), (4, "ask → allow"), (12, "allow → deny")]
    assert result.changed[-1].caller is CallerKind.SELF
    assert [(s.record["seq"], s.why) for s in result.skipped] == [
        (7, "floor_context"), (9, "unknown_tool"), (10, "unknown_decision"), (11, "redacted")]
    assert "rm -rf /" not in [str(c.input) for c, _ in calls]
    assert all(c.cwd == "" for c, _ in calls)       # the record has no cwd: unknown
    assert result.summary() == {
        "records": 12, "rejudged": 7, "changed": 4, "unchanged": 3, "floor_kept": 1, "skipped": 4,
        "skipped_by": {"redacted": 1, "unknown_tool": 1, "unknown_decision": 1, "floor_context": 1},
        "transitions": {"allow → deny": 2, "deny → allow": 1, "ask → allow": 1}}
    assert list(result.summary()["skipped_by"]) == ["redacted", "unknown_tool", "unknown_decision",
                                                    "floor_context"]
    js = result.changed[0].to_json()
    assert js["old"] == {"decision": "allow", "recorded": "allow", "source": "rule", "rule_id": "r-1",
                         "reason": "r", "mode": "strict"}
    assert js["new"] == {"decision": "deny", "source": "rule", "rule_id": "r-2", "reason": "because",
                         "mode": "strict"}
