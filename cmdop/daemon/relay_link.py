"""The agent's link to the relay: one outbound TLS gRPC stream, calls forwarded on it run through
the same admission → gate → sandbox → audit path as local ones (`AgentService.run_call`).

How it runs (trio daemon, blocking grpc client):
- A supervised daemon task (`run_relay_link`) resolves the credential (config, as a caller would:
  CMDOP_API_KEY, the named or active workspace of ssh_workspaces.json), connects, and reconnects
  with exponential backoff and jitter (1 s → 60 s; a refused credential waits the maximum).
- The stream's responses are read in a worker thread that hands each frame to the trio side;
  frames to the relay go through a thread-safe queue the stream's request iterator drains.
- A forwarded call: its id is checked against the ids already seen (a call id is never run
  twice; a sealed call's own id and issue time too, across restarts: cmdop.adapters.e2e_seen), it is acknowledged (`accepted`), the caller is the principal the relay stamped
  (never "local": an unknown kind is taken as remote), and its output streams back in chunks
  under a per-call credit window (blocking in `on_chunk` holds the command back). A Cancel
  frame, the call's deadline, or the link ending sets the call's cancel event: its process group
  is killed and its audit line still written.
- `LinkState` is what `agent status` shows: off / connecting / online / backoff, the relay, the
  machine name the relay gave us, and the last error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import trio

from cmdop import __version__
from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.errors import AuthError, CmdopError

if TYPE_CHECKING:
    from cmdop.adapters.relay_grpc import RelayEndpoint
    from cmdop.daemon.app import Daemon
    from cmdop.relay.proto import relay_pb2 as pb

log = logging.getLogger("cmdop.daemon.relay")

PROTOCOL_VERSION = 1
CAPABILITIES = ("stream", "cancel")
WINDOW_BYTES = 4 * 1024 * 1024      # unacknowledged streamed output per call (4 chunks)
MAX_RESULT_BYTES = 3 * 1024 * 1024  # a result frame, well under grpc's 4 MiB message limit
LINK_DEADLINE_S = 6 * 3600.0        # every grpc call has a deadline: the link is renewed after it
SEEN_IDS = 10_000
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
STABLE_S = 30.0                     # a link up this long resets the backoff
KEY_QUERY_TIMEOUT_S = 10.0
CHUNK_OVERHEAD = 17                 # a sealed chunk's bytes beyond its data (cmdop.adapters.e2e)


@dataclass
class LinkState:
    """The relay link as `agent status` reports it."""

    state: str = "off"              # off | connecting | online | backoff
    relay: str = ""
    machine: str = ""
    workspace: str = ""
    key_id: str = ""                # the public id of the key the link authenticates with
    source: str = ""                # where its credential came from (env, active, oauth, ...)
    last_error: str = ""
    since: float = field(default_factory=time.time)
    connects: int = 0
    calls: int = 0
    e2e_key: str = ""               # the fingerprint of this agent's end-to-end key
    e2e_required: bool = True       # relay calls must be sealed end to end (config e2e_required)
    # The relay refused the credential (a revoked or unknown key, an expired login): no remote
    # call can reach this agent until someone acts, so `agent status` says DEGRADED.
    refused: bool = False

    def set(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            self.since = time.time()
        self.state = state
        if error is not None:
            self.last_error = error
        if state in ("online", "off"):
            self.refused = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LinkConfig:
    endpoint: "RelayEndpoint"
    secret: str
    workspace: str
    source: str


@dataclass(frozen=True)
class E2EConfig:
    """This agent's end-to-end settings for one link: its key (None: no key loaded), the
    machine id sealed calls are bound to, whether plaintext calls are refused, and the caller
    keys whose signature a call needs (empty: no signature required)."""

    key: Any                        # cmdop.adapters.e2e.AgentKey | None
    machine_id: str
    required: bool
    authorized: frozenset[bytes]
    seen: Any = None                # cmdop.adapters.e2e_seen.SeenRequests (None: in memory)


def load_e2e_config(settings: Any) -> E2EConfig:
    """The agent key and config.yaml's e2e settings; CmdopError when E2E is required and the key
    cannot be used, or config.yaml is invalid (never a silent fallback to plaintext, nor to
    "any caller" when authorized_callers could not be read)."""
    from cmdop.adapters import e2e_files
    from cmdop.adapters.config_file import load

    try:
        config = load(settings.config_file)
    except CmdopError as exc:
        raise CmdopError(f"relay link not started: {exc.message}", exc.hint) from None
    authorized = frozenset(e2e_files.parse_caller_public(k) for k in config.authorized_callers)
    try:
        key = e2e_files.load_or_create_agent_key(settings.state_dir)
    except CmdopError as exc:
        if config.e2e_required:
            raise
        log.error("end-to-end key unusable, and e2e_required is off: plaintext calls only: %s",
                  exc.message)
        key = None
    from cmdop.adapters.e2e_seen import SEEN_FILE, SeenRequests

    # Sealed calls already run, kept across restarts: a replayed one is refused (fail closed
    # when the record cannot be read).
    seen = SeenRequests(os.path.join(settings.state_dir, SEEN_FILE), time.time())
    return E2EConfig(key, machine_id(settings.state_dir), config.e2e_required, authorized, seen)


def next_backoff(previous: float, rng: random.Random | None = None) -> float:
    """The wait before the next attempt: doubled, capped at BACKOFF_MAX_S, with ±20 % jitter
    so a fleet that lost its relay does not come back in one wave."""
    base = min(BACKOFF_MAX_S, max(BACKOFF_INITIAL_S, previous * 2))
    return base * (0.8 + 0.4 * (rng or random).random())


def caller_from_principal(p: "pb.Principal") -> Caller:
    """The Caller for a forwarded call: exactly what the relay stamped. A kind other than self
    or guest is remote (a relay can never make a caller local)."""
    kinds = {"self": CallerKind.SELF, "guest": CallerKind.GUEST}
    return Caller(kind=kinds.get(p.kind, CallerKind.REMOTE), user=p.name or "unknown",
                  hostname=p.hostname, workspace=p.workspace, credential=p.credential or "relay",
                  machine_id=p.machine_id, share_id=p.share_id, tools=tuple(p.tools),
                  note=p.note[:200] if p.kind == "guest" else "")


def machine_id(state_dir: str) -> str:
    """This agent's id on the relay: random, generated once into the state dir. Per agent, not
    /etc/machine-id: a root agent and a user's agent on one machine are two hosts, and cloned
    images share /etc/machine-id."""
    from cmdop.adapters.secure_file import atomic_create, ensure_private_dir

    path = os.path.join(state_dir, "machine_id")
    value = _read_machine_id(path)
    if value is None:
        ensure_private_dir(state_dir)
        atomic_create(path, uuid.uuid4().hex + "\n")   # a racing agent's id wins: read it back
        value = _read_machine_id(path)
    if value is None:
        raise CmdopError(f"cannot create this agent's machine id {path}",
                         "is it a dangling symlink? move it away")
    return value


def _read_machine_id(path: str) -> str | None:
    """The id in `path`; None when there is no file. Never replaced behind the operator's back
    when it is there but unusable: sealed calls are bound to it, and a new one makes every
    caller warn that the host is "now another machine"."""
    hint = ("fix it, or move it away to get a new id (callers must then `cmdop connect trust` "
            "this host)")
    try:
        with open(path, encoding="ascii") as f:
            value = f.read().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CmdopError(f"cannot read this agent's machine id {path}: {exc}", hint) from None
    if not (value.isascii() and value.isalnum() and len(value) <= 64):
        raise CmdopError(f"this agent's machine id {path} is corrupt", hint)
    return value


def resolve_link_config(daemon: "Daemon") -> LinkConfig | None:
    """The relay and credential this agent links with, or None when none is configured."""
    from cmdop.adapters.relay_grpc import RelayEndpoint
    from cmdop.adapters.workspaces_file import load as load_workspaces
    from cmdop.core.credentials import resolve_credential

    from cmdop.adapters import token_file

    s = daemon.settings
    stored = token_file.load(s.token_file)
    resolved = resolve_credential(
        flag_key=None, env_key=s.api_key, flag_workspace=None, env_workspace=s.workspace,
        env_relay=s.relay, flag_relay=None, workspaces=load_workspaces(s.workspaces_file),
        oauth=stored.to_oauth() if stored is not None else None, now=time.time())
    if resolved.source == "none" or not resolved.secret or not resolved.relay:
        return None
    return LinkConfig(endpoint=RelayEndpoint(address=resolved.relay,
                                             fingerprint=resolved.relay_fingerprint,
                                             ca_file=resolved.relay_ca),
                      secret=resolved.secret, workspace=resolved.workspace,
                      source=resolved.source)


class CreditWindow:
    """Bytes a call may still stream before the relay acknowledges them. `take` blocks (worker
    thread) until there is room or the call is cancelled."""

    def __init__(self, size: int, cancel: threading.Event) -> None:
        self._room = size
        self._cond = threading.Condition()
        self._cancel = cancel

    def take(self, n: int) -> bool:
        """Wait for room for `n` bytes (a chunk larger than the window waits for all of it);
        False when the call was cancelled meanwhile."""
        with self._cond:
            while self._room <= 0 and not self._cancel.is_set():
                self._cond.wait(0.25)
            if self._cancel.is_set():
                return False
            self._room -= n
            return True

    def grant(self, n: int) -> None:
        with self._cond:
            self._room += n
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


@dataclass
class _Running:
    cancel: threading.Event
    window: CreditWindow


class Link:
    """One connected stream: the trio side of it (frame handling, forwarded calls)."""

    def __init__(self, daemon: "Daemon", state: LinkState, seen: "OrderedDict[str, None]",
                 secret: str = "", e2e: "E2EConfig | None" = None) -> None:
        self.secret = secret            # the credential this link authenticated with
        self.e2e = e2e if e2e is not None else E2EConfig(None, "", True, frozenset())
        from cmdop.adapters.e2e_seen import SeenRequests

        self.replay = self.e2e.seen if self.e2e.seen is not None else SeenRequests(None, 0)
        # HostKey queries of this machine's own CLI, by query id: [event, answer]
        self.key_queries: dict[str, list[Any]] = {}
        self.daemon = daemon
        self.state = state
        self.seen = seen
        self.outq: queue.Queue[Any] = queue.Queue()
        self.running: dict[str, _Running] = {}
        # Calls this machine's own CLI makes through the link: their events, by call id.
        self.outgoing: dict[str, trio.MemorySendChannel[Any]] = {}

    def frames(self) -> Iterator[Any]:
        """The request iterator grpc drains (in its own thread): until None is queued."""
        while True:
            frame = self.outq.get()
            if frame is None:
                return
            yield frame

    def send(self, frame: Any) -> None:
        self.outq.put(frame)

    def handle(self, frame: "pb.RelayFrame", nursery: trio.Nursery) -> None:
        """One frame from the relay (trio thread)."""
        from cmdop.relay.proto import relay_pb2 as pb

        kind = frame.WhichOneof("kind")
        if kind == "welcome":
            self.state.machine = frame.welcome.machine
            self.state.workspace = frame.welcome.workspace
            self.state.set("online", "")
            self.daemon.current_link = self
            newer = self.daemon.latest_access_token
            if self.state.source == "oauth" and newer and newer != self.secret:
                # refreshed while this link was connecting: present it now, not at expiry
                self.reauth(newer)
            log.info("linked to relay %s as %s (workspace %s)", self.state.relay,
                     frame.welcome.machine, frame.welcome.workspace)
        elif kind == "call":
            nursery.start_soon(self._forwarded, frame.call)
        elif kind == "cancel":
            running = self.running.get(frame.cancel.call_id)
            if running is not None:
                running.cancel.set()
                running.window.wake()
        elif kind == "credit":
            running = self.running.get(frame.credit.call_id)
            if running is not None:
                running.window.grant(frame.credit.bytes)
        elif kind == "ping":
            self.send(pb.AgentFrame(pong=pb.Ping(nonce=frame.ping.nonce)))
        elif kind == "event":
            event = frame.event
            which = event.WhichOneof("kind")
            cid = getattr(event, which).call_id if which else ""
            channel = self.outgoing.get(cid)
            if channel is not None:
                try:
                    channel.send_nowait(event)  # bounded by the credit window, not the channel
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # The local client left: its call is cancelled (serve_outgoing's finally)
                    # and nothing more is delivered; the link itself is unaffected.
                    self.outgoing.pop(cid, None)
                    return
                if which in ("result", "failure"):
                    del self.outgoing[cid]
                    channel.close()
        elif kind == "key_answer":
            waiting = self.key_queries.get(frame.key_answer.query_id)
            if waiting is not None:
                waiting[1] = frame.key_answer
                waiting[0].set()
        elif kind == "failure":
            self.state.last_error = f"{frame.failure.code}: {frame.failure.message}"
            log.warning("the relay ends this link: %s", self.state.last_error)

    async def _forwarded(self, start: "pb.CallStart") -> None:
        """Run one forwarded call and send its result (or failure) back."""
        from cmdop.daemon.service import RequestError
        from cmdop.relay.proto import relay_pb2 as pb

        cid = start.call_id
        if cid in self.seen:
            log.warning("call id %r seen before: not run again", cid)
            self.send(pb.AgentFrame(failure=pb.Failure(
                call_id=cid, code="duplicate", message="this call id was already run here")))
            return
        self.seen[cid] = None
        while len(self.seen) > SEEN_IDS:
            self.seen.popitem(last=False)
        self.send(pb.AgentFrame(accepted=pb.Accepted(call_id=cid, machine=self.state.machine)))
        self.state.calls += 1
        sealer = None
        # authorized_callers needs a signature, which only a sealed call carries: a plaintext
        # call is refused then even with e2e_required off.
        if start.sealed or self.e2e.required or self.e2e.authorized:
            opened = self._open_sealed(start)
            if not isinstance(opened, tuple):
                # refused: a denial like any other, so it is an audit line too
                rule, tool, reason = opened
                await trio.to_thread.run_sync(self._audit_refusal, start, rule, tool, reason)
                return
            start, sealer = opened
        try:
            tool_input = json.loads(start.input_json.decode("utf-8")) if start.input_json else {}
        except (UnicodeDecodeError, ValueError):
            tool_input = None
        if not isinstance(tool_input, dict):
            self._result(cid, {"error": "bad_input", "field": "input",
                               "message": "the tool input is not a JSON object"}, sealer)
            return
        caller = caller_from_principal(start.caller)
        if self.e2e.authorized and caller.kind is CallerKind.SELF:
            # "self" is the relay's word that the call came from one of this principal's own
            # machines; with authorized_callers the relay is not trusted for who calls, so no
            # self_bypass on its say-so.
            caller = caller.replace(kind=CallerKind.REMOTE)
        if start.tool == "unlock":
            # The machine password, checked here and never by the relay: verified under the
            # slow-down, audited (without the password), answered with a session token
            # (cmdop.adapters.password_store.handle_unlock).
            from cmdop.adapters.password_store import handle_unlock

            ctx = getattr(self.daemon.service, "call_context", None)
            if ctx is None:
                self.send(pb.AgentFrame(failure=pb.Failure(
                    call_id=cid, code="unavailable", message="the tool pipeline (and its audit "
                    "log) is not available in this agent")))
                return
            mode = getattr(ctx.gatekeeper, "mode", "")
            result = await trio.to_thread.run_sync(
                handle_unlock, ctx.settings, ctx.audit, caller, tool_input,
                mode if isinstance(mode, str) else "")
            self._result(cid, result, sealer)
            return
        if start.session:
            # A machine-password session: valid, unexpired and issued to this very principal.
            from cmdop.adapters.password_store import PasswordStore, principal_label

            try:
                unlocked = await trio.to_thread.run_sync(
                    PasswordStore(self.daemon.settings).session_ok, start.session,
                    principal_label(caller.workspace, caller.user))
            except Exception:  # noqa: BLE001 - a store that cannot answer grants nothing
                log.exception("checking a password session failed")
                unlocked = False
            if unlocked:
                caller = caller.replace(password_ok=True)
        call = ToolCall(tool=start.tool, input=tool_input,
                        cwd=start.cwd or self.daemon.settings.home)
        cancel = threading.Event()
        running = _Running(cancel, CreditWindow(WINDOW_BYTES, cancel))
        self.running[cid] = running
        on_chunk = None
        if start.stream:
            def on_chunk(name: str, data: bytes) -> None:
                fd = 2 if name == "stderr" else 1
                if sealer is None:
                    if running.window.take(len(data)):
                        self.send(pb.AgentFrame(chunk=pb.Chunk(call_id=cid, fd=fd, data=data)))
                elif running.window.take(len(data) + CHUNK_OVERHEAD):
                    # sealed only once sent: a skipped chunk must not leave a gap in the
                    # sequence (the caller would reject the rest); fd travels inside
                    self.send(pb.AgentFrame(chunk=pb.Chunk(call_id=cid,
                                                           data=sealer.chunk(fd, data))))

        deadline = (start.deadline_ms or 660_000) / 1000

        async def at_deadline() -> None:
            # The deadline only sets the cancel event: the worker still ends the command and
            # writes its audit line, and its result says "cancelled".
            await trio.sleep(max(0.0, deadline - 1))
            cancel.set()
            running.window.wake()

        try:
            async with trio.open_nursery() as inner:
                inner.start_soon(at_deadline)
                result = await self.daemon.service.run_call(call, caller, cancel=cancel,
                                                            on_chunk=on_chunk)
                inner.cancel_scope.cancel()
        except RequestError as exc:
            self.send(pb.AgentFrame(failure=pb.Failure(call_id=cid, code=exc.code,
                                                       message=exc.message, hint=exc.hint or "")))
            return
        finally:
            self.running.pop(cid, None)
        if start.stream and isinstance(result, dict):
            # Streamed already, in full: the buffered (capped) copy would only repeat it.
            result = {k: v for k, v in result.items() if k not in ("stdout", "stderr")}
        self._result(cid, result, sealer)

    def _open_sealed(self, start: "pb.CallStart") -> "tuple[pb.CallStart, Any] | list[str]":
        """The call as its sealed request says (tool, input, cwd, session) and the sealer of
        its response; or, after answering a Failure, [rule id, tool, reason] of the refusal: a
        plaintext call while E2E is required (`e2e:plaintext`), a request that does not open for
        this call on this machine (`e2e:unopened`), or a caller that is not in
        authorized_callers (`e2e:unauthorized_caller`)."""
        from cmdop.adapters import e2e
        from cmdop.core.errors import E2EError
        from cmdop.relay.proto import relay_pb2 as pb

        cid = start.call_id
        rule, tool = "e2e:plaintext", start.tool
        try:
            if not start.sealed:
                raise E2EError("this agent accepts only end-to-end encrypted relay calls",
                               "upgrade cmdop on the calling machine")
            rule, tool = "e2e:unopened", ""
            if self.e2e.key is None:
                raise E2EError("this agent has no usable end-to-end key",
                               "see `cmdop agent status` on it")
            # The relay names the call "<caller's principal>:<caller's call id>"; the caller
            # sealed its own id, and the caller's id never contains ':'.
            request = e2e.open_request(start.sealed, self.e2e.key, cid.rpartition(":")[2],
                                       self.e2e.machine_id)
            rule, tool = "e2e:unauthorized_caller", request.tool
            if self.e2e.authorized:
                e2e.verify_caller(request, self.e2e.authorized)
            # The relay picks the outer call id's prefix: only the sealed id and time say
            # whether this request ran before (under any prefix, before a restart).
            rule = "e2e:replayed"
            self.replay.accept(request.call_id, request.issued_at, time.time())
        except E2EError as exc:
            log.warning("call %r refused: %s", cid, exc.message)   # %r: relay text
            self.send(pb.AgentFrame(failure=pb.Failure(call_id=cid, code="e2e_refused",
                                                       message=exc.message,
                                                       hint=exc.hint or "")))
            return [rule, tool[:64], exc.message]
        opened = pb.CallStart()
        opened.CopyFrom(start)
        opened.tool, opened.input_json = request.tool, request.input_json
        opened.cwd, opened.session, opened.sealed = request.cwd, request.session, b""
        opened.stream = request.stream      # the caller's choice, not the relay's
        return opened, e2e.ResponseSealer(request)

    def _audit_refusal(self, start: "pb.CallStart", rule: str, tool: str, reason: str) -> None:
        """The audit line of a relay call refused before the gate (worker thread): decision
        deny, source floor, the e2e rule; the input is never recorded (it did not open, or it
        is a caller's the machine does not accept)."""
        from datetime import datetime, timezone

        from cmdop.core.audit import build_record
        from cmdop.core.policy.decision import Decision

        ctx = getattr(self.daemon.service, "call_context", None)
        if ctx is None:
            return
        mode = getattr(ctx.gatekeeper, "mode", "")
        decision = Decision(decision="deny", source="floor", reason=reason,
                            mode=mode if isinstance(mode, str) else "", tool=tool or "?",
                            rule_id=rule)
        try:
            ctx.audit.append(build_record(decision=decision, outcome="deny",
                                          tool_input={"not_recorded": True},
                                          caller=caller_from_principal(start.caller),
                                          now=datetime.now(timezone.utc)))
        except Exception:  # noqa: BLE001 - the refusal stands whether or not the line is written
            log.exception("cannot audit the refused call %s", start.call_id)

    def _result(self, cid: str, result: Any, sealer: Any = None) -> None:
        """Send a call's result (sealed as the final frame of a sealed call); one too large
        for a frame fails that call alone (a frame over grpc's limit would end the whole link,
        and every other call on it)."""
        from cmdop.relay.proto import relay_pb2 as pb

        data = json.dumps(result, ensure_ascii=False, default=str).encode("utf-8")
        if len(data) > MAX_RESULT_BYTES:
            log.warning("call %s: result of %d bytes is too large to send", cid, len(data))
            data = json.dumps({
                "error": "result_too_large",
                "message": f"the result is {len(data)} bytes, more than a frame carries "
                           f"({MAX_RESULT_BYTES}); stream it (`cmdop exec`) or read less"}
            ).encode("utf-8")
        if sealer is not None:
            data = sealer.final(data)
        self.send(pb.AgentFrame(result=pb.Result(call_id=cid, result_json=data)))

    def open_outgoing(self, start: "pb.CallStart") -> trio.MemoryReceiveChannel[Any]:
        """Send a call of this machine's CLI to the relay; its events arrive on the channel
        (the last one a result or a failure)."""
        from cmdop.relay.proto import relay_pb2 as pb

        send, recv = trio.open_memory_channel[Any](float("inf"))
        frame = pb.AgentFrame(call=start)
        if frame.ByteSize() > MAX_RESULT_BYTES:     # never a frame that would end the link
            send.send_nowait(pb.CallEvent(failure=pb.Failure(
                call_id=start.call_id, code="too_large",
                message="the call's input is too large to send")))
            send.close()
            return recv
        self.outgoing[start.call_id] = send
        self.send(frame)
        return recv

    async def query_key(self, host: str) -> "pb.HostKeyReply":
        """The relay's HostKey answer for `host`, asked on this link (for this machine's CLI)."""
        from cmdop.relay.proto import relay_pb2 as pb

        qid = uuid.uuid4().hex
        waiting: list[Any] = [trio.Event(), None]
        self.key_queries[qid] = waiting
        try:
            self.send(pb.AgentFrame(key_query=pb.HostKeyRequest(host=host, query_id=qid)))
            with trio.move_on_after(KEY_QUERY_TIMEOUT_S):
                await waiting[0].wait()
        finally:
            self.key_queries.pop(qid, None)
        if waiting[1] is None:
            return pb.HostKeyReply(failure=pb.Failure(
                code="deadline_exceeded", message="the relay did not answer the host key query",
                hint="is the relay older than this agent? upgrade it"))
        answer: pb.HostKeyReply = waiting[1]
        return answer

    def ack(self, call_id: str, n: int) -> None:
        """The local client has `n` more bytes of an outgoing call: the target may send more."""
        from cmdop.relay.proto import relay_pb2 as pb

        self.send(pb.AgentFrame(credit=pb.Credit(call_id=call_id, bytes=n)))

    def cancel_outgoing(self, call_id: str) -> None:
        from cmdop.relay.proto import relay_pb2 as pb

        if call_id in self.outgoing:
            self.send(pb.AgentFrame(cancel=pb.Cancel(call_id=call_id, reason="cancelled")))

    def reauth(self, access_token: str) -> None:
        """Present a refreshed access token on the open stream (the relay moves the link's
        expiry; nothing is dropped)."""
        from cmdop.relay.proto import relay_pb2 as pb

        self.send(pb.AgentFrame(reauth=pb.Reauth(token=access_token)))

    def cancel_all(self) -> None:
        """The link is ending: running calls are cancelled, outgoing ones fail."""
        from cmdop.relay.proto import relay_pb2 as pb

        if self.daemon.current_link is self:
            self.daemon.current_link = None
        for running in self.running.values():
            running.cancel.set()
            running.window.wake()
        for cid, channel in list(self.outgoing.items()):
            try:
                channel.send_nowait(pb.CallEvent(failure=pb.Failure(
                    call_id=cid, code="relay_lost", message="this agent's link to the relay "
                    "ended during the call")))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass                    # its local client already left
            channel.close()
        self.outgoing.clear()


def _event_json(event: "pb.CallEvent") -> dict[str, Any]:
    """A relay CallEvent as the local protocol's event frame (a sealed call's result stays
    sealed, base64: the local client opens it)."""
    import base64

    which = event.WhichOneof("kind")
    if which == "chunk":
        return {"event": "chunk", "fd": event.chunk.fd,
                "data": base64.b64encode(event.chunk.data).decode("ascii")}
    if which == "accepted":
        return {"event": "accepted", "machine": event.accepted.machine}
    if which == "result":
        return {"event": "result",
                "sealed": base64.b64encode(event.result.result_json).decode("ascii")}
    f = event.failure
    return {"event": "failure", "code": f.code or "failed", "message": f.message, "hint": f.hint}


async def serve_outgoing(link: Link, req: dict[str, Any], send: Any, reader: Any) -> None:
    """Run one `relay_call` request of a local client over `link` (see daemon.protocol)."""
    from cmdop.daemon import protocol
    from cmdop.relay.proto import relay_pb2 as pb

    import base64

    deadline_ms = int(req.get("deadline_ms") or 660_000)
    # Sealed by the client itself (end to end; the service refuses anything else): this agent
    # only forwards opaque bytes, under the call id the client bound into them.
    cid = str(req.get("call_id") or "")
    start = pb.CallStart(call_id=cid, host=str(req["host"]),
                         sealed=base64.b64decode(str(req["sealed"])), deadline_ms=deadline_ms,
                         stream=bool(req.get("stream")))
    events = link.open_outgoing(start)
    ended = False
    try:
        await send(protocol.ok(req.get("id"), {"call_id": cid}))
        ended = await _relay_events(link, cid, events, send, reader, deadline_ms)
    finally:
        if not ended:               # the client left or broke: cancel, stop delivering
            link.cancel_outgoing(cid)
            link.outgoing.pop(cid, None)


async def _relay_events(link: Link, cid: str, events: trio.MemoryReceiveChannel[Any], send: Any,
                        reader: Any, deadline_ms: int) -> bool:
    """Pass an outgoing call's events to its local client; True when the call ended."""
    from cmdop.daemon import protocol

    ended = False
    async with trio.open_nursery() as nursery:
        async def follow_client() -> None:
            # A cancel frame, or the client leaving, cancels the call on the remote side. Any
            # other frame is the client's next request, sent as soon as it had the result
            # (before this task was cancelled): it goes back to the connection's loop.
            try:
                msg = await reader.read(idle_s=deadline_ms / 1000 + 30)
            except Exception:  # noqa: BLE001 - a broken client is a leaving client
                msg = None
            if msg is not None and msg.get("op") != "cancel":
                reader.unread(msg)
                return
            link.cancel_outgoing(cid)

        nursery.start_soon(follow_client)
        async with events:
            async for event in events:
                obj = _event_json(event)
                await send({"v": protocol.VERSION, **obj})
                if obj["event"] == "chunk":
                    link.ack(cid, len(event.chunk.data))
                if obj["event"] in ("result", "failure"):
                    ended = True
                    break
        nursery.cancel_scope.cancel()
    return ended


async def _link_once(daemon: "Daemon", config: LinkConfig, state: LinkState,
                     seen: "OrderedDict[str, None]") -> None:
    """Connect, serve the stream until it ends; raises CmdopError with the reason."""
    from cmdop.adapters.relay_grpc import RelayChannel
    from cmdop.relay.proto import relay_pb2 as pb

    state.set("connecting")
    e2e = await trio.to_thread.run_sync(load_e2e_config, daemon.settings)
    state.e2e_key = e2e.key.fingerprint if e2e.key is not None else ""
    state.e2e_required = e2e.required
    channel = await trio.to_thread.run_sync(RelayChannel, config.endpoint, config.secret)
    link = Link(daemon, state, seen, config.secret, e2e)
    link.send(pb.AgentFrame(hello=pb.Hello(
        protocol_version=PROTOCOL_VERSION, capabilities=list(CAPABILITIES),
        hostname=socket.gethostname(), machine_id=e2e.machine_id,
        agent_version=__version__, e2e_key=e2e.key.public if e2e.key is not None else b"")))
    stream = channel.agent_link(link.frames(), timeout=LINK_DEADLINE_S)
    token = trio.lowlevel.current_trio_token()
    failure: list[CmdopError] = []
    try:
        async with trio.open_nursery() as nursery:
            def read() -> None:
                # Errors end here, as the link's last error: raised through the nursery they
                # would arrive as an ExceptionGroup and crash the task instead of a retry.
                try:
                    for frame in stream:
                        trio.from_thread.run_sync(link.handle, frame, nursery, trio_token=token)
                except CmdopError as exc:
                    state.last_error = exc.message
                    failure.append(exc)

            try:
                await trio.to_thread.run_sync(read, abandon_on_cancel=True)
            finally:
                link.cancel_all()
            nursery.cancel_scope.cancel()
    finally:
        link.cancel_all()
        link.send(None)
        stream.cancel()
        channel.close()
    if failure:
        raise failure[0]      # AuthError (refused key) waits longer before the next try
    raise CmdopError(state.last_error or "the relay closed the link", None)


async def run_relay_link(daemon: "Daemon") -> None:
    """The daemon task: keep one link to the relay up while a credential is configured. The
    credential is resolved again before every connection (a refreshed login, a new key)."""
    from cmdop.core.credentials import parse_api_key

    state: LinkState = daemon.relay_state
    seen: OrderedDict[str, None] = OrderedDict()
    delay = 0.0
    while True:
        try:
            config = await trio.to_thread.run_sync(resolve_link_config, daemon)
        except CmdopError as exc:
            config = None
            state.set("off", f"{exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
            log.error("relay link not started: %s", exc.message)
        if config is None:
            if state.state != "off":
                state.set("off", "no relay credential configured (cmdop connect key set, or "
                          "cmdop login)")
            elif not state.last_error:
                state.last_error = "no relay credential configured (cmdop connect key set, " \
                                   "or cmdop login)"
            await trio.sleep(BACKOFF_MAX_S)
            continue
        state.relay = config.endpoint.address
        state.workspace = config.workspace
        state.key_id = parse_api_key(config.secret) or ""
        state.source = config.source
        started = time.monotonic()
        state.connects += 1
        error = "the relay closed the link"
        try:
            await _link_once(daemon, config, state, seen)
        except CmdopError as exc:
            error = exc.message
            state.refused = isinstance(exc, AuthError)
            if state.refused:
                delay = BACKOFF_MAX_S / 2    # a refused key: no point hurrying back
        if time.monotonic() - started >= STABLE_S:
            delay = 0.0
        delay = next_backoff(delay)
        state.set("backoff", error)
        log.warning("relay link down (%s); retrying in %.1f s", error, delay)
        # A refreshed login is worth a try at once (the link may have ended on the old one).
        with trio.move_on_after(delay):
            await daemon.credentials_changed.wait()
        daemon.credentials_changed = trio.Event()
