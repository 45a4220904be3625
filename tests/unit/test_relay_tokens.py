"""The relay's access tokens (cmdop.relay.tokens): the signing key, issue and verify, and every
way a forged or stale token must be refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmdop.core.errors import ConfigError, SecretFileError
from cmdop.relay.tokens import (SIGNING_KEY_NAME, SigningKey, TokenError, b64url, issue_access_token,
                                load_or_create_signing_key, okp_thumbprint, verify_access_token)

ISS = "https://relay.example:7444"
AUD = "cmdop-relay:0123456789abcdef"
NOW = 1_796_553_600.0


def _issue(key: SigningKey, now: float = NOW, **over: object) -> str:
    kw: dict[str, object] = dict(issuer=ISS, audience=AUD, account_id="acc1", email="a@x.io",
                                 workspace="prod", scope="relay", client_id="cmdop-cli", now=now)
    kw.update(over)
    token, _ = issue_access_token(key, **kw)  # type: ignore[arg-type]
    return token


def _verify(key: SigningKey, token: str, now: float = NOW, **over: object) -> object:
    kw: dict[str, object] = dict(issuer=ISS, audience=AUD, now=now)
    kw.update(over)
    return verify_access_token(token, key, **kw)  # type: ignore[arg-type]


def _segments(token: str) -> tuple[dict[str, object], dict[str, object], str]:
    h, p, s = token.split(".")
    pad = lambda x: x + "=" * (-len(x) % 4)  # noqa: E731
    return (json.loads(base64.urlsafe_b64decode(pad(h))), json.loads(base64.urlsafe_b64decode(pad(p))), s)


def _encode(header: dict[str, object], payload: dict[str, object], sig: bytes = b"") -> str:
    h = b64url(json.dumps(header).encode())
    p = b64url(json.dumps(payload).encode())
    return f"{h}.{p}.{b64url(sig)}"


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


# -- the signing key ---------------------------------------------------------------------------

def test_signing_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    d = tmp_path / "relay"
    k1 = load_or_create_signing_key(str(d))
    path = d / SIGNING_KEY_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert b"PRIVATE KEY" in path.read_bytes()
    k2 = load_or_create_signing_key(str(d))
    assert k2.kid == k1.kid and k2.path == str(path)
    assert [n for n in os.listdir(d) if n.startswith(".tmp")] == []


def test_signing_key_kid_is_the_rfc7638_thumbprint(key: SigningKey) -> None:
    jwk = key.public_jwk()
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"%s"}' % jwk["x"]
    want = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    assert key.kid == want == okp_thumbprint(jwk["x"])
    assert jwk == {"kty": "OKP", "crv": "Ed25519", "x": jwk["x"], "kid": key.kid, "alg": "EdDSA", "use": "sig"}
    assert key.jwks() == {"keys": [jwk]}
    assert "d" not in jwk                                 # never the private part


def test_signing_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_signing_key(str(tmp_path))
    os.chmod(tmp_path / SIGNING_KEY_NAME, 0o644)
    with pytest.raises(SecretFileError) as err:
        load_or_create_signing_key(str(tmp_path))
    assert "chmod 600" in (err.value.hint or "")


def test_signing_key_of_another_type_is_refused_not_replaced(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = tmp_path / SIGNING_KEY_NAME
    path.write_bytes(other)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="not an unencrypted Ed25519"):
        load_or_create_signing_key(str(tmp_path))
    assert path.read_bytes() == other


# -- issue and verify --------------------------------------------------------------------------

def test_issue_and_verify_round_trip(key: SigningKey) -> None:
    token, claims = issue_access_token(key, issuer=ISS, audience=AUD, account_id="acc1", email="a@x.io",
                                       workspace="prod", scope="relay", client_id="cmdop-cli", now=NOW)
    header, payload, _ = _segments(token)
    assert header == {"alg": "EdDSA", "kid": key.kid, "typ": "at+jwt"}
    assert payload["exp"] == payload["iat"] + 3600 == int(NOW) + 3600 == payload["nbf"] + 3600
    assert (payload["iss"], payload["aud"], payload["sub"], payload["workspace"]) == (ISS, AUD, "acc1", "prod")
    assert isinstance(payload["jti"], str) and len(payload["jti"]) >= 16
    assert _verify(key, token) == claims
    assert _verify(key, token, now=NOW + 3599) == claims


def test_jti_is_unique(key: SigningKey) -> None:
    assert _segments(_issue(key))[1]["jti"] != _segments(_issue(key))[1]["jti"]


def test_expired_and_not_yet_valid_tokens_are_refused(key: SigningKey) -> None:
    token = _issue(key)
    with pytest.raises(TokenError, match="expired"):
        _verify(key, token, now=NOW + 3600 + 31)            # past exp + 30 s leeway
    _verify(key, token, now=NOW + 3600 + 29)                # within the leeway
    with pytest.raises(TokenError, match="nbf|iat"):
        _verify(key, token, now=NOW - 120)                  # issued two minutes "in the future"
    # The revocation endpoint's mode: an expired token still proves who signed it
    _verify(key, token, now=NOW + 86400, check_expiry=False)


@pytest.mark.parametrize("field,value", [("issuer", "https://evil.example"), ("audience", "cmdop-relay:other"),
                                         ("audience", "cmdop-relay")])
def test_wrong_issuer_or_audience_is_refused(key: SigningKey, field: str, value: str) -> None:
    with pytest.raises(TokenError):
        _verify(key, _issue(key, **{field: value}))


def test_audience_list_is_refused(key: SigningKey) -> None:
    payload = _segments(_issue(key))[1]
    payload["aud"] = [AUD, "other"]
    forged = jwt.encode(payload, key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": "at+jwt"})
    with pytest.raises(TokenError):
        _verify(key, forged)


def test_alg_none_is_refused(key: SigningKey) -> None:
    payload = _segments(_issue(key))[1]
    for alg in ("none", "None", "NONE"):
        forged = _encode({"alg": alg, "kid": key.kid, "typ": "at+jwt"}, payload)
        with pytest.raises(TokenError):
            _verify(key, forged)
        with pytest.raises(TokenError):
            _verify(key, forged[: forged.rindex(".") + 1])


def test_hs256_keyed_with_the_public_key_is_refused(key: SigningKey) -> None:
    """The classic algorithm confusion: HMAC with the (public) verification key as secret."""
    payload = _segments(_issue(key))[1]
    pub_raw = key.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pub_pem = key.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (pub_raw, pub_pem, key.public_jwk()["x"].encode()):
        header = {"alg": "HS256", "kid": key.kid, "typ": "at+jwt"}
        signing_input = (b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())).encode()
        sig = hmac.new(secret, signing_input, hashlib.sha256).digest()
        forged = signing_input.decode() + "." + b64url(sig)
        with pytest.raises(TokenError, match="not allowed"):
            _verify(key, forged)


def test_other_asymmetric_algorithms_are_refused(key: SigningKey) -> None:
    payload = _segments(_issue(key))[1]
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(payload, rsa_key, algorithm="RS256", headers={"kid": key.kid, "typ": "at+jwt"})
    with pytest.raises(TokenError, match="not allowed"):
        _verify(key, forged)


def test_tampered_payload_and_signature_are_refused(key: SigningKey) -> None:
    token = _issue(key)
    h, p, s = token.split(".")
    payload = _segments(token)[1]
    payload["workspace"] = "admin"
    with pytest.raises(TokenError):
        _verify(key, f"{h}.{b64url(json.dumps(payload).encode())}.{s}")
    flipped = s[:-2] + ("A" if s[-2] != "A" else "B") + s[-1]
    with pytest.raises(TokenError):
        _verify(key, f"{h}.{p}.{flipped}")
    with pytest.raises(TokenError):
        _verify(key, f"{h}.{p}.")


def test_a_token_signed_by_another_key_is_refused_even_with_our_kid(key: SigningKey) -> None:
    other = SigningKey.generate()
    impostor = SigningKey(private=other.private, kid=key.kid, path="")
    with pytest.raises(TokenError):
        _verify(key, _issue(impostor))
    with pytest.raises(TokenError, match="another key"):
        _verify(key, _issue(other))


def test_missing_claims_and_wrong_typ_are_refused(key: SigningKey) -> None:
    payload = _segments(_issue(key))[1]
    for drop in ("jti", "exp", "sub", "iat", "nbf", "email", "workspace"):
        p = {k: v for k, v in payload.items() if k != drop}
        forged = jwt.encode(p, key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": "at+jwt"})
        with pytest.raises(TokenError):
            _verify(key, forged)
    as_id_token = jwt.encode(payload, key.private, algorithm="EdDSA", headers={"kid": key.kid})
    with pytest.raises(TokenError, match="typ"):
        _verify(key, as_id_token)
    bad_exp = dict(payload, exp="tomorrow")
    forged = jwt.encode(bad_exp, key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": "at+jwt"})
    with pytest.raises(TokenError):
        _verify(key, forged)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b", "a.b.c", "....", "x" * 9000, "cmdop_rt_abc"])
def test_garbage_is_refused(key: SigningKey, garbage: str) -> None:
    with pytest.raises(TokenError):
        _verify(key, garbage)


def test_ed25519_private_key_round_trip_through_pem(tmp_path: Path) -> None:
    k = load_or_create_signing_key(str(tmp_path))
    again = serialization.load_pem_private_key((tmp_path / SIGNING_KEY_NAME).read_bytes(), None)
    assert isinstance(again, Ed25519PrivateKey)
    assert SigningKey.from_private(again).kid == k.kid
    token = _issue(k)
    _verify(SigningKey.from_private(again), token)
