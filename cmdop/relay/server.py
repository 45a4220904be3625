"""`cmdop relay serve`: the relay process — store, certificate, gRPC server, graceful stop.

Why grpc.aio (asyncio) and not the synchronous grpc server: the synchronous server runs each
streaming RPC on a thread of its pool for the RPC's whole life, so 10,000 idle agent links would
need 10,000 threads (8 MB of reserved stack each, and a pool sized for it); grpc.aio keeps an
idle stream as a few objects on one event loop. `bench/remote.py` measures the RSS per idle agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from cmdop.core.errors import UsageError

if TYPE_CHECKING:
    from cmdop.relay.store import RelayStore
    from cmdop.relay.tls import CertInfo

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


@dataclass(frozen=True)
class ServeOptions:
    listen: str = "0.0.0.0:7443"
    data_dir: str = ""
    tls_cert: str | None = None
    tls_key: str | None = None
    on_ready: Callable[[ServeInfo], None] | None = None


def serve(options: ServeOptions) -> int:
    """Run the relay until SIGTERM/SIGINT; 0 on a clean stop. Errors (unusable data dir,
    certificate, address) are raised as CmdopError before anything listens."""
    from cmdop.relay.store import RelayStore
    from cmdop.relay.tls import ensure_certificate, load_certificate

    if not options.data_dir:
        raise UsageError("no data directory", "pass --data-dir DIR")
    if bool(options.tls_cert) != bool(options.tls_key):
        raise UsageError("--tls-cert and --tls-key go together", None)
    store = RelayStore.open(options.data_dir)
    try:
        if options.tls_cert and options.tls_key:
            cert = load_certificate(options.tls_cert, options.tls_key)
        else:
            cert = ensure_certificate(options.data_dir, [socket.gethostname()])
        return asyncio.run(_main(store, cert, options))
    finally:
        store.close()


async def _main(store: "RelayStore", cert: "CertInfo", options: ServeOptions) -> int:
    from cmdop.adapters.relay_grpc import start_server
    from cmdop.relay.router import Router

    router = Router(store)
    server, port = await start_server(router, options.listen, cert.cert_pem, cert.key_pem)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.ensure_future(router.watch_revocations())
    info = ServeInfo(address=options.listen, port=port, fingerprint=cert.fingerprint,
                     self_signed=cert.self_signed, cert_path=cert.cert_path,
                     data_dir=os.path.abspath(options.data_dir))
    log.info("relay listening on %s (port %d), certificate sha256 %s", options.listen, port,
             info.fingerprint)
    if options.on_ready is not None:
        options.on_ready(info)
    try:
        await stop.wait()
    finally:
        log.info("relay stopping (grace %.0f s)", STOP_GRACE_S)
        watcher.cancel()
        await server.stop(STOP_GRACE_S)
    return 0
