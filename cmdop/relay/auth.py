"""Who a bearer credential is: the one check the relay's router makes on every RPC.

`BearerVerifier.verify(token)` accepts four kinds of credential and returns a `Principal`, or
None for anything it does not accept (malformed, unknown, expired, revoked, disabled):
- a workspace API key (`cmdop_<id>_<secret>`): the store's `verify_key`;
  Principal id = the key id, name = the key's name, credential "api_key", no expiry;
- an access token this relay signed (cmdop.relay.tokens: EdDSA only, this key's kid, iss, aud,
  exp/nbf/iat), whose jti is not deny-listed and whose account is enabled and still a member of
  the token's workspace; id = `acct:<account id>`, name = the e-mail, credential "oauth",
  expires_at = the token's exp;
- when an external issuer is configured (cmdop.relay.oidc), its access tokens: alg allow-list,
  signature by a key of its JWKS, iss, aud, exp/nbf; the configured claim names the workspace,
  which must exist on this relay; id = `oidc:<iss>#<sub>`, name = sub, credential "oidc";
- a share token (`cmdop_share_…`, guest access): the store's `share_by_token`, in any state —
  the router refuses a revoked, expired or used-up share with a reason of its own;
  id = `share:<share id>`, name = the share id, credential "share", share_id set.

`verify` is synchronous: one or two indexed store reads (a round trip to PostgreSQL, which may
wait), so the router calls `averify`, which runs it on a worker thread when the store may block
(`blocking_io`; SQLite is read in place). For an
external token signed with a key not yet cached it schedules a JWKS refetch and refuses —
`averify` (async) awaits that refetch instead, so the first call after a provider's key rotation
succeeds. A Principal exposes `.id`, `.workspace` and `.name` as store.KeyInfo does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from cmdop.core.credentials import KEY_PREFIX
from cmdop.core.errors import NotFoundError
from cmdop.relay.shares import TOKEN_PREFIX as SHARE_TOKEN_PREFIX
from cmdop.relay.tokens import (MAX_TOKEN_LEN, SigningKey, TokenError, unverified_header,
                                verify_access_token)

if TYPE_CHECKING:
    from cmdop.relay.oidc import OidcIdentity, OidcVerifier
    from cmdop.relay.store_api import RelayStoreApi

log = logging.getLogger("cmdop.relay")

ACCOUNT_PREFIX = "acct:"
SHARE_PREFIX = "share:"
OIDC_PREFIX = "oidc:"


@dataclass(frozen=True)
class Principal:
    id: str                     # key id · "acct:<account id>" · "oidc:<iss>#<sub>"
    workspace: str              # the workspace's name
    name: str                   # key name · e-mail · sub
    credential: str             # "api_key" | "oauth" | "oidc"
    expires_at: float | None    # the token's exp (epoch seconds); None for API keys
    token_id: str | None = None  # a relay access token's jti (see store.denied_token_ids)
    share_id: str | None = None  # a guest's share (cmdop.relay.shares); None for members

    @property
    def account_id(self) -> str | None:
        """The relay account id behind an "oauth" principal (see store.disabled_account_ids)."""
        return self.id[len(ACCOUNT_PREFIX):] if self.id.startswith(ACCOUNT_PREFIX) else None


class BearerVerifier:
    def __init__(self, store: RelayStoreApi, *, signing_key: SigningKey | None = None,
                 issuer: str | None = None, audience: str | None = None,
                 oidc: OidcVerifier | None = None, clock: Callable[[], float] = time.time) -> None:
        if signing_key is not None and not (issuer and audience):
            raise ValueError("relay tokens need an issuer and an audience")
        self.store = store
        self.signing_key = signing_key
        self.issuer = issuer
        self.audience = audience
        self.oidc = oidc
        self._clock = clock

    def _kind(self, token: str) -> str:
        if not token or len(token) > MAX_TOKEN_LEN:
            return "none"
        if token.startswith(SHARE_TOKEN_PREFIX):
            return "share"
        if token.startswith(KEY_PREFIX) and token.count(".") == 0:
            return "api_key"
        header = unverified_header(token)
        if header is None:
            return "none"
        if self.signing_key is not None and header.get("kid") == self.signing_key.kid:
            return "relay"
        return "oidc" if self.oidc is not None else "none"

    def verify(self, token: str) -> Principal | None:
        """The principal behind `token`, or None (module docstring)."""
        kind = self._kind(token)
        if kind == "api_key":
            key = self.store.verify_key(token)
            if key is None:
                return None
            return Principal(id=key.id, workspace=key.workspace, name=key.name, credential="api_key",
                             expires_at=None)
        if kind == "relay":
            return self._relay(token)
        if kind == "share":
            share = self.store.share_by_token(token)
            if share is None:
                return None
            return Principal(id=SHARE_PREFIX + share.id, workspace=share.workspace, name=share.id,
                             credential="share", expires_at=share.expires_at, share_id=share.id)
        if kind == "oidc" and self.oidc is not None:
            return self._external(self.oidc.verify(token))
        return None

    async def averify(self, token: str) -> Principal | None:
        """`verify`, off the event loop (its store reads wait on a PostgreSQL server), except
        that an external token signed with a key the relay has not fetched yet waits (bounded)
        for the provider's key set to be refetched."""
        inline = not getattr(self.store, "blocking_io", True)     # SQLite: its reads never wait
        if self._kind(token) == "oidc" and self.oidc is not None:
            ident = await self.oidc.averify(token)
            return self._external(ident) if inline else await asyncio.to_thread(self._external, ident)
        return self.verify(token) if inline else await asyncio.to_thread(self.verify, token)

    def _relay(self, token: str) -> Principal | None:
        assert self.signing_key is not None and self.issuer and self.audience
        try:
            claims = verify_access_token(token, self.signing_key, issuer=self.issuer,
                                         audience=self.audience, now=self._clock())
        except TokenError as exc:
            log.info("access token refused: %s", exc)
            return None
        if not self.store.access_token_allowed(claims.sub, claims.workspace, claims.jti):
            log.info("access token refused: revoked, or account %s disabled or not in %s",
                     claims.sub, claims.workspace)
            return None
        return Principal(id=ACCOUNT_PREFIX + claims.sub, workspace=claims.workspace, name=claims.email,
                         credential="oauth", expires_at=float(claims.exp), token_id=claims.jti)

    def _external(self, ident: OidcIdentity | None) -> Principal | None:
        if ident is None:
            return None
        try:
            ws = self.store.get_workspace(ident.workspace)
        except NotFoundError:
            log.info("external token refused: no workspace %r on this relay", ident.workspace)
            return None
        return Principal(id=f"{OIDC_PREFIX}{ident.issuer}#{ident.subject}", workspace=ws.name,
                         name=ident.subject, credential="oidc", expires_at=ident.expires_at)
