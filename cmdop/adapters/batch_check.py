"""One policy, many calls: the gate as `cmdop permissions check --batch` and
`cmdop permissions replay` run it (the pure line and record logic is `cmdop.core.replay`).

Rules:
- A `Judge` holds one compiled policy, one mode, this machine's home and cmdop's protected dirs,
  fixed for its life: every call of a run is judged the same way (the policy's command memo is
  shared, which is sound because a Policy never changes).
- Per call it does what `check` does: `resolve_for_gate` (the file system's canonical path or
  working directory), then `gate.decide`. It never raises: an error of ours is a deny with the
  reason, as in `Gatekeeper.evaluate`.
"""

from __future__ import annotations

from cmdop.adapters.gatekeeper import protected_dirs, resolve_for_gate
from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.policy.decision import Decision
from cmdop.core.policy.gate import Policy, decide
from cmdop.core.settings import Settings


class Judge:
    """`judge(call, caller_kind) -> Decision` under one policy and mode (a `core.replay.Judge`)."""

    def __init__(self, settings: Settings, policy: Policy, mode: str) -> None:
        self.policy = policy
        self.mode = mode
        self._home = settings.home
        self._protected = protected_dirs(settings)
        self._callers = {kind: Caller(kind) for kind in CallerKind}

    def __call__(self, call: ToolCall, kind: CallerKind) -> Decision:
        """The gate's decision for `call` made by a caller of `kind`. Never raises."""
        try:
            resolved, resolved_cwd = resolve_for_gate(call, self._home)
            return decide(call, self._callers[kind], self.policy, self._home, self.mode, resolved,
                          resolved_cwd, self._protected)
        except Exception as exc:  # noqa: BLE001 - one bad call must not end the run; deny it
            return Decision("deny", "floor", f"internal gate error: {type(exc).__name__}: {exc}",
                            self.mode, call.tool, call.operation, "")
