"""The cabinet's state in the relay store (accounts, device codes, refresh tokens, deny list),
`BearerVerifier` over every credential kind, the external-issuer verifier with an in-memory
JWKS, and the cabinet's rate limiter."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmdop.core.errors import CmdopError, NotFoundError, UsageError
from cmdop.relay.auth import BearerVerifier, Principal
from cmdop.relay.cabinet import RateLimiter
from cmdop.relay.oidc import OidcConfig, OidcVerifier
from cmdop.relay.store import (REFRESH_TOKEN_PREFIX, USER_CODE_ALPHABET, RelayStore, format_user_code,
                               normalize_user_code)
from cmdop.relay.tokens import SigningKey, issue_access_token

T0 = 1_796_553_600.0
ISS = "https://relay.test:7444"


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[RelayStore]:
    s = RelayStore.open(str(tmp_path / "relay"), clock=clock)
    s.create_workspace("prod")
    s.create_workspace("dev")
    yield s
    s.close()


def _poll(store: RelayStore, device_code: str, jti: str = "j1") -> Any:
    return store.poll_device_code(device_code, "cmdop-cli", access_jti=jti, access_expires=T0 + 3600)


def _login(store: RelayStore, clock: Clock, email: str = "Alice@Example.com", ws: str = "prod",
           jti: str = "j1") -> Any:
    start = store.start_device_authorization("cmdop-cli", "relay", "", "127.0.0.1")
    store.approve_device(start.user_code, email, ws)
    result = store.poll_device_code(start.device_code, "cmdop-cli", access_jti=jti,
                                    access_expires=clock() + 3600)
    assert result.error is None and result.grant is not None
    return result.grant


# -- schema ------------------------------------------------------------------------------------

def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    d = tmp_path / "relay"
    with RelayStore.open(str(d)) as s:
        s.create_workspace("prod")
        _, key = s.create_key("prod", "alice")
    conn = sqlite3.connect(str(d / "relay.db"))
    for table in ("shares", "meta", "accounts", "account_workspaces", "device_codes", "refresh_tokens",
                  "denied_tokens"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("UPDATE schema_version SET version = 1")
    conn.commit()
    conn.close()
    with RelayStore.open(str(d)) as s:
        assert s.verify_key(key) is not None                 # what was there is kept
        assert len(s.relay_id()) == 16
        assert s.list_accounts() == []
        relay_id = s.relay_id()
    conn = sqlite3.connect(str(d / "relay.db"))
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
    conn.close()
    with RelayStore.open(str(d)) as s:
        assert s.relay_id() == relay_id                      # made once


# -- user codes --------------------------------------------------------------------------------

def test_user_code_spelling() -> None:
    assert normalize_user_code("bcdf-ghjk") == "BCDFGHJK"
    assert normalize_user_code(" BCDF GHJK ") == "BCDFGHJK"
    assert normalize_user_code("BCDFGHJK") == "BCDFGHJK"
    for bad in ("BCDF-GHJ", "BCDF-GHJKM", "ABCD-EFGH", "BCDF-GHJ0", "", "BCDF_GHJK"):
        assert normalize_user_code(bad) is None
    assert format_user_code("BCDFGHJK") == "BCDF-GHJK"
    assert not set("AEIOU01L") & set(USER_CODE_ALPHABET)


# -- device codes --------------------------------------------------------------------------------

def test_device_flow_in_the_store(store: RelayStore, clock: Clock) -> None:
    start = store.start_device_authorization("cmdop-cli", "relay", "prod", "10.0.0.7")
    assert start.expires_in == 600 and start.interval == 5
    assert len(start.user_code) == 9 and start.user_code[4] == "-"
    assert normalize_user_code(start.user_code) is not None
    # neither code is stored as is
    raw = Path(store.path).read_bytes() + (Path(store.path + "-wal").read_bytes()
                                           if Path(store.path + "-wal").exists() else b"")
    assert start.device_code.encode() not in raw
    assert start.user_code.replace("-", "").encode() not in raw
    assert _poll(store, start.device_code).error == "authorization_pending"
    clock.t += 1
    r = _poll(store, start.device_code)
    assert (r.error, r.interval) == ("slow_down", 10)            # polled too fast: +5
    clock.t += 6
    r = _poll(store, start.device_code)
    assert (r.error, r.interval) == ("slow_down", 15)            # 6 s < 10 s: +5 again
    clock.t += 15
    assert _poll(store, start.device_code).error == "authorization_pending"
    [pending] = store.list_device_requests()
    assert (pending.workspace_hint, pending.client_address, pending.status) == ("prod", "10.0.0.7", "pending")
    # approval is case- and dash-insensitive; the workspace defaults to the device's hint
    req, acct = store.approve_device(start.user_code.lower().replace("-", ""), "Alice@Example.COM")
    assert (req.status, req.account, req.workspace) == ("approved", "alice@example.com", "prod")
    assert (acct.email, acct.workspaces, acct.disabled) == ("alice@example.com", ("prod",), False)
    assert store.list_device_requests() == []
    clock.t += 15
    r = _poll(store, start.device_code)
    assert r.error is None and r.grant is not None
    g = r.grant
    assert (g.account_id, g.email, g.workspace, g.scope) == (acct.id, "alice@example.com", "prod", "relay")
    assert g.refresh_token.startswith(REFRESH_TOKEN_PREFIX) and g.refresh_expires == clock.t + 30 * 86400
    # single use
    clock.t += 15
    assert _poll(store, start.device_code).error == "invalid_grant"
    with pytest.raises(CmdopError, match="already used"):
        store.approve_device(start.user_code, "bob@example.com", "prod")


def test_device_code_errors(store: RelayStore, clock: Clock) -> None:
    assert _poll(store, "nope").error == "invalid_grant"
    start = store.start_device_authorization("cmdop-cli", "relay", "", "127.0.0.1")
    assert store.poll_device_code(start.device_code, "other", access_jti="j",
                                  access_expires=0).error == "invalid_grant"
    with pytest.raises(UsageError, match="which workspace"):
        store.approve_device(start.user_code, "a@b.c")
    with pytest.raises(NotFoundError, match="no workspace 'nope'"):
        store.approve_device(start.user_code, "a@b.c", "nope")
    with pytest.raises(UsageError, match="e-mail"):
        store.approve_device(start.user_code, "not-an-address", "prod")
    with pytest.raises(UsageError, match="not a user code"):
        store.approve_device("12", "a@b.c", "prod")
    with pytest.raises(NotFoundError, match="no device login"):
        store.approve_device("BCDF-GHJK" if start.user_code != "BCDF-GHJK" else "CDFG-HJKM", "a@b.c", "prod")
    # denied
    store.deny_device(start.user_code)
    assert _poll(store, start.device_code).error == "access_denied"
    with pytest.raises(CmdopError, match="already denied"):
        store.approve_device(start.user_code, "a@b.c", "prod")
    # expired: neither approvable nor redeemable
    late = store.start_device_authorization("cmdop-cli", "relay", "", "127.0.0.1")
    clock.t += 601
    assert _poll(store, late.device_code).error == "expired_token"
    with pytest.raises(CmdopError, match="expired"):
        store.approve_device(late.user_code, "a@b.c", "prod")


def test_approved_then_expired_is_expired(store: RelayStore, clock: Clock) -> None:
    start = store.start_device_authorization("cmdop-cli", "relay", "", "127.0.0.1")
    store.approve_device(start.user_code, "a@b.c", "prod")
    clock.t += 600
    assert _poll(store, start.device_code).error == "expired_token"


def test_pending_device_codes_are_capped(store: RelayStore) -> None:
    for _ in range(3):
        store.start_device_authorization("cmdop-cli", "relay", "", "127.0.0.1", max_pending=3)
    with pytest.raises(CmdopError, match="already waiting"):
        store.start_device_authorization("cmdop-cli", "relay", "", "127.0.0.1", max_pending=3)


def test_a_disabled_account_cannot_be_approved_or_redeem(store: RelayStore, clock: Clock) -> None:
    _login(store, clock, "a@b.c")
    start = store.start_device_authorization("cmdop-cli", "relay", "", "127.0.0.1")
    store.approve_device(start.user_code, "a@b.c", "dev")
    assert store.find_account("A@B.C").workspaces == ("dev", "prod")
    store.set_account_disabled("a@b.c", True)
    assert _poll(store, start.device_code).error == "access_denied"
    other = store.start_device_authorization("cmdop-cli", "relay", "", "127.0.0.1")
    with pytest.raises(CmdopError, match="disabled"):
        store.approve_device(other.user_code, "a@b.c", "prod")


# -- refresh tokens ------------------------------------------------------------------------------

def test_refresh_rotation_and_reuse_detection(store: RelayStore, clock: Clock) -> None:
    g1 = _login(store, clock, jti="a1")
    r = store.rotate_refresh_token(g1.refresh_token, "cmdop-cli", access_jti="a2", access_expires=clock.t + 3600)
    assert r.error is None and r.grant is not None
    g2 = r.grant
    assert g2.refresh_token != g1.refresh_token and (g2.email, g2.workspace) == (g1.email, g1.workspace)
    acct = store.find_account(g1.email)
    assert store.access_token_allowed(acct.id, "prod", "a1") and store.access_token_allowed(acct.id, "prod", "a2")
    # the spent token again: reuse — the whole family dies, its live access tokens are deny-listed
    r = store.rotate_refresh_token(g1.refresh_token, "cmdop-cli", access_jti="a3", access_expires=clock.t + 3600)
    assert r.error == "invalid_grant" and "reuse" in r.description
    r = store.rotate_refresh_token(g2.refresh_token, "cmdop-cli", access_jti="a4", access_expires=clock.t + 3600)
    assert r.error == "invalid_grant" and "revoked" in r.description
    assert not store.access_token_allowed(acct.id, "prod", "a1")
    assert not store.access_token_allowed(acct.id, "prod", "a2")
    assert {"a1", "a2"} <= store.denied_token_ids()
    # another login of the same account is another family: untouched
    g5 = _login(store, clock, jti="b1")
    assert store.rotate_refresh_token(g5.refresh_token, "cmdop-cli", access_jti="b2",
                                      access_expires=clock.t + 3600).error is None


def test_refresh_token_errors(store: RelayStore, clock: Clock) -> None:
    assert store.rotate_refresh_token("cmdop_rt_nope", "cmdop-cli", access_jti="x",
                                      access_expires=0).error == "invalid_grant"
    g = _login(store, clock)
    assert store.rotate_refresh_token(g.refresh_token, "other", access_jti="x",
                                      access_expires=0).error == "invalid_grant"
    clock.t += 30 * 86400
    assert store.rotate_refresh_token(g.refresh_token, "cmdop-cli", access_jti="x",
                                      access_expires=0).description == "the refresh token has expired"


def test_revoking_a_refresh_token_revokes_its_family(store: RelayStore, clock: Clock) -> None:
    g1 = _login(store, clock, jti="a1")
    g2 = store.rotate_refresh_token(g1.refresh_token, "cmdop-cli", access_jti="a2",
                                    access_expires=clock.t + 3600).grant
    assert g2 is not None
    assert store.revoke_refresh_token(g1.refresh_token) is True       # an old one names the family
    assert store.rotate_refresh_token(g2.refresh_token, "cmdop-cli", access_jti="a3",
                                      access_expires=clock.t + 3600).error == "invalid_grant"
    assert {"a1", "a2"} <= store.denied_token_ids()
    assert store.revoke_refresh_token("cmdop_rt_unknown") is False


def test_deny_list_expires(store: RelayStore, clock: Clock) -> None:
    store.deny_access_token("j9", clock.t + 10)
    assert "j9" in store.denied_token_ids()
    clock.t += 11
    assert "j9" not in store.denied_token_ids()


def test_disable_and_enable_an_account(store: RelayStore, clock: Clock) -> None:
    g = _login(store, clock, jti="a1")
    acct = store.find_account(g.email)
    assert store.disabled_account_ids() == frozenset()
    out = store.set_account_disabled(g.email.upper(), True)
    assert out.disabled and out.disabled_at
    assert store.disabled_account_ids() == frozenset({acct.id})
    assert not store.access_token_allowed(acct.id, "prod", "a1")
    assert store.rotate_refresh_token(g.refresh_token, "cmdop-cli", access_jti="a2",
                                      access_expires=0).error == "invalid_grant"
    assert "a1" in store.denied_token_ids()
    assert [a.email for a in store.list_accounts()] == ["alice@example.com"]
    store.set_account_disabled(g.email, False)
    assert store.disabled_account_ids() == frozenset()
    # enabling does not bring back what disabling revoked
    assert not store.access_token_allowed(acct.id, "prod", "a1")
    assert store.rotate_refresh_token(g.refresh_token, "cmdop-cli", access_jti="a2",
                                      access_expires=0).error == "invalid_grant"
    with pytest.raises(NotFoundError):
        store.find_account("nobody@example.com")


def test_disable_is_seen_by_another_connection(store: RelayStore, clock: Clock) -> None:
    _login(store, clock)
    v = store.data_version()
    with RelayStore.open(str(Path(store.path).parent)) as admin:
        admin.set_account_disabled("alice@example.com", True)
    assert store.data_version() != v
    assert len(store.disabled_account_ids()) == 1


# -- BearerVerifier ------------------------------------------------------------------------------

@pytest.fixture
def signing() -> SigningKey:
    return SigningKey.generate()


def _verifier(store: RelayStore, signing: SigningKey, clock: Clock, oidc: OidcVerifier | None = None) -> BearerVerifier:
    return BearerVerifier(store, signing_key=signing, issuer=ISS, audience=f"cmdop-relay:{store.relay_id()}",
                          oidc=oidc, clock=clock)


def _access(store: RelayStore, signing: SigningKey, clock: Clock, grant: Any, jti: str, **over: Any) -> str:
    kw: dict[str, Any] = dict(issuer=ISS, audience=f"cmdop-relay:{store.relay_id()}", account_id=grant.account_id,
                              email=grant.email, workspace=grant.workspace, scope="relay",
                              client_id="cmdop-cli", now=clock.t, jti=jti)
    kw.update(over)
    return issue_access_token(signing, **kw)[0]


def test_api_keys_verify_as_before(store: RelayStore, signing: SigningKey, clock: Clock) -> None:
    info, key = store.create_key("prod", "ci")
    p = _verifier(store, signing, clock).verify(key)
    assert p == Principal(id=info.id, workspace="prod", name="ci", credential="api_key", expires_at=None)
    assert (p.id, p.workspace, p.name) == (info.id, info.workspace, info.name)   # as KeyInfo
    store.revoke_key(info.id)
    assert _verifier(store, signing, clock).verify(key) is None


def test_relay_access_tokens(store: RelayStore, signing: SigningKey, clock: Clock) -> None:
    g = _login(store, clock, jti="a1")
    v = _verifier(store, signing, clock)
    token = _access(store, signing, clock, g, "a1")
    p = v.verify(token)
    assert p is not None
    assert (p.id, p.workspace, p.name, p.credential) == ("acct:" + g.account_id, "prod", "alice@example.com", "oauth")
    assert p.expires_at == int(clock.t) + 3600 and p.token_id == "a1" and p.account_id == g.account_id
    assert asyncio.run(v.averify(token)) == p
    # expired
    clock.t += 3600 + 31
    assert v.verify(token) is None
    clock.t -= 3600 + 31
    # another relay's audience, or another issuer
    assert v.verify(_access(store, signing, clock, g, "a1", audience="cmdop-relay:other")) is None
    assert v.verify(_access(store, signing, clock, g, "a1", issuer="https://other:7444")) is None
    # a workspace the account is not a member of
    assert v.verify(_access(store, signing, clock, g, "a1", workspace="dev")) is None
    # deny-listed jti
    store.deny_access_token("a1", clock.t + 3600)
    assert v.verify(token) is None
    # disabled account
    token2 = _access(store, signing, clock, g, "a2")
    assert v.verify(token2) is not None
    store.set_account_disabled(g.email, True)
    assert v.verify(token2) is None


def test_what_is_not_a_credential(store: RelayStore, signing: SigningKey, clock: Clock) -> None:
    g = _login(store, clock)
    v = _verifier(store, signing, clock)
    for token in ("", "garbage", g.refresh_token, "a.b.c", "cmdop_" + "0" * 12 + "_x", "x" * 10000):
        assert v.verify(token) is None
    # a JWT signed by someone else, with no external issuer configured
    other = SigningKey.generate()
    assert v.verify(_access(store, other, clock, g, "j")) is None
    # no signing key (cabinet off): relay tokens are not accepted
    assert BearerVerifier(store).verify(_access(store, signing, clock, g, "j")) is None


# -- the external issuer, with an in-memory JWKS -------------------------------------------------

OIDC_ISS = "https://idp.example.com/realms/x"


class Provider:
    """Keys and discovery of a fake OpenID provider, served through `fetch`."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[Any, str]] = {}
        self.requests: list[str] = []

    def add(self, kid: str, alg: str) -> Any:
        priv: Any
        if alg == "RS256":
            priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            priv = ec.generate_private_key(ec.SECP256R1())
        else:
            priv = Ed25519PrivateKey.generate()
        self.keys[kid] = (priv, alg)
        return priv

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, (priv, alg) in self.keys.items():
            algo = jwt.get_algorithm_by_name(alg)
            jwk = json.loads(algo.to_jwk(priv.public_key()))
            jwk.update(kid=kid, use="sig")
            keys.append(jwk)
        return {"keys": keys}

    def fetch(self, url: str) -> bytes:
        self.requests.append(url)
        if url.endswith("/.well-known/openid-configuration"):
            return json.dumps({"issuer": OIDC_ISS, "jwks_uri": OIDC_ISS + "/certs"}).encode()
        assert url == OIDC_ISS + "/certs"
        return json.dumps(self.jwks()).encode()

    def token(self, kid: str, now: float, *, alg: str | None = None, key: Any = None, **claims: Any) -> str:
        priv, kalg = self.keys[kid]
        payload = {"iss": OIDC_ISS, "aud": "cmdop", "sub": "user-1", "exp": int(now) + 300,
                   "iat": int(now), "nbf": int(now), "ws": "prod", "email": "u@idp"}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key or priv, algorithm=alg or kalg, headers={"kid": kid})


@pytest.fixture
def provider() -> Provider:
    p = Provider()
    p.add("rsa1", "RS256")
    p.add("ec1", "ES256")
    p.add("ed1", "EdDSA")
    return p


def _oidc(provider: Provider, clock: Clock, **kw: Any) -> OidcVerifier:
    v = OidcVerifier(OidcConfig(issuer=OIDC_ISS, audience="cmdop", workspace_claim="ws"),
                     fetch=provider.fetch, clock=clock, **kw)
    assert v.refresh()
    return v


def test_oidc_tokens_of_each_allowed_algorithm(store: RelayStore, signing: SigningKey, clock: Clock,
                                              provider: Provider) -> None:
    v = _verifier(store, signing, clock, _oidc(provider, clock))
    for kid in ("rsa1", "ec1", "ed1"):
        p = v.verify(provider.token(kid, clock.t))
        assert p == Principal(id=f"oidc:{OIDC_ISS}#user-1", workspace="prod", name="user-1",
                              credential="oidc", expires_at=int(clock.t) + 300)
    # a list of one workspace is accepted, upper case is lowered
    assert v.verify(provider.token("ec1", clock.t, ws=["PROD"])) is not None


@pytest.mark.parametrize("claims", [
    {"iss": "https://evil.example"}, {"aud": "other"}, {"aud": None}, {"exp": None}, {"sub": None},
    {"sub": ""}, {"ws": None}, {"ws": ["prod", "dev"]}, {"ws": 7}, {"ws": "nope"},
    {"exp": int(T0) - 61}, {"nbf": int(T0) + 120}, {"iat": int(T0) + 120},
])
def test_oidc_claims_that_are_refused(store: RelayStore, signing: SigningKey, clock: Clock,
                                      provider: Provider, claims: dict[str, Any]) -> None:
    v = _verifier(store, signing, clock, _oidc(provider, clock))
    assert v.verify(provider.token("rsa1", clock.t, **claims)) is None


def test_oidc_algorithm_confusion_is_refused(store: RelayStore, signing: SigningKey, clock: Clock,
                                             provider: Provider) -> None:
    v = _verifier(store, signing, clock, _oidc(provider, clock))
    good = provider.token("rsa1", clock.t)
    h, p, _ = good.split(".")
    assert v.verify(f"{h}.{p}.") is None
    none_header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "kid": "rsa1"}).encode()).decode()
    assert v.verify(f"{none_header}.{p}.") is None
    # HS256 keyed with the RSA public key's PEM
    from cryptography.hazmat.primitives import serialization
    pem = provider.keys["rsa1"][0].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    import hashlib
    import hmac
    hs_header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "rsa1"}).encode()).decode()
    sig = hmac.new(pem, f"{hs_header}.{p}".encode(), hashlib.sha256).digest()
    assert v.verify(f"{hs_header}.{p}.{jwt.utils.base64url_encode(sig).decode()}") is None
    # an allowed algorithm, but not the one of the key the kid names
    assert v.verify(provider.token("rsa1", clock.t, alg="ES256", key=provider.keys["ec1"][0])) is None
    # RS512 is not on the allow-list
    assert v.verify(provider.token("rsa1", clock.t, alg="RS512")) is None
    # a forged signature
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert v.verify(provider.token("rsa1", clock.t, key=attacker)) is None


def test_oidc_key_rotation_is_fetched_off_the_calling_thread(store: RelayStore, signing: SigningKey,
                                                             clock: Clock, provider: Provider) -> None:
    oidc = _oidc(provider, clock, min_refetch_s=0.0)
    v = _verifier(store, signing, clock, oidc)
    assert oidc.fetches == 1
    provider.add("rsa2", "RS256")
    token = provider.token("rsa2", clock.t)
    assert v.verify(token) is None                       # not cached: refused now, refetch started
    deadline = time.monotonic() + 5
    while oidc.fetches < 2 or (oidc._background is not None and oidc._background.is_alive()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert v.verify(token) is not None
    # a key the provider dropped is no longer accepted after the next fetch
    old = provider.token("rsa1", clock.t)
    assert v.verify(old) is not None
    del provider.keys["rsa1"]
    assert oidc.refresh()
    assert v.verify(old) is None and v.verify(token) is not None


def test_oidc_averify_awaits_the_refetch(store: RelayStore, signing: SigningKey, clock: Clock,
                                         provider: Provider) -> None:
    oidc = _oidc(provider, clock, min_refetch_s=0.0)
    v = _verifier(store, signing, clock, oidc)
    provider.add("ed2", "EdDSA")
    p = asyncio.run(v.averify(provider.token("ed2", clock.t)))
    assert p is not None and p.credential == "oidc"


def test_oidc_refetches_for_unknown_kids_are_rate_limited(store: RelayStore, signing: SigningKey,
                                                         clock: Clock, provider: Provider) -> None:
    oidc = _oidc(provider, clock, min_refetch_s=3600.0)
    v = _verifier(store, signing, clock, oidc)
    for i in range(5):
        provider.add(f"k{i}", "ES256")
        assert v.verify(provider.token(f"k{i}", clock.t)) is None
        assert asyncio.run(v.averify(provider.token(f"k{i}", clock.t))) is None
    assert oidc.fetches == 1


def test_oidc_discovery_must_name_the_same_issuer(clock: Clock, provider: Provider) -> None:
    def fetch(url: str) -> bytes:
        if url.endswith("openid-configuration"):
            return json.dumps({"issuer": "https://other", "jwks_uri": OIDC_ISS + "/certs"}).encode()
        return provider.fetch(url)

    v = OidcVerifier(OidcConfig(issuer=OIDC_ISS, audience="cmdop"), fetch=fetch, clock=clock)
    assert v.refresh() is False
    assert v.verify(provider.token("rsa1", clock.t)) is None


def test_oidc_config_checks() -> None:
    with pytest.raises(UsageError, match="https"):
        OidcConfig(issuer="http://idp.example.com", audience="a")
    OidcConfig(issuer="http://127.0.0.1:8080/x", audience="a")       # loopback may be http
    with pytest.raises(UsageError, match="audience"):
        OidcConfig(issuer=OIDC_ISS, audience="")
    with pytest.raises(UsageError, match="not allowed"):
        OidcConfig(issuer=OIDC_ISS, audience="a", algorithms=("HS256",))


# -- the rate limiter ----------------------------------------------------------------------------

def test_rate_limiter_bucket() -> None:
    rl = RateLimiter(burst=3, per_s=1.0)
    assert [rl.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.take("a", 0.0) == pytest.approx(1.0)
    assert rl.take("b", 0.0) == 0.0                      # per address
    assert rl.take("2001:db8::1", 0.0) == 0.0
    rl.take("2001:db8::2", 0.0), rl.take("2001:db8::3", 0.0)
    assert rl.take("2001:db8::4", 0.0) > 0               # an IPv6 /64 is one client
    assert rl.take("a", 1.0) == 0.0                      # refilled one
    assert rl.take("a", 1.0) > 0
    assert rl.take("a", 100.0) == 0.0                    # never more than the burst
    assert [rl.take("a", 100.0) for _ in range(3)][-1] > 0


def test_rate_limiter_memory_is_bounded() -> None:
    rl = RateLimiter(burst=1, per_s=0.001, max_addresses=10)
    for i in range(100):
        rl.take(f"10.0.0.{i}", 0.0)
    assert len(rl._buckets) <= 10
