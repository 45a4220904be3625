"""handle_call: gate -> audit -> tool, with a scripted gate and audit log (the real ones are
exercised end to end by test_run_cli.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from cmdop.adapters.launcher import Sandbox
from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.errors import AuditWriteError
from cmdop.core.policy.decision import Decision
from cmdop.core.settings import Settings
from cmdop.pipeline import AskOutcome, CallContext, handle_call

LOCAL = Caller(CallerKind.LOCAL, "me", "here")
REMOTE = Caller(CallerKind.REMOTE, "guest", "there")


class ScriptedGate:
    def __init__(self, action: str = "allow", source: str = "rule") -> None:
        self.action, self.source = action, source

    def evaluate(self, call: ToolCall, caller: Caller) -> Decision:
        return Decision(decision=self.action, source=self.source, reason="scripted",  # type: ignore[arg-type]
                        mode="default", tool=call.tool, target=str(call.input.get("path", "")))


class MemoryAudit:
    def __init__(self, broken: bool = False) -> None:
        self.records: list[dict[str, Any]] = []
        self.broken = broken

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.broken:
            raise AuditWriteError("disk full")
        self.records.append(record)
        return record

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    sb = Sandbox()
    yield sb
    sb.close()


def make(tmp_path: Path, sandbox: Sandbox, action: str = "allow", broken: bool = False) -> CallContext:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    settings = Settings.from_env({"HOME": str(home)}, str(home))
    return CallContext(settings=settings, gatekeeper=ScriptedGate(action),  # type: ignore[arg-type]
                       audit=MemoryAudit(broken), sandbox=sandbox, hostname="box")  # type: ignore[arg-type]


def test_allowed_call_is_audited_before_it_runs(tmp_path: Path, sandbox: Sandbox) -> None:
    ctx = make(tmp_path, sandbox)
    marker = tmp_path / "ran"
    out = handle_call(ToolCall("execute_command", {"command": f"ls {tmp_path}; touch {marker}"},
                               cwd=str(tmp_path)), LOCAL, ctx)
    assert out["exit_code"] == 0 and "ran" not in out["stdout"]   # audited before the side effect
    [rec] = ctx.audit.records  # type: ignore[attr-defined]
    assert rec["decision"] == "allow" and rec["user"] == "me" and rec["input_digest"].startswith("sha256:")


def test_denied_call_returns_the_contract_object(tmp_path: Path, sandbox: Sandbox) -> None:
    ctx = make(tmp_path, sandbox, "deny")
    out = handle_call(ToolCall("read_file", {"path": "x"}), REMOTE, ctx)
    assert out == {"error": "permission_denied", "tool": "read_file", "target": "x",
                   "decision": "deny", "source": "rule", "rule_id": "", "reason": "scripted"}
    assert ctx.audit.records[0]["decision"] == "deny"  # type: ignore[attr-defined]


def test_ask_without_approver_is_denied(tmp_path: Path, sandbox: Sandbox) -> None:
    ctx = make(tmp_path, sandbox, "ask")
    out = handle_call(ToolCall("list_dir", {"path": "."}), REMOTE, ctx)
    assert out["reason"] == "no approver attached"
    assert ctx.audit.records[0]["decision"] == "deny"  # type: ignore[attr-defined]


@pytest.mark.parametrize("outcome,runs", [("ask_allowed", True), ("ask_denied", False),
                                          ("ask_timeout", False)])
def test_ask_outcomes(tmp_path: Path, sandbox: Sandbox, outcome: str, runs: bool) -> None:
    ctx = make(tmp_path, sandbox, "ask")
    out = handle_call(ToolCall("list_dir", {"path": str(tmp_path)}), REMOTE, ctx,
                      ask=lambda d, c, who: AskOutcome(outcome, 42))
    assert isinstance(out, list) is runs
    rec = ctx.audit.records[0]  # type: ignore[attr-defined]
    assert rec["decision"] == outcome and rec["ask_ms"] == 42


def test_unwritable_audit_denies_remote_but_not_local(tmp_path: Path, sandbox: Sandbox) -> None:
    ctx = make(tmp_path, sandbox, broken=True)
    call = ToolCall("list_dir", {"path": str(tmp_path)})
    out = handle_call(call, REMOTE, ctx)
    assert out["error"] == "permission_denied" and out["reason"] == "audit log unwritable"
    assert isinstance(handle_call(call, LOCAL, ctx), list)


def test_unknown_tool_is_refused_even_when_allowed(tmp_path: Path, sandbox: Sandbox) -> None:
    ctx = make(tmp_path, sandbox, "allow")
    out = handle_call(ToolCall("format_disk", {}), LOCAL, ctx)
    assert out["error"] == "unknown_tool" and "format_disk" in out["message"], out
    assert "read_file" in out["tools"]


def test_bad_input_never_raises(tmp_path: Path, sandbox: Sandbox) -> None:
    ctx = make(tmp_path, sandbox)
    for tool_input in ({}, {"path": 5}, {"command": None}, {"pattern": "["}):
        for tool in ("read_file", "execute_command", "grep", "glob", "write_file", "list_dir"):
            out = handle_call(ToolCall(tool, tool_input, cwd=str(tmp_path)), REMOTE, ctx)
            assert isinstance(out, (dict, list))


def test_cancel_reaches_the_command(tmp_path: Path, sandbox: Sandbox) -> None:
    ctx = make(tmp_path, sandbox)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    out = handle_call(ToolCall("execute_command", {"command": "sleep 60"}, cwd=str(tmp_path)),
                      LOCAL, ctx, cancel=cancel)
    assert out["cancelled"] is True


def test_floor_found_by_the_tool_is_denied_and_audited(tmp_path: Path, sandbox: Sandbox) -> None:
    ctx = make(tmp_path, sandbox, "allow")   # a gate that (wrongly) allows: the tool still refuses
    (tmp_path / ".env").write_text("SECRET")
    out = handle_call(ToolCall("read_file", {"path": ".env"}, cwd=str(tmp_path)), REMOTE, ctx)
    assert out["error"] == "permission_denied" and out["source"] == "floor"
    assert [r["decision"] for r in ctx.audit.records] == ["allow", "deny"]  # type: ignore[attr-defined]


# -- admission: the checks before the gate -----------------------------------------------------

class CountingGate(ScriptedGate):
    def __init__(self, action: str = "allow") -> None:
        super().__init__(action)
        self.seen = 0

    def evaluate(self, call: ToolCall, caller: Caller) -> Decision:
        self.seen += 1
        return super().evaluate(call, caller)


class ProbedAudit(MemoryAudit):
    """An audit log with a `writable()` probe, as admission asks it."""

    def __init__(self, writable: bool) -> None:
        super().__init__(broken=not writable)
        self.ok = writable

    def writable(self) -> bool:
        return self.ok


class FakeSandbox:
    """No seccomp here; counts how often admission (or the tool) asked."""

    def __init__(self) -> None:
        self.asked = 0

    @property
    def available(self) -> bool:
        self.asked += 1
        return False

    @property
    def reason(self) -> str:
        return "kernel built without CONFIG_SECCOMP_FILTER"

    def close(self) -> None:
        pass


def admitting(tmp_path: Path, sandbox: Any, audit: Any = None, action: str = "allow",
              sandbox_required: bool = True) -> CallContext:
    ctx = make(tmp_path, sandbox, action)
    ctx.gatekeeper = CountingGate(action)  # type: ignore[assignment]
    ctx.sandbox_required = sandbox_required
    if audit is not None:
        ctx.audit = audit
    return ctx


@pytest.mark.parametrize("tool, tool_input, error, field", [
    ("format_disk", {"path": "/dev/sda"}, "unknown_tool", None),
    ("read_file", {}, "bad_input", "path"),
    ("read_file", {"path": 5}, "bad_input", "path"),
    ("execute_command", {"command": "  "}, "bad_input", "command"),
    ("execute_command", {"command": "rm -rf /\x00"}, "bad_input", "command"),
    ("write_file", {"path": "/tmp/x"}, "bad_input", "content"),      # never an empty write
    ("list_dir", {}, "bad_input", "path"),
    ("grep", {"pattern": "x"}, "bad_input", "path"),
    ("read_file", {"path": "/etc/hostname", "start": "a"}, "bad_input", "start"),
])
@pytest.mark.parametrize("who", ["local", "remote", "guest"])
def test_a_malformed_call_is_not_judged_audited_or_run(tmp_path: Path, sandbox: Sandbox, tool: str,
                                                       tool_input: dict[str, Any], error: str,
                                                       field: str | None, who: str) -> None:
    """A mistake is not a denial: never `source: floor`, not audited as a decision, the gate not
    asked, nothing run — for every kind of caller."""
    ctx = admitting(tmp_path, sandbox)
    caller = {"local": LOCAL, "remote": REMOTE,
              "guest": Caller(CallerKind.GUEST, "share", workspace="ws", credential="share",
                              share_id="s1", tools=("read_file",))}[who]
    out = handle_call(ToolCall(tool, tool_input, cwd=str(tmp_path)), caller, ctx)
    assert out["error"] == error and out.get("field") == field and "source" not in out, out
    assert ctx.audit.records == []  # type: ignore[attr-defined]
    assert ctx.gatekeeper.seen == 0  # type: ignore[attr-defined]


def test_guest_outside_its_share_is_refused_by_admission(tmp_path: Path, sandbox: Sandbox) -> None:
    ctx = admitting(tmp_path, sandbox)
    guest = Caller(CallerKind.GUEST, "share", workspace="ws", credential="share", share_id="s1",
                   tools=("read_file",))
    out = handle_call(ToolCall("list_dir", {"path": str(tmp_path)}), guest, ctx)
    assert out["error"] == "permission_denied" and out["rule_id"] == "admission:guest_tool"
    [rec] = ctx.audit.records  # type: ignore[attr-defined]
    assert rec["rule_id"] == "admission:guest_tool" and rec["target"] == str(tmp_path)
    assert ctx.gatekeeper.seen == 0  # type: ignore[attr-defined]
    (tmp_path / "f").write_text("hi")
    ok = handle_call(ToolCall("read_file", {"path": str(tmp_path / "f")}), guest, ctx)
    assert ok.get("error") is None and ctx.gatekeeper.seen == 1  # type: ignore[attr-defined]


def test_unwritable_audit_found_by_the_probe(tmp_path: Path, sandbox: Sandbox) -> None:
    ctx = admitting(tmp_path, sandbox, audit=ProbedAudit(writable=False))
    call = ToolCall("list_dir", {"path": str(tmp_path)})
    out = handle_call(call, REMOTE, ctx)
    assert out["error"] == "permission_denied" and out["reason"] == "audit log unwritable"
    assert out["rule_id"] == "admission:audit_unwritable"
    assert ctx.gatekeeper.seen == 0  # type: ignore[attr-defined]
    assert isinstance(handle_call(call, LOCAL, ctx), list)   # a local caller goes on, as before


def test_unwritable_state_dir_of_a_real_audit_log(tmp_path: Path, sandbox: Sandbox) -> None:
    from cmdop.adapters.audit_log import AuditLog
    from cmdop.pipeline import audit_writable

    (tmp_path / "file").write_text("")
    log = AuditLog(str(tmp_path / "file" / "state"))   # its dir can never be made
    assert audit_writable(log) is False
    assert audit_writable(AuditLog(str(tmp_path / "new" / "state"))) is True
    ctx = admitting(tmp_path, sandbox, audit=log)
    out = handle_call(ToolCall("list_dir", {"path": str(tmp_path)}), REMOTE, ctx)
    assert (out["reason"], out["rule_id"]) == ("audit log unwritable", "admission:audit_unwritable")


def test_command_without_the_sandbox_is_refused_by_admission(tmp_path: Path) -> None:
    box = FakeSandbox()
    ctx = admitting(tmp_path, box)
    marker = tmp_path / "ran"
    call = ToolCall("execute_command", {"command": f"touch {marker}"}, cwd=str(tmp_path))
    out = handle_call(call, REMOTE, ctx)
    assert out["error"] == "sandbox_unavailable" and "CONFIG_SECCOMP_FILTER" in out["message"]
    assert not marker.exists() and ctx.gatekeeper.seen == 0  # type: ignore[attr-defined]
    [rec] = ctx.audit.records  # type: ignore[attr-defined]
    assert (rec["decision"], rec["rule_id"]) == ("deny", "admission:sandbox_unavailable")
    # A read does not probe the sandbox; a local command runs unsandboxed, as before.
    asked = box.asked
    handle_call(ToolCall("list_dir", {"path": str(tmp_path)}), REMOTE, ctx)
    assert box.asked == asked
    local = handle_call(call, LOCAL, ctx)
    assert local["exit_code"] == 0 and local["sandboxed"] is False and marker.exists()


def test_sandbox_not_required_lets_a_remote_command_run(tmp_path: Path) -> None:
    ctx = admitting(tmp_path, FakeSandbox(), sandbox_required=False)
    out = handle_call(ToolCall("execute_command", {"command": "echo hi"}, cwd=str(tmp_path)), REMOTE, ctx)
    assert out["stdout"] == "hi\n" and out["sandboxed"] is False
