"""The tool-call pipeline: admission -> gate -> audit -> tool, one entry point for the CLI and
the daemon.

`handle_call(call, caller, ctx, ask=None, cancel=None)` promises:
- It never raises for anything a caller sends; every outcome is a result object.
- A malformed call first (`cmdop.core.tool_input.problem`): an unknown tool name or input with
  a missing, mistyped or blank field gets the `unknown_tool` / `bad_input` result naming the
  field — a mistake, not a denial: not judged, not audited, not run.
- Then admission (`cmdop.core.admission.admit`, on facts learnt cheaply here: the registry's
  tools, whether the audit log looks writable, whether the sandbox is up where a command needs
  it): a guest's tool outside its share, an audit log that
  is not writable for a remote/self/guest caller ("audit log unwritable"), a caller that is not
  local without a password session while the machine asks for one (config.yaml
  `remote_requires_password` and a password set: admission:password_required; read at each
  such call, so a change needs no restart), or a command from such a caller without the
  required sandbox is denied — audited like any denial, with rule_id
  "admission:…", and the gate is not consulted. The sandbox refusal keeps its
  `sandbox_unavailable` result.
- Then the gate (`Gatekeeper.evaluate`). "ask" goes to `ask(decision, call, caller)`; with no
  `ask` the call is denied at once with reason "no approver attached".
- The audit line is written BEFORE the tool runs. If it cannot be written after all, remote and
  self callers are denied (reason "audit log unwritable"); a local caller's call goes on with a
  warning.
- Denied -> the permission_denied object (with the final reason).
- Allowed -> `cmdop.tools.registry.run_tool`; tool errors come back as {"error": kind, ...};
  a floor hit the tool finds on the path it actually opened is denied and audited as well.
- `cancel` set while execute_command runs kills the child's process group (TERM, then KILL) and
  the result carries `"cancelled": true`.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Mapping

from cmdop.core.admission import AdmissionFacts, admit, needs_sandbox
from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.policy.decision import Decision
from cmdop.core.settings import Settings
from cmdop.core.tool_input import problem
from cmdop.tools.base import ChunkFn, ToolEnv
from cmdop.tools.registry import TOOLS, run_tool

if TYPE_CHECKING:
    from cmdop.adapters.audit_log import AuditLog
    from cmdop.adapters.gatekeeper import Gatekeeper
    from cmdop.adapters.launcher import Sandbox

log = logging.getLogger("cmdop.pipeline")

ToolResult = Any  # a dict for most tools, a list for list_dir and grep


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
    return decision.replace(**changes)


def writable_path(path: str) -> bool:
    """Whether `path` can be appended to, or created: the file itself when it exists, else the
    nearest existing directory above it. A cheap probe (no write); the write can still fail."""
    if os.path.lexists(path):
        return not os.path.isdir(path) and os.access(path, os.W_OK)
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    return os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)


def audit_writable(audit: object) -> bool:
    """Whether the audit log looks writable: its own `writable()` probe if it has one, else its
    `path` (`writable_path`); True when there is nothing to probe (the write decides)."""
    try:
        probe = getattr(audit, "writable", None)
        if callable(probe):
            return bool(probe())
        path = getattr(audit, "path", None)
        return writable_path(path) if isinstance(path, str) else True
    except Exception:  # noqa: BLE001 - a probe that fails says "not writable"
        log.exception("probing the audit log failed")
        return False


def sandbox_state(sandbox: object) -> tuple[bool, str]:
    """(seccomp usable for commands, why not): `Sandbox.available`, as execute_command asks it
    (it may start the sandbox server)."""
    if sandbox is None:
        return False, "no sandbox configured"
    try:
        if getattr(sandbox, "available"):
            return True, ""
        return False, str(getattr(sandbox, "reason", "") or "the sandbox is unavailable")
    except Exception as exc:  # noqa: BLE001 - a probe that fails says "unavailable"
        return False, f"probing the sandbox failed: {exc}"


def password_required(caller: Caller, ctx: CallContext) -> bool:
    """Whether the machine asks `caller` for a password session: not for a local caller; else
    a password is set and config.yaml says so (an unloadable config.yaml counts as yes). A probe
    that fails says yes: fail closed."""
    if caller.kind == CallerKind.LOCAL:
        return False
    try:
        from cmdop.adapters.password_store import remote_password_required

        return remote_password_required(ctx.settings)
    except Exception:  # noqa: BLE001
        log.exception("probing the machine password failed")
        return True


def admission_facts(call: ToolCall, caller: Caller, ctx: CallContext) -> AdmissionFacts:
    """The facts admission judges `call` on; the sandbox is probed only where it matters, the
    machine password only for a caller that is not local."""
    available: bool | None = None
    why = ""
    if needs_sandbox(call, caller, ctx.sandbox_required):
        available, why = sandbox_state(ctx.sandbox)
    pw = password_required(caller, ctx)
    return AdmissionFacts(known_tools=frozenset(TOOLS), audit_writable=audit_writable(ctx.audit),
                          sandbox_available=available, sandbox_required=ctx.sandbox_required,
                          sandbox_reason=why, password_set=pw, remote_requires_password=pw)


def _mode(ctx: CallContext) -> str:
    """The gate's mode, for an admission denial's record ("" when the gate cannot say)."""
    try:
        mode = getattr(ctx.gatekeeper, "mode", "")
    except Exception:  # noqa: BLE001
        return ""
    return mode if isinstance(mode, str) else ""


def _evaluate(call: ToolCall, caller: Caller, ctx: CallContext) -> Decision:
    try:
        decision: Decision = ctx.gatekeeper.evaluate(call, caller)
    except Exception as exc:  # the gate promises not to raise; if it does, fail closed
        log.exception("the permission gate failed")
        return Decision(decision="deny", source="mode", reason=f"permission gate failed: {exc}",
                        mode="", tool=call.tool, operation=call.operation)
    return decision


def _noted(decision: Decision, extra: Mapping[str, Any] | None) -> Decision:
    """`decision`, its reason ending in "[as_caller=KIND]" when a local client asked to be gated
    as another kind (`as_caller` in the call's audit extra), whoever made the reason: the
    gate, an approver, admission, or this pipeline ("no approver attached")."""
    kind = extra.get("as_caller") if extra else None
    note = f"[as_caller={kind}]" if kind else ""
    if not note or decision.reason.endswith(note):
        return decision
    return decision.replace(reason=f"{decision.reason} {note}".strip())


def _audit(ctx: CallContext, decision: Decision, outcome: str, call: ToolCall, caller: Caller,
           ask_ms: int, extra: Mapping[str, Any] | None = None) -> bool:
    """Append one audit line; False when it could not be written."""
    from cmdop.core.audit import build_record

    decision = _noted(decision, extra)
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


def _gate(call: ToolCall, caller: Caller, ctx: CallContext, ask: AskFn | None,
          extra: Mapping[str, Any] | None) -> tuple[Decision, str, int]:
    """(decision, audit outcome, ask_ms): the gate's answer, an "ask" settled by `ask` (who
    sees the as_caller note too)."""
    decision = _noted(_evaluate(call, caller, ctx), extra)
    if decision.decision != "ask":
        return decision, decision.decision, 0  # "allow" | "deny"
    if ask is None:
        return _deny(decision, "no approver attached"), "deny", 0
    try:
        answer = ask(decision, call, caller)
    except Exception as exc:
        log.exception("the approver failed")
        answer = AskOutcome("ask_denied", 0, f"approval failed: {exc}")
    outcome = answer.outcome if answer.outcome in ("ask_allowed", "ask_denied", "ask_timeout") else "ask_denied"
    if outcome == "ask_allowed":
        decision = decision.replace(decision="allow", reason=answer.reason or decision.reason)
    else:
        default = "ask_timeout" if outcome == "ask_timeout" else "denied by approver"
        decision = _deny(decision, answer.reason or default)
    return decision, outcome, answer.ask_ms


def handle_call(call: ToolCall, caller: Caller, ctx: CallContext, ask: AskFn | None = None,
                cancel: threading.Event | None = None, on_chunk: ChunkFn | None = None,
                audit_extra: Mapping[str, Any] | None = None) -> ToolResult:
    """Admit, gate, audit and run one tool call, as the module docstring promises. `audit_extra`
    fields go into every audit line of this call (e.g. `as_caller`; see core.audit)."""
    malformed = problem(call.tool, call.input)
    if malformed is not None:
        log.info("%s call from %r not judged: %s", caller.kind.value, caller.user or "?",
                 malformed["message"][:300])
        return malformed
    if not call.cwd:
        # One base directory for the gate and the tool: relative paths and an execute_command
        # `cwd` are judged where they will be used.
        call = call.replace(cwd=os.getcwd())
    admission = admit(call, caller, admission_facts(call, caller, ctx))
    refused = admission.denial(_mode(ctx))
    if refused is not None:        # the gate is not consulted
        decision, outcome, ask_ms = refused, "deny", 0
    else:
        decision, outcome, ask_ms = _gate(call, caller, ctx, ask, audit_extra)
    decision = _noted(decision, audit_extra)    # (the client's denial says so too)

    written = _audit(ctx, decision, outcome, call, caller, ask_ms, audit_extra)
    if not written and caller.kind != CallerKind.LOCAL:
        # The second line of defence: the probe said writable, the write failed (disk full).
        return _deny(decision, "audit log unwritable").denied_result()
    if refused is not None:
        return admission.denied_result(decision.mode)
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
        _audit(ctx, floor.replace(target=str(result.get("target", ""))), "deny",
               call, caller, 0, audit_extra)
    return result
