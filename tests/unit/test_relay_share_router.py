"""Guest shares in the relay, in-process: the real SQLite store and bearer verifier behind the
router, fake streams for grpc's. A share is minted, listed and revoked by a workspace member;
a guest's call is refused on another machine, after expiry, after revocation (mid-call too),
beyond its uses — each with its own code — and otherwise forwarded as kind "guest" with the
share's id, tools and note. The token is stored only as its hash."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cmdop.adapters.relay_grpc import RelayRefusal
from cmdop.relay.auth import BearerVerifier
from cmdop.relay.proto import relay_pb2 as pb
from cmdop.relay.router import Router
from cmdop.relay.store import RelayStore

from relay_fakes import FakeStream, call_start, link_agent, next_frame


def _expire(store: Any, share_id: str) -> None:
    """Move the share's expiry into the past, as time passing would."""
    db = sqlite3.connect(store.path)
    with db:
        db.execute("UPDATE shares SET expires = expires - 86400 WHERE id = ?", (share_id,))
    db.close()


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with RelayStore.open(str(tmp_path / "relay")) as s:
        s.create_workspace("demo")
        s.create_workspace("other")
        yield s


def _keys(store: Any) -> dict[str, str]:
    return {name: store.create_key(ws, name)[1]
            for ws, name in (("demo", "ops"), ("demo", "dev"), ("other", "x"))}


async def _setup(store: Any) -> tuple[Router, dict[str, str], FakeStream, FakeStream]:
    """web01 and db01 linked with the key `ops`; `dev` is another member's key."""
    router = Router(store, verifier=BearerVerifier(store))
    keys = _keys(store)
    a, _ = await link_agent(router, keys["ops"], "web01", "m1")
    b, _ = await link_agent(router, keys["ops"], "db01", "m2")
    return router, keys, a, b


async def _share(router: Router, key: str, **kw: Any) -> pb.ShareInfo:
    kw.setdefault("host", "web01")
    kw.setdefault("ttl_s", 3600)
    info: pb.ShareInfo = await router.create_share(FakeStream(key), pb.CreateShareRequest(**kw))
    return info


async def _guest_call(router: Router, token: str, host: str, cid: str = "g1",
                      tool: str = "execute_command") -> tuple[FakeStream, asyncio.Task[None]]:
    caller = FakeStream(token)
    await caller.incoming.put(pb.CallerFrame(start=call_start(cid, host, tool)))
    return caller, asyncio.ensure_future(router.call(caller))


async def _refused(router: Router, token: str, host: str) -> pb.Failure:
    caller, task = await _guest_call(router, token, host)
    failure: pb.Failure = await next_frame(caller, "failure")
    await task
    return failure


def test_a_guest_call_is_forwarded_as_guest_with_the_shares_id_tools_and_note(store):
    async def main() -> None:
        router, keys, a, _ = await _setup(store)
        info = await _share(router, keys["ops"], tools=["execute_command,read_file"],
                            note="bob, ticket 42", max_uses=5)
        assert info.token.startswith("cmdop_share_") and info.id.startswith("sh_")
        assert (info.host, info.state, info.uses, info.max_uses) == ("web01", "active", 0, 5)
        caller, task = await _guest_call(router, info.token, "web01")
        forwarded = await next_frame(a, "call")
        p = forwarded.caller
        assert (p.kind, p.credential, p.share_id, p.note, list(p.tools)) == (
            "guest", "share", info.id, "bob, ticket 42", ["execute_command", "read_file"])
        assert not p.hostname and not p.machine_id                 # never a verified machine
        await a.incoming.put(pb.AgentFrame(result=pb.Result(call_id=forwarded.call_id,
                                                            result_json=b'{"exit_code":0}')))
        assert (await next_frame(caller, "result")).result_json == b'{"exit_code":0}'
        await task
        listed = await router.list_shares(FakeStream(keys["dev"]), pb.ListSharesRequest())
        assert [(s.id, s.uses, s.token) for s in listed.shares] == [(info.id, 1, "")]
    asyncio.run(main())


def test_each_refusal_has_its_own_code_and_names_nothing_else_of_the_workspace(store):
    async def main() -> None:
        router, keys, a, _ = await _setup(store)
        info = await _share(router, keys["ops"], max_uses=1, ttl_s=60)
        for host in ("db01", "nope", "", "d"):                       # another, unknown, a prefix
            failure = await _refused(router, info.token, host)
            assert failure.code == "share_wrong_host" and "web01" in failure.message, failure
            assert "db01" not in failure.message
        caller, task = await _guest_call(router, info.token, "web01")   # the one use
        forwarded = await next_frame(a, "call")
        await a.incoming.put(pb.AgentFrame(result=pb.Result(call_id=forwarded.call_id,
                                                            result_json=b"{}")))
        await task
        assert (await _refused(router, info.token, "web01")).code == "share_used_up"
        second = await _share(router, keys["ops"], ttl_s=60)
        _expire(store, second.id)
        assert (await _refused(router, second.token, "web01")).code == "share_expired"
        third = await _share(router, keys["ops"], no_expiry=True, ttl_s=0)
        assert third.expires == ""
        await router.revoke_share(FakeStream(keys["dev"]), pb.RevokeShareRequest(id=third.id))
        assert (await _refused(router, third.token, "web01")).code == "share_revoked"
    asyncio.run(main())


def test_a_use_counts_only_for_a_call_that_is_forwarded(store):
    """Admitted (its use counted), then refused before reaching the agent — here too large to
    forward: the use is given back, and a one-use share still has its one call."""
    from cmdop.relay.router import MAX_FORWARD_BYTES

    async def main() -> None:
        router, keys, a, _ = await _setup(store)
        info = await _share(router, keys["ops"], max_uses=1)
        caller = FakeStream(info.token)
        big = b'{"command":"' + b"x" * MAX_FORWARD_BYTES + b'"}'
        await caller.incoming.put(pb.CallerFrame(start=call_start("g1", "web01", input_json=big)))
        task = asyncio.ensure_future(router.call(caller))
        assert (await next_frame(caller, "failure")).code == "too_large"
        await task
        assert store.get_share(info.id).uses == 0
        caller, task = await _guest_call(router, info.token, "web01", cid="g2")
        forwarded = await next_frame(a, "call")
        await a.incoming.put(pb.AgentFrame(result=pb.Result(call_id=forwarded.call_id, result_json=b"{}")))
        await task
        assert store.get_share(info.id).uses == 1
        assert (await _refused(router, info.token, "web01")).code == "share_used_up"
    asyncio.run(main())


def test_revoking_a_share_cuts_its_live_call_and_the_agent_is_told_to_cancel(store):
    async def main() -> None:
        router, keys, a, _ = await _setup(store)
        info = await _share(router, keys["ops"])
        caller, task = await _guest_call(router, info.token, "web01")
        forwarded = await next_frame(a, "call")
        revoked = await router.revoke_share(FakeStream(keys["ops"]),
                                            pb.RevokeShareRequest(id=info.id))
        assert revoked.state == "revoked"
        assert (await next_frame(caller, "failure")).code == "share_revoked"
        assert (await next_frame(a, "cancel")).call_id == forwarded.call_id
        await task
    asyncio.run(main())


def test_a_revocation_by_another_process_is_noticed_through_the_store(store, tmp_path):
    async def main() -> None:
        router, keys, a, _ = await _setup(store)
        info = await _share(router, keys["ops"])
        caller, task = await _guest_call(router, info.token, "web01")
        await next_frame(a, "call")
        with RelayStore.open(str(tmp_path / "relay")) as admin:     # e.g. another relay command
            admin.revoke_share("demo", info.id)
        router.revoke(router._revocations())                        # what watch_revocations does
        assert (await next_frame(caller, "failure")).code == "share_revoked"
        await task
    asyncio.run(main())


def test_a_share_expiring_mid_call_cuts_the_call(store):
    async def main() -> None:
        router, keys, a, _ = await _setup(store)
        info = await _share(router, keys["ops"], ttl_s=1)
        caller, task = await _guest_call(router, info.token, "web01")
        await next_frame(a, "call")
        assert (await next_frame(caller, "failure", timeout=10)).code == "share_expired"
        await next_frame(a, "cancel")
        await task
    asyncio.run(main())


@pytest.mark.parametrize("rpc", ["create", "list", "revoke", "link"])
def test_a_share_token_cannot_mint_list_revoke_or_link(store, rpc):
    async def main() -> None:
        router, keys, _, _ = await _setup(store)
        info = await _share(router, keys["ops"])
        s = FakeStream(info.token)
        with pytest.raises(RelayRefusal) as exc:
            if rpc == "create":
                await router.create_share(s, pb.CreateShareRequest(host="web01", ttl_s=60))
            elif rpc == "list":
                await router.list_shares(s, pb.ListSharesRequest())
            elif rpc == "revoke":
                await router.revoke_share(s, pb.RevokeShareRequest(id=info.id))
            else:
                await s.incoming.put(pb.AgentFrame(hello=pb.Hello(
                    protocol_version=1, hostname="evil", machine_id="m9")))
                await router.agent_link(s)
        assert exc.value.code == "permission_denied"
    asyncio.run(main())


def test_a_guest_lists_only_its_one_machine(store):
    async def main() -> None:
        router, keys, _, _ = await _setup(store)
        info = await _share(router, keys["ops"], host="db")
        reply = await router.list_hosts(FakeStream(info.token), pb.ListHostsRequest())
        assert [h.name for h in reply.hosts] == ["db01"] and reply.total == 1
        await router.revoke_share(FakeStream(keys["ops"]), pb.RevokeShareRequest(id=info.id))
        with pytest.raises(RelayRefusal) as exc:
            await router.list_hosts(FakeStream(info.token), pb.ListHostsRequest())
        assert "revoked" in exc.value.message
    asyncio.run(main())


@pytest.mark.parametrize("request_, code", [
    (dict(host="web01"), "invalid_argument"),                              # no expiry
    (dict(host="web01", ttl_s=60, no_expiry=True), "invalid_argument"),    # both
    (dict(host="web01", ttl_s=60, tools=["rm"]), "invalid_argument"),
    (dict(host="web01", ttl_s=60, note="a\x1bb"), "invalid_argument"),
    (dict(host="nope", ttl_s=60), "not_found"),
    (dict(host="", ttl_s=60), "not_found"),
])
def test_bad_share_requests_are_refused(store, request_, code):
    async def main() -> None:
        router, keys, _, _ = await _setup(store)
        with pytest.raises(RelayRefusal) as exc:
            await router.create_share(FakeStream(keys["ops"]), pb.CreateShareRequest(**request_))
        assert exc.value.code == code
    asyncio.run(main())


def test_members_of_another_workspace_see_and_revoke_nothing(store):
    async def main() -> None:
        router, keys, _, _ = await _setup(store)
        info = await _share(router, keys["ops"])
        listed = await router.list_shares(FakeStream(keys["x"]), pb.ListSharesRequest())
        assert list(listed.shares) == []
        with pytest.raises(RelayRefusal) as exc:
            await router.revoke_share(FakeStream(keys["x"]), pb.RevokeShareRequest(id=info.id))
        assert exc.value.code == "not_found"
        with pytest.raises(RelayRefusal):                          # its machines are not theirs
            await router.create_share(FakeStream(keys["x"]),
                                      pb.CreateShareRequest(host="web01", ttl_s=60))
    asyncio.run(main())


def test_the_store_keeps_only_the_tokens_hash_and_counts_uses_atomically(store, tmp_path):
    m = store.enroll_machine("demo", store.create_key("demo", "k")[0].id, "web01", "m1", "t")
    share, token = store.create_share("demo", m.id, created_by="k", ttl_s=60, tools=("grep",),
                                      max_uses=2, note="n")
    assert store.share_by_token(token) == share
    assert store.share_by_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.share_by_token("cmdop_share_nope") is None
    db = sqlite3.connect(str(tmp_path / "relay" / "relay.db"))
    dump = "\n".join(db.iterdump())
    db.close()
    assert token not in dump and token[12:] not in dump
    now = store._clock()
    assert [store.take_use(share.id, now) for _ in range(3)] == [True, True, False]
    assert store.get_share(share.id).uses == 2
    other, _ = store.create_share("demo", m.id, created_by="k", ttl_s=60, tools=("grep",),
                                  max_uses=0, note="")
    assert not store.take_use(other.id, now + 61)                   # expired: not counted
    store.revoke_share("demo", other.id)
    assert not store.take_use(other.id, now)
    assert store.revoked_share_ids() == {other.id}


def test_a_version_2_database_gains_the_shares_table_and_keeps_its_keys(tmp_path):
    d = tmp_path / "old"
    with RelayStore.open(str(d)) as s:
        s.create_workspace("demo")
        _, key = s.create_key("demo", "ops")
    db = sqlite3.connect(str(d / "relay.db"))
    with db:
        db.execute("DROP TABLE shares")
        db.execute("UPDATE schema_version SET version = 2")
    db.close()
    with RelayStore.open(str(d)) as s:
        assert s.verify_key(key) is not None and s.list_shares("demo") == []
    db = sqlite3.connect(str(d / "relay.db"))
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
    db.close()
