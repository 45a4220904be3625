"""The local socket protocol's framing: round trips, limits, and incremental decoding."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmdop.daemon import protocol

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=6), st.integers(1, 7))
def test_frames_round_trip_whatever_the_chunking(obj, chunk):
    data = protocol.encode(obj) * 2
    buf = protocol.FrameBuffer()
    got = []
    for i in range(0, len(data), chunk):
        buf.feed(data[i:i + chunk])
        while (msg := buf.next()) is not None:
            got.append(msg)
    assert got == [obj, obj]


def test_header_is_big_endian_length():
    frame = protocol.encode({"a": 1})
    (n,) = struct.unpack(">I", frame[:4])
    assert n == len(frame) - 4 and json.loads(frame[4:]) == {"a": 1}


def test_oversized_frames_are_refused_both_ways():
    with pytest.raises(protocol.ProtocolError) as exc:
        protocol.frame_length(struct.pack(">I", protocol.MAX_FRAME + 1))
    assert exc.value.code == "too_large"
    with pytest.raises(protocol.ProtocolError):
        protocol.encode({"x": "y" * (protocol.MAX_FRAME + 1)})


@pytest.mark.parametrize("body", [b"\xff\xfe", b"not json", b"[1,2]", b"42", b'"s"'])
def test_bodies_that_are_not_objects_are_protocol_errors(body):
    with pytest.raises(protocol.ProtocolError) as exc:
        protocol.decode(body)
    assert exc.value.code == "bad_json"


def test_responses_echo_the_request_id_and_version():
    assert protocol.ok(7, {"a": 1}) == {"v": 1, "id": 7, "ok": True, "result": {"a": 1}}
    err = protocol.error("x", "bad_request", "nope", "try again")
    assert err["id"] == "x" and err["ok"] is False
    assert err["error"] == {"code": "bad_request", "message": "nope", "hint": "try again"}
