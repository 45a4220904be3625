"""Access tokens from an external OpenID Connect provider (`cmdop relay serve --oidc-issuer URL
--oidc-audience A --oidc-workspace-claim C`).

The provider's signing keys come from its JWKS, found through its discovery document
(`ISSUER/.well-known/openid-configuration`, whose `issuer` must equal the configured one). They
are fetched off the event loop (a worker thread) and cached:
- `start()` fetches once at relay start (a provider that is down then is retried, not fatal),
  `run()` refetches every 15 minutes, replacing the whole set (keys the provider dropped are no
  longer accepted);
- a token whose `kid` is not in the cache makes `verify()` schedule a refetch in the background
  and refuse that token (it never waits on the network), while `averify()` awaits the refetch
  (bounded) and tries again — the provider rotated its keys. Refetches for unknown kids happen
  at most once per `min_refetch_s`, so random kids cannot make the relay hammer the provider.

A token passes when: its `alg` is on the allow-list (RS256, ES256, EdDSA by default; never
`none` or HMAC) and is the algorithm of the key its `kid` names; the signature verifies; `iss`
equals the issuer; `aud` contains the audience; `exp` (required), `nbf` and `iat` hold against the
clock with a 60 s leeway; `sub` is a non-empty string; and the workspace claim is a workspace
name (a string, or a list of exactly one). Whether that workspace exists is the caller's check.

HTTPS is required for the issuer and the JWKS, except on loopback addresses (a local test
provider); certificates are checked against the system's CAs (or `ca_file`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import ssl
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

import jwt

from cmdop.core.errors import UsageError
from cmdop.relay.tokens import MAX_TOKEN_LEN, TokenError, check_times, unverified_header

log = logging.getLogger("cmdop.relay")

DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
_NEVER = frozenset({"none", "HS256", "HS384", "HS512"})
REFRESH_EVERY_S = 900.0
MIN_REFETCH_S = 10.0
FETCH_TIMEOUT_S = 5.0
MAX_DOCUMENT_BYTES = 1 << 20
LEEWAY_S = 60.0


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> str:
    """`url` when it is https (or http on loopback) with a host and no query or fragment."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("https", "http") or not parsed.hostname or parsed.fragment:
        raise UsageError(f"invalid {what} {url!r}: expected https://HOST[:PORT][/PATH]")
    if parsed.scheme == "http" and not _is_loopback(parsed.hostname):
        raise UsageError(f"the {what} {url!r} must use https (http only on loopback)")
    return url


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    workspace_claim: str = "workspace"
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_s: float = LEEWAY_S

    def __post_init__(self) -> None:
        check_url(self.issuer, "--oidc-issuer")
        if not self.audience:
            raise UsageError("--oidc-issuer needs --oidc-audience (the audience its tokens carry for this relay)")
        if not self.workspace_claim:
            raise UsageError("--oidc-workspace-claim must name a claim")
        bad = [a for a in self.algorithms if a in _NEVER or a not in DEFAULT_ALGORITHMS]
        if bad or not self.algorithms:
            raise UsageError(f"algorithms {bad} are not allowed for external tokens",
                             hint=f"choose among {', '.join(DEFAULT_ALGORITHMS)}")


@dataclass(frozen=True)
class OidcIdentity:
    issuer: str
    subject: str
    workspace: str          # lower-cased
    expires_at: float
    email: str | None


class UnknownKey(TokenError):
    """The token names a key the cached JWKS does not have (yet)."""


Fetch = Callable[[str], bytes]


class OidcVerifier:
    def __init__(self, config: OidcConfig, *, fetch: Fetch | None = None,
                 clock: Callable[[], float] = time.time, ca_file: str | None = None,
                 refresh_every_s: float = REFRESH_EVERY_S, min_refetch_s: float = MIN_REFETCH_S) -> None:
        self.config = config
        self.issuer = config.issuer
        self._clock = clock
        self._fetch = fetch or self._https_fetch
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self.refresh_every_s = refresh_every_s
        self.min_refetch_s = min_refetch_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._jwks_uri: str | None = None
        self._fetched_at: float | None = None      # last attempt (success or not), monotonic
        self._lock = threading.Lock()
        self._background: threading.Thread | None = None
        self.fetches = 0

    # -- the key set ----------------------------------------------------------------------

    def _https_fetch(self, url: str) -> bytes:
        check_url(url, "OIDC URL")
        req = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   "User-Agent": "cmdop-relay"})
        with urllib.request.urlopen(req, timeout=FETCH_TIMEOUT_S, context=self._ssl) as resp:
            body: bytes = resp.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
        return body

    def _get_json(self, url: str) -> dict[str, Any]:
        doc = json.loads(self._fetch(url))
        if not isinstance(doc, dict):
            raise ValueError(f"{url}: not a JSON object")
        return doc

    def refresh(self, only_if_stale: bool = False) -> bool:
        """Fetch the discovery document (once) and the JWKS now, blocking: call it off the event
        loop. True when the key set was replaced; errors are logged, the old set kept.
        `only_if_stale`: skip when another fetch happened within `min_refetch_s` (callers that
        queued behind one another for the same unknown kid fetch once)."""
        with self._lock:
            if only_if_stale and not self._may_refetch():
                return False
            self._fetched_at = time.monotonic()
            self.fetches += 1
            try:
                if self._jwks_uri is None:
                    disco = self._get_json(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
                    if disco.get("issuer") != self.issuer:
                        raise ValueError(f"the discovery document names issuer {disco.get('issuer')!r}, "
                                         f"not {self.issuer!r}")
                    uri = disco.get("jwks_uri")
                    if not isinstance(uri, str):
                        raise ValueError("the discovery document has no jwks_uri")
                    self._jwks_uri = check_url(uri, "jwks_uri")
                jwks = jwt.PyJWKSet.from_dict(self._get_json(self._jwks_uri))
            except Exception as exc:  # noqa: BLE001 - network, JSON, key errors: keep the old set
                log.warning("cannot fetch the signing keys of %s: %s", self.issuer, exc)
                return False
            keys: dict[str, jwt.PyJWK] = {}
            for k in jwks.keys:
                if k.algorithm_name in self.config.algorithms and k.public_key_use in (None, "sig"):
                    keys[k.key_id or ""] = k
            self._keys = keys
            log.info("signing keys of %s: %s", self.issuer, ", ".join(sorted(keys)) or "none usable")
            return True

    def _may_refetch(self) -> bool:
        last = self._fetched_at
        return last is None or time.monotonic() - last >= self.min_refetch_s

    def refresh_in_background(self) -> bool:
        """Start a refetch on a worker thread unless one runs or the last was too recent."""
        if not self._may_refetch() or (self._background is not None and self._background.is_alive()):
            return False
        self._background = threading.Thread(target=self.refresh, args=(True,), name="cmdop-oidc-jwks",
                                            daemon=True)
        self._background.start()
        return True

    async def start(self) -> None:
        await asyncio.to_thread(self.refresh)

    async def run(self) -> None:
        """Forever: refetch the key set every `refresh_every_s`."""
        while True:
            await asyncio.sleep(self.refresh_every_s)
            await asyncio.to_thread(self.refresh)

    # -- verification ---------------------------------------------------------------------

    def check(self, token: str) -> OidcIdentity:
        """The identity in `token`; UnknownKey when its kid is not cached, TokenError otherwise."""
        if len(token) > MAX_TOKEN_LEN:
            raise TokenError("token too long")
        header = unverified_header(token)
        if header is None:
            raise TokenError("not a compact JWS")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.config.algorithms:
            raise TokenError(f"algorithm {alg!r} is not allowed")
        kid = header.get("kid") or ""
        if not isinstance(kid, str):
            raise TokenError("kid is not a string")
        key = self._keys.get(kid)
        if key is None and not kid and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        if key is None:
            raise UnknownKey(f"no key {kid!r} in the JWKS of {self.issuer}")
        if key.algorithm_name != alg:
            raise TokenError(f"key {kid!r} is for {key.algorithm_name}, the token says {alg}")
        try:
            payload = jwt.decode(
                token, key.key, algorithms=[alg], audience=self.config.audience, issuer=self.issuer,
                options={"require": ["iss", "aud", "sub", "exp"], "verify_exp": False,
                         "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"{type(exc).__name__}: {exc}") from None
        check_times(payload, self._clock(), self.config.leeway_s)
        sub = payload.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise TokenError("sub missing or malformed")
        ws = payload.get(self.config.workspace_claim)
        if isinstance(ws, list) and len(ws) == 1:
            ws = ws[0]
        if not isinstance(ws, str) or not ws.strip():
            raise TokenError(f"claim {self.config.workspace_claim!r} is not one workspace name")
        email = payload.get("email")
        return OidcIdentity(issuer=self.issuer, subject=sub, workspace=ws.strip().lower(),
                            expires_at=float(payload["exp"]),
                            email=email if isinstance(email, str) else None)

    def verify(self, token: str) -> OidcIdentity | None:
        """`check` without ever waiting on the network: an unknown kid schedules a refetch."""
        try:
            return self.check(token)
        except UnknownKey as exc:
            log.info("%s; refetching the key set", exc)
            self.refresh_in_background()
            return None
        except TokenError as exc:
            log.info("external token refused: %s", exc)
            return None

    async def averify(self, token: str, *, timeout_s: float = FETCH_TIMEOUT_S + 1) -> OidcIdentity | None:
        """`check`; on an unknown kid, await one refetch (off the loop, bounded) and check again."""
        try:
            return self.check(token)
        except UnknownKey as exc:
            if not self._may_refetch():
                log.info("%s (refetched recently)", exc)
                return None
            log.info("%s; refetching the key set", exc)
            try:
                await asyncio.wait_for(asyncio.to_thread(self.refresh, True), timeout_s)
            except asyncio.TimeoutError:
                return None
            return self.verify(token)
        except TokenError as exc:
            log.info("external token refused: %s", exc)
            return None
