"""Device login across two relay nodes, as docs/relay.md ("Several relay nodes") promises: every
node is given the same `--issuer-url` (a TCP front for the nodes' OAuth ports, the name callers
use) and the same `oauth_signing.key`, so any node accepts the tokens another issued.

Two `cmdop relay serve` nodes share one PostgreSQL store (pg_server.py) and one redis-server
(relay_cluster_net.py), the same certificate and signing key. Alice logs in through the front
(answered by node A's OAuth server), approved with `cmdop relay approve` through node B's admin;
the agent is linked to node B with an API key. What a user notices:
1. `cmdop hosts` / `cmdop exec` with that login reach the agent on node B — through node A
   (the relay A's metadata named: the call crosses the bus) and through node B directly (B
   verifies a token A issued);
2. a refresh answered by node B's token endpoint gives tokens node A accepts;
3. `cmdop logout` (revocation, through the front: node A) makes node B refuse the access token
   and the refresh token within a few seconds.
No timing is asserted (generous waits).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from pg_server import pg_or_skip, pg_server  # noqa: F401
from relay_cluster_net import Front, Node, RedisServer, redis_or_skip
from relay_harness import Agent, Caller, Cluster, device_login, free_port, token_path
from test_daemon_helpers import wait_for
from test_login_e2e import copy_login, json_out

pytestmark = [pytest.mark.network, pytest.mark.slow]

WORKSPACE = "demo"
ACCOUNT = "alice@example.com"
LOGIN_TIMEOUT_S = 60.0
REVOKE_WAIT_S = 15.0          # "within a few seconds": a generous wait, not asserted


class OAuthNode(Node):
    """A cluster node that also serves device login on its own OAuth port, under the shared
    issuer URL."""

    def __init__(self, cluster: Cluster, data_dir: Path, dsn: str, bus: str, node_id: str) -> None:
        super().__init__(cluster, data_dir, dsn, bus, node_id)
        self.oauth_port = free_port()
        while self.oauth_port == self.port:
            self.oauth_port = free_port()
        self.issuer_url = ""

    def serve_args(self) -> list[str]:
        return ["--node-id", self.node_id, "--oauth-listen", f"127.0.0.1:{self.oauth_port}",
                "--issuer-url", self.issuer_url]

    def started(self, info: dict[str, Any]) -> None:
        super().started(info)
        assert (info["oauth_port"], info["issuer"]) == (self.oauth_port, self.issuer_url), info

    def token_endpoint(self, via: str) -> str:
        """`via` (an endpoint under the shared issuer) on this node's own OAuth port."""
        parts = urlsplit(via)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.oauth_port}"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pg_server: Any) -> Iterator[Any]:  # noqa: F811
    binary = redis_or_skip()
    root = tmp_path_factory.mktemp("relay-cluster-login")
    redis = RedisServer(binary, root).start()
    dsn = pg_server.create_database()
    cluster = Cluster(root / "net")
    front: Front | None = None
    try:
        from cmdop.relay.tls import CERT_NAME, KEY_NAME, ensure_certificate
        from cmdop.relay.tokens import SIGNING_KEY_NAME, load_or_create_signing_key

        a, b = (OAuthNode(cluster, root / f"data-{n}", dsn, redis.url, f"node-{n}") for n in "ab")
        for n in (a, b):
            n.data_dir.mkdir(mode=0o700)
        # the operator's copy: one certificate and one signing key in every data dir
        ensure_certificate(str(a.data_dir), ["cmdop-relay"])
        load_or_create_signing_key(str(a.data_dir))
        for name in (CERT_NAME, KEY_NAME, SIGNING_KEY_NAME):
            shutil.copy2(a.data_dir / name, b.data_dir / name)
        # the name in front of the OAuth ports: each connection to A while it answers
        front = Front([a.oauth_port, b.oauth_port])
        issuer = f"https://{front.address}"
        a.issuer_url = b.issuer_url = issuer
        a.admin("workspace", "create", WORKSPACE)
        agent_key = a.admin("key", "create", WORKSPACE, "--name", "agent")["key"]
        a.start()
        b.start()
        assert a.fingerprint == b.fingerprint
        agent = Agent(cluster, "agent", agent_key, b).start()
        yield SimpleNamespace(cluster=cluster, a=a, b=b, agent=agent, issuer=issuer)
        for node in (a, b):
            assert node.proc is not None and node.proc.alive(), node.proc and node.proc.log()
            assert "Traceback" not in node.proc.log(), node.proc.log()
    finally:
        if front is not None:
            front.close()
        cluster.close()
        redis.stop()


def _login(w: Any) -> Caller:
    """`cmdop login --issuer FRONT` in a new home, approved through node B's admin."""
    home = w.cluster.home("alice")

    def approve(code: str) -> None:
        approved = w.b.admin("approve", code, "--account", ACCOUNT, "--workspace", WORKSPACE)
        assert approved["account"]["email"] == ACCOUNT, approved

    code, out, err = device_login(
        home, ["--issuer", w.issuer, "--issuer-fingerprint", w.a.fingerprint,
               "--workspace", WORKSPACE, "--no-browser", "--json"], approve, LOGIN_TIMEOUT_S)
    assert code == 0, err
    status = json.loads(out)
    assert (status["account"], status["workspace"]) == (ACCOUNT, WORKSPACE), status
    return Caller(home)


def _reaches_agent(who: Caller, w: Any, n: int) -> None:
    """`hosts` lists the agent online and `exec seq 1 n` runs on it, audited as alice's."""
    hosts = {h["name"]: h for h in json_out(who.run("hosts", "--json"))}
    assert hosts[w.agent.machine]["online"], hosts
    out = who.run("exec", w.agent.machine, "--", "seq", "1", str(n))
    assert (out.returncode, out.stdout) == (0, "".join(f"{k}\n" for k in range(1, n + 1))), out.stderr
    rec = w.agent.home.audit_for(f"seq 1 {n}")
    assert rec["decision"] == "allow" and rec["user"] == ACCOUNT, rec
    assert rec["caller"]["credential"] == "oauth", rec


def test_a_login_issued_by_node_a_is_honoured_refreshed_and_revoked_on_node_b(world: Any) -> None:
    from cmdop.adapters import oauth_client
    from cmdop.core.errors import CmdopError

    w = world
    alice = _login(w)
    doc = json.loads(token_path(alice.home).read_text())
    # the front answered with node A (the first that accepts): its metadata named A's gRPC port
    assert doc["issuer"] == w.issuer and doc["relay"] == w.a.address, doc
    assert doc["refresh_token"] and doc["token_endpoint"].startswith(w.issuer + "/"), doc

    # 1. the agent on node B: through node A (crossing the bus), and through B itself
    _reaches_agent(alice, w, 3)
    on_b = copy_login(w.cluster, alice.home, "alice-on-b", relay=w.b.address)
    _reaches_agent(on_b, w, 4)

    # 2. a refresh answered by node B's own OAuth endpoint; node A accepts what B issued
    transport = oauth_client.Transport(oauth_client.TlsOptions(fingerprint=w.b.fingerprint))
    b_token = w.b.token_endpoint(doc["token_endpoint"])
    fresh = oauth_client.refresh(transport, b_token, refresh_token=doc["refresh_token"],
                                 client_id=doc["client_id"])
    assert fresh.access_token and fresh.access_token != doc["access_token"]
    far = int(time.time()) + 3600          # "needs no refresh": the access token is sent as it is
    renewed = {"access_token": fresh.access_token, "refresh_token": fresh.refresh_token,
               "expires_at": far}
    refreshed = copy_login(w.cluster, alice.home, "alice-refreshed", **renewed)   # relay: A
    _reaches_agent(refreshed, w, 5)
    probe_b = copy_login(w.cluster, alice.home, "alice-probe-b", relay=w.b.address, **renewed)
    _reaches_agent(probe_b, w, 6)

    # 3. `cmdop logout` (revoked through the front, i.e. node A): node B refuses the login
    out = refreshed.home.run("logout", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["revoked"] is True, out.stderr

    def b_refuses() -> Any:
        res = probe_b.run("hosts")
        return res if res.returncode != 0 else None
    res = wait_for(b_refuses, REVOKE_WAIT_S, "node B to refuse the revoked access token", every=0.5)
    assert res.returncode == 4, (res.stdout, res.stderr)
    assert "hint: run `cmdop login`" in res.stderr and "Traceback" not in res.stderr, res.stderr
    out = probe_b.run("exec", w.agent.machine, "--", "seq", "1", "7")
    assert out.returncode == 4 and out.stdout == "", (out.stdout, out.stderr)

    def b_refuses_refresh() -> Any:
        try:
            oauth_client.refresh(transport, b_token, refresh_token=fresh.refresh_token,
                                 client_id=doc["client_id"], sleep=lambda _s: None)
        except CmdopError as exc:
            return exc
        return None
    exc = wait_for(b_refuses_refresh, REVOKE_WAIT_S, "node B to refuse the revoked refresh token",
                   every=0.5)
    assert exc.exit_code == 4 and "revoked" in str(exc), exc
