"""The relay store's interface, and how to open one from a `--store` location.

Two backends implement `RelayStoreApi`: SQLite (cmdop.relay.store.RelayStore, the embedded
default: `relay.db` in the data dir, one relay) and PostgreSQL (cmdop.relay.store_pg, several
relay nodes sharing one database). Both run the same SQL (the PostgreSQL store translates the
few SQLite-only spellings) and pass one shared test suite.

A store location (`--store`, else CMDOP_RELAY_STORE, else the data dir):
- empty / `sqlite` / `sqlite:` — `relay.db` in the data dir;
- `sqlite:/abs/dir` — `relay.db` in that directory;
- `postgresql://…` or `postgres://…` — a libpq URL; its password is best kept out of it
  (PGPASSFILE / ~/.pgpass, or the URL in CMDOP_RELAY_STORE rather than on the command line).
Anything else is refused (UsageError): an unknown scheme must not fall back to a default.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from cmdop.core.errors import CmdopError, UsageError

if TYPE_CHECKING:
    from cmdop.relay.shares import Share
    from cmdop.relay.store import (Account, DeviceRequest, DeviceStart, GrantResult, KeyInfo,
                                   Machine, Workspace)

STORE_ENV = "CMDOP_RELAY_STORE"
PG_SCHEMES = ("postgresql://", "postgres://")


class DbCursor(Protocol):
    """What the store's SQL runs on: a sqlite3 cursor, or the PostgreSQL store's translating
    wrapper around a psycopg cursor."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: tuple[Any, ...] = ..., /) -> DbCursor: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class RelayStoreApi(Protocol):
    """What the router, the OAuth cabinet, the bearer verifier and the admin commands call.
    Every method may raise CmdopError; a PostgreSQL store that cannot reach its server raises
    StoreUnavailableError, so a key check or a login fails closed."""

    path: str       # where the store is, for messages (a URL never shows its password)
    blocking_io: bool   # calls may wait on a network: the router makes them off its event loop

    def close(self) -> None: ...
    def __enter__(self) -> RelayStoreApi: ...
    def __exit__(self, *exc: object) -> None: ...
    def data_version(self) -> int: ...
    def relay_id(self) -> str: ...

    # workspaces, keys, machines
    def create_workspace(self, name: str) -> Workspace: ...
    def list_workspaces(self) -> list[Workspace]: ...
    def get_workspace(self, name: str) -> Workspace: ...
    def create_key(self, workspace: str, name: str) -> tuple[KeyInfo, str]: ...
    def list_keys(self, workspace: str | None = None) -> list[KeyInfo]: ...
    def find_key(self, id_or_prefix: str) -> KeyInfo: ...
    def revoke_key(self, key_id: str) -> KeyInfo: ...
    def verify_key(self, key_text: str) -> KeyInfo | None: ...
    def revoked_key_ids(self) -> frozenset[str]: ...
    def enroll_machine(self, workspace: str, key_id: str, hostname: str, machine_id: str,
                       agent_version: str) -> Machine: ...
    def touch_machine(self, machine_row_id: str) -> None: ...
    def list_machines(self, workspace: str) -> list[Machine]: ...
    def host_candidates(self, workspace: str, host: str) -> list[Machine]: ...
    def find_machine(self, workspace: str, machine_id: str) -> Machine | None: ...

    # accounts and the OAuth cabinet
    def list_accounts(self) -> list[Account]: ...
    def find_account(self, email: str) -> Account: ...
    def set_account_disabled(self, email: str, disabled: bool) -> Account: ...
    def disabled_account_ids(self) -> frozenset[str]: ...
    def denied_token_ids(self) -> frozenset[str]: ...
    def access_token_allowed(self, account_id: str, workspace: str, jti: str) -> bool: ...
    def deny_access_token(self, jti: str, expires: float) -> None: ...
    def start_device_authorization(self, client_id: str, scope: str, workspace_hint: str,
                                   client_address: str, *, ttl_s: int = ..., interval_s: int = ...,
                                   max_pending: int = ...) -> DeviceStart: ...
    def list_device_requests(self) -> list[DeviceRequest]: ...
    def approve_device(self, user_code: str, email: str,
                       workspace: str | None = None) -> tuple[DeviceRequest, Account]: ...
    def deny_device(self, user_code: str) -> DeviceRequest: ...
    def poll_device_code(self, device_code: str, client_id: str, *, access_jti: str,
                         access_expires: float, refresh_ttl_s: int = ...) -> GrantResult: ...
    def rotate_refresh_token(self, refresh_token: str, client_id: str, *, access_jti: str,
                             access_expires: float, refresh_ttl_s: int = ...) -> GrantResult: ...
    def revoke_refresh_token(self, refresh_token: str) -> bool: ...

    # guest shares (cmdop.relay.share_store)
    def create_share(self, workspace: str, machine_row_id: str, *, created_by: str,
                     ttl_s: int | None, tools: tuple[str, ...], max_uses: int,
                     note: str) -> tuple[Share, str]: ...
    def list_shares(self, workspace: str) -> list[Share]: ...
    def get_share(self, share_id: str) -> Share | None: ...
    def share_by_token(self, token: str) -> Share | None: ...
    def revoke_share(self, workspace: str, share_id: str) -> Share: ...
    def take_use(self, share_id: str, now: float) -> bool: ...
    def give_back_use(self, share_id: str) -> None: ...
    def revoked_share_ids(self) -> frozenset[str]: ...


def is_postgres(location: str | None) -> bool:
    """True when `location` names a PostgreSQL database."""
    return bool(location) and str(location).strip().lower().startswith(PG_SCHEMES)


def sqlite_dir(location: str | None, data_dir: str) -> str | None:
    """The directory of an SQLite store location (module docstring), or None when `location`
    is not an SQLite one."""
    text = (location or "").strip()
    if text in ("", "sqlite", "sqlite:"):
        return data_dir
    if text.startswith("sqlite:") and text[len("sqlite:"):].startswith("/"):
        return text[len("sqlite:"):]
    return None


def open_store(location: str | None, data_dir: str, *,
               clock: Callable[[], float] = time.time) -> RelayStoreApi:
    """Open the store at `location` (module docstring; None/empty: SQLite in `data_dir`),
    creating or migrating its schema. UsageError for a location that is neither SQLite nor
    PostgreSQL; CmdopError (StoreUnavailableError) when it cannot be opened."""
    if is_postgres(location):
        assert location is not None
        try:
            from cmdop.relay.store_pg import PgRelayStore
        except ImportError as exc:
            # psycopg is in every cmdop; what a machine can lack is libpq, which it loads.
            if "libpq" not in str(exc) and "pq wrapper" not in str(exc):
                raise
            raise CmdopError("a PostgreSQL store needs the libpq client library, which this "
                             "machine lacks",
                             hint="install it: apt-get install libpq5 (Debian, Ubuntu) or "
                                  "dnf install libpq (RHEL, Fedora)") from None
        return PgRelayStore.connect(location.strip(), clock=clock)
    directory = sqlite_dir(location, data_dir)
    if directory is None:
        shown = (location or "").split("://", 1)[0][:32]
        raise UsageError(f"unknown store {shown!r}: give postgresql://… or sqlite:/DIR",
                         hint="e.g. --store postgresql://cmdop@db.example.com/cmdop "
                              "(omit --store for relay.db in the data dir)")
    from cmdop.relay.store import RelayStore

    return RelayStore.open(directory, clock=clock)
