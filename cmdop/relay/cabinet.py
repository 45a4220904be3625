"""The relay's embedded OAuth "cabinet": device login over HTTPS, beside gRPC on the same loop.

aiohttp's web server (no hand-written HTTP), TLS with the relay's own certificate (the one gRPC
serves, so a pinned fingerprint covers both), on `--oauth-listen` (default: the gRPC port + 1).

Endpoints (all answers JSON unless said; `Cache-Control: no-store` everywhere):
- `GET /.well-known/oauth-authorization-server` and `/.well-known/openid-configuration` (RFC
  8414): issuer, the endpoints below, grant types (device_code, refresh_token), client auth
  `none`, and the extensions `cmdop_relay` (the gRPC HOST:PORT callers use) and
  `cmdop_relay_fingerprint` (the certificate's SHA-256).
- `POST /oauth/device` (RFC 8628 §3.1-3.2): form `client_id=cmdop-cli` (the one public client),
  optional `scope`, optional `workspace` (a hint shown to the approver) → device_code, user_code
  (XXXX-XXXX), verification_uri, verification_uri_complete, expires_in 600, interval 5.
  Approval is offline: `cmdop relay approve USER-CODE --account EMAIL --workspace W`.
- `POST /oauth/token` (RFC 6749 §5, RFC 8628 §3.4-3.5): grant_type
  `urn:ietf:params:oauth:grant-type:device_code` (device_code) or `refresh_token`
  (refresh_token; rotated, reuse revokes the family) → access_token (EdDSA JWT, 1 h),
  token_type Bearer, expires_in, refresh_token, scope, workspace, account (e-mail), account_id.
  Errors: HTTP 400 `{"error", "error_description"}` (authorization_pending, slow_down — with the
  new `interval` —, access_denied, expired_token, invalid_grant, invalid_request,
  invalid_client, unsupported_grant_type).
- `POST /oauth/revoke` (RFC 7009): form `token` [`token_type_hint`] → 200 always. A refresh
  token is revoked with its family; one of this relay's access tokens has its jti deny-listed
  until it expires.
- `GET /oauth/jwks`: the public signing key. `GET /device`: a plain-text page telling the
  person to have the relay's administrator approve their code (no form, nothing to submit: there
  is no approval over HTTP, hence no CSRF or clickjacking surface; framing is forbidden anyway).

Abuse limits, per client address: a token bucket for every request, a slower one for new device
authorizations, and `routing.AuthThrottle` for failed grants (invalid_grant/invalid_client):
over a limit the answer is 429 with Retry-After. Request bodies are capped at 16 KiB; only
`application/x-www-form-urlencoded` is accepted on POST; a parameter given twice is refused;
no CORS headers are ever sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import ssl
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from cmdop.core.credentials import valid_name
from cmdop.core.errors import CmdopError, UsageError
from cmdop.relay import store as store_mod
from cmdop.relay.routing import AuthThrottle, client_of
from cmdop.relay.tokens import (ACCESS_TOKEN_TTL_S, SigningKey, TokenError, issue_access_token,
                                unverified_header, verify_access_token)

if TYPE_CHECKING:
    from cmdop.relay.store import Grant, GrantResult
    from cmdop.relay.store_api import RelayStoreApi
    from cmdop.relay.tls import CertInfo

log = logging.getLogger("cmdop.relay")

CLIENT_ID = "cmdop-cli"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_GRANT = "refresh_token"
SCOPES = ("relay",)
DEFAULT_SCOPE = "relay"
MAX_BODY = 16 * 1024
KEEPALIVE_S = 15.0

PATH_METADATA = "/.well-known/oauth-authorization-server"
PATH_OPENID = "/.well-known/openid-configuration"
PATH_DEVICE = "/oauth/device"
PATH_TOKEN = "/oauth/token"
PATH_REVOKE = "/oauth/revoke"
PATH_JWKS = "/oauth/jwks"
PATH_VERIFY = "/device"

_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Server": "cmdop-relay",
}


# -- rate limits (pure: time comes in as `now`) ---------------------------------------------

@dataclass
class RateLimiter:
    """A token bucket per client: `burst` requests at once, refilled at `per_s` a second.
    Memory is bounded: past `max_addresses` the least recently seen address is forgotten."""

    burst: float
    per_s: float
    max_addresses: int = 100_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)   # addr -> (tokens, at)

    def take(self, address: str, now: float) -> float:
        """0 when the request may go ahead (one token taken), else seconds until it may.
        An IPv6 address counts for its /64 (routing.client_of)."""
        address = client_of(address)
        tokens, at = self._buckets.pop(address, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.per_s)
        if len(self._buckets) >= self.max_addresses:
            self._buckets.pop(next(iter(self._buckets)))
        if tokens >= 1.0:
            self._buckets[address] = (tokens - 1.0, now)
            return 0.0
        self._buckets[address] = (tokens, now)
        return (1.0 - tokens) / self.per_s


@dataclass
class Limits:
    requests: RateLimiter = field(default_factory=lambda: RateLimiter(burst=60, per_s=1.0))
    device: RateLimiter = field(default_factory=lambda: RateLimiter(burst=10, per_s=1 / 30))
    failures: AuthThrottle = field(default_factory=lambda: AuthThrottle(slow_after=10, refuse_after=50,
                                                                          window_s=300.0, delay_s=1.0))


# -- configuration ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CabinetConfig:
    issuer: str                   # https://HOST:PORT, no trailing slash
    audience: str                 # cmdop-relay:<relay id>
    relay_address: str            # the gRPC HOST:PORT callers use
    fingerprint: str = ""         # the certificate's SHA-256 (hex), for clients that pin it
    access_ttl_s: int = ACCESS_TOKEN_TTL_S


def normalize_issuer(url: str) -> str:
    """An issuer URL as the relay uses it: https, a host, no query/fragment/trailing slash."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme != "https" or not parsed.hostname or parsed.query or parsed.fragment:
        raise UsageError(f"invalid issuer URL {url!r}: expected https://HOST[:PORT][/PATH]",
                         hint="for example --issuer-url https://relay.example.com:7444")
    return url.strip().rstrip("/")


def url_host(host: str) -> str:
    """A host as it stands in a URL or HOST:PORT (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400, **extra: Any) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.extra = extra


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Cabinet:
    def __init__(self, store: RelayStoreApi, signing_key: SigningKey, config: CabinetConfig, *,
                 clock: Callable[[], float] = time.time, limits: Limits | None = None,
                 on_revoke: Callable[[], None] | None = None) -> None:
        self.store = store
        self.key = signing_key
        self.config = config
        self.clock = clock
        self.limits = limits or Limits()
        self.counters: dict[str, int] = {}
        # Called after this process revoked something (an access token's jti, a refresh-token
        # family): the store's data_version does not move for the relay's own writes, so the
        # router is told directly to re-check its live links and calls.
        self.on_revoke = on_revoke

    def _revoked(self) -> None:
        if self.on_revoke is not None:
            try:
                self.on_revoke()
            except Exception:  # noqa: BLE001 - a hook must not fail the HTTP answer
                log.exception("the revocation hook failed")

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- the application ------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        app.router.add_get(PATH_METADATA, self.metadata)
        app.router.add_get(PATH_OPENID, self.metadata)
        app.router.add_get(PATH_JWKS, self.jwks)
        app.router.add_get(PATH_VERIFY, self.verify_page)
        app.router.add_post(PATH_DEVICE, self.device_authorization)
        app.router.add_post(PATH_TOKEN, self.token)
        app.router.add_post(PATH_REVOKE, self.revoke)
        app.on_response_prepare.append(_security_headers)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        address = request.remote or "?"
        now = self.clock()
        wait = self.limits.requests.take(address, now)
        verdict, refuse_wait = self.limits.failures.verdict(address, now)
        if verdict == "refuse":
            wait = max(wait, refuse_wait)
        if wait > 0:
            self._count("rate_limited")
            return _json({"error": "too_many_requests",
                          "error_description": f"too many requests from {address}; try again later"},
                         429, {"Retry-After": str(int(wait) + 1)})
        try:
            response = await handler(request)
        except OAuthError as exc:
            if exc.error in ("invalid_grant", "invalid_client"):
                self.limits.failures.failed(address, self.clock())
                if verdict == "slow":
                    await asyncio.sleep(self.limits.failures.delay_s)
            body = {"error": exc.error, "error_description": exc.description, **exc.extra}
            return _json(body, exc.status)
        except web.HTTPRequestEntityTooLarge:
            return _json({"error": "invalid_request",
                          "error_description": f"request body larger than {MAX_BODY} bytes"}, 413)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _json({"error": "not_found" if exc.status == 404 else "invalid_request",
                              "error_description": exc.reason}, exc.status,
                             {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None)
            raise
        log.debug("oauth %s %s from %s: %d", request.method, request.path, address, response.status)
        return response

    async def _form(self, request: web.Request) -> dict[str, str]:
        ctype = request.content_type
        if ctype != "application/x-www-form-urlencoded":
            raise OAuthError("invalid_request", "send the parameters as application/x-www-form-urlencoded")
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
        form = await request.post()
        out: dict[str, str] = {}
        for name in form:
            values = form.getall(name)
            if len(values) != 1:
                raise OAuthError("invalid_request", f"parameter {name!r} given more than once")
            value = values[0]
            if not isinstance(value, str):
                raise OAuthError("invalid_request", f"parameter {name!r} is not text")
            out[name] = value
        return out

    @staticmethod
    def _client(form: dict[str, str], required: bool) -> str:
        client_id = form.get("client_id")
        if client_id is None and not required:
            return CLIENT_ID
        if client_id != CLIENT_ID:
            raise OAuthError("invalid_client", f"unknown client {client_id!r}; this relay knows {CLIENT_ID}",
                             401 if client_id else 400)
        return client_id

    # -- metadata and keys ----------------------------------------------------------------

    def metadata_document(self) -> dict[str, Any]:
        iss = self.config.issuer
        return {
            "issuer": iss,
            "device_authorization_endpoint": iss + PATH_DEVICE,
            "token_endpoint": iss + PATH_TOKEN,
            "revocation_endpoint": iss + PATH_REVOKE,
            "jwks_uri": iss + PATH_JWKS,
            "grant_types_supported": [DEVICE_GRANT, REFRESH_GRANT],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": list(SCOPES),
            "response_types_supported": [],
            "cmdop_relay": self.config.relay_address,
            "cmdop_relay_fingerprint": self.config.fingerprint,
            "cmdop_audience": self.config.audience,
        }

    async def metadata(self, request: web.Request) -> web.Response:
        return _json(self.metadata_document())

    async def jwks(self, request: web.Request) -> web.Response:
        return _json(self.key.jwks())

    async def verify_page(self, request: web.Request) -> web.Response:
        code = store_mod.normalize_user_code(request.query.get("user_code", ""))
        shown = store_mod.format_user_code(code) if code else "XXXX-XXXX"
        text = (
            "cmdop relay - device login\n\n"
            "This relay approves logins offline. Give your code and e-mail address to the\n"
            "relay's administrator, who runs on the relay's machine:\n\n"
            f"    cmdop relay approve {shown} --account YOUR-EMAIL --workspace WORKSPACE\n\n"
            "`cmdop login` then finishes by itself. Approve only a code you started yourself.\n"
        )
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    # -- device authorization -------------------------------------------------------------

    async def device_authorization(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        client_id = self._client(form, required=True)
        scope = _grant_scope(form.get("scope"))
        hint = form.get("workspace", "").strip().lower()
        if hint:
            try:
                hint = valid_name(hint)
            except UsageError:
                raise OAuthError("invalid_request", f"invalid workspace name {hint[:64]!r}") from None
        address = request.remote or "?"
        wait = self.limits.device.take(address, self.clock())
        if wait > 0:
            self._count("device_rate_limited")
            return _json({"error": "too_many_requests",
                          "error_description": "too many device logins from this address; try again later"},
                         429, {"Retry-After": str(int(wait) + 1)})
        try:
            start = await asyncio.to_thread(self.store.start_device_authorization, client_id, scope, hint,
                                            address)
        except CmdopError as exc:
            return _json({"error": "temporarily_unavailable", "error_description": exc.message}, 503)
        self._count("device_authorizations")
        log.info("device login %s started from %s%s", start.user_code, address,
                 f" (workspace {hint})" if hint else "")
        verify = self.config.issuer + PATH_VERIFY
        return _json({
            "device_code": start.device_code,
            "user_code": start.user_code,
            "verification_uri": verify,
            "verification_uri_complete": f"{verify}?user_code={start.user_code}",
            "expires_in": start.expires_in,
            "interval": start.interval,
        })

    # -- token ----------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is missing")
        jti = _new_jti()
        access_expires = self.clock() + self.config.access_ttl_s
        if grant_type == DEVICE_GRANT:
            client_id = self._client(form, required=False)
            device_code = form.get("device_code")
            if not device_code:
                raise OAuthError("invalid_request", "device_code is missing")
            result = await asyncio.to_thread(self.store.poll_device_code, device_code[:256], client_id,
                                             access_jti=jti, access_expires=access_expires)
        elif grant_type == REFRESH_GRANT:
            client_id = self._client(form, required=False)
            refresh = form.get("refresh_token")
            if not refresh:
                raise OAuthError("invalid_request", "refresh_token is missing")
            if "scope" in form:
                _grant_scope(form["scope"])     # may narrow nothing: one scope; unknown ones refused
            result = await asyncio.to_thread(self.store.rotate_refresh_token, refresh[:256], client_id,
                                             access_jti=jti, access_expires=access_expires)
        else:
            raise OAuthError("unsupported_grant_type", f"grant type {grant_type[:100]!r} is not supported")
        return self._token_response(result, jti)

    def _token_response(self, result: GrantResult, jti: str) -> web.Response:
        if result.revoked:
            self._revoked()
        if result.error is not None or result.grant is None:
            error = result.error or "invalid_grant"
            self._count(f"token_{error}")
            extra: dict[str, Any] = {"interval": result.interval} if error == "slow_down" else {}
            raise OAuthError(error, result.description or error, **extra)
        grant: Grant = result.grant
        token, claims = issue_access_token(
            self.key, issuer=self.config.issuer, audience=self.config.audience,
            account_id=grant.account_id, email=grant.email, workspace=grant.workspace,
            scope=grant.scope, client_id=grant.client_id, now=self.clock(),
            ttl_s=self.config.access_ttl_s, jti=jti)
        self._count("tokens")
        log.info("access token for %s in workspace %s", grant.email, grant.workspace)
        return _json({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": claims.exp - claims.iat,
            "refresh_token": grant.refresh_token,
            "scope": grant.scope,
            "workspace": grant.workspace,
            "account": grant.email,
            "account_id": grant.account_id,
        })

    # -- revocation -----------------------------------------------------------------------

    async def revoke(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        self._client(form, required=False)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is missing")
        token = token[:8192]
        if token.startswith(store_mod.REFRESH_TOKEN_PREFIX):
            if await asyncio.to_thread(self.store.revoke_refresh_token, token):
                self._count("revoked_refresh")
                log.info("a refresh token (and its family) was revoked")
                self._revoked()
        elif unverified_header(token) is not None:
            try:
                claims = verify_access_token(token, self.key, issuer=self.config.issuer,
                                             audience=self.config.audience, now=self.clock(),
                                             check_expiry=False)
            except TokenError:
                claims = None          # not ours: nothing to do (RFC 7009 §2.2: still 200)
            if claims is not None and claims.exp > self.clock():
                await asyncio.to_thread(self.store.deny_access_token, claims.jti, float(claims.exp))
                self._count("revoked_access")
                log.info("access token %s of %s revoked", claims.jti, claims.email)
                self._revoked()
        return web.Response(status=200)


def _grant_scope(requested: str | None) -> str:
    """The scope granted: `relay`. Unknown scope values are refused (invalid_scope)."""
    if requested is None or not requested.strip():
        return DEFAULT_SCOPE
    wanted = requested.split()
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown:
        raise OAuthError("invalid_scope", f"unknown scope {unknown[0][:64]!r}; this relay knows "
                         + ", ".join(SCOPES))
    return " ".join(sorted(set(wanted)))


def _new_jti() -> str:
    return secrets.token_urlsafe(16)


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(obj, status=status, headers=headers)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _SECURITY_HEADERS.items():
        response.headers[name] = value
    for name in list(response.headers):
        if name.lower().startswith("access-control-"):
            del response.headers[name]


# -- serving ---------------------------------------------------------------------------------

def ssl_context(cert: CertInfo) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+) from the relay's certificate and key (kept in memory: the
    key is handed to OpenSSL through an anonymous memory file, never a named temporary file)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    fds: list[int] = []
    try:
        paths = []
        for name, data in (("cert", cert.cert_pem), ("key", cert.key_pem)):
            if hasattr(os, "memfd_create"):
                fd = os.memfd_create(f"cmdop-relay-{name}", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, data)
                paths.append(f"/proc/self/fd/{fd}")
            else:   # pragma: no cover - Linux always has memfd_create
                fd, path = tempfile.mkstemp(prefix=".tls-")
                fds.append(fd)
                os.write(fd, data)
                paths.append(path)
        ctx.load_cert_chain(paths[0], paths[1])
    finally:
        for fd in fds:
            os.close(fd)
    return ctx


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on HOST:PORT (port 0: any free one). OSError when taken."""
    infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Running:
    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start(cabinet: Cabinet, sock: socket.socket, ssl_ctx: ssl.SSLContext | None) -> Running:
    """Serve `cabinet` on the bound socket `sock` (HTTPS when `ssl_ctx`)."""
    runner = web.AppRunner(cabinet.app(), access_log=None, keepalive_timeout=KEEPALIVE_S,
                           handle_signals=False, shutdown_timeout=2.0)
    try:
        await runner.setup()
        site = web.SockSite(runner, sock, ssl_context=ssl_ctx)
        await site.start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    return Running(runner=runner, port=int(sock.getsockname()[1]))
