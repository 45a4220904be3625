"""End-to-end encryption (cmdop.adapters.e2e): sealed requests and response streams reject every
tamper, replay, reorder, truncation and splice; honest streams give back exactly what was sent;
the HPKE framing interoperates with an independent implementation (pyhpke)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from hypothesis import given, settings, strategies as st

from cmdop.adapters import e2e
from cmdop.core.errors import E2EError

KEY = e2e.load_private(e2e.generate_private())
OTHER_KEY = e2e.load_private(e2e.generate_private())


def _request(call_id: str = "c1", machine: str = "m1", **kw: object) -> e2e.Request:
    fields: dict[str, object] = dict(call_id=call_id, machine_id=machine, caller="alice@ws",
                                     tool="execute_command",
                                     input_json=b'{"command": "echo secret"}', cwd="/tmp",
                                     session="", response_key=e2e.new_response_key())
    fields.update(kw)
    return e2e.Request(**fields)  # type: ignore[arg-type]


def test_key_file_round_trip_and_fingerprint() -> None:
    blob = e2e.generate_private()
    assert len(blob) == e2e.PRIVATE_LEN
    a, b = e2e.load_private(blob), e2e.load_private(blob)
    assert a.public == b.public and len(a.public) == e2e.PUBLIC_LEN
    assert a.fingerprint.startswith("SHA256:") and a.fingerprint != OTHER_KEY.fingerprint


@pytest.mark.parametrize("blob", [b"", b"x" * 95, b"x" * 97])
def test_corrupt_key_file_is_refused(blob: bytes) -> None:
    with pytest.raises(E2EError, match="corrupt"):
        e2e.load_private(blob)


def test_request_round_trip() -> None:
    req = _request()
    opened = e2e.open_request(e2e.seal_request(req, KEY.public), KEY, "c1", "m1")
    assert opened == req


@pytest.mark.parametrize("key,call_id,machine,match", [
    (OTHER_KEY, "c1", "m1", "does not open"),      # sealed to another agent's key
    (KEY, "c2", "m1", "does not open"),            # relay delivers it as another call
    (KEY, "c1", "m2", "does not open"),            # ... or to another machine
])
def test_request_bound_to_key_call_and_machine(key: e2e.AgentKey, call_id: str, machine: str,
                                               match: str) -> None:
    sealed = e2e.seal_request(_request(), KEY.public)
    with pytest.raises(E2EError, match=match):
        e2e.open_request(sealed, key, call_id, machine)


def test_request_text_is_not_in_the_sealed_bytes() -> None:
    sealed = e2e.seal_request(_request(), KEY.public)
    assert b"echo secret" not in sealed and b"execute_command" not in sealed


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_bit_flip_in_a_sealed_request_is_rejected(data: st.DataObject) -> None:
    sealed = bytearray(e2e.seal_request(_request(), KEY.public))
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    sealed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(E2EError):
        e2e.open_request(bytes(sealed), KEY, "c1", "m1")


def test_plaintext_or_unknown_version_is_refused() -> None:
    with pytest.raises(E2EError, match="not end-to-end encrypted"):
        e2e.open_request(b"", KEY, "c1", "m1")
    sealed = e2e.seal_request(_request(), KEY.public)
    with pytest.raises(E2EError, match="not end-to-end encrypted"):
        e2e.open_request(b"\x02" + sealed[1:], KEY, "c1", "m1")


# -- caller signatures -------------------------------------------------------------------------

SIGNER = ed25519.Ed25519PrivateKey.generate()
SIGNER_PUB = SIGNER.public_key().public_bytes_raw()


def test_signed_request_verifies_for_an_authorized_key() -> None:
    req = e2e.sign_request(_request(), SIGNER)
    opened = e2e.open_request(e2e.seal_request(req, KEY.public), KEY, "c1", "m1")
    assert e2e.verify_caller(opened, frozenset({SIGNER_PUB})) == e2e.fingerprint(SIGNER_PUB)


@pytest.mark.parametrize("case", ["unsigned", "other_key", "altered_input"])
def test_unauthorized_callers_are_denied(case: str) -> None:
    req = _request() if case == "unsigned" else e2e.sign_request(_request(), SIGNER)
    authorized = frozenset({SIGNER_PUB})
    if case == "other_key":
        authorized = frozenset({ed25519.Ed25519PrivateKey.generate().public_key()
                                .public_bytes_raw()})
    if case == "altered_input":     # whoever seals anew cannot keep the caller's signature
        req = e2e.Request(**{**req.__dict__, "input_json": b'{"command": "rm -rf /"}'})
    with pytest.raises(E2EError):
        e2e.verify_caller(req, authorized)


# -- response streams --------------------------------------------------------------------------


Frame = tuple[int, bytes]          # (kind: the message carrying it, Chunk or Result; bytes)


def _stream(req: e2e.Request, parts: list[tuple[int, bytes]], result: bytes) -> list[Frame]:
    sealer = e2e.ResponseSealer(req)
    return ([(e2e.KIND_CHUNK, sealer.chunk(fd, d)) for fd, d in parts]
            + [(e2e.KIND_FINAL, sealer.final(result))])


def _read(req: e2e.Request, frames: list[Frame]) -> tuple[list[tuple[int, bytes]], bytes]:
    """Open frames as the caller does: chunks, then the final frame, then the stream's end."""
    opener = e2e.ResponseOpener(req)
    out, result = [], b""
    for kind, frame in frames:
        if kind == e2e.KIND_FINAL:
            result = opener.final(frame)
        else:
            out.append(opener.chunk(frame))
    opener.finish()
    return out, result


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=64)), max_size=12),
       st.binary(max_size=64))
def test_honest_streams_give_back_exactly_what_was_sent(parts: list[tuple[int, bytes]],
                                                        result: bytes) -> None:
    req = _request()
    assert _read(req, _stream(req, parts, result)) == (parts, result)


PARTS = [(1, b"out-1"), (2, b"err-1"), (1, b"out-2")]


def _attacks(frames: list[Frame], other: list[Frame]) -> dict[str, list[Frame]]:
    return {
        "replayed": frames[:1] + frames,
        "reordered": [frames[1], frames[0]] + frames[2:],
        "dropped": frames[1:],
        "truncated": frames[:-1],
        "truncated_to_nothing": [],
        "after_final": frames + [frames[0]],
        "spliced_chunk": [frames[0], other[1]] + frames[2:],
        "spliced_final": frames[:-1] + other[-1:],
        "final_as_chunk": frames[:-1] + [(e2e.KIND_CHUNK, frames[-1][1])] + frames[-1:],
        "chunk_as_final": [(e2e.KIND_FINAL, frames[0][1])],
    }


@pytest.mark.parametrize("attack", list(_attacks([(0, b"")] * 4, [(0, b"")] * 4)))
def test_stream_attacks_are_rejected(attack: str) -> None:
    req = _request()
    frames = _stream(req, PARTS, b'{"exit_code": 0}')
    # the same call id, machine and caller: only the fresh response key tells them apart
    other = _stream(_request(), PARTS, b'{"exit_code": 0}')
    with pytest.raises(E2EError):
        _read(req, _attacks(frames, other)[attack])


@pytest.mark.parametrize("field,value", [("call_id", "c2"), ("machine_id", "m2"),
                                         ("caller", "mallory@ws")])
def test_response_bound_to_call_machine_and_caller(field: str, value: str) -> None:
    req = _request()
    frames = _stream(req, PARTS, b"{}")
    with pytest.raises(E2EError):
        _read(e2e.Request(**{**req.__dict__, field: value}), frames)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_bit_flip_in_any_response_frame_is_rejected(data: st.DataObject) -> None:
    req = _request()
    frames = _stream(req, PARTS, b'{"exit_code": 0}')
    i = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[i][1])
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    frames[i] = (frames[i][0], bytes(frame))
    with pytest.raises(E2EError):
        _read(req, frames)


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(4)), st.integers(0, 4))
def test_any_other_order_or_length_is_rejected(order: list[int], keep: int) -> None:
    req = _request()
    frames = _stream(req, PARTS, b"{}")
    mangled = [frames[i] for i in order][:keep]
    if mangled == frames:
        return
    with pytest.raises(E2EError):
        _read(req, mangled)


def test_fd_is_inside_the_ciphertext() -> None:
    req = _request()
    a = e2e.ResponseSealer(req).chunk(1, b"x")
    b = e2e.ResponseSealer(req).chunk(2, b"x")
    assert len(a) == len(b) == 1 + 1 + 16 and a != b


# -- known answer: the HPKE framing is RFC 9180's, checked with pyhpke --------------------------

CLASSIC = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def _pyhpke_suite():  # type: ignore[no-untyped-def]
    pyhpke = pytest.importorskip("pyhpke")
    return pyhpke, pyhpke.CipherSuite.new(pyhpke.KEMId.DHKEM_X25519_HKDF_SHA256,
                                          pyhpke.KDFId.HKDF_SHA256,
                                          pyhpke.AEADId.CHACHA20_POLY1305)


def test_hpke_interop_cryptography_seals_pyhpke_opens() -> None:
    pyhpke, suite = _pyhpke_suite()
    sk = x25519.X25519PrivateKey.generate()
    req = _request()
    info = e2e.request_info(req.call_id, req.machine_id)
    sealed = CLASSIC.encrypt(e2e.request_body(req), sk.public_key(), info=info)
    enc, ct = sealed[:32], sealed[32:]
    recipient = suite.create_recipient_context(enc, pyhpke.KEMKey.from_pyca_cryptography_key(sk),
                                               info=info)
    body = recipient.open(ct, aad=b"")
    assert e2e.parse_request_body(body, "c1", "m1") == req


def test_hpke_interop_pyhpke_seals_cryptography_opens() -> None:
    pyhpke, suite = _pyhpke_suite()
    sk = x25519.X25519PrivateKey.generate()
    req = _request()
    info = e2e.request_info(req.call_id, req.machine_id)
    enc, sender = suite.create_sender_context(
        pyhpke.KEMKey.from_pyca_cryptography_key(sk.public_key()), info=info)
    ct = sender.seal(e2e.request_body(req), aad=b"")
    body = CLASSIC.decrypt(enc + ct, sk, info=info)
    assert e2e.parse_request_body(body, "c1", "m1") == req
    with pytest.raises(Exception):      # the info binding is HPKE's own, not ours
        CLASSIC.decrypt(enc + ct, sk, info=e2e.request_info("c2", "m1"))
