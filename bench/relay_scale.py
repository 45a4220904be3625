"""Several relay nodes at scale: three `cmdop relay serve` nodes sharing one PostgreSQL store
and one Redis bus, measured in the same run.

    .venv/bin/python bench/relay_scale.py [--quick] [--agents 5000] [--rounds 500]
                                          [--seconds 5] [--json]

--quick: 300 idle agents, 100 rounds, 2 s per saturation step (~1 minute). The full run (5,000
agents) takes a few minutes, most of it the 5,000 TLS handshakes.

Set-up (a throw-away directory): a PostgreSQL server (tests/integration/pg_server.py: initdb,
a Unix socket), a redis-server on a free loopback port (no persistence), three relay nodes on
free loopback ports with one certificate, `--node-id node-a|b|c`, the store and bus URLs in
CMDOP_RELAY_STORE / CMDOP_RELAY_BUS. One workspace, one key.

Sections:
 1. cross-node hop: a fake agent (a helper process: a raw AgentLink on node A answering every
    call with an empty Result at once: no gate, no sandbox) and plaintext calls to it from a
    RelayChannel on node A (same node) and one on node C (across the bus) in this process,
    rounds interleaved; the extra latency of the hop = median(C) - median(A). Target <= 1 ms.
 2. saturation: caller helper processes (4 threads each, one channel per thread on node C)
    calling the fake agent on A for --seconds per step, 1, 2, 4 and 8 processes; calls/s per
    step; saturation = the best step.
 3. idle agents: --agents links spread round-robin over the three nodes by helper processes
    (bench/remote.py --idle-agents: one TLS connection and AgentLink per agent, a Hello, then
    nothing). Per node: VmRSS before and after (all welcomed), per idle agent = delta / its
    agents; the time to link them all; `cmdop relay status --json` after (agents per node).
 4. section 1 again with the idle agents linked (and enrolled in the store).

No timing is asserted: the exit status is 0 unless the set-up fails.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

import remote as _remote  # noqa: E402  (rss_kb, summary, raise_nofile, the idle-agent helper)

PY = sys.executable
NODES = ("a", "b", "c")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class World:
    """PostgreSQL, Redis and three relay nodes in `tmp` (module docstring)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: dict[str, int] = {}
        self.pids: dict[str, int] = {}
        self.fingerprint = ""
        self.key = ""
        self.pg: Any = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CMDOP_", "XDG_"))}
        env.update(HOME=str(self.tmp), PYTHONPATH=str(REPO), GRPC_VERBOSITY="ERROR",
                   CMDOP_RELAY_STORE=self.dsn, CMDOP_RELAY_BUS=self.bus)
        return env

    def start(self) -> None:
        from pg_server import PgServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("relay_scale: PostgreSQL server binaries not found (.ci/setup)")
        redis = shutil.which("redis-server")
        if redis is None:
            raise SystemExit("relay_scale: redis-server not found (.ci/setup)")
        self.pg = PgServer(bindir).start()
        self.dsn = self.pg.create_database()
        rport = _free_port()
        self.bus = f"redis://127.0.0.1:{rport}/0"
        self.procs.append(subprocess.Popen(
            [redis, "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", str(self.tmp), "--maxclients", "10000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait(lambda: _answers(rport), 20, "redis-server")
        from cmdop.relay.tls import CERT_NAME, KEY_NAME, ensure_certificate

        dirs = {n: self.tmp / f"relay-{n}" for n in NODES}
        for d in dirs.values():
            d.mkdir(mode=0o700)
        ensure_certificate(str(dirs["a"]), ["cmdop-relay"])
        for n in NODES[1:]:
            for name in (CERT_NAME, KEY_NAME):
                shutil.copy2(dirs["a"] / name, dirs[n] / name)
        self.cli("relay", "workspace", "create", "demo", "--data-dir", str(dirs["a"]))
        self.key = json.loads(self.cli("relay", "key", "create", "demo", "--name", "bench",
                                       "--data-dir", str(dirs["a"]), "--json"))["key"]
        for n in NODES:
            port = _free_port()
            log = open(self.tmp / f"relay-{n}.log", "wb")
            p = subprocess.Popen(
                [PY, "-m", "cmdop", "relay", "serve", "--listen", f"127.0.0.1:{port}",
                 "--data-dir", str(dirs[n]), "--node-id", f"node-{n}", "--oauth-listen", "off",
                 "--new-machines-per-hour", "1000000", "--json", "--log-level", "warning"],
                env=self.env(), stdout=subprocess.PIPE, stderr=log)
            log.close()
            self.procs.append(p)
            assert p.stdout is not None
            line = p.stdout.readline().decode()
            if not line.startswith("{"):
                raise SystemExit(f"relay node {n} did not start: "
                                 f"{(self.tmp / f'relay-{n}.log').read_text()[-2000:]}")
            info = json.loads(line)
            self.fingerprint = info["fingerprint"]
            self.ports[n], self.pids[n] = port, p.pid
        _wait(lambda: len(self.status()["nodes"]) == 3, 20, "three nodes in relay status")

    def cli(self, *args: str) -> str:
        out = subprocess.run([PY, "-m", "cmdop", *args], env=self.env(), capture_output=True)
        if out.returncode:
            raise SystemExit(f"relay_scale: cmdop {' '.join(args[:3])} failed: "
                             f"{out.stderr.decode()[-1000:]}")
        return out.stdout.decode()

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.cli("relay", "status", "--json"))
        return doc

    def address(self, node: str) -> str:
        return f"127.0.0.1:{self.ports[node]}"

    def channel(self, node: str) -> Any:
        from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint

        return RelayChannel(RelayEndpoint(self.address(node), fingerprint=self.fingerprint),
                            self.key)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.pg is not None:
            self.pg.remove()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _wait(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise SystemExit(f"relay_scale: timed out waiting for {what}")
        time.sleep(0.2)


class FakeAgent:
    """An agent link on `node` that answers every call with an empty Result at once."""

    def __init__(self, w: Any, node: str, name: str) -> None:
        from cmdop.daemon.relay_link import CAPABILITIES, PROTOCOL_VERSION
        from cmdop.relay.proto import relay_pb2 as pb

        self.pb = pb
        self.out: queue.Queue[Any] = queue.Queue()
        self.out.put(pb.AgentFrame(hello=pb.Hello(
            protocol_version=PROTOCOL_VERSION, capabilities=list(CAPABILITIES), hostname=name,
            machine_id=uuid.uuid4().hex, agent_version="bench")))
        self.channel = w.channel(node)
        self.stream = self.channel.agent_link(self._frames(), timeout=3600)
        first = next(iter(self.stream))
        self.machine = first.welcome.machine
        threading.Thread(target=self._serve, daemon=True).start()

    def _frames(self) -> Iterator[Any]:
        while True:
            frame = self.out.get()
            if frame is None:
                return
            yield frame

    def _serve(self) -> None:
        pb = self.pb
        try:
            for frame in self.stream:
                kind = frame.WhichOneof("kind")
                if kind == "call":
                    self.out.put(pb.AgentFrame(result=pb.Result(call_id=frame.call.call_id,
                                                                result_json=b"{}")))
                elif kind == "ping":
                    self.out.put(pb.AgentFrame(pong=frame.ping))
        except Exception:  # noqa: BLE001 - the link ends when the bench stops
            pass

    def close(self) -> None:
        self.out.put(None)
        self.stream.cancel()
        self.channel.close()


def fake_agent_main(address: str, fingerprint: str, key: str) -> int:
    """Helper process: one FakeAgent until stdin closes; prints its machine name."""
    from types import SimpleNamespace

    from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint

    w = SimpleNamespace(channel=lambda node: RelayChannel(
        RelayEndpoint(address, fingerprint=fingerprint), key))
    agent = FakeAgent(w, "", f"fake-{uuid.uuid4().hex[:6]}")
    print(agent.machine, flush=True)
    sys.stdin.read()
    agent.close()
    return 0


def callers_main(address: str, fingerprint: str, key: str, host: str, threads: int,
                 seconds: float) -> int:
    """Helper process: `threads` callers, each with its own channel, for `seconds`; prints
    the number of calls done."""
    from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint
    from cmdop.relay.caller import remote_call

    channels = [RelayChannel(RelayEndpoint(address, fingerprint=fingerprint), key)
                for _ in range(threads)]
    for ch in channels:                       # connected before the clock starts
        remote_call(ch, host, "execute_command", {"command": "true"}, plaintext=True,
                    deadline_s=30)
    counts = [0] * threads
    print("ready", flush=True)
    sys.stdin.readline()                      # go
    end = time.monotonic() + seconds

    def worker(k: int) -> None:
        while time.monotonic() < end:
            remote_call(channels[k], host, "execute_command", {"command": "true"},
                        plaintext=True, deadline_s=30)
            counts[k] += 1

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(sum(counts), flush=True)
    for ch in channels:
        ch.close()
    return 0


def start_fake_agent(w: World, node: str) -> tuple[subprocess.Popen[bytes], str]:
    p = subprocess.Popen([PY, __file__, "--fake-agent", w.address(node), "--fingerprint",
                          w.fingerprint], env=w.env(), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write((w.key + "\n").encode())
    p.stdin.flush()
    return p, p.stdout.readline().decode().strip()


def section_idle(w: World, agents: int, per_process: int) -> dict[str, Any]:
    before = {n: _remote.rss_kb(w.pids[n]) for n in NODES}
    helpers: list[subprocess.Popen[bytes]] = []
    per_node = {n: agents // 3 + (1 if i < agents % 3 else 0) for i, n in enumerate(NODES)}
    t0 = time.perf_counter()
    for n in NODES:
        left, k = per_node[n], 0
        while left > 0:
            count = min(per_process, left)
            h = subprocess.Popen(
                [PY, str(REPO / "bench" / "remote.py"), "--idle-agents", str(count), "--relay",
                 w.address(n), "--fingerprint", w.fingerprint, "--prefix", f"idle-{n}{k}"],
                env=w.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert h.stdin is not None
            h.stdin.write((w.key + "\n").encode())
            h.stdin.flush()
            helpers.append(h)
            left -= count
            k += 1
    for h in helpers:
        assert h.stdout is not None
        line = h.stdout.readline().decode()
        if not line.startswith("ready"):
            raise SystemExit(f"relay_scale: an idle-agent helper failed: {line!r}")
    linked_s = time.perf_counter() - t0
    time.sleep(3)
    after = {n: max(_remote.rss_kb(w.pids[n]) for _ in range(3)) for n in NODES}
    _wait(lambda: sum(r["agents"] for r in w.status()["nodes"]) >= agents, 30,
          "relay status to count every idle agent")
    status = w.status()
    return {"agents": agents, "helpers": helpers, "link_all_s": linked_s,
            "per_node": {n: {"agents": per_node[n], "rss_before_kb": before[n],
                             "rss_after_kb": after[n],
                             "per_agent_kb": (after[n] - before[n]) / max(1, per_node[n])}
                         for n in NODES},
            "status_agents": {r["node"]: r["agents"] for r in status["nodes"]}}


def section_hop(w: World, machine: str, rounds: int) -> dict[str, Any]:
    from cmdop.relay.caller import remote_call

    channels = {"same_node": w.channel("a"), "cross_node": w.channel("c")}
    times: dict[str, list[float]] = {k: [] for k in channels}
    try:
        for i in range(rounds + 20):
            order = list(channels.items()) if i % 2 else list(reversed(channels.items()))
            for name, ch in order:
                t = time.perf_counter()
                remote_call(ch, machine, "execute_command", {"command": f"true {i}"},
                            plaintext=True, deadline_s=30)
                if i >= 20:                       # warm-up rounds are not counted
                    times[name].append(time.perf_counter() - t)
    finally:
        for ch in channels.values():
            ch.close()
    out: dict[str, Any] = {k: _remote.summary(v) for k, v in times.items()}
    out["extra_ms"] = (statistics.median(times["cross_node"])
                       - statistics.median(times["same_node"])) * 1000
    return out


def section_saturation(w: World, machine: str, seconds: float) -> dict[str, Any]:
    steps = []
    for n in (1, 2, 4, 8):
        procs = [subprocess.Popen([PY, __file__, "--callers", w.address("c"), "--fingerprint",
                                   w.fingerprint, "--host", machine, "--seconds", str(seconds)],
                                  env=w.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                 for _ in range(n)]
        for p in procs:
            assert p.stdin is not None
            p.stdin.write((w.key + "\n").encode())
            p.stdin.flush()
        for p in procs:                       # their channels connected, waiting for "go"
            assert p.stdout is not None
            if p.stdout.readline().decode().strip() != "ready":
                raise SystemExit("relay_scale: a caller helper failed")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        total = 0
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 120)
            total += int(out.decode().strip().splitlines()[-1])
        steps.append({"processes": n, "threads": 4 * n, "calls_per_s": total / seconds})
    best = max(steps, key=lambda s: s["calls_per_s"])
    return {"steps": steps, "saturation_calls_per_s": best["calls_per_s"],
            "at_processes": best["processes"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 agents, 100 rounds, 2 s steps")
    ap.add_argument("--agents", type=int, default=None, help="idle agents over 3 nodes (5000)")
    ap.add_argument("--per-process", type=int, default=500, help="idle agents per helper")
    ap.add_argument("--rounds", type=int, default=None, help="hop latency rounds (500)")
    ap.add_argument("--seconds", type=float, default=None, help="per saturation step (5)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--fake-agent", default="", help=argparse.SUPPRESS)
    ap.add_argument("--callers", default="", help=argparse.SUPPRESS)
    ap.add_argument("--fingerprint", default="", help=argparse.SUPPRESS)
    ap.add_argument("--host", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fake_agent:
        return fake_agent_main(args.fake_agent, args.fingerprint, sys.stdin.readline().strip())
    if args.callers:
        return callers_main(args.callers, args.fingerprint, sys.stdin.readline().strip(),
                            args.host, 4, args.seconds or 5.0)
    agents = args.agents or (300 if args.quick else 5000)
    rounds = args.rounds or (100 if args.quick else 500)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    _remote.raise_nofile()                    # the nodes inherit it: ~1,700 sockets each
    tmp = Path(tempfile.mkdtemp(prefix="cmdop-relay-scale-"))
    w = World(tmp)
    helpers: list[subprocess.Popen[bytes]] = []
    agent: subprocess.Popen[bytes] | None = None
    try:
        w.start()
        agent, machine = start_fake_agent(w, "a")
        hop = section_hop(w, machine, rounds)
        sat = section_saturation(w, machine, seconds)
        idle = section_idle(w, agents, args.per_process)
        helpers = idle.pop("helpers")
        hop_loaded = section_hop(w, machine, max(50, rounds // 5))
    finally:
        if agent is not None:
            agent.communicate(timeout=30)
        for h in helpers:
            try:
                assert h.stdin is not None
                h.stdin.write(b"stop\n")
                h.stdin.close()
                h.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                h.kill()
        w.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"idle": idle, "hop": hop, "saturation": sat, "hop_with_idle_agents": hop_loaded,
              "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for k in ("same_node", "cross_node"):
        h = hop[k]
        print(f"1. {k:10s}: median {h['median_ms']:.3f} ms, p99 {h['p99_ms']:.3f} ms "
              f"({h['n']} calls)")
    met = "met" if hop["extra_ms"] <= 1.0 else "NOT met"
    print(f"   cross-node hop extra latency (median): {hop['extra_ms']:.3f} ms "
          f"(target <= 1 ms: {met})")
    steps = ", ".join(f"{st['threads']}: {st['calls_per_s']:.0f}" for st in sat["steps"])
    print(f"2. calls/s across nodes by caller threads: {steps}; saturation "
          f"{sat['saturation_calls_per_s']:.0f} calls/s")
    print(f"3. idle agents: {agents} over 3 nodes, linked in {idle['link_all_s']:.1f} s; "
          f"relay status counts {idle['status_agents']}")
    for n, row in idle["per_node"].items():
        print(f"   node-{n}: {row['agents']} agents, RSS {row['rss_before_kb'] / 1024:.1f} -> "
              f"{row['rss_after_kb'] / 1024:.1f} MB, {row['per_agent_kb']:.1f} KB per idle agent")
    print(f"4. with them: same node {hop_loaded['same_node']['median_ms']:.3f} ms, cross node "
          f"{hop_loaded['cross_node']['median_ms']:.3f} ms median; extra "
          f"{hop_loaded['extra_ms']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
