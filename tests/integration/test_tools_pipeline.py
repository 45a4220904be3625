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


def test_unknown_tool_is_denied_even_when_allowed(tmp_path: Path, sandbox: Sandbox) -> None:
    ctx = make(tmp_path, sandbox, "allow")
    out = handle_call(ToolCall("format_disk", {}), LOCAL, ctx)
    assert out["error"] == "permission_denied" and "unknown tool" in out["reason"]


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
