"""The relay's embedded state: workspaces, API keys and enrolled machines, in SQLite.

`relay.db` lives in the relay's data dir (created 0700; the database file 0600; its -wal/-shm
files take the database file's mode). WAL mode, so the running relay reads while an admin command
(`cmdop relay key revoke`, another process) writes. One `RelayStore` may be shared by threads: a
lock serialises every use of its one connection.

Keys: the text is `cmdop_` + key id (12 lower-case hex) + `_` + 43 urlsafe characters. Only the
SHA-256 (hex) of the whole text is stored; `prefix` (the id's first 8 characters) is for display.
The secret is returned once, by `create_key`. `verify_key` compares digests in constant time and
writes `last_used_at` at most once a minute per key, not once per call.

Noticing another process's change: `data_version()` (PRAGMA data_version on this store's own
connection) changes when another connection committed a write; the relay polls it and re-reads
`revoked_key_ids()` when it moves.

Timestamps are UTC text, `2026-12-06T10:15:30Z`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from cmdop.adapters.secure_file import check_private, ensure_private_dir
from cmdop.core.credentials import KEY_DISPLAY_PREFIX_LEN, KEY_PREFIX, parse_api_key, valid_name
from cmdop.core.errors import AlreadyExistsError, CmdopError, NotFoundError, UsageError

SCHEMA_VERSION = 1
DB_NAME = "relay.db"
LAST_USED_INTERVAL_S = 60.0     # verify_key writes last_used_at at most this often per key
BUSY_TIMEOUT_MS = 5000
_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_MAX_HOSTNAME = 253
_MAX_MACHINE_ID = 128
_MAX_VERSION = 64

_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    revoked_at    TEXT,
    last_used_at  TEXT
);
CREATE UNIQUE INDEX api_keys_live_name ON api_keys(workspace_id, name) WHERE revoked_at IS NULL;
CREATE INDEX api_keys_revoked ON api_keys(revoked_at) WHERE revoked_at IS NOT NULL;
CREATE TABLE machines (
    id             TEXT PRIMARY KEY,
    workspace_id   TEXT NOT NULL REFERENCES workspaces(id),
    name           TEXT NOT NULL,
    hostname       TEXT NOT NULL,
    machine_id     TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    agent_version  TEXT NOT NULL,
    first_seen     TEXT NOT NULL,
    last_seen      TEXT NOT NULL,
    UNIQUE (workspace_id, machine_id),
    UNIQUE (workspace_id, name)
);
"""


@dataclass(frozen=True)
class Workspace:
    id: str
    name: str
    created_at: str


@dataclass(frozen=True)
class KeyInfo:
    """An API key as shown: never its secret nor the secret's hash."""

    id: str
    workspace: str          # the workspace's name
    name: str
    prefix: str
    created_at: str
    revoked_at: str | None
    last_used_at: str | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class Machine:
    id: str                 # the relay's row id
    workspace: str          # the workspace's name
    name: str               # hostname, lower-cased, made unique in the workspace
    hostname: str
    machine_id: str
    key_id: str             # the key the machine last enrolled with
    agent_version: str
    first_seen: str
    last_seen: str


def utc_text(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def key_digest(key_text: str) -> str:
    return hashlib.sha256(key_text.encode("utf-8")).hexdigest()


def _machine_base_name(hostname: str) -> str:
    base = re.sub(r"[^a-z0-9._-]+", "-", hostname.strip().lower()).strip("-.")
    return base[:63] or "machine"


class MachineClaimedError(CmdopError):
    """An agent presented the machine id of a machine another (live) key enrolled."""


class RelayStore:
    """The relay's database. Open with `RelayStore.open(data_dir)`; `close()` when done."""

    def __init__(self, conn: sqlite3.Connection, path: str, clock: Callable[[], float]) -> None:
        self._conn = conn
        self.path = path
        self._clock = clock
        self._lock = threading.RLock()
        self._last_used_written: dict[str, float] = {}

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: str, *, clock: Callable[[], float] = time.time) -> RelayStore:
        """Open (creating when missing) `relay.db` in `data_dir`."""
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
        try:
            ensure_private_dir(data_dir)
        except OSError as exc:
            raise CmdopError(f"cannot create the relay data dir {data_dir}: {exc.strerror}",
                             hint="choose another with --data-dir DIR") from None
        path = os.path.join(data_dir, DB_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            os.close(fd)
        except OSError as exc:
            raise CmdopError(f"cannot open {path}: {exc.strerror}",
                             hint="check the owner and mode of the relay data dir (--data-dir)") from None
        check_private(path)
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise CmdopError(f"cannot open {path}: {exc}") from None
        store = cls(conn, path, clock)
        try:
            store._init()
        except BaseException:
            conn.close()
            raise
        return store

    def _init(self) -> None:
        c = self._conn
        try:
            c.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = c.execute("PRAGMA journal_mode = WAL").fetchone()
            c.execute("PRAGMA foreign_keys = ON")
            with self._write() as cur:
                have = cur.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'"
                ).fetchone()
                if have is None:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            cur.execute(statement)
                    cur.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                else:
                    row = cur.execute("SELECT MAX(version) FROM schema_version").fetchone()
                    version = int(row[0] or 0)
                    if version > SCHEMA_VERSION:
                        raise CmdopError(
                            f"{self.path} has schema version {version}; this cmdop knows up to {SCHEMA_VERSION}",
                            hint="run a newer cmdop on this data dir",
                        )
        except sqlite3.DatabaseError as exc:
            raise CmdopError(f"{self.path} is not a usable relay database: {exc}",
                             hint="restore it from a backup, or point --data-dir at another directory") from None
        if mode is None or str(mode[0]).lower() != "wal":
            raise CmdopError(f"{self.path}: cannot switch the database to WAL mode",
                             hint="keep the data dir on a local file system")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RelayStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), under the lock."""
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise CmdopError(f"{self.path}: {exc}",
                                 hint="another process holds the relay database; try again") from None
            try:
                yield cur
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._conn.execute(sql, params).fetchall())
            except sqlite3.OperationalError as exc:
                raise CmdopError(f"{self.path}: {exc}") from None

    def _now(self) -> str:
        return utc_text(self._clock())

    def data_version(self) -> int:
        """Changes whenever another connection (e.g. an admin command) committed a write."""
        rows = self._read("PRAGMA data_version")
        return int(rows[0][0])

    # -- workspaces -------------------------------------------------------------------------

    def create_workspace(self, name: str) -> Workspace:
        name = valid_name(name)
        ws = Workspace(id=secrets.token_hex(6), name=name, created_at=self._now())
        with self._write() as cur:
            if cur.execute("SELECT 1 FROM workspaces WHERE name = ?", (name,)).fetchone():
                raise AlreadyExistsError(f"workspace {name!r} already exists",
                                         hint="list them with `cmdop relay workspace list`")
            cur.execute("INSERT INTO workspaces (id, name, created_at) VALUES (?, ?, ?)",
                        (ws.id, ws.name, ws.created_at))
        return ws

    def list_workspaces(self) -> list[Workspace]:
        rows = self._read("SELECT id, name, created_at FROM workspaces ORDER BY name")
        return [Workspace(*r) for r in rows]

    def get_workspace(self, name: str) -> Workspace:
        """The workspace called `name`; NotFoundError with the command that creates it."""
        lowered = name.strip().lower()
        rows = self._read("SELECT id, name, created_at FROM workspaces WHERE name = ?", (lowered,))
        if not rows:
            shown = lowered if _valid_or_none(lowered) else "NAME"
            raise NotFoundError(f"no workspace {name!r} on this relay",
                                hint=f"create it with: cmdop relay workspace create {shown}")
        return Workspace(*rows[0])

    # -- keys -------------------------------------------------------------------------------

    _KEY_COLUMNS = ("k.id, w.name, k.name, k.prefix, k.created_at, k.revoked_at, k.last_used_at "
                    "FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id")

    def create_key(self, workspace: str, name: str) -> tuple[KeyInfo, str]:
        """A new key in `workspace`: its info and its text, which is never available again."""
        name = name.strip()
        if not _KEY_NAME_RE.match(name):
            raise UsageError(f"invalid key name {name!r}",
                             hint="a key name is 1-64 characters: letters, digits, '.', '_', '@', '+', '-'")
        ws = self.get_workspace(workspace)
        now = self._now()
        with self._write() as cur:
            if cur.execute("SELECT 1 FROM api_keys WHERE workspace_id = ? AND name = ? AND revoked_at IS NULL",
                           (ws.id, name)).fetchone():
                raise AlreadyExistsError(
                    f"workspace {ws.name!r} already has a key named {name!r}",
                    hint=f"choose another --name, or revoke it first (`cmdop relay key list --workspace {ws.name}`)",
                )
            while True:
                key_id = secrets.token_hex(6)
                if not cur.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone():
                    break
            text = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            assert parse_api_key(text) == key_id
            info = KeyInfo(id=key_id, workspace=ws.name, name=name, prefix=key_id[:KEY_DISPLAY_PREFIX_LEN],
                           created_at=now, revoked_at=None, last_used_at=None)
            cur.execute(
                "INSERT INTO api_keys (id, workspace_id, name, prefix, secret_sha256, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (info.id, ws.id, info.name, info.prefix, key_digest(text), info.created_at),
            )
        return info, text

    def list_keys(self, workspace: str | None = None) -> list[KeyInfo]:
        if workspace is None:
            rows = self._read(f"SELECT {self._KEY_COLUMNS} ORDER BY w.name, k.created_at, k.id")
        else:
            ws = self.get_workspace(workspace)
            rows = self._read(f"SELECT {self._KEY_COLUMNS} WHERE k.workspace_id = ? "
                              "ORDER BY k.created_at, k.id", (ws.id,))
        return [KeyInfo(*r) for r in rows]

    def find_key(self, id_or_prefix: str) -> KeyInfo:
        """The key whose id is `id_or_prefix`, or whose id starts with it when only one does
        (the displayed `cmdop_PREFIX` form is accepted too). NotFoundError otherwise."""
        wanted = id_or_prefix.strip().lower()
        if wanted.startswith(KEY_PREFIX):
            wanted = wanted[len(KEY_PREFIX):]
        wanted = wanted.rstrip("…").rstrip(".")
        if not re.fullmatch(r"[0-9a-f]{4,12}", wanted):
            raise NotFoundError(f"no key {id_or_prefix!r}: a key is named by its id or a prefix of "
                                "at least 4 hex digits", hint="list them with `cmdop relay key list`")
        rows = self._read(f"SELECT {self._KEY_COLUMNS} WHERE k.id LIKE ? ORDER BY k.id", (wanted + "%",))
        exact = [r for r in rows if r[0] == wanted]
        if exact:
            return KeyInfo(*exact[0])
        if not rows:
            raise NotFoundError(f"no key {id_or_prefix!r} on this relay",
                                hint="list them with `cmdop relay key list`")
        if len(rows) > 1:
            ids = ", ".join(r[0] for r in rows)
            raise NotFoundError(f"{id_or_prefix!r} matches several keys ({ids})",
                                hint="give more of the id")
        return KeyInfo(*rows[0])

    def revoke_key(self, key_id: str) -> KeyInfo:
        """Revoke the key `key_id` (its id or unique prefix). Revoking a revoked key changes
        nothing and returns it as it is."""
        info = self.find_key(key_id)
        if info.revoked_at is not None:
            return info
        now = self._now()
        with self._write() as cur:
            cur.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, info.id))
        return self.find_key(info.id)

    def verify_key(self, key_text: str) -> KeyInfo | None:
        """The live key whose text this is; None for malformed, unknown or revoked keys."""
        key_id = parse_api_key(key_text)
        if key_id is None:
            return None
        with self._lock:
            rows = self._read(f"SELECT k.secret_sha256, {self._KEY_COLUMNS} WHERE k.id = ?", (key_id,))
            if not rows:
                return None
            stored, *fields = rows[0]
            if not hmac.compare_digest(str(stored), key_digest(key_text)):
                return None
            info = KeyInfo(*fields)
            if info.revoked_at is not None:
                return None
            now = self._clock()
            last = self._last_used_written.get(key_id)
            if last is None or now - last >= LAST_USED_INTERVAL_S:
                self._last_used_written[key_id] = now
                stamp = utc_text(now)
                try:
                    with self._write() as cur:
                        cur.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (stamp, key_id))
                except CmdopError:
                    pass  # a busy database must not fail authentication; the next minute retries
                else:
                    info = KeyInfo(info.id, info.workspace, info.name, info.prefix, info.created_at,
                                   info.revoked_at, stamp)
            return info

    def revoked_key_ids(self) -> frozenset[str]:
        return frozenset(r[0] for r in self._read("SELECT id FROM api_keys WHERE revoked_at IS NOT NULL"))

    # -- machines ---------------------------------------------------------------------------

    _MACHINE_COLUMNS = ("m.id, w.name, m.name, m.hostname, m.machine_id, m.key_id, m.agent_version, "
                        "m.first_seen, m.last_seen FROM machines m JOIN workspaces w ON w.id = m.workspace_id")

    def enroll_machine(self, workspace: str, key_id: str, hostname: str, machine_id: str,
                       agent_version: str) -> Machine:
        """Record (or refresh) the machine `machine_id` of `workspace`; its name is its hostname
        lower-cased, with `-2`, `-3`, ... when another machine of the workspace has that name."""
        hostname = hostname.strip()
        machine_id = machine_id.strip()
        if not machine_id or len(machine_id) > _MAX_MACHINE_ID:
            raise CmdopError("an agent must send a machine id of 1-128 characters")
        if not hostname or len(hostname) > _MAX_HOSTNAME:
            raise CmdopError("an agent must send a hostname of 1-253 characters")
        agent_version = agent_version.strip()[:_MAX_VERSION]
        ws = self.get_workspace(workspace)
        now = self._now()
        with self._write() as cur:
            row = cur.execute("SELECT id, hostname, name FROM machines WHERE workspace_id = ? AND machine_id = ?",
                              (ws.id, machine_id)).fetchone()
            if row is not None:
                # A machine is bound to the key that enrolled it: another key of the workspace
                # sending its id would take over its link and receive its calls. Only once that
                # key is revoked may a new one re-enrol it (key rotation).
                holder = cur.execute(
                    "SELECT k.id, k.revoked_at FROM machines m JOIN api_keys k ON k.id = m.key_id "
                    "WHERE m.id = ?", (row[0],)).fetchone()
                if holder is not None and holder[0] != key_id and holder[1] is None:
                    raise MachineClaimedError(
                        f"machine id {machine_id[:12]}… is enrolled with another key",
                        "revoke that key first to re-enrol the machine with this one")
            if row is not None and row[1].lower() == hostname.lower():
                row_id, name = row[0], row[2]
                cur.execute("UPDATE machines SET hostname = ?, key_id = ?, agent_version = ?, last_seen = ? "
                            "WHERE id = ?", (hostname, key_id, agent_version, now, row_id))
            else:
                base = _machine_base_name(hostname)
                taken = {r[0] for r in cur.execute(
                    "SELECT name FROM machines WHERE workspace_id = ? AND machine_id != ? "
                    "AND (name = ? OR name LIKE ?)", (ws.id, machine_id, base, base + "-%"))}
                name, n = base, 1
                while name in taken:
                    n += 1
                    name = f"{base}-{n}"
                if row is not None:
                    row_id = row[0]
                    cur.execute("UPDATE machines SET name = ?, hostname = ?, key_id = ?, agent_version = ?, "
                                "last_seen = ? WHERE id = ?",
                                (name, hostname, key_id, agent_version, now, row_id))
                else:
                    row_id = secrets.token_hex(8)
                    cur.execute(
                        "INSERT INTO machines (id, workspace_id, name, hostname, machine_id, key_id, "
                        "agent_version, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (row_id, ws.id, name, hostname, machine_id, key_id, agent_version, now, now),
                    )
            out = cur.execute(f"SELECT {self._MACHINE_COLUMNS} WHERE m.id = ?", (row_id,)).fetchone()
        return Machine(*out)

    def touch_machine(self, machine_row_id: str) -> None:
        """Set the machine's last_seen to now (one write: callers decide how often)."""
        with self._write() as cur:
            cur.execute("UPDATE machines SET last_seen = ? WHERE id = ?", (self._now(), machine_row_id))

    def list_machines(self, workspace: str) -> list[Machine]:
        ws = self.get_workspace(workspace)
        rows = self._read(f"SELECT {self._MACHINE_COLUMNS} WHERE m.workspace_id = ? ORDER BY m.name", (ws.id,))
        return [Machine(*r) for r in rows]


def _valid_or_none(name: str) -> bool:
    try:
        valid_name(name)
    except UsageError:
        return False
    return True
