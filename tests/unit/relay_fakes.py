"""In-process fakes for the relay router's tests: streams standing in for grpc's, a store
standing in for SQLite, and the few steps every router test takes (link an agent, start a
call, wait for a frame). (No tests in this module.)"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from cmdop.relay.proto import relay_pb2 as pb
from cmdop.relay.router import Router

class FakeStream:
    """A ServerStream: frames in through `incoming`, frames out collected in `out`.
    `block_writes` makes every write hang (a caller or agent that never reads)."""

    def __init__(self, credential: str, peer: str = "10.0.0.1", block_writes: bool = False,
                 max_frame: int | None = None) -> None:
        self.credential, self.peer = credential, peer
        self.incoming: asyncio.Queue[Any] = asyncio.Queue()
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self.block_writes = block_writes
        self.max_frame = max_frame
        self.written = 0

    async def read(self) -> Any:
        return await self.incoming.get()

    async def write(self, frame: Any) -> None:
        if self.max_frame is not None and frame.ByteSize() > self.max_frame:
            # what grpc does with a frame over grpc.max_send_message_length
            raise RuntimeError(f"Sent message larger than max ({frame.ByteSize()} vs. {self.max_frame})")
        if self.block_writes and self.written >= 1:
            await asyncio.Event().wait()          # never returns: the peer does not read
        self.written += 1
        await self.out.put(frame)


@dataclass(frozen=True)
class Key:
    id: str
    workspace: str
    name: str


@dataclass(frozen=True)
class Machine:
    id: str
    workspace: str
    name: str
    hostname: str
    machine_id: str
    key_id: str
    agent_version: str = "t"
    last_seen: str = ""


@dataclass
class FakeStore:
    """Workspace-aware like the real store; no SQLite (fast), for the flow-control attacks."""

    blocking_io = True      # the router calls it off its loop, as it does PostgreSQL
    keys: dict[str, Key] = field(default_factory=dict)
    machines: dict[tuple[str, str], Machine] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    version: int = 0
    fail_next_revoked_read: int = 0

    def verify_key(self, text: str) -> Key | None:
        key = self.keys.get(text)
        return None if key is None or key.id in self.revoked else key

    def enroll_machine(self, workspace: str, key_id: str, hostname: str, machine_id: str,
                       version: str) -> Machine:
        m = self.machines.get((workspace, machine_id)) or Machine(
            id=f"row-{workspace}-{machine_id}", workspace=workspace, name=hostname.lower(),
            hostname=hostname, machine_id=machine_id, key_id=key_id)
        self.machines[(workspace, machine_id)] = m
        return m

    def touch_machine(self, row: str) -> None:
        pass

    def list_machines(self, workspace: str) -> list[Machine]:
        return [m for m in self.machines.values() if m.workspace == workspace]

    def host_candidates(self, workspace: str, host: str) -> list[Machine]:
        return self.list_machines(workspace)        # resolve_host decides over all of them

    def find_machine(self, workspace: str, machine_id: str) -> Machine | None:
        return self.machines.get((workspace, machine_id))

    def data_version(self) -> int:
        return self.version

    def revoked_key_ids(self) -> frozenset[str]:
        if self.fail_next_revoked_read:
            self.fail_next_revoked_read -= 1
            from cmdop.core.errors import CmdopError
            raise CmdopError("relay.db: database is locked")
        return frozenset(self.revoked)


def fake_store() -> FakeStore:
    return FakeStore(keys={"K1": Key("k1", "demo", "ops"), "K2": Key("k2", "demo", "dev"),
                           "K3": Key("k3", "other", "ops")})


async def next_frame(stream: FakeStream, kind: str, timeout: float = 5.0) -> Any:
    while True:
        frame = await asyncio.wait_for(stream.out.get(), timeout)
        if frame.WhichOneof("kind") == kind:
            return getattr(frame, kind)


async def link_agent(router: Router, secret: str, host: str, mid: str,
                 **kw: Any) -> tuple[FakeStream, asyncio.Task[None]]:
    s = FakeStream(secret, **kw)
    await s.incoming.put(pb.AgentFrame(hello=pb.Hello(protocol_version=1, hostname=host,
                                                      machine_id=mid, agent_version="t")))
    task = asyncio.ensure_future(router.agent_link(s))
    await next_frame(s, "welcome")
    return s, task


def call_start(cid: str, host: str, tool: str = "execute_command", **kw: Any) -> pb.CallStart:
    kw.setdefault("input_json", b'{"command":"true"}')
    return pb.CallStart(call_id=cid, host=host, tool=tool, **kw)


async def direct_call(router: Router, secret: str, start: pb.CallStart,
                  **kw: Any) -> tuple[FakeStream, asyncio.Task[None]]:
    caller = FakeStream(secret, **kw)
    await caller.incoming.put(pb.CallerFrame(start=start))
    return caller, asyncio.ensure_future(router.call(caller))
