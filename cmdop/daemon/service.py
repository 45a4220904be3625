"""What the daemon does for each request on the local socket (ops listed in `protocol`).

Rules:
- The caller identity comes from the kernel (SO_PEERCRED uid → user name) and this host's name,
  never from the request. `as_caller` may only downgrade a local caller to `remote`/`self`; every
  audit line of such a call carries the extra field `"as_caller": KIND`, and its reasons (the
  client's too) a "[as_caller=KIND]" note, added by the pipeline.
- Tool calls run `pipeline.handle_call` in a worker thread (it blocks: gate, sandboxed spawn,
  audit line). An `ask` decision blocks that worker while the trio ask broker waits for an
  approver; every such wait is bounded by ask_timeout_s.
- Once stopping, new calls are refused (`shutting_down`); calls in flight see the shared
  cancel event, which kills their process groups, and still write their audit lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from typing import Any, Callable

import trio

from cmdop import __version__
from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.policy.decision import Decision
from cmdop.daemon import protocol
from cmdop.daemon.broker import AnswerError, AskBroker
from cmdop.daemon.local_server import Peer, StreamRequested, WatchRequested

log = logging.getLogger("cmdop.daemon.service")
_SEALED_ID = re.compile(r"[0-9a-f]{32}")        # the call id a client binds into a sealed call


class RequestError(Exception):
    """A request that cannot be served; becomes an error response, the connection stays."""

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


def input_digest(tool_input: Any) -> str:
    """`sha256:` + hex over the canonical JSON of the full tool input."""
    try:
        from cmdop.core.audit import input_digest as audit_digest  # the audit record's own form

        return str(audit_digest(tool_input))
    except ImportError:
        canon = json.dumps(tool_input, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "sha256:" + hashlib.sha256(canon.encode("utf-8")).hexdigest()


class AgentService:
    """Dispatches protocol requests. Lives in the trio thread; tool calls go to workers."""

    def __init__(self, *, broker: AskBroker, gatekeeper: Any, call_context: Any,
                 handle_call: Callable[..., Any] | None, hostname: str,
                 status: Callable[[], dict[str, Any]], reload: Callable[[], Any],
                 counters: dict[str, int]) -> None:
        self.broker = broker
        self.gatekeeper = gatekeeper
        self.call_context = call_context
        self.handle_call = handle_call
        self.hostname = hostname
        self._status = status
        self._reload = reload
        self.counters = counters
        self.cancel = threading.Event()    # set at shutdown: running calls kill their children
        self.stopping = False
        self.limiter = trio.CapacityLimiter(32)
        self._lock = threading.Lock()
        self._running = 0                  # calls whose worker thread has started and not ended
        self._live_cancels: set[threading.Event] = set()   # per-call events (relay calls)
        self._active = 0                   # calls in run_call (trio side)
        self._idle = trio.Event()
        self._idle.set()
        # The relay link while it is up (set by the daemon): for calls to other machines.
        self.current_link: Callable[[], Any] | None = None

    @property
    def running_calls(self) -> int:
        with self._lock:
            return self._running

    async def dispatch(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """The response to one request (errors become error responses)."""
        req_id = req.get("id")
        if req.get("v") != protocol.VERSION:
            return protocol.error(req_id, "bad_version",
                                  f"protocol version {req.get('v')!r} is not supported",
                                  f"this agent speaks version {protocol.VERSION}")
        op = req.get("op")
        if op == "watch":
            raise WatchRequested(req_id)
        handler = getattr(self, f"_op_{op}", None) if op in protocol.OPS else None
        if handler is None:
            return protocol.error(req_id, "bad_request", f"unknown op {op!r}")
        try:
            result = await handler(req, peer)
        except RequestError as exc:
            return protocol.error(req_id, exc.code, exc.message, exc.hint)
        except AnswerError as exc:
            return protocol.error(req_id, exc.code, exc.message)
        except StreamRequested:
            raise
        except Exception as exc:  # a bug of ours: answer it and keep serving everyone else
            log.exception("request %s failed", op)
            return protocol.error(req_id, "internal", f"internal error: {type(exc).__name__}: {exc}")
        return protocol.ok(req_id, result)

    async def _op_ping(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__}

    async def _op_status(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return self._status()

    async def _op_pending(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"asks": self.broker.pending()}

    async def _op_answer(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        digest = req.get("input_digest")
        return await self.broker.answer(
            str(req.get("ask_id") or ""), str(req.get("verdict") or ""),
            str(req.get("scope") or "once"), str(digest) if digest else None, approver=peer.user)

    async def _op_reload(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        error = await self._reload()
        out: dict[str, Any] = {"policy_ok": error is None}
        if error is not None:
            out["error"] = str(error)
        return out

    def _gate(self) -> Any:
        if self.gatekeeper is None:
            raise RequestError("unavailable", "the permission gate is not loaded in this agent",
                               "see the agent's log (`journalctl -u cmdop`)")
        return self.gatekeeper

    async def _op_add_session_rule(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        rule, action, reason = req.get("rule"), req.get("action"), req.get("reason") or ""
        if not isinstance(rule, str) or not rule or action not in ("allow", "ask", "deny"):
            raise RequestError("bad_request", "add_session_rule needs a rule and an action "
                               "(allow, ask or deny)")
        if not isinstance(reason, str):
            raise RequestError("bad_request", "reason must be a string")
        gate = self._gate()
        from cmdop.core.errors import PolicyError

        try:
            rid = gate.add_session_rule(rule, action, reason=reason)
        except PolicyError as exc:
            raise RequestError("bad_rule", exc.message, exc.hint) from None
        log.info("session rule %s added by %s (pid %d): %s %s", rid, peer.user, peer.pid, action,
                 rule)
        return {"rule_id": rid, "rule": rule, "action": action, "scope": "session"}

    async def _op_list_rules(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        from cmdop.core.policy.rules import rule_id

        gate = self._gate()
        policy = gate.policy   # one immutable snapshot
        rows: list[dict[str, Any]] = []
        for ruleset in (getattr(policy, "global_rules", None), getattr(policy, "session_rules", None)):
            for r in getattr(ruleset, "rules", ()) or ():
                rows.append({"rule_id": r.rid or rule_id(r.rule, r.action), "rule": r.rule, "action": r.action,
                             "reason": r.reason, "scope": r.scope})
        return {"mode": str(gate.mode), "policy_ok": bool(gate.policy_ok), "rules": rows}

    async def _op_token(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """The current OAuth access token (refreshed first when it is due), so local CLIs never
        refresh on their own while the agent runs. The peer is this user or root (the socket's
        own rule), and never a command the agent ran (its confinement check)."""
        from cmdop.adapters import token_file
        from cmdop.core.errors import CmdopError

        settings = self.call_context.settings if self.call_context is not None else None
        if settings is None:
            raise RequestError("unavailable", "the agent's settings are not loaded")
        try:
            token = await trio.to_thread.run_sync(
                lambda: token_file.ensure_fresh(settings, strict=False))
        except CmdopError as exc:
            raise RequestError("refresh_failed", exc.message, exc.hint) from None
        if token is None:
            raise RequestError("no_login", "there is no login on this machine",
                               "run `cmdop login`")
        log.info("access token handed to local client pid %d (%s)", peer.pid, peer.user)
        return {"access_token": token.access_token, "expires_at": token.expires_at}

    async def _op_relay_call(self, req: dict[str, Any], peer: Peer) -> Any:
        """A call to another machine through this agent's relay link (see daemon.protocol)."""
        host, sealed = req.get("host"), req.get("sealed")
        if sealed is None:
            # Never forwarded in the clear: the relay would see the tool, input and output.
            raise RequestError("bad_request", "a relay_call through this agent must be sealed "
                               "end to end", "upgrade the cmdop client that made it")
        # End to end: the client sealed the call to the target's key under its own call id;
        # this agent forwards the bytes and never sees tool, input or output.
        if not (isinstance(sealed, str) and _SEALED_ID.fullmatch(str(req.get("call_id")))):
            raise RequestError("bad_request", "a sealed relay_call needs its call id (32 "
                               "hex digits) and the sealed request (base64)")
        if not (isinstance(host, str) and host):
            raise RequestError("bad_request", "relay_call needs a host")
        link = self.current_link() if self.current_link is not None else None
        if link is None:
            raise RequestError("no_link", "this agent has no relay link up",
                               "see `cmdop agent status`; the CLI connects directly meanwhile")
        self._same_credential(link, req)
        if req["call_id"] in link.outgoing:
            raise RequestError("bad_request", "this call id is already in use")
        from cmdop.daemon.relay_link import serve_outgoing

        log.info("local client pid %d (%s) calls %s through the relay link (sealed)", peer.pid,
                 peer.user, host)
        raise StreamRequested(lambda send, reader: serve_outgoing(link, req, send, reader))

    @staticmethod
    def _same_credential(link: Any, req: dict[str, Any]) -> None:
        """RequestError `other_credential` when the client has a credential of its own that is
        not the link's (same key, same relay): the CLI then goes direct with its own."""
        want = req.get("credential")
        if want is not None:
            state = link.state
            mine = {"key_id": state.key_id, "relay": state.relay}
            if not isinstance(want, dict) or any(want.get(k) != v for k, v in mine.items()):
                raise RequestError("other_credential", "this agent's relay link uses another "
                                   "credential", "the CLI connects directly with yours")

    async def _op_relay_host_key(self, req: dict[str, Any], peer: Peer) -> Any:
        """The end-to-end key of another machine, asked of the relay on this agent's link
        (see daemon.protocol); the client checks it against its own pin."""
        import base64

        host = req.get("host")
        if not (isinstance(host, str) and host):
            raise RequestError("bad_request", "relay_host_key needs a host")
        link = self.current_link() if self.current_link is not None else None
        if link is None:
            raise RequestError("no_link", "this agent has no relay link up",
                               "see `cmdop agent status`; the CLI connects directly meanwhile")
        self._same_credential(link, req)
        reply = await link.query_key(host)
        if reply.HasField("failure"):
            raise RequestError(reply.failure.code or "failed", reply.failure.message,
                               reply.failure.hint or None)
        return {"name": reply.name, "machine_id": reply.machine_id,
                "e2e_key": base64.b64encode(reply.e2e_key).decode("ascii"),
                "relay": link.state.relay, "workspace": link.state.workspace}

    async def _op_call(self, req: dict[str, Any], peer: Peer) -> Any:
        tool, tool_input = req.get("tool"), req.get("input", {})
        cwd, operation, as_caller = req.get("cwd", ""), req.get("operation", ""), req.get("as_caller")
        if not isinstance(tool, str) or not tool or not isinstance(tool_input, dict):
            raise RequestError("bad_request", "call needs a tool name and an input object")
        if not isinstance(cwd, str) or not isinstance(operation, str):
            raise RequestError("bad_request", "cwd and operation must be strings")
        kind, extra = CallerKind.LOCAL, None
        if as_caller not in (None, "", "local"):
            if as_caller not in protocol.CALLER_DOWNGRADES:
                raise RequestError("bad_request", "as_caller may only be remote or self")
            kind, extra = CallerKind(as_caller), {"as_caller": str(as_caller)}
            log.info("local client pid %d (%s) is gated as a %s caller", peer.pid, peer.user,
                     as_caller)
        caller = Caller(kind=kind, user=peer.user, hostname=self.hostname)
        call = ToolCall(tool=tool, input=tool_input, operation=operation, cwd=cwd)
        return await self.run_call(call, caller, _audit_extra=extra)

    def cancel_all(self) -> None:
        """Shutdown: every running call's cancel event is set (their process groups are killed
        and their audit lines still written), and so is every call's that starts from now."""
        self.cancel.set()
        with self._lock:
            live = list(self._live_cancels)
        for event in live:
            event.set()

    async def run_call(self, call: ToolCall, caller: Caller, *,
                       cancel: threading.Event | None = None, on_chunk: Any = None,
                       _audit_extra: dict[str, str] | None = None) -> Any:
        """Gate, audit and run one call in a worker thread; the result object.

        The one call path for every transport (the local socket, the relay link): it takes the
        call, the verified caller and, for a streamed call, `on_chunk(name, bytes)` (called in
        the worker thread; blocking in it holds the command back: that is the flow control).
        `cancel`, when given, is this call's own cancel event (set by its transport); shutdown
        sets it too. Refuses with RequestError once stopping or when the pipeline is
        unavailable."""
        if self.stopping:
            raise RequestError("shutting_down", "the agent is stopping")
        if self.handle_call is None or self.call_context is None:
            raise RequestError("unavailable", "the tool pipeline is not available in this agent")
        self.counters["calls"] = self.counters.get("calls", 0) + 1
        event = cancel if cancel is not None else self.cancel
        if cancel is not None:
            with self._lock:
                self._live_cancels.add(cancel)
            if self.cancel.is_set():
                cancel.set()
        self._active += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            return await self._run_in_worker(call, caller, self.call_context, _audit_extra, event,
                                             on_chunk)
        finally:
            if cancel is not None:
                with self._lock:
                    self._live_cancels.discard(cancel)
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no call is running (at once when none is)."""
        while self._active:
            await self._idle.wait()

    async def _run_in_worker(self, call: ToolCall, caller: Caller, ctx: Any,
                             audit_extra: dict[str, str] | None, cancel: threading.Event,
                             on_chunk: Any) -> Any:
        assert self.handle_call is not None
        handle_call = self.handle_call
        token = trio.lowlevel.current_trio_token()

        def ask(decision: Decision, call: ToolCall, caller: Caller) -> Any:
            return self._ask_from_thread(token, decision, call, caller)

        # With no approver attached the pipeline itself denies an ask at once ("deny", reason
        # "no approver attached"), exactly as an in-process `cmdop run` records it. An approver
        # leaving between here and the ask is caught by the broker (ask_denied, same reason).
        ask_fn = ask if self.broker.approvers else None
        extra: dict[str, Any] = {}
        if audit_extra:
            extra["audit_extra"] = audit_extra
        if on_chunk is not None:
            extra["on_chunk"] = on_chunk

        def work() -> Any:
            with self._lock:
                self._running += 1
            try:
                return handle_call(call, caller, ctx, ask=ask_fn, cancel=cancel, **extra)
            finally:
                with self._lock:
                    self._running -= 1

        # abandon_on_cancel: the only cancellation is the shutdown deadline; by then the cancel
        # event has already told the worker to kill its children and write its audit line.
        result = await trio.to_thread.run_sync(work, abandon_on_cancel=True, limiter=self.limiter)
        if isinstance(result, dict) and result.get("error") == "permission_denied":
            self.counters["denied"] = self.counters.get("denied", 0) + 1
        return result

    def _ask_from_thread(self, token: trio.lowlevel.TrioToken, decision: Decision,
                         call: ToolCall, caller: Caller) -> Any:
        """Called in a worker thread by the pipeline: block until the broker has an outcome."""
        from cmdop.pipeline import AskOutcome

        timeout = float(getattr(self.gatekeeper, "ask_timeout_s", 60) or 60)
        digest = input_digest(dict(call.input))
        try:
            out = trio.from_thread.run(self.broker.ask, decision, call, caller, digest, timeout,
                                       trio_token=token)
        except (trio.RunFinishedError, trio.Cancelled):
            return AskOutcome(outcome="ask_denied", ask_ms=0, reason="agent shutting down")
        return AskOutcome(outcome=out.outcome, ask_ms=out.ask_ms, reason=out.reason)
