"""The relay's own access tokens: short-lived EdDSA (Ed25519) JWTs, signed and checked by PyJWT.

The signing key is `oauth_signing.key` in the relay's data dir: an Ed25519 private key (PKCS#8
PEM), mode 0600, written atomically and created once — a second relay process racing to create
it loads the first one's instead of replacing it (hard link, never rename over). Its key id
(`kid`) is the RFC 7638 JWK thumbprint of the public key; `/oauth/jwks` serves the public key.

An access token (RFC 9068 shape, header `typ: at+jwt`, `alg: EdDSA`, `kid`):
`iss` the relay's issuer URL, `aud` the relay's audience (`cmdop-relay:<relay id>`), `sub` the
account id, `email`, `workspace`, `scope`, `client_id`, `iat`, `nbf`, `exp` (iat + 1 h), `jti`.

`verify_access_token` accepts only what this relay signed: the algorithm allow-list is EdDSA
alone (`none`, HS256 keyed with the public key, RS256… are refused before any signature check),
the `kid` must be this key's, the signature must verify, iss and aud must match exactly, and
exp/nbf/iat are checked against the caller's clock with a small leeway. Deny-listed ids and
disabled accounts are the store's to check (cmdop.relay.auth).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cmdop.adapters.secure_file import atomic_create, check_private, ensure_private_dir
from cmdop.core.errors import CmdopError, ConfigError

SIGNING_KEY_NAME = "oauth_signing.key"
ACCESS_TOKEN_TTL_S = 3600
ALGORITHM = "EdDSA"
ALGORITHMS = (ALGORITHM,)          # the allow-list: nothing else is ever accepted
TOKEN_TYPE = "at+jwt"
LEEWAY_S = 30.0
MAX_TOKEN_LEN = 8192
_REQUIRED = ["iss", "aud", "sub", "exp", "iat", "nbf", "jti"]


class TokenError(Exception):
    """A token that does not verify; the message says why (for logs, never for callers)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def okp_thumbprint(x: str) -> str:
    """RFC 7638 thumbprint of an Ed25519 JWK with public value `x` (base64url)."""
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"),
                           sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    kid: str
    path: str

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey, path: str = "") -> SigningKey:
        raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
        return cls(private=private, kid=okp_thumbprint(b64url(raw)), path=path)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls.from_private(Ed25519PrivateKey.generate())

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def public_jwk(self) -> dict[str, str]:
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), "kid": self.kid,
                "alg": ALGORITHM, "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}


def _parse_key(pem: bytes, path: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an unencrypted Ed25519 private key (PEM)",
                          hint=f"move {path} away: the relay makes a new one (logins then start over)")
    return SigningKey.from_private(key, path)


def load_or_create_signing_key(data_dir: str) -> SigningKey:
    """The relay's token signing key in `data_dir`, made on first use (module docstring)."""
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    path = os.path.join(data_dir, SIGNING_KEY_NAME)
    try:
        ensure_private_dir(data_dir)
        check_private(path)
        try:
            with open(path, "rb") as f:
                return _parse_key(f.read(), path)
        except FileNotFoundError:
            pass
        key = SigningKey.generate()
        pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        if not atomic_create(path, pem, 0o600):   # another process made it first: use theirs
            with open(path, "rb") as f:
                return _parse_key(f.read(), path)
        return SigningKey.from_private(key.private, path)
    except OSError as exc:
        raise CmdopError(f"cannot read or create the token signing key {path}: {exc.strerror}",
                         hint="check the owner and mode of the relay data dir (--data-dir)") from None


@dataclass(frozen=True)
class AccessClaims:
    """A verified (or just issued) access token's claims."""

    iss: str
    aud: str
    sub: str                # the account id
    email: str
    workspace: str
    scope: str
    client_id: str
    iat: int
    nbf: int
    exp: int
    jti: str


def issue_access_token(key: SigningKey, *, issuer: str, audience: str, account_id: str, email: str,
                       workspace: str, scope: str, client_id: str, now: float,
                       ttl_s: int = ACCESS_TOKEN_TTL_S, jti: str | None = None) -> tuple[str, AccessClaims]:
    """A signed access token and its claims."""
    t = int(now)
    claims = AccessClaims(iss=issuer, aud=audience, sub=account_id, email=email, workspace=workspace,
                          scope=scope, client_id=client_id, iat=t, nbf=t, exp=t + ttl_s,
                          jti=jti or secrets.token_urlsafe(16))
    token = jwt.encode(dict(claims.__dict__), key.private, algorithm=ALGORITHM,
                       headers={"kid": key.kid, "typ": TOKEN_TYPE})
    return token, claims


def unverified_header(token: str) -> dict[str, Any] | None:
    """The JOSE header of what looks like a compact JWS, unverified; None otherwise."""
    if not token or len(token) > MAX_TOKEN_LEN or token.count(".") != 2:
        return None
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return None
    return header if isinstance(header, dict) else None


def check_times(payload: dict[str, Any], now: float, leeway: float) -> None:
    """exp (required), nbf and iat (when present) against `now`; TokenError otherwise."""
    for name in ("exp", "nbf", "iat"):
        value = payload.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TokenError(f"{name} is not a number")
    exp = payload.get("exp")
    if exp is None:
        raise TokenError("no exp")
    if now >= float(exp) + leeway:
        raise TokenError("expired")
    nbf = payload.get("nbf")
    if nbf is not None and now + leeway < float(nbf):
        raise TokenError("not yet valid (nbf)")
    iat = payload.get("iat")
    if iat is not None and now + leeway < float(iat):
        raise TokenError("issued in the future (iat)")


def verify_access_token(token: str, key: SigningKey, *, issuer: str, audience: str, now: float,
                        leeway: float = LEEWAY_S, check_expiry: bool = True) -> AccessClaims:
    """The claims of an access token this relay signed; TokenError for anything else.
    (`check_expiry=False` is for the revocation endpoint only: a token is revocable until it
    expires, and one past expiry needs nothing.)"""
    header = unverified_header(token)
    if header is None:
        raise TokenError("not a compact JWS")
    if header.get("alg") not in ALGORITHMS:
        raise TokenError(f"algorithm {header.get('alg')!r} is not allowed")
    if header.get("kid") != key.kid:
        raise TokenError("signed with another key")
    if header.get("typ") != TOKEN_TYPE:
        raise TokenError("not an access token (typ)")
    try:
        payload = jwt.decode(
            token, key.public, algorithms=list(ALGORITHMS), audience=audience, issuer=issuer,
            options={"require": _REQUIRED, "verify_exp": False, "verify_nbf": False,
                     "verify_iat": False, "strict_aud": True},
        )
    except jwt.PyJWTError as exc:
        raise TokenError(f"{type(exc).__name__}: {exc}") from None
    if check_expiry:
        check_times(payload, now, leeway)
    try:
        claims = AccessClaims(
            iss=payload["iss"], aud=payload["aud"], sub=payload["sub"], email=payload["email"],
            workspace=payload["workspace"], scope=payload.get("scope", ""),
            client_id=payload.get("client_id", ""), iat=int(payload["iat"]), nbf=int(payload["nbf"]),
            exp=int(payload["exp"]), jti=payload["jti"])
    except (KeyError, TypeError, ValueError):
        raise TokenError("claims missing or malformed") from None
    for name in ("sub", "email", "workspace", "jti", "scope"):
        if not isinstance(getattr(claims, name), str):
            raise TokenError(f"{name} is not a string")
    if not claims.sub or not claims.workspace or not claims.jti:
        raise TokenError("empty sub, workspace or jti")
    return claims
