"""Admission (cmdop.core.admission): the checks that refuse a call before the gate.

A table over tool known/unknown × caller kind × audit writable × sandbox available/unprobed ×
sandbox required × a guest's tool subset × the machine password (set, required for remote
callers, a valid session presented), against an oracle written from the rules; then the shapes a
denial takes (Decision, caller result, explain lines) and the fail-closed corners.
"""

from __future__ import annotations

import itertools

import pytest

from cmdop.core.admission import (ADMISSION, PASSWORD_REQUIRED_REASON, AdmissionFacts, AllOf,
                                  CheckResult, KnownTool, admit, needs_sandbox)
from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.policy.decision import Decision
from cmdop.core.policy.explain import explain
from cmdop.core.policy.gate import Policy

TOOLS = frozenset({"execute_command", "read_file", "list_dir"})
CALLS = {
    "execute_command": ToolCall("execute_command", {"command": " ls -la "}, cwd="/srv"),
    "read_file": ToolCall("read_file", {"path": "/srv/x"}, cwd="/srv"),
    "format_disk": ToolCall("format_disk", {"target": "/dev/sda"}, cwd="/srv"),
}
GUEST_TOOLS: dict[str, tuple[str, ...]] = {"none": (), "read": ("read_file",),
                                           "both": ("read_file", "execute_command")}
# (password set, remote_requires_password, the caller presented a valid session): every case
# where a session can matter, and the ones where it cannot.
PASSWORD = [(False, False, False), (True, False, False), (False, True, False), (True, True, False),
            (True, True, True)]
NAMES = ["known_tool", "guest_tools", "password_session", "audit_writable", "sandbox_available"]


def expected(tool: str, kind: CallerKind, shared: tuple[str, ...], audit_ok: bool,
             sandbox: bool | None, required: bool,
             password: tuple[bool, bool, bool] = (False, False, False)) -> str | None:
    """The rule_id of the check that must refuse, or None: the rules, written out plainly."""
    pw_set, pw_required, pw_ok = password
    if tool not in TOOLS:
        return "admission:unknown_tool"
    if kind is CallerKind.GUEST and tool not in shared:
        return "admission:guest_tool"
    if pw_set and pw_required and kind is not CallerKind.LOCAL and not pw_ok:
        return "admission:password_required"
    if not audit_ok and kind is not CallerKind.LOCAL:
        return "admission:audit_unwritable"
    if tool == "execute_command" and required and kind is not CallerKind.LOCAL and not sandbox:
        return "admission:sandbox_unavailable"
    return None


CASES = [(tool, kind, shared, audit_ok, sandbox, required, password)
         for tool, kind, audit_ok, sandbox, required, password in itertools.product(
             CALLS, CallerKind, (True, False), (True, False, None), (True, False), PASSWORD)
         for shared in (GUEST_TOOLS.values() if kind is CallerKind.GUEST else [()])]


@pytest.mark.parametrize("tool,kind,shared,audit_ok,sandbox,required,password", CASES)
def test_admission_table(tool: str, kind: CallerKind, shared: tuple[str, ...], audit_ok: bool,
                         sandbox: bool | None, required: bool, password: tuple[bool, bool, bool]) -> None:
    pw_set, pw_required, pw_ok = password
    caller = Caller(kind, "u", tools=shared, password_ok=pw_ok)
    facts = AdmissionFacts(TOOLS, audit_writable=audit_ok, sandbox_available=sandbox,
                           sandbox_required=required, sandbox_reason="" if sandbox else "no seccomp here",
                           password_set=pw_set, remote_requires_password=pw_required)
    got = admit(CALLS[tool], caller, facts)
    want = expected(tool, kind, shared, audit_ok, sandbox, required, password)
    assert [r.name for r in got.results] == NAMES
    denial = got.denial("strict")
    assert (denial.rule_id if denial else None) == want
    assert got.admitted is (want is None)
    if denial is not None:
        assert (denial.decision, denial.source, denial.mode, denial.tool) == ("deny", "floor", "strict", tool)
        assert denial.reason == got.failure().reason  # type: ignore[union-attr]
    if want == "admission:password_required":
        assert denial is not None and denial.reason == PASSWORD_REQUIRED_REASON
    # Every check ran, whatever failed first: explain shows them all.
    assert len(got.lines()) == len(NAMES)
    # The pipeline probes the sandbox only when the answer can refuse the call.
    assert needs_sandbox(CALLS[tool], caller, required) is (
        tool == "execute_command" and required and kind is not CallerKind.LOCAL)


def test_table_covers_the_grid() -> None:
    # 3 tools × (3 non-guest kinds + 3 guest subsets) × audit 2 × sandbox 3 × required 2
    # × password 5
    assert len(CASES) == 3 * 6 * 2 * 3 * 2 * 5
    assert {expected(*c) for c in CASES} == {None, "admission:unknown_tool", "admission:guest_tool",
                                             "admission:audit_unwritable", "admission:sandbox_unavailable",
                                             "admission:password_required"}


def facts(**kw: object) -> AdmissionFacts:
    return AdmissionFacts(TOOLS, **kw)  # type: ignore[arg-type]


REMOTE, LOCAL = Caller(CallerKind.REMOTE, "r"), Caller(CallerKind.LOCAL, "me")


def test_reasons_are_the_ones_users_saw_before() -> None:
    unknown = admit(CALLS["format_disk"], LOCAL, facts()).denial()
    assert unknown is not None and unknown.reason == "unknown tool: format_disk"
    audit = admit(CALLS["read_file"], REMOTE, facts(audit_writable=False)).denial()
    assert audit is not None and audit.reason == "audit log unwritable"
    assert audit.target == "/srv/x"     # the call's target, as given: the gate never saw it
    boxed = admit(CALLS["execute_command"], REMOTE,
                  facts(sandbox_available=False, sandbox_reason="kernel built without CONFIG_SECCOMP_FILTER"))
    d = boxed.denial()
    assert d is not None and d.reason == ("refusing to run a command without the seccomp sandbox: "
                                          "kernel built without CONFIG_SECCOMP_FILTER")
    assert d.target == "ls -la"


def test_guest_with_no_tools_may_use_none() -> None:
    guest = Caller(CallerKind.GUEST, "share-1", share_id="s1")
    d = admit(CALLS["read_file"], guest, facts()).denial()
    assert d is not None and d.rule_id == "admission:guest_tool" and "allowed: none" in d.reason
    ok = admit(CALLS["read_file"], Caller(CallerKind.GUEST, tools=("read_file",)), facts())
    assert ok.denial() is None


def test_first_failure_is_reported_but_every_check_runs() -> None:
    guest = Caller(CallerKind.GUEST)
    got = admit(CALLS["format_disk"], guest, facts(audit_writable=False))
    assert [r.passed for r in got.results] == [False, False, True, False, True]
    assert got.denial().rule_id == "admission:unknown_tool"  # type: ignore[union-attr]


def test_local_caller_goes_on_with_warnings() -> None:
    got = admit(CALLS["execute_command"], LOCAL, facts(audit_writable=False, sandbox_available=False,
                                                       sandbox_reason="not Linux"))
    assert got.denial() is None
    warnings = [r.warning for r in got.results if r.warning]
    assert len(warnings) == 2 and "audit log unwritable" in warnings[0] and "not Linux" in warnings[1]
    assert "warning: the command runs WITHOUT the seccomp sandbox: not Linux" in got.lines()[4]


def test_denied_result_shapes() -> None:
    got = admit(CALLS["format_disk"], REMOTE, facts())
    assert got.denied_result("strict") == {
        "error": "permission_denied", "tool": "format_disk", "target": "", "decision": "deny",
        "source": "floor", "rule_id": "admission:unknown_tool", "reason": "unknown tool: format_disk"}
    # The sandbox refusal keeps the result execute_command gave before admission existed.
    boxed = admit(CALLS["execute_command"], Caller(CallerKind.SELF),
                  facts(sandbox_available=False, sandbox_reason="no seccomp"))
    out = boxed.denied_result()
    assert out is not None and out["error"] == "sandbox_unavailable" and "no seccomp" in out["message"]
    assert out["tool"] == "execute_command" and "sandbox_required" in out["hint"]
    assert admit(CALLS["read_file"], REMOTE, facts()).denied_result() is None


def test_unprobed_sandbox_refuses_where_it_matters() -> None:
    d = admit(CALLS["execute_command"], REMOTE, facts()).denial()   # sandbox_available=None
    assert d is not None and d.rule_id == "admission:sandbox_unavailable" and "not probed" in d.reason


def test_a_check_that_raises_fails_closed() -> None:
    class Broken(KnownTool):
        def check(self, call: ToolCall, caller: Caller, facts: AdmissionFacts) -> CheckResult:
            raise RuntimeError("bug")

    got = AllOf((Broken(), *ADMISSION.checks[1:])).run(CALLS["read_file"], LOCAL, facts())
    d = got.denial()
    assert d is not None and d.rule_id == "admission:unknown_tool" and "RuntimeError: bug" in d.reason


def test_odd_inputs_never_raise() -> None:
    for call in (ToolCall("read_file", None), ToolCall("", {}), ToolCall("read_file", {"path": 5})):  # type: ignore[arg-type]
        got = admit(call, Caller("nonsense"), facts(audit_writable=False))  # type: ignore[arg-type]
        assert got.denial() is not None   # an unknown kind counts as a remote caller


def test_explain_shows_admission_before_the_gate() -> None:
    call = CALLS["read_file"]
    adm = admit(call, REMOTE, facts())
    d, lines = explain(call, REMOTE, Policy(mode="strict"), "/home/u", admission=adm)
    assert lines[1:6] == adm.lines() and lines[6].startswith("1. floor")
    assert lines[1] == "admission known_tool: pass — read_file is a tool of this agent"
    assert d.source == "mode" and lines[-1].startswith("decision: deny (source mode)")
    # Without admission, explain is what it was.
    d2, plain = explain(call, REMOTE, Policy(mode="strict"), "/home/u")
    assert d2 == d and plain == [lines[0], *lines[6:]]


def test_explain_shows_an_admission_refusal_and_the_gate_for_reference() -> None:
    call = CALLS["read_file"]
    adm = admit(call, REMOTE, facts(audit_writable=False))
    d, lines = explain(call, REMOTE, Policy(mode="bypass"), "/home/u", admission=adm)
    assert isinstance(d, Decision) and (d.decision, d.rule_id) == ("deny", "admission:audit_unwritable")
    assert "admission audit_writable: FAIL (admission:audit_unwritable) — audit log unwritable" in lines
    assert any(line.startswith("admission refuses (admission:audit_unwritable)") for line in lines)
    assert lines[-2].startswith("gate decision: allow (source mode)")   # what the gate alone says
    assert lines[-1] == ("decision: deny (source floor, rule admission:audit_unwritable) — "
                         "audit log unwritable")


def test_password_session_is_for_callers_that_are_not_local() -> None:
    required = facts(password_set=True, remote_requires_password=True)
    for kind in (CallerKind.REMOTE, CallerKind.SELF, CallerKind.GUEST):
        caller = Caller(kind, "u", tools=("read_file",))
        d = admit(CALLS["read_file"], caller, required).denial()
        assert d is not None and d.rule_id == "admission:password_required"
        assert "cmdop password unlock HOST" in d.reason and d.source == "floor"
        assert d.target == "/srv/x"
        unlocked = Caller(kind, "u", tools=("read_file",), password_ok=True)
        assert admit(CALLS["read_file"], unlocked, required).denial() is None
    assert admit(CALLS["read_file"], LOCAL, required).denial() is None
    # The caller gets the CONTRACT §6 permission_denied object, rule admission:password_required.
    out = admit(CALLS["read_file"], REMOTE, required).denied_result("strict")
    assert out is not None and out["error"] == "permission_denied"
    assert out["rule_id"] == "admission:password_required"


def test_password_session_explain_lines() -> None:
    lines = admit(CALLS["read_file"], REMOTE, facts()).lines()
    assert lines[2] == "admission password_session: pass — remote_requires_password is off"
    lines = admit(CALLS["read_file"], REMOTE, facts(password_set=True, remote_requires_password=True)).lines()
    assert lines[2].startswith("admission password_session: FAIL (admission:password_required)")


def test_a_truthy_non_bool_password_ok_is_not_a_session() -> None:
    odd = Caller(CallerKind.REMOTE, "u", password_ok="yes")  # type: ignore[arg-type]
    d = admit(CALLS["read_file"], odd, facts(password_set=True, remote_requires_password=True)).denial()
    assert d is not None and d.rule_id == "admission:password_required"
