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

Timestamps are UTC text, `2026-12-06T10:15:30Z`; expiry instants the relay compares against
its clock (device codes, refresh tokens, the access-token deny list) are epoch seconds (REAL).

Schema version 2 adds the embedded OAuth cabinet's state (cmdop.relay.cabinet):
- `meta`: the relay's id (`relay_id`, random, made once): access tokens' audience is
  `cmdop-relay:<relay id>`.
- `accounts` (id, email lower-cased and unique, disabled_at) and `account_workspaces` (which
  workspaces an account may get tokens for: `cmdop relay approve` adds one).
- `device_codes` (RFC 8628): the device code and the user code are stored as SHA-256 digests
  only; a code is pending, then approved or denied (by `cmdop relay approve|deny`, offline on the
  data dir), and becomes `used` when the token endpoint hands out its tokens: single use.
- `refresh_tokens`: SHA-256 of the token, its family (every rotation of one login), the access
  token issued with it (jti, expiry). A rotated token presented again is reuse: the whole family
  is revoked and its live access tokens deny-listed.
- `denied_tokens`: access-token ids (jti) revoked before their expiry, kept until it.
Schema version 3 adds `shares` (guest access: cmdop.relay.share_store).
An older database is migrated in place when opened.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
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
from cmdop.relay import routing
from cmdop.relay.store_api import DbCursor
from cmdop.relay.share_store import SCHEMA_V3, ShareStore

SCHEMA_VERSION = 3
DB_NAME = "relay.db"
LAST_USED_INTERVAL_S = 60.0     # verify_key writes last_used_at at most this often per key
BUSY_TIMEOUT_MS = 5000
_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_MAX_HOSTNAME = 253
_MAX_MACHINE_ID = 128
_MAX_VERSION = 64

# The OAuth cabinet (schema version 2).
DEVICE_CODE_TTL_S = 600            # RFC 8628 expires_in
DEVICE_POLL_INTERVAL_S = 5         # RFC 8628 interval; slow_down adds 5
POLL_TOLERANCE_S = 1.0             # a poll this much early is not "too fast" (network jitter)
MAX_PENDING_DEVICE_CODES = 10_000
REFRESH_TOKEN_TTL_S = 30 * 86400   # each rotation gives another 30 days
REFRESH_TOKEN_PREFIX = "cmdop_rt_"
# RFC 8628 §6.1: consonants only (no vowels: no words; no 0/O, 1/I/L confusion).
USER_CODE_ALPHABET = "BCDFGHJKMNPQRSTVWXZ"
USER_CODE_LEN = 8
_EMAIL_RE = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")

log = logging.getLogger("cmdop.relay")

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

# Version 2: the OAuth cabinet (accounts, device authorizations, refresh tokens, deny list).
_SCHEMA_V2 = """
CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
CREATE TABLE accounts (
    id           TEXT PRIMARY KEY,
    email        TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL,
    disabled_at  TEXT
);
CREATE TABLE account_workspaces (
    account_id    TEXT NOT NULL REFERENCES accounts(id),
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    added_at      TEXT NOT NULL,
    PRIMARY KEY (account_id, workspace_id)
);
CREATE TABLE device_codes (
    id              TEXT PRIMARY KEY,
    device_sha256   TEXT NOT NULL UNIQUE,
    user_sha256     TEXT NOT NULL UNIQUE,
    client_id       TEXT NOT NULL,
    scope           TEXT NOT NULL,
    workspace_hint  TEXT NOT NULL,
    client_address  TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    expires         REAL NOT NULL,
    interval_s      INTEGER NOT NULL,
    last_poll       REAL,
    status          TEXT NOT NULL,
    account_id      TEXT REFERENCES accounts(id),
    workspace_id    TEXT REFERENCES workspaces(id),
    decided_at      TEXT
);
CREATE INDEX device_codes_expires ON device_codes(expires);
CREATE TABLE refresh_tokens (
    id              TEXT PRIMARY KEY,
    token_sha256    TEXT NOT NULL UNIQUE,
    family_id       TEXT NOT NULL,
    account_id      TEXT NOT NULL REFERENCES accounts(id),
    workspace_id    TEXT NOT NULL REFERENCES workspaces(id),
    client_id       TEXT NOT NULL,
    scope           TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    expires         REAL NOT NULL,
    access_jti      TEXT NOT NULL,
    access_expires  REAL NOT NULL,
    rotated_at      TEXT,
    revoked_at      TEXT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family_id);
CREATE INDEX refresh_tokens_account ON refresh_tokens(account_id);
CREATE INDEX refresh_tokens_expires ON refresh_tokens(expires);
CREATE TABLE denied_tokens (
    jti      TEXT PRIMARY KEY,
    expires  REAL NOT NULL
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


@dataclass(frozen=True)
class Account:
    """A person who logs in with `cmdop login` (device flow), approved by the relay's admin."""

    id: str
    email: str              # lower-cased
    created_at: str
    disabled_at: str | None
    workspaces: tuple[str, ...]   # names of the workspaces it may get tokens for

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


@dataclass(frozen=True)
class DeviceStart:
    """A new device authorization: what the device authorization endpoint answers."""

    device_code: str
    user_code: str          # XXXX-XXXX
    expires_in: int
    interval: int


@dataclass(frozen=True)
class DeviceRequest:
    """A device authorization as the admin sees it (never its codes)."""

    id: str
    client_id: str
    scope: str
    workspace_hint: str
    client_address: str
    created_at: str
    expires: float
    status: str             # pending | approved | denied | used
    account: str | None     # the approved account's e-mail
    workspace: str | None   # the approved workspace's name


@dataclass(frozen=True)
class Grant:
    """What a successful token request gives: the account, workspace and a new refresh token."""

    account_id: str
    email: str
    workspace: str
    scope: str
    client_id: str
    refresh_token: str
    refresh_expires: float


@dataclass(frozen=True)
class GrantResult:
    """A token request's outcome: `error` is an OAuth error code, or None with `grant`."""

    error: str | None
    grant: Grant | None = None
    interval: int = 0
    description: str = ""
    revoked: bool = False       # this request revoked a login (refresh-token reuse)


def new_user_code() -> str:
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LEN))


def normalize_user_code(text: str) -> str | None:
    """`abcd-efgh`, `ABCD EFGH`, `abcdefgh` -> `ABCDEFGH`; None when it cannot be a user code."""
    code = re.sub(r"[\s-]+", "", text).upper()
    if len(code) != USER_CODE_LEN or any(c not in USER_CODE_ALPHABET for c in code):
        return None
    return code


def format_user_code(code: str) -> str:
    half = len(code) // 2
    return f"{code[:half]}-{code[half:]}"


def _user_digest(code: str) -> str:
    return hashlib.sha256(("user-code:" + code).encode("ascii")).hexdigest()


def new_refresh_token() -> str:
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)


def valid_email(text: str) -> str:
    """An account's e-mail address, lower-cased; UsageError when it is not one."""
    email = text.strip().lower()
    if len(email) > 254 or not _EMAIL_RE.match(email):
        raise UsageError(f"invalid e-mail address {text!r}", hint="for example --account alice@example.com")
    return email


def utc_text(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def key_digest(key_text: str) -> str:
    return hashlib.sha256(key_text.encode("utf-8")).hexdigest()


def _machine_base_name(hostname: str) -> str:
    base = re.sub(r"[^a-z0-9._-]+", "-", hostname.strip().lower()).strip("-.")
    return base[:63] or "machine"


def prepare_data_dir(data_dir: str) -> str:
    """The relay's data dir as an absolute path, created 0700 when missing; CmdopError with a
    hint when it cannot be."""
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    try:
        ensure_private_dir(data_dir)
    except OSError as exc:
        raise CmdopError(f"cannot create the relay data dir {data_dir}: {exc.strerror}",
                         hint="choose another with --data-dir DIR") from None
    return data_dir


class MachineClaimedError(CmdopError):
    """An agent presented the machine id of a machine another (live) key enrolled."""


class RelayStore(ShareStore):
    """The relay's database. Open with `RelayStore.open(data_dir)`; `close()` when done."""

    # Whether a call may wait on a network (the router then makes it on a worker thread): a
    # local SQLite file in WAL mode does not; PostgreSQL does.
    blocking_io = False

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
        data_dir = prepare_data_dir(data_dir)
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
                    _run_script(cur, _SCHEMA)
                    _run_script(cur, _SCHEMA_V2)
                    _run_script(cur, SCHEMA_V3)
                    cur.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                    cur.execute("INSERT INTO meta (key, value) VALUES ('relay_id', ?)",
                                (secrets.token_hex(8),))
                else:
                    row = cur.execute("SELECT MAX(version) FROM schema_version").fetchone()
                    version = int(row[0] or 0)
                    if version > SCHEMA_VERSION:
                        raise CmdopError(
                            f"{self.path} has schema version {version}; this cmdop knows up to {SCHEMA_VERSION}",
                            hint="run a newer cmdop on this data dir",
                        )
                    if version < 2:
                        # 1 -> 2: the OAuth cabinet's tables; nothing existing changes.
                        _run_script(cur, _SCHEMA_V2)
                        cur.execute("INSERT INTO meta (key, value) VALUES ('relay_id', ?)",
                                    (secrets.token_hex(8),))
                    if version < 3:
                        # 2 -> 3: guest shares; nothing existing changes.
                        _run_script(cur, SCHEMA_V3)
                    if version < SCHEMA_VERSION:
                        cur.execute("DELETE FROM schema_version")
                        cur.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
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
    def _write(self) -> Iterator[DbCursor]:
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
                owner = cur.execute("SELECT key_id FROM machines WHERE id = ?",
                                    (row[0],)).fetchone()[0]
                holder = cur.execute("SELECT id, revoked_at, name FROM api_keys WHERE id = ?",
                                     (owner,)).fetchone()
                mine = cur.execute("SELECT name FROM api_keys WHERE id = ?", (key_id,)).fetchone()
                # Another principal: refused (an account's machine belongs to that account). A
                # revoked key: only its successor (a key of the same name: a rotation) may take
                # the machine over, not any member's key.
                if owner != key_id and (
                        holder is None or holder[1] is None or mine is None
                        or mine[0] != holder[2]):
                    raise MachineClaimedError(
                        f"machine id {machine_id[:12]}… is enrolled with another key",
                        "a machine moves to a new key only when its key is rotated (revoke it "
                        "and create the new one with the same name); to enrol it afresh under "
                        "this key instead, stop its agent and remove machine_id, e2e_key and "
                        "e2e_seen from its state dir")
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

    def host_candidates(self, workspace: str, host: str) -> list[Machine]:
        """The machines of `workspace` from which `routing.resolve_host(host, …)` decides
        exactly as over all of them, read by index (a call's host lookup must not read the
        whole workspace): the first MAX_MATCHES_SHOWN + 1 whose name starts with `host` (by
        name; the exact name sorts first), and, when one is named exactly `host`, every other
        match enrolled no later than it (what can make that exact name ambiguous). An
        ambiguous host then lists at most MAX_MATCHES_SHOWN names; an unknown workspace or a
        host no name can start with has none."""
        want = routing.host_prefix(host)
        if want is None:
            return []
        # Names hold only routing.NAME_CHARS (all below DEL), and both backends compare text
        # byte-wise: [want, want + DEL) is exactly the names starting with `want`, an index
        # range on machines(workspace_id, name).
        where = f"SELECT {self._MACHINE_COLUMNS} WHERE w.name = ? AND m.name >= ? AND m.name < ?"
        span = (workspace.strip().lower(), want, want + "\x7f")
        rows = self._read(f"{where} ORDER BY m.name LIMIT ?", (*span, routing.MAX_MATCHES_SHOWN + 1))
        found = [Machine(*r) for r in rows]
        if len(found) > 1 and found[0].name == want:
            earlier = self._read(f"{where} AND m.first_seen <= ? AND m.id != ? ORDER BY m.name",
                                 (*span, found[0].first_seen, found[0].id))
            seen = {m.id for m in found}
            found += [Machine(*r) for r in earlier if r[0] not in seen]
        return [m for m in found if m.name.startswith(want)]

    def find_machine(self, workspace: str, machine_id: str) -> Machine | None:
        """The machine of `workspace` enrolled with the agent machine id `machine_id`; None
        when there is none (one indexed read)."""
        rows = self._read(f"SELECT {self._MACHINE_COLUMNS} WHERE w.name = ? AND m.machine_id = ?",
                          (workspace.strip().lower(), machine_id.strip()))
        return Machine(*rows[0]) if rows else None

    # -- the OAuth cabinet: relay id --------------------------------------------------------

    def relay_id(self) -> str:
        """This relay's id (random, made with the database): access tokens' audience names it."""
        rows = self._read("SELECT value FROM meta WHERE key = 'relay_id'")
        return str(rows[0][0])

    # -- accounts ---------------------------------------------------------------------------

    def _account(self, cur: DbCursor | None, where: str, params: tuple[Any, ...]) -> Account | None:
        sql = f"SELECT id, email, created_at, disabled_at FROM accounts WHERE {where}"
        rows = cur.execute(sql, params).fetchall() if cur is not None else self._read(sql, params)
        if not rows:
            return None
        aid, email, created, disabled = rows[0]
        wsql = ("SELECT w.name FROM account_workspaces aw JOIN workspaces w ON w.id = aw.workspace_id "
                "WHERE aw.account_id = ? ORDER BY w.name")
        ws = cur.execute(wsql, (aid,)).fetchall() if cur is not None else self._read(wsql, (aid,))
        return Account(id=aid, email=email, created_at=created, disabled_at=disabled,
                       workspaces=tuple(r[0] for r in ws))

    def list_accounts(self) -> list[Account]:
        rows = self._read("SELECT email FROM accounts ORDER BY email")
        out = []
        for (email,) in rows:
            acct = self._account(None, "email = ?", (email,))
            if acct is not None:
                out.append(acct)
        return out

    def find_account(self, email: str) -> Account:
        """The account with this e-mail address (case-insensitive); NotFoundError otherwise."""
        wanted = email.strip().lower()
        acct = self._account(None, "email = ?", (wanted,))
        if acct is None:
            raise NotFoundError(f"no account {email!r} on this relay",
                                hint="list them with `cmdop relay account list`")
        return acct

    def set_account_disabled(self, email: str, disabled: bool) -> Account:
        """Disable (or enable again) an account. Disabling revokes every refresh token it holds
        and deny-lists their live access tokens; the running relay ends its links and calls
        (`disabled_account_ids`, noticed through `data_version`)."""
        acct = self.find_account(email)
        now, stamp = self._clock(), self._now()
        with self._write() as cur:
            if disabled:
                cur.execute("UPDATE accounts SET disabled_at = ? WHERE id = ? AND disabled_at IS NULL",
                            (stamp, acct.id))
                self._deny_where(cur, "account_id = ?", (acct.id,), now)
                cur.execute("UPDATE refresh_tokens SET revoked_at = ? WHERE account_id = ? "
                            "AND revoked_at IS NULL", (stamp, acct.id))
            else:
                cur.execute("UPDATE accounts SET disabled_at = NULL WHERE id = ?", (acct.id,))
        return self.find_account(acct.email)

    def disabled_account_ids(self) -> frozenset[str]:
        """Ids (not prefixed) of disabled accounts: a Principal's id is `acct:<this id>`."""
        return frozenset(r[0] for r in self._read("SELECT id FROM accounts WHERE disabled_at IS NOT NULL"))

    def denied_token_ids(self) -> frozenset[str]:
        """The jti of every access token revoked before its expiry (and not yet expired)."""
        return frozenset(r[0] for r in self._read("SELECT jti FROM denied_tokens WHERE expires > ?",
                                                  (self._clock(),)))

    def access_token_allowed(self, account_id: str, workspace: str, jti: str) -> bool:
        """True when the account exists, is not disabled, still belongs to `workspace`, and the
        access token `jti` is not deny-listed: what a verified relay JWT must also pass."""
        rows = self._read(
            "SELECT a.disabled_at, "
            "(SELECT 1 FROM account_workspaces aw JOIN workspaces w ON w.id = aw.workspace_id "
            " WHERE aw.account_id = a.id AND w.name = ?), "
            "(SELECT 1 FROM denied_tokens d WHERE d.jti = ?) "
            "FROM accounts a WHERE a.id = ?", (workspace, jti, account_id))
        if not rows:
            return False
        disabled, member, denied = rows[0]
        return disabled is None and member is not None and denied is None

    def deny_access_token(self, jti: str, expires: float) -> None:
        """Put an access token's id on the deny list until `expires` (epoch seconds)."""
        if not jti or len(jti) > 128:
            return
        with self._write() as cur:
            cur.execute("INSERT OR IGNORE INTO denied_tokens (jti, expires) VALUES (?, ?)",
                        (jti, float(expires)))

    def _deny_where(self, cur: DbCursor, where: str, params: tuple[Any, ...], now: float) -> None:
        """Deny-list the live access tokens issued with the refresh tokens matching `where`."""
        cur.execute("INSERT OR IGNORE INTO denied_tokens (jti, expires) "
                    f"SELECT access_jti, access_expires FROM refresh_tokens WHERE {where} "
                    "AND access_expires > ?", (*params, now))

    # -- device authorization (RFC 8628) ----------------------------------------------------

    def start_device_authorization(self, client_id: str, scope: str, workspace_hint: str,
                                   client_address: str, *, ttl_s: int = DEVICE_CODE_TTL_S,
                                   interval_s: int = DEVICE_POLL_INTERVAL_S,
                                   max_pending: int = MAX_PENDING_DEVICE_CODES) -> DeviceStart:
        """A new pending device authorization: its device code (for the device) and user code
        (for the person, shown XXXX-XXXX); both stored hashed. CmdopError when `max_pending`
        unexpired requests already wait."""
        now, stamp = self._clock(), self._now()
        device_code = secrets.token_urlsafe(32)
        with self._write() as cur:
            self._purge(cur, now)
            pending = cur.execute("SELECT COUNT(*) FROM device_codes WHERE status = 'pending' "
                                  "AND expires > ?", (now,)).fetchone()[0]
            if int(pending) >= max_pending:
                raise CmdopError(f"{pending} device logins are already waiting for approval",
                                 hint="approve or deny them, or wait for them to expire")
            while True:
                user_code = new_user_code()
                if not cur.execute("SELECT 1 FROM device_codes WHERE user_sha256 = ?",
                                   (_user_digest(user_code),)).fetchone():
                    break
            cur.execute(
                "INSERT INTO device_codes (id, device_sha256, user_sha256, client_id, scope, "
                "workspace_hint, client_address, created_at, expires, interval_s, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                (secrets.token_hex(8), key_digest(device_code), _user_digest(user_code), client_id,
                 scope, workspace_hint[:64], client_address[:128], stamp, now + ttl_s, interval_s))
        return DeviceStart(device_code=device_code, user_code=format_user_code(user_code),
                           expires_in=ttl_s, interval=interval_s)

    _DEVICE_COLUMNS = ("d.id, d.client_id, d.scope, d.workspace_hint, d.client_address, d.created_at, "
                       "d.expires, d.status, a.email, w.name FROM device_codes d "
                       "LEFT JOIN accounts a ON a.id = d.account_id "
                       "LEFT JOIN workspaces w ON w.id = d.workspace_id")

    def list_device_requests(self) -> list[DeviceRequest]:
        """Device authorizations still waiting for `cmdop relay approve|deny`, oldest first."""
        rows = self._read(f"SELECT {self._DEVICE_COLUMNS} WHERE d.status = 'pending' AND d.expires > ? "
                          "ORDER BY d.created_at, d.id", (self._clock(),))
        return [DeviceRequest(*r) for r in rows]

    def _pending_by_user_code(self, cur: DbCursor, user_code: str) -> DeviceRequest:
        code = normalize_user_code(user_code)
        if code is None:
            raise UsageError(f"{user_code!r} is not a user code",
                             hint=f"a user code is {USER_CODE_LEN} letters from {USER_CODE_ALPHABET} "
                                  "(no vowels), shown as XXXX-XXXX by `cmdop login`")
        row = cur.execute(f"SELECT {self._DEVICE_COLUMNS} WHERE d.user_sha256 = ?",
                          (_user_digest(code),)).fetchone()
        if row is None:
            raise NotFoundError(f"no device login with user code {format_user_code(code)}",
                                hint="check the code `cmdop login` shows; pending ones: "
                                     "`cmdop relay device list`")
        req = DeviceRequest(*row)
        if req.status != "pending":
            raise CmdopError(f"the device login {format_user_code(code)} was already {req.status}",
                             hint="run `cmdop login` again for a new code")
        if req.expires <= self._clock():
            raise CmdopError(f"the device login {format_user_code(code)} has expired",
                             hint="run `cmdop login` again for a new code")
        return req

    def approve_device(self, user_code: str, email: str, workspace: str | None = None) -> tuple[DeviceRequest, Account]:
        """Approve the pending device login `user_code` for the account `email` (created when
        new) in `workspace` (default: the workspace the device asked for). The account becomes
        a member of the workspace. Errors: unknown, decided or expired code; bad e-mail; no such
        workspace; a disabled account."""
        email = valid_email(email)
        stamp = self._now()
        with self._write() as cur:
            req = self._pending_by_user_code(cur, user_code)
            chosen = (workspace or req.workspace_hint or "").strip().lower()
            if not chosen:
                raise UsageError("which workspace? the device did not ask for one",
                                 hint="add --workspace W")
            ws = cur.execute("SELECT id, name FROM workspaces WHERE name = ?", (chosen,)).fetchone()
            if ws is None:
                raise NotFoundError(f"no workspace {chosen!r} on this relay",
                                    hint="list them with `cmdop relay workspace list`")
            acct = self._account(cur, "email = ?", (email,))
            if acct is None:
                account_id = secrets.token_hex(8)
                cur.execute("INSERT INTO accounts (id, email, created_at) VALUES (?, ?, ?)",
                            (account_id, email, stamp))
            elif acct.disabled_at is not None:
                raise CmdopError(f"the account {email} is disabled",
                                 hint=f"enable it first: cmdop relay account enable {email}")
            else:
                account_id = acct.id
            cur.execute("INSERT OR IGNORE INTO account_workspaces (account_id, workspace_id, added_at) "
                        "VALUES (?, ?, ?)", (account_id, ws[0], stamp))
            cur.execute("UPDATE device_codes SET status = 'approved', account_id = ?, workspace_id = ?, "
                        "decided_at = ? WHERE id = ? AND status = 'pending'",
                        (account_id, ws[0], stamp, req.id))
            row = cur.execute(f"SELECT {self._DEVICE_COLUMNS} WHERE d.id = ?", (req.id,)).fetchone()
            out = self._account(cur, "id = ?", (account_id,))
        assert out is not None
        return DeviceRequest(*row), out

    def deny_device(self, user_code: str) -> DeviceRequest:
        """Deny the pending device login `user_code`: its device is told access_denied."""
        with self._write() as cur:
            req = self._pending_by_user_code(cur, user_code)
            cur.execute("UPDATE device_codes SET status = 'denied', decided_at = ? WHERE id = ?",
                        (self._now(), req.id))
            row = cur.execute(f"SELECT {self._DEVICE_COLUMNS} WHERE d.id = ?", (req.id,)).fetchone()
        return DeviceRequest(*row)

    def poll_device_code(self, device_code: str, client_id: str, *, access_jti: str,
                         access_expires: float, refresh_ttl_s: int = REFRESH_TOKEN_TTL_S) -> GrantResult:
        """The token endpoint's device_code grant (RFC 8628 §3.4-3.5), in one transaction:
        invalid_grant (unknown or already used) · expired_token · slow_down (polled sooner
        than the interval: the interval grows by 5 s) · authorization_pending · access_denied
        · or the grant, with a new refresh token (a new family) recorded with the access token
        `access_jti` the caller is about to sign. The code is then used: single use."""
        now, stamp = self._clock(), self._now()
        with self._write() as cur:
            row = cur.execute("SELECT id, client_id, expires, interval_s, last_poll, status, account_id, "
                              "workspace_id, scope FROM device_codes WHERE device_sha256 = ?",
                              (key_digest(device_code),)).fetchone()
            if row is None or row[1] != client_id or row[5] == "used":
                return GrantResult("invalid_grant", description="unknown or already used device code")
            did, _, expires, interval, last_poll, status, account_id, workspace_id, scope = row
            if now >= float(expires):
                return GrantResult("expired_token", description="the device code has expired; start again")
            if status == "denied":
                return GrantResult("access_denied", description="the login was denied")
            if status == "pending":
                if last_poll is not None and now - float(last_poll) < int(interval) - POLL_TOLERANCE_S:
                    interval = int(interval) + 5
                    cur.execute("UPDATE device_codes SET interval_s = ?, last_poll = ? WHERE id = ?",
                                (interval, now, did))
                    return GrantResult("slow_down", interval=interval,
                                       description=f"polled too fast; wait {interval} s between polls")
                cur.execute("UPDATE device_codes SET last_poll = ? WHERE id = ?", (now, did))
                return GrantResult("authorization_pending", interval=int(interval),
                                   description="waiting for `cmdop relay approve`")
            cur.execute("UPDATE device_codes SET status = 'used', last_poll = ? WHERE id = ?", (now, did))
            acct = cur.execute("SELECT email, disabled_at FROM accounts WHERE id = ?", (account_id,)).fetchone()
            ws = cur.execute("SELECT name FROM workspaces WHERE id = ?", (workspace_id,)).fetchone()
            if acct is None or ws is None or acct[1] is not None:
                return GrantResult("access_denied", description="the account is disabled")
            grant = Grant(account_id=account_id, email=acct[0], workspace=ws[0], scope=scope,
                          client_id=client_id, refresh_token=new_refresh_token(),
                          refresh_expires=now + refresh_ttl_s)
            self._insert_refresh(cur, grant, secrets.token_hex(8), workspace_id, stamp, access_jti,
                                 access_expires)
        return GrantResult(None, grant=grant)

    def _insert_refresh(self, cur: DbCursor, grant: Grant, family_id: str, workspace_id: str,
                        stamp: str, access_jti: str, access_expires: float) -> None:
        cur.execute(
            "INSERT INTO refresh_tokens (id, token_sha256, family_id, account_id, workspace_id, client_id, "
            "scope, created_at, expires, access_jti, access_expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (secrets.token_hex(8), key_digest(grant.refresh_token), family_id, grant.account_id,
             workspace_id, grant.client_id, grant.scope, stamp, grant.refresh_expires, access_jti,
             float(access_expires)))

    def rotate_refresh_token(self, refresh_token: str, client_id: str, *, access_jti: str,
                             access_expires: float, refresh_ttl_s: int = REFRESH_TOKEN_TTL_S) -> GrantResult:
        """The refresh_token grant: the token is exchanged for a new one of the same family
        (the old one is spent). A spent token presented again is reuse — someone holds a copy
        — and revokes the whole family, deny-listing its live access tokens. invalid_grant for
        unknown, spent, revoked or expired tokens, disabled accounts and lost memberships."""
        now, stamp = self._clock(), self._now()
        with self._write() as cur:
            row = cur.execute(
                "SELECT r.id, r.family_id, r.account_id, r.workspace_id, r.client_id, r.scope, r.expires, "
                "r.rotated_at, r.revoked_at, a.email, a.disabled_at, w.name, "
                "(SELECT 1 FROM account_workspaces aw WHERE aw.account_id = r.account_id "
                " AND aw.workspace_id = r.workspace_id) "
                "FROM refresh_tokens r JOIN accounts a ON a.id = r.account_id "
                "JOIN workspaces w ON w.id = r.workspace_id WHERE r.token_sha256 = ?",
                (key_digest(refresh_token),)).fetchone()
            if row is None or row[4] != client_id:
                return GrantResult("invalid_grant", description="unknown refresh token")
            (rid, family, account_id, workspace_id, _, scope, expires, rotated, revoked, email,
             disabled, ws_name, member) = row
            if revoked is not None:
                return GrantResult("invalid_grant", description="the refresh token was revoked")
            if rotated is not None:
                self._revoke_family(cur, family, now, stamp)
                log.warning("refresh token reuse for account %s: its login (family %s) is revoked",
                            email, family)
                return GrantResult("invalid_grant", revoked=True,
                                   description="refresh token reuse: this login is revoked; log in again")
            if now >= float(expires):
                return GrantResult("invalid_grant", description="the refresh token has expired")
            if disabled is not None or member is None:
                return GrantResult("invalid_grant", description="the account is disabled")
            cur.execute("UPDATE refresh_tokens SET rotated_at = ? WHERE id = ?", (stamp, rid))
            grant = Grant(account_id=account_id, email=email, workspace=ws_name, scope=scope,
                          client_id=client_id, refresh_token=new_refresh_token(),
                          refresh_expires=now + refresh_ttl_s)
            self._insert_refresh(cur, grant, family, workspace_id, stamp, access_jti, access_expires)
        return GrantResult(None, grant=grant)

    def _revoke_family(self, cur: DbCursor, family: str, now: float, stamp: str) -> None:
        self._deny_where(cur, "family_id = ?", (family,), now)
        cur.execute("UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
                    (stamp, family))

    def revoke_refresh_token(self, refresh_token: str) -> bool:
        """Revoke a refresh token and its whole family (RFC 7009); False when unknown."""
        now, stamp = self._clock(), self._now()
        with self._write() as cur:
            row = cur.execute("SELECT family_id FROM refresh_tokens WHERE token_sha256 = ?",
                              (key_digest(refresh_token),)).fetchone()
            if row is None:
                return False
            self._revoke_family(cur, row[0], now, stamp)
        return True

    def _purge(self, cur: DbCursor, now: float) -> None:
        """Forget what can no longer matter: device codes an hour past expiry, refresh tokens a
        day past it, deny-list entries past their token's expiry."""
        cur.execute("DELETE FROM device_codes WHERE expires < ?", (now - 3600,))
        cur.execute("DELETE FROM refresh_tokens WHERE expires < ?", (now - 86400,))
        cur.execute("DELETE FROM denied_tokens WHERE expires < ?", (now,))


def _run_script(cur: DbCursor, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            cur.execute(statement)


def _valid_or_none(name: str) -> bool:
    try:
        valid_name(name)
    except UsageError:
        return False
    return True
