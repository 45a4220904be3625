"""The relay between hosts: an agent and a caller in network namespaces of their own, each
joined to the relay's namespace by a veth pair and nothing else (they cannot reach each other).

What it shows beyond the loopback tests: the agent needs no listening port (it only dials out),
the caller reaches the agent's machine through the relay alone, and the certificate pin holds
when the relay is addressed by an IP on another interface. Skipped where network namespaces
cannot be made (not root, no `ip`, a container without CAP_NET_ADMIN).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from relay_harness import PY, Cluster, Home, Relay, wait_for

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


class Netns:
    """A namespace `name` joined to the root namespace by a veth pair on 10.213.N.0/30."""

    def __init__(self, n: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name = f"cmdopt-{tag}"
        self.outer, self.inner = f"cto{tag}", f"cti{tag}"
        self.relay_ip, self.ip = f"10.213.{n}.1", f"10.213.{n}.2"
        for args in (("netns", "add", self.name),
                     ("link", "add", self.outer, "type", "veth", "peer", "name", self.inner),
                     ("link", "set", self.inner, "netns", self.name),
                     ("addr", "add", f"{self.relay_ip}/30", "dev", self.outer),
                     ("link", "set", self.outer, "up"),
                     ("-n", self.name, "addr", "add", f"{self.ip}/30", "dev", self.inner),
                     ("-n", self.name, "link", "set", self.inner, "up"),
                     ("-n", self.name, "link", "set", "lo", "up")):
            out = _ip(*args)
            if out.returncode:
                self.close()
                raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def close(self) -> None:
        _ip("link", "del", self.outer)
        _ip("netns", "del", self.name)


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[tuple[Cluster, Netns, Netns]]:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    made: list[Netns] = []
    try:
        for n in (1, 2):
            made.append(Netns(n))
    except RuntimeError as exc:
        for ns in made:
            ns.close()
        pytest.skip(f"cannot make network namespaces here: {exc}")
    cluster = Cluster(tmp_path / "c")
    try:
        yield cluster, made[0], made[1]
    finally:
        cluster.close()
        for ns in made:
            ns.close()


def _listening_tcp(ns: Netns) -> list[str]:
    out = subprocess.run(ns.argv("ss", "-Hltn"), capture_output=True, text=True, timeout=30)
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_an_agent_and_a_caller_on_separate_hosts_meet_only_through_the_relay(two_hosts: Any) -> None:
    cluster, agent_ns, caller_ns = two_hosts
    relay = Relay(cluster, cluster.root / "relay-data")
    relay.admin("workspace", "create", "demo")
    key = relay.admin("key", "create", "demo", "--name", "ops")["key"]
    relay.proc = cluster.spawn([PY, "-m", "cmdop", "relay", "serve", "--listen",
                                f"0.0.0.0:{relay.port}", "--data-dir", str(relay.data_dir),
                                "--json"], relay.home, "relay")
    proc = relay.proc

    def started() -> str | None:
        return next((json.loads(line)["fingerprint"] for line in proc.log().splitlines()
                     if line.startswith("{")), None)

    fingerprint = wait_for(started, 30, "the relay's start line")

    agent = cluster.home("agent")
    agent.store_key(key, "demo", f"{agent_ns.relay_ip}:{relay.port}", fingerprint)
    agent.write_policy()
    cluster.procs.append(_spawn_in(cluster, agent_ns, agent))

    caller = cluster.home("caller")
    caller.store_key(key, "demo", f"{caller_ns.relay_ip}:{relay.port}", fingerprint)

    def hosts() -> list[dict[str, Any]] | None:
        out = _run_in(caller_ns, caller, "hosts", "--json")
        rows = json.loads(out.stdout) if out.returncode == 0 else []
        return rows if any(r["online"] for r in rows) else None

    name = wait_for(hosts, 40, "the agent online on the relay", every=0.5)[0]["name"]
    out = _run_in(caller_ns, caller, "exec", name, "--", "seq", "1", "3")
    assert (out.returncode, out.stdout) == (0, "1\n2\n3\n"), out.stderr
    assert _listening_tcp(agent_ns) == []                # the agent dials out; it listens on nothing
    # the two hosts cannot reach each other: only the relay joins them
    probe = subprocess.run(caller_ns.argv(PY, "-c", "import socket; socket.create_connection("
                                          f"('{agent_ns.ip}', {relay.port}), timeout=2)"),
                           capture_output=True, timeout=30)
    assert probe.returncode != 0


def _spawn_in(cluster: Cluster, ns: Netns, home: Home) -> Any:
    from relay_harness import Proc

    return Proc(ns.argv(PY, "-m", "cmdop", "agent", "run"), home.env,
                cluster.root / f"agent-{ns.name}.log", home.root, "agent")


def _run_in(ns: Netns, home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ns.argv(PY, "-m", "cmdop", *args), env=home.env, capture_output=True,
                          text=True, timeout=60, cwd=home.root)
