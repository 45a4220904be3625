"""The relay store on PostgreSQL (psycopg 3): what `cmdop relay serve --store postgresql://…` keeps.

Why a subclass of the SQLite store: every rule (hashed secrets, single-use device codes,
refresh-token rotation and reuse detection, the deny list, machine naming, shares) is written
once, in cmdop.relay.store and cmdop.relay.share_store; this module supplies the connection,
the transactions and the schema, and translates the few SQLite-only spellings of that SQL
(`?` placeholders, `INSERT OR IGNORE`). A statement it does not know how to translate fails
(CmdopError) rather than running with other semantics.

Transactions: every write transaction first takes one transaction-level advisory lock, so
writes are serialised across all relay nodes sharing the database exactly as SQLite's
`BEGIN IMMEDIATE` serialises them: a refresh token read as unspent is still unspent when it is
marked spent, and a share's last use cannot be taken twice. Writes are rare (logins, enrolment,
revocations, a `last_seen` every few minutes), so one lock costs nothing measurable. Reads run
in autocommit, one statement each.

Schema: in the PostgreSQL schema `cmdop` (created when missing; the connection's search_path),
the same tables as SQLite with REAL as DOUBLE PRECISION and text compared byte-wise (COLLATE
"C", as SQLite does), plus `change_counter`, bumped by every write transaction: `data_version()`
reads it, so a node notices another node's or an admin command's revocation. Migrations run at
open, inside one transaction holding the same advisory lock: several nodes starting at once
migrate once.

Failures: a server that cannot be reached (or drops the connection) raises
StoreUnavailableError naming HOST:PORT, never the password; after a failed attempt the store
fails fast for RECONNECT_AFTER_S before trying again, so a relay whose database is down answers
"unavailable" at once instead of stalling on every key check. A broken connection is replaced on
next use; a read is retried once on a fresh connection. A server that hangs without closing the
connection holds up one query; the calls queued behind it give up after LOCK_WAIT_S with the
same StoreUnavailableError (fail closed, not wait).
"""

from __future__ import annotations

import logging
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable, Iterator, cast

import psycopg
from psycopg import conninfo as pg_conninfo

from cmdop.core.errors import (CmdopError, StoreStatementError, StoreUnavailableError,
                               UsageError)
from cmdop.relay import store as sqlite_store
from cmdop.relay.share_store import SCHEMA_V3
from cmdop.relay.store import SCHEMA_VERSION, RelayStore
from cmdop.relay.store_api import DbCursor, RelayStoreApi

log = logging.getLogger("cmdop.relay")

PG_SCHEMA = "cmdop"
CONNECT_TIMEOUT_S = 3
CONNECT_DEFAULTS: dict[str, Any] = {
    "application_name": "cmdop-relay",
    "connect_timeout": CONNECT_TIMEOUT_S,
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 2,
    "tcp_user_timeout": 5000,       # ms: unacknowledged data for this long = the link is dead
}
STATEMENT_TIMEOUT_MS = 10_000      # no query (or wait for the write lock) blocks a relay longer
RECONNECT_AFTER_S = 2.0
# How long a store call waits for the one connection while another call holds it. A server
# that hangs (stopped, not gone: no TCP timeout fires) would otherwise queue every key check
# behind one stuck query for as long as it hangs; past this they fail closed instead.
LOCK_WAIT_S = 5.0
# pg_advisory_xact_lock key: "cmdop" as a number, so other applications' locks do not collide.
WRITE_LOCK_KEY = int.from_bytes(b"cmdop", "big")

# The SQLite schema's steps, as PostgreSQL runs them: version N here is version N there.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, sqlite_store._SCHEMA + """
CREATE TABLE change_counter (n BIGINT NOT NULL);
INSERT INTO change_counter (n) VALUES (0);
"""),
    (2, sqlite_store._SCHEMA_V2),
    (3, SCHEMA_V3),
)


def pg_ddl(script: str) -> str:
    """The SQLite DDL `script` for PostgreSQL: REAL is DOUBLE PRECISION (SQLite's REAL is 8
    bytes), TEXT compares byte-wise as in SQLite."""
    script = re.sub(r"\bREAL\b", "DOUBLE PRECISION", script)
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', script)


_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)
_SQLITE_ONLY = re.compile(r"^\s*(PRAGMA|BEGIN|COMMIT|ROLLBACK|INSERT\s+OR|REPLACE)\b|sqlite_",
                          re.IGNORECASE)


@lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """One statement of the store's SQLite SQL, for psycopg: `?` outside string literals
    becomes `%s`, a literal `%` is doubled, `INSERT OR IGNORE INTO …` becomes
    `INSERT INTO … ON CONFLICT DO NOTHING`. CmdopError for SQLite-only statements."""
    ignore = _INSERT_OR_IGNORE.match(sql)
    if ignore:
        sql = "INSERT INTO" + sql[ignore.end():] + " ON CONFLICT DO NOTHING"
    elif _SQLITE_ONLY.search(sql):
        raise CmdopError(f"the PostgreSQL store cannot run this SQLite statement: {sql[:60]!r}",
                         hint="a cmdop bug: report it")
    out: list[str] = []
    quoted = False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        if ch == "%":
            out.append("%%")
        elif ch == "?" and not quoted:
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


class _PgCursor:
    """A psycopg cursor that takes the store's SQLite SQL (see `pg_sql`)."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    def execute(self, sql: str, params: tuple[Any, ...] = (), /) -> _PgCursor:
        if any(isinstance(p, str) and "\x00" in p for p in params):
            # PostgreSQL text cannot hold NUL; SQLite can. Refused alike on both paths.
            raise UsageError("text with a NUL character cannot be stored", hint="remove it")
        self._cur.execute(pg_sql(sql), params)
        return self

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cur.fetchall())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur.fetchall())


class PgTarget:
    """A PostgreSQL location: the libpq connection string and how it may be shown."""

    def __init__(self, url: str) -> None:
        try:
            params = pg_conninfo.conninfo_to_dict(url)
        except psycopg.Error:
            # The parser's message may quote the URL, password included: not shown.
            raise UsageError("the PostgreSQL store URL is malformed",
                             hint="e.g. postgresql://cmdop@db.example.com:5432/cmdop") from None
        self.url = url
        self.password = str(params.get("password") or "")
        host = str(params.get("host") or "localhost")
        port = str(params.get("port") or "5432")
        user = str(params.get("user") or "")
        dbname = str(params.get("dbname") or user or "")
        self.where = f"{host}:{port}" if not host.startswith("/") else f"{host} (port {port})"
        self.shown = f"postgresql://{user + '@' if user else ''}{self.where}/{dbname}"
        self.params = frozenset(params)

    def redact(self, text: str) -> str:
        """`text` without the password (libpq messages do not carry it; belt and braces)."""
        if self.password:
            text = text.replace(self.password, "***")
        return text.replace(self.url, self.shown)


class _BoundedLock:
    """A re-entrant lock whose `with` waits at most `wait_s` (the module's LOCK_WAIT_S when
    None), then raises what `busy()` makes: the store's lock, so that every method of the
    SQLite store it inherits (`with self._lock:`) is bounded too."""

    def __init__(self, busy: Callable[[], Exception], wait_s: float | None = None) -> None:
        self._lock = threading.RLock()
        self._busy = busy
        self.wait_s = wait_s

    def __enter__(self) -> _BoundedLock:
        if not self._lock.acquire(timeout=LOCK_WAIT_S if self.wait_s is None else self.wait_s):
            raise self._busy()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


class PgRelayStore(RelayStore):
    """The relay store on PostgreSQL. Open with `PgRelayStore.connect(url)`."""

    blocking_io = True          # every call is a round trip to the server (router: off the loop)

    def __init__(self, target: PgTarget, clock: Callable[[], float]) -> None:
        # The SQLite connection is never used: every method that touches it is overridden.
        super().__init__(cast(sqlite3.Connection, None), target.shown, clock)
        self._target = target
        self._pg: psycopg.Connection[Any] | None = None
        self._retry_at = 0.0
        self._last_failure = ""
        self._lock = _BoundedLock(lambda: self._unavailable(  # type: ignore[assignment]
            f"no answer to an earlier query for {LOCK_WAIT_S:g} s"))

    @classmethod
    def connect(cls, url: str, *, clock: Callable[[], float] = time.time) -> PgRelayStore:
        """Connect to the database at `url` and bring its schema up to date (module docstring).
        StoreUnavailableError when it cannot be reached; CmdopError for a newer schema."""
        store = cls(PgTarget(url), clock)
        try:
            store._init()
        except BaseException:
            store.close()
            raise
        return store

    # -- connection -------------------------------------------------------------------------

    def _unavailable(self, detail: str) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"the relay's database at {self._target.where} is not reachable: {detail}",
            hint=f"check that PostgreSQL runs there and accepts this relay ({self._target.shown}; "
                 "password from PGPASSFILE or CMDOP_RELAY_STORE)")

    def _failed(self, exc: psycopg.Error) -> CmdopError:
        """A psycopg error as the one CmdopError the store raises for it."""
        detail = self._target.redact(_first_line(exc))
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            self._drop()
            return self._unavailable(detail)
        return StoreStatementError(
            f"the relay's database at {self._target.where} refused a statement: {detail}")

    def _drop(self) -> None:
        pg, self._pg = self._pg, None
        if pg is not None:
            try:
                pg.close()
            except psycopg.Error:
                pass

    def _connection(self) -> psycopg.Connection[Any]:
        pg = self._pg
        if pg is not None and not pg.closed and not pg.broken:
            return pg
        self._drop()
        if time.monotonic() < self._retry_at:
            raise self._unavailable(self._last_failure)
        # Bounded waits unless the URL says otherwise: the router's store calls run on worker
        # threads, but a key check waits for them, so a vanished server must cost seconds, not
        # a TCP retransmission timeout.
        extra = {k: v for k, v in CONNECT_DEFAULTS.items() if k not in self._target.params}
        try:
            pg = psycopg.connect(self._target.url, autocommit=True, **extra)
            pg.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            pg.execute(f"SET search_path TO {PG_SCHEMA}")
        except psycopg.Error as exc:
            failure = self._target.redact(_first_line(exc))
            if failure != self._last_failure:
                # One line per outage (and per change of reason), not one per retry.
                log.warning("relay database %s: %s", self._target.shown, failure)
            self._last_failure = failure
            self._retry_at = time.monotonic() + RECONNECT_AFTER_S
            raise self._unavailable(self._last_failure) from None
        if self._last_failure:
            log.warning("relay database %s: connected again", self._target.shown)
            self._last_failure = ""
        self._pg = pg
        return pg

    def close(self) -> None:
        try:
            with self._lock:
                self._drop()
        except StoreUnavailableError:
            pass        # a query hangs on the connection: the process's exit closes it

    def __enter__(self) -> PgRelayStore:
        return self

    # -- plumbing (overrides RelayStore's) ---------------------------------------------------

    def _init(self) -> None:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    cur = conn.cursor()
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                    # Created only when missing: CREATE needs a privilege a running relay's
                    # role may lack once an administrator made the schema for it.
                    schema = cur.execute("SELECT to_regnamespace(%s)", (PG_SCHEMA,)).fetchone()
                    if schema is None or schema[0] is None:
                        cur.execute(f"CREATE SCHEMA {PG_SCHEMA}")
                    row = cur.execute("SELECT to_regclass('schema_version')").fetchone()
                    version = 0
                    if row is not None and row[0] is not None:
                        got = cur.execute("SELECT MAX(version) FROM schema_version").fetchone()
                        version = int(got[0] or 0) if got else 0
                    if version > SCHEMA_VERSION:
                        raise CmdopError(
                            f"{self.path} has schema version {version}; this cmdop knows up to "
                            f"{SCHEMA_VERSION}", hint="run a newer cmdop against this database")
                    for step, script in MIGRATIONS:
                        if step > version:
                            for statement in pg_ddl(script).split(";"):
                                if statement.strip():
                                    cur.execute(statement)
                    if version < SCHEMA_VERSION:
                        cur.execute("DELETE FROM schema_version")
                        cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
                    cur.execute("INSERT INTO meta (key, value) VALUES ('relay_id', %s) "
                                "ON CONFLICT (key) DO NOTHING", (secrets.token_hex(8),))
            except psycopg.Error as exc:
                raise self._failed(exc) from None

    @contextmanager
    def _write(self) -> Iterator[DbCursor]:
        """One write transaction holding the cluster-wide write lock; it bumps the change
        counter before it commits."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    cur = _PgCursor(conn.cursor())
                    cur.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))
                    yield cur
                    cur.execute("UPDATE change_counter SET n = n + 1")
            except psycopg.Error as exc:
                raise self._failed(exc) from None

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            for attempt in (1, 2):
                fresh = self._pg is None or self._pg.closed or self._pg.broken
                conn = self._connection()
                try:
                    return _PgCursor(conn.cursor()).execute(sql, params).fetchall()
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    failure = self._failed(exc)
                    if fresh or attempt == 2:
                        raise failure from None
                    # The connection died since its last use (a server restart): try once more.
                except psycopg.Error as exc:
                    raise self._failed(exc) from None
            raise AssertionError("unreachable")

    def data_version(self) -> int:
        """Moves whenever any relay node or admin command committed a write."""
        return int(self._read("SELECT n FROM change_counter")[0][0])


def _conforms(sqlite: RelayStore, pg: PgRelayStore) -> tuple[RelayStoreApi, RelayStoreApi]:
    """Never called: mypy checks here that both stores implement the interface."""
    return sqlite, pg
