"""The one module that imports grpc: the relay protocol's service glue, server and client side.

Messages come from `cmdop.relay.proto.relay_pb2` (generated, no grpc import); the method
paths, serializers and handlers are written here by hand, so nothing else needs grpc:
- Server (the relay, asyncio): `start_server(handlers, listen, cert)` serves a `RelayHandlers`
  over TLS with grpc.aio. Each RPC's context is wrapped in a `ServerStream` (read/write/peer/
  the bearer credential); a `RelayRefusal` raised by a handler ends the RPC with its status.
- Client (agents and callers, blocking): `RelayChannel(endpoint, secret)` opens one TLS channel
  and offers `list_hosts`, `call` and `agent_link`; every RPC carries `authorization` metadata
  and a deadline. grpc errors come back as the project's own errors (AuthError exit 4,
  UnreachableError exit 5) with a hint.

Certificate pinning (`--relay-fingerprint`): the relay's certificate is fetched, its SHA-256
compared with the pin, and that very certificate then becomes the channel's only trust root, so
grpc's own TLS verification accepts nothing else (a different certificate fails the handshake
even if the fetch was raced). No pin and no CA file: the system's roots.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Generic, Iterator, Protocol, TypeVar

# grpc's C core logs informational lines (GOAWAY, reconnects) to stderr by itself; a CLI's
# stderr is the user's. Errors only, unless the user asked grpc for more.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
import grpc.aio  # noqa: E402

from cmdop.core.errors import AuthError, CmdopError, NotFoundError, UnreachableError, UsageError
from cmdop.relay.proto import relay_pb2 as pb

log = logging.getLogger("cmdop.relay.grpc")

SERVICE = "cmdop.relay.v1.Relay"
MAX_MESSAGE = 4 * 1024 * 1024            # a frame: 4 MiB at most either way
# grpc channel/server arguments. Keepalive keeps NATs open and finds dead links within ~1 min;
# a TLS handshake must finish in 10 s (a slow-loris client holds nothing for long).
_COMMON_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
_SERVER_OPTIONS: list[tuple[str, Any]] = _COMMON_OPTIONS + [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.server_handshake_timeout_ms", 10_000),
    # grpc turns SO_REUSEPORT on by default: a second relay on a busy port would start and take
    # a share of the connections. One address, one relay: the second one is refused.
    ("grpc.so_reuseport", 0),
    # Idle links dominate a relay's memory: small initial read buffers per connection.
    ("grpc.experimental.tcp_read_chunk_size", 4096),
    ("grpc.experimental.tcp_min_read_chunk_size", 1024),
    ("grpc.experimental.tcp_max_read_chunk_size", 1024 * 1024),
]
_CLIENT_OPTIONS: list[tuple[str, Any]] = _COMMON_OPTIONS + [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
]

In = TypeVar("In")
Out = TypeVar("Out")

# The status a handler's refusal ends with, by its code.
_STATUS = {
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
}


class RelayRefusal(Exception):
    """Raised by a relay handler to end an RPC with a status (`code` a key of _STATUS)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


# -- server side -------------------------------------------------------------------------------


class ServerStream(Generic[In, Out]):
    """One RPC as a relay handler sees it: who (peer address, bearer credential), and frames."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context
        self.peer = _peer_address(context.peer())
        self.credential = _bearer(context.invocation_metadata())

    async def read(self) -> In | None:
        """The next frame from the client; None when it closed its side (or the RPC ended)."""
        msg = await self._context.read()
        if msg is grpc.aio.EOF:
            return None
        return msg  # type: ignore[no-any-return]

    async def write(self, frame: Out) -> None:
        """Send one frame (waits for HTTP/2 flow control: a slow reader slows its writer)."""
        await self._context.write(frame)

    def time_remaining(self) -> float | None:
        left = self._context.time_remaining()
        return None if left is None else float(left)


class RelayHandlers(Protocol):
    """What the relay implements (cmdop.relay.router). Raise RelayRefusal to refuse."""

    async def agent_link(self, stream: ServerStream[pb.AgentFrame, pb.RelayFrame]) -> None: ...

    async def list_hosts(self, stream: ServerStream[pb.ListHostsRequest, pb.ListHostsReply],
                         request: pb.ListHostsRequest) -> pb.ListHostsReply: ...

    async def call(self, stream: ServerStream[pb.CallerFrame, pb.CallEvent]) -> None: ...

    async def host_key(self, stream: ServerStream[pb.HostKeyRequest, pb.HostKeyReply],
                       request: pb.HostKeyRequest) -> pb.HostKeyReply: ...

    async def create_share(self, stream: ServerStream[Any, Any],
                           request: pb.CreateShareRequest) -> pb.ShareInfo: ...

    async def list_shares(self, stream: ServerStream[Any, Any],
                          request: pb.ListSharesRequest) -> pb.ListSharesReply: ...

    async def revoke_share(self, stream: ServerStream[Any, Any],
                           request: pb.RevokeShareRequest) -> pb.ShareInfo: ...


def _peer_address(peer: str) -> str:
    """`ipv4:1.2.3.4:5678` / `ipv6:[::1]:5678` → the address without the port."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, _port = rest.rpartition(":")
        return host.strip("[]") or rest
    return peer


def _bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


# A test's recorder of every message the relay receives ("in") and sends ("out"), as the bytes
# on the wire inside TLS (start_server's `tap`); None in production.
Tap = Callable[[str, bytes], None]


def _codec(request: Any, response: Any, tap: Tap | None) -> tuple[Any, Any]:
    """The (deserializer, serializer) of a method, recording through `tap` when given."""
    if tap is None:
        return request.FromString, response.SerializeToString

    def parse(data: bytes) -> Any:
        tap("in", data)
        return request.FromString(data)

    def serialize(msg: Any) -> bytes:
        data: bytes = msg.SerializeToString()
        tap("out", data)
        return data

    return parse, serialize


def _stream_handler(fn: Callable[[ServerStream[Any, Any]], Awaitable[None]],
                    request: Any, response: Any, tap: Tap | None = None) -> grpc.RpcMethodHandler:
    async def handler(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            await fn(ServerStream(context))
        except RelayRefusal as exc:
            await context.abort(_STATUS.get(exc.code, grpc.StatusCode.UNKNOWN), exc.message)

    parse, serialize = _codec(request, response, tap)
    return grpc.stream_stream_rpc_method_handler(
        handler, request_deserializer=parse, response_serializer=serialize)


def _unary_handler(fn: Callable[[ServerStream[Any, Any], Any], Awaitable[Any]],
                   request: Any, response: Any, tap: Tap | None = None) -> grpc.RpcMethodHandler:
    async def handler(req: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(ServerStream(context), req)
        except RelayRefusal as exc:
            await context.abort(_STATUS.get(exc.code, grpc.StatusCode.UNKNOWN), exc.message)

    parse, serialize = _codec(request, response, tap)
    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=parse, response_serializer=serialize)


async def start_server(handlers: RelayHandlers, listen: str, cert_pem: bytes,
                       key_pem: bytes, tap: Tap | None = None) -> tuple[grpc.aio.Server, int]:
    """Serve `handlers` on `listen` (HOST:PORT; port 0 picks one) over TLS; (server, port).
    UnreachableError when the address cannot be bound. `tap`: tests only (see Tap)."""
    server = grpc.aio.server(options=_SERVER_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "AgentLink": _stream_handler(handlers.agent_link, pb.AgentFrame, pb.RelayFrame, tap),
        "ListHosts": _unary_handler(handlers.list_hosts, pb.ListHostsRequest, pb.ListHostsReply,
                                    tap),
        "Call": _stream_handler(handlers.call, pb.CallerFrame, pb.CallEvent, tap),
        "HostKey": _unary_handler(handlers.host_key, pb.HostKeyRequest, pb.HostKeyReply, tap),
        "CreateShare": _unary_handler(handlers.create_share, pb.CreateShareRequest, pb.ShareInfo,
                                      tap),
        "ListShares": _unary_handler(handlers.list_shares, pb.ListSharesRequest,
                                     pb.ListSharesReply, tap),
        "RevokeShare": _unary_handler(handlers.revoke_share, pb.RevokeShareRequest, pb.ShareInfo,
                                      tap),
    }),))
    creds = grpc.ssl_server_credentials([(key_pem, cert_pem)])
    try:
        port = server.add_secure_port(listen, creds)
    except RuntimeError as exc:
        raise CmdopError(f"cannot listen on {listen}: {exc}",
                         "pick a free address with --listen HOST:PORT") from None
    if not port:
        raise CmdopError(f"cannot listen on {listen}",
                         "is the port in use? pick another with --listen HOST:PORT")
    await server.start()
    return server, port


# -- client side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelayEndpoint:
    """Where the relay is and how to trust it: a pinned SHA-256 fingerprint, a CA file, or
    (neither) the system's roots."""

    address: str                  # HOST:PORT, [v6]:PORT
    fingerprint: str = ""         # 64 lowercase hex
    ca_file: str = ""


def _pinned_credentials(endpoint: RelayEndpoint,
                        timeout: float) -> tuple[grpc.ChannelCredentials, str]:
    """Fetch the relay's certificate, check it against the pin, trust exactly it; (credentials,
    the name to verify it under). Stdlib only (hashlib, ssl): parsing the certificate with
    `cryptography` would cost a cold `cmdop exec` ~18 ms of imports."""
    import hashlib

    from cmdop.core.credentials import split_host_port

    host, port = split_host_port(endpoint.address)
    try:
        pem = ssl.get_server_certificate((host, port), timeout=timeout)
    except (OSError, ssl.SSLError) as exc:
        raise UnreachableError(f"cannot reach the relay at {endpoint.address}: {exc}",
                               "is `cmdop relay serve` running there, and the port open?") from None
    der = ssl.PEM_cert_to_DER_cert(pem)
    found = hashlib.sha256(der).hexdigest()
    if found != endpoint.fingerprint:
        raise AuthError(f"the relay at {endpoint.address} presented certificate {found[:16]}…, "
                        f"not the pinned {endpoint.fingerprint[:16]}…",
                        "if the relay's certificate was replaced on purpose, pin the new one "
                        "(`cmdop connect key set --relay-fingerprint HEX`); otherwise someone "
                        "may be intercepting the connection")
    # A relay's own self-signed certificate names `cmdop-relay` (whatever address it is reached
    # at); a certificate of the operator's names its host. Either way the pin above decided
    # which certificate is trusted; the name only has to be one it carries.
    name = "cmdop-relay" if b"cmdop-relay" in der else host
    return grpc.ssl_channel_credentials(root_certificates=pem.encode()), name


def _handshake(address: str, ca_file: str, timeout: float) -> None:
    """A TLS handshake with the relay, trusting this machine's CAs or `ca_file`. Raises
    ssl.SSLCertVerificationError when they refuse its certificate, OSError / ssl.SSLError
    when nothing answers TLS there."""
    import socket

    from cmdop.core.credentials import split_host_port

    host, port = split_host_port(address)
    context = ssl.create_default_context(cafile=ca_file or None)
    if ca_file:
        context.check_hostname = False      # grpc checks the name; here: the chain alone
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname=host):
            return


def _untrusted(address: str, ca_file: str = "", timeout: float = 3.0) -> str | None:
    """Why the certificate authorities a channel trusts (this machine's, or `ca_file`) refuse
    the relay's certificate (a relay's own self-signed one, typically), or None: trusted, or
    nothing answers TLS there at all. Only asked after a connection failed, to say what to do
    instead of "unreachable"."""
    try:
        _handshake(address, ca_file, timeout)
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message or exc.reason or "certificate verify failed")
    except (OSError, ssl.SSLError, CmdopError):
        return None
    return None


def _untrusted_error(address: str, roots: str | None) -> UnreachableError | None:
    """The error for a relay whose certificate the channel's CAs (`roots`: "" this machine's,
    else a CA file) refuse, or None: trusted, pinned (`roots` None), or no TLS answer at all."""
    why = _untrusted(address, roots) if roots is not None else None
    return None if why is None or roots is None else _refused_certificate(address, roots, why)


def _refused_certificate(address: str, roots: str, why: str) -> UnreachableError:
    """The relay's certificate is not trusted by `roots` ("" this machine's CAs, else a CA
    file), for the reason `why`."""
    trusted = f"the CA in {roots}" if roots else "this machine"
    return UnreachableError(
        f"the relay at {address} presented a certificate {trusted} does not trust ({why})",
        "pin the relay's certificate: --relay-fingerprint HEX (`cmdop relay serve` prints it; "
        "`cmdop connect key set --relay-fingerprint` stores it), or give the CA that signed it "
        "with --relay-ca FILE")


def _error_from(exc: grpc.RpcError, address: str, roots: str | None = None) -> CmdopError:
    """A grpc failure as the project's error (exit 4 for auth, 5 for unreachable).
    `roots`: what the channel trusts — "" this machine's CAs, a path a CA file, None a pinned
    certificate (checked before connecting). With CAs, a connection that failed is checked for
    a certificate they refuse, which is the usual reason."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or str(code)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        untrusted = _untrusted_error(address, roots)
        if untrusted is not None:
            return untrusted
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthError(f"the relay refused the credential: {details}",
                         "check the key (`cmdop auth status`); a revoked key needs a new one "
                         "(`cmdop relay key create` on the relay, then `cmdop connect key set`)")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return AuthError(f"the relay refused: {details}", None)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED):
        hint = "is `cmdop relay serve` running, and the address right?"
        if "certificate" in details.lower() or "handshake" in details.lower() or "ssl" in details.lower():
            hint = ("the relay's TLS certificate is not trusted: pin it with "
                    "--relay-fingerprint, or give its CA with --relay-ca")
        return UnreachableError(f"relay {address} unreachable: {details}", hint)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return UnreachableError(f"the relay is busy: {details}", "try again shortly")
    return CmdopError(f"relay error ({code.name if code else '?'}): {details}", None)


class Stream(Generic[Out]):
    """A client stream's responses, iterated blocking; `cancel()` ends it from any thread."""

    def __init__(self, call: Any, address: str, roots: str | None = None) -> None:
        self._call, self._address, self._roots = call, address, roots

    def __iter__(self) -> Iterator[Out]:
        try:
            for msg in self._call:
                yield msg
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and self.cancelled:
                return
            raise _error_from(exc, self._address, self._roots) from None

    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self._call.cancel()

    def wait_done(self, timeout: float) -> bool:
        """Block until the RPC has ended (or `timeout`); True when it ended. Used after an
        interrupted iteration, which cannot be resumed."""
        import threading

        done = threading.Event()
        self._call.add_done_callback(lambda _call: done.set())
        return done.wait(timeout)


class RelayChannel:
    """One TLS channel to the relay, used from blocking code. Thread-safe (grpc channels are);
    `close()` when done."""

    def __init__(self, endpoint: RelayEndpoint, secret: str, connect_timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self._roots: str | None = None if endpoint.fingerprint else endpoint.ca_file
        self._connect_timeout = connect_timeout
        self._reached = False        # a TLS handshake with the relay succeeded (_reachable)
        self._metadata = (("authorization", f"Bearer {secret}"),)
        options = list(_CLIENT_OPTIONS)
        if endpoint.fingerprint:
            creds, name = _pinned_credentials(endpoint, connect_timeout)
            options.append(("grpc.ssl_target_name_override", name))
        elif endpoint.ca_file:
            try:
                with open(endpoint.ca_file, "rb") as f:
                    roots = f.read()
            except OSError as exc:
                raise CmdopError(f"cannot read the relay CA file {endpoint.ca_file}: "
                                 f"{exc.strerror}", "check the --relay-ca path") from None
            creds = grpc.ssl_channel_credentials(root_certificates=roots)
        else:
            creds = grpc.ssl_channel_credentials()
        self._channel = grpc.secure_channel(endpoint.address, creds, options=options)
        self._list = self._channel.unary_unary(
            f"/{SERVICE}/ListHosts", request_serializer=pb.ListHostsRequest.SerializeToString,
            response_deserializer=pb.ListHostsReply.FromString)
        self._host_key = self._channel.unary_unary(
            f"/{SERVICE}/HostKey", request_serializer=pb.HostKeyRequest.SerializeToString,
            response_deserializer=pb.HostKeyReply.FromString)
        self._call = self._channel.stream_stream(
            f"/{SERVICE}/Call", request_serializer=pb.CallerFrame.SerializeToString,
            response_deserializer=pb.CallEvent.FromString)
        self._shares = {name: self._channel.unary_unary(
            f"/{SERVICE}/{name}", request_serializer=req.SerializeToString,
            response_deserializer=reply.FromString)
            for name, req, reply in (("CreateShare", pb.CreateShareRequest, pb.ShareInfo),
                                     ("ListShares", pb.ListSharesRequest, pb.ListSharesReply),
                                     ("RevokeShare", pb.RevokeShareRequest, pb.ShareInfo))}
        self._link = self._channel.stream_stream(
            f"/{SERVICE}/AgentLink", request_serializer=pb.AgentFrame.SerializeToString,
            response_deserializer=pb.RelayFrame.FromString)

    def _reachable(self) -> None:
        """Before the first RPC on a channel that trusts CAs (a pinned one fetched the
        certificate when it was made): one TLS handshake within the connect timeout, so a relay
        that is not there, or a certificate that is not trusted, is said at once rather than
        after the RPC's own deadline (10 s for a host list, the command's for a call: up to ten
        minutes), which is how long an RPC waits for its connection."""
        if self._roots is None or self._reached:
            return
        try:
            _handshake(self.endpoint.address, self._roots, self._connect_timeout)
        except ssl.SSLCertVerificationError as exc:   # (its reason: no second handshake to ask)
            raise _refused_certificate(self.endpoint.address, self._roots, str(
                exc.verify_message or exc.reason or "certificate verify failed")) from None
        except (OSError, ssl.SSLError, CmdopError) as exc:
            raise UnreachableError(f"cannot reach the relay at {self.endpoint.address}: {exc}",
                                   "is `cmdop relay serve` running there, and the port open?") from None
        self._reached = True

    def list_hosts(self, timeout: float = 10.0) -> pb.ListHostsReply:
        self._reachable()
        try:
            reply: pb.ListHostsReply = self._list(pb.ListHostsRequest(), metadata=self._metadata,
                                                  timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise _error_from(exc, self.endpoint.address, self._roots) from None
        return reply

    def share_rpc(self, name: str, request: Any, timeout: float = 10.0) -> Any:
        """One of the share RPCs (CreateShare, ListShares, RevokeShare) with its request; the
        reply. Errors as the other RPCs'; a refused request (bad value, unknown host or share)
        is a UsageError / NotFoundError with the relay's reason."""
        self._reachable()
        try:
            return self._shares[name](request, metadata=self._metadata, timeout=timeout,
                                      wait_for_ready=True)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise UsageError(f"the relay refused: {exc.details()}", None) from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError(f"the relay refused: {exc.details()}",
                                    "list the machines with `cmdop hosts`, the shares with "
                                    "`cmdop connect share list`") from None
            raise _error_from(exc, self.endpoint.address, self._roots) from None

    def host_key(self, host: str, timeout: float = 10.0) -> pb.HostKeyReply:
        """The end-to-end key the relay has for `host` (resolved as a call's host)."""
        self._reachable()
        try:
            reply: pb.HostKeyReply = self._host_key(pb.HostKeyRequest(host=host),
                                                    metadata=self._metadata, timeout=timeout,
                                                    wait_for_ready=True)
        except grpc.RpcError as exc:
            raise _error_from(exc, self.endpoint.address, self._roots) from None
        self._reached = True
        return reply

    def call(self, frames: Iterator[pb.CallerFrame], timeout: float) -> Stream[pb.CallEvent]:
        """One tool call: `frames` yields CallStart first (then Cancel, if any). On a channel
        nothing has answered yet, `_reachable` first (a guest with a pinned host key came here
        straight, and a relay it could not trust kept it waiting until the deadline)."""
        self._reachable()
        return Stream(self._call(frames, metadata=self._metadata, timeout=timeout,
                                 wait_for_ready=True), self.endpoint.address, self._roots)

    def agent_link(self, frames: Iterator[pb.AgentFrame], timeout: float) -> Stream[pb.RelayFrame]:
        """The agent's long-lived stream (`frames` yields Hello first)."""
        return Stream(self._link(frames, metadata=self._metadata, timeout=timeout,
                                 wait_for_ready=False), self.endpoint.address, self._roots)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RelayChannel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def aiter_frames(stream: ServerStream[In, Out]) -> AsyncIterator[In]:
    """A server stream's incoming frames until the client closes its side."""
    while True:
        frame = await stream.read()
        if frame is None:
            return
        yield frame
