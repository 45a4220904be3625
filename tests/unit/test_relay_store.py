"""The relay's SQLite store (cmdop.relay.store): workspaces, keys, machines, cross-process changes."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Iterator

import pytest

from cmdop.core.errors import AlreadyExistsError, CmdopError, NotFoundError, SecretFileError, UsageError
from cmdop.relay.store import KeyInfo, Machine, RelayStore, Workspace

KEY_RE = re.compile(r"^cmdop_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class Clock:
    def __init__(self, t: float = 1_796_553_600.0) -> None:   # 2026-12-06T10:40:00Z
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "relay"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(data_dir: Path, clock: Clock) -> Iterator[RelayStore]:
    s = RelayStore.open(str(data_dir), clock=clock)
    yield s
    s.close()


def test_open_creates_private_dir_and_db_in_wal_mode(store: RelayStore, data_dir: Path) -> None:
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    db = data_dir / "relay.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    store.create_workspace("w")
    for extra in ("relay.db-wal", "relay.db-shm"):
        p = data_dir / extra
        if p.exists():
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0
    conn = sqlite3.connect(str(db))
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
    finally:
        conn.close()


def test_reopen_keeps_data(data_dir: Path, clock: Clock) -> None:
    with RelayStore.open(str(data_dir), clock=clock) as s:
        s.create_workspace("w")
    with RelayStore.open(str(data_dir), clock=clock) as s:
        assert [w.name for w in s.list_workspaces()] == ["w"]


def test_refuses_a_db_others_can_read(data_dir: Path) -> None:
    RelayStore.open(str(data_dir)).close()
    os.chmod(data_dir / "relay.db", 0o644)
    with pytest.raises(SecretFileError) as err:
        RelayStore.open(str(data_dir))
    assert "chmod 600" in (err.value.hint or "")


def test_not_a_database_is_a_clear_error(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o700)
    db = data_dir / "relay.db"
    db.write_bytes(b"this is not sqlite" * 100)
    os.chmod(db, 0o600)
    with pytest.raises(CmdopError) as err:
        RelayStore.open(str(data_dir))
    assert "not a usable relay database" in err.value.message and err.value.hint


def test_newer_schema_is_refused(data_dir: Path) -> None:
    RelayStore.open(str(data_dir)).close()
    conn = sqlite3.connect(str(data_dir / "relay.db"))
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(CmdopError, match="schema version 99"):
        RelayStore.open(str(data_dir))


# -- workspaces -------------------------------------------------------------------------------

def test_workspace_names(store: RelayStore) -> None:
    ws = store.create_workspace("Prod")
    assert isinstance(ws, Workspace) and ws.name == "prod"
    assert ws.created_at == "2026-12-06T10:40:00Z"
    store.create_workspace("a.b_c-1")
    store.create_workspace("x" * 64)
    assert [w.name for w in store.list_workspaces()] == ["a.b_c-1", "prod", "x" * 64]
    for bad in ("", "-x", ".x", "has space", "x" * 65, "ünï", "a/b"):
        with pytest.raises(UsageError):
            store.create_workspace(bad)


def test_duplicate_workspace(store: RelayStore) -> None:
    store.create_workspace("prod")
    with pytest.raises(AlreadyExistsError) as err:
        store.create_workspace("PROD")
    assert err.value.hint and err.value.exit_code == 1


# -- keys -------------------------------------------------------------------------------------

def test_create_key_format_and_storage(store: RelayStore, data_dir: Path) -> None:
    store.create_workspace("prod")
    info, text = store.create_key("prod", "alice")
    m = KEY_RE.match(text)
    assert m and m.group(1) == info.id
    assert info.prefix == text[len("cmdop_"):][:8] == info.id[:8]
    assert (info.workspace, info.name, info.revoked_at, info.last_used_at) == ("prod", "alice", None, None)
    assert not any(text in str(v) for v in vars(info).values())
    conn = sqlite3.connect(str(data_dir / "relay.db"))
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert text not in dump and m.group(2) not in dump
    assert hashlib.sha256(text.encode()).hexdigest() in dump


def test_keys_are_random(store: RelayStore) -> None:
    store.create_workspace("w")
    texts = {store.create_key("w", f"k{i}")[1] for i in range(20)}
    assert len(texts) == 20 and len({t[6:18] for t in texts}) == 20


def test_create_key_unknown_workspace_hints_the_command(store: RelayStore) -> None:
    with pytest.raises(NotFoundError) as err:
        store.create_key("nope", "alice")
    assert "cmdop relay workspace create" in (err.value.hint or "")


def test_key_names_unique_among_live_keys(store: RelayStore) -> None:
    store.create_workspace("a")
    store.create_workspace("b")
    first, _ = store.create_key("a", "alice")
    store.create_key("b", "alice")                   # another workspace: fine
    with pytest.raises(AlreadyExistsError) as err:
        store.create_key("a", "alice")
    assert err.value.hint
    store.revoke_key(first.id)
    again, _ = store.create_key("a", "alice")        # the name is free once revoked
    assert again.id != first.id
    with pytest.raises(UsageError):
        store.create_key("a", "has space")


def test_verify_key(store: RelayStore) -> None:
    store.create_workspace("prod")
    info, text = store.create_key("prod", "alice")
    got = store.verify_key(text)
    assert got is not None and got.id == info.id and got.workspace == "prod"
    assert got.last_used_at == "2026-12-06T10:40:00Z"
    tampered = text[:-1] + ("A" if text[-1] != "A" else "B")
    for bad in ("", "cmdop_", text + "x", text[:-1], tampered, "cmdop_000000000000_" + "a" * 43,
                text.upper(), " " + text):
        assert store.verify_key(bad) is None, bad


def test_verify_writes_last_used_at_most_once_a_minute(store: RelayStore, clock: Clock) -> None:
    store.create_workspace("prod")
    _, text = store.create_key("prod", "alice")
    t0 = clock.t
    before = store.data_version()
    with RelayStore.open(os.path.dirname(store.path), clock=clock) as other:
        v0 = other.data_version()
        store.verify_key(text)
        v1 = other.data_version()
        assert v1 != v0                                 # the first use is written
        for dt in (0, 1, 30, 59):
            clock.t = t0 + dt
            assert store.verify_key(text) is not None
            assert other.data_version() == v1           # within the minute: no write
        assert store.list_keys("prod")[0].last_used_at == "2026-12-06T10:40:00Z"
        clock.t = t0 + 61
        store.verify_key(text)
        assert other.data_version() != v1
        assert store.list_keys("prod")[0].last_used_at == "2026-12-06T10:41:01Z"
    assert store.data_version() == before               # our own writes do not move our version


def test_revoke_by_id_or_prefix(store: RelayStore, clock: Clock) -> None:
    store.create_workspace("prod")
    a, ta = store.create_key("prod", "a")
    b, tb = store.create_key("prod", "b")
    clock.t += 5
    r = store.revoke_key(a.prefix)
    assert r.id == a.id and r.revoked_at == "2026-12-06T10:40:05Z"
    assert store.verify_key(ta) is None and store.verify_key(tb) is not None
    assert store.revoked_key_ids() == frozenset({a.id})
    assert store.revoke_key(f"cmdop_{b.prefix}…").id == b.id
    assert store.revoked_key_ids() == frozenset({a.id, b.id})
    again = store.revoke_key(a.id)                      # idempotent: the first revocation stays
    assert again.revoked_at == r.revoked_at


def test_revoke_unknown_or_ambiguous(store: RelayStore) -> None:
    store.create_workspace("prod")
    for bad in ("ffffffffffff", "zz", "", "abc"):
        with pytest.raises(NotFoundError):
            store.revoke_key(bad)
    keys = [store.create_key("prod", f"k{i}")[0] for i in range(40)]
    # Among 40 random ids some share their first hex digit... ask with a 4-digit prefix that two
    # ids share, if any; else check the unique-prefix path.
    by4: dict[str, list[KeyInfo]] = {}
    for k in keys:
        by4.setdefault(k.id[:4], []).append(k)
    shared = [p for p, ks in by4.items() if len(ks) > 1]
    if shared:
        with pytest.raises(NotFoundError, match="several"):
            store.find_key(shared[0])
    unique = next(p for p, ks in by4.items() if len(ks) == 1)
    assert store.find_key(unique).id == by4[unique][0].id


def test_list_keys(store: RelayStore, clock: Clock) -> None:
    store.create_workspace("a")
    store.create_workspace("b")
    ka, _ = store.create_key("a", "one")
    clock.t += 1
    kb, _ = store.create_key("b", "two")
    assert [k.id for k in store.list_keys()] == [ka.id, kb.id]
    assert [k.id for k in store.list_keys("b")] == [kb.id]
    with pytest.raises(NotFoundError):
        store.list_keys("c")


def test_data_version_moves_when_another_store_writes(store: RelayStore, data_dir: Path) -> None:
    store.create_workspace("prod")
    info, _ = store.create_key("prod", "alice")
    v = store.data_version()
    assert store.data_version() == v
    with RelayStore.open(str(data_dir)) as admin:       # another "process"
        admin.revoke_key(info.id)
    assert store.data_version() != v
    assert info.id in store.revoked_key_ids()


def test_store_is_usable_from_threads(store: RelayStore) -> None:
    store.create_workspace("prod")
    _, text = store.create_key("prod", "alice")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(20):
                assert store.verify_key(text) is not None
                store.enroll_machine("prod", "k", f"host{i}", f"mid-{i}-{j % 3}", "1.0")
                store.list_machines("prod")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_machines("prod")) == 24


# -- machines ---------------------------------------------------------------------------------

def test_enroll_upserts_by_machine_id(store: RelayStore, clock: Clock) -> None:
    store.create_workspace("prod")
    m = store.enroll_machine("prod", "k1", "Web01", "mid-1", "1.0")
    assert isinstance(m, Machine)
    assert (m.workspace, m.name, m.hostname, m.machine_id, m.key_id, m.agent_version) == \
        ("prod", "web01", "Web01", "mid-1", "k1", "1.0")
    assert m.first_seen == m.last_seen == "2026-12-06T10:40:00Z"
    clock.t += 10
    again = store.enroll_machine("prod", "k1", "web01", "mid-1", "1.1")   # (another key: refused)
    assert (again.id, again.name, again.key_id, again.agent_version) == (m.id, "web01", "k1", "1.1")
    assert (again.first_seen, again.last_seen) == ("2026-12-06T10:40:00Z", "2026-12-06T10:40:10Z")
    assert len(store.list_machines("prod")) == 1


def test_machine_names_unique_in_workspace(store: RelayStore) -> None:
    store.create_workspace("prod")
    store.create_workspace("dev")
    a = store.enroll_machine("prod", "k", "web01", "mid-a", "1")
    b = store.enroll_machine("prod", "k", "WEB01", "mid-b", "1")
    c = store.enroll_machine("prod", "k", "web01", "mid-c", "1")
    d = store.enroll_machine("dev", "k", "web01", "mid-b", "1")
    assert (a.name, b.name, c.name, d.name) == ("web01", "web01-2", "web01-3", "web01")
    assert store.enroll_machine("prod", "k", "web01", "mid-b", "2").name == "web01-2"   # stable
    renamed = store.enroll_machine("prod", "k", "db01", "mid-b", "2")
    assert renamed.name == "db01" and renamed.id == b.id
    assert [m.name for m in store.list_machines("prod")] == ["db01", "web01", "web01-3"]
    weird = store.enroll_machine("prod", "k", "My Host!", "mid-d", "1")
    assert weird.name == "my-host"


def test_enroll_rejects_bad_input(store: RelayStore) -> None:
    store.create_workspace("prod")
    with pytest.raises(CmdopError):
        store.enroll_machine("prod", "k", "h", "", "1")
    with pytest.raises(CmdopError):
        store.enroll_machine("prod", "k", "", "m", "1")
    with pytest.raises(NotFoundError):
        store.enroll_machine("nope", "k", "h", "m", "1")


def test_touch_machine(store: RelayStore, clock: Clock) -> None:
    store.create_workspace("prod")
    m = store.enroll_machine("prod", "k", "web01", "mid-1", "1")
    clock.t += 125
    store.touch_machine(m.id)
    (got,) = store.list_machines("prod")
    assert got.last_seen == "2026-12-06T10:42:05Z" and got.first_seen == "2026-12-06T10:40:00Z"


def test_a_machine_id_enrolled_by_one_key_cannot_be_taken_by_another(tmp_path):
    """Another key of the workspace presenting a machine's id would take over its link (and
    receive its calls): refused; after a revocation only a key of the same name (a rotation)."""
    from cmdop.relay.store import MachineClaimedError, RelayStore

    store = RelayStore.open(str(tmp_path / "relay"))
    store.create_workspace("demo")
    k1, _ = store.create_key("demo", "one")
    k2, _ = store.create_key("demo", "two")
    m = store.enroll_machine("demo", k1.id, "web01", "mid-1", "v")
    assert store.enroll_machine("demo", k1.id, "web01", "mid-1", "v").id == m.id   # same key: fine
    with pytest.raises(MachineClaimedError):
        store.enroll_machine("demo", k2.id, "web01", "mid-1", "v")
    store.revoke_key(k1.id)
    with pytest.raises(MachineClaimedError):             # not any member's key...
        store.enroll_machine("demo", k2.id, "web01", "mid-1", "v")
    k3, _ = store.create_key("demo", "one")              # ...only the rotated key's successor
    assert store.enroll_machine("demo", k3.id, "web01", "mid-1", "v").id == m.id
    store.close()
