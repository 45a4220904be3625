"""Red team of several relay nodes, in one process (routers over a fake store and the in-memory
bus, as in test_relay_cluster_routing.py). Each test is an attack a user or operator would
notice: a second node taking a live node's id, a restarted node resurrecting its dead agents,
agents linked while a node was still joining the bus, a call the caller was told was lost
reaching the agent anyway, a Redis outage reported as "agent not running"."""

from __future__ import annotations

import asyncio

import pytest

from cmdop.core.errors import UsageError
from cmdop.relay.bus import MemoryBus
from cmdop.relay.cluster import Cluster
from cmdop.relay.proto import relay_pb2 as pb
from cmdop.relay.router import Router

from relay_fakes import FakeStream, call_start as _start, link_agent as _agent, next_frame as _next
# fast_cluster: autouse, imported by name so that pytest applies it here too
from test_relay_cluster_routing import (Nodes, _answer, _cross_call, _until, _web01_on_node0,
                                        fast_cluster)  # noqa: F401


def _drain(stream: FakeStream) -> list[str]:
    kinds = []
    while not stream.out.empty():
        kinds.append(stream.out.get_nowait().WhichOneof("kind"))
    return kinds


@pytest.mark.parametrize("together", [False, True], ids=["one-after-the-other", "at-once"])
def test_two_nodes_started_with_the_same_node_id_never_both_join(together: bool):
    # `relay serve` connects the bus (Cluster.start) and only then runs it: a second node with
    # the same --node-id started in between shared the first one's channel (each would get
    # the other's calls and heartbeats) instead of being refused.
    async def main() -> None:
        nodes = Nodes(1)
        first = nodes.clusters[0]
        twin = Cluster(Router(nodes.store), MemoryBus(nodes.hub), first.node)
        runs: list[asyncio.Task[None]] = []

        async def serve(node: Cluster) -> None:          # what `relay serve` does
            await node.start()
            runs.append(asyncio.ensure_future(node.run()))

        if together:
            outcomes = await asyncio.gather(serve(first), serve(twin), return_exceptions=True)
        else:
            outcomes = await asyncio.gather(serve(first), return_exceptions=True)
            outcomes += await asyncio.gather(serve(twin), return_exceptions=True)
        for run in runs:
            run.cancel()
        refused = [o for o in outcomes if isinstance(o, UsageError)]
        assert len(refused) == 1 and "in use" in refused[0].message, outcomes
    asyncio.run(main())


def test_a_node_restarted_with_its_old_id_does_not_resurrect_its_dead_agents():
    # The default node id is hostname:port, so a crashed node restarted by systemd comes back
    # with the same id: its dead agents' presence entries (90 s TTL) named that id and became
    # "live" again — every node showed them online and routed calls to a node without them.
    async def main() -> None:
        nodes, _, _ = await _web01_on_node0()
        nodes.kill(0)                                  # dies; its agent does not come back
        await _until(lambda: not nodes.routers[1].online("row-demo-m1"))
        await _until(lambda: "node-0" not in nodes.hub.live(nodes.hub.records))
        reborn = Cluster(Router(nodes.store), MemoryBus(nodes.hub), "node-0")
        await reborn.start()
        task = asyncio.ensure_future(reborn.run())
        try:
            await _until(lambda: reborn.up and "node-0" in nodes.clusters[1].alive)
            await asyncio.sleep(0.1)                   # a few heartbeats
            assert not nodes.routers[1].online("row-demo-m1")
            hosts = await nodes.routers[1].list_hosts(FakeStream("K2"), pb.ListHostsRequest())
            assert [(h.name, h.online) for h in hosts.hosts] == [("web01", False)]
        finally:
            task.cancel()
    asyncio.run(main())


def test_an_agent_that_linked_while_its_node_was_joining_the_bus_is_reachable_from_others():
    # `relay serve` starts its gRPC server, then joins the bus: an agent (e.g. one of a dead
    # node's agents reconnecting through the load balancer) linked in between was never
    # announced — invisible to every other node until it relinked.
    async def main() -> None:
        nodes = Nodes(2)
        early = Router(nodes.store)
        await _agent(early, "K1", "web01", "m1")          # linked before its node joined
        nodes.routers[0] = early
        nodes.clusters[0] = Cluster(early, MemoryBus(nodes.hub), "node-0")
        await nodes.start()
        await _until(lambda: nodes.routers[1].online("row-demo-m1"))
    asyncio.run(main())


def test_a_call_the_caller_was_told_was_not_taken_never_reaches_the_agent_later():
    # The caller's node gives a holder ACCEPT_TIMEOUT_S to take a call, then tells the caller
    # "did not take the call; try again". A holder that was only slow (a backlog on its
    # channel) still delivered the start afterwards: the command ran although the caller was
    # told to run it again — twice in all.
    async def main() -> None:
        nodes, agent, _ = await _web01_on_node0()
        real = nodes.hub.queues["node-0"]
        held: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        nodes.hub.queues["node-0"] = held              # node 0 falls behind on its channel
        caller, call_task = await _cross_call(nodes)
        await call_task
        failure = await _next(caller, "failure")
        assert failure.code == "node_lost" and "try again" in failure.message
        while not held.empty():                        # ... and catches up
            real.put_nowait(held.get_nowait())
        nodes.hub.queues["node-0"] = real
        await _until(lambda: real.empty())
        await asyncio.sleep(0.1)
        assert "call" not in _drain(agent)
    asyncio.run(main())


def test_a_call_to_another_nodes_machine_while_the_bus_is_down_says_so():
    # docs/relay.md: with Redis down "calls that cross nodes fail with node_lost". They failed
    # host_offline, "web01 is not connected to the relay — is its agent running?": the user
    # went to check a healthy agent.
    async def main() -> None:
        nodes, _, _ = await _web01_on_node0()
        nodes.hub.down = True
        await _until(lambda: not nodes.clusters[1].up)
        caller, call_task = await _cross_call(nodes)
        await call_task
        failure = await _next(caller, "failure")
        assert failure.code == "node_lost" and "bus" in failure.message, failure
    asyncio.run(main())


@pytest.mark.parametrize("url", [
    "redis://:s3cretpw@127.0.0.1:badport/0",       # a port that is not a number
    "redis://:s3cretpw@[::1/0",                    # an unclosed IPv6 bracket
    "redis://127.0.0.1:6379/0?password=s3cretpw&db=x",   # a database that is not a number
    "redis://:s3cretpw@127.0.0.1:99999/0",         # a port out of range
])
def test_a_malformed_bus_url_is_a_usage_error_that_does_not_repeat_the_password(url: str):
    # `relay status --bus …` / `relay serve --bus …` printed "internal error: ValueError"
    from cmdop.relay.bus_redis import check_url

    with pytest.raises(UsageError) as err:
        check_url(url)
    assert "s3cretpw" not in err.value.message + (err.value.hint or "")


@pytest.mark.parametrize("url, noted", [
    ("redis://:s3cret@redis.internal:6379/0", True),
    ("redis://redis.internal:6379/0?password=s3cret", True),
    ("redis://redis.internal:6379/0", False),
])
def test_a_password_given_on_the_command_line_gets_the_ps_note(url: str, noted: bool):
    from types import SimpleNamespace

    from cmdop.cli.relay_status import bus_location

    notes: list[str] = []
    ctx = SimpleNamespace(note=notes.append, settings=SimpleNamespace(relay_bus=None))
    assert bus_location(SimpleNamespace(bus=url), ctx) == url  # type: ignore[arg-type]
    assert bool(notes) is noted


def test_a_guest_through_another_node_stays_a_guest_is_counted_once_and_the_holder_cuts_it(
        tmp_path):
    # A share for web01 (linked to node 0) used through node 1: stamped guest (never self or
    # remote), one use each call whichever node admits it, and cut by a revocation that only
    # the holder has noticed yet.
    from cmdop.relay import shares
    from cmdop.relay.auth import BearerVerifier
    from cmdop.relay.bus import MemoryHub
    from cmdop.relay.store import RelayStore

    from test_relay_share_router import _guest_call, _keys, _share

    async def main(store: RelayStore) -> None:
        hub = MemoryHub()
        routers = [Router(store, verifier=BearerVerifier(store)) for _ in range(2)]
        clusters = [Cluster(r, MemoryBus(hub), f"node-{i}") for i, r in enumerate(routers)]
        tasks = [asyncio.ensure_future(c.run()) for c in clusters]
        keys = _keys(store)
        agent, _ = await _agent(routers[0], keys["ops"], "web01", "m1")
        [web01] = store.list_machines("demo")
        await _until(lambda: routers[1].online(web01.id))
        info = await _share(routers[1], keys["ops"], max_uses=1)
        caller, task = await _guest_call(routers[1], info.token, "web01")
        forwarded = await _next(agent, "call")
        assert (forwarded.caller.kind, forwarded.caller.share_id) == ("guest", info.id)
        again, again_task = await _guest_call(routers[0], info.token, "web01", cid="g2")
        assert (await _next(again, "failure")).code == shares.USED_UP    # its one use is spent
        await again_task
        store.revoke_share("demo", info.id)
        routers[0].revoke(routers[0]._revocations())           # node 1 has not looked yet
        assert (await _next(caller, "failure")).code == "share_revoked"
        assert (await _next(agent, "cancel")).call_id == forwarded.call_id
        await task
        for t in tasks:
            t.cancel()

    with RelayStore.open(str(tmp_path / "relay")) as s:
        s.create_workspace("demo")
        s.create_workspace("other")
        asyncio.run(main(s))


def test_a_caller_node_behind_on_its_channel_does_not_call_a_taken_call_lost():
    # The holder took the call (the agent runs it) but the caller's node, behind on its own
    # channel, had not read the "taken" notice within ACCEPT_TIMEOUT_S: it told the caller
    # "did not take the call; try again" and cancelled a command that had started — a retry
    # then ran it a second time.
    async def main() -> None:
        nodes, agent, _ = await _web01_on_node0()
        real = nodes.hub.queues["node-1"]
        held: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        nodes.hub.queues["node-1"] = held              # the caller's node falls behind
        caller, call_task = await _cross_call(nodes)
        forwarded = await _next(agent, "call")           # the command starts
        await asyncio.sleep(0.6)                         # twice the accept timeout
        await _answer(agent, forwarded.call_id)
        await asyncio.sleep(0.05)
        while not held.empty():                          # ... and catches up
            real.put_nowait(held.get_nowait())
        nodes.hub.queues["node-1"] = real
        event = await asyncio.wait_for(caller.out.get(), 5)
        assert event.WhichOneof("kind") == "result", event
        await call_task
        assert "cancel" not in _drain(agent)
    asyncio.run(main())


def test_two_callers_on_two_nodes_with_one_call_id_reach_the_agent_once():
    async def main() -> None:
        nodes, agent, _ = await _web01_on_node0(3)
        started = [await _cross_call(nodes, "same", node) for node in (1, 2)]
        callers, tasks = [c for c, _ in started], [t for _, t in started]
        assert (await _next(agent, "call")).call_id == "k2:same"
        refused = await asyncio.wait_for(asyncio.wait(
            [asyncio.ensure_future(_next(c, "failure")) for c in callers],
            return_when=asyncio.FIRST_COMPLETED), 5)
        assert [t.result().code for t in refused[0]] == ["bad_call"]
        await asyncio.sleep(0.1)
        assert "call" not in _drain(agent)
        for t in tasks:
            t.cancel()
    asyncio.run(main())


def test_a_caller_node_that_dies_mid_call_gets_the_command_killed_on_the_holder():
    async def main() -> None:
        nodes, agent, _ = await _web01_on_node0()
        caller, call_task = await _cross_call(nodes)
        forwarded = await _next(agent, "call")
        nodes.kill(1)
        call_task.cancel()                               # its process is gone with it
        assert (await _next(agent, "cancel")).call_id == forwarded.call_id
        await _until(lambda: not nodes.clusters[0].served)
    asyncio.run(main())


@pytest.mark.parametrize("caller_node", [0, 1], ids=["same-node", "across-nodes"])
def test_a_burst_of_large_calls_fails_calls_alone_and_never_ends_the_agents_link(
        caller_node: int):
    # Twelve 3.5 MB calls at once from one caller (found with real processes: the agent reads
    # its stream slower than they arrive): past 32 MiB queued the holder ended the agent's
    # link as "not reading" — every user's calls to the machine failed and it went offline.
    async def main() -> None:
        nodes, agent, link_task = await _web01_on_node0(block_writes=True)  # writer stuck
        big = b'{"command":"' + b"x" * 3_500_000 + b'"}'
        callers = [await _cross_call(nodes, f"big{i}", caller_node, input_json=big)
                   for i in range(12)]
        link = nodes.routers[0].links["row-demo-m1"]
        # 42 MB cross the (in-memory) bus: generous on a loaded machine, where it took > 5 s
        await _until(lambda: link.ended.is_set() or
                     len(link.routes) + sum(c.out.qsize() for c, _ in callers) == 12, 60.0)
        assert not link.ended.is_set() and not link_task.done()
        refused = [c.out.get_nowait() for c, _ in callers if not c.out.empty()]
        assert refused and {f.failure.code for f in refused} == {"host_busy"}, refused
        for _, t in callers:
            t.cancel()
    asyncio.run(main())


def test_garbage_on_a_nodes_channel_is_dropped_and_the_node_keeps_routing():
    # A bug in one node (or a truncated message) must not stop another node's bus.
    from cmdop.relay.bus import ALL, NODE

    async def main() -> None:
        nodes, agent, _ = await _web01_on_node0()
        queue = nodes.hub.queues["node-0"]
        forged = pb.BusEnvelope(from_node="node-1", machine_id="row-demo-m1", caller_key="k2",
                                start=_start("k1:stolen", "web01"))   # another key's id space
        for kind, data in [(NODE, b"\xff\xfe not a protobuf"), (ALL, b"\x0a\xff"),
                           (NODE, b"\x00cmdop:relay:blob:nothing"),
                           (NODE, forged.SerializeToString())]:
            queue.put_nowait((kind, data))
        caller, task = await _cross_call(nodes)
        forwarded = await _next(agent, "call")
        assert forwarded.call_id == "k2:c1"                 # the forged start never ran
        await _answer(agent, "k2:c1")
        assert (await _next(caller, "result")).call_id == "c1"
        await task
        assert nodes.clusters[0].up
    asyncio.run(main())


def test_with_the_bus_down_a_call_whose_caller_and_agent_share_a_node_still_runs():
    async def main() -> None:
        nodes, agent, _ = await _web01_on_node0()
        nodes.hub.down = True
        await _until(lambda: not nodes.clusters[0].up)
        caller, task = await _cross_call(nodes, node=0)     # the agent's own node
        await _next(agent, "call")
        await _answer(agent, "k2:c1")
        assert (await _next(caller, "result")).call_id == "c1"
        await task
    asyncio.run(main())
