"""The relay's certificate (cmdop.relay.tls): made once and reused, files and modes, fingerprints."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cmdop.core.errors import ConfigError, SecretFileError, UsageError
from cmdop.relay.tls import (CertInfo, ensure_certificate, fingerprint_of_pem, load_certificate,
                             normalize_fingerprint)


def test_self_signed_is_made_once_and_reused(tmp_path: Path) -> None:
    d = tmp_path / "relay"
    first = ensure_certificate(str(d), ["relay.example.com", "10.1.2.3"])
    assert isinstance(first, CertInfo) and first.self_signed
    assert first.cert_path == str(d / "relay.crt")
    assert stat.S_IMODE((d / "relay.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "relay.crt").stat().st_mode) == 0o644
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert len(first.fingerprint) == 64 and first.fingerprint == first.fingerprint.lower()
    assert first.fingerprint == fingerprint_of_pem((d / "relay.crt").read_bytes())
    again = ensure_certificate(str(d), ["other.example.com"])   # a restart: same certificate
    assert (again.fingerprint, again.cert_pem, again.key_pem) == (first.fingerprint, first.cert_pem, first.key_pem)
    assert not list(d.glob(".tmp-*"))


def test_certificate_contents(tmp_path: Path) -> None:
    info = ensure_certificate(str(tmp_path / "r"), ["Relay.Example.com", "10.1.2.3", "[2001:db8::1]"])
    cert = x509.load_pem_x509_certificate(info.cert_pem)
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"cmdop-relay", "localhost", "relay.example.com"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3", "2001:db8::1")}
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3649) < life < datetime.timedelta(days=3652)
    assert cert.issuer == cert.subject
    der = cert.public_bytes(serialization.Encoding.DER)
    assert info.fingerprint == hashlib.sha256(der).hexdigest()
    key = serialization.load_pem_private_key(info.key_pem, password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


def test_a_certificate_without_its_key_is_not_replaced(tmp_path: Path) -> None:
    d = tmp_path / "r"
    first = ensure_certificate(str(d), [])
    (d / "relay.key").unlink()
    with pytest.raises(ConfigError) as err:
        ensure_certificate(str(d), [])
    assert "relay.key" in err.value.message and err.value.hint
    assert fingerprint_of_pem((d / "relay.crt").read_bytes()) == first.fingerprint


def test_a_key_without_certificate_is_remade(tmp_path: Path) -> None:
    d = tmp_path / "r"
    first = ensure_certificate(str(d), [])
    (d / "relay.crt").unlink()
    second = ensure_certificate(str(d), [])
    assert second.fingerprint != first.fingerprint
    assert stat.S_IMODE((d / "relay.key").stat().st_mode) == 0o600


def test_a_readable_key_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "r"
    ensure_certificate(str(d), [])
    os.chmod(d / "relay.key", 0o644)
    with pytest.raises(SecretFileError) as err:
        ensure_certificate(str(d), [])
    assert "chmod 600" in (err.value.hint or "")


def test_load_user_certificate(tmp_path: Path) -> None:
    made = ensure_certificate(str(tmp_path / "a"), [])
    other = ensure_certificate(str(tmp_path / "b"), [])
    cert, key = tmp_path / "a" / "relay.crt", tmp_path / "a" / "relay.key"
    info = load_certificate(str(cert), str(key))
    assert info.fingerprint == made.fingerprint and info.self_signed
    with pytest.raises(ConfigError, match="does not belong"):
        load_certificate(str(cert), str(tmp_path / "b" / "relay.key"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_certificate(str(tmp_path / "missing.crt"), str(key))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    os.chmod(junk, 0o600)
    with pytest.raises(ConfigError, match="no PEM certificate"):
        load_certificate(str(junk), str(key))
    with pytest.raises(ConfigError, match="no usable PEM private key"):
        load_certificate(str(cert), str(junk))
    chain = tmp_path / "chain.pem"
    chain.write_bytes(made.cert_pem + other.cert_pem)
    assert load_certificate(str(chain), str(key)).fingerprint == made.fingerprint


def test_encrypted_key_is_explained(tmp_path: Path) -> None:
    made = ensure_certificate(str(tmp_path / "a"), [])
    key = serialization.load_pem_private_key(made.key_pem, password=None)
    enc = tmp_path / "enc.key"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"pw")))
    os.chmod(enc, 0o600)
    with pytest.raises(ConfigError, match="encrypted"):
        load_certificate(made.cert_path, str(enc))


HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize("text", [
    HEX,
    HEX.upper(),
    ":".join(HEX[i:i + 2] for i in range(0, 64, 2)),
    ":".join(HEX[i:i + 2] for i in range(0, 64, 2)).upper(),
    "sha256:" + HEX,
    "SHA256:" + ":".join(HEX[i:i + 2] for i in range(0, 64, 2)).upper(),
    "  " + HEX + "\n",
])
def test_normalize_fingerprint_accepts(text: str) -> None:
    assert normalize_fingerprint(text) == HEX


@pytest.mark.parametrize("text", ["", "sha256:", HEX[:-1], HEX + "0", HEX[:-1] + "g", "sha1:" + HEX,
                                  "md5:" + HEX[:32], "0x" + HEX[2:]])
def test_normalize_fingerprint_rejects(text: str) -> None:
    with pytest.raises(UsageError) as err:
        normalize_fingerprint(text)
    assert err.value.exit_code == 2 and err.value.hint


def test_a_second_relay_on_a_busy_port_is_refused(tmp_path: Path) -> None:
    """grpc would share the port (SO_REUSEPORT) and split callers between two relays."""
    import asyncio
    from types import SimpleNamespace

    from cmdop.adapters.relay_grpc import start_server
    from cmdop.core.errors import CmdopError

    info = ensure_certificate(str(tmp_path / "r"), ["127.0.0.1"])

    async def nothing(*_: object) -> None:
        return None

    handlers = SimpleNamespace(**{name: nothing for name in (
        "agent_link", "list_hosts", "call", "host_key", "create_share", "list_shares", "revoke_share")})

    async def scenario() -> None:
        first, port = await start_server(handlers, "127.0.0.1:0", info.cert_pem, info.key_pem)  # type: ignore[arg-type]
        try:
            with pytest.raises(CmdopError, match="cannot listen"):
                await start_server(handlers, f"127.0.0.1:{port}", info.cert_pem, info.key_pem)  # type: ignore[arg-type]
        finally:
            await first.stop(None)

    asyncio.run(scenario())
