"""The gate's answer for one call. Produced by `gate.decide`, consumed by the pipeline,
the audit record, `permissions check --json` and the `permission_denied` result.
"""

from __future__ import annotations

from cmdop.core.value import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal

    Action = Literal["allow", "ask", "deny"]
    Source = Literal["floor", "rule", "mode", "bypass"]


class Decision(Frozen):
    """What the gate decided and why. Never carries a secret: `target` is as matched."""

    FIELDS = ("decision", "source", "reason", "mode", "tool", "operation", "target", "rule_id")
    decision: Action
    source: Source
    reason: str
    mode: str
    tool: str
    operation: str
    target: str
    rule_id: str

    def __init__(self, decision: Action, source: Source, reason: str, mode: str, tool: str,
                 operation: str = "", target: str = "", rule_id: str = "") -> None:
        self._set(decision=decision, source=source, reason=reason, mode=mode, tool=tool,
                  operation=operation, target=target, rule_id=rule_id)

    def to_json(self) -> dict[str, Any]:
        """The `permissions check --json` object: every field, empty ones omitted."""
        out: dict[str, Any] = {
            "decision": self.decision,
            "source": self.source,
            "rule_id": self.rule_id,
            "reason": self.reason,
            "mode": self.mode,
            "tool": self.tool,
            "operation": self.operation,
            "target": self.target,
        }
        return {k: v for k, v in out.items() if v != ""}

    def denied_result(self) -> dict[str, Any]:
        """The result a denied call returns to its caller."""
        out: dict[str, Any] = {
            "error": "permission_denied",
            "tool": self.tool,
            "target": self.target,
            "decision": "deny",
            "source": self.source,
            "rule_id": self.rule_id,
            "reason": self.reason,
        }
        return out
