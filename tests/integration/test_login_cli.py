"""`cmdop login` / `cmdop logout` / OAuth credentials in `cmdop auth status`, against real peers:

- oidc-provider (tests/integration/oauth_peers/server.js, a real OAuth/OIDC server, HTTPS with a
  throw-away certificate), started once for the module: approve, deny, expiry, refresh with
  rotation, revocation;
- a scripted stdlib HTTPS server (oauth_peers/scripted.py) for what a real server will not do on
  demand: slow_down, malformed and oversized replies, dropped connections, TLS mismatches.

The CLI runs in-process with its clock and sleep replaced (login_cmd.CLOCK / SLEEP): no test
waits for a polling interval, and none asserts on timing.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from cmdop.adapters import oauth_client, token_file
from cmdop.cli import login_cmd
from cmdop.core.errors import AuthError, ConfigError, UnreachableError
from cmdop.core.settings import Settings
from tests.conftest import CmdopEnv
from tests.integration.inprocess_cli import Cli, cli  # noqa: F401  (the fixture)
from tests.integration.oauth_peers.oidc_provider import OidcPeer, missing_reason
from tests.integration.oauth_peers.scripted import Reply, ScriptedServer
from tests.integration.test_daemon_helpers import peer_missing

pytestmark = pytest.mark.network

TOKENS = {"access_token": "ACCESS-SECRET-0001", "token_type": "Bearer", "expires_in": 3600,
          "refresh_token": "REFRESH-SECRET-0001", "scope": "cmdop", "workspace": "acme", "account": "alice"}
PENDING = Reply(400, {"error": "authorization_pending"})


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from cmdop.relay.tls import ensure_certificate

    base = tmp_path_factory.mktemp("certs")
    good = ensure_certificate(str(base / "good"), [])
    other = ensure_certificate(str(base / "other"), [])
    return {"cert": good.cert_path, "key": str(base / "good" / "relay.key"), "fingerprint": good.fingerprint,
            "other_cert": other.cert_path, "other_fingerprint": other.fingerprint}


@pytest.fixture
def server(certs: dict[str, Any]) -> Iterator[ScriptedServer]:
    srv = ScriptedServer(certs["cert"], certs["key"], metadata={"cmdop_relay": "relay.example:7443"})
    yield srv
    srv.close()


class FakeTime:
    """The login's clock and sleep: sleeping advances the clock; hooks run on the next sleep."""

    def __init__(self) -> None:
        self.now = time.time()
        self.sleeps: list[float] = []
        self.hooks: list[Callable[[], None]] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        while self.hooks:
            self.hooks.pop(0)()


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    ft = FakeTime()
    monkeypatch.setattr(login_cmd, "CLOCK", ft.clock)
    monkeypatch.setattr(login_cmd, "SLEEP", ft.sleep)
    return ft


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcPeer]:
    reason = missing_reason()
    if reason:
        peer_missing(reason)
    p = OidcPeer.start(tmp_path_factory.mktemp("oidc"), relay="relay.example:7443")
    yield p
    p.stop()


def token_json(cli: Cli) -> Path:
    return cli.home / ".cmdop" / "token.json"


def settings_of(cli: Cli) -> Settings:
    return Settings.from_env(os.environ, str(cli.home))


def login(cli: Cli, server_url: str, *extra: str) -> Any:
    return cli("login", "--issuer", server_url, "--no-browser", *extra)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert "SECRET" not in text and "dev-code" not in text


# -- the scripted server -------------------------------------------------------------------

def test_login_polls_honours_slow_down_and_stores_the_token(cli: Cli, server: ScriptedServer, certs: Any,
                                                          fake_time: FakeTime) -> None:
    server.device_ok(interval=5)
    server.script("/token", [PENDING, Reply(400, {"error": "slow_down"}), PENDING, Reply(200, TOKENS)])
    r = login(cli, server.url, "--ca-file", certs["cert"], "--json")
    assert r.code == 0, r.err
    assert_no_secret(r.out, r.err)
    out = r.json()
    assert out["status"] == "logged_in" and out["account"] == "alice" and out["workspace"] == "acme"
    assert out["relay"] == "relay.example:7443" and out["refreshable"] is True and out["expires_at"]
    # the user was told where to go and what to type, with the complete URI too
    assert "enter the code: WDJB-MJHT" in r.err and "activate?user_code=WDJB-MJHT" in r.err
    assert "poll more slowly" in r.err and "waiting for approval… the code expires in 9:5" in r.err
    # polls 5 s apart, then 10 s after slow_down (RFC 8628 §3.5): 5 + 5 + 10 + 10
    assert sum(fake_time.sleeps) == pytest.approx(30)
    polls = server.form_requests("/token")
    assert len(polls) == 4 and all(p == {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                                         "device_code": "dev-code-secret-0123456789",
                                         "client_id": "cmdop-cli"} for p in polls)
    assert server.form_requests("/device") == [{"client_id": "cmdop-cli"}]   # no scope offered: none asked
    path = token_json(cli)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    doc = json.loads(path.read_text())
    assert doc["access_token"] == "ACCESS-SECRET-0001" and doc["refresh_token"] == "REFRESH-SECRET-0001"
    assert doc["issuer"] == server.url and doc["token_endpoint"] == server.url + "/token"
    assert doc["revocation_endpoint"] == server.url + "/revoke" and doc["client_id"] == "cmdop-cli"
    assert doc["expires_at"] == pytest.approx(fake_time.now + 3600, abs=2)
    assert (doc["scope"], doc["workspace"], doc["account"], doc["relay"]) == ("cmdop", "acme", "alice",
                                                                           "relay.example:7443")
    assert doc["ca_file"] == certs["cert"] and doc["relay_ca"] == certs["cert"]
    # the resolver uses it (OAuth last), with the relay the issuer advertised and its trust
    r = cli("auth", "status", "--json")
    assert r.code == 0, r.err
    st = r.json()
    assert (st["source"], st["workspace"], st["relay"], st["account"]) == ("oauth", "acme", "relay.example:7443",
                                                                        "alice")
    assert st["key"] == "ACCESS-S…" and st["relay_ca"] == certs["cert"] and st["expires_at"]
    assert_no_secret(r.out, r.err)


def test_login_human_output_and_workspace_flag(cli: Cli, server: ScriptedServer, certs: Any,
                                               fake_time: FakeTime) -> None:
    server.device_ok()
    tokens = {k: v for k, v in TOKENS.items() if k not in ("workspace", "account")}
    server.script("/token", [Reply(200, tokens)])
    r = login(cli, server.url, "--ca-file", certs["cert"], "--workspace", "Ops", "--relay", "r.example:1")
    assert r.code == 0, r.err
    assert "logged in (account not named by the server)" in r.out and "workspace: ops" in r.out
    assert "relay: r.example:1" in r.out and "refreshed automatically" in r.out
    doc = json.loads(token_json(cli).read_text())
    assert (doc["workspace"], doc["account"], doc["relay"]) == ("ops", "", "r.example:1")
    assert "relay_ca" not in doc          # a relay given by hand gets no trust from the issuer


def test_an_api_key_still_wins_and_login_says_so(cli: Cli, server: ScriptedServer, certs: Any,
                                                 fake_time: FakeTime) -> None:
    server.device_ok()
    server.script("/token", [Reply(200, TOKENS)])
    cli("connect", "key", "set", "--workspace", "prod", "--relay", "a:1",
        stdin="cmdop_0123456789ab_" + "A" * 43)
    r = login(cli, server.url, "--ca-file", certs["cert"])
    assert r.code == 0 and "the stored key of workspace prod wins" in r.err
    assert cli("auth", "status", "--json").json()["source"] == "active"


@pytest.mark.parametrize("reply,code,needle,hint", [
    (Reply(400, {"error": "access_denied"}), 4, "login denied", "approve"),
    (Reply(400, {"error": "expired_token"}), 4, "login timed out", "before it expires"),
    (Reply(400, {"error": "invalid_client", "error_description": "no such client"}), 4, "no such client",
     "device flow"),
    (Reply(200, b"{not json"), 1, "not JSON", "--issuer"),
    (Reply(200, {"token_type": "Bearer"}), 1, "no access_token", "--issuer"),
    (Reply(200, b"x" * (2 << 20)), 1, "larger than 1 MiB", "--issuer"),
    (Reply(200, b"[" * (2 << 20), content_length=False), 1, "larger than 1 MiB", "--issuer"),
])
def test_login_failures(cli: Cli, server: ScriptedServer, certs: Any, fake_time: FakeTime, reply: Reply,
                        code: int, needle: str, hint: str) -> None:
    server.device_ok()
    server.script("/token", [PENDING, reply])
    r = login(cli, server.url, "--ca-file", certs["cert"])
    assert r.code == code, r.err
    error, hint_line = [line for line in r.err.splitlines() if line.startswith(("cmdop: error:", "hint:"))]
    assert needle in error and hint in hint_line
    assert "Traceback" not in r.err
    assert_no_secret(r.out, r.err)
    assert not token_json(cli).exists()


def test_network_errors_are_retried(cli: Cli, server: ScriptedServer, certs: Any, fake_time: FakeTime) -> None:
    server.device_ok(interval=5)
    server.script("/token", [Reply(drop=True), Reply(503, b"busy"), Reply(200, TOKENS)])
    r = login(cli, server.url, "--ca-file", certs["cert"])
    assert r.code == 0, r.err
    assert r.err.count("retrying in") == 2 and "HTTP 503" in r.err
    assert sum(fake_time.sleeps) == pytest.approx(5 + 10 + 20)    # the interval doubles (RFC 8628 §3.5)


def test_a_dead_token_endpoint_ends_the_login(cli: Cli, server: ScriptedServer, certs: Any,
                                              fake_time: FakeTime) -> None:
    server.device_ok(interval=1)
    server.script("/token", [Reply(drop=True)])
    r = login(cli, server.url, "--ca-file", certs["cert"])
    assert r.code == 5 and "failed 5 times in a row" in r.err and "cmdop login" in r.err


def test_an_unreachable_issuer_is_retried_then_exit_5(cli: Cli, server: ScriptedServer, certs: Any,
                                                      fake_time: FakeTime) -> None:
    url = server.url
    server.close()
    r = login(cli, url, "--ca-file", certs["cert"])
    assert r.code == 5, r.err
    assert "cannot reach 127.0.0.1:" in r.err and r.err.count("retrying in") == 2
    assert fake_time.sleeps == [1.0, 2.0]


def test_the_device_request_is_retried(cli: Cli, server: ScriptedServer, certs: Any, fake_time: FakeTime) -> None:
    ok = server.device_ok()
    server.script("/device", [Reply(502, b"bad gateway"), ok])
    server.script("/token", [Reply(200, TOKENS)])
    r = login(cli, server.url, "--ca-file", certs["cert"])
    assert r.code == 0, r.err
    assert "HTTP 502; retrying in 1 s" in r.err


@pytest.mark.parametrize("flags,code,needle,hint", [
    ((), 5, "is not trusted", "--ca-file"),                             # system CAs only
    (("--ca-file", "OTHER"), 5, "is not trusted", "--issuer-fingerprint"),
    (("--issuer-fingerprint", "OTHER_FP"), 4, "not the pinned", "--issuer-fingerprint"),
    (("--ca-file", "/nonexistent/ca.pem"), 2, "does not exist", "CMDOP_CA_FILE"),
    (("--issuer-fingerprint", "abc"), 2, "fingerprint", "relay serve"),
])
def test_tls_is_always_verified(cli: Cli, server: ScriptedServer, certs: Any, fake_time: FakeTime,
                                flags: tuple[str, ...], code: int, needle: str, hint: str) -> None:
    server.device_ok()
    server.script("/token", [Reply(200, TOKENS)])
    flags = tuple(certs["other_cert"] if f == "OTHER" else certs["other_fingerprint"] if f == "OTHER_FP" else f
                  for f in flags)
    r = login(cli, server.url, *flags)
    assert r.code == code, r.err
    error, hint_line = r.err.strip().splitlines()[-2:]
    assert needle in error and hint in hint_line
    assert not server.form_requests("/device")            # nothing was sent to an untrusted server


def test_a_pinned_certificate_is_the_only_trust(cli: Cli, server: ScriptedServer, certs: Any,
                                                           fake_time: FakeTime) -> None:
    server.device_ok()
    server.script("/token", [Reply(200, TOKENS)])
    fp = certs["fingerprint"]
    spelled = "SHA256:" + ":".join(fp[i:i + 2].upper() for i in range(0, 64, 2))
    r = login(cli, server.url, "--issuer-fingerprint", spelled, "--json")
    assert r.code == 0, r.err
    doc = json.loads(token_json(cli).read_text())
    assert doc["issuer_fingerprint"] == fp and doc["relay_fingerprint"] == fp and "ca_file" not in doc
    st = cli("auth", "status", "--json").json()
    assert st["relay_fingerprint"] == fp and st["relay"] == "relay.example:7443"
    # the same relay through CMDOP_RELAY keeps the pin; another relay does not get it
    cli.setenv("CMDOP_RELAY", "elsewhere:1")
    st = cli("auth", "status", "--json").json()
    assert (st["source"], st["relay"], st["relay_fingerprint"]) == ("oauth", "elsewhere:1", "")


def test_the_fingerprint_matches_the_relays_own_computation(certs: Any) -> None:
    import ssl

    from cmdop.relay.tls import fingerprint_of_pem

    pem = Path(certs["cert"]).read_text()
    assert oauth_client.fingerprint_of_der(ssl.PEM_cert_to_DER_cert(pem)) == fingerprint_of_pem(pem.encode())


@pytest.mark.parametrize("issuer,code,needle", [
    ("http://127.0.0.1:1", 2, "plain http"),
    ("ftp://example.com", 2, "not an https:// URL"),
    ("https://user:pw@example.com", 2, "user name or password"),
    ("https://example.com/?x=1", 2, "query"),
])
def test_bad_issuers(cli: Cli, issuer: str, code: int, needle: str) -> None:
    r = cli("login", "--issuer", issuer)
    assert r.code == code and needle in r.err
    assert "pw" not in r.err


def test_login_without_an_issuer_says_which_flag(cli: Cli) -> None:
    r = cli("login")
    assert r.code == 2 and "--issuer" in r.err


@pytest.mark.parametrize("metadata,needle", [
    ({"issuer": "https://evil.example"}, "names another issuer"),
    ({"device_authorization_endpoint": None}, "does not offer the device flow"),
    ({"token_endpoint": "http://127.0.0.1/token"}, "plain http"),
])
def test_bad_metadata(cli: Cli, certs: Any, fake_time: FakeTime, metadata: dict[str, Any], needle: str) -> None:
    srv = ScriptedServer(certs["cert"], certs["key"], metadata=metadata)
    try:
        r = login(cli, srv.url, "--ca-file", certs["cert"])
    finally:
        srv.close()
    assert r.code == 1 and needle in r.err


def test_openid_discovery_and_a_path_issuer(cli: Cli, certs: Any, fake_time: FakeTime) -> None:
    """RFC 8414 first (/.well-known/oauth-authorization-server/PATH), then OpenID Connect's
    PATH/.well-known/openid-configuration; scopes the server lists are asked for."""
    srv = ScriptedServer(certs["cert"], certs["key"], issuer_path="/realms/dev", discovery="oidc",
                         metadata={"scopes_supported": ["openid", "offline_access", "email"]})
    try:
        srv.device_ok()
        srv.script("/token", [Reply(200, TOKENS)])
        r = login(cli, srv.url + "/", "--ca-file", certs["cert"])
        assert r.code == 0, r.err
        paths = [req.path for req in srv.requests]
        assert paths[:2] == ["/.well-known/oauth-authorization-server/realms/dev",
                             "/realms/dev/.well-known/openid-configuration"]
        assert srv.form_requests("/device") == [{"client_id": "cmdop-cli", "scope": "openid offline_access"}]
        assert json.loads(token_json(cli).read_text())["issuer"] == srv.url
    finally:
        srv.close()


# -- refresh, expiry, the token file -------------------------------------------------------

def logged_in(cli: Cli, server: ScriptedServer, certs: Any, **changes: Any) -> dict[str, Any]:
    server.device_ok()
    server.script("/token", [Reply(200, TOKENS)])
    r = login(cli, server.url, "--ca-file", certs["cert"])
    assert r.code == 0, r.err
    path = token_json(cli)
    doc = json.loads(path.read_text())
    doc.update(changes)
    doc = {k: v for k, v in doc.items() if v is not None or k == "expires_at"}
    token_file.save(str(path), token_file.parse(json.dumps(doc)))
    return doc


def test_auth_status_refreshes_a_token_about_to_expire(cli: Cli, server: ScriptedServer, certs: Any,
                                                       fake_time: FakeTime) -> None:
    logged_in(cli, server, certs, expires_at=time.time() + 120)
    server.script("/token", [Reply(200, dict(TOKENS, access_token="ACCESS-SECRET-0002",
                                             refresh_token="REFRESH-SECRET-0002", expires_in=7200))])
    r = cli("auth", "status", "--json")
    assert r.code == 0, r.err
    assert r.json()["key"] == "ACCESS-S…"
    assert server.form_requests("/token")[-1] == {"grant_type": "refresh_token",
                                                  "refresh_token": "REFRESH-SECRET-0001",
                                                  "client_id": "cmdop-cli"}
    doc = json.loads(token_json(cli).read_text())
    assert doc["access_token"] == "ACCESS-SECRET-0002" and doc["refresh_token"] == "REFRESH-SECRET-0002"
    assert doc["expires_at"] > time.time() + 7000
    assert stat.S_IMODE(token_json(cli).stat().st_mode) == 0o600
    # fresh now: no second refresh
    before = len(server.form_requests("/token"))
    assert cli("auth", "status").code == 0
    assert len(server.form_requests("/token")) == before


def test_a_refresh_without_rotation_keeps_the_refresh_token(cli: Cli, server: ScriptedServer, certs: Any,
                                                            fake_time: FakeTime) -> None:
    logged_in(cli, server, certs, expires_at=time.time() - 10)
    server.script("/token", [Reply(200, {"access_token": "ACCESS-SECRET-0003", "expires_in": 60})])
    assert cli("auth", "status").code == 0
    doc = json.loads(token_json(cli).read_text())
    assert doc["access_token"] == "ACCESS-SECRET-0003" and doc["refresh_token"] == "REFRESH-SECRET-0001"
    assert doc["workspace"] == "acme" and doc["account"] == "alice" and doc["scope"] == "cmdop"


def test_a_short_lived_token_is_refreshed_once_with_a_third_of_its_life_left(
        cli: Cli, server: ScriptedServer, certs: Any, fake_time: FakeTime) -> None:
    """An issuer granting 2-minute tokens (Keycloak's default is 5): with the fixed 5-minute
    margin every command — every call inside one — refreshed again; the lifetime recorded in
    token.json sets the margin to a third of it."""
    server.device_ok()
    server.script("/token", [Reply(200, dict(TOKENS, expires_in=120))])
    assert login(cli, server.url, "--ca-file", certs["cert"]).code == 0
    doc = json.loads(token_json(cli).read_text())
    assert doc["lifetime_s"] == 120
    granted = len(server.form_requests("/token"))
    for _ in range(3):                                   # fresh: no command refreshes it
        assert cli("auth", "status").code == 0
    assert len(server.form_requests("/token")) == granted
    # with less than a third of its life left, one command refreshes it once
    token_file.save(str(token_json(cli)), token_file.parse(json.dumps(dict(doc, expires_at=int(time.time()) + 30))))
    server.script("/token", [Reply(200, dict(TOKENS, access_token="ACCESS-SECRET-0002", expires_in=120))])
    for _ in range(3):
        assert cli("auth", "status").code == 0
    assert len(server.form_requests("/token")) == granted + 1
    assert json.loads(token_json(cli).read_text())["access_token"] == "ACCESS-SECRET-0002"


@pytest.mark.parametrize("lifetime", [0.4, 12.0, 3600.0])
def test_the_lifetime_round_trips_through_the_file(lifetime: float) -> None:
    """What an issuer granted is kept in whole seconds; less than one is left out (no margin
    rule then), never written as an invalid 0."""
    token = token_file.StoredToken(issuer="https://i", token_endpoint="https://i/t", access_token="A",
                                   expires_at=time.time() + lifetime, lifetime_s=lifetime)
    again = token_file.parse(token_file.dump(token))
    assert again.lifetime_s == (int(lifetime) if lifetime >= 1 else None)


@pytest.mark.parametrize("lifetime", ["12", True, 0, -5, "NaN", "Infinity"])
def test_a_bad_lifetime_in_the_token_file_is_named(lifetime: Any) -> None:
    doc = {"issuer": "https://i", "token_endpoint": "https://i/t", "access_token": "A", "lifetime_s": lifetime}
    text = json.dumps(doc)
    if lifetime in ("NaN", "Infinity"):               # what json.loads takes from a hand-edited file
        text = text.replace(f'"{lifetime}"', lifetime)
    with pytest.raises(ConfigError, match="lifetime_s"):
        token_file.parse(text)


def test_a_revoked_login_exits_4_with_the_login_hint(cli: Cli, server: ScriptedServer, certs: Any,
                                                     fake_time: FakeTime) -> None:
    logged_in(cli, server, certs, expires_at=time.time() + 60)
    server.script("/token", [Reply(400, {"error": "invalid_grant", "error_description": "grant revoked"})])
    r = cli("auth", "status")
    assert r.code == 4
    assert "expired or was revoked" in r.err and "grant revoked" in r.err and "hint: run `cmdop login`" in r.err
    assert_no_secret(r.out, r.err)


def test_an_unreachable_issuer_during_refresh(cli: Cli, server: ScriptedServer, certs: Any,
                                              fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oauth_client, "RETRY_DELAYS_S", (0.0, 0.0))   # auth status retries on the real clock
    logged_in(cli, server, certs, expires_at=time.time() + 100)
    server.script("/token", [Reply(503, b"down")])
    r = cli("auth", "status", "--json")          # still valid for 100 s: used as it is
    assert r.code == 0 and r.json()["source"] == "oauth"
    logged_in(cli, server, certs, expires_at=time.time() - 100)
    server.script("/token", [Reply(drop=True)])
    r = cli("auth", "status")                    # expired and cannot be refreshed: exit 5
    assert r.code == 5 and "cannot reach" in r.err


def test_an_expired_token_without_refresh_token_exits_4(cli: Cli, server: ScriptedServer, certs: Any,
                                                        fake_time: FakeTime) -> None:
    logged_in(cli, server, certs, expires_at=time.time() - 10, refresh_token="")
    r = cli("auth", "status")
    assert r.code == 4 and "expired at" in r.err and "hint: run `cmdop login`" in r.err


def test_an_insecure_token_file_is_refused(cli: Cli, server: ScriptedServer, certs: Any,
                                           fake_time: FakeTime) -> None:
    logged_in(cli, server, certs)
    os.chmod(token_json(cli), 0o644)
    r = cli("auth", "status")
    assert r.code == 1 and "chmod 600" in r.err
    r = cli("auth", "status", "--api-key", "cmdop_0123456789ab_" + "A" * 43)   # not read when a key wins
    assert r.code == 0


def test_a_corrupt_token_file_names_the_fix(cli: Cli) -> None:
    path = token_json(cli)
    path.parent.mkdir(mode=0o700)
    path.write_text('{"issuer": 5}')
    path.chmod(0o600)
    r = cli("auth", "status")
    assert r.code == 1 and "not a valid token file" in r.err and "cmdop login" in r.err


def test_two_clis_never_refresh_at_once(cli: Cli, server: ScriptedServer, certs: Any,
                                        fake_time: FakeTime) -> None:
    logged_in(cli, server, certs, expires_at=time.time() + 60)
    settings = settings_of(cli)
    entered = threading.Event()
    calls: list[str] = []

    def slow_refresher(tok: token_file.StoredToken) -> token_file.StoredToken:
        calls.append(tok.refresh_token)
        entered.set()
        time.sleep(0.3)
        import dataclasses
        return dataclasses.replace(tok, access_token="ACCESS-SECRET-NEW", expires_at=time.time() + 3600)

    results: list[Any] = []

    def run() -> None:
        results.append(token_file.ensure_fresh(settings, refresher=slow_refresher))

    first = threading.Thread(target=run)
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=run)          # arrives while the first holds the lock
    second.start()
    first.join(10)
    second.join(10)
    assert calls == ["REFRESH-SECRET-0001"]
    assert [r.access_token for r in results] == ["ACCESS-SECRET-NEW"] * 2


# -- logout --------------------------------------------------------------------------------

def test_logout_revokes_then_deletes(cli: Cli, server: ScriptedServer, certs: Any, fake_time: FakeTime) -> None:
    logged_in(cli, server, certs)
    r = cli("logout", "--json")
    assert r.code == 0, r.err
    assert r.json() == {"status": "logged_out", "revoked": True, "removed": True, "issuer": server.url}
    assert server.form_requests("/revoke") == [
        {"token": "REFRESH-SECRET-0001", "token_type_hint": "refresh_token", "client_id": "cmdop-cli"},
        {"token": "ACCESS-SECRET-0001", "token_type_hint": "access_token", "client_id": "cmdop-cli"}]
    assert not token_json(cli).exists()
    r = cli("logout")
    assert r.code == 0 and "not logged in" in r.out
    assert cli("auth", "status").code == 4


def test_logout_deletes_even_when_revocation_fails(cli: Cli, server: ScriptedServer, certs: Any,
                                                   fake_time: FakeTime) -> None:
    logged_in(cli, server, certs)
    server.script("/revoke", [Reply(503, b"")])
    r = cli("logout")
    assert r.code == 0 and not token_json(cli).exists()
    assert "could not revoke" in r.err and "stay valid until they expire" in r.err
    assert_no_secret(r.out, r.err)


def test_logout_without_revocation_endpoint(cli: Cli, server: ScriptedServer, certs: Any,
                                            fake_time: FakeTime) -> None:
    logged_in(cli, server, certs, revocation_endpoint="")
    r = cli("logout")
    assert r.code == 0 and "offers no revocation" in r.err and not token_json(cli).exists()
    assert not server.form_requests("/revoke")


# -- progress ------------------------------------------------------------------------------

class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_countdown_is_rewritten_in_place_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from cmdop.core.device_flow import Wait

    ft = FakeTime()
    monkeypatch.setattr(login_cmd, "CLOCK", ft.clock)
    monkeypatch.setattr(login_cmd, "SLEEP", ft.sleep)
    tty = _Tty()
    progress = login_cmd._Progress(tty)
    login_cmd._waiter(progress)(Wait(3, ft.now + 125, "interval"))
    assert tty.getvalue() == "".join(f"\r\033[Kwaiting for approval… the code expires in 2:0{s}" for s in (5, 4, 3))
    progress.clear()
    assert tty.getvalue().endswith("\r\033[K") and ft.sleeps == [1, 1, 1]

    pipe = io.StringIO()
    login_cmd._waiter(login_cmd._Progress(pipe))(Wait(25, ft.now + 600, "interval"))
    assert pipe.getvalue().count("\n") == 3          # at 0, 10 and 20 s: a line every ~10 s


# -- oidc-provider -------------------------------------------------------------------------

def approve_on_first_sleep(ft: FakeTime, peer: OidcPeer, account: str = "alice") -> None:
    ft.hooks.append(lambda: peer.approve(peer.last_user_code(), account))


def test_oidc_login_approved(cli: Cli, peer: OidcPeer, fake_time: FakeTime) -> None:
    approve_on_first_sleep(fake_time, peer, "alice@example.com")
    r = cli("login", "--issuer", peer.issuer, "--issuer-fingerprint", peer.fingerprint, "--workspace", "acme",
            "--json")
    assert r.code == 0, r.err + peer.log.read_text()[-2000:]
    out = r.json()
    assert out["account"] == "alice@example.com" and out["workspace"] == "acme"
    assert out["relay"] == "relay.example:7443" and out["scope"] == "openid offline_access"
    path = token_json(cli)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["expires_at"] == pytest.approx(fake_time.now + 3600, abs=5)
    assert doc["refresh_token"] and doc["access_token"] and doc["access_token"] not in r.out + r.err
    assert doc["issuer_fingerprint"] == peer.fingerprint == doc["relay_fingerprint"]
    assert doc["revocation_endpoint"] == peer.issuer + "/token/revocation"


def test_oidc_refresh_rotates_and_logout_revokes(cli: Cli, peer: OidcPeer, fake_time: FakeTime) -> None:
    approve_on_first_sleep(fake_time, peer)
    assert cli("login", "--issuer", peer.issuer, "--ca-file", peer.ca_file).code == 0
    path = token_json(cli)
    first = json.loads(path.read_text())
    first["expires_at"] = int(time.time()) + 60                    # within the 5 minute margin
    token_file.save(str(path), token_file.parse(json.dumps(first)))

    r = cli("auth", "status", "--json")
    assert r.code == 0, r.err
    second = json.loads(path.read_text())
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] and second["refresh_token"] != first["refresh_token"]   # rotated
    assert second["expires_at"] > time.time() + 3000
    assert r.json()["account"] == "alice"

    r = cli("logout", "--json")
    assert r.code == 0 and r.json()["revoked"] is True and not path.exists()
    transport = oauth_client.Transport(oauth_client.TlsOptions(ca_file=peer.ca_file))
    with pytest.raises(AuthError) as info:
        oauth_client.refresh(transport, second["token_endpoint"], refresh_token=second["refresh_token"],
                             sleep=lambda s: None)
    assert "invalid_grant" in info.value.message and second["refresh_token"] not in info.value.message


def test_oidc_login_denied(cli: Cli, peer: OidcPeer, fake_time: FakeTime) -> None:
    fake_time.hooks.append(lambda: peer.deny(peer.last_user_code()))
    r = cli("login", "--issuer", peer.issuer, "--ca-file", peer.ca_file)
    assert r.code == 4 and "login denied" in r.err and "approve" in r.err
    assert not token_json(cli).exists()


def test_oidc_code_expires(cli: Cli, peer: OidcPeer, fake_time: FakeTime) -> None:
    """The server's own expired_token: the code lives 2 s on the server; the caller's clock
    (fake) has not reached the code's expiry yet when it polls."""
    peer.set_device_ttl(2)
    try:
        fake_time.hooks.append(lambda: time.sleep(2.5))
        r = cli("login", "--issuer", peer.issuer, "--ca-file", peer.ca_file)
    finally:
        peer.set_device_ttl(600)
    assert r.code == 4 and "login timed out" in r.err and "before it expires" in r.err


def test_oidc_wrong_ca(cli: Cli, peer: OidcPeer, certs: Any, fake_time: FakeTime) -> None:
    r = cli("login", "--issuer", peer.issuer, "--ca-file", certs["cert"])
    assert r.code == 5 and "not trusted" in r.err


def test_oidc_login_as_a_process(cmdop_env: CmdopEnv, peer: OidcPeer) -> None:
    """The real command, real clock: the code read from its stderr, approved like a browser."""
    env = dict(cmdop_env.env, CMDOP_CA_FILE=peer.ca_file)
    proc = subprocess.Popen([sys.executable, "-m", "cmdop", "login", "--issuer", peer.issuer, "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cmdop_env.home)
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "enter the code:" in line:
                peer.approve(line.split()[-1], "bob")
                break
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, "".join(seen) + err
    assert json.loads(out)["account"] == "bob"
    doc = json.loads((cmdop_env.cmdop_home / "token.json").read_text())
    assert doc["ca_file"] == peer.ca_file and doc["access_token"] not in out + err + "".join(seen)
    r = cmdop_env.run("auth", "status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["source"] == "oauth"


def test_refresh_error_types(certs: Any) -> None:
    """What refresh_failure reports for each kind of refusal (exit 4 vs 5 vs 1)."""
    from cmdop.core.device_flow import TokenError

    assert isinstance(oauth_client.refresh_failure(TokenError("server", "x", 503, True), "https://h/t"),
                      UnreachableError)
    assert isinstance(oauth_client.refresh_failure(TokenError("invalid_grant"), "https://h/t"), AuthError)
    assert isinstance(oauth_client.refresh_failure(TokenError("protocol", "bad"), "https://h/t"),
                      oauth_client.OAuthProtocolError)


# -- token.json's format -------------------------------------------------------------------

def test_token_file_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    doc = {"issuer": "https://i", "token_endpoint": "https://i/t", "revocation_endpoint": "",
           "client_id": "cmdop-cli", "access_token": "A", "refresh_token": "R", "expires_at": None,
           "scope": "", "workspace": "w", "account": "a", "future_field": {"x": 1}}
    tok = token_file.parse(json.dumps(doc))
    assert tok.expires_at is None and tok.extra == {"future_field": {"x": 1}}
    assert "'A'" not in repr(tok) and "'R'" not in repr(tok)      # secrets stay out of repr
    path = tmp_path / "d" / "token.json"
    token_file.save(str(path), tok)
    assert json.loads(path.read_text()) == doc
    assert token_file.load(str(path)) == tok
    assert token_file.remove(str(path)) and not token_file.remove(str(path))
    assert token_file.load(str(path)) is None


@pytest.mark.parametrize("text,needle", [
    ("", "line 1"),
    ("[]", "top level"),
    ('{"issuer": "https://i", "token_endpoint": "https://i/t"}', "access_token` is missing"),
    ('{"issuer": "https://i", "token_endpoint": "https://i/t", "access_token": "A", "expires_at": true}',
     "epoch seconds"),
    ('{"issuer": "https://i", "token_endpoint": "https://i/t", "access_token": ["A"]}', "must be a string"),
])
def test_token_file_errors(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        token_file.parse(text, "/x/token.json")
    assert needle in str(info.value) and "/x/token.json" in str(info.value)
    assert "rm /x/token.json" in (getattr(info.value, "hint", "") or "")


# -- cmdop's own relay ---------------------------------------------------------------------

def test_login_at_a_real_cmdop_relay(tmp_path: Path, cmdop_env: CmdopEnv) -> None:
    """`cmdop relay serve`'s OAuth server end to end: login pinned by the fingerprint the relay
    prints, approval with `cmdop relay approve`, the token accepted by the relay's gRPC side
    (`cmdop hosts`), logout revoking it. Real clock: one polling interval (5 s)."""
    env = dict(cmdop_env.env, GRPC_VERBOSITY="ERROR")
    data = str(tmp_path / "relaydata")
    assert cmdop_env.run("relay", "workspace", "create", "prod", "--data-dir", data).returncode == 0
    with open(tmp_path / "relay.log", "w") as log:
        relay = subprocess.Popen([sys.executable, "-m", "cmdop", "relay", "serve", "--listen", "127.0.0.1:0",
                                  "--data-dir", data, "--json"], env=env, stdout=subprocess.PIPE, stderr=log,
                                 text=True, cwd=cmdop_env.home)
    login_proc: subprocess.Popen[str] | None = None
    try:
        assert relay.stdout is not None
        info = json.loads(relay.stdout.readline())
        login_proc = subprocess.Popen(
            [sys.executable, "-m", "cmdop", "login", "--issuer", info["issuer"], "--issuer-fingerprint",
             info["fingerprint"], "--workspace", "prod", "--json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cmdop_env.home)
        assert login_proc.stderr is not None
        seen = []
        for line in login_proc.stderr:
            seen.append(line)
            if "enter the code:" in line:
                r = cmdop_env.run("relay", "approve", line.split()[-1], "--account", "alice@example.com",
                                  "--workspace", "prod", "--data-dir", data)
                assert r.returncode == 0, r.stderr
                break
        out, err = login_proc.communicate(timeout=60)
        assert login_proc.returncode == 0, "".join(seen) + err
        status = json.loads(out)
        assert (status["account"], status["workspace"], status["relay"]) == ("alice@example.com", "prod",
                                                                          f"127.0.0.1:{info['port']}")
        doc = json.loads((cmdop_env.cmdop_home / "token.json").read_text())
        assert doc["relay_fingerprint"] == info["fingerprint"] == doc["issuer_fingerprint"]

        r = cmdop_env.run("hosts", "--json", GRPC_VERBOSITY="ERROR")      # the relay takes the token
        assert r.returncode == 0, r.stderr
        r = cmdop_env.run("logout", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["revoked"] is True, r.stderr
        r = cmdop_env.run("hosts", GRPC_VERBOSITY="ERROR")
        assert r.returncode == 4
    finally:
        for proc in (login_proc, relay):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc is not None:
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
