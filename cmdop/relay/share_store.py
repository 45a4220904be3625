"""The relay store's shares (guest access, `cmdop connect share`): a mixin of `RelayStore`.

Table `shares` (schema version 3): the token is kept as its SHA-256 only (hex, unique), looked
up by digest and compared in constant time; the public id `sh_…` names it everywhere else.
Each row is bound to one machine of one workspace. `take_use` counts a call in one UPDATE whose
WHERE clause re-checks revocation, expiry and the use limit, so two racing calls can never both
take the last use. A share is revoked with the credential that created it (its API key revoked,
its login's account disabled or out of the workspace). `revoked_share_ids` lets the running
relay (another process than the admin command) notice a revocation through the store's data
version, like a revoked key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING, Any, Callable, ContextManager

from cmdop.core.errors import NotFoundError
from cmdop.relay import shares
from cmdop.relay.store_api import DbCursor
from cmdop.relay.shares import Share

if TYPE_CHECKING:
    from cmdop.relay.store import Workspace

SCHEMA_V3 = """
CREATE TABLE shares (
    id            TEXT PRIMARY KEY,
    token_sha256  TEXT NOT NULL UNIQUE,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    machine_id    TEXT NOT NULL REFERENCES machines(id),
    note          TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    REAL NOT NULL,
    expires       REAL,
    max_uses      INTEGER NOT NULL,
    uses          INTEGER NOT NULL,
    tools         TEXT NOT NULL,
    revoked_at    REAL
);
CREATE INDEX shares_workspace ON shares(workspace_id);
CREATE INDEX shares_revoked ON shares(revoked_at) WHERE revoked_at IS NOT NULL;
"""

# True when the credential that minted share `s` has been revoked: its API key, or its login's
# account (`acct:<id>`) disabled or no longer a member of the share's workspace. A share dies
# with its creator, so rotating a leaked key (or disabling the account) ends its shares too. An
# external (OIDC) identity cannot be checked here: such shares are revoked explicitly.
def _creator_revoked(t: str) -> str:
    """SQL: whether the creator of the share row `t` (a table name or alias) is revoked."""
    return (f"(EXISTS (SELECT 1 FROM api_keys k WHERE k.id = {t}.created_by "
            "AND k.revoked_at IS NOT NULL)"
            f" OR EXISTS (SELECT 1 FROM accounts a WHERE substr({t}.created_by, 1, 5) = 'acct:'"
            f" AND a.id = substr({t}.created_by, 6) AND (a.disabled_at IS NOT NULL OR NOT EXISTS ("
            "SELECT 1 FROM account_workspaces aw WHERE aw.account_id = a.id"
            f" AND aw.workspace_id = {t}.workspace_id))))")


_COLUMNS = ("s.id, w.name, s.machine_id, m.name, s.note, s.created_by, s.created_at, s.expires, "
            f"s.max_uses, s.uses, s.tools, s.revoked_at, {_creator_revoked('s')} FROM shares s "
            "JOIN workspaces w ON w.id = s.workspace_id JOIN machines m ON m.id = s.machine_id")


def token_digest(token: str) -> str:
    return hashlib.sha256(("share:" + token).encode("utf-8")).hexdigest()


def _share(row: tuple[Any, ...]) -> Share:
    (sid, ws, machine, host, note, by, created, expires, max_uses, uses, tools, revoked,
     creator_revoked) = row
    return Share(id=sid, workspace=ws, machine=machine, host=host, note=note, created_by=by,
                 created_at=float(created), expires_at=None if expires is None else float(expires),
                 max_uses=int(max_uses), uses=int(uses),
                 tools=tuple(t for t in str(tools).split(",") if t),
                 revoked_at=None if revoked is None else float(revoked),
                 creator_revoked=bool(creator_revoked))


class ShareStore:
    """Mixed into `RelayStore` (which provides the connection plumbing named below)."""

    if TYPE_CHECKING:
        _clock: Callable[[], float]

        def _write(self) -> ContextManager[DbCursor]: ...

        def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]: ...

        def get_workspace(self, name: str) -> Workspace: ...

    def create_share(self, workspace: str, machine_row_id: str, *, created_by: str,
                     ttl_s: int | None, tools: tuple[str, ...], max_uses: int,
                     note: str) -> tuple[Share, str]:
        """A new share of the machine `machine_row_id` (of `workspace`): its record and its
        token, which is never available again. `ttl_s` None: no expiry. Values are checked by
        the caller (cmdop.relay.shares); NotFoundError when the machine is not the workspace's."""
        ws = self.get_workspace(workspace)
        now = self._clock()
        token = shares.TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._write() as cur:
            if not cur.execute("SELECT 1 FROM machines WHERE id = ? AND workspace_id = ?",
                               (machine_row_id, ws.id)).fetchone():
                raise NotFoundError("no such machine in this workspace", "see `cmdop hosts`")
            while True:
                sid = shares.ID_PREFIX + secrets.token_hex(6)
                if not cur.execute("SELECT 1 FROM shares WHERE id = ?", (sid,)).fetchone():
                    break
            cur.execute(
                "INSERT INTO shares (id, token_sha256, workspace_id, machine_id, note, created_by, "
                "created_at, expires, max_uses, uses, tools) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (sid, token_digest(token), ws.id, machine_row_id, note, created_by, now,
                 None if ttl_s is None else now + ttl_s, max_uses, ",".join(tools)))
            row = cur.execute(f"SELECT {_COLUMNS} WHERE s.id = ?", (sid,)).fetchone()
        return _share(row), token

    def list_shares(self, workspace: str) -> list[Share]:
        """Every share of `workspace`, newest first (revoked and expired ones included)."""
        ws = self.get_workspace(workspace)
        rows = self._read(f"SELECT {_COLUMNS} WHERE s.workspace_id = ? "
                          "ORDER BY s.created_at DESC, s.id", (ws.id,))
        return [_share(r) for r in rows]

    def get_share(self, share_id: str) -> Share | None:
        """The share `share_id` as stored now, or None."""
        rows = self._read(f"SELECT {_COLUMNS} WHERE s.id = ?", (share_id,))
        return _share(rows[0]) if rows else None

    def share_by_token(self, token: str) -> Share | None:
        """The share whose token this is (in any state: the caller decides), or None for a
        malformed or unknown token."""
        if not shares.looks_like_token(token):
            return None
        digest = token_digest(token)
        rows = self._read(f"SELECT s.token_sha256, {_COLUMNS} WHERE s.token_sha256 = ?", (digest,))
        if not rows or not hmac.compare_digest(str(rows[0][0]), digest):
            return None
        return _share(rows[0][1:])

    def revoke_share(self, workspace: str, share_id: str) -> Share:
        """Revoke the share `share_id` of `workspace` (again: no change). NotFoundError when
        the workspace has no such share."""
        ws = self.get_workspace(workspace)
        sid = share_id.strip().lower()
        if not shares.valid_id(sid):
            # not echoed: what is pasted here by mistake may be the share's token itself
            raise NotFoundError("that is not a share id (sh_ + 12 hex digits)",
                                "list them with `cmdop connect share list`")
        with self._write() as cur:
            if not cur.execute(
                    "SELECT 1 FROM shares WHERE id = ? AND workspace_id = ?",
                    (sid, ws.id)).fetchone():
                raise NotFoundError(f"no share {share_id!r} in workspace {ws.name}",
                                    "list them with `cmdop connect share list`")
            cur.execute("UPDATE shares SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                        (self._clock(), sid))
            row = cur.execute(f"SELECT {_COLUMNS} WHERE s.id = ?", (sid,)).fetchone()
        return _share(row)

    def take_use(self, share_id: str, now: float) -> bool:
        """Count one call against the share, atomically: True when it was live (not revoked,
        not expired, a use left, its creator's credential not revoked) and the use is now
        counted; False otherwise."""
        with self._write() as cur:
            cur.execute("UPDATE shares SET uses = uses + 1 WHERE id = ? AND revoked_at IS NULL "
                        "AND (expires IS NULL OR expires > ?) AND (max_uses = 0 OR uses < max_uses) "
                        f"AND NOT {_creator_revoked('shares')}",
                        (share_id, now))
            return cur.rowcount == 1

    def give_back_use(self, share_id: str) -> None:
        """Undo one `take_use` for a call that was admitted but never forwarded."""
        with self._write() as cur:
            cur.execute("UPDATE shares SET uses = uses - 1 WHERE id = ? AND uses > 0", (share_id,))

    def revoked_share_ids(self) -> frozenset[str]:
        """The ids of revoked shares, and of shares whose creator's credential was revoked (the
        router cuts their live calls)."""
        return frozenset(r[0] for r in self._read(
            f"SELECT s.id FROM shares s WHERE s.revoked_at IS NOT NULL OR {_creator_revoked('s')}"))
