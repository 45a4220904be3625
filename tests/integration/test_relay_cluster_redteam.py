"""Red team of three relay nodes with real processes (relay_cluster_net.py: PostgreSQL, a
redis-server, nodes a/b/c, the agent on a, the caller on c). What an operator or user would
notice: what Redis sees of a call crossing it, and a node crashed and restarted at once by its
supervisor with the same --node-id."""

from __future__ import annotations

import signal
import threading
from typing import Any, Iterator

import pytest

from pg_server import pg_or_skip, pg_server  # noqa: F401
from relay_cluster_net import open_net
from relay_harness import wait_for

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, pg_server: Any) -> Iterator[Any]:
    with open_net(tmp_path_factory, pg_server, "relay-cluster-redteam") as n:
        yield n


class Monitor:
    """`MONITOR` on the redis-server: every command any node sends it, as text."""

    def __init__(self, port: int) -> None:
        import redis

        self.client = redis.Redis(port=port, socket_timeout=30)
        self.pinger = redis.Redis(port=port, socket_timeout=30)
        self.seen: list[str] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        with self.client.monitor() as m:
            self.ready.set()
            for info in m.listen():
                self.seen.append(str(info.get("command", "")))
                if self.stop.is_set():
                    return

    def close(self) -> str:
        self.stop.set()
        self.pinger.ping()                    # one more command, so listen() returns
        self.thread.join(10)
        return "\n".join(self.seen)


def test_a_call_crossing_nodes_puts_no_command_text_or_output_into_redis(net: Any) -> None:
    # The calls are sealed end to end: the bus must carry only ciphertext of the command and
    # of its output (a MONITOR capture is what someone reading Redis's traffic sees).
    blob = net.agent.work / "cmdopinmarker91.txt"    # the name is in the command only,
    blob.write_text("cmdopout" + "4729\n")             # the content in the output only
    monitor = Monitor(net.redis.port)
    try:
        out = net.ops.run("exec", net.agent.machine, "--", "cat", str(blob))
    finally:
        seen = monitor.close()
    assert (out.returncode, out.stdout) == (0, "cmdopout4729\n"), out.stderr
    assert "cmdop:relay:node:node-a" in seen          # the call did cross the bus
    assert "cmdopinmarker91" not in seen and "cmdopout4729" not in seen


def test_one_callers_burst_of_large_calls_does_not_fail_other_users_calls(net: Any) -> None:
    # Inputs of ~3.5 MB each, 32 at once, from one caller on node c to the agent on node a.
    # Redis queued them on node a's subscription and dropped it past 32 MB
    # (client-output-buffer-limit pubsub: "scheduled to be closed ASAP for overcoming of
    # output buffer limits"), so every call crossing to node a failed, other users' included;
    # and node a ended the agent's link as "not reading" past 32 MiB queued for it.
    from concurrent.futures import ThreadPoolExecutor

    from relay_harness import caller, channel, procs_with_argv, sealed_start, unique_seconds
    from cmdop.relay.proto import relay_pb2 as pb

    bystander = caller(net.cluster, "bystander", net.keys["doomed"]["key"], net.c)
    secs = unique_seconds(6)
    remote = net.cluster.mark(["sleep", secs])
    other = bystander.popen(net.cluster, "exec", net.agent.machine, "--", "sleep", secs)
    wait_for(lambda: procs_with_argv(remote), 30, "the bystander's sleep to start")

    def big_call(i: int) -> str:
        start, _ = sealed_start(net.agent, "read_file", {"path": f"/{i}" + "x" * 3_500_000})
        with channel(net.c, net.keys["ops"]["key"]) as ch:
            events = list(ch.call(iter([pb.CallerFrame(start=start)]), timeout=60))
        last = events[-1] if events else pb.CallEvent()
        return last.failure.code if last.WhichOneof("kind") == "failure" else str(
            last.WhichOneof("kind"))

    with ThreadPoolExecutor(32) as pool:
        ends = list(pool.map(big_call, range(32)))
    # each either ran or was refused alone, as "host_busy" (the agent's link stays up)
    assert "result" in ends and set(ends) <= {"result", "host_busy"}, ends
    assert other.proc.wait(timeout=60) == 0, other.log()


def test_a_node_crashed_and_restarted_at_once_with_its_id_comes_back(net: Any) -> None:
    # Its registration outlives it by up to 5 s: the restarted node was refused ("in use by a
    # live node") and, under a supervisor's restart limit, stayed down for good.
    net.c.kill(signal.SIGKILL)
    net.c.start()
    assert "Traceback" not in net.c.proc.log()
    out = net.ops.run("exec", net.agent.machine, "--", "seq", "1", "2")
    assert (out.returncode, out.stdout) == (0, "1\n2\n"), out.stderr
