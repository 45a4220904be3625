"""Three relay nodes as one relay, as an operator runs them: `cmdop relay serve --store
postgresql://… --bus redis://…` on three loopback ports, one real PostgreSQL (pg_server.py) and
one real redis-server (relay_cluster_net.py). The agent links to node A through a TCP forwarder that
stands for "one name in front of the nodes" (a load balancer: each connection to the first node
that answers); callers talk to node C. What a user notices: `cmdop exec` across nodes streams
and cancels; a revocation made through node B cuts a call that runs through A; node A killed
mid-call fails the call clearly, the agent comes back through B and nothing runs twice; a Redis
restart is survived.
"""

from __future__ import annotations

import json
import signal
from typing import Any, Iterator

import pytest

from pg_server import pg_or_skip, pg_server  # noqa: F401
from relay_cluster_net import open_net
from relay_harness import caller, procs_with_argv, unique_seconds, wait_for

pytestmark = [pytest.mark.network, pytest.mark.slow]

GONE_TIMEOUT_S = 30.0        # generous waits for "it ended"; no timing is asserted


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, pg_server: Any) -> Iterator[Any]:
    with open_net(tmp_path_factory, pg_server) as n:
        yield n


def _status(net: Any) -> dict[str, Any]:
    out = net.c.home.run("relay", "status", "--json")
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def _agents_by_node(net: Any) -> dict[str, int]:
    return {r["node"]: r["agents"] for r in _status(net)["nodes"]}


def test_exec_on_node_c_runs_on_the_agent_of_node_a_streaming_and_cancelling(net: Any) -> None:
    # (under xdist each worker has its own three nodes; a worker runs its tests in file order,
    # so node a is alive here and holds the agent)
    wait_for(lambda: _agents_by_node(net) == {"node-a": 1, "node-b": 0, "node-c": 0} or None,
             20, "relay status to show the agent on node a", every=0.5)
    out = net.ops.run("exec", net.agent.machine, "--", "seq", "1", "3")
    assert (out.returncode, out.stdout) == (0, "1\n2\n3\n"), out.stderr
    # 10 MB: more than the agent's credit window (4 MiB) and the relay's cap per call (8 MiB),
    # so it only completes if credits flow back across the nodes as the caller reads
    big = net.ops.home.run_bytes("exec", net.agent.machine, "--", "head", "-c", "10000000",
                                 "/dev/zero")
    assert big.returncode == 0, big.stderr
    assert len(big.stdout) == 10_000_000 and big.stdout.count(0) == 10_000_000
    hosts = json.loads(net.ops.run("hosts", "--json").stdout)
    assert [(h["name"], h["online"]) for h in hosts] == [(net.agent.machine, True)]

    secs = unique_seconds()
    remote = net.cluster.mark(["sleep", secs])
    proc = net.ops.popen(net.cluster, "exec", net.agent.machine, "--", "sleep", secs)
    wait_for(lambda: procs_with_argv(remote), 30, "the remote sleep to start")
    proc.proc.send_signal(signal.SIGINT)
    assert proc.proc.wait(timeout=GONE_TIMEOUT_S) == 130, proc.log()
    wait_for(lambda: not procs_with_argv(remote), GONE_TIMEOUT_S, "the remote sleep to be killed")

    status = _status(net)
    assert [r["node"] for r in status["nodes"]] == ["node-a", "node-b", "node-c"]
    assert all("bus_lag_ms" in r and "calls_per_s" in r for r in status["nodes"])
    human = net.c.home.run("relay", "status")
    assert human.returncode == 0 and "node-a" in human.stdout and "BUS LAG" in human.stdout


def test_a_revocation_made_through_node_b_cuts_a_call_running_through_node_a(net: Any) -> None:
    doomed = caller(net.cluster, "doomed", net.keys["doomed"]["key"], net.c)
    secs = unique_seconds()
    remote = net.cluster.mark(["sleep", secs])
    live = doomed.popen(net.cluster, "exec", net.agent.machine, "--", "sleep", secs)
    wait_for(lambda: procs_with_argv(remote), 30, "the remote sleep to start")
    net.b.admin("key", "revoke", net.keys["doomed"]["id"])
    assert live.proc.wait(timeout=GONE_TIMEOUT_S) == 4, live.log()
    assert "revoked" in live.log()
    wait_for(lambda: not procs_with_argv(remote), GONE_TIMEOUT_S, "the remote sleep to be killed")


def test_node_a_killed_mid_call_fails_it_clearly_and_the_agent_returns_through_b(net: Any) -> None:
    runs = net.agent.work / "runs.txt"
    secs = unique_seconds()
    remote = net.cluster.mark(["sleep", secs])
    target = f"echo run | tee -a {runs}; sleep {secs}"
    call = net.ops.popen(net.cluster, "exec", net.agent.machine, "--", target)
    wait_for(lambda: procs_with_argv(remote), 30, "the remote sleep to start")
    net.a.kill(signal.SIGKILL)
    assert call.proc.wait(timeout=GONE_TIMEOUT_S) == 5, call.log()
    assert "relay node holding" in call.log() and "Traceback" not in call.log(), call.log()
    wait_for(lambda: not procs_with_argv(remote), GONE_TIMEOUT_S, "the orphaned call to be killed")
    # the agent reconnects (with its backoff) through the front, which now reaches node b
    wait_for(lambda: _agents_by_node(net) == {"node-b": 1, "node-c": 0} or None, 60,
             "the agent to show on node b", every=0.5)
    out = net.ops.run("exec", net.agent.machine, "--", "seq", "1", "3")
    assert (out.returncode, out.stdout) == (0, "1\n2\n3\n"), out.stderr
    assert runs.read_text() == "run\n"                   # the lost call never ran again
    assert [r["decision"] for r in net.agent.home.audit() if r.get("target") == target] == ["allow"]


def test_routing_recovers_after_a_redis_restart(net: Any) -> None:
    net.redis.stop()
    out = net.ops.run("exec", net.agent.machine, "--", "seq", "1", "2")
    assert out.returncode == 5 and "Traceback" not in out.stderr, out.stderr
    net.redis.start()                                    # same port, empty: nothing persisted

    def works() -> Any:
        again = net.ops.run("exec", net.agent.machine, "--", "seq", "1", "3")
        return again if again.returncode == 0 else None
    again = wait_for(works, 60, "calls across nodes to work again", every=0.5)
    assert again.stdout == "1\n2\n3\n"
    wait_for(lambda: sum(_agents_by_node(net).values()) == 1, 20,
             "relay status to show the agent again", every=0.5)
    for node in (net.b, net.c):
        assert "Traceback" not in node.proc.log(), node.proc.log()
