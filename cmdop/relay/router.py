"""The relay's live state: agents' links, calls in flight, and the rules that route between them.

Runs on asyncio (grpc.aio's loop) in `cmdop relay serve`. What it promises:
- Every RPC is authenticated from its `authorization` metadata against the store (workspace API
  keys, stored hashed). Failures are counted per client address (`AuthThrottle`): slowed, then
  refused.
- Identity is stamped here, never taken from a caller: each call forwarded to an agent carries
  a `Principal` the relay filled in — workspace, key name, credential kind, and the caller's
  machine only when the call arrived on that machine's own enrolled agent link. The class is
  `self` only for such a call to a machine enrolled by the same key (`routing.caller_kind`).
- One link per machine: a new link from the same machine replaces the old one. Calls are
  correlated by call id, namespaced by the caller's key, so no caller can collide with another's
  calls; the agent refuses a call id it has seen before.
- Streamed output is flow-controlled per call on the shared agent stream: the agent keeps at most
  its window of unacknowledged bytes; the relay grants credit as each chunk is written to the
  caller (whose own stream is flow-controlled by HTTP/2).
- Cancellation both ways: a caller that cancels or disappears cancels the call on the agent; an
  agent link that ends fails its calls at once ("host_offline"); a call past its deadline is
  cancelled on the agent and the caller told so.
- Revocation (`cmdop relay key revoke`, another process) is noticed within ~0.2 s through the
  store's data version: that key's links end and its calls are cut.
- A store that can wait on a network (PostgreSQL) is called on worker threads (`_db`), never on
  the event loop: a slow or unreachable database delays only the RPCs that wait for it. What the router decides around those waits
  still holds: a call holds its place in its key's count while its host is looked up, and a
  key revoked meanwhile is checked again before anything is forwarded or linked.
- Database down: new credentials and lookups fail closed (UNAVAILABLE, "try again shortly");
  links keep the identity verified when they were made (a Reauth that cannot be checked is
  ignored, not fatal: the old token's expiry still ends the link); running calls go on.
- Several nodes (`--bus`, cmdop.relay.cluster): a machine linked to another node is reached
  through a stand-in Link whose frames cross the bus (`link_of`); with no bus, nothing changes.
- Guests (a share token, cmdop.relay.share_rpc): each call is admitted against the share as
  stored at its start (revoked, expired, another machine, no uses left: a Failure code each)
  before anything of the workspace is named, stamped "guest" (never self), cut when the share
  is revoked or expires. A guest lists only its machine and cannot link an agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Protocol, TypeVar

from cmdop.adapters.relay_grpc import MAX_MESSAGE, RelayRefusal, ServerStream
from cmdop.core.errors import CmdopError, StoreStatementError, StoreUnavailableError
from cmdop.relay import host_keys, routing, share_rpc
from cmdop.relay.auth import SHARE_PREFIX
from cmdop.relay.proto import relay_pb2 as pb

if TYPE_CHECKING:
    from cmdop.relay.store_api import RelayStoreApi

log = logging.getLogger("cmdop.relay")

HELLO_TIMEOUT_S = 10.0
MAX_DEADLINE_MS = 4_000_000           # a call: 600 s tool + an ask wait (up to an hour) + margin
DEFAULT_DEADLINE_MS = 660_000
MAX_CALLS_PER_KEY = 64
TOUCH_EVERY_S = 300.0                 # last_seen in the store: not a write per ping
# A frame to an agent must fit grpc's message limit with room to spare; a call that would not
# fit fails alone (its link must never end because of one caller's input).
MAX_FORWARD_BYTES = MAX_MESSAGE - 64 * 1024
# Streamed output the relay holds for one call beyond what it has credited: the agent's window
# is 4 MiB; an agent that ignores it has its call failed instead of filling the relay's memory.
MAX_UNACKED_BYTES = 8 * 1024 * 1024
# Frames queued for one agent that does not read its stream: past this the link is closed.
MAX_QUEUED_BYTES = 32 * 1024 * 1024
# New machines one key may enrol per hour (a key must not be able to flood its workspace).
NEW_MACHINES_PER_HOUR = 20
MAX_HOSTS_LISTED = 2000              # one ListHosts reply stays far below the frame limit
CLOSE_GRACE_S = 2.0                   # a closed link's last frame gets this long to be written
_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")

Sink = Callable[[pb.CallEvent], Awaitable[None]]
T = TypeVar("T")
STORE_DOWN = ("the relay cannot check credentials now (its database is unreachable); "
              "try again shortly")
STORE_DOWN_LOOKUP = "the relay's database is unreachable now; try again shortly"


class Admit(Protocol):
    """A guest call's check once its host is resolved (cmdop.relay.share_rpc.GuestAdmission)."""

    def __call__(self, machine: Optional[str], online: bool) -> Any:
        """(machine row id or None, online) -> a refusal (code, message, hint), or None when
        admitted (its use counted)."""

    def give_back(self) -> None:
        """Return the use this call counted, if it counted one, for a call that was not
        forwarded after all."""


def _failure(call_id: str, code: str, message: str, hint: str = "") -> pb.CallEvent:
    return pb.CallEvent(failure=pb.Failure(call_id=call_id, code=code, message=message,
                                           hint=hint))


@dataclass(eq=False)
class Route:
    """One call in flight, from a caller (direct, or through an agent link) to a target link."""

    call_id: str                      # as the agent sees it: "<caller key id>:<caller's id>"
    caller_id: str                    # as the caller sent it
    caller_key: str
    target: "Link"
    events: asyncio.Queue[pb.CallEvent] = field(default_factory=asyncio.Queue)
    aborted: str = ""                 # set by the relay (revoked, link ended): the failure code
    unacked: int = 0                  # chunk bytes received from the agent, not yet credited
    # Direct callers' streams are flow-controlled by HTTP/2, so a chunk written to the caller is
    # credited at once; a call started on an agent link is credited when that agent says its
    # local client has the bytes (AgentFrame.credit).
    credit_on_write: bool = True


@dataclass(eq=False)
class Link:
    """One agent's stream."""

    key: Any                          # the principal (relay.auth.Principal / store.KeyInfo)
    machine: Any                      # store.Machine
    outq: asyncio.Queue[pb.RelayFrame | None] = field(default_factory=asyncio.Queue)
    routes: dict[str, Route] = field(default_factory=dict)          # calls to this machine
    outgoing: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # calls it started
    outgoing_routes: dict[str, Route] = field(default_factory=dict)    # by the agent's call id
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    touched: float = 0.0
    queued: int = 0                   # bytes of frames in outq
    e2e_key: bytes = b""              # the agent's end-to-end public key (its Hello)

    def send(self, frame: pb.RelayFrame) -> None:
        """Queue a frame for the agent. An agent that stops reading its stream is cut off
        once MAX_QUEUED_BYTES wait for it, instead of growing the relay's memory."""
        if self.ended.is_set():
            return
        size = frame.ByteSize()
        if self.queued + size > MAX_QUEUED_BYTES:
            log.warning("agent %s does not read its stream (%d bytes queued): closing its link",
                        self.machine.name, self.queued)
            self.close("not_reading", "the agent did not read its stream")
            return
        self.queued += size
        self.outq.put_nowait(frame)

    def close(self, code: str, message: str) -> None:
        """End the link: a Failure frame, then the writer stops and the RPC ends."""
        if not self.ended.is_set():
            frame = pb.RelayFrame(failure=pb.Failure(code=code, message=message))
            self.queued += frame.ByteSize()
            self.outq.put_nowait(frame)
            self.outq.put_nowait(None)
            self.ended.set()


class Router:
    """Implements `relay_grpc.RelayHandlers` over a `RelayStore`."""

    def __init__(self, store: "RelayStoreApi", *, ping_s: int = 30, clock: Callable[[], float] = time.monotonic,
                 max_calls_per_key: int = MAX_CALLS_PER_KEY, verifier: Any = None,
                 new_machines_per_hour: int = NEW_MACHINES_PER_HOUR) -> None:
        self.store = store
        # Set when `relay serve` begins its graceful stop: calls in flight finish, no new call
        # starts (one through an agent's open link would otherwise still be taken).
        self.stopping = False
        self.new_machines_per_hour = new_machines_per_hour
        # Who a bearer credential is (cmdop.relay.auth.BearerVerifier: API keys, the relay's
        # own access tokens, external OIDC tokens); API keys only when none is given.
        self.verifier = verifier if verifier is not None else _KeysOnly(store)
        self._changed = asyncio.Event()
        self.ping_s = ping_s
        self.clock = clock
        self.max_calls_per_key = max_calls_per_key
        self.throttle = routing.AuthThrottle()
        self.links: dict[str, Link] = {}                      # machine row id -> link
        self.calls_by_key: dict[str, set[Route]] = {}
        self.counters: dict[str, int] = {}
        # Keys (principal ids) revoked while this relay runs: checked again at every point an
        # authenticated stream registers something (a link after its hello, a call's start, a
        # call from a link), so a revocation landing between the RPC's authentication and those
        # points is never missed.
        self.revoked: set[str] = set()
        self._starting: dict[str, int] = {}     # key id -> its calls resolving their host now
        self._enrolments: dict[str, list[float]] = {}
        # Short tasks a link frame starts (reauth, host-key answers): kept referenced until
        # done, so none is collected mid-flight.
        self._background: set[asyncio.Task[None]] = set()
        # Several nodes sharing a bus (cmdop.relay.cluster.Cluster sets itself here): links
        # held by other nodes are reached through it. None: a relay of one node.
        self.cluster: Any = None

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- the store, off the event loop -----------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any, write: bool = False) -> T:
        """`fn(*args)` (a store call) on a worker thread when the store can wait on a network
        (`blocking_io`: PostgreSQL, which may wait seconds), or when it writes: a slow or
        unreachable database, or a SQLite write waiting up to its busy timeout behind an
        admin command's transaction, must not stall every other stream of this node. SQLite
        reads (WAL mode: they never wait) are called in place: a thread hop would cost more
        than the read. Both stores serialise their own connection under a lock."""
        if not write and not self.store.blocking_io:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def _give_back_use(self, admit: Admit) -> None:
        """Return a guest's counted use for a call that was not forwarded after all; a store
        that fails now costs the guest that one use (logged), never the call's answer."""
        try:
            await self._db(admit.give_back, write=True)
        except (StoreUnavailableError, StoreStatementError) as exc:
            log.warning("a guest's use could not be given back: %s", exc)

    async def _lookup(self, fn: Callable[..., T], *args: Any, write: bool = False) -> T:
        """`_db`, where an unreachable database refuses the RPC (UNAVAILABLE, try again)."""
        try:
            return await self._db(fn, *args, write=write)
        except StoreUnavailableError as exc:
            self._count("store_unavailable")
            log.warning("%s", exc)
            raise RelayRefusal("unavailable", STORE_DOWN_LOOKUP) from None
        except StoreStatementError as exc:
            # The database's own words (and address) stay in the log: the client learns only
            # that the relay failed, not a refusal of its credential or request.
            self._count("store_failed")
            log.error("%s", exc)
            raise RelayRefusal("unavailable", "the relay's database failed this request; "
                               "its operator can see why in the relay's log") from None

    async def resolve(self, workspace: str, host: str) -> tuple[Any, tuple[str, ...]]:
        """The machine `host` means in `workspace` (routing.resolve_host), by the store's
        indexed lookup; RelayRefusal (unavailable) when the database cannot be reached."""
        return routing.resolve_host(host, await self._lookup(self.store.host_candidates,
                                                             workspace, host))

    # -- authentication -------------------------------------------------------------------

    async def _authenticate(self, stream: ServerStream[Any, Any]) -> Any:
        """The principal behind the RPC's bearer credential (API key, relay or external
        token); RelayRefusal otherwise."""
        verdict, wait = self.throttle.verdict(stream.peer, self.clock())
        if verdict == "refuse":
            self._count("auth_refused")
            raise RelayRefusal("resource_exhausted",
                               f"too many failed logins from {stream.peer}; try again in "
                               f"{int(wait) + 1} s")
        try:
            key = await self.verifier.averify(stream.credential) if stream.credential else None
        except (StoreUnavailableError, StoreStatementError) as exc:
            # Fail closed with a reason the client can act on (retry); the database's address
            # stays in the relay's log, not in the answer.
            self._count("auth_store_unavailable")
            log.warning("cannot check a credential from %s: %s", stream.peer, exc)
            raise RelayRefusal("unavailable", STORE_DOWN) from None
        if key is not None and self._revoked(key) and not share_rpc.is_guest(key):
            key = None                # (a revoked share is refused with its own reason, later)
        if key is None:
            self.throttle.failed(stream.peer, self.clock())
            self._count("auth_failed")
            if verdict == "slow":
                await asyncio.sleep(wait)
            log.warning("authentication failed from %s", stream.peer)
            raise RelayRefusal("unauthenticated", "unknown or revoked credential"
                               if stream.credential else "no credential (authorization metadata)")
        return key

    # -- agents --------------------------------------------------------------------------

    async def agent_link(self, stream: ServerStream[pb.AgentFrame, pb.RelayFrame]) -> None:
        key = await self._authenticate(stream)
        share_rpc.refuse_guest(key, "link an agent")
        try:
            first = await asyncio.wait_for(stream.read(), HELLO_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise RelayRefusal("deadline_exceeded", "no hello within 10 s") from None
        if first is None or first.WhichOneof("kind") != "hello":
            raise RelayRefusal("invalid_argument", "the first frame of a link must be hello")
        hello = first.hello
        if hello.protocol_version != routing.PROTOCOL_VERSION:
            raise RelayRefusal("failed_precondition",
                               f"protocol version {hello.protocol_version} is not supported "
                               f"(this relay speaks {routing.PROTOCOL_VERSION}); upgrade cmdop")
        hostname = hello.hostname.strip()[:253]
        machine_id = hello.machine_id.strip()[:128]
        if not hostname or not machine_id:
            raise RelayRefusal("invalid_argument", "hello needs a hostname and a machine id")
        await self._still_valid(stream, key)
        await self._may_enrol(key, machine_id)
        try:
            machine = await self._lookup(self.store.enroll_machine, key.workspace, key.id,
                                         hostname, machine_id,
                                         routing.printable(hello.agent_version)[:64],
                                         write=True)
        except CmdopError as exc:     # e.g. the machine id is another key's (MachineClaimed)
            self._count("links_refused")
            log.warning("refused a link from %s (key %s): %s", stream.peer, key.id, exc.message)
            # (the hint travels in the message: a refused link has only its status to say it)
            raise RelayRefusal("permission_denied", exc.message + (f"; {exc.hint}" if exc.hint else "")) from None
        if self._revoked(key):        # revoked while the store was being read: never linked
            raise RelayRefusal("unauthenticated", "unknown, expired or revoked credential")
        link = Link(key=key, machine=machine, touched=self.clock(),
                    e2e_key=bytes(hello.e2e_key)
                    if len(hello.e2e_key) <= host_keys.MAX_KEY_BYTES else b"")
        old = self.links.get(machine.id)
        if old is not None:
            old.close("replaced", "a new link from the same machine replaced this one")
        self.links[machine.id] = link
        if self.cluster is not None:
            self.cluster.linked(link)
        self._count("links")
        log.info("agent %s (%s) linked from %s, workspace %s", machine.name, machine.machine_id,
                 stream.peer, key.workspace)
        await stream.write(pb.RelayFrame(welcome=pb.Welcome(
            protocol_version=routing.PROTOCOL_VERSION, machine=machine.name,
            workspace=key.workspace, capabilities=list(routing.CAPABILITIES),
            ping_s=self.ping_s)))
        try:
            await self._serve_link(stream, link)
        finally:
            if self.links.get(machine.id) is link:
                del self.links[machine.id]
            if self.cluster is not None:
                self.cluster.unlinked(link)
            link.ended.set()
            for route in list(link.routes.values()):
                self._abort(route, "host_offline",
                            f"{machine.name}'s link to the relay ended during the call")
            for task in link.outgoing.values():
                task.cancel()
            try:
                await self._db(self.store.touch_machine, machine.id, write=True)
            except StoreUnavailableError as exc:    # last_seen is informative only
                log.warning("cannot record last_seen of %s: %s", machine.name, exc)
            except Exception:  # noqa: BLE001 - last_seen is informative only
                log.exception("cannot record last_seen of %s", machine.name)
            log.info("agent %s unlinked", machine.name)

    async def _serve_link(self, stream: ServerStream[pb.AgentFrame, pb.RelayFrame],
                          link: Link) -> None:
        async def writer() -> None:
            while True:
                frame = await link.outq.get()
                if frame is None:
                    return
                link.queued -= frame.ByteSize()
                await stream.write(frame)

        async def reader() -> None:
            while True:
                frame = await stream.read()
                if frame is None:
                    return
                self._from_agent(link, frame)

        async def pinger() -> None:
            nonce = 0
            while True:
                await asyncio.sleep(self.ping_s)
                nonce += 1
                link.send(pb.RelayFrame(ping=pb.Ping(nonce=nonce)))
                if self.clock() - link.touched > TOUCH_EVERY_S:
                    link.touched = self.clock()
                    try:
                        await self._db(self.store.touch_machine, link.machine.id, write=True)
                    except Exception as exc:  # noqa: BLE001 - informative only; the link lives on
                        log.warning("cannot record last_seen of %s: %s", link.machine.name, exc)

        async def expiry() -> None:
            # A link authenticated with an expiring token ends at its expiry unless the agent
            # sent a fresh token on it (Reauth) meanwhile.
            while True:
                left = _expires_in(link.key)
                if left is None:
                    await asyncio.Event().wait()
                    return
                if left <= 0:
                    link.close("expired", "the link's access token expired; refresh it")
                    return
                await asyncio.sleep(min(left, 60.0))

        async def ended() -> None:
            # A link closed by the relay (revoked, replaced, not reading) ends even when its
            # writer is stuck on an agent that reads nothing: the Failure frame gets a moment.
            await link.ended.wait()
            await asyncio.sleep(CLOSE_GRACE_S)

        tasks = [asyncio.ensure_future(t()) for t in (writer, reader, pinger, ended, expiry)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _from_agent(self, link: Link, frame: pb.AgentFrame) -> None:
        kind = frame.WhichOneof("kind")
        if kind in ("accepted", "chunk", "result", "failure"):
            body = getattr(frame, kind)
            route = link.routes.get(body.call_id)
            if route is None or route.aborted:
                return                      # a call already over (cancelled, timed out)
            if kind == "chunk":
                route.unacked += len(body.data)
                if route.unacked > MAX_UNACKED_BYTES:
                    # Only a broken or hostile agent ignores its window: its call fails and its
                    # link ends, so it cannot fill the relay's memory.
                    self._abort(route, "flow_control",
                                f"{link.machine.name} sent more output than it was credited")
                    link.close("flow_control", "output sent beyond the credit window")
                    return
            event = pb.CallEvent()
            getattr(event, kind).CopyFrom(body)
            getattr(event, kind).call_id = route.caller_id
            route.events.put_nowait(event)
        elif kind == "call":
            self._start_outgoing(link, frame.call)
        elif kind == "reauth":
            self._spawn(self._reauth(link, frame.reauth.token))
        elif kind == "key_query":
            # HostKey for the linked machine's own CLI (it seals its call end to end itself)
            self._spawn(self._key_answer(link, frame.key_query))
        elif kind == "cancel":
            task = link.outgoing.get(frame.cancel.call_id)
            if task is not None:
                task.cancel()
        elif kind == "credit":
            out = link.outgoing_routes.get(frame.credit.call_id)
            if out is not None and not out.target.ended.is_set():
                n = min(frame.credit.bytes, max(0, out.unacked))   # never more than was sent
                out.unacked -= n
                out.target.send(pb.RelayFrame(credit=pb.Credit(call_id=out.call_id, bytes=n)))
        # pong and anything unknown: the link is alive, nothing else to do

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _key_answer(self, link: Link, query: pb.HostKeyRequest) -> None:
        """Answer a linked machine's HostKey query; always an answer, so its CLI never waits
        out its timeout and blames the relay's version."""
        qid = query.query_id[:64]
        try:
            answer = await host_keys.lookup(self, link.key, query.host, qid)
        except RelayRefusal as exc:
            answer = pb.HostKeyReply(query_id=qid, failure=pb.Failure(
                code=exc.code, message=exc.message))
        except Exception:  # noqa: BLE001 - answered as a failure, logged here
            log.exception("answering a host-key query from %s failed", link.machine.name)
            answer = pb.HostKeyReply(query_id=qid, failure=pb.Failure(
                code="unavailable", message="the relay could not look up the host now; "
                "try again shortly"))
        link.send(pb.RelayFrame(key_answer=answer))

    # -- callers -------------------------------------------------------------------------

    async def list_hosts(self, stream: ServerStream[pb.ListHostsRequest, pb.ListHostsReply],
                         request: pb.ListHostsRequest) -> pb.ListHostsReply:
        key = await self._authenticate(stream)
        if share_rpc.is_guest(key):
            return await share_rpc.list_hosts(self, key)
        machines = await self._lookup(self.store.list_machines, key.workspace)
        machines.sort(key=lambda m: (not self.online(m.id), m.name))
        reply = pb.ListHostsReply(total=len(machines))
        for m in machines[:MAX_HOSTS_LISTED]:
            reply.hosts.append(pb.HostInfo(name=m.name, hostname=m.hostname[:253],
                                           online=self.online(m.id),
                                           agent_version=m.agent_version[:64],
                                           last_seen=m.last_seen))
        return reply

    async def create_share(self, stream: ServerStream[Any, Any],
                           request: pb.CreateShareRequest) -> pb.ShareInfo:
        return await share_rpc.create(self, stream, request)

    async def list_shares(self, stream: ServerStream[Any, Any],
                          request: pb.ListSharesRequest) -> pb.ListSharesReply:
        return await share_rpc.list_(self, stream, request)

    async def revoke_share(self, stream: ServerStream[Any, Any],
                           request: pb.RevokeShareRequest) -> pb.ShareInfo:
        return await share_rpc.revoke(self, stream, request)

    async def host_key(self, stream: ServerStream[pb.HostKeyRequest, pb.HostKeyReply],
                       request: pb.HostKeyRequest) -> pb.HostKeyReply:
        """The end-to-end key of the host a call to `request.host` would reach."""
        key = await self._authenticate(stream)
        return await host_keys.lookup(self, key, request.host)

    async def call(self, stream: ServerStream[pb.CallerFrame, pb.CallEvent]) -> None:
        if self.stopping:
            raise RelayRefusal("unavailable", "the relay is stopping; try again shortly")
        key = await self._authenticate(stream)
        try:
            first = await asyncio.wait_for(stream.read(), HELLO_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise RelayRefusal("deadline_exceeded", "no call within 10 s") from None
        if first is None or first.WhichOneof("kind") != "start":
            raise RelayRefusal("invalid_argument", "the first frame of a call must be start")
        admit: Admit | None = None
        if share_rpc.is_guest(key):
            # A guest: checked against its share as stored now (revoked, expired, machine,
            # uses) once the host is resolved, and stamped "guest" with the share's tools.
            share = await self._lookup(self.store.get_share, key.share_id)
            if share is None:
                raise RelayRefusal("unauthenticated", "unknown share")
            principal = share_rpc.guest_principal(share)
            admit = share_rpc.GuestAdmission(self.store, share.id)
        else:
            await self._still_valid(stream, key)
            principal = pb.Principal(kind="remote", workspace=key.workspace, name=key.name,
                                     credential=_credential_kind(key))

        async def follow_caller(route_task: asyncio.Task[None]) -> None:
            # A Cancel frame from the caller cancels the call (the route tells the agent).
            while True:
                frame = await stream.read()
                if frame is None:
                    return
                if frame.WhichOneof("kind") == "cancel":
                    route_task.cancel()
                    return

        route_task = asyncio.ensure_future(
            self._route(first.start, key, principal, None, stream.write, admit))
        follower = asyncio.ensure_future(follow_caller(route_task))
        expiry = _expires_in(key) if admit is not None else None
        # A share's calls end at its expiry (a login's calls end with its link; API keys never).
        timer = None if expiry is None else asyncio.get_running_loop().call_later(
            max(0.0, expiry), self._cut, key.id, "share_expired", "the share expired")
        try:
            await route_task
        except asyncio.CancelledError:
            if not route_task.cancelled():
                raise
            # cancelled by the caller's Cancel frame: tell it so, if it still listens
            await stream.write(_failure(first.start.call_id, "cancelled", "cancelled by the caller"))
        finally:
            if timer is not None:
                timer.cancel()
            follower.cancel()
            route_task.cancel()

    def _start_outgoing(self, link: Link, start: pb.CallStart) -> None:
        """A call from the linked machine's own CLI: the caller's machine is verified."""
        if self.stopping:
            link.send(pb.RelayFrame(event=_failure(start.call_id, "relay_stopping",
                                                   "the relay is stopping")))
            return
        if self._revoked(link.key):
            link.close("revoked", "this machine's credential was revoked")
            return
        if start.call_id in link.outgoing or not _valid_id(start.call_id):
            link.send(pb.RelayFrame(event=_failure(start.call_id, "bad_call",
                                                   "call id missing, malformed or in use")))
            return
        principal = pb.Principal(kind="remote", workspace=link.key.workspace,
                                 name=link.key.name, credential=_credential_kind(link.key),
                                 hostname=link.machine.name,
                                 machine_id=link.machine.id)

        async def sink(event: pb.CallEvent) -> None:
            link.send(pb.RelayFrame(event=event))

        async def run() -> None:
            try:
                await self._route(start, link.key, principal, link, sink)
            except asyncio.CancelledError:
                link.send(pb.RelayFrame(event=_failure(start.call_id, "cancelled",
                                                       "cancelled by the caller")))
            except RelayRefusal as exc:
                link.send(pb.RelayFrame(event=_failure(start.call_id, exc.code, exc.message)))
            finally:
                link.outgoing.pop(start.call_id, None)

        link.outgoing[start.call_id] = asyncio.ensure_future(run())

    async def _route(self, start: pb.CallStart, key: Any, principal: pb.Principal,
                     via: Link | None, sink: Sink, admit: Admit | None = None) -> None:
        """Send one call to its target machine and pass its events to `sink` until it ends.
        RelayRefusal for a malformed call or one over the caller's limit; a host that is
        unknown, ambiguous or offline is a Failure event (the caller prints it, exit 5)."""
        cid = start.call_id
        # A sealed call names no tool: the relay routes by call id, host and caller only.
        if not _valid_id(cid) or not (start.tool or start.sealed) or len(start.tool) > 64:
            raise RelayRefusal("invalid_argument", "a call needs a call id (uuid) and a tool")
        live = self.calls_by_key.setdefault(key.id, set())
        starting = self._starting.get(key.id, 0)
        if len(live) + starting >= self.max_calls_per_key:
            self._count("calls_refused_busy")
            raise RelayRefusal("resource_exhausted",
                               f"this key already has {len(live) + starting} calls running (at "
                               f"most {self.max_calls_per_key})")
        # The store is read off the loop: the call holds its place in the key's count meanwhile.
        self._starting[key.id] = starting + 1
        try:
            machine, matches = await self.resolve(key.workspace, start.host)
            refusal = None
            if admit is not None:
                # Before any failure that names the workspace's machines (a guest sees only its
                # own); counts a use (atomically, in the store) only for a call it admits.
                refusal = await self._lookup(admit, machine.id if machine is not None else None,
                                             machine is not None and self.online(machine.id),
                                             write=True)   # counts a use
        finally:
            left = self._starting.get(key.id, 1) - 1
            if left > 0:
                self._starting[key.id] = left
            else:
                self._starting.pop(key.id, None)
        if refusal is not None:
            self._count("guest_calls_refused")
            log.info("guest call refused (share %s): %s", principal.share_id, refusal.code)
            await sink(_failure(cid, refusal.code, refusal.message, refusal.hint))
            return

        async def not_forwarded(event: pb.CallEvent) -> None:
            # A guest's use is counted at admission; a call that ends here was never forwarded,
            # so its use is given back (the docs promise uses count forwarded calls only).
            if admit is not None:
                await self._give_back_use(admit)
            await sink(event)

        if self._revoked(key) or (via is not None and via.ended.is_set()):
            # Revoked (or its link ended) while the store was read: the cut has passed it by.
            code = "share_revoked" if share_rpc.is_guest(key) else "revoked"
            await not_forwarded(_failure(cid, code, "the caller's credential was revoked"
                                if self._revoked(key) else "the caller's link ended"))
            return
        if machine is None:
            await not_forwarded(_failure(cid, *routing.unresolved(start.host, key.workspace, matches)))
            return
        target = self.link_of(machine)
        if target is None or target.ended.is_set():
            # (several nodes: "its node cannot be reached now" is not "its agent is not running")
            lost = self.cluster.unreachable(cid, machine) if self.cluster is not None else None
            await not_forwarded(lost or _failure(cid, *routing.offline(machine.name)))
            return
        forwarded = pb.Principal()
        forwarded.CopyFrom(principal)
        forwarded.kind = "guest" if principal.kind == "guest" else routing.caller_kind(
            caller_principal=key.id, via_machine_principal=via.key.id if via else None,
            target_principal=target.key.id)
        deadline_ms = min(start.deadline_ms or DEFAULT_DEADLINE_MS, MAX_DEADLINE_MS)
        route = Route(call_id=f"{key.id}:{cid}", caller_id=cid, caller_key=key.id, target=target,
                      credit_on_write=via is None)
        if route.call_id in target.routes:
            await not_forwarded(_failure(cid, "bad_call", "this call id is already in flight"))
            return
        frame = pb.RelayFrame(call=pb.CallStart(
            call_id=route.call_id, tool=start.tool, input_json=start.input_json,
            deadline_ms=deadline_ms, stream=start.stream, caller=forwarded, cwd=start.cwd,
            session=start.session, sealed=start.sealed))
        if frame.ByteSize() > MAX_FORWARD_BYTES:
            await not_forwarded(_failure(cid, "too_large", "the call's input is too large to forward",
                                f"at most {MAX_FORWARD_BYTES // 1024} KB"))
            return
        if not has_room(target, frame):
            await not_forwarded(busy_failure(cid, machine.name, target))
            return
        target.routes[route.call_id] = route
        if via is not None:
            via.outgoing_routes[cid] = route
        live.add(route)
        self._count("calls")
        ended = False
        try:
            target.send(frame)

            async def forward_events() -> bool:
                """Pass the call's events to `sink` until its end; True if it really ended."""
                while True:
                    event = await route.events.get()
                    await sink(event)
                    kind = event.WhichOneof("kind")
                    if kind == "chunk" and route.credit_on_write:
                        route.unacked -= len(event.chunk.data)
                        target.send(pb.RelayFrame(credit=pb.Credit(
                            call_id=route.call_id, bytes=len(event.chunk.data))))
                    elif kind in ("result", "failure"):
                        return not route.aborted or route.aborted == "host_offline"

            # wait_for, not asyncio.timeout(): the relay runs on Python 3.10 too.
            ended = await asyncio.wait_for(forward_events(), deadline_ms / 1000 + 5)
            return
        except asyncio.TimeoutError:  # the builtin TimeoutError from 3.11 on; its own on 3.10
            await sink(_failure(cid, "deadline_exceeded",
                                f"no result within {deadline_ms // 1000} s; cancelled"))
        finally:
            target.routes.pop(route.call_id, None)
            if via is not None:
                via.outgoing_routes.pop(cid, None)
            live.discard(route)
            if not ended and not target.ended.is_set():
                target.send(pb.RelayFrame(cancel=pb.Cancel(call_id=route.call_id,
                                                           reason=route.aborted or "caller left")))

    async def _reauth(self, link: Link, token: str) -> None:
        """A fresh token on a live link: the same principal, later expiry; anything else ends
        the link (a link cannot change who it is)."""
        try:
            principal = await self.verifier.averify(token)
        except StoreUnavailableError as exc:
            # Fail closed for the new token, not for the link: it keeps the identity verified
            # when it was made, until that token's own expiry (the link's expiry task). The
            # agent's next refresh once the database is back extends it.
            self._count("reauth_store_unavailable")
            log.warning("cannot check %s's new token (%s); the link keeps its current one until "
                        "it expires", link.machine.name, exc)
            return
        if principal is None or principal.id != link.key.id or self._revoked(principal):
            link.close("unauthenticated", "the new token was refused")
            return
        link.key = principal
        self._count("reauths")

    def link_of(self, machine: Any) -> Link | None:
        """The live link that reaches `machine`: its own on this node, else (nodes sharing a
        bus) the stand-in for the node holding it; None when it is offline everywhere."""
        link = self.links.get(machine.id)
        if link is not None and not link.ended.is_set():
            return link
        return self.cluster.remote_link(machine) if self.cluster is not None else None

    def online(self, machine_id: str) -> bool:
        """Whether `machine_id`'s agent is linked to this relay (to any of its nodes)."""
        link = self.links.get(machine_id)
        return (link is not None and not link.ended.is_set()) or (
            self.cluster is not None and bool(self.cluster.online(machine_id)))

    def _revoked(self, principal: Any) -> bool:
        return principal.id in self.revoked or (
            getattr(principal, "token_id", None) or "") in self.revoked

    def credentials_changed(self) -> None:
        """Called by the OAuth server after a revocation it made itself: re-read now."""
        self._changed.set()

    async def _still_valid(self, stream: ServerStream[Any, Any], key: Any) -> None:
        """The stream's credential, checked again now (it may have been revoked since the RPC
        was authenticated: a hello or a call start can arrive seconds later)."""
        try:
            again = await self.verifier.averify(stream.credential)
        except StoreUnavailableError as exc:
            log.warning("cannot check a credential from %s again: %s", stream.peer, exc)
            raise RelayRefusal("unavailable", STORE_DOWN) from None
        if again is None or again.id != key.id or self._revoked(again):
            raise RelayRefusal("unauthenticated", "unknown, expired or revoked credential")

    async def _may_enrol(self, key: Any, machine_id: str) -> None:
        """A key may enrol at most `new_machines_per_hour` new machines an hour."""
        if await self._lookup(self.store.find_machine, key.workspace, machine_id) is not None:
            return
        now = self.clock()
        recent = [t for t in self._enrolments.get(key.id, []) if t > now - 3600]
        if len(recent) >= self.new_machines_per_hour:
            self._count("enrolments_refused")
            raise RelayRefusal("resource_exhausted",
                               f"this key enrolled {len(recent)} new machines in the last hour")
        self._enrolments[key.id] = recent + [now]

    def _abort(self, route: Route, code: str, message: str) -> None:
        """End a route from the relay's side (its caller gets `code`)."""
        if not route.aborted:
            route.aborted = code
            route.events.put_nowait(_failure(route.caller_id, code, message))

    # -- revocation ------------------------------------------------------------------------

    async def watch_revocations(self, every_s: float = 0.2) -> None:
        """Forever: when the store changed (an admin command in another process), end the
        links and calls of every revoked key."""
        version = -1
        unreachable = False
        while True:
            try:
                now = await self._db(self.store.data_version)
                if now != version or self._changed.is_set():
                    self._changed.clear()
                    self.revoke(await self._db(self._revocations))
                    version = now
                if unreachable:
                    log.warning("the store is reachable again")
                unreachable = False
            except StoreUnavailableError as exc:
                # The database is down: one line per outage, not a traceback every 0.2 s.
                self._count("revocation_read_errors")
                if not unreachable:
                    log.warning("cannot read revocations: %s; retrying", exc)
                unreachable = True
            except Exception:  # noqa: BLE001 - a busy database must not end the watching
                self._count("revocation_read_errors")
                log.exception("cannot read revocations from the store; retrying")
            try:
                await asyncio.wait_for(self._changed.wait(), every_s)
            except asyncio.TimeoutError:
                pass

    def _revocations(self) -> frozenset[str]:
        """Every principal id and token id that must not act any more: revoked keys, disabled
        accounts (as `acct:ID`), revoked access tokens (their jti)."""
        out = set(self.store.revoked_key_ids())
        for name, prefix in (("disabled_account_ids", "acct:"), ("denied_token_ids", ""),
                             ("revoked_share_ids", SHARE_PREFIX)):
            read = getattr(self.store, name, None)
            if read is not None:
                out.update(prefix + i for i in read())
        return frozenset(out)

    def revoke(self, revoked: frozenset[str]) -> None:
        """End the links and calls of keys in `revoked`, now."""
        self.revoked |= revoked
        for link in list(self.links.values()):
            if self._revoked(link.key):
                log.info("key %s revoked: ending %s's link", link.key.id, link.machine.name)
                link.close("revoked", "this machine's key was revoked")
        for key_id in revoked:
            if key_id.startswith(SHARE_PREFIX):
                self._cut(key_id, "share_revoked", "the share was revoked")
            else:
                self._cut(key_id, "revoked", "the caller's key was revoked")

    def _cut(self, key_id: str, code: str, message: str) -> None:
        """End every live call of the principal `key_id` now (its callers get `code`)."""
        for route in list(self.calls_by_key.get(key_id, ())):
            self._abort(route, code, message)


def has_room(link: Link, frame: pb.RelayFrame) -> bool:
    """Whether a call's start may join what waits to be written to `link`'s agent. Past half
    of MAX_QUEUED_BYTES a call fails alone ("host_busy"): a burst of large calls — one caller's
    ten 3.5 MB inputs — must not reach the cap that ends the link as "not reading", failing
    every user's calls to the machine."""
    return bool(link.queued + frame.ByteSize() <= MAX_QUEUED_BYTES // 2)


def busy_failure(call_id: str, name: str, link: Link) -> pb.CallEvent:
    """The "host_busy" Failure for a call that `has_room` refused (its caller may retry)."""
    return _failure(call_id, "host_busy", f"{name}'s link has {link.queued // 2**20} MiB of calls "
                                          "waiting to be sent to it", "try again shortly")


def _valid_id(call_id: str) -> bool:
    return 0 < len(call_id) <= 64 and all(c in _ID_OK for c in call_id)



class _KeysOnly:
    """The verifier of a router given none: workspace API keys from the store."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def verify(self, token: str) -> Any:
        return self.store.verify_key(token)

    async def averify(self, token: str) -> Any:
        if not getattr(self.store, "blocking_io", True):
            return self.verify(token)
        return await asyncio.to_thread(self.verify, token)


def _credential_kind(principal: Any) -> str:
    """What kind of credential `principal` authenticated with: api_key, oauth (this relay's
    login) or oidc (an external issuer's token), as the agent audits it."""
    return str(getattr(principal, "credential", "") or "api_key")


def _expires_in(principal: Any) -> float | None:
    """Seconds until `principal`'s token expires (None: it does not, an API key)."""
    expires_at = getattr(principal, "expires_at", None)
    return None if expires_at is None else float(expires_at) - time.time()
