"""Red team of end-to-end encryption with real processes: a relay replaying sealed calls.

A sealed request is opaque to the relay, but it is a valid request: delivered again it would run
again. The relay (or whoever recorded its traffic) re-sends one here the ways a relay can: under
another caller's key (the outer call id gets another prefix), and after the agent restarted (its
in-memory duplicate list is gone). A user would notice the command running twice (an append, a
deploy, a payment); here the agent's audit log counts the runs. Also: the plaintext `stream` flag
is flipped, which would make the output vanish.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from relay_harness import Agent, Cluster, channel, sealed_start

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cluster = Cluster(tmp_path_factory.mktemp("e2e-redteam") / "net")
    try:
        relay = cluster.relay()
        keys = {n: relay.admin("key", "create", "demo", "--name", n)["key"]
                for n in ("ops", "dev", "eve")}
        relay.start()
        web = Agent(cluster, "web", keys["ops"], relay).start()
        yield SimpleNamespace(cluster=cluster, relay=relay, keys=keys, web=web)
        assert web.proc is not None and "Traceback" not in web.proc.log(), web.proc.log()
    finally:
        cluster.close()


def _send(net: Any, key: str, start: Any) -> list[Any]:
    from cmdop.relay.proto import relay_pb2 as pb

    with channel(net.relay, net.keys[key]) as ch:
        return list(ch.call(iter([pb.CallerFrame(start=start)]), timeout=30))


def _runs(net: Any, command: str) -> int:
    return sum(1 for r in net.web.home.audit()
               if r.get("target") == command and r.get("outcome") != "deny")


def test_a_recorded_sealed_call_runs_once_however_it_is_replayed(net: Any) -> None:
    command = f"echo replayed-{uuid.uuid4().hex[:10]}"
    start, opener = sealed_start(net.web, "execute_command", {"command": command})
    first = _send(net, "dev", start)
    assert opener.final(first[-1].result.result_json), first
    net.web.home.audit_for(command)
    # the same ciphertext, as another caller's call (the relay names it "<eve's key>:<id>")
    again = _send(net, "eve", start)
    assert again[-1].WhichOneof("kind") == "failure", again
    assert again[-1].failure.code == "e2e_refused" and "replay" in again[-1].failure.message
    # ... and once the agent restarted
    assert net.web.proc is not None
    net.web.proc.stop()
    net.web.start()
    later = _send(net, "dev", start)
    assert later[-1].WhichOneof("kind") == "failure", later
    assert later[-1].failure.code == "e2e_refused"
    assert _runs(net, command) == 1


def test_flipping_the_plaintext_stream_flag_does_not_hide_output(net: Any) -> None:
    """The caller sealed stream=True; the relay says stream=False: without the fix the agent
    buffers the output into the result, which `cmdop exec` never prints."""
    marker = f"streamed-{uuid.uuid4().hex[:10]}"
    start, opener = sealed_start(net.web, "execute_command", {"command": f"echo {marker}"},
                                 stream=True)
    start.stream = False
    events = _send(net, "dev", start)
    chunks = [opener.chunk(e.chunk.data) for e in events if e.WhichOneof("kind") == "chunk"]
    assert chunks == [(1, f"{marker}\n".encode())], events
    result = opener.final(events[-1].result.result_json)
    assert marker.encode() not in result
