"""`cmdop permissions explain`: the gate's steps for one call, for a person to read.

It re-walks the same steps as `gate.decide_target` (and reports `decide`'s own Decision, so the
two cannot disagree about the outcome): the floor entry hit or not, the caller step, the parts a
command was split into, each rule of the tool and why it matched or not, and the mode step.
Rules are walked linearly here (no index) because every rule must be listed.

Where a command runs code (programs.sites: `find -exec`, `git -c core.pager=…`, a wrapped
program), the part lists it, and an allow/ask rule that would match but for it says so:
"'git *' does not cover '-c core.pager=…': that runs a command; add a rule that spells it".

Given the call's `Admission` (`cmdop.core.admission`), its checks come first, one line each. When
admission refuses, the agent never consults the gate: the gate's steps are still shown, for
reference, ending in "gate decision: …", and the decision (returned and on the last line) is
admission's denial.
"""

from __future__ import annotations

from cmdop.core.admission import Admission
from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.policy.decision import Decision
from cmdop.core.policy.floor_cmd import elsewhere_notes
from cmdop.core.policy.gate import MODE_ACTION, MODES, Policy, decide, prepare_target
from cmdop.core.policy.rules import Rule
from cmdop.core.policy.targets import Part


def uncovered_code(rule: Rule, part: Part) -> list[tuple[str, str]]:
    """The places of code in `part` (shown, why) that keep allow/ask `rule` from matching it — the
    rule would match the command were they not code. Empty when the rule matches or fails anyway."""
    text = part.allow_text
    if rule.regex is None or text is None or part.deny_only or not part.code or rule.regex.match(text):
        return []
    marks = {pos for pos, _, _ in part.code}

    def keeping(keep: int | None) -> str:
        return "".join(ch for i, ch in enumerate(text) if i not in marks or i == keep)

    if not rule.regex.match(keeping(None)):
        return []
    blocking = [(shown, why) for pos, shown, why in part.code if not rule.regex.match(keeping(pos))]
    return blocking or [(shown, why) for _, shown, why in part.code]


def _rule_verdict(rule: Rule, t_operation: str, parts: tuple[Part, ...]) -> str:
    if rule.operation and rule.operation != t_operation:
        return f"no: operation '{t_operation or '(none)'}' is not '{rule.operation}'"
    hits = []
    blocked: list[tuple[str, str]] = []
    for part in parts:
        allow_text, deny_texts, deny_only = part.allow_text, part.deny_texts, part.deny_only
        texts = deny_texts if rule.action == "deny" else (() if deny_only else (allow_text,))
        if rule.regex is None:
            hits.append(allow_text or (deny_texts[0] if deny_texts else "?"))
            continue
        for text in texts:
            if text is not None and rule.regex.match(text):
                hits.append(text)
                break
        else:
            if rule.action != "deny":
                blocked.extend(uncovered_code(rule, part))
    not_covered = "; ".join(f"{rule.glob!r} does not cover {shown!r}: that {why}; add a rule that spells it"
                            for shown, why in dict.fromkeys(blocked))
    if hits:
        return "MATCHES " + ", ".join(repr(h) for h in hits) + (f" (but {not_covered})" if not_covered else "")
    if not_covered:
        return "no: " + not_covered
    if rule.action != "deny" and any(p.allow_text is None and not p.deny_only for p in parts):
        return "no: the glob does not match, and part of the command is unknown (never matched by allow/ask)"
    return f"no: glob {rule.glob!r} does not match"


def explain(call: ToolCall, caller: Caller, policy: Policy, home: str, mode: str | None = None,
            resolved: str | None = None, resolved_cwd: str | None = None,
            protected: tuple[str, ...] = (), admission: Admission | None = None) -> tuple[Decision, list[str]]:
    """(the decision, lines of explanation): admission's checks when given, then the gate's
    steps. Never raises."""
    decision, lines = _gate_steps(call, caller, policy, home, mode, resolved, resolved_cwd, protected)
    if admission is None:
        return decision, lines
    head, steps, final = lines[0], lines[1:-1], lines[-1]
    refused = admission.denial(decision.mode)
    if refused is None:
        return decision, [head, *admission.lines(), *steps, final]
    return refused, [head, *admission.lines(),
                     f"admission refuses ({refused.rule_id}): the agent does not consult the gate; "
                     "its steps, for reference:",
                     *steps, "gate " + final, _final(refused)]


def _gate_steps(call: ToolCall, caller: Caller, policy: Policy, home: str, mode: str | None,
                resolved: str | None, resolved_cwd: str | None,
                protected: tuple[str, ...]) -> tuple[Decision, list[str]]:
    """(the gate's decision, [the call line, the gate's steps…, the decision line])."""
    eff = mode if mode in MODES else (policy.mode if policy.mode in MODES else "strict")
    decision = decide(call, caller, policy, home, eff, resolved, resolved_cwd, protected)
    lines = [f"call: {call.tool}" + (f" --op {call.operation}" if call.operation else "")
             + f" {decision.target!r} as a {getattr(caller.kind, 'value', caller.kind)} caller, mode {eff}"]
    try:
        t = prepare_target(call, home, resolved, resolved_cwd, protected)
    except Exception as exc:  # noqa: BLE001
        return decision, lines + [f"could not prepare the call: {exc}", _final(decision)]
    if t.invalid:
        return decision, lines + [f"1. input: {t.invalid} → deny", _final(decision)]
    lines.append(f"1. floor: HIT — {t.floor}" if t.floor else "1. floor: no floor entry applies")
    if t.kind == "command":      # what the words name on other machines (programs.ROLES "remote-…", "urls")
        lines.extend(f"   - {note}" for note in elsewhere_notes(t.shown, home))
    if t.floor:
        return decision, lines + [_final(decision)]
    kind = caller.kind if isinstance(caller.kind, CallerKind) else CallerKind(str(caller.kind))
    if kind is CallerKind.LOCAL or (kind is CallerKind.SELF and policy.ok and policy.self_bypass):
        return decision, lines + [f"2. caller: {kind.value} callers bypass the rules", _final(decision)]
    lines.append(f"2. caller: {kind.value} — goes through the rules")
    if not policy.ok:
        return decision, lines + [f"3. policy: none loaded ({policy.problem}) → deny", _final(decision)]
    parts = t.parts
    if t.kind == "command":
        lines.append(f"   the command has {len(t.parts)} part(s); every part must be allowed:")
        for p in t.parts:
            by = f" (run by {p.runs_for!r})" if p.runs_for else ""
            if p.deny_only:
                lines.append(f"   - {p.display!r}{by} (checked against deny rules only)")
            elif p.allow_text is None:
                lines.append(f"   - {p.display!r}{by}: unknown to allow/ask rules — {p.why_unknown}")
            else:
                lines.append(f"   - {p.allow_text!r}{by}")
            for _, shown, why in p.code:
                lines.append(f"     code: {shown!r} {why} — an allow/ask rule covers it only by spelling it")
    rules = [r for scope in (policy.global_rules, policy.session_rules) for r in scope.rules
             if r.tool == call.tool]
    total = len(policy.global_rules) + len(policy.session_rules)
    lines.append(f"3. rules: {len(rules)} of {total} rule(s) are for {call.tool}"
                 " (deny from any scope wins; then session, then global; ask over allow)")
    for r in rules:
        lines.append(f"   [{r.scope}] {r.action:5} {r.rule}  ({r.id}): {_rule_verdict(r, call.operation, parts)}")
    action = MODE_ACTION.get(eff, "deny")
    lines.append(f"4. mode: {eff} → {action} for what no rule decided"
                 + ("" if decision.source == "mode" else " (not needed here)"))
    return decision, lines + [_final(decision)]


def _final(d: Decision) -> str:
    return (f"decision: {d.decision} (source {d.source}" + (f", rule {d.rule_id}" if d.rule_id else "")
            + f") — {d.reason}")
