"""Several relay nodes as one relay (`relay serve --store postgresql://… --bus redis://…`).

Every node serves any caller and any agent; the nodes share the store (PostgreSQL) and a bus
(cmdop.relay.bus: Redis). What a node promises, on top of cmdop.relay.router:
- Presence: each agent link a node holds is published as a presence entry (node, principal,
  end-to-end key) with a TTL of PRESENCE_TTL_S, refreshed every PRESENCE_REFRESH_S and
  broadcast when it changes; every node keeps a mirror of them, so routing a call reads no
  Redis. A machine is online while its entry names a live node — a node is live while its
  heartbeat key exists (NODE_TTL_S, beaten every BEAT_S) — so a dead node's agents show
  offline within NODE_TTL_S, and their entries expire within PRESENCE_TTL_S at the latest.
- Routing: a call for a machine linked to another node goes to that node's channel as the
  same CallStart frame in a `BusEnvelope`; the holder runs it on its link like a local call
  (same checks, the caller's key counted and cut there too) and sends the events back on the
  caller's node's channel. The caller's node sees the remote link as a `RemoteLink` — a Link
  whose frames go over the bus — so credits (flow control), cancellation and deadlines work as
  for a local link, in both directions.
- Failure: a node that does not take a call within ACCEPT_TIMEOUT_S, or whose heartbeat
  stops, fails its calls on the caller's side with `node_lost` ("the relay node holding HOST
  stopped…; try again"); the bus lost (or restarted, losing messages) fails every call crossing
  it the same way (a holder whose own connection dropped tells the callers' nodes so once it
  is back, as they may not have noticed). A call is never sent twice: each goes out once,
  and an agent refuses an id it has seen. Nor is one run after its caller was told it was not
  taken: a holder refuses a start older than START_MAX_AGE_SHARE of ACCEPT_TIMEOUT_S (the
  caller's node stamps it with its wall clock: the nodes' clocks must agree within ~1 s), and
  a caller's node behind on its own channel (its echo late) waits for it rather than failing
  a call whose "taken" notice may be queued unread. A holder whose caller's node dies cancels
  that call on the agent.
- Joining: the node id is claimed atomically (SET NX; a dead node's registration is waited
  out), links made before the node joined are announced, and presence entries naming this
  node for links it does not hold (a previous run's) are deleted and withdrawn.
- Revocation: nodes share the store, so each notices a revocation through its own poll
  (Router.watch_revocations, ~0.2 s) and cuts the calls it holds either end of; no broadcast is
  needed for it.
- One link per machine across nodes: a node that hears another node announce a machine it
  holds a link for closes its own (the agent reconnected elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable

from cmdop.core.errors import BusUnavailableError, UsageError
from cmdop.relay.bus import ALL, Bus
from cmdop.relay.proto import relay_pb2 as pb
from cmdop.relay.router import Link, Route, busy_failure, has_room

log = logging.getLogger("cmdop.relay")

PRESENCE_TTL_S = 90.0
PRESENCE_REFRESH_S = 30.0
NODE_TTL_S = 5.0
BEAT_S = 1.0
ACCEPT_TIMEOUT_S = 5.0
# A holder refuses a call start older than this share of ACCEPT_TIMEOUT_S (by the wall clock
# the caller's node stamped it with): by then the caller may have been told "not taken; try
# again", and a late start would run the command anyway. The rest is the nodes' clock skew.
START_MAX_AGE_SHARE = 0.8
TAKEN_AFTER_S = 1.0                   # a served call with no event yet says "taken" after this
RESYNC_S = 30.0
REOPEN_MAX_S = 5.0
BATCH = 256                           # messages published in one round trip
NODE_LOST = "node_lost"


def default_node_id(listen_port: int) -> str:
    """The node's id when --node-id is not given: this machine's hostname and gRPC port."""
    return f"{socket.gethostname()}:{listen_port}"


def valid_node_id(node: str) -> bool:
    """Whether `node` is usable as a node id (it names Redis channels and keys)."""
    return 0 < len(node) <= 128 and all(c.isalnum() or c in "-_.:[]" for c in node)


@dataclass
class _RemoteKey:
    """The principal an agent linked with on another node (its id is all routing needs)."""

    id: str
    workspace: str = ""
    name: str = ""


@dataclass(eq=False)
class RemoteLink(Link):
    """A machine's link held by another node, seen from this one: frames sent to it go over
    the bus to that node (see the module docstring)."""

    cluster: Any = None
    node: str = ""
    pending: dict[str, asyncio.TimerHandle] = field(default_factory=dict)

    def send(self, frame: pb.RelayFrame) -> None:
        """Send a call's start, credit or cancel to the holding node; other frames (pings) are
        the holder's business."""
        if self.ended.is_set():
            return
        kind = frame.WhichOneof("kind")
        env = pb.BusEnvelope(machine_id=self.machine.id)
        if kind == "call":
            cid = frame.call.call_id
            route = self.routes.get(cid)
            env.caller_key = route.caller_key if route is not None else ""
            env.start.CopyFrom(frame.call)
            env.sent_ms = int(time.time() * 1000)
            self.pending[cid] = asyncio.get_running_loop().call_later(
                ACCEPT_TIMEOUT_S, self._not_taken, cid)
        elif kind == "credit":
            env.credit.CopyFrom(frame.credit)
        elif kind == "cancel":
            env.cancel.CopyFrom(frame.cancel)
            self.taken(frame.cancel.call_id)
        else:
            return
        self.cluster.post(self.node, env)

    def taken(self, call_id: str) -> None:
        """The holder has the call (or it is over): no accept timeout for it any more."""
        timer = self.pending.pop(call_id, None)
        if timer is not None:
            timer.cancel()

    def _not_taken(self, call_id: str) -> None:
        self.pending.pop(call_id, None)
        route = self.routes.get(call_id)
        if route is not None and self.cluster.behind():
            # This node, not the holder, may be late: the "taken" notice can be waiting unread
            # on its own channel. Saying "not taken; try again" for a command that started
            # invites running it twice, so wait until this node has caught up.
            self.pending[call_id] = asyncio.get_running_loop().call_later(
                ACCEPT_TIMEOUT_S, self._not_taken, call_id)
            return
        if route is not None:
            log.warning("node %s did not take call %s for %s within %.0f s", self.node, call_id,
                        self.machine.name, ACCEPT_TIMEOUT_S)
            self.cluster.router._abort(route, NODE_LOST,
                                       f"the relay node holding {self.machine.name} did not "
                                       "take the call; try again")

    def close(self, code: str, message: str) -> None:
        """Fail every call through this stand-in (the holder is gone, or broke the rules)."""
        self.ended.set()
        for timer in self.pending.values():
            timer.cancel()
        self.pending.clear()
        for route in list(self.routes.values()):
            self.cluster.router._abort(route, code, message)


@dataclass(eq=False)
class _Served:
    """A call this node runs on one of its links for another node's caller."""

    route: Route
    link: Link
    caller_node: str
    task: "asyncio.Task[None] | None" = None
    taken: "asyncio.TimerHandle | None" = None     # the "taken" notice, unless an event beats it


class Cluster:
    """One node's part of a relay of several nodes (module docstring)."""

    def __init__(self, router: Any, bus: Bus, node: str, *, address: str = "",
                 clock: Any = time.monotonic) -> None:
        self.router = router
        router.cluster = self
        self.bus = bus
        self.node = node
        self.address = address
        self.clock = clock
        self.up = False
        self.where: dict[str, pb.BusPresence] = {}          # machine id -> presence (mirror)
        self.alive: dict[str, dict[str, Any]] = {}         # live node -> its status record
        self.remote: dict[tuple[str, str], RemoteLink] = {}
        self.served: dict[tuple[str, str], _Served] = {}
        self.mine: dict[str, tuple[Link, bytes]] = {}      # machine id -> (link, presence)
        self.outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.lag_ms = 0.0
        self.started = time.time()
        self._rate = (self.clock(), 0)
        self.calls_per_s = 0.0
        self._bg: set[asyncio.Future[Any]] = set()
        self._last_refresh = 0.0
        self._last_resync = 0.0
        self._cut_notices: list[tuple[str, str, str, str]] = []
        self._withdrawals: list[bytes] = []     # stale own entries the other nodes must drop
        self.heard = clock()                     # when this node last read its own echo

    # -- what the router asks -------------------------------------------------------------

    def _holder(self, machine_id: str) -> str | None:
        p = self.where.get(machine_id)
        if not self.up or p is None or p.node == self.node or p.node not in self.alive:
            return None
        return p.node

    def behind(self) -> bool:
        """Whether this node is behind on its own channel: its own echo, posted every BEAT_S,
        has not come back for a while (replies it waits for may be queued unread)."""
        return self.up and self.clock() - self.heard > max(2 * BEAT_S, ACCEPT_TIMEOUT_S / 2)

    def online(self, machine_id: str) -> bool:
        """Whether another live node holds `machine_id`'s link."""
        return self._holder(machine_id) is not None

    def unreachable(self, call_id: str, machine: Any) -> pb.CallEvent | None:
        """The failure for a call to `machine` when this node cannot reach it because the bus
        is away although another node held its link when last heard of (rather than "its
        agent is not running"); None otherwise."""
        p = self.where.get(machine.id)
        if self.up or p is None or p.node == self.node:
            return None
        return pb.CallEvent(failure=pb.Failure(
            call_id=call_id, code=NODE_LOST,
            message=f"{machine.name} is linked to relay node {p.node}, which this node cannot "
                    "reach: the relay nodes' bus is unreachable",
            hint="try again in a few seconds"))

    def remote_link(self, machine: Any) -> RemoteLink | None:
        """The stand-in for `machine`'s link on another live node; None when no node has it."""
        node = self._holder(machine.id)
        if node is None:
            return None
        rl = self.remote.get((node, machine.id))
        if rl is None or rl.ended.is_set():
            p = self.where[machine.id]
            rl = RemoteLink(key=_RemoteKey(id=p.key_id, workspace=getattr(machine, "workspace", "")),
                            machine=machine, e2e_key=bytes(p.e2e_key), cluster=self, node=node)
            self.remote[(node, machine.id)] = rl
        return rl

    def linked(self, link: Link) -> None:
        """A link on this node: announce it (presence entry and broadcast)."""
        p = pb.BusPresence(machine_id=link.machine.id, node=self.node, key_id=link.key.id,
                           e2e_key=link.e2e_key, link_id=uuid.uuid4().hex)
        data = p.SerializeToString()
        self.mine[link.machine.id] = (link, data)
        self.where[link.machine.id] = p
        self._spawn(self.bus.put_presence([(link.machine.id, data)], PRESENCE_TTL_S))
        self.post("", None, data)

    def unlinked(self, link: Link) -> None:
        """A link on this node ended: withdraw its presence (only its own entry)."""
        mine = self.mine.get(link.machine.id)
        if mine is None or mine[0] is not link:
            return
        del self.mine[link.machine.id]
        p = pb.BusPresence.FromString(mine[1])
        if self.where.get(p.machine_id) == p:
            del self.where[p.machine_id]
        self._spawn(self.bus.drop_presence(link.machine.id, mine[1]))
        self.post("", None, pb.BusPresence(machine_id=p.machine_id,
                                           link_id=p.link_id).SerializeToString())

    def _adopt(self) -> None:
        """Links the router holds that this node has not announced: those made before the
        Cluster was attached (`relay serve` serves gRPC while it joins the bus) would be
        invisible to every other node until they relinked."""
        for mid, link in list(self.router.links.items()):
            if not link.ended.is_set() and self.mine.get(mid, (None, b""))[0] is not link:
                p = pb.BusPresence(machine_id=mid, node=self.node, key_id=link.key.id,
                                   e2e_key=link.e2e_key, link_id=uuid.uuid4().hex)
                self.mine[mid] = (link, p.SerializeToString())

    def _yield_moved(self) -> None:
        """After the bus was away: a machine this node still holds a link for, which another
        live node now announces, linked there meanwhile — this node's link is the stale one
        (announcing it again would cut the live one)."""
        for mid, (link, _) in list(self.mine.items()):
            p = self.where.get(mid)
            if p is not None and p.node != self.node and p.node in self.alive:
                del self.mine[mid]
                link.close("replaced", "the machine linked to another relay node")

    def _announce(self) -> None:
        """Broadcast every link this node holds (after the bus came back: the other nodes'
        mirrors may have missed them)."""
        for _, data in self.mine.values():
            self.post("", None, data)

    def _withdraw_stale(self) -> None:
        """Broadcast the withdrawal of the stale entries _read_presence found (the other
        nodes' mirrors still hold them)."""
        stale, self._withdrawals = self._withdrawals, []
        for data in stale:
            self.post("", None, data)

    def post(self, node: str, env: pb.BusEnvelope | None, raw: bytes = b"") -> None:
        """Queue a message for `node`'s channel ("" = every node), sent in order."""
        if env is not None:
            env.from_node = self.node
            raw = env.SerializeToString()
        if self.up:
            self.outbox.put_nowait((node, raw))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except BusUnavailableError as exc:
                log.debug("bus: %s", exc)      # the heartbeat notices; the refresh repairs

        task = asyncio.ensure_future(guarded())
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # -- running ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect for the first time and claim this node's id: BusUnavailableError when the
        bus cannot be reached, UsageError when a live node has the id. The claim is atomic
        (two nodes started at once with one id: one is refused), and waits out the
        registration of a node that died with this id (a crashed node restarted at once)."""
        await self.bus.open(self.node)
        record = json.dumps({"node": self.node, "address": self.address,
                             "pid": os.getpid()}).encode()
        give_up = self.clock() + NODE_TTL_S + BEAT_S
        while not await self.bus.claim(self.node, record, NODE_TTL_S):
            if self.clock() >= give_up:     # still beaten after its TTL: a live node has it
                raise UsageError(f"relay node id {self.node!r} is in use by a live node",
                                 hint="give each node its own --node-id")
            await asyncio.sleep(BEAT_S)

    async def run(self) -> None:
        """Forever: keep the bus open and serve it; reopen with backoff when it is lost."""
        delay = 0.2
        failing = False
        while True:
            try:
                await self.bus.open(self.node)
                await self._beat()
                self._adopt()
                self.where = await self._read_presence()
                self._last_resync = self._last_refresh = self.clock()
                self._yield_moved()
                await self.bus.put_presence([(m, d) for m, (_, d) in self.mine.items()],
                                            PRESENCE_TTL_S)
                for mid, (_, data) in self.mine.items():
                    self.where[mid] = pb.BusPresence.FromString(data)
                self.up = True
                self.heard = self.clock()
                self._announce()
                self._tell_cut()
                self._withdraw_stale()
                if failing:
                    log.warning("the bus is reachable again")
                failing = False
                delay = 0.2
                await self._serve()
            except BusUnavailableError as exc:
                if not failing:
                    log.warning("%s; calls between relay nodes fail until it is back", exc)
                failing = True
                self._lost_bus("the relay nodes' bus was lost during the call; try again")
                await asyncio.sleep(delay)
                delay = min(delay * 2, REOPEN_MAX_S)

    async def stop(self) -> None:
        """A clean stop: leave the registry and withdraw this node's presence at once."""
        self.up = False
        try:
            await asyncio.wait_for(self._leave(), 2.0)
        except (BusUnavailableError, asyncio.TimeoutError):
            pass
        await self.bus.close()

    async def _leave(self) -> None:
        await self.bus.leave(self.node)
        for mid, (_, data) in list(self.mine.items()):
            await self.bus.drop_presence(mid, data)

    async def _serve(self) -> None:
        tasks = [asyncio.ensure_future(t()) for t in (self._receiver, self._sender, self._heart)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _lost_bus(self, message: str) -> None:
        """The bus is gone (or lost messages): every call crossing it fails now."""
        self.up = False
        while not self.outbox.empty():
            self.outbox.get_nowait()
        for rl in list(self.remote.values()):
            rl.close(NODE_LOST, message)
        self.remote.clear()
        for (back, call_id), served in list(self.served.items()):
            if served.task is not None:
                served.task.cancel()
            # The caller's node may not have lost the bus (only this node's connection did):
            # it is told once the bus is back, or its call would wait for its deadline.
            self._cut_notices.append((back, served.route.target.machine.id, call_id, message))

    def _tell_cut(self) -> None:
        """Send the failures of served calls cut while the bus was away (see _lost_bus)."""
        notices, self._cut_notices = self._cut_notices, []
        for back, machine_id, call_id, message in notices:
            self.post(back, pb.BusEnvelope(machine_id=machine_id, event=pb.CallEvent(
                failure=pb.Failure(call_id=call_id, code=NODE_LOST, message=message))))

    async def _receiver(self) -> None:
        while True:
            channel, data = await self.bus.receive()
            try:
                if channel == ALL:
                    self._on_presence(pb.BusPresence.FromString(data))
                else:
                    self._on_envelope(pb.BusEnvelope.FromString(data))
            except Exception:  # noqa: BLE001 - one bad message must not stop the node's bus
                self.router._count("bus_bad_messages")
                log.exception("dropped a bus message that could not be handled")

    async def _sender(self) -> None:
        while True:
            batch = [await self.outbox.get()]
            while len(batch) < BATCH and not self.outbox.empty():
                batch.append(self.outbox.get_nowait())
            await self.bus.publish(batch)

    async def _heart(self) -> None:
        while True:
            await asyncio.sleep(BEAT_S)
            await self._beat()
            now = self.clock()
            if now - self._last_refresh >= PRESENCE_REFRESH_S:
                self._last_refresh = now
                await self.bus.put_presence([(m, d) for m, (_, d) in self.mine.items()],
                                            PRESENCE_TTL_S)
            if now - self._last_resync >= RESYNC_S:
                self._last_resync = now
                fresh = await self._read_presence()
                for mid, (_, data) in self.mine.items():
                    fresh[mid] = pb.BusPresence.FromString(data)
                self.where = fresh
                self._withdraw_stale()
            self.post(self.node, pb.BusEnvelope(sent_ms=int(self.clock() * 1000),
                                                echo=pb.Ping(nonce=1)))

    async def _beat(self) -> None:
        now = self.clock()
        then, calls = self._rate
        total = self.router.counters.get("calls", 0)
        if now > then:
            self.calls_per_s = (total - calls) / (now - then)
        self._rate = (now, total)
        record = {"node": self.node, "address": self.address, "agents": len(self.router.links),
                  "calls_running": sum(len(s) for s in self.router.calls_by_key.values()),
                  "calls_per_s": round(self.calls_per_s, 2), "bus_lag_ms": round(self.lag_ms, 3),
                  "forwarded": sum(len(rl.routes) for rl in self.remote.values()),
                  "served": len(self.served),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
                  "pid": os.getpid()}
        registered = await self.bus.beat(self.node, json.dumps(record).encode(), NODE_TTL_S)
        if not registered and self.up:
            # Redis forgot this node (restarted, or this node stalled past its TTL): messages
            # may have been lost, and the presence entries are gone. Fail what crossed it and
            # announce this node's links again.
            log.warning("the bus lost this node's registration (restarted?): re-announcing")
            self._lost_bus("the relay nodes' bus restarted during the call; try again")
            await self.bus.put_presence([(m, d) for m, (_, d) in self.mine.items()],
                                        PRESENCE_TTL_S)
            self.up = True
            self.heard = self.clock()
            self._announce()
            self._tell_cut()
        nodes = await self.bus.nodes()
        alive: dict[str, dict[str, Any]] = {}
        for name, raw in nodes.items():
            try:
                alive[name] = json.loads(raw)
            except ValueError:
                alive[name] = {"node": name}
        self.alive = alive
        for key, rl in list(self.remote.items()):
            if rl.node not in alive:
                log.warning("relay node %s stopped: failing its %d calls", rl.node, len(rl.routes))
                rl.close(NODE_LOST, f"the relay node holding {rl.machine.name} stopped during "
                                    "the call; try again")
            if rl.ended.is_set() or not rl.routes:
                del self.remote[key]
        for served in list(self.served.values()):
            if served.caller_node not in alive and served.task is not None:
                served.task.cancel()

    async def _read_presence(self) -> dict[str, pb.BusPresence]:
        """The presence entries in the bus, less this node's stale ones: an entry naming this
        node for a link it does not hold is from an earlier run of a node with this id (a
        crash and restart: the default id is hostname:port) or from a link that ended as it
        was announced. Trusted, it would show a dead agent online on every node and route its
        calls here; it is deleted (only if unchanged) instead."""
        out: dict[str, pb.BusPresence] = {}
        for mid, data in (await self.bus.presence()).items():
            try:
                p = pb.BusPresence.FromString(data)
            except Exception:  # noqa: BLE001 - a garbled entry is skipped, not trusted
                continue
            if p.node == self.node and mid not in self.mine:
                self._spawn(self.bus.drop_presence(mid, data))
                self._withdrawals.append(pb.BusPresence(machine_id=mid,
                                                        link_id=p.link_id).SerializeToString())
                continue
            out[mid] = p
        return out

    # -- messages --------------------------------------------------------------------------

    def _on_presence(self, p: pb.BusPresence) -> None:
        if p.node:
            self.where[p.machine_id] = p
            local = self.router.links.get(p.machine_id)
            if p.node != self.node and local is not None and not local.ended.is_set():
                local.close("replaced", "the machine linked to another relay node")
        else:
            current = self.where.get(p.machine_id)
            if current is not None and current.link_id == p.link_id:
                del self.where[p.machine_id]

    def _on_envelope(self, env: pb.BusEnvelope) -> None:
        kind = env.WhichOneof("kind")
        if kind == "start":
            self._serve_start(env)
        elif kind in ("credit", "cancel"):
            body = getattr(env, kind)
            served = self.served.get((env.from_node, body.call_id))
            if served is None:
                return
            if kind == "cancel":
                if served.task is not None:
                    served.task.cancel()
            elif not served.link.ended.is_set():
                n = min(body.bytes, max(0, served.route.unacked))     # never more than sent
                served.route.unacked -= n
                served.link.send(pb.RelayFrame(credit=pb.Credit(call_id=body.call_id, bytes=n)))
        elif kind in ("event", "taken"):
            rl = self.remote.get((env.from_node, env.machine_id))
            if rl is None:
                return
            if kind == "taken":
                rl.taken(env.taken.call_id)
                return
            ev_kind = env.event.WhichOneof("kind")
            if ev_kind is None:
                return
            body = getattr(env.event, ev_kind)
            rl.taken(body.call_id)
            frame = pb.AgentFrame()
            getattr(frame, ev_kind).CopyFrom(body)
            self.router._from_agent(rl, frame)
        elif kind == "echo" and env.from_node == self.node:
            self.lag_ms = max(0.0, self.clock() * 1000 - env.sent_ms)
            self.heard = self.clock()

    def _serve_start(self, env: pb.BusEnvelope) -> None:
        """Another node's caller's call for a machine linked here: run it on the link like a
        local call and send its events back."""
        start = env.start
        back = env.from_node

        def fail(code: str, message: str, hint: str = "") -> None:
            self.post(back, pb.BusEnvelope(machine_id=env.machine_id, event=pb.CallEvent(
                failure=pb.Failure(call_id=start.call_id, code=code, message=message,
                                   hint=hint))))

        age_s = time.time() - env.sent_ms / 1000
        if age_s > ACCEPT_TIMEOUT_S * START_MAX_AGE_SHARE:
            # Its caller may already have been told it was not taken (RemoteLink._not_taken).
            log.warning("refused call %s from node %s: it is %.1f s old (this node is behind "
                        "on the bus, or the nodes' clocks differ)", start.call_id, back, age_s)
            self.router._count("calls_refused_stale")
            fail(NODE_LOST, "the relay node holding the machine was too slow to take the call",
                 "try again")
            return
        link = self.router.links.get(env.machine_id)
        if link is None or link.ended.is_set():
            fail("host_offline", "the machine's link moved or ended as the call arrived",
                 "try again")
            return
        if (back, start.call_id) in self.served or start.call_id in link.routes \
                or not start.call_id.startswith(env.caller_key + ":"):
            fail("bad_call", "this call id is already in flight")
            return
        if self.router._revoked(_RemoteKey(id=env.caller_key)):
            fail("revoked", "the caller's key was revoked")
            return
        if not has_room(link, pb.RelayFrame(call=start)):
            busy = busy_failure(start.call_id, link.machine.name, link).failure
            fail(busy.code, busy.message, busy.hint)
            return
        if start.caller.kind == "self" and link.key.id != env.caller_key:
            start.caller.kind = "remote"   # the caller's node judged by a stale presence entry
        route = Route(call_id=start.call_id, caller_id=start.call_id, caller_key=env.caller_key,
                      target=link, credit_on_write=False)
        link.routes[route.call_id] = route
        self.router.calls_by_key.setdefault(env.caller_key, set()).add(route)
        served = _Served(route=route, link=link, caller_node=back)
        self.served[(back, start.call_id)] = served
        self.router._count("calls_served")
        link.send(pb.RelayFrame(call=start))
        # Any event tells the caller's node the call was taken; only a call whose agent is
        # silent for TAKEN_AFTER_S costs a message of its own (one publish less per call).
        # (a start that was long on its way gets its notice at once: the caller's node stops
        # waiting ACCEPT_TIMEOUT_S after it sent the call)
        served.taken = asyncio.get_running_loop().call_later(
            max(0.0, min(TAKEN_AFTER_S, ACCEPT_TIMEOUT_S / 2 - age_s)), self.post, back,
            pb.BusEnvelope(machine_id=env.machine_id, taken=pb.Accepted(call_id=start.call_id)))
        served.task = asyncio.ensure_future(self._pump(served, env.machine_id, start.deadline_ms))

    async def _pump(self, served: _Served, machine_id: str, deadline_ms: int) -> None:
        """Pass a served call's events back to the caller's node until the call ends."""
        route, link, back = served.route, served.link, served.caller_node
        ended = False

        async def events() -> bool:
            while True:
                event = await route.events.get()
                if served.taken is not None:
                    served.taken.cancel()
                self.post(back, pb.BusEnvelope(machine_id=machine_id, event=event))
                if event.WhichOneof("kind") in ("result", "failure"):
                    return not route.aborted or route.aborted == "host_offline"

        try:
            ended = await asyncio.wait_for(events(), deadline_ms / 1000 + 10)
        except asyncio.TimeoutError:
            self.post(back, pb.BusEnvelope(machine_id=machine_id, event=pb.CallEvent(
                failure=pb.Failure(call_id=route.call_id, code="deadline_exceeded",
                                   message="no result within the call's deadline; cancelled"))))
        finally:
            if served.taken is not None:
                served.taken.cancel()
            link.routes.pop(route.call_id, None)
            self.router.calls_by_key.get(route.caller_key, set()).discard(route)
            self.served.pop((back, route.call_id), None)
            if not ended and not link.ended.is_set():
                link.send(pb.RelayFrame(cancel=pb.Cancel(call_id=route.call_id,
                                                         reason=route.aborted or "caller left")))


def status_rows(nodes: dict[str, bytes]) -> list[dict[str, Any]]:
    """The live nodes' status records (from `Bus.nodes`), sorted by node id."""
    rows = []
    for name in sorted(nodes):
        try:
            row = json.loads(nodes[name])
        except ValueError:
            row = {}
        row = row if isinstance(row, dict) else {}
        row["node"] = name
        rows.append(row)
    return rows
