"""The relay's external-issuer path against a real OpenID Connect provider: oidc-provider
(tests/integration/oauth_peers/server.js) issues JWT access tokens for a resource server
(RFC 8707 resource indicator, `aud` = the relay's --oidc-audience, a `workspace` claim through
extraTokenClaims), and `cmdop relay serve --oidc-issuer URL --oidc-audience A
--oidc-workspace-claim workspace` accepts them — with no API key and no relay cabinet anywhere.

Every program is a separate process (relay_harness.py starts and reaps them), each machine its
own HOME:
- the IdP, HTTPS with a throw-away certificate; the relay trusts it through SSL_CERT_FILE
  (`relay serve` has no flag for the IdP's CA), and the IdP's discovery document advertises the
  relay (`cmdop_relay`, `cmdop_relay_fingerprint`) so that `cmdop login` pins it;
- `cmdop login --issuer IDP` (device flow, approved by playing the user's browser), then
  `cmdop hosts` / `cmdop exec` as a caller, and `cmdop agent run` linked with its own login;
- tokens the relay must refuse — exit 4, the relay's log naming why: a payload edited after
  signing, a broken signature, and tokens the IdP itself signs with an edited payload (its JWT
  customizer, driven by the test): another audience, another issuer, expired, not yet valid,
  no workspace claim, a workspace the relay lacks;
- key rotation: the IdP restarted on the same port with a new RS256 key in front of the old
  ES256 one; the relay fetches the new JWKS on the first token with the unknown kid and accepts
  it, and tokens signed with the old key still pass while the IdP publishes it.

One IdP, relay and agent are shared by the module; the rotation test runs last.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from relay_harness import (START_TIMEOUT_S, Agent, Cluster, Home, Relay, device_login,
                           token_path, wait_for)
from test_daemon_helpers import peer_missing
from tests.integration.oauth_peers.oidc_provider import OidcPeer, missing_reason

pytestmark = [pytest.mark.network, pytest.mark.slow]

WORKSPACE = "demo"
RESOURCE = "https://relay.cmdop.test/api"      # the resource indicator the IdP defaults to
AUDIENCE = "cmdop-relay-demo"                   # its access tokens' aud = the relay's --oidc-audience
CLAIM = "workspace"
OLD_KID, NEW_KID = "idp-es256-1", "idp-rs256-2"
LOGIN_TIMEOUT_S = 60.0


# -- keys, processes -----------------------------------------------------------------------------

def private_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.ECAlgorithm if alg == "ES256" else jwt.algorithms.RSAAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(key, as_dict=True)
    jwk.pop("key_ops", None)      # PyJWT says ["sign"]; oidc-provider selects signing keys "for verify"
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def write_keys(path: Path, keys: list[dict[str, Any]]) -> str:
    path.write_text(json.dumps({"keys": keys}))
    os.chmod(path, 0o600)
    return str(path)


class OidcRelay(Relay):
    """`cmdop relay serve` accepting the IdP's tokens only: no cabinet (`--oauth-listen off`),
    the IdP's certificate trusted through SSL_CERT_FILE."""

    def __init__(self, cluster: Cluster, data_dir: Path) -> None:
        super().__init__(cluster, data_dir)
        self.issuer = ""
        self.keys_fetched_at = 0.0      # monotonic, no earlier than the relay's first JWKS fetch

    def serve_args(self) -> list[str]:
        return ["--oauth-listen", "off", "--oidc-issuer", self.issuer, "--oidc-audience", AUDIENCE,
                "--oidc-workspace-claim", CLAIM]

    def started(self, info: dict[str, Any]) -> None:
        assert info["oidc_issuer"] == self.issuer, info
        assert info["issuer"] is None and info["oauth_port"] is None, info     # no cabinet

    def log(self) -> str:
        assert self.proc is not None
        return self.proc.log()


class LoginAgent(Agent):
    """`cmdop agent run` in a home whose only credential is its login."""

    def __init__(self, cluster: Cluster, home: Home) -> None:
        super().__init__(cluster, "", None, None, home=home)


def login(peer: OidcPeer, home: Home, account: str, *extra: str) -> dict[str, Any]:
    """`cmdop login --issuer IDP` in `home` (the IdP's CA from CMDOP_CA_FILE), approved in the
    IdP's own device pages with the user code it prints."""
    code, out, err = device_login(
        home, ["--issuer", peer.issuer, "--no-browser", "--json", *extra],
        lambda user_code: peer.approve(user_code, account), LOGIN_TIMEOUT_S,
        env=dict(home.env, CMDOP_CA_FILE=peer.ca_file))
    assert code == 0, err + peer.log.read_text()[-2000:]
    status: dict[str, Any] = json.loads(out)
    assert status["account"] == account, status
    return status


def login_all(peer: OidcPeer, logins: dict[str, tuple[Home, str, tuple[str, ...]]]) -> None:
    """Several logins at once (each waits one polling interval)."""
    errors: dict[str, BaseException] = {}

    def one(name: str, home: Home, account: str, extra: tuple[str, ...]) -> None:
        try:
            login(peer, home, account, *extra)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors[name] = exc

    threads = [threading.Thread(target=one, args=(n, *v), daemon=True) for n, v in logins.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOGIN_TIMEOUT_S + 10)
    for name, exc in errors.items():
        raise AssertionError(f"the login of {name} failed: {exc}") from exc


def claims_of(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return payload


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def json_out(out: subprocess.CompletedProcess[str]) -> Any:
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    return json.loads(out.stdout)


# -- the world -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The IdP (ES256 key OLD_KID), the relay trusting it, and three logged-in machines:
    A (alice, `--workspace demo`, a caller), B (bob, no --workspace: the claim decides; its
    agent linked with the login) and M (mallory's login, only a source of refresh tokens for
    minting odd tokens)."""
    reason = missing_reason()
    if reason:
        peer_missing(reason)
    root = tmp_path_factory.mktemp("ext-oidc")
    cluster = Cluster(root / "w")
    idp_dir = root / "idp"
    idp_dir.mkdir(mode=0o700)
    old = private_jwk(ec.generate_private_key(ec.SECP256R1()), OLD_KID, "ES256")
    new = private_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), NEW_KID, "RS256")
    keys_v1 = write_keys(idp_dir / "keys-v1.json", [old])
    keys_v2 = write_keys(idp_dir / "keys-v2.json", [new, old])    # the first key of an alg signs

    from cmdop.relay.tls import ensure_certificate

    relay = OidcRelay(cluster, cluster.root / "relay-data")
    relay.admin("workspace", "create", WORKSPACE)
    # The relay's certificate made now (`relay serve` reuses it), so the IdP can advertise its pin.
    relay_fp = ensure_certificate(str(relay.data_dir), []).fingerprint
    idp_opts: dict[str, Any] = dict(relay=relay.address, relay_fingerprint=relay_fp, resource=RESOURCE,
                                    audience=AUDIENCE, token_claims={CLAIM: WORKSPACE})
    peer = OidcPeer.start(idp_dir, keys_file=keys_v1, **idp_opts)
    w = SimpleNamespace(cluster=cluster, relay=relay, peer=peer, idp_dir=idp_dir, idp_opts=idp_opts,
                        keys_v2=keys_v2)
    try:
        relay.issuer = peer.issuer
        relay.home.env["SSL_CERT_FILE"] = peer.ca_file
        relay.start()
        assert relay.fingerprint == relay_fp
        wait_for(lambda: f"signing keys of {peer.issuer}: {OLD_KID}" in relay.log(), 20,
                 "the relay to fetch the IdP's key set")
        relay.keys_fetched_at = time.monotonic()
        homes = {name: cluster.home(name) for name in ("a", "b", "m")}
        login_all(peer, {"a": (homes["a"], "alice", ("--workspace", WORKSPACE)),
                         "b": (homes["b"], "bob", ()),
                         "m": (homes["m"], "mallory", ("--workspace", WORKSPACE))})
        agent = LoginAgent(cluster, homes["b"])
        agent.start()
        w.homes, w.agent = homes, agent
        yield w
        assert agent.proc is not None and agent.proc.alive(), agent.proc and agent.proc.log()
        assert "Traceback" not in agent.proc.log(), agent.proc.log()
        assert relay.proc is not None and relay.proc.alive(), relay.log()
        assert "Traceback" not in relay.log(), relay.log()
    finally:
        try:
            cluster.close()
        finally:
            w.peer.stop()


# -- 1 and 2: accepted ---------------------------------------------------------------------------

def test_the_login_stores_an_idp_jwt_for_the_relay(world: Any) -> None:
    relay, peer = world.relay, world.peer
    for name, account in (("a", "alice"), ("b", "bob")):
        doc = json.loads(token_path(world.homes[name]).read_text())
        # the relay advertised by the IdP, pinned by the fingerprint it advertised
        assert doc["relay"] == relay.address and doc["relay_fingerprint"] == relay.fingerprint, doc
        assert doc["issuer"] == peer.issuer and doc["ca_file"] == peer.ca_file and doc["refresh_token"]
        assert doc["account"] == account
        header = jwt.get_unverified_header(doc["access_token"])
        assert (header["alg"], header["kid"], header["typ"]) == ("ES256", OLD_KID, "at+jwt"), header
        claims = claims_of(doc["access_token"])
        assert (claims["iss"], claims["aud"], claims["sub"], claims[CLAIM]) == (peer.issuer, AUDIENCE, account,
                                                                             WORKSPACE), claims
    assert json.loads(token_path(world.homes["a"]).read_text())["workspace"] == WORKSPACE
    assert json.loads(token_path(world.homes["b"]).read_text())["workspace"] == ""   # the claim decides


def test_an_agent_links_with_its_external_token(world: Any) -> None:
    """`cmdop agent status` (it reads daemon.status) says online soon after the link is up —
    well before the file's 10-second periodic refresh."""
    def online() -> dict[str, Any] | None:
        st: dict[str, Any] = json_out(world.agent.home.run("agent", "status", "--json"))
        return st if st["relay"]["state"] == "online" else None

    st = wait_for(online, 5, "`cmdop agent status` to say the link is online")
    assert st["relay"]["source"] == "oauth" and st["relay"]["connects"] == 1, st["relay"]
    assert world.agent.machine


def test_a_caller_lists_and_calls_the_agent_with_its_external_token(world: Any) -> None:
    a, agent = world.homes["a"], world.agent
    assert "CMDOP_API_KEY" not in a.env
    hosts = {h["name"]: h for h in json_out(a.run("hosts", "--json"))}
    assert hosts[agent.machine]["online"], hosts
    out = a.run("exec", agent.machine, "--", "echo", "via-idp")
    assert out.returncode == 0 and out.stdout == "via-idp\n", out.stderr
    rec = agent.home.audit_for("echo via-idp")
    assert rec["decision"] == "allow" and rec["user"] == "alice", rec
    assert rec["caller"]["kind"] == "remote" and rec["caller"]["credential"] == "oidc", rec
    assert rec["caller"]["workspace"] == WORKSPACE, rec
    # no API key anywhere
    assert not list(world.cluster.root.rglob("ssh_workspaces.json"))
    assert "external token refused" not in world.relay.log()


# -- 3: refused ----------------------------------------------------------------------------------

def mint(world: Any, claims: dict[str, Any]) -> str:
    """An access token the IdP signs, its payload edited by `claims`: the next token the IdP
    issues — for M's refresh token (rotated; token.json updated)."""
    from cmdop.adapters import oauth_client, token_file

    path = str(token_path(world.homes["m"]))
    stored = token_file.load(path)
    assert stored is not None
    world.peer.set_next_token_claims(claims)
    transport = oauth_client.Transport(oauth_client.TlsOptions(ca_file=world.peer.ca_file))
    tokens = oauth_client.refresh(transport, stored.token_endpoint, refresh_token=stored.refresh_token,
                                  sleep=lambda s: None)
    assert tokens.refresh_token
    token_file.save(path, token_file.StoredToken(
        issuer=stored.issuer, token_endpoint=stored.token_endpoint, access_token=tokens.access_token,
        refresh_token=tokens.refresh_token, expires_at=None, client_id=stored.client_id))
    return tokens.access_token


def tamper(token: str) -> str:
    """`token` with its sub changed and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "alice"
    return ".".join([header, b64(json.dumps(claims, separators=(",", ":")).encode()), signature])


def caller_with(world: Any, name: str, access_token: str) -> Home:
    """A caller home whose token.json holds `access_token` (never refreshed: no refresh token,
    no expiry — whatever the relay says is what counts), for the advertised relay, pinned."""
    from cmdop.adapters import token_file

    home: Home = world.cluster.home(name)
    token_file.save(str(token_path(home)), token_file.StoredToken(
        issuer=world.peer.issuer, token_endpoint=world.peer.issuer + "/token", access_token=access_token,
        expires_at=None, workspace=WORKSPACE, relay=world.relay.address,
        relay_fingerprint=world.relay.fingerprint))
    return home


def test_tokens_the_relay_must_refuse(world: Any) -> None:
    relay, peer = world.relay, world.peer
    now = int(time.time())
    good = mint(world, {})
    assert caller_with(world, "minted-good", good).run("hosts").returncode == 0    # the minting itself is fine
    cases: list[tuple[str, str, str]] = [
        ("tampered", tamper(good), "InvalidSignatureError"),
        ("bad-signature", good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"), "InvalidSignatureError"),
        ("other-audience", mint(world, {"aud": "https://other.example/api"}), "InvalidAudienceError"),
        ("other-issuer", mint(world, {"iss": "https://idp.other.example"}), "InvalidIssuerError"),
        ("expired", mint(world, {"iat": now - 1200, "exp": now - 600}), "expired"),
        ("not-yet-valid", mint(world, {"nbf": now + 600}), "not yet valid"),
        ("no-workspace", mint(world, {CLAIM: None}), f"claim '{CLAIM}' is not one workspace name"),
        ("unknown-workspace", mint(world, {CLAIM: "elsewhere"}), "no workspace 'elsewhere' on this relay"),
    ]
    for name, token, reason in cases:
        if name not in ("tampered", "bad-signature"):
            header = jwt.get_unverified_header(token)
            assert header["kid"] == OLD_KID, (name, header)       # signed by the IdP itself
        before = len(relay.log())
        out = caller_with(world, name, token).run("hosts")
        assert out.returncode == 4, (name, out.returncode, out.stdout, out.stderr)
        assert "refused" in out.stderr, (name, out.stderr)
        logged = wait_for(lambda: relay.log()[before:], 10, f"the relay's log line for {name}")
        assert "external token refused" in logged and reason in logged, (name, logged)
        assert token not in relay.log() and token not in out.stderr
    # a refused token made the relay fetch nothing
    assert relay.log().count(f"signing keys of {peer.issuer}") == 1, relay.log()


# -- 4: rotation (last) --------------------------------------------------------------------------

def test_key_rotation_at_the_idp(world: Any) -> None:
    """The IdP restarted on the same port with [new RS256 key, old ES256 key]: a token signed
    with the new key makes the relay refetch the JWKS (once) and pass; old tokens still pass."""
    from cmdop.relay.oidc import MIN_REFETCH_S

    relay = world.relay
    world.peer.stop()
    world.peer = OidcPeer.start(world.idp_dir, port=world.peer.port, keys_file=world.keys_v2,
                                access_token_alg="RS256", **world.idp_opts)
    peer = world.peer
    assert peer.issuer == relay.issuer
    c = world.cluster.home("c")
    login(peer, c, "carol", "--workspace", WORKSPACE)
    token = json.loads(token_path(c).read_text())["access_token"]
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["kid"]) == ("RS256", NEW_KID), header
    # The relay refetches for an unknown kid at most every MIN_REFETCH_S; its last fetch was at start.
    time.sleep(max(0.0, relay.keys_fetched_at + MIN_REFETCH_S + 0.5 - time.monotonic()))

    hosts = {h["name"]: h for h in json_out(c.run("hosts", "--json"))}     # the first call passes
    assert hosts[world.agent.machine]["online"], hosts
    log = relay.log()
    assert f"no key '{NEW_KID}' in the JWKS of {peer.issuer}; refetching the key set" in log, log
    assert f"signing keys of {peer.issuer}: {', '.join(sorted([NEW_KID, OLD_KID]))}" in log, log
    assert log.count(f"signing keys of {peer.issuer}") == 2, log
    assert "external token refused" not in log.split(f"no key '{NEW_KID}'")[-1], log

    # the old key is still published: A's token (signed with it before the rotation) passes,
    # and the agent linked with B's stays online without reconnecting
    assert world.homes["a"].run("hosts").returncode == 0
    out = c.run("exec", world.agent.machine, "--", "echo", "after-rotation")
    assert out.returncode == 0 and out.stdout == "after-rotation\n", out.stderr
    assert world.agent.home.audit_for("echo after-rotation")["user"] == "carol"
    st = json_out(world.agent.home.run("agent", "status", "--json"))
    assert st["relay"]["state"] == "online" and st["relay"]["connects"] == 1, st["relay"]
