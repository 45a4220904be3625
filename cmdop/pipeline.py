"""The tool-call pipeline: gate -> audit -> tool, one entry point for the CLI and the daemon.

`handle_call(call, caller, ctx, ask=None, cancel=None)` promises:
- It never raises for anything a caller sends; every outcome is a result object.
- The gate decides first (`Gatekeeper.evaluate`). An unknown tool is denied whatever the gate
  says (fail closed). "ask" goes to `ask(decision, call, caller)`; with no `ask` the call is
  denied at once with reason "no approver attached" (CONTRACT §4 step 5).
- The audit line is written BEFORE the tool runs. If it cannot be written, remote and self
  callers are denied (reason "audit log unwritable"); a local caller's call goes on with a warning.
- Denied -> the CONTRACT §6 permission_denied object (with the final reason).
- Allowed -> `cmdop.tools.registry.run_tool`; tool errors come back as {"error": kind, ...};
  a floor hit the tool finds on the path it actually opened is denied and audited as well.
- `cancel` set while execute_command runs kills the child's process group (TERM, then KILL) and
  the result carries `"cancelled": true`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Mapping

from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.policy.decision import Decision
from cmdop.core.settings import Settings
from cmdop.tools.base import ChunkFn, ToolEnv
from cmdop.tools.registry import TOOLS, run_tool

if TYPE_CHECKING:
    from cmdop.adapters.audit_log import AuditLog
    from cmdop.adapters.gatekeeper import Gatekeeper
    from cmdop.adapters.launcher import Sandbox

log = logging.getLogger("cmdop.pipeline")

ToolResult = Any  # a dict for most tools, a list for list_dir and grep (CONTRACT §6)


@dataclass(frozen=True)
class AskOutcome:
    """What an approver answered. outcome: "ask_allowed" | "ask_denied" | "ask_timeout"."""

    outcome: str
    ask_ms: int
    reason: str = ""


AskFn = Callable[[Decision, ToolCall, Caller], AskOutcome]


@dataclass
class CallContext:
    """Everything a call needs that lives longer than the call. One per agent process."""

    settings: Settings
    gatekeeper: "Gatekeeper"
    audit: "AuditLog"
    sandbox: "Sandbox"
    hostname: str
    # Remote/self callers are refused when seccomp is unavailable (config `sandbox_required`).
    sandbox_required: bool = True

    def close(self) -> None:
        """Stop the sandbox server and close the audit log."""
        self.sandbox.close()
        self.audit.close()


def make_context(settings: Settings, hostname: str = "") -> CallContext:
    """The production context: the real gate, audit log and sandbox for `settings`, and
    `sandbox_required` from config.yaml (default true). Raises ConfigFileError for an invalid
    config.yaml, before anything is opened."""
    import socket

    from cmdop.adapters.audit_log import AuditLog
    from cmdop.adapters.config_file import load as load_config
    from cmdop.adapters.gatekeeper import Gatekeeper
    from cmdop.adapters.launcher import sandbox_for_agent

    config = load_config(settings.config_file)
    return CallContext(settings=settings, gatekeeper=Gatekeeper(settings),
                       audit=AuditLog(settings.state_dir), sandbox=sandbox_for_agent(settings, config),
                       hostname=hostname or socket.gethostname(),
                       sandbox_required=config.sandbox_required)


def _deny(decision: Decision, reason: str, source: str | None = None) -> Decision:
    changes: dict[str, Any] = {"decision": "deny", "reason": reason}
    if source:
        changes["source"] = source
    return dataclasses.replace(decision, **changes)


def _evaluate(call: ToolCall, caller: Caller, ctx: CallContext) -> Decision:
    try:
        decision: Decision = ctx.gatekeeper.evaluate(call, caller)
    except Exception as exc:  # the gate promises not to raise; if it does, fail closed
        log.exception("the permission gate failed")
        return Decision(decision="deny", source="mode", reason=f"permission gate failed: {exc}",
                        mode="", tool=call.tool, operation=call.operation)
    if call.tool not in TOOLS and decision.decision != "deny":
        decision = _deny(decision, f"unknown tool: {call.tool}", source="floor")
    return decision


def _audit(ctx: CallContext, decision: Decision, outcome: str, call: ToolCall, caller: Caller,
           ask_ms: int, extra: Mapping[str, Any] | None = None) -> bool:
    """Append one audit line; False when it could not be written."""
    from cmdop.core.audit import build_record

    try:
        tool_input = call.input if isinstance(call.input, Mapping) else {"_invalid_input": repr(call.input)}
        record = build_record(decision=decision, outcome=outcome, tool_input=tool_input,
                              caller=caller, ask_ms=ask_ms, now=datetime.now(timezone.utc),
                              extra=extra)
        ctx.audit.append(record)
        return True
    except Exception as exc:  # AuditWriteError, or anything else: the line is not written
        log.warning("audit log unwritable: %s", exc)
        return False


def handle_call(call: ToolCall, caller: Caller, ctx: CallContext, ask: AskFn | None = None,
                cancel: threading.Event | None = None, on_chunk: ChunkFn | None = None,
                audit_extra: Mapping[str, Any] | None = None) -> ToolResult:
    """Gate, audit and run one tool call, as the module docstring promises. `audit_extra`
    fields go into every audit line of this call (e.g. `as_caller`; see core.audit)."""
    if not call.cwd:
        # One base directory for the gate and the tool: relative paths and an execute_command
        # `cwd` are judged where they will be used.
        call = dataclasses.replace(call, cwd=os.getcwd())
    decision = _evaluate(call, caller, ctx)
    ask_ms = 0
    if decision.decision == "ask":
        if ask is None:
            decision, outcome = _deny(decision, "no approver attached"), "deny"
        else:
            try:
                answer = ask(decision, call, caller)
            except Exception as exc:
                log.exception("the approver failed")
                answer = AskOutcome("ask_denied", 0, f"approval failed: {exc}")
            ask_ms = answer.ask_ms
            outcome = answer.outcome if answer.outcome in ("ask_allowed", "ask_denied", "ask_timeout") else "ask_denied"
            if outcome == "ask_allowed":
                decision = dataclasses.replace(decision, decision="allow",
                                               reason=answer.reason or decision.reason)
            else:
                default = "ask_timeout" if outcome == "ask_timeout" else "denied by approver"
                decision = _deny(decision, answer.reason or default)
    else:
        outcome = decision.decision  # "allow" | "deny"

    written = _audit(ctx, decision, outcome, call, caller, ask_ms, audit_extra)
    if not written and caller.kind != CallerKind.LOCAL:
        return _deny(decision, "audit log unwritable").denied_result()
    if decision.decision != "allow":
        return decision.denied_result()

    env = ToolEnv(
        home=ctx.settings.home, cwd=call.cwd, caller_kind=caller.kind,
        sandbox=ctx.sandbox, api_key=ctx.settings.api_key, cancel=cancel, on_chunk=on_chunk,
        sandbox_required_for_remote=ctx.sandbox_required, warn=log.warning,
    )
    result = run_tool(call, env)
    if isinstance(result, dict) and result.get("error") == "permission_denied":
        # The tool found the floor on the path it actually opened: record the denial too.
        floor = _deny(decision, str(result.get("reason", "")), source="floor")
        _audit(ctx, dataclasses.replace(floor, target=str(result.get("target", ""))), "deny",
               call, caller, 0, audit_extra)
    return result
