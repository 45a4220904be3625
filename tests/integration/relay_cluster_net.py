"""Three relay nodes sharing one PostgreSQL and one redis-server, as an operator runs them
(the fixture of test_relay_cluster.py and test_relay_cluster_redteam.py): `open_net` starts
them, a Front (a load balancer) before nodes a and b, an agent linked through it and a caller
"ops" on node c. (No tests in this module.)"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from relay_harness import Agent, Cluster, Relay, caller, free_port, wait_for
from test_daemon_helpers import peer_missing


def redis_or_skip() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server"
                                             if os.access("/usr/bin/redis-server", os.X_OK) else None)
    if found is None:
        peer_missing("redis-server not found: install `redis-server` (.ci/setup)")
    try:
        import redis  # noqa: F401
    except ImportError:
        peer_missing("the redis package is not installed (a cmdop dependency: bash .ci/setup)")
    return found


class RedisServer:
    """A throw-away redis-server on a loopback port, no persistence (a restart forgets all)."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary, self.root = binary, root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        log = open(self.root / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)], stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False
        wait_for(answers, 20, "redis-server to answer")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Front:
    """One address in front of the nodes: each TCP connection goes to the first node that
    accepts it, in order (what a TCP load balancer with health checks does)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            for port in self.ports:
                try:
                    up = socket.create_connection(("127.0.0.1", port), timeout=2)
                    break
                except OSError:
                    continue
            else:
                return
            with up:
                up.settimeout(None)
                back = threading.Thread(target=_pipe, args=(up, conn), daemon=True)
                back.start()
                _pipe(conn, up)
                back.join()

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy src to dst until either end closes; then shut both down."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Node(Relay):
    """A relay node: the shared PostgreSQL store and Redis bus from its environment
    (CMDOP_RELAY_STORE, CMDOP_RELAY_BUS: no secret on a command line), its own --node-id."""

    def __init__(self, cluster: Cluster, data_dir: Path, dsn: str, bus: str, node_id: str) -> None:
        super().__init__(cluster, data_dir)
        self.node_id = node_id
        self.home.env.update(CMDOP_RELAY_STORE=dsn, CMDOP_RELAY_BUS=bus)

    def serve_args(self) -> list[str]:
        return ["--node-id", self.node_id, "--oauth-listen", "off"]

    def started(self, info: dict[str, Any]) -> None:
        assert info["node"] == self.node_id and info["bus"].startswith("redis://"), info


@contextlib.contextmanager
def open_net(tmp_path_factory: pytest.TempPathFactory, pg_server: Any,
             name: str = "relay-cluster") -> Iterator[Any]:
    """Nodes a, b, c (ids node-a…), their redis, an agent through the front, caller ops on c."""
    binary = redis_or_skip()
    root = tmp_path_factory.mktemp(name)
    redis = RedisServer(binary, root).start()
    dsn = pg_server.create_database()
    cluster = Cluster(root / "net")
    front: Front | None = None
    try:
        from cmdop.relay.tls import CERT_NAME, KEY_NAME, ensure_certificate

        nodes = [Node(cluster, root / f"data-{n}", dsn, redis.url, f"node-{n}") for n in "abc"]
        # One certificate for every node: callers pin one fingerprint, whichever node answers.
        for n in nodes:
            n.data_dir.mkdir(mode=0o700)
        ensure_certificate(str(nodes[0].data_dir), ["cmdop-relay"])
        for n in nodes[1:]:
            for name in (CERT_NAME, KEY_NAME):
                shutil.copy2(nodes[0].data_dir / name, n.data_dir / name)
        a, b, c = nodes
        a.admin("workspace", "create", "demo")
        keys = {name: a.admin("key", "create", "demo", "--name", name)
                for name in ("agent", "ops", "doomed")}
        for n in nodes:
            n.start()
        assert a.fingerprint == b.fingerprint == c.fingerprint
        front = Front([a.port, b.port])
        front_relay = SimpleNamespace(address=front.address, fingerprint=a.fingerprint)
        agent = Agent(cluster, "agent", keys["agent"]["key"], front_relay).start()  # type: ignore[arg-type]
        yield SimpleNamespace(cluster=cluster, redis=redis, a=a, b=b, c=c, agent=agent,
                              dsn=dsn, front=front,
                              keys=keys, ops=caller(cluster, "ops", keys["ops"]["key"], c))
    finally:
        if front is not None:
            front.close()
        cluster.close()
        redis.stop()
