"""`cmdop relay serve`: the relay process — store, certificate, gRPC server, graceful stop.

Why grpc.aio (asyncio) and not the synchronous grpc server: the synchronous server runs each
streaming RPC on a thread of its pool for the RPC's whole life, so 10,000 idle agent links would
need 10,000 threads (8 MB of reserved stack each, and a pool sized for it); grpc.aio keeps an
idle stream as a few objects on one event loop. `bench/remote.py` measures the RSS per idle agent.

Beside gRPC, on the same loop and with the same certificate, the OAuth cabinet serves device
login over HTTPS (cmdop.relay.cabinet) on `--oauth-listen` (default: the gRPC port + 1 on the
same host, or any free port when that one is taken; `off` disables it). Its issuer URL is
`--issuer-url`, else https://HOST:PORT with the listen host (the machine's hostname for a
wildcard address). Bearer credentials — API keys, the cabinet's tokens, an external OIDC
issuer's tokens (`--oidc-issuer`) — are verified by cmdop.relay.auth.BearerVerifier, handed to
the router.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from cmdop.core.errors import CmdopError, UsageError

if TYPE_CHECKING:
    from cmdop.relay.oidc import OidcConfig
    from cmdop.relay.store_api import RelayStoreApi
    from cmdop.relay.tls import CertInfo
    from cmdop.relay.tokens import SigningKey

log = logging.getLogger("cmdop.relay")

STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class ServeInfo:
    """What a started relay tells its operator."""

    address: str
    port: int
    fingerprint: str
    self_signed: bool
    cert_path: str
    data_dir: str
    oauth_address: str | None = None    # HOST:PORT the OAuth cabinet listens on (None: off)
    oauth_port: int | None = None
    issuer: str | None = None           # the cabinet's issuer URL
    oidc_issuer: str | None = None      # an external issuer whose tokens are accepted
    store: str = ""                     # where the store is (a URL without its password)
    node: str = ""                      # several nodes (--bus): this node's id
    bus: str = ""                       # the bus's URL without its password


OAUTH_OFF = ("off", "none", "no")


@dataclass(frozen=True)
class ServeOptions:
    listen: str = "0.0.0.0:7443"
    data_dir: str = ""
    tls_cert: str | None = None
    tls_key: str | None = None
    on_ready: Callable[[ServeInfo], None] | None = None
    oauth_listen: str | None = None     # None: the gRPC port + 1 on its host; "off": no cabinet
    issuer_url: str | None = None       # None: https://<listen host or hostname>:<oauth port>
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_workspace_claim: str = "workspace"
    access_token_ttl_s: int = 3600      # the cabinet's access tokens (tokens.ACCESS_TOKEN_TTL_S)
    new_machines_per_hour: int = 20     # enrolments of new machines one key may make an hour
    oidc_ca_file: str | None = None     # trust the external issuer through this CA (else system)
    store: str | None = field(default=None, repr=False)  # --store: None = relay.db in data_dir
    bus: str | None = field(default=None, repr=False)    # --bus redis://…: several nodes
    node_id: str | None = None          # --node-id (default: hostname:port)


def oidc_config(options: ServeOptions) -> "OidcConfig | None":
    """The external issuer's settings, checked (UsageError), or None when not configured."""
    from cmdop.relay.oidc import OidcConfig

    if not options.oidc_issuer:
        if options.oidc_audience:
            raise UsageError("--oidc-audience goes with --oidc-issuer URL")
        return None
    # The issuer is kept exactly as given: tokens' `iss` must equal it, character for character.
    return OidcConfig(issuer=options.oidc_issuer, audience=options.oidc_audience or "",
                      workspace_claim=options.oidc_workspace_claim)


def serve(options: ServeOptions) -> int:
    """Run the relay until SIGTERM/SIGINT; 0 on a clean stop. Errors (unusable data dir,
    certificate, address) are raised as CmdopError before anything listens."""
    from cmdop.relay.store_api import open_store
    from cmdop.relay.tls import ensure_certificate, load_certificate

    if not options.data_dir:
        raise UsageError("no data directory", "pass --data-dir DIR")
    if bool(options.tls_cert) != bool(options.tls_key):
        raise UsageError("--tls-cert and --tls-key go together", None)
    from cmdop.core.credentials import split_host_port
    from cmdop.relay.cabinet import normalize_issuer
    from cmdop.relay.tokens import load_or_create_signing_key

    oauth_on = (options.oauth_listen or "").strip().lower() not in OAUTH_OFF
    if options.oauth_listen and oauth_on:
        split_host_port(options.oauth_listen, listen=True)
    if options.issuer_url:
        normalize_issuer(options.issuer_url)
    oidc = oidc_config(options)
    check_bus(options)
    store = open_store(options.store, options.data_dir)
    try:
        if options.tls_cert and options.tls_key:
            cert = load_certificate(options.tls_cert, options.tls_key)
        else:
            cert = ensure_certificate(options.data_dir, [socket.gethostname()])
        signing_key = load_or_create_signing_key(options.data_dir)
        return asyncio.run(_main(store, cert, signing_key, oidc, options))
    finally:
        store.close()


def check_bus(options: ServeOptions) -> None:
    """UsageError unless --bus (several nodes) comes with a store they can share and a usable
    node id: nodes route by the store's machine ids, so each needs the same PostgreSQL."""
    if not options.bus:
        if options.node_id:
            raise UsageError("--node-id goes with --bus URL (several relay nodes)")
        return
    from cmdop.relay.bus_redis import check_url
    from cmdop.relay.cluster import valid_node_id
    from cmdop.relay.store_api import is_postgres

    check_url(options.bus)
    if not is_postgres(options.store):
        raise UsageError("--bus needs a store every node shares: --store postgresql://…",
                         hint="nodes with their own SQLite would not know each other's machines")
    if options.node_id is not None and not valid_node_id(options.node_id):
        raise UsageError(f"--node-id {options.node_id[:40]!r} must be 1-128 of letters, digits "
                         "and - _ . : [ ]")


async def _start_cluster(router: Any, options: ServeOptions, address: str, port: int) -> Any:
    """This node's part of a relay of several nodes (--bus), connected; CmdopError when the
    bus cannot be reached or a live node already has this node's id."""
    from cmdop.relay.bus_redis import RedisBus
    from cmdop.relay.cluster import Cluster, default_node_id

    assert options.bus is not None
    bus = RedisBus(options.bus)
    cluster = Cluster(router, bus, options.node_id or default_node_id(port), address=address)
    try:
        await cluster.start()
    except CmdopError:
        await bus.close()
        raise
    return cluster


def _bind_oauth(options: ServeOptions, grpc_port: int) -> socket.socket:
    """The cabinet's listening socket (module docstring for the default)."""
    from cmdop.core.credentials import split_host_port
    from cmdop.relay.cabinet import bind

    if options.oauth_listen:
        host, port = split_host_port(options.oauth_listen, listen=True)
        try:
            return bind(host, port)
        except OSError as exc:
            raise CmdopError(f"cannot listen on {options.oauth_listen} for OAuth: {exc.strerror}",
                             hint="choose another --oauth-listen HOST:PORT (or `off`)") from None
    host, _ = split_host_port(options.listen, listen=True)
    port = grpc_port + 1 if grpc_port < 65535 else 0
    try:
        return bind(host, port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise CmdopError(f"cannot listen on {host}:{port} for OAuth: {exc.strerror}",
                             hint="choose --oauth-listen HOST:PORT (or `off`)") from None
        log.warning("port %d (gRPC port + 1) is taken: OAuth listens on a free port instead; "
                    "pin one with --oauth-listen", port)
        return bind(host, 0)


def _public_host(listen_host: str) -> str:
    host = listen_host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return socket.gethostname()
    return host


async def _main(store: "RelayStoreApi", cert: "CertInfo", signing_key: "SigningKey",
                oidc_cfg: "OidcConfig | None", options: ServeOptions) -> int:
    from urllib.parse import urlsplit

    from cmdop.adapters.relay_grpc import start_server
    from cmdop.core.credentials import split_host_port
    from cmdop.relay import cabinet as cab
    from cmdop.relay.auth import BearerVerifier
    from cmdop.relay.oidc import OidcVerifier

    oauth_on = (options.oauth_listen or "").strip().lower() not in OAUTH_OFF
    listen_host, _ = split_host_port(options.listen, listen=True)
    oidc = (OidcVerifier(oidc_cfg, ca_file=options.oidc_ca_file or None)
            if oidc_cfg is not None else None)
    audience = f"cmdop-relay:{store.relay_id()}"
    # The issuer must be known before the router verifies anything; with the default issuer it
    # names the cabinet's port, so the cabinet's socket is bound (not yet served) first — right
    # after gRPC's port is known.
    verifier = BearerVerifier(store, signing_key=signing_key, issuer="https://pending.invalid",
                              audience=audience, oidc=oidc)
    from cmdop.relay.router import Router

    router = Router(store, verifier=verifier,
                    new_machines_per_hour=options.new_machines_per_hour)
    server, port = await start_server(router, options.listen, cert.cert_pem, cert.key_pem)
    tasks: list[asyncio.Future[Any]] = []
    cabinet_run: cab.Running | None = None
    cluster: Any = None
    try:
        if options.bus:
            cluster = await _start_cluster(router, options, f"{_public_host(listen_host)}:{port}",
                                           port)
            tasks.append(asyncio.ensure_future(cluster.run()))
        issuer: str | None = None
        oauth_address: str | None = None
        oauth_port: int | None = None
        if oauth_on:
            sock = _bind_oauth(options, port)
            oauth_port = int(sock.getsockname()[1])
            oauth_host = split_host_port(options.oauth_listen, listen=True)[0] if options.oauth_listen \
                else listen_host
            oauth_address = f"{cab.url_host(oauth_host.strip('[]'))}:{oauth_port}"
            issuer = (cab.normalize_issuer(options.issuer_url) if options.issuer_url
                      else f"https://{cab.url_host(_public_host(oauth_host))}:{oauth_port}")
            verifier.issuer = issuer
            public = urlsplit(issuer).hostname or _public_host(listen_host)
            config = cab.CabinetConfig(issuer=issuer, audience=audience,
                                       relay_address=f"{cab.url_host(public)}:{port}",
                                       fingerprint=cert.fingerprint,
                                       access_ttl_s=options.access_token_ttl_s)
            # The router's hook for revocations made in this process, if it has one.
            hook = getattr(router, "credentials_changed", None)
            cabinet_run = await cab.start(cab.Cabinet(store, signing_key, config,
                                                      on_revoke=hook if callable(hook) else None),
                                          sock, cab.ssl_context(cert))
        else:
            verifier.signing_key = None       # no cabinet: no relay tokens either
        if oidc is not None:
            await oidc.start()
            tasks.append(asyncio.ensure_future(oidc.run()))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks.append(asyncio.ensure_future(router.watch_revocations()))
        info = ServeInfo(address=options.listen, port=port, fingerprint=cert.fingerprint,
                         self_signed=cert.self_signed, cert_path=cert.cert_path,
                         data_dir=os.path.abspath(options.data_dir), oauth_address=oauth_address,
                         oauth_port=oauth_port, issuer=issuer,
                         oidc_issuer=oidc_cfg.issuer if oidc_cfg else None, store=store.path,
                         node=cluster.node if cluster is not None else "",
                         bus=cluster.bus.where if cluster is not None else "")
        log.info("relay listening on %s (port %d), certificate sha256 %s", options.listen, port,
                 info.fingerprint)
        if issuer:
            log.info("OAuth device login on %s (issuer %s)", oauth_address, issuer)
        if options.on_ready is not None:
            options.on_ready(info)
        await stop.wait()
    finally:
        log.info("relay stopping (grace %.0f s)", STOP_GRACE_S)
        router.stopping = True
        for task in tasks:
            task.cancel()
        if cabinet_run is not None:
            await cabinet_run.stop()
        await server.stop(STOP_GRACE_S)
        if cluster is not None:
            await cluster.stop()
    return 0
