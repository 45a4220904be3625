"""The relay router in-process (asyncio, no network): fake streams stand in for grpc's, a fake
store for SQLite. Covers what the end-to-end tests reach only slowly: identity stamping,
call-id namespacing, limits, revocation, a link that ends mid-call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cmdop.adapters.relay_grpc import RelayRefusal
from cmdop.relay.proto import relay_pb2 as pb
from cmdop.relay.router import Router

from relay_fakes import (FakeStream, call_start as _start, fake_store,
                         link_agent as _agent, next_frame as _next)


def test_a_direct_call_is_remote_and_namespaced_and_its_result_comes_back():
    async def main() -> None:
        router = Router(fake_store())
        agent, _ = await _agent(router, "K1", "web01", "m1")
        caller = FakeStream("K2")
        await caller.incoming.put(pb.CallerFrame(start=_start("c1", "web")))
        call_task = asyncio.ensure_future(router.call(caller))
        forwarded = await _next(agent, "call")
        assert forwarded.call_id == "k2:c1"                    # namespaced by the caller's key
        assert (forwarded.caller.kind, forwarded.caller.name, forwarded.caller.hostname) == (
            "remote", "dev", "")                                # no machine: not verified
        await agent.incoming.put(pb.AgentFrame(result=pb.Result(call_id="k2:c1",
                                                                result_json=b'{"exit_code":0}')))
        result = await _next(caller, "result")
        assert result.call_id == "c1" and result.result_json == b'{"exit_code":0}'
        await call_task
    asyncio.run(main())


def test_a_call_through_an_own_agent_link_is_self_with_the_verified_machine():
    async def main() -> None:
        router = Router(fake_store())
        target, _ = await _agent(router, "K1", "web01", "m1")
        origin, _ = await _agent(router, "K1", "laptop", "m2")
        await origin.incoming.put(pb.AgentFrame(call=_start("o1", "web01")))
        forwarded = await _next(target, "call")
        # the relay's own name and row id for the calling machine, never its hello claims
        assert (forwarded.caller.kind, forwarded.caller.hostname,
                forwarded.caller.machine_id) == ("self", "laptop", "row-demo-m2")
        other, _ = await _agent(router, "K2", "box", "m3")      # another key's machine
        await other.incoming.put(pb.AgentFrame(call=_start("o2", "web01")))
        forwarded = await _next(target, "call")
        assert forwarded.caller.kind == "remote"
    asyncio.run(main())


def test_wrong_key_is_refused_and_counted_per_address():
    async def main() -> None:
        router = Router(fake_store())
        for _ in range(3):
            with pytest.raises(RelayRefusal) as exc:
                await router.list_hosts(FakeStream("nope", peer="6.6.6.6"), pb.ListHostsRequest())
            assert exc.value.code == "unauthenticated"
        assert router.counters["auth_failed"] == 3
    asyncio.run(main())


def test_revocation_ends_the_keys_links_and_cuts_its_calls():
    async def main() -> None:
        store = fake_store()
        router = Router(store)
        agent, agent_task = await _agent(router, "K1", "web01", "m1")
        caller = FakeStream("K2")
        await caller.incoming.put(pb.CallerFrame(start=_start("c1", "web01")))
        call_task = asyncio.ensure_future(router.call(caller))
        await _next(agent, "call")
        store.revoked.add("k2")                                  # the caller's key
        router.revoke(store.revoked_key_ids())
        failure = await _next(caller, "failure")
        assert failure.code == "revoked"
        assert (await _next(agent, "cancel")).call_id == "k2:c1"  # the agent kills the command
        await call_task
        store.revoked.add("k1")                                  # the agent's key
        router.revoke(store.revoked_key_ids())
        assert (await _next(agent, "failure")).code == "revoked"
        await asyncio.wait_for(agent_task, 5)                    # the link ended
        assert not router.links
    asyncio.run(main())


def test_a_link_that_ends_mid_call_fails_the_call_at_once():
    async def main() -> None:
        router = Router(fake_store())
        agent, agent_task = await _agent(router, "K1", "web01", "m1")
        caller = FakeStream("K1")
        await caller.incoming.put(pb.CallerFrame(start=_start("c1", "web01")))
        call_task = asyncio.ensure_future(router.call(caller))
        await _next(agent, "call")
        await agent.incoming.put(None)                           # the agent went away
        assert (await _next(caller, "failure")).code == "host_offline"
        await call_task
        await agent_task
    asyncio.run(main())


def test_calls_per_key_are_limited():
    async def main() -> None:
        router = Router(fake_store(), max_calls_per_key=2)
        agent, _ = await _agent(router, "K1", "web01", "m1")
        tasks = []
        for i in range(2):
            c = FakeStream("K2")
            await c.incoming.put(pb.CallerFrame(start=_start(f"c{i}", "web01")))
            tasks.append(asyncio.ensure_future(router.call(c)))
            await _next(agent, "call")
        third = FakeStream("K2")
        await third.incoming.put(pb.CallerFrame(start=_start("c9", "web01")))
        with pytest.raises(RelayRefusal) as exc:
            await router.call(third)
        assert exc.value.code == "resource_exhausted"
        for t in tasks:
            t.cancel()
    asyncio.run(main())


@pytest.mark.parametrize("host, code", [("nope", "host_unknown"), ("web", "host_ambiguous")])
def test_unknown_and_ambiguous_hosts_are_failures_with_a_hint(host, code):
    async def main() -> None:
        router = Router(fake_store())
        await _agent(router, "K1", "web01", "m1")
        await _agent(router, "K1", "web02", "m2")
        caller = FakeStream("K1")
        await caller.incoming.put(pb.CallerFrame(start=_start("c1", host)))
        await router.call(caller)
        failure = await _next(caller, "failure")
        assert failure.code == code and failure.hint
    asyncio.run(main())


def test_a_second_link_from_the_same_machine_replaces_the_first():
    async def main() -> None:
        router = Router(fake_store())
        first, first_task = await _agent(router, "K1", "web01", "m1")
        second, _ = await _agent(router, "K1", "web01", "m1")
        assert (await _next(first, "failure")).code == "replaced"
        await asyncio.wait_for(first_task, 5)
        assert len(router.links) == 1
    asyncio.run(main())


def test_a_machine_enrolled_with_another_key_is_told_how_to_move_or_re_enrol(monkeypatch):
    """The refusal carries the store's hint (it was dropped: the agent retried every ~57 s
    saying only "enrolled with another key"; found by a black-box pass)."""
    from cmdop.relay.store import MachineClaimedError

    async def main() -> None:
        store = fake_store()

        def claimed(*_: Any) -> Any:
            raise MachineClaimedError("machine id m1… is enrolled with another key",
                                      "revoke it, or remove machine_id from its state dir")

        monkeypatch.setattr(store, "enroll_machine", claimed)
        router = Router(store)
        s = FakeStream("K2")
        await s.incoming.put(pb.AgentFrame(hello=pb.Hello(protocol_version=1, hostname="web01",
                                                          machine_id="m1", agent_version="t")))
        with pytest.raises(RelayRefusal) as exc:
            await asyncio.wait_for(router.agent_link(s), 5)
        assert exc.value.code == "permission_denied"
        assert exc.value.message == ("machine id m1… is enrolled with another key; revoke it, or "
                                     "remove machine_id from its state dir")
    asyncio.run(main())


def test_a_stopping_relay_starts_no_new_call_direct_or_through_a_link():
    """Found by a black-box pass: in its SIGTERM grace period the relay still took a new call
    through an agent's open link and ran it."""
    async def main() -> None:
        router = Router(fake_store())
        laptop, _ = await _agent(router, "K1", "laptop", "m1")
        await _agent(router, "K1", "web01", "m2")
        router.stopping = True
        with pytest.raises(RelayRefusal) as exc:
            await router.call(FakeStream("K1"))
        assert exc.value.code == "unavailable" and "stopping" in exc.value.message
        await laptop.incoming.put(pb.AgentFrame(call=_start("c-1", "web01")))
        event = await _next(laptop, "event")
        assert event.WhichOneof("kind") == "failure" and event.failure.code == "relay_stopping"
    asyncio.run(main())
