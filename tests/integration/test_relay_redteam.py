"""Red team, real processes: attacks on the relay, an agent's link and the caller CLI over TLS
gRPC on loopback (relay_harness.py starts and reaps every process).

A plain test is an attack that is correctly blocked today; a test marked
`xfail(strict=True, reason="ATTACK WORKS: ...")` is one that works today (it asserts what we
want, so it fails now: fix the product, then remove the mark). The in-process attacks on the
router live in tests/unit/test_relay_redteam_unit.py.

One relay (workspaces demo and other) and one agent `web` (key demo/ops) are shared by the
module. The attacks that knock the agent's link down run last, and each waits for the link to
come back before the next.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relay_harness import (  # noqa: E402
    PY, POLICY, REPO, Agent, Cluster, caller, channel, sealed_start, wait_for,
)

pytestmark = [pytest.mark.network, pytest.mark.slow]

# A script a remote caller may run on `web` (its rule is below): it tries to use the agent's own
# socket from inside the sandbox, as a command run for a remote caller would.
SOCKET_PROBE = """\
import socket, sys
sys.path.insert(0, {repo!r})
from cmdop.daemon import protocol
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(protocol.encode({{"v": protocol.VERSION, "id": 1, "op": "relay_call", "host": sys.argv[2],
                           "tool": "execute_command", "input": {{"command": "seq 1 2"}}}}))
print(s.recv(65536).decode("utf-8", "replace"))
"""


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cluster = Cluster(tmp_path_factory.mktemp("relay-redteam") / "rt")
    try:
        relay = cluster.relay()
        relay.admin("workspace", "create", "other")
        keys = {name: relay.admin("key", "create", "demo", "--name", name)["key"]
                for name in ("ops", "dev")}
        keys["other"] = relay.admin("key", "create", "other", "--name", "ops")["key"]
        relay.start()
        probe = cluster.root / "socket_probe.py"
        probe.write_text(SOCKET_PROBE.format(repo=str(REPO)))
        policy = POLICY + f"- rule: execute_command({PY} {probe} *)\n  action: allow\n"
        web = Agent(cluster, "web", keys["ops"], relay, policy=policy).start()
        dev = caller(cluster, "dev", keys["dev"], relay)
        yield SimpleNamespace(cluster=cluster, relay=relay, keys=keys, web=web, dev=dev,
                              probe=probe)
        assert relay.proc is not None and relay.proc.alive(), relay.proc and relay.proc.log()
        assert web.proc is not None and web.proc.alive(), web.proc and web.proc.log()
    finally:
        cluster.close()


def _link(rt: Any) -> dict[str, Any]:
    st = rt.web.status() or {}
    return st.get("relay") or {}


def _raw_call(rt: Any, key: str, start: Any, timeout: float = 30) -> list[Any]:
    from cmdop.relay.proto import relay_pb2 as pb

    ch = channel(rt.relay, key)
    try:
        return list(ch.call(iter([pb.CallerFrame(start=start)]), timeout=timeout))
    finally:
        ch.close()


# == identity, end to end ========================================================================


def test_a_forged_caller_principal_is_audited_as_the_verified_remote_key(rt: Any) -> None:
    """Attack: a raw client sends CallStart.caller = {kind: self, name: ops, hostname: web}.
    Blocked: the agent's audit line has kind remote, user dev, no hostname."""
    from cmdop.relay.proto import relay_pb2 as pb

    target = f"echo forged-{uuid.uuid4().hex[:8]}"
    forged = pb.Principal(kind="self", workspace="demo", name="ops", credential="unix",
                          hostname=rt.web.machine, machine_id=rt.web.machine_id)
    start, opener = sealed_start(rt.web, "execute_command", {"command": target}, caller=forged)
    events = _raw_call(rt, rt.keys["dev"], start)
    assert events[-1].WhichOneof("kind") == "result", events
    opener.final(events[-1].result.result_json)
    rec = rt.web.home.audit_for(target)
    assert (rec["user"], rec["hostname"], rec["caller"]["kind"]) == ("dev", "", "remote"), rec
    assert "machine_id" not in rec["caller"], rec


def test_a_sandboxed_command_cannot_use_the_agents_socket_for_relay_calls(rt: Any) -> None:
    """Attack: a command the agent runs for a remote caller connects to the agent's socket and
    asks for `relay_call` (to call other machines as this machine, i.e. as `self`). Blocked:
    the socket refuses peers more seccomp-confined than the agent."""
    out = rt.dev.run("exec", rt.web.machine, "--", PY, str(rt.probe), rt.web.home.socket_path,
                     rt.web.machine)
    assert out.returncode == 0, out.stderr
    assert '"code":"forbidden"' in out.stdout, out.stdout


def test_a_remote_caller_cannot_read_the_agents_stored_key(rt: Any) -> None:
    """Attack: `cat ~/.cmdop/ssh_workspaces.json` (allowed by the `cat *` rule) to steal the
    agent's workspace key; read the agent's argv. Blocked: floor (exit 3); no key in argv."""
    path = Path(rt.web.home.env["CMDOP_HOME"]) / "ssh_workspaces.json"
    assert rt.keys["ops"] in path.read_text()
    out = rt.dev.run("exec", rt.web.machine, "--", "cat", str(path))
    assert out.returncode == 3, (out.returncode, out.stdout, out.stderr)
    assert rt.keys["ops"] not in out.stdout + out.stderr
    assert rt.web.proc is not None
    with open(f"/proc/{rt.web.proc.pid}/cmdline", "rb") as f:
        assert rt.keys["ops"].encode() not in f.read()


def test_a_pinned_client_does_not_talk_to_a_relay_swapped_in_after_the_pin_check(rt: Any) -> None:
    """Attack (MITM racing the pin check): a proxy sends the client's first connection (the
    certificate fetch) to the real relay and every later one (the gRPC channel) to another relay
    with its own certificate. Blocked: the channel trusts exactly the pinned certificate."""
    from cmdop.core.errors import CmdopError

    impostor = rt.cluster.relay()
    impostor.admin("key", "create", "demo", "--name", "ops")
    impostor.start()
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    seen = [0]
    stop = threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while not stop.is_set():
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def serve() -> None:
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except OSError:
                return
            seen[0] += 1
            up = socket.create_connection(("127.0.0.1", rt.relay.port if seen[0] == 1
                                           else impostor.port))
            threading.Thread(target=pipe, args=(c, up), daemon=True).start()
            threading.Thread(target=pipe, args=(up, c), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint

    try:
        with pytest.raises(CmdopError):
            ch = RelayChannel(RelayEndpoint(f"127.0.0.1:{ls.getsockname()[1]}",
                                            fingerprint=rt.relay.fingerprint), rt.keys["ops"])
            try:
                ch.list_hosts(timeout=3)
            finally:
                ch.close()
        assert seen[0] >= 2                      # the swap did happen
    finally:
        stop.set()
        ls.close()
        impostor.kill()
    assert impostor.proc is not None
    assert "authentication failed" not in impostor.proc.log()


def test_cmdop_hosts_does_not_print_a_machines_escape_sequences(rt: Any) -> None:
    import queue

    from cmdop.relay.proto import relay_pb2 as pb

    q: queue.Queue[Any] = queue.Queue()
    q.put(pb.AgentFrame(hello=pb.Hello(protocol_version=1, hostname="printer",
                                       machine_id=uuid.uuid4().hex,
                                       agent_version="\x1b]0;owned\x07\x1b[2J\x1b[31m")))

    def frames() -> Any:
        while (f := q.get()) is not None:
            yield f

    ch = channel(rt.relay, rt.keys["dev"])
    try:
        stream = ch.agent_link(frames(), timeout=10)
        assert next(iter(stream)).WhichOneof("kind") == "welcome"
        q.put(None)
        stream.cancel()
    finally:
        ch.close()
    out = rt.dev.run("hosts")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout, repr(out.stdout)


# == the caller CLI picks the wrong credential ===================================================


@pytest.mark.parametrize("how", ["CMDOP_API_KEY", "CMDOP_WORKSPACE", "connect use"])
def test_exec_uses_the_credential_the_caller_chose_not_the_agents(rt: Any, how: str) -> None:
    home = rt.web.home
    env: dict[str, str] = {}
    if how == "CMDOP_API_KEY":
        env["CMDOP_API_KEY"] = rt.keys["other"]
    else:
        out = home.run("connect", "key", "set", "--workspace", "other", "--relay", rt.relay.address,
                       "--relay-fingerprint", rt.relay.fingerprint, "-", input=rt.keys["other"] + "\n")
        assert out.returncode == 0, out.stderr
        if how == "CMDOP_WORKSPACE":
            env["CMDOP_WORKSPACE"] = "other"
        else:
            assert home.run("connect", "use", "other").returncode == 0
    try:
        hosts = home.run("hosts", "--json", **env)
        assert hosts.returncode == 0 and json.loads(hosts.stdout) == [], hosts.stdout
        out = home.run("exec", rt.web.machine, "--", "seq", "1", "2", **env)
        # workspace `other` has no machine of that name: exit 5, nothing run
        assert out.returncode == 5, (out.returncode, out.stdout, out.stderr)
    finally:
        home.run("connect", "use", "demo")


# == flow control with an honest agent ===========================================================


def _rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


def test_a_caller_that_never_reads_does_not_grow_the_relay(rt: Any) -> None:
    """Attack: a streamed call whose caller stops reading while the agent produces 200 MB.
    Blocked: the credit window holds the command back; the relay holds a bounded amount."""
    from cmdop.relay.proto import relay_pb2 as pb

    assert rt.relay.proc is not None
    before = _rss_mb(rt.relay.proc.pid)
    ch = channel(rt.relay, rt.keys["dev"])
    start, _ = sealed_start(rt.web, "execute_command",
                            {"command": "head -c 200000000 /dev/zero"}, stream=True)
    stream = ch.call(iter([pb.CallerFrame(start=start)]), timeout=60)
    try:
        events = iter(stream)
        next(events)                                  # accepted; then read nothing for 3 s
        time.sleep(3)
        grown = _rss_mb(rt.relay.proc.pid) - before
        assert grown < 100, f"the relay grew {grown} MB for a caller that reads nothing"
    finally:
        stream.cancel()
        ch.close()


# == attacks that drop the agent's link (last: each waits for the link to come back) ==========


def _crashes(rt: Any) -> int:
    assert rt.web.proc is not None
    return rt.web.proc.log().count("task relay_link crashed")


def _back_online(rt: Any) -> None:
    wait_for(lambda: _link(rt).get("state") == "online", 30, "web's link to come back")


def test_a_large_result_fails_alone_and_does_not_drop_the_link(rt: Any) -> None:
    _back_online(rt)
    connects, crashes = _link(rt).get("connects"), _crashes(rt)
    try:
        out = rt.dev.run("call", rt.web.machine, "execute_command", "--input",
                         json.dumps({"command": "head -c 1000000 /dev/zero"}))
        time.sleep(1)
        assert _crashes(rt) == crashes and _link(rt).get("connects") == connects, \
            "the agent's relay link was dropped"
        assert out.returncode in (0, 1), (out.returncode, out.stderr)
    finally:
        _back_online(rt)


def test_a_local_client_leaving_mid_stream_does_not_drop_the_agents_link(rt: Any) -> None:
    _back_online(rt)
    connects, crashes = _link(rt).get("connects"), _crashes(rt)
    try:
        subprocess.run(f"{PY} -m cmdop exec {rt.web.machine} -- seq 1 30000000 | head -1",
                       shell=True, env=rt.web.home.env, cwd=rt.web.home.root, timeout=60,
                       capture_output=True)
        time.sleep(2)
        assert _crashes(rt) == crashes and _link(rt).get("connects") == connects, \
            "the agent's relay link was dropped"
    finally:
        _back_online(rt)
