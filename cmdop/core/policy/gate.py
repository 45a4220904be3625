"""The gate: (call, caller, policy) → Decision, in the gate's fixed order. Never raises.

1. floor (every caller, every mode) → deny, source "floor";
2. local callers, and self callers while `self_bypass` → allow, source "bypass";
3. no good policy loaded → deny (an agent with no good policy denies every remote call);
4. rules: a deny from any scope wins; else session (ask over allow), then global (ask over allow);
   for a compound command every part must be allowed, any denied part denies the whole and an
   ask part (with no deny) asks; the most specific matching rule (most literal characters,
   ties in file order) is reported;
5. mode default: default → ask, strict → deny, bypass → allow. An input we cannot understand
   (a shell syntax error, a bad hostname) is never allowed by the mode: bypass denies it.

Inputs come from `prepare_target`: the adapter passes the filesystem-resolved path; everything
else here is pure.
"""

from __future__ import annotations

import re

from cmdop.core.calls import TOOL_TARGET_FIELD, Caller, CallerKind, ToolCall, command_dir
from cmdop.core.policy.decision import Decision
from cmdop.core.policy.floor import check_command, check_path, check_pattern
from cmdop.core.policy.floor_cmd import control_character
from cmdop.core.policy.index import RuleSet
from cmdop.core.policy.paths import lexical_path
from cmdop.core.policy.pattern import LazyPattern
from cmdop.core.policy.rules import TOOL_KIND, Rule
from cmdop.core.policy.targets import Part, parts_for_command
from cmdop.core.value import Frozen, NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cmdop.core.policy.decision import Action, Source

MODES = ("default", "strict", "bypass")
MODE_ACTION: dict[str, Action] = {"default": "ask", "strict": "deny", "bypass": "allow"}
_MEMO_MAX = 1024
# A hostname, a bracketed IPv6 address, or a bare IPv6 address: nothing a glob could be fooled by
# (`evil.com#.example.com`, `evil.com:1.example.com`, `user@host`), nor an option
# (`-oProxyCommand=...`). IDNs must come as punycode.
_HOST = LazyPattern(r"^(?!-)(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+(?:%[a-z0-9]+)?\]|[0-9a-f:]*:[0-9a-f:.]+)$")


class Policy(Frozen):
    """A loaded policy: settings plus indexed rules of both scopes. Swapped whole, never edited.
    `problem` says why there is no good policy (`ok` False)."""

    FIELDS = ("mode", "ask_timeout_s", "self_bypass", "global_rules", "session_rules", "ok",
              "problem")
    mode: str
    ask_timeout_s: float
    self_bypass: bool
    global_rules: RuleSet
    session_rules: RuleSet
    ok: bool
    problem: str
    # Decisions for shell commands, keyed by everything they depend on. Sound because a Policy
    # never changes (a new rule makes a new Policy, with an empty memo). Bounded by clearing.
    # Not a field: neither compared nor shown.
    memo: dict[tuple[object, ...], Decision]

    def __init__(self, mode: str = "strict", ask_timeout_s: float = 60.0, self_bypass: bool = True,
                 global_rules: RuleSet | None = None, session_rules: RuleSet | None = None,
                 ok: bool = True, problem: str = "") -> None:
        self._set(mode=mode, ask_timeout_s=ask_timeout_s, self_bypass=self_bypass,
                  global_rules=RuleSet([]) if global_rules is None else global_rules,
                  session_rules=RuleSet([]) if session_rules is None else session_rules,
                  ok=ok, problem=problem, memo={})


class Target(NamedTuple):
    """A call's target as the gate matches it. (A NamedTuple: built per call, so cheap.)"""

    tool: str
    operation: str
    kind: str
    shown: str                 # Decision.target
    parts: tuple[Part, ...]
    floor: str | None          # the floor reason, if hit
    invalid: str = ""          # why the input is unusable (→ deny)


def _path_target(call: ToolCall, raw: str, home: str, resolved: str | None, kind: str,
                 protected: tuple[str, ...]) -> Target:
    cwd = str(call.input.get("cwd") or call.cwd or "/") if call.tool == "glob" else (call.cwd or "/")
    lexical = lexical_path(raw, cwd, home)
    canonical = resolved or lexical
    texts: tuple[str, ...] = (canonical,) if canonical == lexical else (canonical, lexical)
    if call.tool == "glob":
        floor = check_pattern(lexical, home, extra=protected)
    elif canonical == lexical:
        floor = check_path(lexical, home, protected)
    else:
        floor = check_path(lexical, home, protected) or check_path(canonical, home, protected)
    return Target(call.tool, call.operation, kind, canonical, (Part(canonical, texts, canonical),), floor)


def prepare_target(call: ToolCall, home: str, resolved: str | None = None,
                   resolved_cwd: str | None = None, protected: tuple[str, ...] = (),
                   static_floor: bool = True) -> Target:
    """Turn a call into a Target. `resolved` is the adapter's canonical path for path tools,
    `resolved_cwd` the canonical cwd for commands, `protected` extra floor directories (cmdop's
    own dirs when the environment moved them). `static_floor=False` skips the floor's reading of
    a command's text: only the kernel-floor tests set it, to show the kernel holds alone.
    Never raises."""
    tool = call.tool
    kind = TOOL_KIND.get(tool)
    fieldname = TOOL_TARGET_FIELD.get(tool)
    if kind is None or fieldname is None:
        return Target(tool, call.operation, "", "", (), None, f"unknown tool '{tool}'")
    raw = call.input.get(fieldname) if isinstance(call.input, dict) or hasattr(call.input, "get") else None
    if not isinstance(raw, str) or not raw.strip():
        return Target(tool, call.operation, kind, "", (), None, f"input has no usable '{fieldname}'")
    if "\x00" in raw:
        return Target(tool, call.operation, kind, raw.replace("\x00", "\\0"), (), None, "NUL byte in input")
    if kind == "command":
        # Control characters other than tab and newline: bash reads words differently from what
        # a display shows (floor_cmd.control_character says why). Checked even without the
        # static floor: it is about reading the input at all, like the NUL byte above.
        control = control_character(raw)
        if control:
            shown = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", raw).strip()
            return Target(tool, call.operation, kind, shown, (), None, control)
    if kind == "path":
        return _path_target(call, raw, home, resolved, kind, protected)
    if kind == "host":
        host = raw.strip().lower().rstrip(".")
        if not _HOST.match(host):
            part = Part(None, (host,), host, "hostname has characters a hostname cannot have", unparseable=True)
            return Target(tool, call.operation, kind, host, (part,), None)
        return Target(tool, call.operation, kind, host, (Part(host, (host,), host),), None)
    cwd = resolved_cwd or command_dir(call.input, call.cwd) or ""
    if "\x00" in cwd:
        return Target(tool, call.operation, kind, raw.strip(), (), None, "NUL byte in cwd")
    floor = check_command(raw, home, cwd, protected) if static_floor else None
    if floor is None and cwd:
        cwd_floor = check_path(lexical_path(cwd, "/", home), home, protected)
        if cwd_floor:
            floor = f"{cwd_floor} (working directory)"
    return Target(tool, call.operation, kind, raw.strip(), parts_for_command(raw), floor)


def _best(rules: list[Rule]) -> Rule:
    """The most specific rule (most literal characters), ties in file order."""
    return rules[0] if len(rules) == 1 else min(rules, key=lambda r: (-r.literal, r.order))


def _part_result(part: Part, t: Target, policy: Policy) -> tuple[str, list[Rule]]:
    """("deny"|"ask"|"allow"|"none"|"pass", rules) for one part."""
    denies: list[Rule] = []
    scopes = (policy.session_rules, policy.global_rules)
    for scope in scopes:
        if scope.has(t.tool, "deny"):
            for text in part.deny_texts or (None,):
                denies.extend(scope.matching(t.tool, "deny", t.kind, t.operation, text))
    if denies:
        return "deny", denies
    if part.deny_only:
        return "pass", []
    for scope in scopes:
        if not scope.has(t.tool, "grant"):
            continue
        matched = scope.matching(t.tool, "grant", t.kind, t.operation, part.allow_text)
        if matched:
            asks = [r for r in matched if r.action == "ask"]
            return ("ask", asks) if asks else ("allow", matched)
    return "none", []


def _rule_decision(action: Action, rule: Rule, t: Target, mode: str, extra: str = "") -> Decision:
    return Decision(action, "rule", rule.summary + extra, mode, t.tool, t.operation, t.shown, rule.rid)


def _parts_note(t: Target) -> str:
    n = sum(1 for p in t.parts if not p.deny_only)
    return f" (all {n} parts allowed)" if n > 1 else ""


def decide_target(t: Target, caller: Caller, policy: Policy, mode: str) -> Decision:
    """Steps 1-5 on a prepared target."""
    def out(action: Action, source: Source, reason: str, rid: str = "") -> Decision:
        return Decision(action, source, reason, mode, t.tool, t.operation, t.shown, rid)

    if t.invalid:
        return out("deny", "floor", t.invalid)
    if t.floor:
        return out("deny", "floor", t.floor)
    kind = caller.kind if isinstance(caller.kind, CallerKind) else CallerKind(str(caller.kind))
    if kind is CallerKind.LOCAL:
        return out("allow", "bypass", "local caller")
    if kind is CallerKind.SELF and policy.ok and policy.self_bypass:
        return out("allow", "bypass", "self caller (self_bypass: true)")
    if not policy.ok:
        return out("deny", "mode", f"no good permissions policy: {policy.problem}")
    if len(t.parts) == 1:      # fast path: one path, host or simple command
        first = _part_result(t.parts[0], t, policy)
        if first[0] in ("deny", "ask", "allow"):
            return _rule_decision(first[0], _best(first[1]), t, mode)  # type: ignore[arg-type]
        part = t.parts[0]
        if first[0] == "none" and not part.unparseable and not part.why_unknown and not part.code:
            action: Action = MODE_ACTION.get(mode, "deny")
            return out(action, "mode", f"no rule matched the call; mode {mode} → {action}")
        results = [(first, part)]
    else:
        results = [(_part_result(p, t, policy), p) for p in t.parts]
    denies = [r for (a, rs), _ in results if a == "deny" for r in rs]
    if denies:
        return _rule_decision("deny", _best(denies), t, mode)
    unmatched = [p for (a, _), p in results if a == "none"]
    mode_action: Action = MODE_ACTION.get(mode, "deny")
    if unmatched:
        if any(p.unparseable for p in unmatched) and mode_action == "allow":
            bad = next(p for p in unmatched if p.unparseable)
            return out("deny", "mode", f"cannot understand '{bad.display}' ({bad.why_unknown}); "
                                       f"mode {mode} does not allow what cannot be parsed")
        p = unmatched[0]
        why = f" ({p.why_unknown})" if p.why_unknown else ""
        if not why and p.code:
            spots = ", ".join(repr(shown) for _, shown, _ in p.code)
            why = f" (it runs code at {spots}: an allow rule must spell it)"
        if not why and p.runs_for:
            why = f" (run by {p.runs_for!r}: it needs a rule of its own)"
        what = f"'{p.display}'" if len(t.parts) > 1 else "the call"
        reason = f"no rule matched {what}{why}; mode {mode} → {mode_action}"
        if mode_action == "deny":
            return out("deny", "mode", reason)
    asks = [r for (a, rs), _ in results if a == "ask" for r in rs]
    if asks:
        return _rule_decision("ask", _best(asks), t, mode)
    if unmatched:
        return out(mode_action, "mode", reason)
    allows = [r for (a, rs), _ in results if a == "allow" for r in rs]
    if allows:
        return _rule_decision("allow", _best(allows), t, mode,
                              _parts_note(t))
    return out(mode_action, "mode", f"no rule applies; mode {mode} → {mode_action}")


def decide(call: ToolCall, caller: Caller, policy: Policy, home: str, mode: str | None = None,
           resolved: str | None = None, resolved_cwd: str | None = None,
           protected: tuple[str, ...] = (), static_floor: bool = True) -> Decision:
    """The gate. `mode` overrides the policy's; never raises (a bug of ours becomes a deny).
    `static_floor` as in `prepare_target` (tests of the kernel floor only)."""
    eff = mode if mode in MODES else (policy.mode if policy.mode in MODES else "strict")
    try:
        if call.tool == "execute_command":
            key = (call.input.get("command"), call.cwd, call.input.get("cwd"), resolved_cwd, str(caller.kind), eff,
                   call.operation, home, protected, static_floor)
            hit = policy.memo.get(key)
            if hit is not None:
                return hit
            d = decide_target(prepare_target(call, home, resolved, resolved_cwd, protected, static_floor),
                              caller, policy, eff)
            if len(policy.memo) >= _MEMO_MAX:
                policy.memo.clear()
            policy.memo[key] = d
            return d
        return decide_target(prepare_target(call, home, resolved, resolved_cwd, protected), caller, policy, eff)
    except Exception as exc:  # noqa: BLE001 - the gate must answer; an error is a deny
        return Decision("deny", "floor", f"internal gate error: {type(exc).__name__}: {exc}",
                        eff, call.tool, call.operation, "")
