"""The committed generated messages are exactly what the pinned grpcio-tools makes of
relay.proto, and they do not import grpc (the service glue is hand-written in one module)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROTO_DIR = Path(__file__).resolve().parents[2] / "cmdop" / "relay" / "proto"


def test_regenerating_gives_the_committed_bytes(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
                    f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                    str(PROTO_DIR / "relay.proto")], check=True, timeout=60)
    for name in ("relay_pb2.py", "relay_pb2.pyi"):
        assert (tmp_path / name).read_bytes() == (PROTO_DIR / name).read_bytes(), (
            f"{name} is stale: regenerate it (command at the top of relay.proto)")


def test_generated_messages_do_not_import_grpc() -> None:
    text = (PROTO_DIR / "relay_pb2.py").read_text()
    assert "import grpc" not in text


def test_protocol_version_and_frames_round_trip() -> None:
    from cmdop.relay.proto import relay_pb2 as pb

    frame = pb.AgentFrame(hello=pb.Hello(protocol_version=1, capabilities=["stream"],
                                         hostname="web01", machine_id="m1", agent_version="x"))
    back = pb.AgentFrame.FromString(frame.SerializeToString())
    assert back.WhichOneof("kind") == "hello" and back.hello.hostname == "web01"
