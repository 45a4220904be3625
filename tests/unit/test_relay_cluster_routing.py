"""Several relay nodes in one process: routers sharing a fake store and an in-memory bus
(cmdop.relay.bus.MemoryBus). A caller on one node reaches an agent linked to another; what the
user notices: results, output and cancellation cross nodes, revocation cuts there, a node that
dies fails its calls with a clear code and never runs one twice."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

from cmdop.relay import bus as busmod, cluster as clustermod
from cmdop.relay.bus import MemoryBus, MemoryHub
from cmdop.relay.cluster import Cluster
from cmdop.relay.proto import relay_pb2 as pb
from cmdop.relay.router import Router

from relay_fakes import (FakeStream, call_start as _start, direct_call, fake_store,
                         link_agent as _agent, next_frame as _next)


@pytest.fixture(autouse=True)
def fast_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats and timeouts in tens of milliseconds (the logic, not the numbers)."""
    monkeypatch.setattr(clustermod, "BEAT_S", 0.02)
    monkeypatch.setattr(clustermod, "NODE_TTL_S", 0.3)
    monkeypatch.setattr(clustermod, "ACCEPT_TIMEOUT_S", 0.3)
    monkeypatch.setattr(clustermod, "TAKEN_AFTER_S", 0.05)


async def _until(check: Callable[[], Any], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


class Nodes:
    """n relay nodes over one store and one in-memory bus."""

    def __init__(self, n: int) -> None:
        self.store = fake_store()
        self.hub = MemoryHub()
        self.routers = [Router(self.store) for _ in range(n)]
        self.clusters = [Cluster(r, MemoryBus(self.hub), f"node-{i}")
                         for i, r in enumerate(self.routers)]
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> "Nodes":
        self.tasks = [asyncio.ensure_future(c.run()) for c in self.clusters]
        await _until(lambda: all(c.up and len(c.alive) == len(self.clusters)
                                 for c in self.clusters))
        return self

    def kill(self, i: int) -> None:
        """Node i dies: no clean leave, its heartbeat and presence just stop."""
        self.tasks[i].cancel()
        self.clusters[i].up = False


async def _linked_everywhere(nodes: Nodes, mid: str) -> None:
    await _until(lambda: all(r.online(f"row-demo-{mid}") for r in nodes.routers))


async def _web01_on_node0(n: int = 2, **kw: Any) -> tuple[Nodes, FakeStream, asyncio.Task[None]]:
    """n started nodes; K1's web01 (machine m1) linked to node 0 and online on every node.
    `kw` goes to the agent's stream (e.g. block_writes)."""
    nodes = await Nodes(n).start()
    agent, link_task = await _agent(nodes.routers[0], "K1", "web01", "m1", **kw)
    await _linked_everywhere(nodes, "m1")
    return nodes, agent, link_task


async def _cross_call(nodes: Nodes, cid: str = "c1", node: int = 1, key: str = "K2",
                      **kw: Any) -> tuple[FakeStream, asyncio.Task[None]]:
    """`key` starts call `cid` to web01 through node `node`; `kw` goes to the call's start."""
    return await direct_call(nodes.routers[node], key, _start(cid, "web01", **kw))


async def _answer(agent: FakeStream, call_id: str, result_json: bytes = b"{}") -> None:
    """The agent ends call `call_id` (the id it was forwarded with) with `result_json`."""
    await agent.incoming.put(pb.AgentFrame(result=pb.Result(call_id=call_id,
                                                            result_json=result_json)))


def test_a_call_on_one_node_runs_on_an_agent_linked_to_another_with_streamed_output():
    async def main() -> None:
        nodes, agent, _ = await _web01_on_node0(3)
        hosts = await nodes.routers[2].list_hosts(FakeStream("K2"), pb.ListHostsRequest())
        assert [(h.name, h.online) for h in hosts.hosts] == [("web01", True)]
        caller, call_task = await direct_call(nodes.routers[2], "K2",
                                              _start("c1", "web", stream=True))
        forwarded = await _next(agent, "call")
        assert forwarded.call_id == "k2:c1" and forwarded.caller.kind == "remote"
        await agent.incoming.put(pb.AgentFrame(chunk=pb.Chunk(call_id="k2:c1", fd=1, data=b"hi")))
        chunk = await _next(caller, "chunk")
        assert (chunk.call_id, chunk.data) == ("c1", b"hi")
        credit = await _next(agent, "credit")                   # flow control crossed back
        assert (credit.call_id, credit.bytes) == ("k2:c1", 2)
        await _answer(agent, "k2:c1", b'{"exit_code":0}')
        assert (await _next(caller, "result")).result_json == b'{"exit_code":0}'
        await call_task
        await _until(lambda: not nodes.clusters[0].served)     # the holder forgot the call
    asyncio.run(main())


def test_a_call_from_an_own_agent_link_on_another_node_is_self_and_anothers_is_remote():
    async def main() -> None:
        nodes, target, _ = await _web01_on_node0()
        origin, _ = await _agent(nodes.routers[1], "K1", "laptop", "m2")
        await origin.incoming.put(pb.AgentFrame(call=_start("o1", "web01")))
        forwarded = await _next(target, "call")
        assert (forwarded.caller.kind, forwarded.caller.hostname) == ("self", "laptop")
        other, _ = await _agent(nodes.routers[1], "K2", "box", "m3")   # another key's machine
        await other.incoming.put(pb.AgentFrame(call=_start("o2", "web01")))
        assert (await _next(target, "call")).caller.kind == "remote"
        await _answer(target, "k2:o2")
        assert (await _next(other, "event")).result.call_id == "o2"
    asyncio.run(main())


def test_a_caller_that_cancels_on_its_node_cancels_the_command_on_the_agents_node():
    async def main() -> None:
        nodes, agent, _ = await _web01_on_node0()
        caller, call_task = await _cross_call(nodes, key="K1")
        await _next(agent, "call")
        await caller.incoming.put(pb.CallerFrame(cancel=pb.Cancel(call_id="c1")))
        assert (await _next(agent, "cancel")).call_id == "k1:c1"
        assert (await _next(caller, "failure")).code == "cancelled"
        await call_task
    asyncio.run(main())


@pytest.mark.parametrize("revoking_node", [0, 1])
def test_revocation_seen_by_either_node_cuts_a_call_that_crosses_them(revoking_node: int):
    async def main() -> None:
        nodes, agent, _ = await _web01_on_node0()
        caller, call_task = await _cross_call(nodes)
        await _next(agent, "call")
        nodes.store.revoked.add("k2")
        nodes.routers[revoking_node].revoke(nodes.store.revoked_key_ids())
        assert (await _next(caller, "failure")).code == "revoked"
        assert (await _next(agent, "cancel")).call_id == "k2:c1"   # the command is killed
        await call_task
    asyncio.run(main())


def test_a_node_that_dies_mid_call_fails_it_clearly_and_it_is_never_sent_twice():
    async def main() -> None:
        nodes, agent, _ = await _web01_on_node0()
        caller, call_task = await _cross_call(nodes)
        await _next(agent, "call")
        nodes.kill(0)
        failure = await _next(caller, "failure")
        assert failure.code == "node_lost" and "web01" in failure.message
        await call_task
        await _until(lambda: not nodes.routers[1].online("row-demo-m1"))  # its agents: offline
        # the agent reconnects to the surviving node: reachable again, and only the new
        # call ever reaches it (the lost one is not re-sent)
        again, _ = await _agent(nodes.routers[1], "K1", "web01", "m1")
        caller2, task2 = await _cross_call(nodes, "c2")
        assert (await _next(again, "call")).call_id == "k2:c2"
        await _answer(again, "k2:c2")
        await _next(caller2, "result")
        await task2
        assert again.out.empty()
    asyncio.run(main())


def test_a_node_that_never_takes_the_call_fails_it_after_the_accept_timeout():
    async def main() -> None:
        nodes, _, _ = await _web01_on_node0()
        nodes.hub.queues.pop("node-0")              # node 0's messages now go nowhere
        caller, call_task = await _cross_call(nodes)
        await call_task
        failure = await _next(caller, "failure")
        assert failure.code == "node_lost" and "did not take the call" in failure.message
    asyncio.run(main())


def test_a_call_whose_agent_is_silent_past_the_accept_timeout_is_not_failed():
    async def main() -> None:
        nodes, agent, _ = await _web01_on_node0()
        caller, call_task = await _cross_call(nodes)
        await _next(agent, "call")
        await asyncio.sleep(0.6)            # twice the accept timeout: the holder said "taken"
        await _answer(agent, "k2:c1")
        assert (await _next(caller, "result")).call_id == "c1"
        await call_task
    asyncio.run(main())


def test_an_agent_relinking_to_another_node_ends_its_old_link_and_moves_its_presence():
    async def main() -> None:
        nodes, old, old_task = await _web01_on_node0()
        await _agent(nodes.routers[1], "K1", "web01", "m1")
        assert (await _next(old, "failure")).code == "replaced"
        await asyncio.wait_for(old_task, 5)
        assert "row-demo-m1" in nodes.routers[1].links
        await _until(lambda: nodes.clusters[0].where["row-demo-m1"].node == "node-1")
        assert nodes.routers[0].online("row-demo-m1")       # through node 1
    asyncio.run(main())


def test_a_node_back_on_the_bus_yields_a_machine_that_moved_while_it_was_away():
    async def main() -> None:
        nodes, stale, stale_task = await _web01_on_node0()
        bus0 = nodes.clusters[0].bus
        assert isinstance(bus0, MemoryBus)
        bus0.down = True                                  # node 0 misses what happens next
        await _until(lambda: not nodes.clusters[0].up)
        live, live_task = await _agent(nodes.routers[1], "K1", "web01", "m1")
        bus0.down = False
        assert (await _next(stale, "failure")).code == "replaced"
        await asyncio.wait_for(stale_task, 5)
        await _until(lambda: nodes.clusters[0].up)
        assert not live_task.done() and "row-demo-m1" in nodes.routers[1].links
        await _until(lambda: nodes.routers[0].online("row-demo-m1"))   # through node 1
    asyncio.run(main())


def test_a_holder_whose_own_bus_connection_drops_fails_its_served_calls_once_back(
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(clustermod, "NODE_TTL_S", 5.0)   # the caller's node sees it alive
    async def main() -> None:
        nodes, agent, _ = await _web01_on_node0()
        caller, call_task = await _cross_call(nodes)
        await _next(agent, "call")
        await asyncio.sleep(0.2)                      # the holder said "taken"
        bus0 = nodes.clusters[0].bus
        assert isinstance(bus0, MemoryBus)
        bus0.down = True
        assert (await _next(agent, "cancel")).call_id == "k2:c1"
        bus0.down = False
        failure = await _next(caller, "failure")
        assert failure.code == "node_lost" and "bus" in failure.message
        await call_task
    asyncio.run(main())


def test_the_host_key_of_a_machine_on_another_node_is_its_agents_key():
    async def main() -> None:
        nodes = await Nodes(2).start()
        s = FakeStream("K1")
        await s.incoming.put(pb.AgentFrame(hello=pb.Hello(
            protocol_version=1, hostname="web01", machine_id="m1", agent_version="t",
            e2e_key=b"K" * 32)))
        asyncio.ensure_future(nodes.routers[0].agent_link(s))
        await _linked_everywhere(nodes, "m1")
        reply = await nodes.routers[1].host_key(FakeStream("K2"), pb.HostKeyRequest(host="web"))
        assert (reply.name, reply.e2e_key, reply.HasField("failure")) == ("web01", b"K" * 32, False)
    asyncio.run(main())


def test_a_lost_bus_fails_crossing_calls_and_routing_recovers_when_it_is_back():
    async def main() -> None:
        nodes, agent, _ = await _web01_on_node0()
        caller, call_task = await _cross_call(nodes)
        await _next(agent, "call")
        nodes.hub.down = True
        assert (await _next(caller, "failure")).code == "node_lost"
        assert (await _next(agent, "cancel")).call_id == "k2:c1"   # the holder kills it too
        await call_task
        nodes.hub.down = False
        await _linked_everywhere(nodes, "m1")
        caller2, task2 = await _cross_call(nodes, "c2")
        assert (await _next(agent, "call")).call_id == "k2:c2"
        await _answer(agent, "k2:c2")
        await _next(caller2, "result")
        await task2
    asyncio.run(main())


def test_bus_messages_reach_one_node_in_order_and_broadcasts_reach_all():
    async def main() -> None:
        hub = MemoryHub()
        a, b = MemoryBus(hub), MemoryBus(hub)
        await a.open("a")
        await b.open("b")
        await a.publish([("b", b"1"), ("b", b"2"), ("", b"all"), ("nobody", b"x")])
        assert [await b.receive() for _ in range(3)] == [
            (busmod.NODE, b"1"), (busmod.NODE, b"2"), (busmod.ALL, b"all")]
        assert await a.receive() == (busmod.ALL, b"all")
        await a.put_presence([("m", b"old")], 60)
        await a.put_presence([("m", b"new")], 60)
        await a.drop_presence("m", b"old")          # an older link ending keeps the newer entry
        assert await a.presence() == {"m": b"new"}
    asyncio.run(main())
