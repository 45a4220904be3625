"""One store test suite, run on both backends of the relay store: SQLite (the embedded default)
and PostgreSQL (a real server started for the session, pg_server.py). Each test is what a relay
or its administrator would notice; the backend must not change any of it.

The PostgreSQL-only part at the end: migrations by several nodes at once, a stopped server
(logins and key checks fail closed with one clear error, no password in it), reconnection.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmdop.core.errors import AlreadyExistsError, CmdopError, NotFoundError, StoreUnavailableError, UsageError
from cmdop.relay.store import MachineClaimedError, normalize_user_code
from cmdop.relay.store_api import RelayStoreApi, open_store
from pg_server import PgServer, find_bindir, pg_database, pg_dsn, pg_or_skip, pg_server  # noqa: F401

T0 = 1_796_553_600.0    # 2026-12-06T10:40:00Z


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


Opener = Callable[..., RelayStoreApi]


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens another connection to this test's store (another relay node or admin command)."""
    location = None if request.param == "sqlite" else request.getfixturevalue("pg_dsn")
    opened: list[RelayStoreApi] = []

    def open_(clock: Callable[[], float] | None = None) -> RelayStoreApi:
        s = open_store(location, str(tmp_path / "relay"), clock=clock or Clock())
        opened.append(s)
        return s

    yield open_
    for s in opened:
        s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(opener: Opener, clock: Clock) -> RelayStoreApi:
    return opener(clock)


# -- workspaces and keys ------------------------------------------------------------------------

def test_workspaces(store: RelayStoreApi) -> None:
    store.create_workspace("Beta")
    store.create_workspace("alpha")
    assert [w.name for w in store.list_workspaces()] == ["alpha", "beta"]
    assert store.get_workspace(" ALPHA ").name == "alpha"
    with pytest.raises(AlreadyExistsError):
        store.create_workspace("beta")
    with pytest.raises(NotFoundError) as err:
        store.get_workspace("gamma")
    assert "cmdop relay workspace create gamma" in (err.value.hint or "")


@pytest.mark.parametrize("text, ok", [
    ("good", True),
    ("tampered", False),       # right id, wrong secret
    ("revoked", False),
    ("cmdop_nothex_x", False),
    ("", False),
])
def test_verify_key(store: RelayStoreApi, text: str, ok: bool) -> None:
    store.create_workspace("w")
    info, key = store.create_key("w", "k")
    _, other = store.create_key("w", "k2")
    token = {"good": key, "tampered": key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB"),
             "revoked": other}.get(text, text)
    if text == "revoked":
        store.revoke_key(other.split("_")[1])
    got = store.verify_key(token)
    assert (got is not None) == ok
    if ok:
        assert got is not None and got.id == info.id and got.workspace == "w"


def test_keys_names_lookup_and_revocation(store: RelayStoreApi, clock: Clock) -> None:
    store.create_workspace("w")
    a, _ = store.create_key("w", "ci")
    with pytest.raises(AlreadyExistsError):
        store.create_key("w", "ci")
    with pytest.raises(UsageError):
        store.create_key("w", "bad name")
    assert store.find_key(a.id[:6]).id == a.id
    assert store.find_key("cmdop_" + a.prefix + "…").id == a.id
    with pytest.raises(NotFoundError):
        store.find_key("ffff0000ffff" if not a.id.startswith("ffff") else "0000ffff0000")
    clock.t += 10
    revoked = store.revoke_key(a.id)
    assert revoked.revoked and store.revoke_key(a.id) == revoked      # again: unchanged
    b, _ = store.create_key("w", "ci")                                 # the name is free again
    assert [k.id for k in store.list_keys("w")] == [a.id, b.id]
    assert store.revoked_key_ids() == frozenset({a.id})


def test_last_used_written_at_most_once_a_minute(opener: Opener, store: RelayStoreApi, clock: Clock) -> None:
    store.create_workspace("w")
    info, key = store.create_key("w", "k")
    admin = opener(clock)
    store.verify_key(key)
    first = admin.find_key(info.id).last_used_at
    assert first is not None
    clock.t += 30
    store.verify_key(key)
    assert admin.find_key(info.id).last_used_at == first
    clock.t += 31
    store.verify_key(key)
    assert admin.find_key(info.id).last_used_at != first


def test_another_process_revocation_is_noticed(opener: Opener, store: RelayStoreApi) -> None:
    store.create_workspace("w")
    info, key = store.create_key("w", "k")
    before = store.data_version()
    admin = opener()
    admin.revoke_key(info.id)
    assert store.data_version() != before
    assert info.id in store.revoked_key_ids()
    assert store.verify_key(key) is None


# -- machines -----------------------------------------------------------------------------------

def test_machines_enrol_rename_and_touch(store: RelayStoreApi, clock: Clock) -> None:
    store.create_workspace("w")
    k, _ = store.create_key("w", "k")
    m1 = store.enroll_machine("w", k.id, "Web.Example", "id-1", "1.0")
    m2 = store.enroll_machine("w", k.id, "web.example", "id-2", "1.0")
    assert (m1.name, m2.name) == ("web.example", "web.example-2")
    again = store.enroll_machine("w", k.id, "Web.Example", "id-1", "1.1")
    assert (again.id, again.name, again.agent_version) == (m1.id, "web.example", "1.1")
    clock.t += 600
    store.touch_machine(m1.id)
    seen = {m.machine_id: m.last_seen for m in store.list_machines("w")}
    assert seen["id-1"] > seen["id-2"]


def test_a_machine_moves_only_to_its_keys_successor(store: RelayStoreApi) -> None:
    store.create_workspace("w")
    a, _ = store.create_key("w", "agent")
    other, _ = store.create_key("w", "other")
    store.enroll_machine("w", a.id, "h", "mid", "1")
    with pytest.raises(MachineClaimedError):
        store.enroll_machine("w", other.id, "h", "mid", "1")
    store.revoke_key(a.id)
    with pytest.raises(MachineClaimedError):
        store.enroll_machine("w", other.id, "h", "mid", "1")
    successor, _ = store.create_key("w", "agent")
    assert store.enroll_machine("w", successor.id, "h", "mid", "1").key_id == successor.id


# Enrolled in this order, a clock second apart unless marked "same": (hostname, machine id).
_FLEET = ([("web01-prod", "m-wp"), ("web01", "m-w"), ("db", "m-db"), ("db", "m-db2 same"),
           ("dbx", "m-dbx")] + [(f"app-node-{i:02d}", f"m-app{i}") for i in range(1, 26)])


@pytest.mark.parametrize("host, want", [
    ("web01", "ambiguous"),          # enrolled after web01-prod: never silently takes its calls
    ("web01-", "web01-prod"),
    ("db", "db"),                    # db-2 got its name because db was taken (same second)
    (" DB ", "db"),
    ("db-", "db-2"),
    ("d", "ambiguous"),
    ("app", "ambiguous"),            # 25 matches: 20 are listed, then "…"
    ("app-node-07", "app-node-07"),
    ("x", None), ("", None), ("é", None), ("db%", None), ("db_", None), ("d\x00", None),
])
def test_host_lookup_by_index_decides_as_over_the_whole_workspace(
        store: RelayStoreApi, clock: Clock, host: str, want: str | None) -> None:
    """A call's host is looked up by index (`host_candidates`), never by reading the whole
    workspace; the machine it picks, and the names an ambiguous host lists, are those of the
    full rule (routing.resolve_host over every machine)."""
    from cmdop.relay import routing

    store.create_workspace("w")
    k, _ = store.create_key("w", "k")
    for hostname, mid in _FLEET:
        clock.t += 0 if mid.endswith("same") else 1
        store.enroll_machine("w", k.id, hostname, mid, "1")
    everything = store.list_machines("w")
    machine, matches = routing.resolve_host(host, store.host_candidates("w", host))
    full_machine, full_matches = routing.resolve_host(host, everything)
    assert machine == full_machine
    assert routing.shown_matches(matches) == routing.shown_matches(full_matches)
    assert len(store.host_candidates("w", host)) <= routing.MAX_MATCHES_SHOWN + 1 + 5
    if want == "ambiguous":
        assert machine is None and len(matches) >= 2
    else:
        assert (machine.name if machine else None) == want
    assert store.host_candidates("other", host) == []          # another workspace: nothing


def test_find_machine_by_agent_machine_id(store: RelayStoreApi) -> None:
    store.create_workspace("w")
    store.create_workspace("v")
    k, _ = store.create_key("w", "k")
    m = store.enroll_machine("w", k.id, "h", "mid-1", "1")
    assert store.find_machine("w", "mid-1") == m
    assert store.find_machine("W ", "mid-1") == m
    assert store.find_machine("v", "mid-1") is None and store.find_machine("w", "mid-2") is None


# -- accounts, device login, refresh tokens -----------------------------------------------------

def _login(store: RelayStoreApi, clock: Clock, email: str = "alice@example.com", jti: str = "j1"):
    start = store.start_device_authorization("cmdop-cli", "relay", "w", "127.0.0.1")
    assert store.poll_device_code(start.device_code, "cmdop-cli", access_jti="x",
                                  access_expires=clock.t + 60).error == "authorization_pending"
    store.approve_device(start.user_code, email)
    clock.t += 10
    got = store.poll_device_code(start.device_code, "cmdop-cli", access_jti=jti,
                                 access_expires=clock.t + 3600)
    assert got.error is None and got.grant is not None
    return start, got.grant


def test_device_login_grants_once(store: RelayStoreApi, clock: Clock) -> None:
    store.create_workspace("w")
    start, grant = _login(store, clock)
    assert (grant.email, grant.workspace) == ("alice@example.com", "w")
    assert store.find_account("ALICE@example.com").workspaces == ("w",)
    again = store.poll_device_code(start.device_code, "cmdop-cli", access_jti="j2",
                                   access_expires=clock.t + 3600)
    assert again.error == "invalid_grant"                       # single use
    assert store.access_token_allowed(grant.account_id, "w", "j1")
    assert not store.access_token_allowed(grant.account_id, "other", "j1")


@pytest.mark.parametrize("step, error", [
    ("deny", "access_denied"),
    ("expire", "expired_token"),
    ("fast", "slow_down"),
    ("wrong-client", "invalid_grant"),
])
def test_device_poll_outcomes(store: RelayStoreApi, clock: Clock, step: str, error: str) -> None:
    store.create_workspace("w")
    start = store.start_device_authorization("cmdop-cli", "relay", "w", "127.0.0.1")
    client = "cmdop-cli"
    if step == "deny":
        store.deny_device(start.user_code)
    elif step == "expire":
        clock.t += 601
    elif step == "fast":
        store.poll_device_code(start.device_code, client, access_jti="x", access_expires=clock.t)
        clock.t += 1
    else:
        client = "someone-else"
    got = store.poll_device_code(start.device_code, client, access_jti="x", access_expires=clock.t)
    assert got.error == error
    pending = [r.status for r in store.list_device_requests()]
    assert pending == ([] if step in ("deny", "expire") else ["pending"])
    assert normalize_user_code(start.user_code) is not None


def test_refresh_rotation_and_reuse_revokes_the_login(store: RelayStoreApi, clock: Clock) -> None:
    store.create_workspace("w")
    _, grant = _login(store, clock)
    r2 = store.rotate_refresh_token(grant.refresh_token, "cmdop-cli", access_jti="j2",
                                    access_expires=clock.t + 3600)
    assert r2.error is None and r2.grant is not None
    reuse = store.rotate_refresh_token(grant.refresh_token, "cmdop-cli", access_jti="j3",
                                       access_expires=clock.t + 3600)
    assert (reuse.error, reuse.revoked) == ("invalid_grant", True)
    assert {"j1", "j2"} <= store.denied_token_ids()
    assert not store.access_token_allowed(grant.account_id, "w", "j2")
    latest = store.rotate_refresh_token(r2.grant.refresh_token, "cmdop-cli", access_jti="j4",
                                        access_expires=clock.t + 3600)
    assert latest.error == "invalid_grant"                      # the whole family is revoked


def test_concurrent_rotation_of_one_refresh_token_grants_once(opener: Opener, store: RelayStoreApi,
                                                              clock: Clock) -> None:
    """Several relay nodes (own connections) present the same refresh token at once."""
    store.create_workspace("w")
    _, grant = _login(store, clock)
    nodes = [opener(clock) for _ in range(6)]
    barrier = threading.Barrier(len(nodes))
    results: list[str | None] = []

    def present(node: RelayStoreApi, i: int) -> None:
        barrier.wait()
        r = node.rotate_refresh_token(grant.refresh_token, "cmdop-cli", access_jti=f"n{i}",
                                      access_expires=clock.t + 3600)
        results.append(r.error)

    threads = [threading.Thread(target=present, args=(n, i)) for i, n in enumerate(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(None) == 1 and len(results) == len(nodes)


def test_disabling_an_account_revokes_its_tokens(opener: Opener, store: RelayStoreApi, clock: Clock) -> None:
    store.create_workspace("w")
    _, grant = _login(store, clock)
    version = store.data_version()
    admin = opener(clock)
    assert admin.set_account_disabled("alice@example.com", True).disabled
    assert store.data_version() != version
    assert grant.account_id in store.disabled_account_ids()
    assert "j1" in store.denied_token_ids()
    assert store.rotate_refresh_token(grant.refresh_token, "cmdop-cli", access_jti="j2",
                                      access_expires=clock.t + 60).error == "invalid_grant"
    assert not admin.set_account_disabled("alice@example.com", False).disabled
    assert store.list_accounts()[0].email == "alice@example.com"


def test_revoke_refresh_token_and_deny_list_expiry(store: RelayStoreApi, clock: Clock) -> None:
    store.create_workspace("w")
    _, grant = _login(store, clock)
    assert store.revoke_refresh_token(grant.refresh_token)
    assert not store.revoke_refresh_token("cmdop_rt_unknown")
    store.deny_access_token("jx", clock.t + 5)
    store.deny_access_token("jx", clock.t + 5)                 # again: no error
    assert "jx" in store.denied_token_ids()
    clock.t += 3601
    assert "jx" not in store.denied_token_ids() and "j1" not in store.denied_token_ids()


# -- shares ---------------------------------------------------------------------------------------

def test_share_uses_are_counted_once_under_concurrency(opener: Opener, store: RelayStoreApi,
                                                       clock: Clock) -> None:
    store.create_workspace("w")
    k, _ = store.create_key("w", "k")
    m = store.enroll_machine("w", k.id, "h", "mid", "1")
    share, token = store.create_share("w", m.id, created_by="alice", ttl_s=3600,
                                      tools=("read_file",), max_uses=3, note="n")
    assert store.share_by_token(token).id == share.id
    nodes = [opener(clock) for _ in range(6)]
    barrier = threading.Barrier(len(nodes))
    taken: list[bool] = []

    def take(node: RelayStoreApi) -> None:
        barrier.wait()
        taken.append(node.take_use(share.id, clock.t))

    threads = [threading.Thread(target=take, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == [False, False, False, True, True, True]
    store.revoke_share("w", share.id)
    assert share.id in store.revoked_share_ids()


def test_a_share_is_revoked_with_the_key_that_minted_it(store: RelayStoreApi,
                                                        clock: Clock) -> None:
    from cmdop.relay.shares import state

    store.create_workspace("w")
    k, _ = store.create_key("w", "k")
    minter, _ = store.create_key("w", "minter")
    m = store.enroll_machine("w", k.id, "h", "mid", "1")
    share, token = store.create_share("w", m.id, created_by=minter.id, ttl_s=3600,
                                      tools=("read_file",), max_uses=0, note="")
    other, _ = store.create_share("w", m.id, created_by=k.id, ttl_s=3600,
                                  tools=("read_file",), max_uses=0, note="")
    assert store.take_use(share.id, clock.t)
    store.revoke_key(minter.id)                        # e.g. rotating a leaked key
    assert state(store.share_by_token(token), clock.t) == "revoked"
    assert not store.take_use(share.id, clock.t)
    assert store.revoked_share_ids() == {share.id}
    assert state(store.get_share(other.id), clock.t) == "active" and store.take_use(other.id, clock.t)
    # a use given back (the call was not forwarded) is returned once, never below zero
    assert store.get_share(other.id).uses == 1
    store.give_back_use(other.id)
    store.give_back_use(other.id)
    assert store.get_share(other.id).uses == 0


# -- opening ----------------------------------------------------------------------------------------

def test_reopening_keeps_data_and_the_relay_id(opener: Opener) -> None:
    first = opener()
    first.create_workspace("w")
    rid = first.relay_id()
    first.close()
    second = opener()
    assert [w.name for w in second.list_workspaces()] == ["w"] and second.relay_id() == rid


@pytest.mark.parametrize("location", ["mysql://u:secret@db/x", "sqlite:relative", "redis://x"])
def test_unknown_store_location_is_refused_without_its_secret(tmp_path: Path, location: str) -> None:
    with pytest.raises(UsageError) as err:
        open_store(location, str(tmp_path))
    assert "secret" not in str(err.value) + str(err.value.hint)


# -- PostgreSQL only ------------------------------------------------------------------------------

def test_nodes_starting_at_once_migrate_once(pg_dsn: str) -> None:
    from cmdop.relay.store_pg import PgRelayStore

    barrier = threading.Barrier(5)
    stores: list[PgRelayStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            stores.append(PgRelayStore.connect(pg_dsn))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert len({s.relay_id() for s in stores}) == 1
    finally:
        for s in stores:
            s.close()


def test_a_newer_schema_is_refused(pg_dsn: str) -> None:
    import psycopg

    from cmdop.relay.store_pg import PgRelayStore

    PgRelayStore.connect(pg_dsn).close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE cmdop.schema_version SET version = 99")
    with pytest.raises(CmdopError, match="schema version 99"):
        PgRelayStore.connect(pg_dsn)


def test_unreachable_server_is_one_clear_error_without_the_password(tmp_path: Path) -> None:
    pg_or_skip()
    dsn = f"postgresql://cmdop:hunter2-secret@/relay?host={tmp_path}&port=5999"
    with pytest.raises(StoreUnavailableError) as err:
        open_store(dsn, str(tmp_path))
    text = f"{err.value} {err.value.hint}"
    assert "is not reachable" in text and str(tmp_path) in text
    assert "hunter2" not in text


def test_password_login_over_tcp_and_pgpass_never_shows_the_password(
        pg_server: PgServer, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The documented ways to give the password: in the URL (CMDOP_RELAY_STORE), or PGPASSFILE.
    A wrong one is refused in one line that does not contain it, in the error and in the log."""
    import psycopg

    dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    pg_server.tcp_role("relay_pw", "S3cret-pw")
    base = f"postgresql://relay_pw@127.0.0.1:{pg_server.port}/{dbname}"
    with open_store(base.replace("relay_pw@", "relay_pw:S3cret-pw@"), str(tmp_path)) as s:
        s.create_workspace("w")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg_server.port}:{dbname}:relay_pw:S3cret-pw\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    with open_store(base, str(tmp_path)) as s:
        assert [w.name for w in s.list_workspaces()] == ["w"]
    monkeypatch.delenv("PGPASSFILE")
    with pytest.raises(StoreUnavailableError) as err:
        open_store(base.replace("relay_pw@", "relay_pw:Wrong-pw-123@"), str(tmp_path))
    text = f"{err.value} {err.value.hint} {caplog.text}"
    assert "password authentication failed" in text and f"127.0.0.1:{pg_server.port}" in text
    assert "Wrong-pw-123" not in text and "S3cret-pw" not in text


def test_without_libpq_postgresql_is_one_line_with_the_fix(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg ships in cmdop but loads the machine's libpq: on a machine without it, asking for
    PostgreSQL says which package to install (psycopg's own ImportError, reproduced here)."""
    import sys

    class NoLibpq:
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            if name == "psycopg" or name.startswith("psycopg."):
                raise ImportError("no pq wrapper available.\nAttempts made:\n- couldn't import "
                                  "psycopg 'python' implementation: libpq library not found")
            return None

    for name in [m for m in sys.modules if m == "psycopg" or m.startswith("psycopg.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "cmdop.relay.store_pg", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoLibpq(), *sys.meta_path])
    with pytest.raises(CmdopError) as err:
        open_store("postgresql://cmdop@db/cmdop", str(tmp_path))
    assert "libpq" in str(err.value) and "apt-get install libpq5" in (err.value.hint or "")


def test_malformed_url_does_not_echo_it(tmp_path: Path) -> None:
    pg_or_skip()
    with pytest.raises(UsageError) as err:
        open_store("postgresql://cmdop:hunter2@db/x?nonsense=1", str(tmp_path))
    assert "hunter2" not in f"{err.value} {err.value.hint}"


def test_database_down_fails_closed_then_recovers() -> None:
    """PostgreSQL stopped: key checks, token checks and logins raise StoreUnavailableError
    (never a grant, never None-as-allowed); started again, the same store works."""
    from cmdop.relay.store_pg import RECONNECT_AFTER_S, PgRelayStore

    server = PgServer(pg_or_skip()).start()
    try:
        store = PgRelayStore.connect(server.dsn())
        clock = Clock()
        store._clock = clock    # noqa: SLF001 - the cabinet's clock, for the login below
        store.create_workspace("w")
        _, key = store.create_key("w", "k")
        _, grant = _login(store, clock)
        server.stop()
        calls: list[Callable[[], object]] = [
            lambda: store.verify_key(key),
            lambda: store.access_token_allowed(grant.account_id, "w", "j1"),
            lambda: store.rotate_refresh_token(grant.refresh_token, "cmdop-cli", access_jti="j2",
                                               access_expires=clock.t + 60),
            lambda: store.start_device_authorization("cmdop-cli", "relay", "w", "127.0.0.1"),
            store.data_version,
        ]
        for call in calls:
            with pytest.raises(StoreUnavailableError, match="database at .* is not reachable"):
                call()
        server.start()
        import time
        deadline = time.monotonic() + RECONNECT_AFTER_S + 10
        while True:     # the store waits RECONNECT_AFTER_S after a failure before trying again
            try:
                got = store.verify_key(key)
                break
            except StoreUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert got is not None and got.workspace == "w"
        store.close()
    finally:
        server.remove()


def test_a_hung_server_fails_key_checks_closed_instead_of_queueing_them(
        pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's process for the relay's connection stops (SIGSTOP: the socket stays open,
    no timeout of the client fires): the query in flight waits, and the key checks queued
    behind it fail closed (StoreUnavailableError) instead of waiting with it; once the server
    runs again, everything answers."""
    import os
    import signal

    from cmdop.relay import store_pg

    store = store_pg.PgRelayStore.connect(pg_dsn)
    try:
        store.create_workspace("w")
        _, key = store.create_key("w", "k")
        backend = int(store._read("SELECT pg_backend_pid()")[0][0])   # noqa: SLF001
        monkeypatch.setattr(store_pg, "LOCK_WAIT_S", 0.3)
        os.kill(backend, signal.SIGSTOP)
        # Should the store wait after all, the server resumes on its own and the test fails
        # (the key check answers instead of failing closed) rather than hanging.
        resume = threading.Timer(20, os.kill, (backend, signal.SIGCONT))
        resume.start()
        try:
            stuck: list[object] = []
            first = threading.Thread(target=lambda: stuck.append(store.list_machines("w")))
            first.start()
            for _ in range(1000):              # until the first query holds the connection (<= 10 s)
                if not store._lock._lock.acquire(blocking=False):   # noqa: SLF001
                    break
                store._lock._lock.release()                           # noqa: SLF001
                first.join(0.01)
            with pytest.raises(StoreUnavailableError, match="no answer to an earlier query"):
                store.verify_key(key)
        finally:
            os.kill(backend, signal.SIGCONT)
            resume.cancel()
        first.join(30)
        assert stuck == [[]]
        assert store.verify_key(key) is not None
    finally:
        store.close()


@pytest.mark.parametrize("sqlite, pg", [
    ("SELECT 1 FROM t WHERE a = ? AND b = ?", "SELECT 1 FROM t WHERE a = %s AND b = %s"),
    ("SELECT 1 FROM t WHERE a LIKE ?", "SELECT 1 FROM t WHERE a LIKE %s"),
    ("SELECT '?', 'a%' FROM t WHERE x = ?", "SELECT '?', 'a%%' FROM t WHERE x = %s"),
    ("INSERT OR IGNORE INTO d (j) VALUES (?)", "INSERT INTO d (j) VALUES (%s) ON CONFLICT DO NOTHING"),
])
def test_sql_translation(sqlite: str, pg: str) -> None:
    pytest.importorskip("psycopg")
    from cmdop.relay.store_pg import pg_sql

    assert pg_sql(sqlite) == pg


@pytest.mark.parametrize("sql", ["PRAGMA data_version", "INSERT OR REPLACE INTO t VALUES (?)",
                                 "SELECT name FROM sqlite_master", "BEGIN IMMEDIATE"])
def test_sqlite_only_statements_are_refused(sql: str) -> None:
    pytest.importorskip("psycopg")
    from cmdop.relay.store_pg import pg_sql

    with pytest.raises(CmdopError):
        pg_sql(sql)


@given(st.lists(st.sampled_from(["a", " ", "=", "?", "%", "x", "'q'"]), max_size=30))
def test_translation_keeps_every_placeholder(parts: list[str]) -> None:
    pytest.importorskip("psycopg")
    from cmdop.relay.store_pg import pg_sql

    sql = "SELECT " + "".join(parts)
    out = pg_sql(sql)
    outside = sum(p.count("?") for p in parts if p != "'q'")
    assert out.count("%s") == outside
    assert out.replace("%s", "").replace("%%", "").count("%") == 0


def test_the_postgresql_schema_covers_every_sqlite_version() -> None:
    pytest.importorskip("psycopg")
    from cmdop.relay.store import SCHEMA_VERSION
    from cmdop.relay.store_pg import MIGRATIONS

    assert [v for v, _ in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


_HOST = st.text(alphabet="aZ_-.9 é", min_size=1, max_size=6)
_OPS = st.lists(st.one_of(
    st.tuples(st.just("key"), st.sampled_from(["a", "b", "A.b", "a_b"])),
    st.tuples(st.just("revoke"), st.integers(0, 5)),
    st.tuples(st.just("enrol"), _HOST, st.sampled_from(["m1", "m2", "m3"]), st.integers(0, 5)),
), max_size=12)


@given(ops=_OPS)
@settings(max_examples=25)
def test_both_backends_answer_alike(pg_server: PgServer, pg_database: str, tmp_path_factory: pytest.TempPathFactory,
                                    ops: list[tuple[object, ...]]) -> None:
    """Differential: one random sequence of administration and enrolments, on SQLite and on
    PostgreSQL, gives the same outcomes and the same listings (names, order, errors)."""
    pg_server.reset_schema(pg_database)
    outcomes = []
    for location in (None, pg_database):
        clock = Clock()
        with open_store(location, str(tmp_path_factory.mktemp("diff")), clock=clock) as s:
            s.create_workspace("w")
            keys: list[str] = []
            seen: list[object] = []
            for op in ops:
                clock.t += 1            # listings order by creation time, then by random id
                try:
                    if op[0] == "key":
                        keys.append(s.create_key("w", str(op[1]))[0].id)
                        seen.append("ok")
                    elif op[0] == "revoke" and keys:
                        seen.append(s.revoke_key(keys[int(op[1]) % len(keys)]).revoked)
                    elif op[0] == "enrol" and keys:
                        m = s.enroll_machine("w", keys[int(op[3]) % len(keys)], str(op[1]), str(op[2]), "1")
                        seen.append(m.name)
                except CmdopError as exc:
                    seen.append(type(exc).__name__)
            ids = {k: i for i, k in enumerate(keys)}
            seen.append([(ids[k.id], k.name, k.revoked) for k in s.list_keys("w")])
            seen.append([(m.name, m.hostname, m.machine_id, ids[m.key_id]) for m in s.list_machines("w")])
            outcomes.append(seen)
    assert outcomes[0] == outcomes[1]
