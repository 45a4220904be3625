"""Red team, in-process: attacks on the relay router, its store and the agent's relay glue.

Each test is one attack. A plain test is an attack that is correctly blocked today (it guards the
behaviour). A test marked `xfail(strict=True, reason="ATTACK WORKS: ...")` is an attack that
works today: it asserts the behaviour we want, so it fails now; fix the product, then remove the
mark. The router runs on asyncio with fake streams (no network); identity tests use the real
SQLite store in a temporary directory so the machine/key binding is the product's own.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from cmdop.adapters.relay_grpc import MAX_MESSAGE, RelayRefusal
from cmdop.relay import routing
from cmdop.relay.proto import relay_pb2 as pb
from cmdop.relay.router import Router
from cmdop.relay.store import RelayStore

from relay_fakes import (FakeStore, FakeStream, Key, Machine, call_start as _start,  # noqa: F401
                         direct_call as _direct, fake_store as _fake_store,
                         link_agent as _agent, next_frame as _next)

@pytest.fixture
def store(tmp_path: Path) -> Any:
    """The real store: workspaces demo (keys ops, dev) and other (key ops)."""
    s = RelayStore.open(str(tmp_path / "relay"))
    s.create_workspace("demo")
    s.create_workspace("other")
    keys = {}
    for ws, name in (("demo", "ops"), ("demo", "dev"), ("other", "ops")):
        info, text = s.create_key(ws, name)
        keys[f"{ws}/{name}"] = (info, text)
    s.keys = keys  # type: ignore[attr-defined]
    yield s
    s.close()


def _text(store: Any, which: str) -> str:
    return str(store.keys[which][1])


def _id(store: Any, which: str) -> str:
    return str(store.keys[which][0].id)


async def _next_event(stream: FakeStream, kinds: tuple[str, ...], timeout: float = 5.0) -> Any:
    """The next `event` frame (on an agent link) whose kind is one of `kinds`."""
    while True:
        frame = await asyncio.wait_for(stream.out.get(), timeout)
        if frame.WhichOneof("kind") == "event" and frame.event.WhichOneof("kind") in kinds:
            return frame.event


async def _stop(*tasks: asyncio.Task[Any]) -> None:
    # Cancelled more than once: Router.call swallows a cancellation that reached its route task
    # and then writes a "cancelled" failure, which hangs on a caller that never reads.
    for _ in range(5):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            break
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.2)
    await asyncio.gather(*tasks, return_exceptions=True)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


# == identity: who the agent is told is calling ==================================================


def test_a_callers_own_principal_is_ignored(store: Any) -> None:
    """Attack: a direct caller fills CallStart.caller with kind self / local, another name and
    host. Blocked: the relay stamps a fresh Principal (remote, its key's name, no machine)."""
    async def main() -> None:
        router = Router(store)
        agent, link = await _agent(router, _text(store, "demo/ops"), "web01", "m-web01")
        for i, kind in enumerate(("self", "local", "guest")):
            forged = pb.Principal(kind=kind, workspace="demo", name="ops", credential="unix",
                                  hostname="web01", machine_id="m-web01")
            caller, call = await _direct(router, _text(store, "demo/dev"),
                                         _start(f"c{i}", "web01", caller=forged))
            fwd = await _next(agent, "call")
            assert (fwd.caller.kind, fwd.caller.name, fwd.caller.hostname,
                    fwd.caller.machine_id, fwd.caller.credential) == ("remote", "dev", "", "", "api_key")
            await agent.incoming.put(pb.AgentFrame(result=pb.Result(call_id=fwd.call_id,
                                                                    result_json=b"{}")))
            await _next(caller, "result")
            await call
        await _stop(link)
    run(main())


def test_a_direct_call_with_the_machines_own_key_is_still_remote(store: Any) -> None:
    """Attack: call web01 directly with the very key web01 enrolled with. Blocked: without the
    call arriving on an enrolled agent link it is `remote`."""
    async def main() -> None:
        router = Router(store)
        agent, link = await _agent(router, _text(store, "demo/ops"), "web01", "m-web01")
        caller, call = await _direct(router, _text(store, "demo/ops"), _start("c1", "web01"))
        fwd = await _next(agent, "call")
        assert fwd.caller.kind == "remote" and fwd.caller.hostname == ""
        await _stop(call, link)
    run(main())


def test_a_call_through_another_keys_link_is_remote(store: Any) -> None:
    """Attack: dev links its own machine and calls ops's machine through that link, hoping the
    verified-machine path makes it self. Blocked: self needs the same key on both ends."""
    async def main() -> None:
        router = Router(store)
        web, l1 = await _agent(router, _text(store, "demo/ops"), "web01", "m-web01")
        dev, l2 = await _agent(router, _text(store, "demo/dev"), "laptop", "m-laptop")
        await dev.incoming.put(pb.AgentFrame(call=_start("x1", "web01")))
        fwd = await _next(web, "call")
        assert fwd.caller.kind == "remote" and fwd.caller.name == "dev"
        await _stop(l1, l2)
    run(main())


@pytest.mark.xfail(strict=True, reason=(
    "ACCEPTED LIMIT (docs/relay.md, 'who is self'): an API key is the principal; whoever holds it can "
    "link a machine of their own and is then `self` on the key's other machines (the relay "
    "verifies the link, not who runs it). `self_bypass: false` on a receiver, or one key per "
    "person/machine, is the control."))
def test_a_made_up_machine_does_not_make_a_key_holder_self(store: Any) -> None:
    async def main() -> None:
        router = Router(store)
        web, l1 = await _agent(router, _text(store, "demo/ops"), "web01", "m-web01")
        # The attacker holds only the key (e.g. a CI runner's copy): no machine of its own.
        fake, l2 = await _agent(router, _text(store, "demo/ops"), "ci-runner", "made-up-id")
        await fake.incoming.put(pb.AgentFrame(call=_start("x1", "web01",
                                                          input_json=b'{"command":"id"}')))
        fwd = await _next(web, "call")
        assert fwd.caller.kind != "self", "a bare key + a made-up machine id is self"
        await _stop(l1, l2)
    run(main())


def test_a_link_cannot_borrow_another_machines_name_for_the_audit(store: Any) -> None:
    async def main() -> None:
        router = Router(store)
        web, l1 = await _agent(router, _text(store, "demo/ops"), "web01", "m-web01")
        db, l2 = await _agent(router, _text(store, "demo/ops"), "db01", "m-db01")
        spoof, l3 = await _agent(router, _text(store, "demo/dev"), "web01", "m-dev-box")
        names = {m.machine_id: m.name for m in store.list_machines("demo")}
        assert names["m-dev-box"] == "web01-2"              # the relay did tell them apart
        await spoof.incoming.put(pb.AgentFrame(call=_start("x1", "db01")))
        fwd = await _next(db, "call")
        assert fwd.caller.hostname != "web01", "the audit will name ops's web01 as the caller"
        await _stop(l1, l2, l3)
    run(main())


def test_a_relay_principal_can_never_make_a_caller_local() -> None:
    """Attack (a compromised or buggy relay): Principal.kind local / odd spellings. Blocked: the
    agent maps anything but exactly self / guest to remote."""
    from cmdop.core.calls import CallerKind
    from cmdop.daemon.relay_link import caller_from_principal

    for kind in ("local", "LOCAL", "Local", "Self", " self", "self\x00", "", "bypass", "unix"):
        assert caller_from_principal(pb.Principal(kind=kind, name="x")).kind is CallerKind.REMOTE
    assert caller_from_principal(pb.Principal(kind="self")).kind is CallerKind.SELF
    assert caller_from_principal(pb.Principal(kind="guest")).kind is CallerKind.GUEST
    assert caller_from_principal(pb.Principal()).user == "unknown"


# == call ids ====================================================================================


@pytest.mark.parametrize("cid", ["k1:c1", "", "a" * 65, "c 1", "c\n1", "c/1", "ç", "c1:"])
def test_malformed_call_ids_are_refused(cid: str) -> None:
    """Attack: a call id with ':' to land in another key's namespace ("<key id>:<id>"), or
    control characters / very long ones. Blocked: ids are 1-64 of [A-Za-z0-9._-]."""
    async def main() -> None:
        router = Router(_fake_store())
        agent, link = await _agent(router, "K1", "web01", "m1")
        caller, call = await _direct(router, "K2", _start(cid, "web01"))
        with pytest.raises(RelayRefusal) as exc:
            await call
        assert exc.value.code == "invalid_argument"
        # and through an agent link: a bad_call event, nothing forwarded
        await agent.incoming.put(pb.AgentFrame(call=_start(cid, "web01")))
        ev = await _next_event(agent, ("failure",))
        assert ev.failure.code == "bad_call"
        assert agent.out.empty()
        await _stop(link)
    run(main())


def test_the_same_call_id_from_two_keys_never_collides() -> None:
    """Attack: dev reuses ops's call id (seen in a log) to block or hijack ops's call. Blocked:
    ids are namespaced by key; both calls reach the agent, each answer goes to its own caller."""
    async def main() -> None:
        router = Router(_fake_store())
        agent, link = await _agent(router, "K1", "web01", "m1")
        c1, t1 = await _direct(router, "K1", _start("same", "web01"))
        f1 = await _next(agent, "call")
        c2, t2 = await _direct(router, "K2", _start("same", "web01"))
        f2 = await _next(agent, "call")
        assert f1.call_id != f2.call_id
        await agent.incoming.put(pb.AgentFrame(result=pb.Result(call_id=f2.call_id,
                                                                result_json=b'{"who":2}')))
        await agent.incoming.put(pb.AgentFrame(result=pb.Result(call_id=f1.call_id,
                                                                result_json=b'{"who":1}')))
        assert (await _next(c1, "result")).result_json == b'{"who":1}'
        assert (await _next(c2, "result")).result_json == b'{"who":2}'
        await asyncio.gather(t1, t2)
        await _stop(link)
    run(main())


def test_a_replayed_call_id_is_not_run_twice_by_the_agent() -> None:
    """Attack: the same (namespaced) call id delivered twice to an agent. Blocked: the agent
    answers `duplicate` and runs nothing."""
    import queue
    from collections import OrderedDict

    import trio

    from cmdop.daemon.relay_link import Link, LinkState

    ran: list[Any] = []

    class Service:
        async def run_call(self, *a: Any, **kw: Any) -> Any:
            ran.append(a)
            return {"exit_code": 0}

    class Daemon:
        service = Service()
        settings = type("S", (), {"home": "/"})()
        current_link = None

    from cmdop.adapters import e2e
    from cmdop.daemon.relay_link import E2EConfig

    key = e2e.load_private(e2e.generate_private())

    async def main() -> None:
        link = Link(Daemon(), LinkState(), OrderedDict(),  # type: ignore[arg-type]
                    e2e=E2EConfig(key, "m1", True, frozenset()))
        sealed = e2e.seal_request(e2e.Request(
            call_id="c1", machine_id="m1", caller="", tool="execute_command",
            input_json=b'{"command":"true"}', response_key=e2e.new_response_key()), key.public)
        start = pb.CallStart(call_id="k2:c1", sealed=sealed, caller=pb.Principal(kind="remote"))
        await link._forwarded(start)
        await link._forwarded(start)
        frames = []
        while True:
            try:
                frames.append(link.outq.get_nowait())
            except queue.Empty:
                break
        kinds = [f.WhichOneof("kind") for f in frames]
        assert len(ran) == 1
        assert kinds.count("failure") == 1
        assert [f.failure.code for f in frames if f.WhichOneof("kind") == "failure"] == ["duplicate"]

    trio.run(main)


# == a misbehaving agent =========================================================================


def test_an_agent_cannot_answer_or_stream_into_another_machines_call() -> None:
    """Attack: db01's agent (another key) sends result/chunk/failure frames carrying the call id
    web01 was given, to feed web01's caller fake output. Blocked: an agent's frames are looked up
    only among the calls routed to its own link."""
    async def main() -> None:
        router = Router(_fake_store())
        web, l1 = await _agent(router, "K1", "web01", "m1")
        evil, l2 = await _agent(router, "K2", "db01", "m2")
        caller, call = await _direct(router, "K1", _start("c1", "web01", stream=True))
        fwd = await _next(web, "call")
        for frame in (pb.AgentFrame(chunk=pb.Chunk(call_id=fwd.call_id, fd=1, data=b"evil")),
                      pb.AgentFrame(failure=pb.Failure(call_id=fwd.call_id, code="revoked")),
                      pb.AgentFrame(result=pb.Result(call_id=fwd.call_id, result_json=b'{"x":1}')),
                      pb.AgentFrame(credit=pb.Credit(call_id=fwd.call_id, bytes=1 << 30)),
                      pb.AgentFrame(cancel=pb.Cancel(call_id="c1"))):
            await evil.incoming.put(frame)
        await asyncio.sleep(0.1)
        assert caller.out.empty()
        await web.incoming.put(pb.AgentFrame(result=pb.Result(call_id=fwd.call_id,
                                                              result_json=b'{"ok":1}')))
        assert (await _next(caller, "result")).result_json == b'{"ok":1}'
        await call
        await _stop(l1, l2)
    run(main())


def test_an_agent_link_must_start_with_hello() -> None:
    """Attack: frames before Hello (a call, a result). Blocked: the link is refused."""
    async def main() -> None:
        router = Router(_fake_store())
        for first in (pb.AgentFrame(call=_start("x", "web01")),
                      pb.AgentFrame(result=pb.Result(call_id="k1:x")), None):
            s = FakeStream("K1")
            await s.incoming.put(first)
            with pytest.raises(RelayRefusal) as exc:
                await router.agent_link(s)
            assert exc.value.code == "invalid_argument"
        assert router.links == {}
    run(main())


def test_the_agent_ignores_events_for_outgoing_calls_it_did_not_start() -> None:
    """Attack (a buggy relay or a crossed stream): events for call ids the agent never started.
    Blocked: ignored, no exception on the link's reader."""
    from collections import OrderedDict

    import trio

    from cmdop.daemon.relay_link import Link, LinkState

    async def main() -> None:
        link = Link(object(), LinkState(), OrderedDict())  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            for ev in (pb.CallEvent(result=pb.Result(call_id="nope")),
                       pb.CallEvent(chunk=pb.Chunk(call_id="nope", data=b"x")),
                       pb.CallEvent()):
                link.handle(pb.RelayFrame(event=ev), nursery)
            link.handle(pb.RelayFrame(credit=pb.Credit(call_id="nope", bytes=5)), nursery)
            link.handle(pb.RelayFrame(cancel=pb.Cancel(call_id="nope")), nursery)

    trio.run(main)


def test_an_agent_ignoring_credit_cannot_make_the_relay_buffer_without_bound() -> None:
    chunk = b"A" * (256 * 1024)
    consumed = [0]

    class GreedyAgent(FakeStream):
        """Hello, then - once a call arrives - chunk frames for it, as fast as they are read."""

        def __init__(self) -> None:
            super().__init__("K2")
            self.cid = ""
            self.hello_sent = False
            self.have_call = asyncio.Event()

        async def read(self) -> Any:
            if not self.hello_sent:
                self.hello_sent = True
                return pb.AgentFrame(hello=pb.Hello(protocol_version=1, hostname="sink",
                                                    machine_id="m-sink"))
            await self.have_call.wait()
            if consumed[0] >= 256 * len(chunk):          # 64 MiB offered in all
                await asyncio.Event().wait()
            consumed[0] += len(chunk)
            return pb.AgentFrame(chunk=pb.Chunk(call_id=self.cid, fd=1, data=chunk))

        async def write(self, frame: Any) -> None:
            if frame.WhichOneof("kind") == "call":
                self.cid = frame.call.call_id
                self.have_call.set()

    async def main() -> None:
        router = Router(_fake_store())
        agent = GreedyAgent()
        link = asyncio.ensure_future(router.agent_link(agent))
        await asyncio.sleep(0.05)
        # the caller reads the first event, then never again (its writes hang)
        caller, call = await _direct(router, "K2", _start("c1", "sink", stream=True),
                                     block_writes=True)
        await asyncio.sleep(1)
        ended = link.done() or not router.links
        held = consumed[0] - len(chunk)                 # one chunk reached the caller
        await _stop(call, link)
        assert ended or held <= 8 * 1024 * 1024, (
            f"the relay holds {held >> 20} MiB of chunks the caller has not read")
    run(main())


def test_a_deaf_agent_cannot_make_the_relay_queue_without_bound() -> None:
    async def main() -> None:
        router = Router(_fake_store())
        deaf, link = await _agent(router, "K2", "deaf", "m-deaf", block_writes=True)
        big = b'{"command":"' + b"A" * (1024 * 1024) + b'"}'
        callers = [await _direct(router, "K2", _start(f"c{i}", "deaf", input_json=big))
                   for i in range(64)]
        await asyncio.sleep(0.5)
        refused = 0
        for caller, task in callers:
            if task.done() or not caller.out.empty():
                refused += 1
        link_dropped = link.done()
        await _stop(link, *(t for _, t in callers))
        # 64 MiB of calls queued for a link that has read nothing: either calls are refused
        # once a bound is reached, or the unresponsive link is dropped.
        assert link_dropped or refused > 0, "64 MiB queued for an agent that reads nothing"
    run(main())


def test_an_oversized_call_fails_alone_and_does_not_drop_the_targets_link() -> None:
    async def main() -> None:
        router = Router(_fake_store())
        agent, link = await _agent(router, "K1", "web01", "m1", max_frame=MAX_MESSAGE)
        # an innocent call in flight on web01
        victim, vcall = await _direct(router, "K1", _start("v1", "web01"))
        await _next(agent, "call")
        # the attacker's call frame fits the 4 MiB limit; the forwarded one does not
        n = MAX_MESSAGE - 64
        def frame(n: int) -> pb.CallerFrame:
            return pb.CallerFrame(start=_start("big", "web01", tool="read_file",
                                               input_json=b'{"path":"' + b"A" * n + b'"}'))
        while frame(n).ByteSize() > MAX_MESSAGE:
            n -= 1
        attacker = FakeStream("K2")
        await attacker.incoming.put(frame(n))
        acall = asyncio.ensure_future(router.call(attacker))
        await asyncio.sleep(0.3)
        alive = not link.done() and bool(router.links)
        victim_failed = not victim.out.empty()
        await _stop(acall, vcall, link)
        assert alive and not victim_failed, "the oversized call dropped web01's link"
    run(main())


# == revocation ==================================================================================


def test_revocation_cuts_a_links_outgoing_calls_and_its_reconnect() -> None:
    """Attack: keep using a key after it is revoked, through an open agent link. Blocked: the
    link ends (Failure revoked), its outgoing call ends, a new link and list_hosts are refused."""
    async def main() -> None:
        store = _fake_store()
        router = Router(store)
        web, l1 = await _agent(router, "K1", "web01", "m1")
        dev, l2 = await _agent(router, "K2", "laptop", "m2")
        await dev.incoming.put(pb.AgentFrame(call=_start("x1", "web01")))
        await _next(web, "call")
        store.revoked.add("k2")
        router.revoke(store.revoked_key_ids())
        failure = await _next(dev, "failure")
        assert failure.code == "revoked"
        await asyncio.wait_for(l2, 5)
        assert (await _next(web, "cancel")).call_id.startswith("k2:")
        for attempt in (router.agent_link(FakeStream("K2")),
                        router.list_hosts(FakeStream("K2"), pb.ListHostsRequest())):
            with pytest.raises(RelayRefusal) as exc:
                await attempt
            assert exc.value.code == "unauthenticated"
        await _stop(l1)
    run(main())


def test_a_key_revoked_while_its_link_waits_for_hello_gets_no_link() -> None:
    async def main() -> None:
        store = _fake_store()
        router = Router(store)
        web, l1 = await _agent(router, "K1", "web01", "m1")
        ghost = FakeStream("K2")
        l2 = asyncio.ensure_future(router.agent_link(ghost))   # authenticates now
        await asyncio.sleep(0.05)
        store.revoked.add("k2")
        store.version += 1
        router.revoke(store.revoked_key_ids())                  # the watcher's pass
        await ghost.incoming.put(pb.AgentFrame(hello=pb.Hello(protocol_version=1,
                                                              hostname="ghost", machine_id="g")))
        await ghost.incoming.put(pb.AgentFrame(call=_start("x1", "web01")))
        reached = True
        try:
            await _next(web, "call", timeout=0.5)
        except asyncio.TimeoutError:
            reached = False
        await _stop(l1, l2)
        assert not reached, "a call of the revoked key reached web01"
    run(main())


def test_a_key_revoked_before_its_call_start_arrives_runs_nothing() -> None:
    async def main() -> None:
        store = _fake_store()
        router = Router(store)
        web, l1 = await _agent(router, "K1", "web01", "m1")
        caller = FakeStream("K2")
        call = asyncio.ensure_future(router.call(caller))
        await asyncio.sleep(0.05)
        store.revoked.add("k2")
        store.version += 1
        router.revoke(store.revoked_key_ids())
        await caller.incoming.put(pb.CallerFrame(start=_start("c1", "web01")))
        reached = True
        try:
            await _next(web, "call", timeout=0.5)
        except asyncio.TimeoutError:
            reached = False
        await _stop(l1, call)
        assert not reached, "a call of the revoked key reached web01"
    run(main())


def test_revocation_watching_survives_a_transient_store_error() -> None:
    async def main() -> None:
        store = _fake_store()
        router = Router(store)
        dev, l2 = await _agent(router, "K2", "laptop", "m2")
        watcher = asyncio.ensure_future(router.watch_revocations(every_s=0.01))
        store.fail_next_revoked_read = 1
        store.version += 1                     # something changed: the watcher reads, fails
        await asyncio.sleep(0.1)
        store.revoked.add("k2")
        store.version += 1                     # the revocation
        await asyncio.sleep(0.2)
        cut = l2.done()
        await _stop(watcher, l2)
        assert cut, "the revoked key's link is still up"
    run(main())


# == cross-tenant and naming =====================================================================


def test_a_key_of_another_workspace_sees_and_reaches_nothing(store: Any) -> None:
    """Attack: workspace `other` names a machine exactly like one of `demo`, lists hosts, calls
    by that name, links with demo's machine id. Blocked: everything is scoped to the key's
    workspace (the machine id makes a separate machine of `other`)."""
    async def main() -> None:
        router = Router(store)
        web, l1 = await _agent(router, _text(store, "demo/ops"), "web01", "m-web01")
        reply = await router.list_hosts(FakeStream(_text(store, "other/ops")), pb.ListHostsRequest())
        assert list(reply.hosts) == []
        caller, call = await _direct(router, _text(store, "other/ops"), _start("c1", "web01"))
        await call
        assert (await _next(caller, "failure")).code == "host_unknown"
        twin, l2 = await _agent(router, _text(store, "other/ops"), "web01", "m-web01")
        caller, call = await _direct(router, _text(store, "other/ops"), _start("c2", "web01"))
        fwd = await _next(twin, "call")
        assert fwd.caller.workspace == "other"
        assert web.out.empty() and not l1.done()       # demo's web01 untouched
        await _stop(call, l1, l2)
    run(main())


def test_another_live_key_cannot_take_over_a_machine(store: Any) -> None:
    """Attack: dev links with ops's machine id to receive web01's calls. Blocked (store binds a
    machine to its enrolling key): permission_denied, ops's link stays."""
    async def main() -> None:
        router = Router(store)
        web, l1 = await _agent(router, _text(store, "demo/ops"), "web01", "m-web01")
        s = FakeStream(_text(store, "demo/dev"))
        await s.incoming.put(pb.AgentFrame(hello=pb.Hello(protocol_version=1, hostname="web01",
                                                          machine_id="m-web01")))
        with pytest.raises(RelayRefusal) as exc:
            await router.agent_link(s)
        assert exc.value.code == "permission_denied"
        assert not l1.done()
        await _stop(l1)
    run(main())


def test_a_leaked_machine_id_does_not_let_another_key_take_over_after_a_rotation(store: Any) -> None:
    async def main() -> None:
        router = Router(store)
        web, l1 = await _agent(router, _text(store, "demo/ops"), "web01", "m-web01")
        dev, l2 = await _agent(router, _text(store, "demo/dev"), "devbox", "m-devbox")
        # web01 calls dev's machine once: dev's agent (and audit log) learn web01's machine id
        await web.incoming.put(pb.AgentFrame(call=_start("x1", "devbox")))
        leaked = (await _next(dev, "call")).caller.machine_id
        # ops's key is rotated: revoked (a new key for web01 will follow)
        store.revoke_key(_id(store, "demo/ops"))
        router.revoke(store.revoked_key_ids())
        await asyncio.wait_for(l1, 5)
        s = FakeStream(_text(store, "demo/dev"))
        await s.incoming.put(pb.AgentFrame(hello=pb.Hello(protocol_version=1, hostname="web01",
                                                          machine_id=leaked)))
        took = asyncio.ensure_future(router.agent_link(s))
        got = None
        try:
            got = await _next(s, "welcome", timeout=1)
        except (asyncio.TimeoutError, RelayRefusal):
            pass
        await _stop(took, l2)
        assert got is None or got.machine != "web01", "dev now receives web01's calls"
    run(main())


def test_a_prefix_a_user_relies_on_cannot_be_captured_by_another_keys_new_machine(store: Any) -> None:
    async def main() -> None:
        router = Router(store)
        prod, l1 = await _agent(router, _text(store, "demo/ops"), "web01-prod", "m-prod")
        caller, call = await _direct(router, _text(store, "demo/ops"), _start("c1", "web01"))
        first = await _next(prod, "call")                  # the unique prefix works today
        await prod.incoming.put(pb.AgentFrame(result=pb.Result(call_id=first.call_id,
                                                               result_json=b"{}")))
        await call
        trap, l2 = await _agent(router, _text(store, "demo/dev"), "web01", "m-trap")
        caller, call = await _direct(router, _text(store, "demo/ops"), _start("c2", "web01",
                                     input_json=b'{"command":"deploy --token s3cret"}'))
        captured = True
        try:
            await _next(trap, "call", timeout=0.5)
        except asyncio.TimeoutError:
            captured = False
        await _stop(call, l1, l2)
        assert not captured, "ops's call meant for web01-prod went to dev's new 'web01'"
    run(main())


def test_list_hosts_keeps_working_when_one_key_floods_the_workspace(store: Any) -> None:
    async def main() -> None:
        key_id = _id(store, "demo/dev")
        ws = store.get_workspace("demo")
        # what 12,000 Hellos with fresh machine ids leave behind (inserted directly: fast)
        rows = [(f"r{i:06d}", ws.id, f"{'h' * 60}-{i}", "h" * 200 + str(i), f"m{i}", key_id,
                 "v" * 64, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z") for i in range(12_000)]
        with store._write() as cur:
            cur.executemany("INSERT INTO machines (id, workspace_id, name, hostname, machine_id, "
                            "key_id, agent_version, first_seen, last_seen) VALUES "
                            "(?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        router = Router(store)
        reply = await router.list_hosts(FakeStream(_text(store, "demo/ops")), pb.ListHostsRequest())
        assert reply.ByteSize() <= MAX_MESSAGE, (
            f"ListHosts is {reply.ByteSize()} bytes: grpc refuses to send it")
    run(main())


# == throttle ====================================================================================


def test_failed_logins_are_refused_per_address_and_a_valid_key_does_not_reset_them() -> None:
    """Attack: guess keys from one address, interleaving a valid key to reset the counter.
    Blocked: refused after 30 failures, successes do not clear the count."""
    async def main() -> None:
        router = Router(_fake_store())
        router.throttle = routing.AuthThrottle(delay_s=0.0)    # no 1 s waits in the test
        for i in range(40):
            try:
                await router.list_hosts(FakeStream("cmdop_nope" if i % 5 else "K1", peer="6.6.6.6"),
                                        pb.ListHostsRequest())
            except RelayRefusal:
                pass
        with pytest.raises(RelayRefusal) as exc:
            await router.list_hosts(FakeStream("K1", peer="6.6.6.6"), pb.ListHostsRequest())
        assert exc.value.code == "resource_exhausted"
        assert router.counters.get("auth_refused", 0) >= 1
    run(main())


def test_the_login_throttle_counts_an_ipv6_slash64_as_one_client() -> None:
    t = routing.AuthThrottle()
    for i in range(100):
        t.failed(f"2001:db8:1:2::{i:x}", now=0.0)
    assert t.verdict("2001:db8:1:2::ffff", now=1.0)[0] == "refuse"


# == the floor and the relay's own secrets =======================================================


def test_the_relays_private_key_is_floor_for_remote_callers(tmp_path: Path) -> None:
    from cmdop.adapters.gatekeeper import Gatekeeper
    from cmdop.core.calls import Caller, CallerKind, ToolCall
    from cmdop.core.settings import Settings

    home = tmp_path / "home"
    data = home / ".local" / "share" / "cmdop-relay"
    data.mkdir(parents=True)
    (data / "relay.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    os.chmod(data / "relay.key", 0o600)
    policy = home / ".config" / "cmdop" / "permissions.yaml"
    policy.parent.mkdir(parents=True)
    policy.write_text("version: 1\nmode: bypass\nrules: []\n")
    os.chmod(policy, 0o600)
    gk = Gatekeeper(Settings.from_env({"HOME": str(home)}, str(home)))
    remote = Caller(kind=CallerKind.REMOTE, user="dev", workspace="demo", credential="api_key")
    d = gk.evaluate(ToolCall(tool="read_file", input={"path": str(data / "relay.key")}, cwd=str(home)),
                    remote)
    assert (d.decision, d.source) == ("deny", "floor"), d


# == injection through names ====================================================================


def test_a_hostile_hostname_cannot_forge_audit_lines_or_reach_a_terminal(store: Any,
                                                                         caplog: Any) -> None:
    """Attack: a link's Hello.hostname / machine_id carry a newline + a fake JSON record, an
    escape sequence and a right-to-left override, hoping to forge audit.log lines, log lines or
    `cmdop permissions audit` output on the target. Blocked: the relay names the machine from
    [a-z0-9._-] only; the audit line is one JSON line; the human audit row and the relay's text
    log show the characters escaped."""
    import logging
    from datetime import datetime, timezone

    from cmdop.adapters.logging_setup import TextFormatter
    from cmdop.cli.audit_cmd import _row
    from cmdop.core.audit import build_record, encode_line
    from cmdop.core.policy.decision import Decision
    from cmdop.daemon.relay_link import caller_from_principal

    evil = 'box\n{"decision":"allow","user":"root"}\x1b[2J\u202egnp.exe'

    async def main() -> Any:
        router = Router(store)
        web, l1 = await _agent(router, _text(store, "demo/ops"), "web01", "m-web01")
        with caplog.at_level(logging.INFO, logger="cmdop.relay"):
            bad, l2 = await _agent(router, _text(store, "demo/dev"), evil, evil[:100])
        allowed = set("abcdefghijklmnopqrstuvwxyz0123456789._-")
        assert all(set(m.name) <= allowed for m in store.list_machines("demo"))
        await bad.incoming.put(pb.AgentFrame(call=_start("x1", "web01")))
        fwd = await _next(web, "call")
        await _stop(l1, l2)
        return fwd

    fwd = run(main())
    caller = caller_from_principal(fwd.caller)
    rec = build_record(decision=Decision("deny", "mode", "no rule", "strict", "execute_command", "",
                                         "true"),
                       outcome="deny", tool_input={"command": "true"}, caller=caller,
                       now=datetime.now(timezone.utc))
    line = encode_line(rec)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    row = _row(rec)
    assert "\n" not in row and "\x1b" not in row and "\u202e" not in row
    for r in caplog.records:
        text = TextFormatter().format(r)
        assert "\n" not in text and "\x1b" not in text and "\u202e" not in text
