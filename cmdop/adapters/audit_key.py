"""The per-machine Ed25519 key that seals rotated audit files and authenticates the chain head.

Files in the state dir: `audit.key` (raw 32-byte private seed, 0600, atomic write) and
`audit.pub` (raw 32-byte public key, 0600, written beside it so a verifier without the private
key, or a copy of the log elsewhere, can still check seals).

The audit writer creates `audit.key` at its first append (`load_or_create_seed`: an Ed25519
private key is any 32 random bytes, so no `cryptography` is needed) because the chain head's MAC
(`cmdop.core.audit.head_mac_key`) is keyed from it from the first line on. `audit.pub` needs
`cryptography` to derive, so it is written at the first seal (`load_or_create_key` adds it when
it is missing). Only a holder of `audit.key` can check the head's MAC; `audit.pub` checks seals.

A seal is `audit.log.N.sig`, one JSON object: `{"v": 1, "sha256": HEX of the file's bytes,
"first_seq", "last_seq", "last_hash", "sig": base64 Ed25519 signature}` where the signature is
over the canonical JSON of every other field. It rotates together with its file.

`cryptography` is imported only here and only when a key is used, so `cmdop --version` and
plain appends stay fast. A process that has not loaded it (the daemon) seals in a short-lived
child (`seal_elsewhere`, ≈ 0.1 s once per rotated 10 MB) rather than carrying its ~10 MB of
native code for the rest of its life; Ed25519 is deterministic, so the seal is the same bytes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from typing import Any

from cmdop.adapters.secure_file import atomic_write, check_not_writable, check_private
from cmdop.core.audit import canonical_json
from cmdop.core.errors import AuditIntegrityError, SecretFileError

KEY_NAME = "audit.key"
PUB_NAME = "audit.pub"
SEED_BYTES = 32


def _read_seed(path: str) -> bytes:
    with open(path, "rb") as f:
        seed = f.read(SEED_BYTES + 1)
    if len(seed) != SEED_BYTES:
        raise ValueError(f"{path} is not a {SEED_BYTES}-byte key")
    return seed


def load_or_create_seed(state_dir: str) -> bytes:
    """The 32 bytes of `audit.key`, created (random, 0600, atomically) when missing. Call with
    the audit lock held so two processes never create two keys. Raises SecretFileError when the
    file is readable by others or not ours, ValueError when it is not 32 bytes, OSError when it
    cannot be read or written."""
    path = os.path.join(state_dir, KEY_NAME)
    check_private(path)
    try:
        return _read_seed(path)
    except FileNotFoundError:
        pass
    seed = os.urandom(SEED_BYTES)
    atomic_write(path, seed)
    return seed


def read_seed(state_dir: str) -> bytes | None:
    """The 32 bytes of `audit.key` for checking the chain head, None when there is no such file.
    Raises AuditIntegrityError when it exists but cannot be read or is not a key."""
    path = os.path.join(state_dir, KEY_NAME)
    _trusted(path)
    try:
        return _read_seed(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuditIntegrityError(f"cannot read {path} to check the chain head: {exc}") from None


def _trusted(path: str, public: bool = False) -> None:
    """A key that others could read or replace proves nothing: whoever could have forged the
    chain head or the seals with it. AuditIntegrityError (never "chain ok") when so. A public
    key (`public`) may be readable by all, but not writable by others or theirs."""
    try:
        if public:
            check_not_writable(path)
        else:
            check_private(path)
    except SecretFileError as exc:
        raise AuditIntegrityError(
            f"{exc.message}: a log checked with it proves nothing (whoever could read or replace "
            "the key could have rewritten the log undetected)",
            hint=f"{exc.hint}, then treat the log up to now as unverified") from None


def _message(meta: dict[str, Any]) -> bytes:
    return b"cmdop-audit-seal-v1\n" + canonical_json({k: v for k, v in meta.items() if k != "sig"})


def load_or_create_key(state_dir: str) -> Any:
    """The machine's Ed25519 private key, created on first use, with `audit.pub` written beside
    it when missing. Call with the audit lock held so two processes never create two keys."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.from_private_bytes(load_or_create_seed(state_dir))
    pub = os.path.join(state_dir, PUB_NAME)
    if not os.path.exists(pub):  # a key the audit writer created at its first append
        atomic_write(pub, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    return key


def seal(key: Any, meta: dict[str, Any]) -> bytes:
    """The bytes of a seal file for `meta` (sha256, first_seq, last_seq, last_hash)."""
    body = dict(meta, v=1)
    body["sig"] = base64.b64encode(key.sign(_message(body))).decode("ascii")
    return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"


SEAL_TIMEOUT_S = 60.0


def seal_elsewhere(state_dir: str, meta: dict[str, Any]) -> bytes:
    """`seal(load_or_create_key(state_dir), meta)`, computed in this process when `cryptography`
    is already loaded, else in a child Python that exits after signing. Raises OSError when the
    child cannot run or fails (its error in the message)."""
    if "cryptography" in sys.modules:
        return seal(load_or_create_key(state_dir), meta)
    # The child finds cmdop and its dependencies where this process found them (a checkout, a
    # virtualenv or the zipapp's unpacked copy).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p and os.path.isdir(p)))
    try:
        r = subprocess.run([sys.executable, "-m", "cmdop.adapters.audit_key", state_dir],
                           input=json.dumps(meta).encode("utf-8"), capture_output=True, env=env,
                           timeout=SEAL_TIMEOUT_S, close_fds=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OSError(f"the sealing process did not run: {exc}") from None
    if r.returncode != 0 or not r.stdout.endswith(b"\n"):
        detail = r.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {r.returncode}"]
        raise OSError(f"the sealing process failed: {detail[0]}")
    return r.stdout


def _seal_main(argv: list[str]) -> int:
    """`python -m cmdop.adapters.audit_key STATE_DIR` < meta JSON: the seal bytes on stdout."""
    meta = json.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(seal(load_or_create_key(argv[0]), meta))
    return 0


def load_public_key(state_dir: str) -> Any:
    """The public key to check seals with: from audit.key when present, else audit.pub.
    Raises AuditIntegrityError when neither exists."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    _trusted(os.path.join(state_dir, KEY_NAME))
    try:
        with open(os.path.join(state_dir, KEY_NAME), "rb") as f:
            return Ed25519PrivateKey.from_private_bytes(f.read()).public_key()
    except FileNotFoundError:
        pass
    _trusted(os.path.join(state_dir, PUB_NAME), public=True)
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


if __name__ == "__main__":
    sys.exit(_seal_main(sys.argv[1:]))
