"""The relay's TLS certificate: self-signed in the data dir, or the files the user gives.

`ensure_certificate(data_dir, hostnames)` creates once, then reuses, an EC P-256 key
(`relay.key`, 0600, atomic) and a self-signed certificate (`relay.crt`, 0644) valid 10 years,
with SANs DNS `cmdop-relay`, `localhost`, each given hostname, IP 127.0.0.1 and ::1. Reuse keeps
the fingerprint clients pinned: hostnames given later are not added (remove both files to make a
new certificate, and give clients the new fingerprint). A crash between writing the key and the
certificate leaves a key without a certificate, which nobody can have pinned: both are made anew.
A certificate without its key is an error, never silently replaced.

`fingerprint_of_pem` is the SHA-256 of the (first) certificate's DER bytes: 64 lower-case hex
digits, no colons — what `cmdop relay serve` prints and `cmdop connect key set
--relay-fingerprint` pins (`normalize_fingerprint` accepts the usual spellings).
All cryptography is the `cryptography` package's.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cmdop.adapters.secure_file import atomic_write, check_private
from cmdop.core.credentials import normalize_fingerprint
from cmdop.core.errors import CmdopError, ConfigError

__all__ = ["CERT_NAME", "KEY_NAME", "CertInfo", "ensure_certificate", "fingerprint_of_pem",
           "load_certificate", "normalize_fingerprint"]

CERT_NAME = "relay.crt"
KEY_NAME = "relay.key"
VALID_DAYS = 3650
SERVER_NAME = "cmdop-relay"   # the DNS name every self-signed relay certificate carries


@dataclass(frozen=True)
class CertInfo:
    cert_pem: bytes          # the certificate (a user-given file: as given, chain included)
    key_pem: bytes
    fingerprint: str         # SHA-256 of the first certificate's DER, 64 lower-case hex digits
    self_signed: bool
    cert_path: str


def _load_certs(pem: bytes, where: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{where} holds no PEM certificate",
                          hint="give a PEM file starting with -----BEGIN CERTIFICATE-----")
    return certs


def fingerprint_of_pem(pem: bytes) -> str:
    """SHA-256 over the DER encoding of the first certificate in `pem`, lower-case hex."""
    cert = _load_certs(pem, "the certificate")[0]
    return cert.fingerprint(hashes.SHA256()).hex()


def _public_der(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]
    der: bytes = public.public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}",
                          hint="check the path and its permissions") from None


def load_certificate(cert_path: str, key_path: str) -> CertInfo:
    """A user-given certificate (PEM, chain allowed, leaf first) and its private key (PEM,
    unencrypted, 0600 and ours like every secret file). ConfigError when a file cannot be read
    or parsed or the key does not belong to the certificate."""
    cert_pem = _read(cert_path, "TLS certificate")
    check_private(key_path)
    key_pem = _read(key_path, "TLS key")
    cert = _load_certs(cert_pem, cert_path)[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(f"{key_path} is an encrypted private key",
                          hint=f"decrypt it first, e.g. `openssl pkey -in {key_path} -out relay.key`") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{key_path} holds no usable PEM private key ({type(exc).__name__})",
                          hint="give the unencrypted PEM private key of the certificate") from None
    if _public_der(key) != _public_der(cert):
        raise ConfigError(f"the key {key_path} does not belong to the certificate {cert_path}",
                          hint="give the private key that was used to request this certificate")
    return CertInfo(cert_pem=cert_pem, key_pem=key_pem, fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
                    self_signed=cert.issuer == cert.subject, cert_path=os.path.abspath(cert_path))


def _san(hostnames: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    ips = {"127.0.0.1", "::1"}
    for host in [SERVER_NAME, "localhost", *hostnames]:
        host = host.strip().strip("[]").lower()
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            ips.add(str(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    for ip in sorted(ips):
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    return x509.SubjectAlternativeName(names)


def _make(hostnames: list[str]) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1 or 1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(_san(hostnames), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_certificate(data_dir: str, hostnames: list[str]) -> CertInfo:
    """The relay's self-signed certificate in `data_dir`, made on first use (module docstring)."""
    from cmdop.relay.store import prepare_data_dir

    data_dir = prepare_data_dir(data_dir)
    cert_path = os.path.join(data_dir, CERT_NAME)
    key_path = os.path.join(data_dir, KEY_NAME)
    have_cert, have_key = os.path.lexists(cert_path), os.path.lexists(key_path)
    if have_cert and not have_key:
        raise ConfigError(
            f"{cert_path} exists but its key {key_path} is missing",
            hint=f"restore {key_path}, or remove {cert_path} to make a new certificate "
                 "(clients must then pin the new fingerprint)",
        )
    if have_cert:
        info = load_certificate(cert_path, key_path)
        return CertInfo(cert_pem=info.cert_pem, key_pem=info.key_pem, fingerprint=info.fingerprint,
                        self_signed=True, cert_path=info.cert_path)
    cert_pem, key_pem = _make(hostnames)
    try:
        check_private(key_path)  # a leftover key others could read is not silently replaced
        atomic_write(key_path, key_pem, mode=0o600)
        atomic_write(cert_path, cert_pem, mode=0o644)
    except OSError as exc:
        raise CmdopError(f"cannot write the relay certificate in {data_dir}: {exc.strerror}",
                         hint="check the owner and mode of the relay data dir (--data-dir)") from None
    return CertInfo(cert_pem=cert_pem, key_pem=key_pem, fingerprint=fingerprint_of_pem(cert_pem),
                    self_signed=True, cert_path=cert_path)
