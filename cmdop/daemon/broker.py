"""The ask broker: a call whose decision is `ask` waits here for a person to answer.

Rules:
- Every attached approver (a `watch` connection) is sent each new ask; the first valid answer
  wins, the others see a `resolved` event.
- No approver attached when the ask arrives → denied at once, reason `no approver attached`.
- No answer within the timeout → `ask_timeout`.
- An ask has a random id and the input digest of the exact call. An answer names the id and,
  when it carries a digest, must match it: approving one call never approves a changed one, and an
  answered id is gone, so it cannot be replayed.
- Scope `once` decides this call only; `session` adds a session rule and `always` a global rule
  (written atomically by the gatekeeper), built with `literal_rules` so they match exactly
  this target, never a glob (an allowed compound command: one literal rule per part). When no
  exact rule can express the answer, it applies once and the result says so (`rule_error`).
- Watchers are fed through bounded channels; an approver that does not keep up is dropped rather
  than allowed to slow the daemon down.

Runs inside trio; worker threads reach it with `trio.from_thread.run(broker.ask, ...)`.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio

from cmdop.core.calls import Caller, ToolCall
from cmdop.core.policy.decision import Decision

log = logging.getLogger("cmdop.daemon.broker")

WATCH_BUFFER = 256
NO_APPROVER = "no approver attached"
# (verdict, scope, rule) -> None: keeps the session or global rule an answer asked for.
RuleKeeper = Callable[[str, str, str], Awaitable[None]]
# (call, caller) -> the gate's decision now: whether a kept answer decides the call next time.
Judge = Callable[[ToolCall, Caller], Decision]


class AnswerError(Exception):
    """An answer that does not apply: unknown/answered id, digest mismatch, bad verdict."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class BrokerOutcome:
    """How an ask ended: outcome is ask_allowed, ask_denied or ask_timeout."""

    outcome: str
    ask_ms: int
    reason: str


@dataclass
class PendingAsk:
    ask_id: str
    decision: Decision
    call: ToolCall
    caller: Caller
    input_digest: str
    created_at: str
    timeout_s: float
    started: float = field(default_factory=time.monotonic)
    done: trio.Event = field(default_factory=trio.Event)
    outcome: BrokerOutcome | None = None

    def to_json(self) -> dict[str, Any]:
        left = max(0.0, self.timeout_s - (time.monotonic() - self.started))
        return {
            "ask_id": self.ask_id, "tool": self.call.tool, "operation": self.decision.operation,
            "target": self.decision.target, "input_digest": self.input_digest, "cwd": self.call.cwd,
            # The principal as audited (a guest's share id and note included), so whoever
            # answers sees whose call it is.
            "caller": {"user": self.caller.user, "hostname": self.caller.hostname,
                       **self.caller.audit_fields()},
            "rule_id": self.decision.rule_id, "reason": self.decision.reason,
            "mode": self.decision.mode, "created_at": self.created_at,
            "expires_in_s": round(left, 1),
        }


class AskBroker:
    """Pending asks, attached approvers, and the rules an answer may keep."""

    def __init__(self, keep_rule: RuleKeeper | None = None, judge: Judge | None = None) -> None:
        self._pending: dict[str, PendingAsk] = {}
        self._watchers: set[trio.MemorySendChannel[dict[str, Any]]] = set()
        self._keep_rule = keep_rule
        self._judge = judge
        self._closed_reason = ""
        self.counters = {"asks": 0, "ask_allowed": 0, "ask_denied": 0, "ask_timeout": 0}

    @property
    def approvers(self) -> int:
        return len(self._watchers)

    def pending(self) -> list[dict[str, Any]]:
        """The asks still waiting, oldest first."""
        return [p.to_json() for p in self._pending.values()]

    def attach(self) -> trio.MemoryReceiveChannel[dict[str, Any]]:
        """Attach an approver; events arrive on the returned channel until detach()/close."""
        send, recv = trio.open_memory_channel[dict[str, Any]](WATCH_BUFFER)
        send.send_nowait({"event": "hello", "pending": self.pending()})
        self._watchers.add(send)
        recv._cmdop_send = send  # type: ignore[attr-defined]  # so detach can find its pair
        return recv

    def detach(self, recv: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        send = getattr(recv, "_cmdop_send", None)
        if send is not None and send in self._watchers:
            self._watchers.discard(send)
            send.close()

    def _broadcast(self, ev: dict[str, Any]) -> None:
        for send in list(self._watchers):
            try:
                send.send_nowait(ev)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                log.warning("dropping an approver that does not keep up")
                self._watchers.discard(send)
                send.close()

    async def ask(self, decision: Decision, call: ToolCall, caller: Caller, input_digest: str,
                  timeout_s: float) -> BrokerOutcome:
        """Wait for an approver's answer to this call; never raises for a missing answer."""
        self.counters["asks"] += 1
        if self._closed_reason:
            return self._finish_count(BrokerOutcome("ask_denied", 0, self._closed_reason))
        if not self._watchers:
            return self._finish_count(BrokerOutcome("ask_denied", 0, NO_APPROVER))
        pending = PendingAsk(
            ask_id=secrets.token_hex(6), decision=decision, call=call, caller=caller,
            input_digest=input_digest, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            timeout_s=timeout_s)
        self._pending[pending.ask_id] = pending
        log.info("ask %s: %s %s from %s@%s", pending.ask_id, call.tool, decision.target,
                 caller.user, caller.hostname)
        self._broadcast({"event": "ask", "ask": pending.to_json()})
        try:
            with trio.move_on_after(timeout_s if math.isfinite(timeout_s) else 1e9):
                await pending.done.wait()
        finally:
            self._pending.pop(pending.ask_id, None)
        outcome = pending.outcome
        if outcome is None:
            outcome = BrokerOutcome("ask_timeout", self._ms(pending), "ask_timeout")
            self._broadcast({"event": "resolved", "ask_id": pending.ask_id, "outcome": outcome.outcome})
        return self._finish_count(outcome)

    def _finish_count(self, outcome: BrokerOutcome) -> BrokerOutcome:
        self.counters[outcome.outcome] = self.counters.get(outcome.outcome, 0) + 1
        return outcome

    @staticmethod
    def _ms(p: PendingAsk) -> int:
        return int((time.monotonic() - p.started) * 1000)

    async def answer(self, ask_id: str, verdict: str, scope: str = "once",
                     input_digest: str | None = None, approver: str = "") -> dict[str, Any]:
        """Answer pending ask `ask_id`; returns `{ask_id, outcome, rules?, rule_error?}`. AnswerError if it
        does not apply (then nothing changes)."""
        if verdict not in ("allow", "deny"):
            raise AnswerError("bad_request", "verdict must be allow or deny")
        if scope not in ("once", "session", "always"):
            raise AnswerError("bad_request", "scope must be once, session or always")
        pending = self._pending.get(ask_id)
        if pending is None or pending.outcome is not None:
            raise AnswerError("not_pending", f"no pending ask {ask_id!r} (answered, expired or unknown)")
        if input_digest is not None and input_digest != pending.input_digest:
            raise AnswerError("digest_mismatch",
                              f"ask {ask_id} is for a different input ({pending.input_digest})")
        outcome = "ask_allowed" if verdict == "allow" else "ask_denied"
        who = f" by {approver}" if approver else ""
        reason = f"{'approved' if verdict == 'allow' else 'denied'} {scope}{who}"
        pending.outcome = BrokerOutcome(outcome, self._ms(pending), reason)
        pending.done.set()  # decided before any await: the first answer wins
        self._broadcast({"event": "resolved", "ask_id": ask_id, "outcome": outcome})
        result: dict[str, Any] = {"ask_id": ask_id, "outcome": outcome}
        if scope != "once" and self._keep_rule is not None:
            rules = _rules_for(pending, verdict)
            if not rules:
                result["rule_error"] = (
                    "no exact rule can express this answer (a compound command with a dynamic part, "
                    "or a compound denial); it applied to this call only — add the rule you mean "
                    "with `cmdop permissions add`")
            try:
                for rule in rules:
                    await self._keep_rule(verdict, scope, rule)
                if rules:
                    result["rules"] = rules
                    ineffective = self._still_undecided(pending, verdict)
                    if ineffective:
                        result["rule_error"] = ineffective
            except Exception as exc:  # the answer stands even if the rule cannot be kept
                log.error("could not keep %s rule for ask %s: %s", scope, ask_id, exc)
                result["rule_error"] = str(exc)
        return result

    def _still_undecided(self, pending: PendingAsk, verdict: str) -> str | None:
        """Why the rule just kept does not decide the same call next time (an `ask` rule in the
        same scope wins over an allow), or None. The approver is told rather than shown a rule
        that changes nothing."""
        if self._judge is None:
            return None
        now = self._judge(pending.call, pending.caller)
        wanted = "allow" if verdict == "allow" else "deny"
        if now.decision == wanted:
            return None
        return (f"the next identical call is still '{now.decision}' by {now.reason} "
                "(an ask rule wins over an allow rule of its scope): narrow or remove that rule "
                "(`cmdop permissions rm`), or answer for the session (session rules decide first)")

    def close(self, reason: str) -> None:
        """Deny every pending ask and every later one with `reason`; detach all approvers."""
        self._closed_reason = reason
        for pending in list(self._pending.values()):
            if pending.outcome is None:
                pending.outcome = BrokerOutcome("ask_denied", self._ms(pending), reason)
                pending.done.set()
        for send in list(self._watchers):
            send.close()
        self._watchers.clear()


def _rules_for(p: PendingAsk, verdict: str) -> list[str]:
    """The rules that match exactly this call's target (no glob; one per part of an allowed
    compound command), or [] when no exact rule can express the answer."""
    from cmdop.core.policy.rules import literal_rules

    return list(literal_rules(p.call.tool, p.decision.target, p.decision.operation, verdict))
