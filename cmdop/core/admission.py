"""Admission: the checks that refuse a call before the permission gate is consulted. Pure.

`admit(call, caller, facts)` runs every check of `ADMISSION`, in order, on facts the pipeline
learnt cheaply (`AdmissionFacts`), and returns an `Admission`: each check's result, pass or fail,
and why. `Admission.denial()` turns the first failure into a deny `Decision` (source "floor",
rule_id "admission:<what>") for the audit line and the caller; None when every check passed.
The pipeline audits that denial like any other and does not consult the gate;
`cmdop permissions explain` prints one line per check before the gate's steps.

The checks (ADMISSION), in order; the first failure is the one reported:
- known_tool (admission:unknown_tool): the agent has the tool — "unknown tool: X".
- guest_tools (admission:guest_tool): a guest caller (a share token) may use only the share's
  tools, `caller.tools`; a guest with no tools may use none. Other callers: not applicable.
- password_session (admission:password_required): when the machine has a password
  (`password_set`) and config.yaml says `remote_requires_password: true`, a caller that is not
  local needs a valid password session (`caller.password_ok`, set by the agent after checking
  the session token the call carried) — "this machine requires its password from remote
  callers: unlock it first with `cmdop password unlock HOST`". A local caller: not applicable.
- audit_writable (admission:audit_unwritable): remote, self and guest calls need a writable
  audit log — "audit log unwritable". A local call goes on, with a warning.
- sandbox_available (admission:sandbox_unavailable): execute_command from a caller that is not
  local needs the seccomp sandbox while `sandbox_required` (config.yaml, default true) —
  "refusing to run a command without the seccomp sandbox: WHY"; the caller still gets the
  `sandbox_unavailable` result (`Admission.denied_result`). A local caller runs unsandboxed.

These are not the last line of defence: the pipeline still denies a remote call whose audit line
then fails to write, and execute_command still refuses to run unsandboxed for such a caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from cmdop.core.calls import TOOL_TARGET_FIELD, Caller, CallerKind, ToolCall
from cmdop.core.errors import SandboxUnavailableError
from cmdop.core.policy.decision import Decision

RULE_PREFIX = "admission:"


@dataclass(frozen=True)
class AdmissionFacts:
    """What admission needs to know about the agent, learnt before the call (by the pipeline, or
    by `permissions explain` for a dry run).

    `sandbox_available`: commands can run under the seccomp filter (`sandbox_reason` says why
    not); None when not probed. The pipeline probes it only when `needs_sandbox` says the
    answer matters (probing may start the sandbox server); a check that needs it and finds None
    refuses."""

    known_tools: frozenset[str]
    audit_writable: bool = True
    sandbox_available: bool | None = None
    sandbox_required: bool = True
    sandbox_reason: str = ""
    password_set: bool = False
    remote_requires_password: bool = False


@dataclass(frozen=True)
class CheckResult:
    """One check's answer. `error` is the result kind the caller gets when this check refuses
    (`permission_denied`, or `sandbox_unavailable` as before admission existed);
    `warning` is a caveat of a check that passed (a local call going on without an audit line)."""

    name: str
    rule_id: str
    passed: bool
    reason: str
    warning: str = ""
    error: str = "permission_denied"

    def line(self) -> str:
        """One line for `permissions explain`."""
        if self.passed:
            text = f"admission {self.name}: pass — {self.reason}"
            return text + (f" (warning: {self.warning})" if self.warning else "")
        return f"admission {self.name}: FAIL ({self.rule_id}) — {self.reason}"


class Check(Protocol):
    """A named admission check: pure, never raises for any call (AllOf guards it anyway)."""

    name: str
    rule_id: str

    def check(self, call: ToolCall, caller: Caller, facts: AdmissionFacts) -> CheckResult: ...


def _kind(caller: Caller) -> CallerKind | None:
    """The caller's kind; None for a value that is not one (treated as a remote caller)."""
    kind = caller.kind
    if isinstance(kind, CallerKind):
        return kind
    try:
        return CallerKind(str(kind))
    except ValueError:
        return None


class _Named:
    name = ""
    rule_id = ""

    def ok(self, reason: str, warning: str = "") -> CheckResult:
        return CheckResult(self.name, self.rule_id, True, reason, warning)

    def fail(self, reason: str, error: str = "permission_denied") -> CheckResult:
        return CheckResult(self.name, self.rule_id, False, reason, error=error)


class KnownTool(_Named):
    """The agent has the tool."""

    name, rule_id = "known_tool", RULE_PREFIX + "unknown_tool"

    def check(self, call: ToolCall, caller: Caller, facts: AdmissionFacts) -> CheckResult:
        if call.tool in facts.known_tools:
            return self.ok(f"{call.tool} is a tool of this agent")
        return self.fail(f"unknown tool: {call.tool}")


class GuestToolSubset(_Named):
    """A guest caller may use only the share's tools (none when the share names none)."""

    name, rule_id = "guest_tools", RULE_PREFIX + "guest_tool"

    def check(self, call: ToolCall, caller: Caller, facts: AdmissionFacts) -> CheckResult:
        if _kind(caller) is not CallerKind.GUEST:
            return self.ok("not a guest caller")
        tools = tuple(caller.tools)
        if call.tool in tools:
            return self.ok(f"{call.tool} is one of the share's tools ({', '.join(tools)})")
        allowed = ", ".join(tools) if tools else "none"
        return self.fail(f"tool {call.tool} is not one of the share's tools (allowed: {allowed})")


class AuditWritable(_Named):
    """Remote, self and guest calls need a writable audit log; a local call goes on."""

    name, rule_id = "audit_writable", RULE_PREFIX + "audit_unwritable"

    def check(self, call: ToolCall, caller: Caller, facts: AdmissionFacts) -> CheckResult:
        if facts.audit_writable:
            return self.ok("the audit log is writable")
        if _kind(caller) is CallerKind.LOCAL:
            return self.ok("local caller", warning="audit log unwritable: the call goes on without its line")
        return self.fail("audit log unwritable")


PASSWORD_REQUIRED_REASON = ("this machine requires its password from remote callers: unlock it "
                            "first with `cmdop password unlock HOST`")


class PasswordSession(_Named):
    """With a machine password and `remote_requires_password`, a caller that is not local needs
    a valid password session (`caller.password_ok`)."""

    name, rule_id = "password_session", RULE_PREFIX + "password_required"

    def check(self, call: ToolCall, caller: Caller, facts: AdmissionFacts) -> CheckResult:
        if not facts.remote_requires_password:
            return self.ok("remote_requires_password is off")
        if not facts.password_set:
            return self.ok("this machine has no password set")
        if _kind(caller) is CallerKind.LOCAL:
            return self.ok("local caller")
        if caller.password_ok is True:
            return self.ok("the caller presented a valid password session")
        return self.fail(PASSWORD_REQUIRED_REASON)


def needs_sandbox(call: ToolCall, caller: Caller, sandbox_required: bool) -> bool:
    """Whether SandboxAvailable refuses `call` when there is no sandbox: an execute_command from
    a caller that is not local while the sandbox is required."""
    return call.tool == "execute_command" and sandbox_required and _kind(caller) is not CallerKind.LOCAL


class SandboxAvailable(_Named):
    """execute_command from a caller that is not local needs the seccomp sandbox while
    `sandbox_required`."""

    name, rule_id = "sandbox_available", RULE_PREFIX + "sandbox_unavailable"

    def check(self, call: ToolCall, caller: Caller, facts: AdmissionFacts) -> CheckResult:
        if call.tool != "execute_command":
            return self.ok("not a command")
        available = facts.sandbox_available
        if available:
            return self.ok("commands run under the seccomp sandbox")
        why = facts.sandbox_reason or ("not probed" if available is None else "the sandbox is unavailable")
        warning = "" if available is None else f"the command runs WITHOUT the seccomp sandbox: {why}"
        if _kind(caller) is CallerKind.LOCAL:
            return self.ok("local caller: runs without the sandbox where there is none", warning)
        if not facts.sandbox_required:
            return self.ok("sandbox_required is false: runs without the sandbox where there is none", warning)
        return self.fail(f"refusing to run a command without the seccomp sandbox: {why}",
                         error="sandbox_unavailable")


def call_target(call: ToolCall) -> str:
    """The call's target as given (the field the gate matches), for a denial the gate never saw."""
    try:
        field = TOOL_TARGET_FIELD.get(call.tool)
        raw = call.input.get(field) if field and isinstance(call.input, Mapping) else None
    except Exception:  # noqa: BLE001 - an odd tool name or input: no target to show
        return ""
    return raw.strip() if isinstance(raw, str) else ""


@dataclass(frozen=True)
class Admission:
    """Every check's result for one call, in order."""

    tool: str
    operation: str
    target: str
    results: tuple[CheckResult, ...]

    @property
    def admitted(self) -> bool:
        return all(r.passed for r in self.results)

    def failure(self) -> CheckResult | None:
        """The first check that refused the call, if any."""
        return next((r for r in self.results if not r.passed), None)

    def denial(self, mode: str = "") -> Decision | None:
        """The first failure as a deny Decision (`mode`: the agent's, for the record); None when
        admitted."""
        failed = self.failure()
        if failed is None:
            return None
        return Decision(decision="deny", source="floor", reason=failed.reason, mode=mode,
                        tool=self.tool, operation=self.operation, target=self.target,
                        rule_id=failed.rule_id)

    def denied_result(self, mode: str = "") -> dict[str, Any] | None:
        """What the caller gets when admission refuses: the permission_denied object,
        or for the sandbox check the `sandbox_unavailable` error as execute_command gave it."""
        failed, denial = self.failure(), self.denial(mode)
        if failed is None or denial is None:
            return None
        if failed.error == "sandbox_unavailable":
            return {"error": "sandbox_unavailable", "message": failed.reason, "tool": self.tool,
                    "hint": SandboxUnavailableError.default_hint}
        return denial.denied_result()

    def lines(self) -> list[str]:
        """One line per check, for `permissions explain`."""
        return [r.line() for r in self.results]


@dataclass(frozen=True)
class AllOf:
    """Checks composed: every one runs (so explain can show them all); the first failure wins.
    A check that raises (a bug of ours) fails closed."""

    checks: tuple[Check, ...]

    def run(self, call: ToolCall, caller: Caller, facts: AdmissionFacts) -> Admission:
        results = []
        for c in self.checks:
            try:
                results.append(c.check(call, caller, facts))
            except Exception as exc:  # noqa: BLE001 - a failing check denies, it does not crash
                results.append(CheckResult(c.name, c.rule_id, False,
                                           f"admission check {c.name} failed: {type(exc).__name__}: {exc}"))
        return Admission(call.tool, call.operation, call_target(call), tuple(results))


ADMISSION = AllOf((KnownTool(), GuestToolSubset(), PasswordSession(), AuditWritable(),
                   SandboxAvailable()))


def admit(call: ToolCall, caller: Caller, facts: AdmissionFacts) -> Admission:
    """Run every admission check on `call` (see the module docstring). Never raises."""
    return ADMISSION.run(call, caller, facts)
