"""End-to-end encryption between a caller and an agent, through a relay that sees only ciphertext.

Sans-IO: bytes in, bytes out; no files, no sockets. What it promises:
- A call's request (tool, input, cwd, session, whether to stream, the caller's clock at issue
  time, a fresh response key) is sealed to the agent's
  long-term public key with HPKE (RFC 9180, base mode) from `cryptography`, suite
  ML-KEM-768 + X25519 (hybrid post-quantum) / HKDF-SHA256 / ChaCha20-Poly1305. The HPKE `info`
  binds the protocol version, the call id and the target machine id, so a sealed request opens
  only for that call on that machine.
- The response (output chunks, then the result) comes back as frames under ChaCha20-Poly1305
  with the response key. Each frame's nonce is its sequence number, and its associated data binds
  the call id, the machine, the caller label, the sequence number and the frame kind: a frame
  tampered with, replayed, reordered, dropped, taken from another call, or a stream that ends
  without its final frame is rejected (`E2EError`). Which fd a chunk belongs to is inside the
  ciphertext.
- Optionally the caller signs the request body with Ed25519; an agent with `authorized_callers`
  refuses requests without a signature from one of them.
No primitive here is hand-made: HPKE, the AEAD and Ed25519 are `cryptography`'s.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import struct
import time
from dataclasses import dataclass, field, replace

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from cmdop.core.errors import E2EError

VERSION = 1
SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
MLKEM_PUBLIC = 1184
MLKEM_SEED = 64
X25519_LEN = 32
PUBLIC_LEN = MLKEM_PUBLIC + X25519_LEN          # an agent's public key on the wire
PRIVATE_LEN = MLKEM_SEED + X25519_LEN           # an agent's private key in its key file
RESPONSE_KEY_LEN = 32
_REQUEST_INFO = b"cmdop-e2e/1 request"
_RESPONSE_AAD = b"cmdop-e2e/1 response"
_SIGNED = b"cmdop-e2e/1 caller signature"
KIND_CHUNK = 1
KIND_FINAL = 2
_FIELDS = ("call_id", "machine_id", "caller", "tool", "input_json", "cwd", "session",
           "response_key", "issued_at", "stream", "signer", "signature")
_BYTES = ("input_json", "response_key", "signer", "signature")


def _lp(data: bytes) -> bytes:
    """Length-prefixed bytes: fields can never run into each other."""
    return struct.pack(">I", len(data)) + data


def _split(data: bytes, count: int) -> list[bytes]:
    """The `count` length-prefixed fields of `data`; E2EError on any other shape."""
    out, i = [], 0
    for _ in range(count):
        if i + 4 > len(data):
            raise E2EError("a sealed request is malformed")
        (n,) = struct.unpack_from(">I", data, i)
        i += 4
        if i + n > len(data):
            raise E2EError("a sealed request is malformed")
        out.append(data[i:i + n])
        i += n
    if i != len(data):
        raise E2EError("a sealed request is malformed")
    return out


# -- keys ----------------------------------------------------------------------------------


def generate_private() -> bytes:
    """A new agent key pair, as the PRIVATE_LEN bytes its key file holds (ML-KEM seed + X25519)."""
    m = mlkem.MLKEM768PrivateKey.generate()
    x = x25519.X25519PrivateKey.generate()
    return m.private_bytes_raw() + x.private_bytes_raw()


@dataclass(frozen=True)
class AgentKey:
    """An agent's loaded private key, and its public half as published."""

    private: hpke.MLKEM768X25519PrivateKey
    public: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)


def load_private(blob: bytes) -> AgentKey:
    """The key pair of a key file's bytes; E2EError when they are not one."""
    if len(blob) != PRIVATE_LEN:
        raise E2EError("the agent's end-to-end key is corrupt (wrong length)")
    try:
        m = mlkem.MLKEM768PrivateKey.from_seed_bytes(blob[:MLKEM_SEED])
        x = x25519.X25519PrivateKey.from_private_bytes(blob[MLKEM_SEED:])
    except ValueError:
        raise E2EError("the agent's end-to-end key is corrupt") from None
    public = m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
    return AgentKey(hpke.MLKEM768X25519PrivateKey(m, x), public)


@functools.lru_cache(maxsize=64)
def _public_key(public: bytes) -> hpke.MLKEM768X25519PublicKey:
    # Cached: a caller seals call after call to the same few hosts, and parsing an ML-KEM key
    # costs as much as a signature. Key objects are immutable; errors are never cached.
    if len(public) != PUBLIC_LEN:
        raise E2EError("the host's end-to-end key is malformed",
                       "the relay or the agent runs an incompatible version")
    try:
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(public[:MLKEM_PUBLIC]),
            x25519.X25519PublicKey.from_public_bytes(public[MLKEM_PUBLIC:]))
    except ValueError:
        raise E2EError("the host's end-to-end key is malformed") from None


def fingerprint(public: bytes) -> str:
    """`SHA256:` + unpadded base64 of the SHA-256 of a public key's bytes (ssh's style)."""
    digest = hashlib.sha256(public).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


# -- the request -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What a caller seals for one call. `caller` is the caller's own label (bound into every
    response frame); `signer`/`signature`: an Ed25519 public key and its signature over the
    rest, or empty. `issued_at` (the caller's clock, Unix seconds) lets the agent refuse a
    request replayed later; `stream` is sealed so a relay cannot flip it (an output streamed
    to nobody, or buffered and never shown, would be a silent truncation)."""

    call_id: str
    machine_id: str
    caller: str
    tool: str
    input_json: bytes
    cwd: str = ""
    session: str = ""
    response_key: bytes = b""
    issued_at: int = field(default_factory=lambda: int(time.time()))
    stream: bool = False
    signer: bytes = b""
    signature: bytes = b""

    def _fields(self) -> list[bytes]:
        def raw(v: object) -> bytes:
            if isinstance(v, bool):
                return b"1" if v else b""
            if isinstance(v, int):
                return str(v).encode("ascii")
            if isinstance(v, str):
                return v.encode("utf-8")
            assert isinstance(v, bytes)
            return v
        return [raw(getattr(self, f)) for f in _FIELDS]

    def signed_bytes(self) -> bytes:
        """The bytes a caller signature covers: every field but the signature itself."""
        return _SIGNED + b"".join(_lp(v) for v in self._fields()[:-1])

    def signer_fingerprint(self) -> str:
        return fingerprint(self.signer) if self.signer else ""


def request_info(call_id: str, machine_id: str) -> bytes:
    """The HPKE info of a call's sealed request: version, call id, machine id."""
    return _REQUEST_INFO + _lp(call_id.encode("utf-8")) + _lp(machine_id.encode("utf-8"))


def new_response_key() -> bytes:
    """A fresh random key for one call's response stream."""
    return ChaCha20Poly1305.generate_key()


def sign_request(request: Request, signing_key: ed25519.Ed25519PrivateKey,
                 signer: bytes = b"") -> Request:
    """`request` with its caller signature (and the signer's public key) filled in. `signer`:
    `signing_key`'s raw public key when the caller has it already (derived when empty)."""
    signer = signer or signing_key.public_key().public_bytes_raw()
    unsigned = replace(request, signer=signer, signature=b"")
    return replace(unsigned, signature=signing_key.sign(unsigned.signed_bytes()))


def request_body(request: Request) -> bytes:
    """The plaintext HPKE seals: every field, length-prefixed, in a fixed order."""
    return b"".join(_lp(v) for v in request._fields())


def parse_request_body(body: bytes, call_id: str, machine_id: str) -> Request:
    """The request of an opened body; E2EError when malformed or not for this call/machine."""
    raw = dict(zip(_FIELDS, _split(body, len(_FIELDS))))
    issued, stream = raw.pop("issued_at"), raw.pop("stream")
    # canonical forms only: one encoding per value, so what was signed is what is read
    if not (issued.isdigit() and issued.isascii() and len(issued) <= 12
            and (issued == b"0" or not issued.startswith(b"0"))) or stream not in (b"", b"1"):
        raise E2EError("a sealed request is malformed")
    try:
        text = {f: v.decode("utf-8") for f, v in raw.items() if f not in _BYTES}
    except UnicodeDecodeError:
        raise E2EError("a sealed request is malformed") from None
    request = Request(input_json=raw["input_json"], response_key=raw["response_key"],
                      signer=raw["signer"], signature=raw["signature"],
                      issued_at=int(issued), stream=stream == b"1", **text)
    if request.call_id != call_id or request.machine_id != machine_id:
        raise E2EError("the sealed request belongs to another call")
    if len(request.response_key) != RESPONSE_KEY_LEN:
        raise E2EError("a sealed request is malformed")
    return request


def seal_request(request: Request, agent_public: bytes) -> bytes:
    """The request sealed to the agent's public key: a version byte, then HPKE's enc || ct
    (single-shot base mode, empty AAD: exactly RFC 9180's SealBase)."""
    if len(request.response_key) != RESPONSE_KEY_LEN:
        raise ValueError("a request needs a fresh 32-byte response key")
    return bytes([VERSION]) + SUITE.encrypt(request_body(request), _public_key(agent_public),
                                            info=request_info(request.call_id, request.machine_id))


def open_request(sealed: bytes, key: AgentKey, call_id: str, machine_id: str) -> Request:
    """The request of a sealed call that the relay delivered as `call_id` to this machine;
    E2EError when it is not sealed to this key for exactly this call and machine, or malformed."""
    if not sealed or sealed[0] != VERSION:
        raise E2EError("the call is not end-to-end encrypted with a supported version",
                       "upgrade cmdop on the calling machine")
    try:
        body = SUITE.decrypt(sealed[1:], key.private, info=request_info(call_id, machine_id))
    except (InvalidTag, ValueError):
        raise E2EError("the sealed request does not open with this agent's key for this call",
                       "the caller may have pinned an older key of this host: "
                       "`cmdop connect trust HOST` on the caller") from None
    return parse_request_body(body, call_id, machine_id)


def verify_caller(request: Request, authorized: frozenset[bytes]) -> str:
    """The fingerprint of the caller key that signed `request`, one of `authorized` (raw Ed25519
    public keys); E2EError when it is unsigned, signed by another key, or the signature fails."""
    if not request.signer or request.signer not in authorized:
        raise E2EError("the call is not signed by an authorized caller key",
                       "add the caller's `cmdop connect key show-public` to authorized_callers")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(request.signer).verify(
            request.signature, request.signed_bytes())
    except (InvalidSignature, ValueError):
        raise E2EError("the caller signature on the call does not verify") from None
    return request.signer_fingerprint()


# -- the response stream ----------------------------------------------------------------------


def _nonce(seq: int) -> bytes:
    return seq.to_bytes(12, "big")


class _Stream:
    def __init__(self, key: bytes, call_id: str, machine_id: str, caller: str) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._prefix = (_RESPONSE_AAD + _lp(call_id.encode("utf-8"))
                        + _lp(machine_id.encode("utf-8")) + _lp(caller.encode("utf-8")))
        self.seq = 0

    def _aad(self, kind: int) -> bytes:
        return self._prefix + struct.pack(">QB", self.seq, kind)


class ResponseSealer(_Stream):
    """The agent's side: seals output chunks, then one final frame with the result."""

    def __init__(self, request: Request) -> None:
        super().__init__(request.response_key, request.call_id, request.machine_id,
                         request.caller)
        self.done = False
        self._buf = bytearray()        # fd + data of a chunk, reused: no fresh 1 MiB per chunk

    def _seal(self, kind: int, plaintext: bytes | memoryview) -> bytes:
        # The frame is the ciphertext alone: its kind is the message carrying it (Chunk or
        # Result) and, with the version, bound in the associated data; no header to copy.
        if self.done:
            raise E2EError("the response stream was already finished")
        frame = self._aead.encrypt(_nonce(self.seq), plaintext, self._aad(kind))
        self.seq += 1
        return frame

    def chunk(self, fd: int, data: bytes) -> bytes:
        """A sealed output chunk (its fd inside the ciphertext). Not thread-safe: one call's
        chunks are sealed one after the other."""
        n = len(data) + 1
        if len(self._buf) < n:
            self._buf = bytearray(n)
        view = memoryview(self._buf)[:n]
        view[0] = fd & 0xFF
        view[1:] = data
        return self._seal(KIND_CHUNK, view)

    def final(self, result_json: bytes) -> bytes:
        """The sealed final frame carrying the result; nothing may follow it."""
        frame = self._seal(KIND_FINAL, result_json)
        self.done = True
        return frame


class ResponseOpener(_Stream):
    """The caller's side: opens frames strictly in order, exactly once each."""

    def __init__(self, request: Request) -> None:
        super().__init__(request.response_key, request.call_id, request.machine_id,
                         request.caller)
        self.done = False

    def _open(self, frame: bytes, expect: int) -> bytes:
        if self.done:
            raise E2EError("the agent's response continued after its final frame")
        try:
            plain = self._aead.decrypt(_nonce(self.seq), frame, self._aad(expect))
        except (InvalidTag, ValueError):
            raise E2EError("a response frame failed authentication (tampered, replayed, "
                           "reordered or from another call)",
                           "the relay or the network altered the call's output") from None
        self.seq += 1
        return plain

    def chunk(self, frame: bytes) -> tuple[int, bytes]:
        """(fd, data) of the next output chunk."""
        plain = self._open(frame, KIND_CHUNK)
        if not plain:
            raise E2EError("a response frame is malformed or out of place")
        return plain[0], plain[1:]

    def final(self, frame: bytes) -> bytes:
        """The result bytes of the final frame; the stream is then complete."""
        plain = self._open(frame, KIND_FINAL)
        self.done = True
        return plain

    def finish(self) -> None:
        """The stream ended: E2EError unless its final frame arrived (truncation)."""
        if not self.done:
            raise E2EError("the agent's response ended without its final frame (truncated)",
                           "the relay or the network cut the call's output")
