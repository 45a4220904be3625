"""The server's frame reader drops slow, idle, truncated and oversized clients."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing

from cmdop.daemon import protocol
from cmdop.daemon.local_server import FrameReader


def _reader_with(chunks, close=True, **read_kw):
    async def main():
        client, server = trio.testing.memory_stream_pair()
        for c in chunks:
            await client.send_all(c)
        if close:
            await client.aclose()
        reader = FrameReader(server)  # type: ignore[arg-type]
        return [await reader.read(**read_kw), await reader.read(**read_kw)]
    return trio.run(main)


def test_two_frames_in_pieces_then_clean_eof():
    data = protocol.encode({"op": "ping"}) + protocol.encode({"op": "status"})
    got = _reader_with([data[:3], data[3:9], data[9:]])
    assert got == [{"op": "ping"}, {"op": "status"}]
    assert _reader_with([])[0] is None


def test_truncated_frame_is_an_error():
    with pytest.raises(protocol.ProtocolError) as exc:
        _reader_with([struct.pack(">I", 50) + b"{}"])
    assert exc.value.code == "truncated"


def test_slow_frame_is_dropped(monkeypatch):
    monkeypatch.setattr(protocol, "FRAME_TIMEOUT_S", 0.05)
    with pytest.raises(protocol.ProtocolError) as exc:
        _reader_with([struct.pack(">I", 50) + b"{"], close=False)
    assert exc.value.code == "slow"


def test_idle_connection_is_dropped():
    with pytest.raises(protocol.ProtocolError) as exc:
        _reader_with([], close=False, idle_s=0.05)
    assert exc.value.code == "idle"


def test_oversized_announcement_is_refused_before_reading_the_body():
    with pytest.raises(protocol.ProtocolError) as exc:
        _reader_with([struct.pack(">I", protocol.MAX_FRAME + 1)], close=False)
    assert exc.value.code == "too_large"
