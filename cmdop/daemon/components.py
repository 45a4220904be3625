"""The running parts of an agent, built in one place, each behind a small typed interface.

`build_components(settings)` opens, in this order, the audit writer (first: it is closed last),
the permission gate, and the tool pipeline with its sandbox (the sandbox's server starts on
first use, off the trio thread). A part that cannot load is None with the reason in
`policy_error` / `config_error`: the daemon then still serves status, and calls are refused
(`unavailable`), or denied, never run ungated. The daemon, the call service and the relay link
see these parts only through the Protocols below.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from cmdop.core.calls import Caller, ToolCall
from cmdop.core.policy.decision import Decision
from cmdop.core.settings import Settings

if TYPE_CHECKING:
    from cmdop.adapters.config_file import AgentConfig
    from cmdop.core.errors import PolicyError
    from cmdop.pipeline import CallContext

log = logging.getLogger("cmdop.daemon")


class Gate(Protocol):
    """The permission gate as the daemon uses it (cmdop.adapters.gatekeeper.Gatekeeper)."""

    @property
    def mode(self) -> str: ...

    @property
    def policy_ok(self) -> bool: ...

    @property
    def policy(self) -> Any: ...

    @property
    def ask_timeout_s(self) -> float: ...

    def evaluate(self, call: ToolCall, caller: Caller) -> Decision: ...

    def reload(self) -> "PolicyError | None": ...

    def add_session_rule(self, rule: str, action: str, reason: str = "") -> str: ...

    def add_global_rule(self, rule: str, action: str, reason: str = "") -> str: ...


class AuditSink(Protocol):
    """Where every call's audit line goes (cmdop.adapters.audit_log.AuditLog)."""

    def append(self, record: dict[str, Any]) -> Any: ...

    def close(self) -> None: ...


class SandboxPort(Protocol):
    """The sandbox as the daemon sees it: what it enforces, and stopping it."""

    def enforcement(self) -> dict[str, str]: ...

    def close(self) -> None: ...


class HandleCall(Protocol):
    """cmdop.pipeline.handle_call: admission → gate → audit → sandboxed tool, blocking."""

    def __call__(self, call: ToolCall, caller: Caller, ctx: "CallContext", ask: Any = None,
                 cancel: threading.Event | None = None, on_chunk: Any = None,
                 audit_extra: Mapping[str, Any] | None = None) -> Any: ...


@dataclass
class Components:
    """What one agent process runs calls with."""

    audit: AuditSink
    gate: Gate | None = None
    sandbox: SandboxPort | None = None
    call_context: "CallContext | None" = None
    handle_call: HandleCall | None = None
    policy_error: str = ""
    config_error: str = ""

    def close(self) -> None:
        """Stop the sandbox's server, then close the audit writer (last)."""
        try:
            if self.sandbox is not None:
                self.sandbox.close()
        finally:
            self.audit.close()


def build_components(settings: Settings, hostname: str) -> Components:
    """Open the audit writer, the gate and the pipeline for `settings` (see the module doc)."""
    from cmdop.adapters.audit_log import AuditLog

    parts = Components(audit=AuditLog(settings.state_dir))
    parts.gate = _open_gate(settings, parts)
    if parts.gate is not None:
        _open_pipeline(settings, hostname, parts)
    return parts


def _open_gate(settings: Settings, parts: Components) -> Gate | None:
    try:
        from cmdop.adapters.gatekeeper import Gatekeeper
    except ImportError as exc:
        log.error("permission gate unavailable: %s", exc)
        parts.policy_error = f"permission gate unavailable: {exc}"
        return None
    gk = Gatekeeper(settings, first_run=True)   # no permissions.yaml yet: writes the starter
    if gk.created_starter:
        log.info("first run: wrote a starter policy (mode strict, no rules) to %s; add rules with "
                 "`cmdop permissions add`", settings.permissions_file)
    elif gk.starter_error:
        log.error("first run: %s", gk.starter_error)
    if not gk.policy_ok:
        problem = str(getattr(gk.policy, "problem", "") or "no good policy")
        parts.policy_error = f"{problem} (no good policy at start: remote calls are denied)"
        log.error("%s (%s)", parts.policy_error, settings.permissions_file)
    if gk.mode == "bypass":
        log.warning("permission mode is BYPASS: remote calls are allowed unless the floor "
                    "denies them; use only on isolated machines")
    return gk


def _open_pipeline(settings: Settings, hostname: str, parts: Components) -> None:
    try:
        from cmdop import pipeline
        from cmdop.adapters.launcher import sandbox_for_agent
    except ImportError as exc:
        log.error("tool pipeline unavailable: %s", exc)
        return
    config = _load_config(settings, parts)
    sandbox = sandbox_for_agent(settings, config)  # its server starts on first use
    parts.sandbox = sandbox
    parts.call_context = pipeline.CallContext(
        settings=settings, gatekeeper=parts.gate,  # type: ignore[arg-type]
        audit=parts.audit,  # type: ignore[arg-type]
        sandbox=sandbox, hostname=hostname, sandbox_required=config.sandbox_required)
    parts.handle_call = pipeline.handle_call


def _load_config(settings: Settings, parts: Components) -> "AgentConfig":
    """config.yaml; an invalid file leaves the agent up on the safe defaults (sandbox
    required), reported as `config_error` and state DEGRADED until it is fixed and the agent
    restarted."""
    from cmdop.adapters.config_file import AgentConfig, load
    from cmdop.core.errors import ConfigFileError

    try:
        config = load(settings.config_file)
    except ConfigFileError as exc:
        parts.config_error = exc.message
        log.error("config.yaml rejected, using the defaults: %s", exc.message)
        return AgentConfig()
    if not config.sandbox_required:
        log.warning("sandbox_required is false: remote commands run without seccomp when it "
                    "is unavailable")
    return config

