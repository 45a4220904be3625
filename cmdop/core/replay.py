"""Many calls through one gate (pure): what `cmdop permissions check --batch` and
`cmdop permissions replay` do with each input line or audit record, given a judge.

The judge is a function (ToolCall, CallerKind) -> Decision built once per run
(`cmdop.adapters.batch_check.Judge`: one loaded policy, one mode, this machine's canonical
paths), so every line of a run is judged under the same compiled policy. Nothing here reads a
file or prints; nothing here raises for anything a line holds.

BATCH LINES (`parse_line`, `judge_lines`): one output object per input line, same order.
- A call object {"tool": str, "input": object, "caller"?: local|self|remote, "cwd"?: str,
  "op"?: str}. Missing caller/cwd/op take the run's defaults; a relative cwd is taken from the
  process's directory, as `check --cwd` does. Any other key is bad input (a typo such as
  "caler" must not silently judge the call as someone else).
- An audit record (it has tool, target and decision, and no input): the call is rebuilt from
  its target by the RECORD RULES and judged with the run's cwd.
- Anything else — not UTF-8, not JSON, not an object, a field of the wrong type, a blank line —
  is {"line", "error": "bad_input", "message"}; a record that cannot be re-judged exactly is
  {"line", "error": "not_judgeable", "why", "message"}.
- A judged line is the `check --json` object (`Decision.to_json()`) with "line" first. An
  unknown tool is not bad input: the gate denies it, exactly as `check` shows.

RECORD RULES (an audit line keeps the gate's matched `target`, not the tool input):
- The call is {TOOL_TARGET_FIELD[tool] (else "target"): target} with the record's operation:
  the command text for execute_command, the canonical path for path tools, the lower-cased
  hostname for host tools.
- Not judgeable: a target from which a secret was redacted (`redacted: true` and the mark in the
  target: the text the gate judged is gone, and guessing it would judge another call), a target
  cut at MAX_TARGET_CHARS, an empty target.
- Caller kind: `as_caller` when the record has it; else a `bypass` decision names the kind in
  its reason ("local caller", "self caller …"); else the run's default (remote). A self caller
  judged while `self_bypass: false` leaves no mark and is taken as remote.
- The gate's own decision (`gate_decision`): ask_allowed / ask_denied / ask_timeout were an
  "ask", and so was a "deny" whose reason is "no approver attached" (the pipeline denies an ask
  at once when nobody can answer it). Replay compares on that, never on an approver's answer.

REPLAY (`replay`), each record oldest first:
- source "floor": kept as recorded, not re-judged. The floor does not depend on the policy, and
  the record lacks part of what the floor read (the command's working directory, the name
  before symlinks were resolved), so a re-judgement could only be less exact.
- Not judgeable (above), a tool this version does not know, a decision that is none of
  OUTCOMES: skipped, counted by why.
- Else judged with the recorded caller kind and the working directory unknown (""), which the
  floor reads cautiously. When the floor now denies a call whose record was not a floor denial,
  the call is skipped as "floor_context": the floor lacked context; that is no policy change.
- A gate decision (allow / ask / deny) that differs is a Change; an equal one is unchanged.
  Session rules are not part of a replay: they live in the running agent only.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

from cmdop.core.audit import MAX_TARGET_CHARS, OUTCOMES
from cmdop.core.calls import TOOL_TARGET_FIELD, CallerKind, ToolCall
from cmdop.core.tool_input import problem
from cmdop.core.policy.decision import Decision
from cmdop.core.redact import MARK

__all__ = ["CALL_KEYS", "SKIPS", "TRANSITIONS", "Judge", "LineCall", "NotJudged", "parse_line",
           "record_call", "record_caller", "gate_decision", "judge_lines", "Change", "Skipped",
           "Replay", "replay"]

Judge = Callable[[ToolCall, CallerKind], Decision]

CALL_KEYS = ("tool", "input", "caller", "cwd", "op")
_CALL_KEY_SET = frozenset(CALL_KEYS)
ASK_OUTCOMES = ("ask_allowed", "ask_denied", "ask_timeout")
NO_APPROVER = "no approver attached"   # the pipeline's reason for an ask denied at once
# Why a record is not re-judged: a short label (summaries) and what it means (batch messages).
SKIPS: Mapping[str, str] = {
    "redacted": "redacted target",
    "truncated": "target cut short",
    "no_target": "no target",
    "unknown_tool": "unknown tool",
    "unknown_decision": "unknown decision",
    "malformed": "not an audit record",
    "floor_context": "floor needs the working directory",
}
_SKIP_MEANS: Mapping[str, str] = {
    "redacted": "a secret was redacted from the target, so the text the gate judged is gone",
    "truncated": f"the target was cut at {MAX_TARGET_CHARS} characters, so the text the gate judged is gone",
    "no_target": "the record has an empty target",
    "unknown_tool": "a tool this version of cmdop does not know",
    "unknown_decision": "the record's decision is none of " + ", ".join(OUTCOMES),
    "malformed": "not an audit record with string fields tool, target and decision",
    "floor_context": "the floor denies it without the working directory, which the record lacks",
}
# The order transitions are listed in: the two that matter most first.
TRANSITIONS = ("allow → deny", "deny → allow", "allow → ask", "ask → allow", "deny → ask",
               "ask → deny")
_KINDS = {k.value: k for k in CallerKind}
_JSON_TYPES: Mapping[type, str] = {list: "array", str: "string", int: "number", float: "number",
                                   bool: "boolean", type(None): "null"}


@dataclass(frozen=True)
class LineCall:
    """A call to judge, and who is taken to make it."""

    call: ToolCall
    caller: CallerKind


@dataclass(frozen=True)
class NotJudged:
    """A line that gets no decision: `error` is "bad_input" or "not_judgeable" (then `why` is
    a key of SKIPS)."""

    error: str
    message: str
    why: str = ""

    def to_json(self, line: int) -> dict[str, Any]:
        out: dict[str, Any] = {"line": line, "error": self.error}
        if self.why:
            out["why"] = self.why
        out["message"] = self.message
        return out


def _bad(message: str) -> NotJudged:
    return NotJudged("bad_input", message)


def _skip(why: str) -> NotJudged:
    return NotJudged("not_judgeable", f"cannot be re-judged exactly: {_SKIP_MEANS[why]}", why)


def record_caller(record: Mapping[str, Any], default: CallerKind) -> CallerKind:
    """The caller kind an audit record shows (RECORD RULES), else `default`."""
    as_caller = record.get("as_caller")
    if isinstance(as_caller, str) and as_caller in _KINDS:
        return _KINDS[as_caller]
    principal = record.get("caller")
    if isinstance(principal, Mapping) and principal.get("kind") in _KINDS:
        return _KINDS[str(principal["kind"])]
    if record.get("source") == "bypass":
        reason = str(record.get("reason", ""))
        if reason.startswith("local caller"):
            return CallerKind.LOCAL
        if reason.startswith("self caller"):
            return CallerKind.SELF
    return default


def gate_decision(record: Mapping[str, Any]) -> str | None:
    """The gate's decision behind a record's outcome ("allow", "ask" or "deny"); None when the
    record's decision is none of OUTCOMES."""
    outcome = record.get("decision")
    if outcome in ASK_OUTCOMES:
        return "ask"
    if outcome == "deny" and record.get("source") in ("rule", "mode") \
            and str(record.get("reason", "")).startswith(NO_APPROVER):
        return "ask"
    return outcome if outcome in ("allow", "deny") else None


def record_call(record: Mapping[str, Any], *, caller: CallerKind, cwd: str) -> LineCall | NotJudged:
    """The call an audit record stands for (RECORD RULES), judged in `cwd`; or why not."""
    tool, target, op = record.get("tool"), record.get("target"), record.get("operation", "")
    if not isinstance(tool, str) or not isinstance(target, str) or not isinstance(record.get("decision"), str):
        return _bad("an audit record needs string fields tool, target and decision")
    if not isinstance(op, str):
        return _bad("the record's operation must be a string")
    if MARK in target and record.get("redacted") is True:
        return _skip("redacted")
    if len(target) > MAX_TARGET_CHARS and target.endswith("…"):
        return _skip("truncated")
    if not target:
        return _skip("no_target")
    field_name = TOOL_TARGET_FIELD.get(tool, "target")
    return LineCall(ToolCall(tool, {field_name: target}, op, cwd), record_caller(record, caller))


def _is_record(obj: Mapping[str, Any]) -> bool:
    return "input" not in obj and all(k in obj for k in ("tool", "target", "decision"))


def parse_line(raw: bytes, *, caller: CallerKind, cwd: str, workdir: str, op: str = ""
               ) -> LineCall | NotJudged:
    """One batch line (without its newline) as a call, or why it gets no decision (BATCH LINES).
    `caller`, `cwd` and `op` are the run's defaults; `workdir` is what a relative cwd is taken
    from (the process's directory). Never raises."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _bad(f"not UTF-8 text (byte {exc.start + 1})")
    if not text.strip():
        return _bad("empty line")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return _bad(f"not JSON: {exc}" if isinstance(exc, ValueError) else "not JSON: nested too deeply")
    if not isinstance(obj, dict):
        kind = _JSON_TYPES.get(type(obj), "value")
        return _bad(f"a JSON {kind}, not an object (a call {{tool, input, ...}} or an audit record)")
    if _is_record(obj):
        return record_call(obj, caller=caller, cwd=cwd)
    if "input" not in obj:
        return _bad("neither a call {tool, input, caller?, cwd?, op?} nor an audit record "
                    "{tool, target, decision, ...}")
    if not obj.keys() <= _CALL_KEY_SET:
        unknown = sorted(k for k in obj if k not in _CALL_KEY_SET)
        return _bad(f"unknown key {unknown[0]!r} (a call has {', '.join(CALL_KEYS)})")
    tool, tool_input = obj.get("tool"), obj["input"]
    if not isinstance(tool, str) or not tool:
        return _bad("'tool' must be a non-empty string")
    if not isinstance(tool_input, dict):
        return _bad("'input' must be an object")
    kind = obj.get("caller", caller.value)
    if kind not in _KINDS:
        return _bad(f"'caller' must be one of {', '.join(_KINDS)}")
    line_cwd, line_op = obj.get("cwd", cwd), obj.get("op", op)
    if not isinstance(line_cwd, str) or not isinstance(line_op, str):
        return _bad("'cwd' and 'op' must be strings")
    # As `check --cwd` takes it (os.path.abspath): from the process's directory, normalised.
    line_cwd = posixpath.normpath(posixpath.join(workdir, line_cwd)) if line_cwd else cwd
    malformed = problem(tool, tool_input, target_only=True)
    if malformed is not None:     # a mistake, not a floor denial (as for a real call)
        return _bad(str(malformed["message"]))
    return LineCall(ToolCall(tool, tool_input, line_op, line_cwd), _KINDS[kind])


def judge_lines(lines: Iterable[bytes], judge: Judge, *, caller: CallerKind, cwd: str,
                workdir: str, op: str = "") -> Iterator[dict[str, Any]]:
    """The output object of each line, in order, numbered from 1 (BATCH LINES). Lines come
    without their newline."""
    for n, raw in enumerate(lines, 1):
        item = parse_line(raw, caller=caller, cwd=cwd, workdir=workdir, op=op)
        if isinstance(item, NotJudged):
            yield item.to_json(n)
        else:
            out: dict[str, Any] = {"line": n}
            out.update(judge(item.call, item.caller).to_json())
            yield out


def _where(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"seq": record.get("seq"), "ts": record.get("ts", ""), "tool": record.get("tool", ""),
            "operation": record.get("operation", ""), "target": record.get("target", "")}


@dataclass(frozen=True)
class Change:
    """A recorded call the gate now decides otherwise: `old` is the gate's decision then."""

    record: Mapping[str, Any]
    caller: CallerKind
    old: str
    new: Decision

    @property
    def transition(self) -> str:
        return f"{self.old} → {self.new.decision}"

    def to_json(self) -> dict[str, Any]:
        r, n = self.record, self.new
        out = _where(r)
        out.update({
            "caller": self.caller.value, "transition": self.transition,
            "old": {"decision": self.old, "recorded": r.get("decision", ""), "source": r.get("source", ""),
                    "rule_id": r.get("rule_id", ""), "reason": r.get("reason", ""), "mode": r.get("mode", "")},
            "new": {"decision": n.decision, "source": n.source, "rule_id": n.rule_id, "reason": n.reason,
                    "mode": n.mode},
        })
        return out


@dataclass(frozen=True)
class Skipped:
    """A record that was not compared, and why (a key of SKIPS)."""

    record: Mapping[str, Any]
    why: str

    def to_json(self) -> dict[str, Any]:
        out = _where(self.record)
        out.update({"decision": self.record.get("decision", ""), "why": self.why})
        return out


@dataclass
class Replay:
    """What a replay found. `rejudged` counts records judged and compared (changed or not),
    `floor` the floor denials kept as recorded; `records` = rejudged + floor + skipped."""

    changed: list[Change] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    rejudged: int = 0
    floor: int = 0

    @property
    def records(self) -> int:
        return self.rejudged + self.floor + len(self.skipped)

    def summary(self) -> dict[str, Any]:
        """Counts: records, rejudged, changed, unchanged, floor_kept, skipped, skipped_by
        (why → n, in SKIPS order) and transitions (in TRANSITIONS order)."""
        by_why = {w: n for w in SKIPS if (n := sum(1 for s in self.skipped if s.why == w))}
        by_move = {t: n for t in TRANSITIONS if (n := sum(1 for c in self.changed if c.transition == t))}
        return {"records": self.records, "rejudged": self.rejudged, "changed": len(self.changed),
                "unchanged": self.rejudged - len(self.changed), "floor_kept": self.floor,
                "skipped": len(self.skipped), "skipped_by": by_why, "transitions": by_move}


def replay(records: Iterable[Mapping[str, Any]], judge: Judge) -> Replay:
    """Re-judge each recorded call with `judge` and collect what changed (REPLAY)."""
    out = Replay()
    for record in records:
        old = gate_decision(record)
        if old is None:
            out.skipped.append(Skipped(record, "unknown_decision"))
            continue
        if record.get("source") == "floor":
            out.floor += 1
            continue
        item = record_call(record, caller=CallerKind.REMOTE, cwd="")
        if isinstance(item, NotJudged):
            out.skipped.append(Skipped(record, item.why or "malformed"))
            continue
        if item.call.tool not in TOOL_TARGET_FIELD:
            out.skipped.append(Skipped(record, "unknown_tool"))
            continue
        new = judge(item.call, item.caller)
        if new.source == "floor" and new.decision != old:
            out.skipped.append(Skipped(record, "floor_context"))
            continue
        out.rejudged += 1
        if new.decision != old:
            out.changed.append(Change(record, item.caller, old, new))
    return out
