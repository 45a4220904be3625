"""The relay router with a slow or unreachable store, in-process (asyncio, fake streams, a fake
store whose calls can block or fail like a PostgreSQL server that hangs or is down).

What a user would notice: one caller stuck on the database does not stall the other streams
of the node; a database that is down refuses new credentials and lookups clearly (unavailable,
try again) while links already made keep the identity verified when they were made; limits
and revocations still hold while store reads are in flight."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

import pytest

from cmdop.adapters.relay_grpc import RelayRefusal
from cmdop.core.errors import StoreUnavailableError
from cmdop.relay.auth import BearerVerifier
from cmdop.relay.proto import relay_pb2 as pb
from cmdop.relay.router import Router
from cmdop.relay.tokens import SigningKey, issue_access_token

from relay_fakes import FakeStore, FakeStream, call_start, direct_call, fake_store, link_agent, next_frame

ISS, AUD = "https://relay.test", "cmdop-relay:test"


class OutageStore(FakeStore):
    """FakeStore whose reads fail while `down`, and whose host lookups wait for `gate` (a
    database that answers slowly) when one is set."""

    down = False
    gate: threading.Event | None = None
    waiting = 0

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailableError("the relay's database at db:5432 is not reachable")

    def verify_key(self, text: str) -> Any:
        self._check()
        return super().verify_key(text)

    def access_token_allowed(self, account_id: str, workspace: str, jti: str) -> bool:
        self._check()
        return True

    def find_machine(self, workspace: str, machine_id: str) -> Any:
        self._check()
        return super().find_machine(workspace, machine_id)

    def host_candidates(self, workspace: str, host: str) -> list[Any]:
        self._check()
        gate = self.gate
        if gate is not None:
            self.waiting += 1
            gate.wait(30)           # released by the test; bounded so a failure cannot hang
        return super().host_candidates(workspace, host)


def outage_store() -> OutageStore:
    base = fake_store()
    return OutageStore(keys=base.keys)


async def until(pred: Callable[[], Any], what: str) -> None:
    """Wait (bounded) for `pred()`: a thread or a task of the router to get somewhere."""
    for _ in range(1000):
        if pred():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never: {what}")


def test_a_caller_stuck_on_the_database_does_not_stall_other_streams() -> None:
    async def main() -> None:
        store = outage_store()
        router = Router(store)
        agent, _ = await link_agent(router, "K1", "web01", "m1")
        first, first_task = await direct_call(router, "K2", call_start("c1", "web01"))
        call = await next_frame(agent, "call")
        store.gate = threading.Event()               # the database stops answering lookups
        stuck, stuck_task = await direct_call(router, "K2", call_start("c2", "web01"))
        await until(lambda: store.waiting == 1, "the second call to wait on the store")
        # The event loop is free: the first call's result still reaches its caller.
        await agent.incoming.put(pb.AgentFrame(result=pb.Result(call_id=call.call_id,
                                                                result_json=b"{}")))
        assert (await next_frame(first, "result")).call_id == "c1"
        await first_task
        assert not stuck_task.done()
        store.gate.set()
        assert (await next_frame(agent, "call")).call_id == "k2:c2"
        stuck_task.cancel()
    asyncio.run(main())


def test_the_per_key_call_limit_holds_while_lookups_are_in_flight() -> None:
    async def main() -> None:
        store = outage_store()
        router = Router(store, max_calls_per_key=2)
        await link_agent(router, "K1", "web01", "m1")
        store.gate = threading.Event()
        tasks = [(await direct_call(router, "K2", call_start(f"c{i}", "web01")))[1] for i in (1, 2)]
        await until(lambda: store.waiting == 2, "two calls to be resolving their host")
        _, third = await direct_call(router, "K2", call_start("c3", "web01"))
        with pytest.raises(RelayRefusal) as refused:
            await third
        assert refused.value.code == "resource_exhausted"
        store.gate.set()
        for t in tasks:
            t.cancel()
    asyncio.run(main())


def test_a_key_revoked_during_its_host_lookup_is_never_forwarded() -> None:
    async def main() -> None:
        store = outage_store()
        router = Router(store)
        agent, _ = await link_agent(router, "K1", "web01", "m1")
        store.gate = threading.Event()
        caller, task = await direct_call(router, "K2", call_start("c1", "web01"))
        await until(lambda: store.waiting == 1, "the call to be resolving its host")
        router.revoke(frozenset({"k2"}))
        store.gate.set()
        failure = await next_frame(caller, "failure")
        assert failure.code == "revoked"
        await task
        assert agent.out.empty()                      # the agent never saw the call
    asyncio.run(main())


@pytest.mark.parametrize("rpc", ["call", "list_hosts", "link"])
def test_database_down_refuses_new_credentials_clearly(rpc: str) -> None:
    async def main() -> None:
        store = outage_store()
        router = Router(store)
        store.down = True
        stream = FakeStream("K2")
        if rpc == "call":
            await stream.incoming.put(pb.CallerFrame(start=call_start("c1", "web01")))
            attempt = router.call(stream)
        elif rpc == "list_hosts":
            attempt = router.list_hosts(stream, pb.ListHostsRequest())
        else:
            await stream.incoming.put(pb.AgentFrame(hello=pb.Hello(
                protocol_version=1, hostname="h", machine_id="m9", agent_version="t")))
            attempt = router.agent_link(stream)
        with pytest.raises(RelayRefusal) as refused:
            await attempt
        assert refused.value.code == "unavailable"
        assert "database is unreachable" in refused.value.message
        assert "try again shortly" in refused.value.message
        assert "db:5432" not in refused.value.message         # the address stays in the log
    asyncio.run(main())


def test_a_linked_agents_own_call_with_the_database_down_fails_clearly() -> None:
    async def main() -> None:
        store = outage_store()
        router = Router(store)
        me, _ = await link_agent(router, "K1", "laptop", "m1")
        store.down = True
        await me.incoming.put(pb.AgentFrame(call=call_start("o1", "web01")))
        failure = await next_frame(me, "event")
        assert (failure.failure.call_id, failure.failure.code) == ("o1", "unavailable")
        assert "database is unreachable" in failure.failure.message
        store.down = False                                  # the link itself lived on
        await me.incoming.put(pb.AgentFrame(call=call_start("o2", "nowhere")))
        assert (await next_frame(me, "event")).failure.code == "host_unknown"
    asyncio.run(main())


def _token(signing: SigningKey, jti: str, ttl_s: int) -> str:
    return issue_access_token(signing, issuer=ISS, audience=AUD, account_id="a1",
                              email="alice@example.com", workspace="demo", scope="relay",
                              client_id="cmdop-cli", now=time.time(), ttl_s=ttl_s, jti=jti)[0]


def test_a_login_link_keeps_its_identity_through_an_outage_and_fails_closed_on_new_tokens() -> None:
    """A relay-signed access token verifies by signature, but its deny list and account state
    are in the database: with it down, a new token is not accepted (fail closed), neither on a
    new call nor as a Reauth. The live link is not cut: it keeps the identity verified when it
    was made until that token expires; a Reauth once the database is back extends it."""
    async def main() -> None:
        store = outage_store()
        signing = SigningKey.generate()
        router = Router(store, verifier=BearerVerifier(store, signing_key=signing, issuer=ISS,
                                                       audience=AUD))
        agent, link_task = await link_agent(router, _token(signing, "t1", 600), "web01", "m1")
        link = next(iter(router.links.values()))
        first_expiry = link.key.expires_at
        store.down = True
        with pytest.raises(RelayRefusal) as refused:            # a new caller, same account
            await router.list_hosts(FakeStream(_token(signing, "t2", 600)), pb.ListHostsRequest())
        assert refused.value.code == "unavailable"
        await agent.incoming.put(pb.AgentFrame(reauth=pb.Reauth(token=_token(signing, "t3", 3600))))
        await until(lambda: router.counters.get("reauth_store_unavailable"), "the reauth to fail")
        assert not link.ended.is_set() and link.key.token_id == "t1"
        assert link.key.expires_at == first_expiry
        store.down = False
        await agent.incoming.put(pb.AgentFrame(reauth=pb.Reauth(token=_token(signing, "t4", 3600))))
        await until(lambda: router.counters.get("reauths"), "the reauth to pass")
        assert link.key.token_id == "t4" and link.key.expires_at > first_expiry
        assert not link.ended.is_set() and not link_task.done()
    asyncio.run(main())


@pytest.mark.parametrize("fails", ["enroll", "credential"])
def test_a_statement_the_database_refuses_is_the_relays_failure_not_the_clients(fails: str) -> None:
    # A PostgreSQL statement error (not a lost connection) while linking an agent: it was
    # answered as `permission_denied` with the database's address and words, so the agent
    # backed off as if its key were refused. Now: unavailable, and the detail stays in the log.
    from cmdop.core.errors import StoreStatementError

    statement = StoreStatementError("the relay's database at db:5432 refused a statement: "
                                    "relation \"cmdop.machines\" does not exist")

    class Refusing(OutageStore):
        def enroll_machine(self, *a: Any, **k: Any) -> Any:
            raise statement

        def verify_key(self, text: str) -> Any:
            if fails == "credential":
                raise statement
            return super().verify_key(text)

    async def main() -> None:
        base = fake_store()
        router = Router(Refusing(keys=base.keys))
        stream = FakeStream("K1")
        await stream.incoming.put(pb.AgentFrame(hello=pb.Hello(
            protocol_version=1, hostname="h", machine_id="m9", agent_version="t")))
        with pytest.raises(RelayRefusal) as refused:
            await router.agent_link(stream)
        assert refused.value.code == "unavailable", refused.value
        assert "db:5432" not in refused.value.message and "relation" not in refused.value.message
    asyncio.run(main())


def test_a_sqlite_write_waiting_on_its_lock_does_not_stall_other_streams() -> None:
    # SQLite's reads never wait (WAL), but a write waits up to its busy timeout behind an
    # admin command's transaction: an agent enrolling then must not stop every other stream.
    class LockedWrites(OutageStore):
        blocking_io = False                     # as RelayStore (SQLite)

        write_lock: threading.Event | None = None

        def enroll_machine(self, *a: Any, **k: Any) -> Any:
            if self.write_lock is not None:
                self.waiting += 1
                self.write_lock.wait(30)
            return super().enroll_machine(*a, **k)

    async def main() -> None:
        base = fake_store()
        store = LockedWrites(keys=base.keys)
        router = Router(store)
        agent, _ = await link_agent(router, "K1", "web01", "m1")
        store.write_lock = threading.Event()    # another process holds the write lock
        late = FakeStream("K1")
        await late.incoming.put(pb.AgentFrame(hello=pb.Hello(
            protocol_version=1, hostname="db01", machine_id="m2", agent_version="t")))
        late_task = asyncio.ensure_future(router.agent_link(late))
        await until(lambda: store.waiting == 1, "the new agent to wait on the write lock")
        first, first_task = await direct_call(router, "K2", call_start("c1", "web01"))
        call = await next_frame(agent, "call")            # the loop still routes calls
        await agent.incoming.put(pb.AgentFrame(result=pb.Result(call_id=call.call_id,
                                                                result_json=b"{}")))
        assert (await next_frame(first, "result")).call_id == "c1"
        await first_task
        store.write_lock.set()
        await next_frame(late, "welcome")
        late_task.cancel()
    asyncio.run(main())
