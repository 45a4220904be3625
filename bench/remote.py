"""Remote calls through the relay against ssh, and the relay's memory per idle agent, all measured
in the same run.

    .venv/bin/python bench/remote.py [--quick] [--rounds 500] [--proc-rounds 100]
                                     [--stream-rounds 5] [--agents 1000] [--json] [--keep]
                                     [--only-e2e]

--quick: 30 / 3 / 1 rounds and 200 idle agents (~30 s). The full run takes ~2-3 minutes.
--only-e2e: section 6 alone (--rounds round trips and --stream-rounds streams each way; no sshd).

Set-up (a throw-away directory; nothing outside it is touched but /run/sshd, which sshd needs):
a real `cmdop relay serve` on a free localhost port with a workspace and a key; agent A (the
target: `cmdop agent run` with rules allowing `true *`, `echo *` and `head *`), agent B (a
caller's own agent: its open relay link carries that machine's `cmdop exec`, like ssh's
ControlMaster), and caller home C (the key stored, no agent: `cmdop exec` opens its own TLS
connection). Host names are the ones the relay gave the agents (`agent status`, as in
`cmdop hosts`). The ssh baseline is a throw-away sshd on another free port (bench/_sshd.py): its
own host key, one authorized key, the remote `bash -c` reading no rc file, like cmdop's.

Sections (rows inside a section run round-robin, one of each per round in a rotating order, so
machine noise hits every row alike; warm-up rounds first, not counted; round i's command carries
i, so no two rounds send the same input):
 1. warm round trip: `remote_call(channel, A, execute_command, "true i")` in this process on one
    RelayChannel kept open, vs the whole process `ssh -o ControlMaster=auto ... true i` over a
    persisted master. Target <= 0.5x. For where the time goes: the same call through agent
    B's link from this process (socket connect + relay_call, read to the end), and a local call
    on agent A's own socket (gate + sandbox + audit, no relay).
 2. whole `cmdop exec A -- echo i` through agent B, vs `ssh` (ControlMaster) `echo i`.
    Target <= 2x.
 3. cold: `cmdop exec A -- echo i` from home C (no agent: a new TLS connection; with the pinned
    fingerprint, the certificate fetch is a TLS handshake of its own) vs `ssh` on a new
    connection. Target <= 1x. Sections 2 and 3 share their rounds, with three floors for where
    the time goes: `python -c pass`, `cmdop version` (interpreter + CLI) and, in this process,
    a new RelayChannel + one call + close (TLS and grpc set-up without the interpreter).
 4. streaming: `head -c (100 MiB + i) /dev/zero` through `cmdop exec` direct (home C) and
    through agent B, vs `ssh host head -c ...` on a new connection; stdout is a pipe this
    process reads and counts. MiB/s of the whole process (start to exit). Target >= 1x ssh.
 5. relay RSS with --agents simulated idle agents: helper processes (this script,
    --idle-agents, --agents-per-process links each) open one RelayChannel per agent (its own
    TCP+TLS connection: channels with their own credentials share no subchannel; the relay's
    socket count before and after shows it) and an AgentLink stream sending a Hello (protocol
    1, a hostname, a unique machine id) and nothing after; VmRSS of the relay before and after
    (welcome received by all), per agent = delta / agents, extrapolated to 10,000 (RSS before
    + 10,000 x per agent). Target <= 100 KB per idle agent.
 6. end-to-end encryption on vs off, same run, rows interleaved: the warm round trip (`true i`,
    remote_call on one open channel: sealed to A's key, the key asked of the relay and checked
    against the pin, vs `plaintext=True`), and 100 MiB streamed in-process (`head -c`, chunks
    opened and counted in this process) sealed vs plaintext. Agent A runs with `e2e_required:
    false` so it takes both. Target: E2E at most 10 % slower (round trip: median time ratio
    <= 1.10; streaming: throughput ratio >= 1/1.10).

Times are wall times (time.perf_counter) with this interpreter (sys.executable, an absolute path,
never a pyenv shim). Prints median / p99 / max and ratios of medians against the baseline of the
same run; CPU per call (or per 100 MiB) of each process involved (this one, the timed child
processes, the relay, agents A and B, sshd, the ssh ControlMaster), read outside the timed
interval; then a summary of each target: met or not met. No timing is asserted: the exit status
is 0 unless the set-up fails. Without a usable sshd the ssh baselines are skipped, with the reason.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import resource
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from _daemon import REPO, isolated_env, start_agent
from _sshd import Sshd, SshdUnavailable, free_port

PY = sys.executable
MIB = 1024 * 1024
STREAM_BYTES = 100 * MIB
WARMUP = 5
TARGETS: dict[str, tuple[str, str, Callable[[float], bool]]] = {  # (what, target, met(value))
    "warm": ("1. warm round trip: in-process relay call / ssh ControlMaster process", "<= 0.5x",
             lambda v: v <= 0.5),
    "exec_agent": ("2. cmdop exec via local agent / ssh ControlMaster (whole processes)", "<= 2x",
                   lambda v: v <= 2.0),
    "cold": ("3. cold cmdop exec, new TLS / ssh, new connection", "<= 1x", lambda v: v <= 1.0),
    "stream": ("4. streaming 100 MiB, cmdop exec direct / ssh (throughput)", ">= 1x",
               lambda v: v >= 1.0),
    "rss": ("5. relay RSS per idle agent (KB)", "<= 100 KB", lambda v: v <= 100.0),
    "e2e_rt": ("6. warm round trip, E2E on / off (time)", "<= 1.10x", lambda v: v <= 1.10),
    "e2e_stream": ("6. streaming 100 MiB in-process, E2E on / off (time)", "<= 1.10x",
                   lambda v: v <= 1.10),
}


# -- small helpers ------------------------------------------------------------------------------

def summary(seconds: list[float]) -> dict[str, float]:
    """n, median, p99 (nearest rank) and max, in ms."""
    s = sorted(seconds)
    p99 = s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]
    return {"n": len(s), "median_ms": statistics.median(s) * 1000, "p99_ms": p99 * 1000,
            "max_ms": s[-1] * 1000}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sockets(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants, with their reaped children's."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += sum(int(x) for x in fields[11:15])   # utime stime cutime cstime
            for task in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo += [int(k) for k in kids]
        except OSError:
            continue
    return total / tick


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_checked(argv: list[str], env: dict[str, str] | None, cwd: str | None = None,
                stdin: bytes | None = None) -> str:
    out = subprocess.run(argv, env=env, cwd=cwd, input=stdin, capture_output=True)
    if out.returncode:
        raise SystemExit(f"set-up step failed ({out.returncode}): {shlex.join(argv)}\n"
                         f"{out.stderr.decode(errors='replace')}")
    return out.stdout.decode()


def rounds(ops: dict[str, Callable[[int], None]], n: int, warmup: int = WARMUP,
           start: int = 0, probes: dict[str, Callable[[], float]] | None = None
           ) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """Every op once per round, the order rotating; (wall seconds per op after warm-up, CPU ms
    per op of each probe: read just outside the timed interval, averaged over the rounds)."""
    names = list(ops)
    probes = probes or {}
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, dict[str, float]] = {name: dict.fromkeys(probes, 0.0) for name in names}
    for i in range(warmup + n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            before = {p: f() for p, f in probes.items()} if i >= warmup else {}
            t0 = time.perf_counter()
            ops[name](start + i)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
                for p, f in probes.items():
                    cpu[name][p] += (f() - before[p]) * 1000 / n
    return times, cpu


def cpu_probes(w: "World") -> dict[str, Callable[[], float]]:
    """CPU seconds so far of: this process (all threads), the processes it waited for (the
    timed commands), the relay, agent A's and agent B's process trees (the sandbox fork server
    and the commands it reaped included), sshd's tree (its sessions, once reaped) and the ssh
    ControlMaster client process."""
    probes: dict[str, Callable[[], float]] = {
        "bench": time.process_time, "children": children_cpu,
        "relay": lambda: tree_cpu(w.relay.pid), "agent_a": lambda: tree_cpu(w.agent_a.pid),
        "agent_b": lambda: tree_cpu(w.agent_b.pid)}
    if w.sshd is not None:
        pid, master = w.sshd.proc.pid, w.ssh_master
        probes["sshd"] = lambda: tree_cpu(pid)
        if master:
            probes["ssh_mux"] = lambda: tree_cpu(master)
    return probes


def expect(out: subprocess.CompletedProcess[bytes], stdout: bytes, what: str) -> None:
    if out.returncode != 0 or out.stdout != stdout:
        raise RuntimeError(f"{what}: exit {out.returncode}, stdout {out.stdout[:200]!r} "
                           f"(expected {stdout!r}), stderr {out.stderr[-500:]!r}")


# -- the set-up ----------------------------------------------------------------------------------

class World:
    """Relay, agents A and B, caller home C, and (when possible) sshd, under one temp dir."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sshd: Sshd | None = None
        self.ssh_skip = ""
        self.ssh_master = 0
        self.envs: dict[str, dict[str, str]] = {}

    def env(self, name: str) -> dict[str, str]:
        if name not in self.envs:
            base = self.tmp / name
            home = base / "home"
            home.mkdir(parents=True, mode=0o700)
            (base / "run").mkdir(mode=0o700)
            self.envs[name] = isolated_env(base, home)
        return self.envs[name]

    def cli(self, name: str, *args: str, stdin: bytes | None = None) -> str:
        env = self.env(name)
        return run_checked([PY, "-m", "cmdop", *args], env, cwd=env["HOME"], stdin=stdin)

    def start_relay(self) -> None:
        data = str(self.tmp / "relay-data")
        self.cli("admin", "relay", "workspace", "create", "bench", "--data-dir", data)
        self.key = json.loads(self.cli("admin", "relay", "key", "create", "bench", "--name",
                                       "bench", "--data-dir", data, "--json"))["key"]
        env = self.env("admin")
        for _ in range(3):   # a free port may be taken between the probe and the bind
            port = free_port()
            out_path = self.tmp / "relay.out"
            with open(out_path, "wb") as out, open(self.tmp / "relay.log", "ab") as log:
                proc = subprocess.Popen(
                    [PY, "-m", "cmdop", "relay", "serve", "--listen", f"127.0.0.1:{port}",
                     "--data-dir", data, "--json", "--log-level", "warning",
                     # the idle-agent section enrols ~1,000 machines with one key
                     "--new-machines-per-hour", "100000"],
                    env=env, cwd=env["HOME"], stdin=subprocess.DEVNULL, stdout=out, stderr=log)
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                text = out_path.read_text()
                if text.endswith("\n"):
                    info = json.loads(text.splitlines()[0])
                    self.relay, self.address = proc, f"127.0.0.1:{info['port']}"
                    self.fingerprint = info["fingerprint"]
                    self.procs.append(proc)
                    return
                time.sleep(0.05)
            proc.kill()
            proc.wait()
        raise SystemExit(f"the relay did not start: {(self.tmp / 'relay.log').read_text()[-2000:]}")

    def start_agents(self) -> None:
        for name in ("a", "b", "c"):
            self.cli(name, "connect", "key", "set", "--workspace", "bench", "--relay",
                     self.address, "--relay-fingerprint", self.fingerprint, "-",
                     stdin=(self.key + "\n").encode())
        for rule in ("execute_command(true *)", "execute_command(echo *)",
                     "execute_command(head *)"):
            self.cli("a", "permissions", "add", rule, "--action", "allow")
        # A takes plaintext calls too, so section 6 compares E2E on and off in one run.
        cfg = Path(self.env("a")["CMDOP_CONFIG_DIR"])
        cfg.mkdir(parents=True, exist_ok=True, mode=0o700)
        (cfg / "config.yaml").write_text("e2e_required: false\n")
        (cfg / "config.yaml").chmod(0o600)
        self.hosts: dict[str, str] = {}
        for name in ("a", "b"):
            env = self.env(name)
            proc, client = start_agent(env, Path(env["HOME"]))
            self.procs.append(proc)
            deadline = time.monotonic() + 30
            while True:
                relay = client.status().get("relay") or {}
                if relay.get("state") == "online" and relay.get("machine"):
                    self.hosts[name] = relay["machine"]
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"agent {name} did not link to the relay: {relay}")
                time.sleep(0.05)
            client.close()
            if name == "a":
                self.agent_a = proc
            else:
                self.agent_b = proc
        listed = json.loads(self.cli("c", "hosts", "--json"))
        online = {h["name"] for h in listed if h["online"]}
        if not set(self.hosts.values()) <= online:
            raise SystemExit(f"`cmdop hosts` does not list {self.hosts} online: {listed}")

    def start_sshd(self) -> None:
        try:
            self.sshd = Sshd.start(self.tmp / "ssh")
        except SshdUnavailable as exc:
            self.ssh_skip = str(exc)
            return
        except (OSError, subprocess.SubprocessError) as exc:
            self.ssh_skip = f"sshd could not be started: {exc}"
            return
        # The ControlMaster: started once (untimed), it persists for 60 s after the last use.
        subprocess.run(self.sshd.argv(["true"], master=True), stdin=subprocess.DEVNULL,
                       capture_output=True, check=True)
        self.ssh_master = self.sshd.master_pid()

    def stop(self) -> None:
        if self.sshd is not None:
            self.sshd.stop()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- sections 1-3 ---------------------------------------------------------------------------

def section_warm(w: World, n: int) -> dict[str, Any]:
    from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint
    from cmdop.daemon.client import DaemonClient
    from cmdop.relay.caller import remote_call

    host = w.hosts["a"]
    channel = RelayChannel(RelayEndpoint(w.address, fingerprint=w.fingerprint), w.key)
    sock_b = w.env("b")["CMDOP_SOCKET_PATH"]

    def relay(i: int) -> None:
        r = remote_call(channel, host, "execute_command", {"command": f"true {i}"},
                        cmdop_home=w.env("c")["CMDOP_HOME"])
        if not (isinstance(r, dict) and r.get("exit_code") == 0):
            raise RuntimeError(f"remote_call true {i}: {r}")

    # Through agent B's link, sealed end to end by this process as `cmdop exec` does (agents
    # refuse plaintext relay calls): the host's key asked once, as a pinned name is.
    home_b = w.env("b")["CMDOP_HOME"]
    with DaemonClient.connect(sock_b) as client:
        key_answer = client.relay_host_key(host)

    def via_agent(i: int) -> None:
        from cmdop.relay.sealing import seal_from_answer

        sealed, name = seal_from_answer(home_b, key_answer, "execute_command",
                                        {"command": f"true {i}"}, requested=host)
        with DaemonClient.connect(sock_b) as client:
            last: dict[str, Any] = {}
            for event in client.relay_call(name, sealed.sealed, sealed.call_id, stream=False,
                                           deadline_ms=60_000):
                last = event
        if last.get("event") != "result":
            raise RuntimeError(f"relay_call via agent B, true {i}: {last}")
        result = sealed.result(base64.b64decode(str(last.get("sealed") or "")))
        if not (isinstance(result, dict) and result.get("exit_code") == 0):
            raise RuntimeError(f"relay_call via agent B, true {i}: {result}")

    sock_a, cwd_a = w.env("a")["CMDOP_SOCKET_PATH"], w.env("a")["HOME"]
    local_a = DaemonClient.connect(sock_a)

    def local(i: int) -> None:
        r = local_a.call_tool("execute_command", {"command": f"true {i}"}, cwd_a)
        if not (isinstance(r, dict) and r.get("exit_code") == 0):
            raise RuntimeError(f"local call on agent A, true {i}: {r}")

    ops: dict[str, Callable[[int], None]] = {"relay": relay, "via_agent": via_agent,
                                             "local_a": local}
    if w.sshd is not None:
        argv = w.sshd.argv(["true"], master=True)

        def ssh_cm(i: int) -> None:
            expect(subprocess.run(argv + [str(i)], stdin=subprocess.DEVNULL, capture_output=True),
                   b"", f"ssh ControlMaster true {i}")
        ops["ssh_cm"] = ssh_cm
    try:
        times, cpu = rounds(ops, n, probes=cpu_probes(w))
    finally:
        channel.close()
        local_a.close()
    return {"rows": {name: summary(t) for name, t in times.items()}, "cpu_ms": cpu}


def section_processes(w: World, n: int) -> dict[str, Any]:
    from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint
    from cmdop.relay.caller import remote_call

    host = w.hosts["a"]
    env_b, env_c = w.env("b"), w.env("c")

    def exec_via(env: dict[str, str], what: str) -> Callable[[int], None]:
        def op(i: int) -> None:
            out = subprocess.run([PY, "-m", "cmdop", "exec", host, "--", "echo", f"bench-{i}"],
                                 env=env, cwd=env["HOME"], stdin=subprocess.DEVNULL,
                                 capture_output=True)
            expect(out, f"bench-{i}\n".encode(), what)
        return op

    def version(i: int) -> None:
        out = subprocess.run([PY, "-m", "cmdop", "version"], env=env_c, cwd=env_c["HOME"],
                             stdin=subprocess.DEVNULL, capture_output=True)
        if out.returncode:
            raise RuntimeError(f"cmdop version: {out.stderr!r}")

    def bare(i: int) -> None:
        subprocess.run([PY, "-c", "pass"], env=env_c, stdin=subprocess.DEVNULL, check=True)

    def cold_inproc(i: int) -> None:
        with RelayChannel(RelayEndpoint(w.address, fingerprint=w.fingerprint), w.key) as ch:
            r = remote_call(ch, host, "execute_command", {"command": f"echo bench-{i}"},
                            cmdop_home=w.env("c")["CMDOP_HOME"],
                            on_chunk=lambda fd, data: None)
        if not (isinstance(r, dict) and r.get("exit_code") == 0):
            raise RuntimeError(f"cold in-process call: {r}")

    ops: dict[str, Callable[[int], None]] = {
        "exec_agent": exec_via(env_b, "cmdop exec through agent B"),
        "exec_direct": exec_via(env_c, "cmdop exec direct (home C)"),
        "version": version, "python": bare, "cold_inproc": cold_inproc}
    if w.sshd is not None:
        sshd = w.sshd

        def ssh(master: bool) -> Callable[[int], None]:
            def op(i: int) -> None:
                out = subprocess.run(sshd.argv(["echo", f"bench-{i}"], master=master),
                                     stdin=subprocess.DEVNULL, capture_output=True)
                expect(out, f"bench-{i}\n".encode(), f"ssh echo (master={master})")
            return op
        ops["ssh_cm"] = ssh(True)
        ops["ssh_new"] = ssh(False)
    times, cpu = rounds(ops, n, warmup=2, start=100_000, probes=cpu_probes(w))
    return {"rows": {name: summary(t) for name, t in times.items()}, "cpu_ms": cpu}


# -- section 4 --------------------------------------------------------------------------------

def section_stream(w: World, n: int) -> dict[str, Any]:
    host = w.hosts["a"]
    probes = {k: f for k, f in cpu_probes(w).items() if k != "bench"}

    def streamer(argv_for: Callable[[int], list[str]], env: dict[str, str] | None,
                 runs: list[dict[str, Any]]) -> Callable[[int], None]:
        def op(i: int) -> None:
            size = STREAM_BYTES + i
            cpu0 = {k: f() for k, f in probes.items()}
            err = tempfile.TemporaryFile()
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv_for(size), env=env, cwd=(env or {}).get("HOME"),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
            assert proc.stdout is not None
            fd, got = proc.stdout.fileno(), 0
            while True:
                chunk = os.read(fd, MIB)
                if not chunk:
                    break
                got += len(chunk)
            rc = proc.wait()
            dt = time.perf_counter() - t0
            proc.stdout.close()
            if rc != 0 or got != size:
                err.seek(0)
                raise RuntimeError(f"streaming {shlex.join(argv_for(size))}: exit {rc}, {got} of "
                                   f"{size} bytes; {err.read()[-500:]!r}")
            err.close()
            runs.append({"s": dt, "bytes": got,
                         "cpu_s": {k: f() - cpu0[k] for k, f in probes.items()}})
        return op

    def cmdop_argv(size: int) -> list[str]:
        return [PY, "-m", "cmdop", "exec", host, "--", "head", "-c", str(size), "/dev/zero"]

    results: dict[str, list[dict[str, Any]]] = {"direct": [], "via_agent": []}
    ops = {"direct": streamer(cmdop_argv, w.env("c"), results["direct"]),
           "via_agent": streamer(cmdop_argv, w.env("b"), results["via_agent"])}
    if w.sshd is not None:
        sshd = w.sshd
        results["ssh"] = []
        ops["ssh"] = streamer(lambda size: sshd.argv(["head", "-c", str(size), "/dev/zero"]),
                              None, results["ssh"])
    rounds(ops, n, warmup=1, start=0)
    out: dict[str, Any] = {}
    for name, runs in results.items():
        runs = runs[-n:]  # after warm-up
        rates = [r["bytes"] / MIB / r["s"] for r in runs]
        out[name] = {"n": len(runs), "median_mibs": statistics.median(rates),
                     "min_mibs": min(rates), "max_mibs": max(rates),
                     "median_s": statistics.median(r["s"] for r in runs),
                     "cpu_s_per_100mib": {k: statistics.median(
                         r["cpu_s"][k] * STREAM_BYTES / r["bytes"] for r in runs) for k in probes}}
    return out


# -- section 6 --------------------------------------------------------------------------------

def section_e2e(w: World, n_rt: int, n_stream: int) -> dict[str, Any]:
    from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint
    from cmdop.relay.caller import remote_call

    host = w.hosts["a"]
    home = w.env("c")["CMDOP_HOME"]
    channel = RelayChannel(RelayEndpoint(w.address, fingerprint=w.fingerprint), w.key)

    def rt(plaintext: bool) -> Callable[[int], None]:
        def op(i: int) -> None:
            r = remote_call(channel, host, "execute_command", {"command": f"true {i}"},
                            cmdop_home=home, plaintext=plaintext)
            if not (isinstance(r, dict) and r.get("exit_code") == 0):
                raise RuntimeError(f"remote_call true {i} (plaintext={plaintext}): {r}")
        return op

    def stream(plaintext: bool) -> Callable[[int], None]:
        def op(i: int) -> None:
            got = [0]

            def sink(fd: int, data: bytes) -> None:
                got[0] += len(data)
            size = STREAM_BYTES + i
            r = remote_call(channel, host, "execute_command",
                            {"command": f"head -c {size} /dev/zero"}, on_chunk=sink,
                            cmdop_home=home, plaintext=plaintext)
            if got[0] != size or not (isinstance(r, dict) and r.get("exit_code") == 0):
                raise RuntimeError(f"streamed {got[0]} of {size} (plaintext={plaintext}): {r}")
        return op

    try:
        t_rt, cpu_rt = rounds({"e2e": rt(False), "plain": rt(True)}, n_rt, probes=cpu_probes(w))
        t_st, cpu_st = rounds({"e2e": stream(False), "plain": stream(True)}, n_stream, warmup=1,
                              probes=cpu_probes(w))
    finally:
        channel.close()
    return {"rt": {k: summary(v) for k, v in t_rt.items()}, "rt_cpu_ms": cpu_rt,
            "stream": {k: summary(v) for k, v in t_st.items()}, "stream_cpu_ms": cpu_st}


# -- section 5 --------------------------------------------------------------------------------

def section_rss(w: World, agents: int, per_process: int) -> dict[str, Any]:
    relay = w.relay.pid
    time.sleep(1)
    before, sockets_before = rss_kb(relay), sockets(relay)
    helpers: list[subprocess.Popen[bytes]] = []
    t0 = time.perf_counter()
    left, k = agents, 0
    while left > 0:
        count = min(per_process, left)
        helpers.append(subprocess.Popen(
            [PY, str(Path(__file__).resolve()), "--idle-agents", str(count),
             "--relay", w.address, "--fingerprint", w.fingerprint, "--prefix", f"idle{k}"],
            env=w.env("c"), stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        left -= count
        k += 1
    try:
        for h in helpers:
            assert h.stdin is not None
            h.stdin.write((w.key + "\n").encode())
            h.stdin.flush()
        pending = {h.stdout.fileno(): h for h in helpers if h.stdout is not None}
        deadline = time.monotonic() + 120 + agents * 0.05
        while pending:
            ready, _, _ = select.select(list(pending), [], [], 1.0)
            for fd in ready:
                line = os.read(fd, 4096).decode()
                if not line.startswith("ready"):
                    raise RuntimeError(f"an idle-agent helper failed: {line!r}")
                del pending[fd]
            for h in pending.values():
                if h.poll() is not None:
                    raise RuntimeError(f"an idle-agent helper exited {h.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the idle agents did not all link in time")
        linked_s = time.perf_counter() - t0
        time.sleep(2)
        samples = []
        for _ in range(3):
            samples.append(rss_kb(relay))
            time.sleep(0.5)
        after, sockets_after = max(samples), sockets(relay)
    finally:
        for h in helpers:
            try:
                assert h.stdin is not None
                h.stdin.write(b"stop\n")
                h.stdin.close()
            except OSError:
                pass
        for h in helpers:
            try:
                h.wait(60)
            except subprocess.TimeoutExpired:
                h.kill()
                h.wait()
    time.sleep(2)
    per_agent = (after - before) / agents
    return {"agents": agents, "helpers": len(helpers), "rss_before_kb": before,
            "rss_after_kb": after, "rss_after_leaving_kb": rss_kb(relay),
            "per_agent_kb": per_agent, "at_10000_mb": (before + per_agent * 10_000) / 1024,
            "sockets_before": sockets_before, "sockets_after": sockets_after,
            "link_all_s": linked_s}


def idle_agents_main(count: int, address: str, fingerprint: str, prefix: str) -> int:
    """Helper process: `count` idle agent links, each on its own connection, until 'stop'."""
    raise_nofile()
    sys.path.insert(0, str(REPO))
    from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint
    from cmdop.daemon.relay_link import CAPABILITIES, PROTOCOL_VERSION
    from cmdop.relay.proto import relay_pb2 as pb

    key = sys.stdin.readline().strip()
    stop = threading.Event()

    def frames(i: int) -> Any:
        yield pb.AgentFrame(hello=pb.Hello(
            protocol_version=PROTOCOL_VERSION, capabilities=list(CAPABILITIES),
            hostname=f"{prefix}-{i}", machine_id=uuid.uuid4().hex, agent_version="bench"))
        stop.wait()

    links = []
    try:
        for i in range(count):
            channel = RelayChannel(RelayEndpoint(address, fingerprint=fingerprint), key)
            stream = channel.agent_link(frames(i), timeout=3600)
            responses = iter(stream)
            first = next(responses)
            if first.WhichOneof("kind") != "welcome":
                raise RuntimeError(f"link {i}: first frame {first.WhichOneof('kind')}")
            links.append((channel, stream))
        print(f"ready {count}", flush=True)
        sys.stdin.readline()
    except Exception as exc:  # noqa: BLE001 - reported to the bench on stdout
        print(f"failed after {len(links)} links: {exc}", flush=True)
        return 1
    finally:
        stop.set()
        for channel, stream in links:
            stream.cancel()
            channel.close()
    return 0


# -- report -----------------------------------------------------------------------------------

def row(name: str, s: dict[str, float], base: dict[str, float] | None, what: str) -> str:
    ratio = f"{s['median_ms'] / base['median_ms']:6.2f}x" if base else " " * 7
    return (f"  {name:12} {s['n']:4d} {s['median_ms']:9.2f} {s['p99_ms']:9.2f} {s['max_ms']:9.2f}"
            f"  {ratio}  {what}")


HEAD = (f"  {'row':12} {'n':>4} {'median':>9} {'p99':>9} {'max':>9}  {'ratio':>7}"
        "  (ms; ratio of medians against the row named)")


def cpu_table(cpu: dict[str, dict[str, float]]) -> None:
    probes = list(next(iter(cpu.values())))
    print(f"  CPU ms per call (mean): {'':3}" + "".join(f"{p:>9}" for p in probes))
    for name, by in cpu.items():
        print(f"    {name:24}" + "".join(f"{by[p]:9.2f}" for p in probes))


def report(r: dict[str, Any]) -> None:
    print(f"python {r['python']} ({r['python_version']}), {r['cpus']} CPUs, Linux {r['kernel']}")
    print(f"relay {r['relay']}, hosts {r['hosts']}; load average at start "
          f"{r['load_start']:.2f}, at the end {r['load_end']:.2f} (other work on this machine "
          "slows every row; ratios are of rows interleaved in this run)")
    if r["ssh_skip"]:
        print(f"ssh baseline SKIPPED: {r['ssh_skip']}")
    w = r["warm"]["rows"]
    cm = w.get("ssh_cm")
    print("\n1. warm round trip, `true i`")
    print(HEAD)
    print(row("relay", w["relay"], cm,
              "remote_call on one open RelayChannel, in-process (vs ssh_cm)"))
    print(row("via_agent", w["via_agent"], cm,
              "in-process through agent B's link: socket + relay_call (vs ssh_cm)"))
    print(row("local_a", w["local_a"], None,
              "agent A's local socket, no relay: gate + sandbox + audit"))
    if cm:
        print(row("ssh_cm", cm, None, "ssh ControlMaster, whole process (baseline)"))
    print(f"  relay overhead over a local call (medians): "
          f"{w['relay']['median_ms'] - w['local_a']['median_ms']:.2f} ms")
    cpu_table(r["warm"]["cpu_ms"])
    p = r["processes"]["rows"]
    cm, new = p.get("ssh_cm"), p.get("ssh_new")
    print("\n2./3. whole processes, `echo bench-i`")
    print(HEAD)
    print(row("exec_agent", p["exec_agent"], cm, "cmdop exec through agent B (vs ssh_cm)"))
    if cm:
        print(row("ssh_cm", cm, None, "ssh ControlMaster (baseline of 2)"))
    print(row("exec_direct", p["exec_direct"], new, "cmdop exec direct: new TLS (vs ssh_new)"))
    if new:
        print(row("ssh_new", new, None, "ssh, new connection (baseline of 3)"))
    print(row("python", p["python"], None, "floor: python -c pass"))
    print(row("version", p["version"], None,
              "floor: cmdop version (interpreter + full CLI parser)"))
    print(row("cold_inproc", p["cold_inproc"], None,
              "in-process: new RelayChannel (pin fetch + TLS) + call + close"))
    py, ci = p["python"]["median_ms"], p["cold_inproc"]["median_ms"]
    ed, ea = p["exec_direct"]["median_ms"], p["exec_agent"]["median_ms"]
    va = r["warm"]["rows"]["via_agent"]["median_ms"]
    print(f"  exec_direct, medians: interpreter {py:.1f} + channel/TLS/call {ci:.1f} + the rest "
          f"(CLI, imports: grpc, protobuf, cryptography; credential) {ed - py - ci:.1f} ms")
    print(f"  exec_agent, medians: interpreter {py:.1f} + call via agent {va:.1f} + the rest "
          f"(CLI imports, connect) {ea - py - va:.1f} ms")
    cpu_table(r["processes"]["cpu_ms"])
    s = r["stream"]
    print("\n4. streaming 100 MiB (+i bytes) to a pipe: MiB/s of the whole process")
    print(f"  {'row':12} {'n':>4} {'median':>9} {'min':>9} {'max':>9}  {'ratio':>7}")
    for name, what in (("direct", "cmdop exec direct (home C) (vs ssh)"),
                       ("via_agent", "cmdop exec through agent B (vs ssh)"),
                       ("ssh", "ssh, new connection (baseline)")):
        if name in s:
            x = s[name]
            ratio = f"{x['median_mibs'] / s['ssh']['median_mibs']:6.2f}x" if "ssh" in s else " " * 7
            print(f"  {name:12} {x['n']:4d} {x['median_mibs']:9.1f} {x['min_mibs']:9.1f} "
                  f"{x['max_mibs']:9.1f}  {ratio}  {what}")
    probes = list(next(iter(s.values()))["cpu_s_per_100mib"])
    print(f"  CPU s per 100 MiB (median):" + "".join(f"{p:>9}" for p in probes))
    for name, x in s.items():
        print(f"    {name:25}" + "".join(f"{x['cpu_s_per_100mib'][p]:9.2f}" for p in probes))
    m = r["rss"]
    print(f"\n5. relay RSS with {m['agents']} idle agents ({m['helpers']} helper processes, "
          f"all linked in {m['link_all_s']:.1f} s)")
    print(f"  before {m['rss_before_kb'] / 1024:.1f} MB, with the agents "
          f"{m['rss_after_kb'] / 1024:.1f} MB, after they left "
          f"{m['rss_after_leaving_kb'] / 1024:.1f} MB; "
          f"relay sockets {m['sockets_before']} -> {m['sockets_after']}")
    print(f"  per idle agent {m['per_agent_kb']:.1f} KB; extrapolated to 10,000 agents: "
          f"{m['at_10000_mb']:.0f} MB")
    report_e2e(r["e2e"])
    summary_rows(r)


def summary_rows(r: dict[str, Any]) -> None:
    print("\nsummary")
    for key, (what, target, _met) in TARGETS.items():
        if key not in r["figures"]:
            continue          # a section not run (--only-e2e)
        fig = r["figures"][key]
        if fig is None:
            shown, verdict = "-", "not measured (no ssh baseline)"
        else:
            shown = f"{fig:.1f} KB" if key == "rss" else f"{fig:.2f}x"
            verdict = "met" if r["met"][key] else "NOT MET"
        print(f"  {what:72} {shown:>9}  target {target:9} {verdict}")


def report_e2e(e: dict[str, Any]) -> None:
    print("\n6. end-to-end encryption on vs off (in-process, one open channel, interleaved)")
    print(HEAD)
    print(row("rt_e2e", e["rt"]["e2e"], e["rt"]["plain"],
              "true i, sealed to the pinned key (HPKE) + signed, result opened (vs plaintext)"))
    print(row("rt_plain", e["rt"]["plain"], None, "true i, plaintext (baseline)"))
    print(row("st_e2e", e["stream"]["e2e"], e["stream"]["plain"],
              "100 MiB streamed, sealed frames opened here (vs plaintext)"))
    print(row("st_plain", e["stream"]["plain"], None, "100 MiB streamed, plaintext (baseline)"))
    mib = STREAM_BYTES / MIB
    print(f"  throughput (medians): E2E {mib / e['stream']['e2e']['median_ms'] * 1000:.0f} "
          f"MiB/s, plaintext {mib / e['stream']['plain']['median_ms'] * 1000:.0f} MiB/s")
    cpu_table(e["rt_cpu_ms"])
    cpu_table(e["stream_cpu_ms"])


def figures(r: dict[str, Any]) -> None:
    if "warm" not in r:       # --only-e2e
        r["figures"] = e2e_figures(r["e2e"])
        r["met"] = {k: bool(TARGETS[k][2](v)) for k, v in r["figures"].items()}
        return
    w, p, s = r["warm"]["rows"], r["processes"]["rows"], r["stream"]
    f: dict[str, float | None] = {"warm": None, "exec_agent": None, "cold": None, "stream": None}
    if "ssh_cm" in w:
        f["warm"] = w["relay"]["median_ms"] / w["ssh_cm"]["median_ms"]
        f["exec_agent"] = p["exec_agent"]["median_ms"] / p["ssh_cm"]["median_ms"]
        f["cold"] = p["exec_direct"]["median_ms"] / p["ssh_new"]["median_ms"]
        f["stream"] = s["direct"]["median_mibs"] / s["ssh"]["median_mibs"]
    f["rss"] = r["rss"]["per_agent_kb"]
    f.update(e2e_figures(r["e2e"]))
    r["figures"] = f
    r["met"] = {k: (None if v is None else bool(TARGETS[k][2](v))) for k, v in f.items()}


def e2e_figures(e: dict[str, Any]) -> dict[str, float]:
    """Section 6's ratios of medians, E2E on / off."""
    return {"e2e_rt": e["rt"]["e2e"]["median_ms"] / e["rt"]["plain"]["median_ms"],
            "e2e_stream": e["stream"]["e2e"]["median_ms"] / e["stream"]["plain"]["median_ms"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a fast sanity run: 30 / 3 / 1 rounds, 200 idle agents")
    ap.add_argument("--rounds", type=int, default=None, help="section 1 rounds (500)")
    ap.add_argument("--proc-rounds", type=int, default=None, help="sections 2-3 rounds (100)")
    ap.add_argument("--stream-rounds", type=int, default=None, help="section 4 rounds (5)")
    ap.add_argument("--agents", type=int, default=None, help="section 5 idle agents (1000)")
    ap.add_argument("--agents-per-process", type=int, default=250)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    ap.add_argument("--only-e2e", action="store_true",
                    help="run section 6 alone (E2E on vs off; no sshd)")
    ap.add_argument("--idle-agents", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--relay", default="", help=argparse.SUPPRESS)
    ap.add_argument("--fingerprint", default="", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default="idle", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.idle_agents:
        return idle_agents_main(args.idle_agents, args.relay, args.fingerprint, args.prefix)
    quick = (30, 3, 1, 200)
    full = (500, 100, 5, 1000)
    defaults = quick if args.quick else full
    n_warm, n_proc, n_stream, n_agents = (
        max(1, v if v is not None else d) for v, d in
        zip((args.rounds, args.proc_rounds, args.stream_rounds, args.agents), defaults))
    if "shims" in PY:
        print(f"warning: {PY} looks like a pyenv shim; run the venv's interpreter by its path",
              file=sys.stderr)
    nofile = raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="cmdop-bench-remote-"))
    tmp.chmod(0o700)
    world = World(tmp)
    r: dict[str, Any] = {"python": PY, "python_version": sys.version.split()[0],
                         "cpus": os.cpu_count(), "kernel": os.uname().release, "nofile": nofile}
    started = time.perf_counter()
    r["load_start"] = os.getloadavg()[0]
    try:
        world.start_relay()
        world.start_agents()
        if not args.only_e2e:
            world.start_sshd()
        r.update(relay=world.address, hosts=world.hosts, ssh_skip=world.ssh_skip)
        if world.ssh_skip:
            print(f"ssh baseline SKIPPED: {world.ssh_skip}", file=sys.stderr)
        if not args.only_e2e:
            r["warm"] = section_warm(world, n_warm)
            r["processes"] = section_processes(world, n_proc)
            r["stream"] = section_stream(world, n_stream)
        r["e2e"] = section_e2e(world, n_warm, n_stream)
        if not args.only_e2e:
            r["rss"] = section_rss(world, n_agents, max(1, args.agents_per_process))
    finally:
        world.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    r["seconds"] = time.perf_counter() - started
    r["load_end"] = os.getloadavg()[0]
    figures(r)
    if args.json:
        print(json.dumps(r, indent=2))
    elif args.only_e2e:
        print(f"python {r['python']} ({r['python_version']}), {r['cpus']} CPUs; load average "
              f"at start {r['load_start']:.2f}, at the end {r['load_end']:.2f}")
        report_e2e(r["e2e"])
        summary_rows(r)
        print(f"\n(run took {r['seconds']:.0f} s)")
    else:
        report(r)
        print(f"\n(run took {r['seconds']:.0f} s" + (f"; scratch dir {tmp})" if args.keep else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
