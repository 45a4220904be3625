"""The relay's part in end-to-end encryption (cmdop.relay.host_keys and the router): it hands out
the key an agent registered in its hello, by the same host resolution as calls, only within the
caller's workspace; it forwards a sealed call's bytes untouched and needs no tool name for it."""

from __future__ import annotations

import asyncio
from typing import Any

from cmdop.relay.proto import relay_pb2 as pb
from cmdop.relay.router import Router

from relay_fakes import FakeStream, direct_call, fake_store, next_frame

KEY = b"k" * 1216


async def _link(router: Router, secret: str, host: str, mid: str, key: bytes) -> FakeStream:
    s = FakeStream(secret)
    await s.incoming.put(pb.AgentFrame(hello=pb.Hello(protocol_version=1, hostname=host,
                                                      machine_id=mid, agent_version="t",
                                                      e2e_key=key)))
    asyncio.ensure_future(router.agent_link(s))
    await next_frame(s, "welcome")
    return s


def test_host_key_answers_by_name_within_the_workspace_only() -> None:
    async def main() -> None:
        router = Router(fake_store())
        await _link(router, "K1", "web1", "mid-1", KEY)
        cases: list[tuple[str, str, str]] = [
            ("K2", "web1", ""),                 # another key of the workspace: the key
            ("K2", "web", ""),                  # a unique prefix, as a call resolves it
            ("K2", "db", "host_unknown"),
            ("K3", "web1", "host_unknown"),     # another workspace: not even named
        ]
        for secret, host, failure in cases:
            reply = await router.host_key(FakeStream(secret), pb.HostKeyRequest(host=host))
            assert reply.failure.code == failure, (secret, host, reply)
            if not failure:
                assert (reply.name, reply.machine_id, reply.e2e_key) == ("web1", "mid-1", KEY)
    asyncio.run(main())


def test_a_link_can_ask_for_a_host_key_for_its_own_cli() -> None:
    async def main() -> None:
        router = Router(fake_store())
        await _link(router, "K1", "web1", "mid-1", KEY)
        me = await _link(router, "K2", "laptop", "mid-2", b"")
        await me.incoming.put(pb.AgentFrame(key_query=pb.HostKeyRequest(host="web1",
                                                                        query_id="q1")))
        answer = await next_frame(me, "key_answer")
        assert (answer.query_id, answer.e2e_key) == ("q1", KEY)
    asyncio.run(main())


def test_a_sealed_call_is_forwarded_untouched_without_a_tool_name() -> None:
    async def main() -> None:
        router = Router(fake_store())
        agent = await _link(router, "K1", "web1", "mid-1", KEY)
        sealed = bytes(range(256)) * 8
        caller, task = await direct_call(router, "K2", pb.CallStart(
            call_id="c1", host="web1", sealed=sealed, stream=True))
        call = await next_frame(agent, "call")
        assert call.sealed == sealed and not call.tool and not call.input_json
        await agent.incoming.put(pb.AgentFrame(result=pb.Result(call_id=call.call_id,
                                                                result_json=b"\x01\x02opaque")))
        result: Any = await next_frame(caller, "result")
        assert result.result_json == b"\x01\x02opaque"
        await task
    asyncio.run(main())


def test_a_host_key_query_on_a_link_is_always_answered(monkeypatch: Any) -> None:
    # The linked machine's CLI waits for the answer: an unexpected error while looking up the
    # host (a store error) must come back as a failure at once — it was lost with the task, and
    # the CLI waited out its timeout and told the user to upgrade the relay.
    from cmdop.relay import host_keys

    async def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("the store said something unexpected")

    async def main() -> None:
        router = Router(fake_store())
        agent = await _link(router, "K1", "web1", "mid-1", KEY)
        monkeypatch.setattr(host_keys, "lookup", broken)
        await agent.incoming.put(pb.AgentFrame(key_query=pb.HostKeyRequest(query_id="q1",
                                                                           host="web1")))
        answer = await next_frame(agent, "key_answer")
        assert answer.query_id == "q1" and answer.failure.code == "unavailable", answer
    asyncio.run(main())
