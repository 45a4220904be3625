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


@pytest.mark.parametrize("body, says", [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"v":1,"id":' + b"9" * 5000 + b',"op":"ping"}', "limit (4300"),  # 3.10 words the rest otherwise
    (b'{"v":1,"id":-' + b"9" * 4301 + b',"op":"ping"}', "limit (4300"),
])
def test_hostile_nesting_and_huge_integers_are_bad_json_not_crashes(body, says):
    # RecursionError and the int-from-string digit limit (a ValueError) used to escape decode
    with pytest.raises(protocol.ProtocolError) as exc:
        protocol.decode(body)
    assert exc.value.code == "bad_json" and says in exc.value.message


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])
def test_non_finite_numbers_are_bad_json(literal):
    # Python reads them, JSON has no such values: echoing `"id": NaN` was invalid JSON
    for body in (b'{"v":1,"id":' + literal + b',"op":"ping"}', b'{"a":[1,{"b":' + literal + b"}]}"):
        with pytest.raises(protocol.ProtocolError) as exc:
            protocol.decode(body)
        assert exc.value.code == "bad_json"


def test_ordinary_numbers_deep_but_sane_nesting_and_4300_digits_still_decode():
    assert protocol.decode(b'{"a":1.5e3,"b":-0.25,"c":1e308,"d":-7}') == {
        "a": 1500.0, "b": -0.25, "c": 1e308, "d": -7}
    deep = protocol.decode(b'{"a":' + b"[" * 200 + b"]" * 200 + b"}")
    assert isinstance(deep["a"], list)
    assert protocol.decode(b'{"n":' + b"9" * 4300 + b"}")["n"] == int("9" * 4300)


def test_the_frame_buffer_reports_hostile_frames_as_protocol_errors():
    buf = protocol.FrameBuffer()
    body = b'{"v":1,"id":NaN,"op":"ping"}'
    buf.feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(protocol.ProtocolError) as exc:
        buf.next()
    assert exc.value.code == "bad_json"
