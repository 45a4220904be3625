"""The bus several relay nodes share (`relay serve --bus redis://…`): per-node channels, a
broadcast channel, presence entries and a node registry, each with a TTL.

`Bus` is what cmdop.relay.cluster needs of it; cmdop.relay.bus_redis is the real one (Redis
pub/sub and keys), `MemoryBus` the in-process one the unit tests route through. What every
backend promises:
- `publish` delivers each item to the named node's channel ("" = every node, itself included)
  in the order given, at most once; a message for a node that is not subscribed is dropped.
- `receive` returns the next message for this node: (ALL or NODE, bytes); BusUnavailableError
  when the connection is lost (the caller reopens; messages meanwhile are lost, never replayed).
- Presence and node records expire after their TTL unless refreshed: a node that dies stops
  refreshing, so its agents and itself drop out without anyone cleaning up after it.
- `drop_presence` removes an entry only if it still holds the given bytes (a newer link of the
  same machine, on another node, is never removed by an old one ending).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from cmdop.core.errors import BusUnavailableError

ALL = "all"        # a message on the broadcast channel
NODE = "node"      # a message on this node's own channel


class Bus(Protocol):
    """What a relay node needs of the bus (module docstring for the promises)."""

    async def open(self, node: str) -> None:
        """Connect and subscribe to `node`'s channel and the broadcast channel."""

    async def receive(self) -> tuple[str, bytes]:
        """The next message: (ALL or NODE, data)."""

    async def publish(self, items: list[tuple[str, bytes]]) -> None:
        """Send (node, data) items in order ("" = every node)."""

    async def put_presence(self, entries: list[tuple[str, bytes]], ttl_s: float) -> None:
        """Set (machine_id, data) presence entries, each expiring after `ttl_s`."""

    async def drop_presence(self, machine_id: str, expected: bytes) -> None:
        """Remove `machine_id`'s entry if it still is `expected`."""

    async def presence(self) -> dict[str, bytes]:
        """Every live presence entry: machine_id -> data."""

    async def beat(self, node: str, record: bytes, ttl_s: float) -> bool:
        """Register `node` as alive for `ttl_s` with its status `record`; whether it was
        registered already (False: first beat, or the bus forgot it — restarted)."""

    async def claim(self, node: str, record: bytes, ttl_s: float) -> bool:
        """Register `node` as alive for `ttl_s` only if no live node has that id (atomic:
        of two nodes claiming one id at once, one wins); whether this call registered it."""

    async def nodes(self) -> dict[str, bytes]:
        """The live nodes: node -> its last record."""

    async def leave(self, node: str) -> None:
        """Unregister `node` at once (a clean stop)."""

    async def close(self) -> None:
        """Disconnect."""


@dataclass
class MemoryHub:
    """The state one in-process bus shares between its nodes (tests)."""

    clock: Callable[[], float] = time.monotonic
    queues: dict[str, asyncio.Queue[tuple[str, bytes]]] = field(default_factory=dict)
    entries: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    records: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    down: bool = False                 # a test's outage: every call raises BusUnavailableError

    def check(self) -> None:
        if self.down:
            raise BusUnavailableError("the bus is down (test)")

    def live(self, table: dict[str, tuple[bytes, float]]) -> dict[str, bytes]:
        now = self.clock()
        return {k: v for k, (v, until) in table.items() if until > now}


class MemoryBus:
    """`Bus` in one process: each node's channel is an asyncio.Queue in a shared `MemoryHub`."""

    def __init__(self, hub: MemoryHub) -> None:
        self.hub = hub
        self.node = ""
        self.down = False             # a test's outage of this node's connection only

    def _check(self) -> None:
        if self.down:
            raise BusUnavailableError("this node's bus connection is down (test)")
        self.hub.check()

    async def open(self, node: str) -> None:
        self._check()
        self.node = node
        self.hub.queues[node] = asyncio.Queue()

    async def receive(self) -> tuple[str, bytes]:
        return await self.hub.queues[self.node].get()

    async def publish(self, items: list[tuple[str, bytes]]) -> None:
        self._check()
        for node, data in items:
            targets = list(self.hub.queues.items()) if not node else \
                [(node, self.hub.queues[node])] if node in self.hub.queues else []
            for _, queue in targets:
                queue.put_nowait((ALL if not node else NODE, data))

    async def put_presence(self, entries: list[tuple[str, bytes]], ttl_s: float) -> None:
        self._check()
        for machine_id, data in entries:
            self.hub.entries[machine_id] = (data, self.hub.clock() + ttl_s)

    async def drop_presence(self, machine_id: str, expected: bytes) -> None:
        self._check()
        if self.hub.entries.get(machine_id, (b"", 0.0))[0] == expected:
            del self.hub.entries[machine_id]

    async def presence(self) -> dict[str, bytes]:
        self._check()
        return self.hub.live(self.hub.entries)

    async def beat(self, node: str, record: bytes, ttl_s: float) -> bool:
        self._check()
        known = node in self.hub.live(self.hub.records)
        self.hub.records[node] = (record, self.hub.clock() + ttl_s)
        return known

    async def claim(self, node: str, record: bytes, ttl_s: float) -> bool:
        self._check()
        if node in self.hub.live(self.hub.records):
            return False
        self.hub.records[node] = (record, self.hub.clock() + ttl_s)
        return True

    async def nodes(self) -> dict[str, bytes]:
        self._check()
        return self.hub.live(self.hub.records)

    async def leave(self, node: str) -> None:
        self.hub.records.pop(node, None)

    async def close(self) -> None:
        self.hub.queues.pop(self.node, None)
