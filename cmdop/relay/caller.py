"""The caller's side of a remote call, blocking: list hosts, run one tool call through the relay.

`remote_call` sends CallStart, passes streamed output to `on_chunk(fd, bytes)` as it arrives,
and returns the tool's result object. Ctrl-C (KeyboardInterrupt) while waiting sends Cancel, so
the command is killed on the remote side, waits briefly for the remote's answer, and re-raises.
Failures the relay reports come back as the project's errors: an unknown, ambiguous or offline
host is UnreachableError (exit 5), a refused credential AuthError (exit 4).
"""

from __future__ import annotations

import json
import queue
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator

from cmdop.core.display import escaped
from cmdop.core.errors import (AuthError, CmdopError, E2EError, PermissionDeniedError,
                               UnreachableError)

if TYPE_CHECKING:
    from cmdop.adapters.relay_grpc import RelayChannel
    from cmdop.relay.sealing import SealedCall
    from cmdop.relay.proto import relay_pb2 as pb

ChunkSink = Callable[[int, bytes], None]
CANCEL_WAIT_S = 5.0

# Failure codes from the relay or agent → the error class (exit status) and a hint.
_FAILURES: dict[str, tuple[type[CmdopError], str]] = {
    "host_unknown": (UnreachableError, "see `cmdop hosts` for the machines of this workspace"),
    "host_ambiguous": (UnreachableError, "type more of the host name"),
    "host_offline": (UnreachableError, "is the agent running on it (`cmdop agent status`)?"),
    "revoked": (AuthError, "the key was revoked: ask for a new one"),
    "deadline_exceeded": (UnreachableError, "the call took longer than its deadline"),
    "shutting_down": (UnreachableError, "the agent is restarting: try again"),
    "relay_stopping": (UnreachableError, "the relay is stopping or restarting: try again shortly"),
    # The caller's own agent, which carried the call, lost its relay link mid-call.
    "relay_lost": (UnreachableError, "see `cmdop agent status` here (its relay link: a key "
                                     "revoked, the relay restarting); the command may have run"),
    # Several relay nodes: the node holding the host's link (or their bus) went away mid-call;
    # the call is never re-sent, the agent reconnects to another node.
    "node_lost": (UnreachableError, "try again in a few seconds (its agent reconnects)"),
    # End to end: the agent could not open the sealed call (or it came in the clear).
    "e2e_refused": (E2EError, "see `cmdop agent status` on the host"),
    # A guest's share (cmdop exec --share): each refusal with its own line.
    "share_revoked": (AuthError, "ask the machine's owner for a new share"),
    "share_expired": (AuthError, "ask the machine's owner for a new share"),
    "share_used_up": (AuthError, "ask the machine's owner for a new share"),
    "share_wrong_host": (PermissionDeniedError, "a share is for one machine only"),
}


def denial_error(result: dict[str, Any]) -> CmdopError:
    """The error (exit 3) a caller command reports for a `permission_denied` result: the gate's
    reason, source and rule."""
    from cmdop.core.errors import PermissionDeniedError

    where = f"source {result.get('source') or '?'}"
    if result.get("rule_id"):
        where += f", rule {result.get('rule_id')}"
    hint = ("no rule or mode allows this: the machine's floor protects it" if result.get("source") == "floor"
            else "ask the machine's owner for a rule (`cmdop permissions add` on it)")
    return PermissionDeniedError(f"denied: {result.get('reason', '')} [{where}]", hint)


def failure_error(code: str, message: str, hint: str = "") -> CmdopError:
    """The error a caller command raises for a Failure frame. Its text is the relay's (never
    sealed, whoever wrote it): control characters are shown escaped, so it cannot drive the
    terminal (escape sequences that rewrite earlier output, or the window title)."""
    cls, default_hint = _FAILURES.get(code, (CmdopError, ""))
    return cls(escaped(message or code, 2000), escaped(hint, 2000) or default_hint or None)


class _Requests:
    """The call's request stream: CallStart, then a Cancel if the user interrupts."""

    def __init__(self, start: "pb.CallerFrame") -> None:
        self._q: queue.Queue[Any] = queue.Queue()
        self._q.put(start)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._q.get()
            if item is None:
                return
            yield item

    def put(self, item: Any) -> None:
        self._q.put(item)


def remote_call(channel: "RelayChannel", host: str, tool: str, tool_input: dict[str, Any], *,
                on_chunk: ChunkSink | None = None, deadline_s: float = 660.0,
                cwd: str = "", session: str = "", cmdop_home: str | None = None,
                pin_scope: str = "", plaintext: bool = False) -> Any:
    """Run `tool` on `host` through the relay; the tool's result object (a denial is a result:
    `{"error": "permission_denied", ...}`). Streamed output goes to `on_chunk`. `session`: a
    machine-password session token for `host` (`cmdop password unlock HOST`), checked there.
    End to end: the call is sealed to the host's key, checked against the pins in `cmdop_home`
    (default: CMDOP_HOME's) under `pin_scope` (where host names are unique: the caller's
    workspace, or a guest's share), and its output opened here; the relay sees neither.
    `plaintext=True` sends it in the clear (tests: agents refuse such calls by default)."""
    from cmdop.relay.proto import relay_pb2 as pb

    sealed = None
    if plaintext:
        call_id = uuid.uuid4().hex
        start = pb.CallerFrame(start=pb.CallStart(
            call_id=call_id, host=host, tool=tool,
            input_json=json.dumps(tool_input, ensure_ascii=False).encode("utf-8"),
            deadline_ms=int(deadline_s * 1000), stream=on_chunk is not None, cwd=cwd,
            session=session))
    else:
        sealed, target = _seal(channel, host, tool, tool_input, cwd, session, cmdop_home,
                               pin_scope, stream=on_chunk is not None)
        call_id = sealed.call_id
        start = pb.CallerFrame(start=pb.CallStart(
            call_id=call_id, host=target, sealed=sealed.sealed,
            deadline_ms=int(deadline_s * 1000), stream=on_chunk is not None))
    requests = _Requests(start)
    stream = channel.call(iter(requests), timeout=deadline_s + 10)
    try:
        try:
            return _events(stream, on_chunk, sealed)
        except E2EError:
            if sealed is not None and sealed.from_pin:
                # Sealed to the pin without asking the relay: if the host's key changed, say
                # so (HostKeyChangedError from the pin check), else this refusal stands.
                _seal(channel, host, tool, tool_input, cwd, session, cmdop_home, pin_scope,
                      lookup=True, stream=on_chunk is not None)
            raise
        except KeyboardInterrupt:
            # The relay cancels the call on the agent (its process group is killed) and then
            # ends the RPC; wait for that briefly so the kill happens before we exit.
            requests.put(pb.CallerFrame(cancel=pb.Cancel(call_id=call_id, reason="interrupted")))
            stream.wait_done(CANCEL_WAIT_S)
            raise
    finally:
        requests.put(None)
        stream.cancel()


def _seal(channel: "RelayChannel", host: str, tool: str, tool_input: dict[str, Any], cwd: str,
          session: str, cmdop_home: str | None, scope: str = "",
          lookup: bool = False, stream: bool = False) -> tuple["SealedCall", str]:
    """The sealed call for `host` and the host's exact name to route it by: to the key pinned
    under that name, or (none pinned, or `lookup`) to the key the relay offers, checked
    against the pin."""
    from cmdop.relay.sealing import Pins, Target, seal_call, seal_pinned

    if cmdop_home is None:
        import os

        from cmdop.adapters.service_paths import account_home
        from cmdop.core.settings import Settings

        cmdop_home = Settings.from_env(os.environ, account_home()).cmdop_home
    pins = Pins(cmdop_home, channel.endpoint.address, scope)
    if not lookup:
        pinned = seal_pinned(pins, host, tool, tool_input, cwd=cwd, session=session,
                             stream=stream)
        if pinned is not None:
            return pinned, host
    reply = channel.host_key(host)
    if reply.HasField("failure"):
        f = reply.failure
        raise failure_error(f.code, f.message, f.hint)
    target = Target(reply.name, reply.machine_id, bytes(reply.e2e_key))
    return seal_call(pins, target, tool, tool_input, cwd=cwd, session=session, stream=stream,
                     requested=host), reply.name


def _events(stream: Any, on_chunk: ChunkSink | None, sealed: "SealedCall | None" = None) -> Any:
    for event in stream:
        kind = event.WhichOneof("kind")
        if kind == "chunk" and sealed is not None:
            fd, data = sealed.chunk(event.chunk.data)      # in order, each once, or E2EError
            if on_chunk is not None:
                on_chunk(fd, data)
        elif kind == "chunk" and on_chunk is not None:
            on_chunk(event.chunk.fd, event.chunk.data)
        elif kind == "result" and sealed is not None:
            return sealed.result(event.result.result_json)
        elif kind == "result":
            try:
                return json.loads(event.result.result_json.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise CmdopError("the agent sent a result that is not JSON",
                                 "upgrade cmdop on that machine") from None
        elif kind == "failure":
            f = event.failure
            raise failure_error(f.code, f.message, f.hint)
    raise UnreachableError("the relay ended the call without a result",
                           "the relay or the agent may have restarted; check `cmdop hosts`")

