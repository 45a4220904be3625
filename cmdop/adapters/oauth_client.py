"""OAuth over HTTPS with the standard library: discovery, the device flow, refresh, revocation.

- Transport: urllib.request with an ssl context that always verifies. Trust is the system CAs, or
  exactly the PEM CA file given (`--ca-file` / CMDOP_CA_FILE), or a pinned certificate
  (`--issuer-fingerprint HEX`): as the gRPC client pins a relay (cmdop.adapters.relay_grpc),
  the issuer's certificate is fetched, its SHA-256 fingerprint (over the DER bytes, as
  `cmdop relay serve` prints it) compared with the pin, and then exactly that certificate is
  the only trust root of the connection (its name is not checked against the host: a relay's
  self-signed certificate names `cmdop-relay`, and the pin is stronger than a name).
- Only https:// URLs, no redirects (a 3xx is an error), replies capped at MAX_REPLY_BYTES,
  JSON through `json` only. Connection failures raise `NetworkError` (an UnreachableError, exit
  5) that callers retry; an untrusted certificate is an UnreachableError with the flags that fix
  it, a certificate that does not match its pin an AuthError (exit 4), as for the relay.
- Secrets travel only in POST bodies; no URL, message or exception here contains one.

Functions: `discover` (RFC 8414, then OpenID Connect discovery), `run_device_flow` (drives the
sans-IO cmdop.core.device_flow.DeviceFlow), `refresh` (RFC 6749 §6, keeping the old refresh
token unless the server rotates it), `revoke` (RFC 7009).
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Final

from cmdop import __version__
from cmdop.core.credentials import normalize_fingerprint
from cmdop.core.device_flow import (NOT_JSON, DeviceFlow, Done, Failed, Send, ShowCode, TokenError, TokenSet,
                                    Wait, flow_error_kind, json_body, parse_token_response, printable)
from cmdop.core.errors import AuthError, CmdopError, UnreachableError, UsageError

CLIENT_ID: Final = "cmdop-cli"
MAX_REPLY_BYTES: Final = 1 << 20
TIMEOUT_S: Final = 15.0
RETRY_DELAYS_S: Final = (1.0, 2.0)      # discovery, refresh, revocation: three attempts in all
RFC8414_PATH: Final = "/.well-known/oauth-authorization-server"
OIDC_PATH: Final = "/.well-known/openid-configuration"

TLS_HINT: Final = ("trust the server's CA with --ca-file FILE (or CMDOP_CA_FILE), or pin its certificate "
                   "with --issuer-fingerprint HEX (a cmdop relay prints it at start)")


class NetworkError(UnreachableError):
    """No HTTP reply: refused, reset, timed out, name not resolved. Worth retrying."""


class OAuthProtocolError(CmdopError):
    """The server's reply broke the protocol (too large, wrong issuer, missing endpoint)."""

    default_hint = "check that --issuer is the URL of an OAuth 2.0 authorization server"


@dataclass(frozen=True)
class TlsOptions:
    """How the issuer's certificate is trusted: system CAs, a CA file, or a pinned certificate."""

    ca_file: str = ""
    fingerprint: str = ""     # 64 lower-case hex digits


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any                 # parsed JSON, or NOT_JSON


@dataclass(frozen=True)
class ServerMetadata:
    """The parts of an authorization server's metadata (RFC 8414 §2) cmdop uses."""

    issuer: str
    token_endpoint: str
    device_authorization_endpoint: str = ""
    revocation_endpoint: str = ""
    cmdop_relay: str = ""
    cmdop_relay_fingerprint: str = ""   # the relay's certificate, as its own metadata names it
    scopes_supported: tuple[str, ...] = ()
    grant_types_supported: tuple[str, ...] = ()


# -- URLs ----------------------------------------------------------------------------------

def check_https_url(url: str, what: str) -> str:
    """`url` if it is an absolute https URL with a host and no credentials or fragment."""
    try:
        parts: urllib.parse.SplitResult | None = urllib.parse.urlsplit(url)
        assert parts is not None
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        parts = None
    if parts is not None and (parts.username or parts.password):
        raise UsageError(f"{what} must not carry a user name or password", hint="give the URL without `user:password@`")
    if parts is None or parts.scheme.lower() != "https" or not parts.hostname or parts.fragment \
            or not url.isprintable():
        shown = printable(url, 120)
        if parts is not None and parts.scheme.lower() == "http":
            raise UsageError(f"{what} {shown} is plain http: cmdop only talks to OAuth servers over https",
                             hint="use the server's https:// URL")
        raise UsageError(f"{what} {shown!r} is not an https:// URL", hint="for example https://login.example.com")
    return url


def normalize_issuer(url: str) -> str:
    """The issuer URL as given, checked (https, no query), without a trailing slash."""
    url = check_https_url(url.strip(), "the issuer")
    if urllib.parse.urlsplit(url).query:
        raise UsageError(f"the issuer {printable(url, 120)} has a query part",
                         hint="an issuer URL is https://HOST[:PORT][/PATH]")
    return url.rstrip("/")


def discovery_urls(issuer: str) -> list[str]:
    """Where the metadata may be: RFC 8414 (path inserted after the well-known prefix), then
    OpenID Connect discovery (path appended)."""
    parts = urllib.parse.urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    return [f"{origin}{RFC8414_PATH}{path}", f"{origin}{path}{OIDC_PATH}"]


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    return host, parts.port or 443


def _display_host(url: str) -> str:
    host, port = _host_port(url)
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"{host}:{port}"


# -- TLS -----------------------------------------------------------------------------------

def fingerprint_of_der(der: bytes) -> str:
    """SHA-256 over a certificate's DER bytes: what cmdop.relay.tls.fingerprint_of_pem gives."""
    return hashlib.sha256(der).hexdigest()


def _base_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)   # CERT_REQUIRED and check_hostname on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _ca_context(ca_file: str) -> ssl.SSLContext:
    ctx = _base_context()
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except FileNotFoundError:
        raise UsageError(f"the CA file {ca_file} does not exist", hint="check --ca-file / CMDOP_CA_FILE") from None
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot use the CA file {ca_file}: {printable(exc)}",
                         hint="give a PEM file with -----BEGIN CERTIFICATE----- blocks") from None
    return ctx


def _pinned_context(url: str, fingerprint: str, timeout: float) -> ssl.SSLContext:
    """Fetch the server's certificate, check it against the pin, trust exactly it."""
    host, port = _host_port(url)
    try:
        pem = ssl.get_server_certificate((host, port), timeout=timeout)
    except (OSError, ssl.SSLError) as exc:
        raise NetworkError(f"cannot reach {_display_host(url)}: {printable(exc)}",
                           "is the server running, and the address right?") from None
    found = fingerprint_of_der(ssl.PEM_cert_to_DER_cert(pem))
    if found != fingerprint:
        raise AuthError(f"the server at {_display_host(url)} presented certificate {found[:16]}…, "
                        f"not the pinned {fingerprint[:16]}…",
                        "if its certificate was replaced on purpose, pin the new one "
                        "(--issuer-fingerprint HEX); otherwise someone may be intercepting the connection")
    ctx = _base_context()
    ctx.check_hostname = False             # the trust root is this one certificate (module docstring)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=pem)
    return ctx


# -- HTTP ----------------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> None:
        return None


class Transport:
    """HTTPS requests with one trust setting (TlsOptions). Every request goes to an https URL."""

    def __init__(self, tls: TlsOptions = TlsOptions(), timeout: float = TIMEOUT_S) -> None:
        self.tls = tls
        self.timeout = timeout
        self._contexts: dict[tuple[str, int], ssl.SSLContext] = {}

    def _context(self, url: str) -> ssl.SSLContext:
        key = _host_port(url)
        ctx = self._contexts.get(key)
        if ctx is None:
            if self.tls.fingerprint:
                ctx = _pinned_context(url, self.tls.fingerprint, self.timeout)
            elif self.tls.ca_file:
                ctx = _ca_context(self.tls.ca_file)
            else:
                ctx = ssl.create_default_context()
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._contexts[key] = ctx
        return ctx

    def get_json(self, url: str) -> Reply:
        return self._send(urllib.request.Request(url, method="GET"), url)

    def post_form(self, url: str, form: dict[str, str]) -> Reply:
        data = urllib.parse.urlencode(form).encode("ascii")
        req = urllib.request.Request(url, data=data, method="POST")
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
        return self._send(req, url)

    def _send(self, req: urllib.request.Request, url: str) -> Reply:
        check_https_url(url, "the endpoint")
        req.add_header("Accept", "application/json")
        req.add_header("User-Agent", f"cmdop/{__version__}")
        opener = urllib.request.build_opener(_NoRedirect(),
                                             urllib.request.HTTPSHandler(context=self._context(url)))
        where = _display_host(url)
        try:
            try:
                resp = opener.open(req, timeout=self.timeout)
            except urllib.error.HTTPError as exc:   # a 4xx/5xx (or a refused redirect) is a reply
                if exc.fp is None:
                    return Reply(exc.code, NOT_JSON)
                with exc:
                    return Reply(exc.code, json_body(self._read(exc, where)))
            with resp:
                return Reply(resp.status, json_body(self._read(resp, where)))
        except urllib.error.URLError as exc:
            raise self._failure(exc.reason, where) from None
        except (http.client.HTTPException, OSError) as exc:
            raise self._failure(exc, where) from None

    @staticmethod
    def _read(resp: Any, where: str) -> bytes:
        length = resp.headers.get("Content-Length") if resp.headers is not None else None
        if length and length.strip().isdigit() and int(length) > MAX_REPLY_BYTES:
            raise OAuthProtocolError(f"the reply from {where} is larger than {MAX_REPLY_BYTES >> 20} MiB")
        data: bytes = resp.read(MAX_REPLY_BYTES + 1)
        if len(data) > MAX_REPLY_BYTES:
            raise OAuthProtocolError(f"the reply from {where} is larger than {MAX_REPLY_BYTES >> 20} MiB")
        return data

    @staticmethod
    def _failure(reason: object, where: str) -> CmdopError:
        if isinstance(reason, CmdopError):
            return reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            detail = reason.verify_message or printable(reason)
            return UnreachableError(f"the TLS certificate of {where} is not trusted ({printable(detail)})",
                                    TLS_HINT)
        if isinstance(reason, ssl.SSLError):
            return UnreachableError(f"the TLS handshake with {where} failed ({printable(reason)})", TLS_HINT)
        if isinstance(reason, (TimeoutError, http.client.HTTPException, OSError)):
            text = "timed out" if isinstance(reason, TimeoutError) else printable(
                getattr(reason, "strerror", None) or reason or type(reason).__name__)
            return NetworkError(f"cannot reach {where}: {text}",
                                "is the server running, and the address right? (retried)")
        return NetworkError(f"cannot reach {where}: {printable(reason)}", "is the server running?")


def _with_retries(call: Callable[[], Reply], sleep: Callable[[float], None],
                  on_retry: Callable[[str, float], None] | None = None) -> Reply:
    """`call()`, retried after a NetworkError or an HTTP 5xx/429 (RETRY_DELAYS_S)."""
    for delay in (*RETRY_DELAYS_S, None):
        try:
            reply = call()
        except NetworkError as exc:
            if delay is None:
                raise
            detail = exc.message
        else:
            if not (reply.status >= 500 or reply.status == 429) or delay is None:
                return reply
            detail = f"HTTP {reply.status}"
        if on_retry is not None:
            on_retry(detail, delay)
        sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


# -- discovery -----------------------------------------------------------------------------

def _strings(value: object) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def parse_metadata(doc: object, issuer: str) -> ServerMetadata:
    """A metadata document → ServerMetadata; OAuthProtocolError when it is not one for `issuer`."""
    if not isinstance(doc, dict):
        raise OAuthProtocolError(f"the metadata of {printable(issuer, 120)} is not a JSON object")
    found = doc.get("issuer")
    if not isinstance(found, str) or found.rstrip("/") != issuer.rstrip("/"):
        raise OAuthProtocolError(
            f"the metadata at {printable(issuer, 120)} names another issuer ({printable(found, 120)})",
            hint="give --issuer exactly as the server names itself (RFC 8414 §3.3)")

    def endpoint(name: str, required: bool) -> str:
        value = doc.get(name)
        if value is None or value == "":
            if required:
                raise OAuthProtocolError(f"the metadata of {printable(issuer, 120)} has no {name}")
            return ""
        if not isinstance(value, str):
            raise OAuthProtocolError(f"the metadata's {name} is not a string")
        try:
            return check_https_url(value, f"the metadata's {name}")
        except UsageError as exc:
            raise OAuthProtocolError(exc.message, hint="the server's metadata must name https endpoints") from None

    relay = doc.get("cmdop_relay")
    relay_fp = doc.get("cmdop_relay_fingerprint")
    try:
        relay_fp = normalize_fingerprint(relay_fp) if isinstance(relay_fp, str) and relay_fp else ""
    except UsageError:
        relay_fp = ""
    return ServerMetadata(
        issuer=found, token_endpoint=endpoint("token_endpoint", True),
        device_authorization_endpoint=endpoint("device_authorization_endpoint", False),
        revocation_endpoint=endpoint("revocation_endpoint", False),
        cmdop_relay=printable(relay, 300) if isinstance(relay, str) else "",
        cmdop_relay_fingerprint=relay_fp,
        scopes_supported=_strings(doc.get("scopes_supported")),
        grant_types_supported=_strings(doc.get("grant_types_supported")),
    )


def discover(issuer: str, transport: Transport, *, sleep: Callable[[float], None] = time.sleep,
             on_retry: Callable[[str, float], None] | None = None) -> ServerMetadata:
    """The issuer's metadata: RFC 8414's well-known URL first, then OpenID Connect's."""
    statuses: list[str] = []
    for url in discovery_urls(issuer):
        reply = _with_retries(lambda: transport.get_json(url), sleep, on_retry)
        if reply.status == 200 and reply.body is not NOT_JSON:
            return parse_metadata(reply.body, issuer)
        statuses.append(f"{urllib.parse.urlsplit(url).path}: HTTP {reply.status}"
                        + (" (not JSON)" if reply.status == 200 else ""))
    raise OAuthProtocolError(f"no OAuth metadata at {printable(issuer, 120)} ({'; '.join(statuses)})",
                             hint="check --issuer: the server must publish "
                                  "/.well-known/oauth-authorization-server or /.well-known/openid-configuration")


def default_scope(meta: ServerMetadata) -> str:
    """`openid offline_access` as far as the server lists them (an ID token names the account,
    offline_access asks for a refresh token); "" when it lists neither."""
    return " ".join(s for s in ("openid", "offline_access") if s in meta.scopes_supported)


# -- the device flow -----------------------------------------------------------------------

def flow_failure(failed: Failed, issuer: str) -> CmdopError:
    """A failed device flow as the project's error, with what to do next."""
    kind = flow_error_kind(failed.error)
    if failed.error == "access_denied":
        return AuthError(f"login denied: {failed.message}",
                         "run `cmdop login` again and approve the request in the browser")
    if failed.error == "expired_token":
        return AuthError(f"login timed out: {failed.message}",
                         "run `cmdop login` again and enter the code before it expires")
    if kind == "unreachable":
        return UnreachableError(f"login failed: {failed.message}",
                                f"check the network and that {printable(issuer, 120)} is up, then run "
                                "`cmdop login` again")
    if kind == "protocol":
        return OAuthProtocolError(f"login failed: {failed.message}")
    return AuthError(f"login failed: {failed.message}",
                     "check --issuer and that the server allows the device flow for client "
                     f"{CLIENT_ID!r}")


def run_device_flow(meta: ServerMetadata, transport: Transport, *, client_id: str = CLIENT_ID,
                    scope: str = "", show: Callable[[ShowCode], None], wait: Callable[[Wait], None],
                    clock: Callable[[], float] = time.time, extra: dict[str, str] | None = None) -> TokenSet:
    """Run the device flow to its end: the tokens, or the error to report (flow_failure)."""
    if not meta.device_authorization_endpoint:
        raise OAuthProtocolError(f"{printable(meta.issuer, 120)} does not offer the device flow "
                                 "(no device_authorization_endpoint in its metadata)",
                                 hint="use an authorization server that supports RFC 8628")
    endpoints = {"device": meta.device_authorization_endpoint, "token": meta.token_endpoint}
    flow = DeviceFlow(client_id, scope, extra=extra)
    pending = deque(flow.start(clock()))
    while pending:
        action = pending.popleft()
        if isinstance(action, Send):
            try:
                reply = transport.post_form(endpoints[action.endpoint], action.form)
            except NetworkError as exc:
                pending.extend(flow.receive_network_error(exc.message, clock()))
            else:
                pending.extend(flow.receive_response(reply.status, reply.body, clock()))
        elif isinstance(action, ShowCode):
            show(action)
        elif isinstance(action, Wait):
            wait(action)
            pending.extend(flow.wait_over(clock()))
        elif isinstance(action, Done):
            return action.tokens
        elif isinstance(action, Failed):
            raise flow_failure(action, meta.issuer)
    raise AssertionError("the device flow stopped without an outcome")  # pragma: no cover


# -- refresh and revocation ----------------------------------------------------------------

def refresh(transport: Transport, token_endpoint: str, *, refresh_token: str, client_id: str = CLIENT_ID,
            scope: str = "", sleep: Callable[[float], None] = time.sleep) -> TokenSet:
    """Exchange the refresh token (RFC 6749 §6). The result's refresh_token is the server's new
    one, or the old one when it did not rotate it. AuthError (exit 4) when the server refused
    the refresh token; NetworkError / UnreachableError when it could not be asked."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    reply = _with_retries(lambda: transport.post_form(token_endpoint, form), sleep)
    result = parse_token_response(reply.status, reply.body, requested_scope=scope)
    if isinstance(result, TokenSet):
        if not result.refresh_token:
            result = TokenSet(access_token=result.access_token, token_type=result.token_type,
                              expires_in=result.expires_in, refresh_token=refresh_token,
                              scope=result.scope, id_token=result.id_token, workspace=result.workspace,
                              account=result.account)
        return result
    raise refresh_failure(result, token_endpoint)


def refresh_failure(err: TokenError, token_endpoint: str) -> CmdopError:
    """Why a refresh failed, as the project's error (never raises)."""
    where = _display_host(token_endpoint)
    if err.transient:
        return UnreachableError(f"cannot refresh the login: {where} answered HTTP {err.status}",
                                "try again later, or run `cmdop login`")
    if err.error == "protocol":
        return OAuthProtocolError(f"cannot refresh the login: {err.description}")
    return AuthError(f"the login has expired or was revoked ({where} refused the refresh token: "
                     f"{err.text()})", "run `cmdop login` to sign in again")


def revoke(transport: Transport, endpoint: str, *, token: str, token_type_hint: str,
           client_id: str = CLIENT_ID, sleep: Callable[[float], None] = time.sleep) -> None:
    """Revoke one token (RFC 7009); raises when the server did not confirm it."""
    form = {"token": token, "token_type_hint": token_type_hint, "client_id": client_id}
    reply = _with_retries(lambda: transport.post_form(endpoint, form), sleep)
    if reply.status == 200:
        return
    error = reply.body.get("error") if isinstance(reply.body, dict) else None
    detail = printable(error, 64) if isinstance(error, str) else f"HTTP {reply.status}"
    if reply.status >= 500:
        raise UnreachableError(f"the revocation endpoint at {_display_host(endpoint)} failed ({detail})")
    raise AuthError(f"the revocation endpoint at {_display_host(endpoint)} refused ({detail})", None)
