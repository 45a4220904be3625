"""The relay's OAuth cabinet over real HTTPS on loopback (cmdop.relay.cabinet): device login
with `cmdop relay approve|deny` in between, refresh rotation, revocation, request limits; a
real `cmdop relay serve` doing the same; an external OIDC issuer's JWKS served by a tiny
aiohttp server, with key rotation."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cmdop.core.errors import CmdopError
from cmdop.relay import cabinet as cab
from cmdop.relay.auth import BearerVerifier
from cmdop.relay.oidc import OidcConfig, OidcVerifier
from cmdop.relay.store import RelayStore
from cmdop.relay.tls import ensure_certificate
from cmdop.relay.tokens import load_or_create_signing_key
from tests.integration.inprocess_cli import cli  # noqa: F401  (the fixture)

pytestmark = pytest.mark.network

REPO = Path(__file__).resolve().parents[2]
DEVICE = cab.DEVICE_GRANT
# The store's clock starts now: the admin commands the tests run (approve, deny, device list)
# judge expiry by the real clock, so a fixed date here would expire every code in time.
T0 = float(int(time.time()))


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Http:
    """A client of the cabinet, trusting exactly the relay's certificate."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def post(self, path: str, data: Any = None, **kw: Any) -> tuple[int, Any, Any]:
        async with self.session.post(self.base + path, data=data, **kw) as resp:
            body = await resp.read()
            return resp.status, (json.loads(body) if body and resp.content_type == "application/json"
                                 else body), resp.headers

    async def get(self, path: str, **kw: Any) -> tuple[int, Any, Any]:
        async with self.session.get(self.base + path, **kw) as resp:
            body = await resp.read()
            return resp.status, (json.loads(body) if resp.content_type == "application/json" else body), resp.headers

    async def token(self, **form: str) -> tuple[int, Any]:
        status, body, _ = await self.post("/oauth/token", form)
        return status, body


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = str(tmp_path / "relaydata")
        self.clock = Clock()
        self.store = RelayStore.open(self.data_dir, clock=self.clock)
        self.store.create_workspace("prod")
        self.store.create_workspace("dev")
        self.cert = ensure_certificate(self.data_dir, ["localhost"])
        self.key = load_or_create_signing_key(self.data_dir)
        self.audience = f"cmdop-relay:{self.store.relay_id()}"

    def verifier(self, issuer: str) -> BearerVerifier:
        return BearerVerifier(self.store, signing_key=self.key, issuer=issuer, audience=self.audience,
                              clock=self.clock)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.store.close()


@asynccontextmanager
async def serving(env: Env, limits: cab.Limits | None = None) -> AsyncIterator[tuple[Http, cab.Cabinet]]:
    sock = cab.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    issuer = f"https://127.0.0.1:{port}"
    cabinet = cab.Cabinet(env.store, env.key, cab.CabinetConfig(
        issuer=issuer, audience=env.audience, relay_address="127.0.0.1:7443",
        fingerprint=env.cert.fingerprint), clock=env.clock, limits=limits)
    running = await cab.start(cabinet, sock, cab.ssl_context(env.cert))
    client_ctx = ssl.create_default_context(cadata=env.cert.cert_pem.decode())
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as session:
            yield Http(session, issuer), cabinet
    finally:
        await running.stop()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- metadata, keys, headers -------------------------------------------------------------------

def test_metadata_jwks_and_headers(env: Env) -> None:
    async def scenario() -> None:
        async with serving(env) as (http, _):
            status, doc, headers = await http.get("/.well-known/oauth-authorization-server")
            assert status == 200
            iss = http.base
            assert doc["issuer"] == iss
            assert doc["device_authorization_endpoint"] == iss + "/oauth/device"
            assert doc["token_endpoint"] == iss + "/oauth/token"
            assert doc["revocation_endpoint"] == iss + "/oauth/revoke"
            assert doc["jwks_uri"] == iss + "/oauth/jwks"
            assert doc["grant_types_supported"] == [DEVICE, "refresh_token"]
            assert doc["token_endpoint_auth_methods_supported"] == ["none"]
            assert doc["cmdop_relay"] == "127.0.0.1:7443"
            assert doc["cmdop_relay_fingerprint"] == env.cert.fingerprint
            assert (await http.get("/.well-known/openid-configuration"))[1] == doc
            assert headers["Cache-Control"] == "no-store" and headers["X-Frame-Options"] == "DENY"
            assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
            assert headers["Server"] == "cmdop-relay"
            status, jwks, _ = await http.get("/oauth/jwks")
            assert status == 200 and jwks == env.key.jwks() and "d" not in jwks["keys"][0]
            # no CORS, whatever the Origin
            origin = {"Origin": "https://evil.example"}
            for method in ("GET", "OPTIONS", "POST"):
                async with http.session.request(method, http.base + "/oauth/token", headers=origin) as r:
                    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
            async with http.session.options(http.base + "/oauth/token", headers=origin) as r:
                assert r.status == 405
            status, body, _ = await http.get("/nope")
            assert status == 404 and body["error"] == "not_found"

    run(scenario())


def test_verification_page_is_plain_text(env: Env) -> None:
    async def scenario() -> None:
        async with serving(env) as (http, _):
            status, body, headers = await http.get("/device?user_code=bcdf-ghjk")
            assert status == 200 and headers["Content-Type"].startswith("text/plain")
            assert b"cmdop relay approve BCDF-GHJK --account" in body
            status, body, _ = await http.get("/device?user_code=<script>alert(1)</script>")
            assert b"<script>" not in body and b"XXXX-XXXX" in body
            assert headers["X-Frame-Options"] == "DENY"

    run(scenario())


# -- the device flow ---------------------------------------------------------------------------

def test_device_flow_with_cli_approve_refresh_and_reuse(env: Env, cli: Any) -> None:
    async def scenario() -> None:
        async with serving(env) as (http, cabinet):
            hooks: list[int] = []
            cabinet.on_revoke = lambda: hooks.append(1)
            status, dev, _ = await http.post("/oauth/device", {"client_id": "cmdop-cli", "scope": "relay",
                                                               "workspace": "prod"})
            assert status == 200, dev
            assert set(dev) == {"device_code", "user_code", "verification_uri", "verification_uri_complete",
                                "expires_in", "interval"}
            assert (dev["expires_in"], dev["interval"]) == (600, 5)
            assert dev["verification_uri"] == http.base + "/device"
            assert dev["verification_uri_complete"] == f"{http.base}/device?user_code={dev['user_code']}"
            poll = {"grant_type": DEVICE, "device_code": dev["device_code"], "client_id": "cmdop-cli"}
            status, body = await http.token(**poll)
            assert (status, body["error"]) == (400, "authorization_pending")
            env.clock.t += 2
            status, body = await http.token(**poll)
            assert (status, body["error"], body["interval"]) == (400, "slow_down", 10)
            env.clock.t += 10
            assert (await http.token(**poll))[1]["error"] == "authorization_pending"

            listed = cli("relay", "device", "list", "--json", "--data-dir", env.data_dir)
            assert [d["workspace_hint"] for d in listed.json()] == ["prod"]
            assert dev["user_code"] not in listed.out and dev["device_code"] not in listed.out
            code = dev["user_code"].lower().replace("-", "")
            r = cli("relay", "approve", code, "--account", "Alice@Example.com", "--workspace", "prod",
                    "--data-dir", env.data_dir)
            assert r.code == 0, r.err
            assert "approved the device login from 127.0.0.1" in r.out and "alice@example.com" in r.out
            r = cli("relay", "approve", code, "--account", "bob@example.com", "--workspace", "prod",
                    "--data-dir", env.data_dir)
            assert r.code == 1 and "already approved" in r.err

            env.clock.t += 10
            status, tok = await http.token(**poll)
            assert status == 200, tok
            assert tok["token_type"] == "Bearer" and tok["expires_in"] == 3600
            assert (tok["workspace"], tok["account"], tok["scope"]) == ("prod", "alice@example.com", "relay")
            assert tok["refresh_token"].startswith("cmdop_rt_")
            header = jwt.get_unverified_header(tok["access_token"])
            assert header["alg"] == "EdDSA" and header["kid"] == env.key.kid
            claims = jwt.decode(tok["access_token"], env.key.public, algorithms=["EdDSA"],
                                audience=env.audience, issuer=http.base, options={"verify_exp": False,
                                                                                  "verify_iat": False,
                                                                                  "verify_nbf": False})
            assert claims["exp"] - claims["iat"] == 3600 and claims["email"] == "alice@example.com"
            assert claims["sub"] == tok["account_id"] and claims["workspace"] == "prod"
            v = env.verifier(http.base)
            p = v.verify(tok["access_token"])
            assert p is not None and (p.id, p.workspace, p.name, p.credential) == (
                "acct:" + tok["account_id"], "prod", "alice@example.com", "oauth")
            # the device code is single use
            env.clock.t += 10
            status, body = await http.token(**poll)
            assert (status, body["error"]) == (400, "invalid_grant")

            # refresh: rotated
            status, tok2 = await http.token(grant_type="refresh_token", refresh_token=tok["refresh_token"],
                                            client_id="cmdop-cli")
            assert status == 200 and tok2["refresh_token"] != tok["refresh_token"]
            assert v.verify(tok2["access_token"]) is not None
            # the spent refresh token again: reuse — the family is revoked, access tokens too
            status, body = await http.token(grant_type="refresh_token", refresh_token=tok["refresh_token"])
            assert (status, body["error"]) == (400, "invalid_grant") and "reuse" in body["error_description"]
            assert hooks == [1]
            status, body = await http.token(grant_type="refresh_token", refresh_token=tok2["refresh_token"])
            assert (status, body["error"]) == (400, "invalid_grant")
            assert v.verify(tok["access_token"]) is None and v.verify(tok2["access_token"]) is None

    run(scenario())


def test_access_denied_and_expired_token(env: Env, cli: Any) -> None:
    async def scenario() -> None:
        async with serving(env) as (http, _):
            _, dev, _ = await http.post("/oauth/device", {"client_id": "cmdop-cli"})
            r = cli("relay", "deny", dev["user_code"], "--data-dir", env.data_dir)
            assert r.code == 0 and "denied" in r.out
            status, body = await http.token(grant_type=DEVICE, device_code=dev["device_code"], client_id="cmdop-cli")
            assert (status, body["error"]) == (400, "access_denied")

            _, dev, _ = await http.post("/oauth/device", {"client_id": "cmdop-cli"})
            env.clock.t += 601
            status, body = await http.token(grant_type=DEVICE, device_code=dev["device_code"], client_id="cmdop-cli")
            assert (status, body["error"]) == (400, "expired_token")
            with pytest.raises(CmdopError, match="expired") as err:   # (the CLI runs on real time)
                env.store.approve_device(dev["user_code"], "a@b.c", "prod")
            assert "cmdop login" in (err.value.hint or "")

    run(scenario())


def test_disabled_account_is_refused_and_listed(env: Env, cli: Any) -> None:
    async def scenario() -> None:
        async with serving(env) as (http, _):
            _, dev, _ = await http.post("/oauth/device", {"client_id": "cmdop-cli"})
            assert cli("relay", "approve", dev["user_code"], "--account", "c@d.e", "--workspace", "dev",
                       "--data-dir", env.data_dir).code == 0
            status, tok = await http.token(grant_type=DEVICE, device_code=dev["device_code"])
            assert status == 200 and tok["workspace"] == "dev"
            rows = cli("relay", "account", "list", "--json", "--data-dir", env.data_dir).json()
            assert [(a["email"], a["workspaces"], a["disabled_at"]) for a in rows] == [("c@d.e", ["dev"], None)]
            r = cli("relay", "account", "disable", "C@D.E", "--data-dir", env.data_dir)
            assert r.code == 0 and "disabled account c@d.e" in r.out
            assert env.store.disabled_account_ids() == frozenset({tok["account_id"]})
            assert env.verifier(http.base).verify(tok["access_token"]) is None
            status, body = await http.token(grant_type="refresh_token", refresh_token=tok["refresh_token"])
            assert (status, body["error"]) == (400, "invalid_grant")
            assert "disabled" in cli("relay", "account", "list", "--data-dir", env.data_dir).out
            r = cli("relay", "account", "disable", "nobody@x.y", "--data-dir", env.data_dir)
            assert r.code == 1 and "no account" in r.err
            assert cli("relay", "account", "enable", "c@d.e", "--data-dir", env.data_dir).code == 0

    run(scenario())


# -- revocation --------------------------------------------------------------------------------

def test_revocation(env: Env, cli: Any) -> None:
    async def scenario() -> None:
        async with serving(env) as (http, cabinet):
            hooks: list[int] = []
            cabinet.on_revoke = lambda: hooks.append(1)
            _, dev, _ = await http.post("/oauth/device", {"client_id": "cmdop-cli"})
            cli("relay", "approve", dev["user_code"], "--account", "a@b.c", "--workspace", "prod",
                "--data-dir", env.data_dir)
            _, tok = await http.token(grant_type=DEVICE, device_code=dev["device_code"], client_id="cmdop-cli")
            v = env.verifier(http.base)
            assert v.verify(tok["access_token"]) is not None
            # the access token: its jti is deny-listed until it expires
            status, body, _ = await http.post("/oauth/revoke", {"token": tok["access_token"],
                                                                "token_type_hint": "access_token"})
            assert status == 200 and body == b""
            assert v.verify(tok["access_token"]) is None
            assert len(env.store.denied_token_ids()) == 1
            assert hooks == [1]                                # the router is told at once
            # the refresh token: revoked (with its family)
            status, _, _ = await http.post("/oauth/revoke", {"token": tok["refresh_token"], "client_id": "cmdop-cli"})
            assert status == 200
            status, body = await http.token(grant_type="refresh_token", refresh_token=tok["refresh_token"])
            assert (status, body["error"]) == (400, "invalid_grant")
            # anything else: still 200 (RFC 7009 §2.2), and nothing happens
            for junk in ("nope", "cmdop_rt_unknown", "a.b.c", tok["access_token"][:-4] + "AAAA"):
                assert (await http.post("/oauth/revoke", {"token": junk}))[0] == 200
            assert len(env.store.denied_token_ids()) == 1
            assert hooks == [1, 1]
            status, body, _ = await http.post("/oauth/revoke", {"token_type_hint": "access_token"})
            assert (status, body["error"]) == (400, "invalid_request")

    run(scenario())


# -- request checks and limits -----------------------------------------------------------------

def test_malformed_requests(env: Env) -> None:
    async def scenario() -> None:
        async with serving(env) as (http, _):
            status, body, _ = await http.post("/oauth/device", json={"client_id": "cmdop-cli"})
            assert (status, body["error"]) == (400, "invalid_request")
            status, body, _ = await http.post("/oauth/device", "client_id=cmdop-cli&client_id=other",
                                              headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert (status, body["error"]) == (400, "invalid_request") and "more than once" in body["error_description"]
            status, body, _ = await http.post("/oauth/device", {"client_id": "cmdop-cli", "pad": "x" * 20000})
            assert (status, body["error"]) == (413, "invalid_request")
            status, body, _ = await http.post("/oauth/device", {"client_id": "evil"})
            assert (status, body["error"]) == (401, "invalid_client")
            status, body, _ = await http.post("/oauth/device", {})
            assert (status, body["error"]) == (400, "invalid_client")
            status, body, _ = await http.post("/oauth/device", {"client_id": "cmdop-cli", "scope": "admin"})
            assert (status, body["error"]) == (400, "invalid_scope")
            status, body, _ = await http.post("/oauth/device", {"client_id": "cmdop-cli", "workspace": "bad name!"})
            assert (status, body["error"]) == (400, "invalid_request")
            assert (await http.token())[1]["error"] == "invalid_request"
            assert (await http.token(grant_type="password", username="a"))[1]["error"] == "unsupported_grant_type"
            assert (await http.token(grant_type=DEVICE))[1]["error"] == "invalid_request"
            assert (await http.token(grant_type="refresh_token"))[1]["error"] == "invalid_request"
            assert (await http.token(grant_type=DEVICE, device_code="x", client_id="evil"))[1]["error"] == "invalid_client"
            async with http.session.get(http.base + "/oauth/token") as r:
                assert r.status == 405

    run(scenario())


def test_rate_limits(env: Env) -> None:
    limits = cab.Limits(requests=cab.RateLimiter(burst=1000, per_s=1.0),
                        device=cab.RateLimiter(burst=3, per_s=0.01),
                        failures=cab.AuthThrottle(slow_after=100, refuse_after=5, window_s=300.0))

    async def scenario() -> None:
        async with serving(env, limits) as (http, _):
            for _ in range(3):
                assert (await http.post("/oauth/device", {"client_id": "cmdop-cli"}))[0] == 200
            status, body, headers = await http.post("/oauth/device", {"client_id": "cmdop-cli"})
            assert status == 429 and int(headers["Retry-After"]) >= 1
            for _ in range(5):
                status, body = await http.token(grant_type="refresh_token", refresh_token="cmdop_rt_guess")
                assert (status, body["error"]) == (400, "invalid_grant")
            status, body = await http.token(grant_type="refresh_token", refresh_token="cmdop_rt_guess")
            assert status == 429 and body["error"] == "too_many_requests"
            # every endpoint is closed to that address until the window has passed
            assert (await http.get("/oauth/jwks"))[0] == 429
            env.clock.t += 301
            assert (await http.get("/oauth/jwks"))[0] == 200

    run(scenario())

    general = cab.Limits(requests=cab.RateLimiter(burst=5, per_s=0.001))

    async def flood() -> None:
        async with serving(env, general) as (http, _):
            codes = [(await http.get("/oauth/jwks"))[0] for _ in range(8)]
            assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}

    run(flood())


# -- a real `cmdop relay serve` ----------------------------------------------------------------

def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMDOP_", "XDG_"))}
    env.update(HOME=str(home), CMDOP_CONFIG_DIR=str(home / ".config" / "cmdop"),
               CMDOP_STATE_DIR=str(home / ".local" / "state" / "cmdop"), CMDOP_HOME=str(home / ".cmdop"),
               PYTHONPATH=str(REPO), GRPC_VERBOSITY="ERROR")
    return env


def _cmdop(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cmdop", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=str(REPO))


def test_relay_serve_device_flow(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = _env(home)
    data = str(tmp_path / "relaydata")
    assert _cmdop(env, "relay", "workspace", "create", "prod", "--data-dir", data).returncode == 0
    log = open(tmp_path / "relay.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "cmdop", "relay", "serve", "--listen", "127.0.0.1:0",
                             "--data-dir", data, "--json"], env=env, stdout=subprocess.PIPE, stderr=log,
                            text=True, cwd=str(REPO))
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        port, oauth_port = info["port"], info["oauth_port"]
        assert oauth_port and oauth_port != port and info["issuer"] == f"https://127.0.0.1:{oauth_port}"
        assert info["oauth_listen"] == f"127.0.0.1:{oauth_port}"
        ctx = ssl.create_default_context(cadata=Path(info["cert"]).read_text())
        base = info["issuer"]

        def call(path: str, form: dict[str, str] | None = None) -> tuple[int, Any]:
            data_ = urllib.parse.urlencode(form).encode() if form is not None else None
            try:
                with urllib.request.urlopen(base + path, data=data_, context=ctx, timeout=10) as resp:
                    body = resp.read()
                    return resp.status, json.loads(body) if body else None
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, doc = call("/.well-known/oauth-authorization-server")
        assert status == 200 and doc["cmdop_relay"] == f"127.0.0.1:{port}" and doc["issuer"] == base
        assert doc["cmdop_relay_fingerprint"] == info["fingerprint"]
        _, dev = call("/oauth/device", {"client_id": "cmdop-cli", "workspace": "prod"})
        poll = {"grant_type": DEVICE, "device_code": dev["device_code"], "client_id": "cmdop-cli"}
        assert call("/oauth/token", poll) == (400, {"error": "authorization_pending",
                                                    "error_description": "waiting for `cmdop relay approve`",
                                                    })
        status, body = call("/oauth/token", poll)               # right away again: too fast
        assert (status, body["error"], body["interval"]) == (400, "slow_down", 10)
        r = _cmdop(env, "relay", "approve", dev["user_code"], "--account", "alice@example.com",
                   "--data-dir", data, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["device"]["workspace"] == "prod"    # the device's hint
        deadline = time.monotonic() + 30
        while True:
            time.sleep(1)
            status, tok = call("/oauth/token", poll)
            if status == 200 or time.monotonic() > deadline:
                break
            assert tok["error"] in ("slow_down", "authorization_pending")
        assert status == 200 and tok["account"] == "alice@example.com"
        with RelayStore.open(data) as store:
            v = BearerVerifier(store, signing_key=load_or_create_signing_key(data), issuer=base,
                               audience=doc["cmdop_audience"])
            p = v.verify(tok["access_token"])
            assert p is not None and p.workspace == "prod" and p.credential == "oauth"
        status, tok2 = call("/oauth/token", {"grant_type": "refresh_token", "refresh_token": tok["refresh_token"],
                                             "client_id": "cmdop-cli"})
        assert status == 200
        r = _cmdop(env, "relay", "account", "disable", "alice@example.com", "--data-dir", data)
        assert r.returncode == 0
        status, body = call("/oauth/token", {"grant_type": "refresh_token", "refresh_token": tok2["refresh_token"]})
        assert (status, body["error"]) == (400, "invalid_grant")
        assert call("/oauth/revoke", {"token": tok2["access_token"]}) == (200, None)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            log.seek(0)
            text = log.read()
            log.close()
    assert "Traceback" not in text, text
    for secret in (dev["device_code"], tok["refresh_token"], tok["access_token"]):
        assert secret not in text


def test_relay_serve_oauth_listen_flags(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = _env(home)
    data = str(tmp_path / "relaydata")
    r = _cmdop(env, "relay", "serve", "--oauth-listen", "nowhere", "--data-dir", data)
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
    r = _cmdop(env, "relay", "serve", "--issuer-url", "http://relay.example", "--data-dir", data,
               "--listen", "127.0.0.1:0")
    assert r.returncode == 2 and "issuer URL" in r.stderr
    r = _cmdop(env, "relay", "serve", "--oidc-issuer", "https://idp.example", "--data-dir", data)
    assert r.returncode == 2 and "--oidc-audience" in r.stderr
    proc = subprocess.Popen([sys.executable, "-m", "cmdop", "relay", "serve", "--listen", "127.0.0.1:0",
                             "--oauth-listen", "off", "--data-dir", data, "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(REPO))
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["oauth_port"] is None and info["issuer"] is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        if proc.stdout is not None:
            proc.stdout.close()


# -- an external OIDC issuer -------------------------------------------------------------------

def test_oidc_against_a_local_jwks_server_with_rotation(env: Env) -> None:
    keys: dict[str, Any] = {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
    algs = {"k1": "RS256"}
    hits: list[str] = []

    def jwks() -> dict[str, Any]:
        out = []
        for kid, priv in keys.items():
            jwk = json.loads(jwt.get_algorithm_by_name(algs[kid]).to_jwk(priv.public_key()))
            jwk.update(kid=kid, use="sig", alg=algs[kid])
            out.append(jwk)
        return {"keys": out}

    def token(kid: str, **claims: Any) -> str:
        payload = {"iss": issuer, "aud": "relay-api", "sub": "u-42", "exp": int(env.clock.t) + 600,
                   "iat": int(env.clock.t), "cmdop_ws": "prod", **claims}
        return jwt.encode(payload, keys[kid], algorithm=algs[kid], headers={"kid": kid})

    async def discovery(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"issuer": issuer, "jwks_uri": issuer + "/keys"})

    async def keyset(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response(jwks())

    async def scenario() -> None:
        nonlocal issuer
        app = web.Application()
        app.router.add_get("/realm/.well-known/openid-configuration", discovery)
        app.router.add_get("/realm/keys", keyset)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = cab.bind("127.0.0.1", 0)
        issuer = f"http://127.0.0.1:{sock.getsockname()[1]}/realm"
        await web.SockSite(runner, sock).start()
        try:
            oidc = OidcVerifier(OidcConfig(issuer=issuer, audience="relay-api", workspace_claim="cmdop_ws"),
                                clock=env.clock, min_refetch_s=0.0)
            await oidc.start()
            assert hits == ["/realm/.well-known/openid-configuration", "/realm/keys"]
            v = BearerVerifier(env.store, oidc=oidc, clock=env.clock)
            p = v.verify(token("k1"))
            assert p is not None and (p.id, p.workspace, p.name, p.credential) == (
                f"oidc:{issuer}#u-42", "prod", "u-42", "oidc")
            assert p.expires_at == int(env.clock.t) + 600
            assert v.verify(token("k1", aud="other")) is None
            assert v.verify(token("k1", cmdop_ws="nope")) is None          # no such workspace here
            # the provider rotates: a new kid appears
            keys["k2"] = ec.generate_private_key(ec.SECP256R1())
            algs["k2"] = "ES256"
            new = token("k2")
            p2 = await v.averify(new)                                       # waits for the refetch
            assert p2 is not None and p2.workspace == "prod"
            assert hits[-1] == "/realm/keys" and hits.count("/realm/keys") == 2
            assert hits.count("/realm/.well-known/openid-configuration") == 1  # discovery once
            # the sync path: refuse now, refetch in the background, accept after
            keys["k3"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            algs["k3"] = "RS256"
            newer = token("k3")
            assert v.verify(newer) is None
            deadline = time.monotonic() + 10
            while v.verify(newer) is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            # a dropped key is refused after the next fetch
            del keys["k1"]
            assert await asyncio.to_thread(oidc.refresh)
            assert v.verify(token("k2")) is not None
        finally:
            await runner.cleanup()

    issuer = ""
    run(scenario())


def test_default_oauth_port_falls_back_when_taken_explicit_one_does_not() -> None:
    import socket

    from cmdop.relay.server import ServeOptions, _bind_oauth

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        busy = taken.getsockname()[1]
        got = _bind_oauth(ServeOptions(listen=f"127.0.0.1:{busy - 1}"), busy - 1)
        try:
            assert got.getsockname()[1] not in (busy, 0)
        finally:
            got.close()
        with pytest.raises(CmdopError, match="cannot listen") as err:
            _bind_oauth(ServeOptions(listen="127.0.0.1:7443", oauth_listen=f"127.0.0.1:{busy}"), 7443)
        assert "--oauth-listen" in (err.value.hint or "")
    finally:
        taken.close()
