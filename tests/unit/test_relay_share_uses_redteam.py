"""A red team's finding kept as a test: a guest's uses are given back only for calls that took
one, so calls made while the host is offline cannot erase uses spent before (--max-uses holds
across agent restarts)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cmdop.relay.auth import BearerVerifier
from cmdop.relay.proto import relay_pb2 as pb
from cmdop.relay.router import Router
from cmdop.relay.store import RelayStore

from relay_fakes import FakeStream, call_start, link_agent, next_frame


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with RelayStore.open(str(tmp_path / "relay")) as s:
        s.create_workspace("demo")
        yield s


async def _guest_call(router: Router, token: str, cid: str) -> tuple[FakeStream, "asyncio.Task[None]"]:
    caller = FakeStream(token)
    await caller.incoming.put(pb.CallerFrame(start=call_start(cid, "web01")))
    return caller, asyncio.ensure_future(router.call(caller))


def test_a_call_to_an_offline_host_does_not_give_back_a_use_it_never_took(store):
    """GuestAdmission admits a call to an offline host without counting a use (online=False),
    then the router's `not_forwarded` gives one back anyway: each call made while the host is
    offline erases one counted use, so a two-use share yields a third executed call."""
    async def main() -> None:
        router = Router(store, verifier=BearerVerifier(store))
        owner = store.create_key("demo", "ops")[1]
        agent, link = await link_agent(router, owner, "web01", "m1")
        info = await router.create_share(FakeStream(owner), pb.CreateShareRequest(
            host="web01", ttl_s=3600, max_uses=2))
        async def executed(cid: str) -> None:
            caller, task = await _guest_call(router, info.token, cid)
            forwarded = await next_frame(agent, "call")
            await agent.incoming.put(pb.AgentFrame(result=pb.Result(call_id=forwarded.call_id,
                                                                    result_json=b"{}")))
            await task

        await executed("g1")
        assert store.get_share(info.id).uses == 1
        # The host's agent restarts: while it is away the guest calls once.
        await agent.incoming.put(None)
        await link
        caller, task = await _guest_call(router, info.token, "g2")
        assert (await next_frame(caller, "failure")).code == "host_offline"
        await task
        assert store.get_share(info.id).uses == 1, "a use never taken was given back"
        # Back online: the second use, then the share is used up.
        agent, link = await link_agent(router, owner, "web01", "m1")
        await executed("g3")
        caller, task = await _guest_call(router, info.token, "g4")
        assert (await next_frame(caller, "failure")).code == "share_used_up"
        await task
    asyncio.run(main())
