"""The per-machine Ed25519 key that seals rotated audit files.

Files in the state dir: `audit.key` (raw 32-byte private seed, 0600, atomic write) and
`audit.pub` (raw 32-byte public key, 0600, written beside it so a verifier without the private
key, or a copy of the log elsewhere, can still check seals).

A seal is `audit.log.N.sig`, one JSON object: `{"v": 1, "sha256": HEX of the file's bytes,
"first_seq", "last_seq", "last_hash", "sig": base64 Ed25519 signature}` where the signature is
over the canonical JSON of every other field. It rotates together with its file.

`cryptography` is imported only here and only when a key is used, so `cmdop --version` and
plain appends stay fast.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cmdop.adapters.secure_file import atomic_write, check_private
from cmdop.core.audit import canonical_json
from cmdop.core.errors import AuditIntegrityError

KEY_NAME = "audit.key"
PUB_NAME = "audit.pub"


def _message(meta: dict[str, Any]) -> bytes:
    return b"cmdop-audit-seal-v1\n" + canonical_json({k: v for k, v in meta.items() if k != "sig"})


def load_or_create_key(state_dir: str) -> Any:
    """The machine's Ed25519 private key, created on first use. Call with the audit lock held so
    two processes never create two keys."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    path = os.path.join(state_dir, KEY_NAME)
    try:
        check_private(path)
        with open(path, "rb") as f:
            return Ed25519PrivateKey.from_private_bytes(f.read())
    except FileNotFoundError:
        pass
    key = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    atomic_write(path, key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    atomic_write(os.path.join(state_dir, PUB_NAME), key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    return key


def seal(key: Any, meta: dict[str, Any]) -> bytes:
    """The bytes of a seal file for `meta` (sha256, first_seq, last_seq, last_hash)."""
    body = dict(meta, v=1)
    body["sig"] = base64.b64encode(key.sign(_message(body))).decode("ascii")
    return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"


def load_public_key(state_dir: str) -> Any:
    """The public key to check seals with: from audit.key when present, else audit.pub.
    Raises AuditIntegrityError when neither exists."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    try:
        with open(os.path.join(state_dir, KEY_NAME), "rb") as f:
            return Ed25519PrivateKey.from_private_bytes(f.read()).public_key()
    except FileNotFoundError:
        pass
    try:
        with open(os.path.join(state_dir, PUB_NAME), "rb") as f:
            return Ed25519PublicKey.from_public_bytes(f.read())
    except FileNotFoundError:
        raise AuditIntegrityError(
            f"rotated audit files exist but no seal key ({KEY_NAME} or {PUB_NAME}) in {state_dir}",
            hint="the key was removed; the seals of rotated files cannot be checked") from None


def check_seal(public_key: Any, seal_bytes: bytes) -> dict[str, Any]:
    """Parse a seal and check its signature; return its fields. Raises ValueError when the seal
    is malformed or the signature does not match."""
    from cryptography.exceptions import InvalidSignature

    try:
        body = json.loads(seal_bytes)
        sig = base64.b64decode(body["sig"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise ValueError("seal is not valid JSON with a signature") from None
    if not isinstance(body, dict):
        raise ValueError("seal is not a JSON object")
    try:
        public_key.verify(sig, _message(body))
    except InvalidSignature:
        raise ValueError("seal signature does not match") from None
    return body
