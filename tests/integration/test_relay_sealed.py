"""End-to-end encryption through a real relay: the relay sees only ciphertext.

The relay here runs in this test's process (same Router, store and TLS server as `cmdop relay
serve`) with a recorder on its gRPC codec, so every message it receives and sends is captured as
bytes; the agent and the callers are real `cmdop` processes. Covered: a capture of everything
the relay handled holds no command text, output, file content or path (unique markers), on the
direct path and through the caller's own agent; a plaintext call is refused by the agent; a key
the relay offers that differs from the pin (a relay swapping keys, or a rotation) is refused
with the fingerprints named, and `cmdop connect trust HOST --yes` accepts it; `agent status`
shows the key's fingerprint; the pins file and key file are 0600.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from relay_harness import POLICY, Agent, Cluster, caller, channel, wait_for

pytestmark = [pytest.mark.network, pytest.mark.slow]

SEALED_POLICY = POLICY + "- rule: write_file\n  action: allow\n"


class InProcessRelay:
    """The relay's router and gRPC server on an asyncio loop in a thread, recording every
    message it receives and sends (the bytes inside TLS)."""

    def __init__(self, relay: Any) -> None:
        self.relay = relay
        self.captured: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.router: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the in-process relay did not start"

    def tap(self, direction: str, data: bytes) -> None:
        with self._lock:
            self.captured.append((direction, bytes(data)))

    def capture(self) -> bytes:
        with self._lock:
            return b"\n".join(d for _, d in self.captured)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        from cmdop.adapters.relay_grpc import start_server
        from cmdop.relay.router import Router
        from cmdop.relay.store import RelayStore
        from cmdop.relay.tls import ensure_certificate

        data_dir = str(self.relay.data_dir)
        store = RelayStore.open(data_dir)
        cert = ensure_certificate(data_dir, ["127.0.0.1", "localhost"])
        self.router = Router(store)
        server, _ = await start_server(self.router, self.relay.address, cert.cert_pem,
                                       cert.key_pem, tap=self.tap)
        self.relay.fingerprint = cert.fingerprint
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)
        store.close()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cluster = Cluster(tmp_path_factory.mktemp("relay-sealed") / "net")
    inproc = None
    try:
        relay = cluster.relay()
        keys = {n: relay.admin("key", "create", "demo", "--name", n)["key"] for n in ("ops", "me")}
        inproc = InProcessRelay(relay)
        a = Agent(cluster, "a", keys["ops"], relay, policy=SEALED_POLICY)
        me = Agent(cluster, "me", keys["me"], relay)         # the caller's own agent
        a.start()
        me.start()
        c = caller(cluster, "c", keys["ops"], relay)
        yield SimpleNamespace(cluster=cluster, relay=relay, inproc=inproc, a=a, me=me, c=c,
                              keys=keys)
        for agent in (a, me):
            assert agent.proc is not None and "Traceback" not in agent.proc.log(), \
                agent.proc.log()
    finally:
        cluster.close()
        if inproc is not None:
            inproc.close()


def _markers() -> dict[str, str]:
    return {k: f"{k}-{uuid.uuid4().hex}" for k in ("cmd", "file", "write", "path")}


def test_the_relay_sees_no_command_output_or_file_content(sealed: Any) -> None:
    m = _markers()
    secret = sealed.a.work / f"{m['path']}.txt"
    secret.write_text(f"{m['file']}\n")
    target = sealed.a.work / f"{m['path']}-w.txt"
    start = len(sealed.inproc.captured)
    for who in (sealed.c, sealed.me.home):      # direct, and through the caller's own agent
        out = who.run("exec", sealed.a.machine, "--", "echo", m["cmd"])
        assert out.returncode == 0 and out.stdout == f"{m['cmd']}\n", out.stderr
        out = who.run("exec", sealed.a.machine, "--", "cat", str(secret))
        assert out.returncode == 0 and out.stdout == f"{m['file']}\n", out.stderr
        out = who.run("call", sealed.a.machine, "read_file", "--input",
                      json.dumps({"path": str(secret)}))
        assert out.returncode == 0 and m["file"] in out.stdout, out.stderr
        out = who.run("call", sealed.a.machine, "write_file", "--input",
                      json.dumps({"path": str(target), "content": m["write"]}))
        assert out.returncode == 0, (out.stdout, out.stderr)
        assert target.read_text() == m["write"]
        target.unlink()
    with sealed.inproc._lock:
        capture = b"\n".join(d for _, d in sealed.inproc.captured[start:])
    assert len(capture) > 1000           # the calls did go through the recorded relay
    for name, marker in m.items():
        assert marker.encode() not in capture, f"the relay saw the {name} marker"
    for tool in (b"execute_command", b"read_file", b"write_file"):
        assert tool not in capture, f"the relay saw the tool name {tool!r}"


def test_agent_status_shows_the_key_fingerprint_and_files_are_private(sealed: Any) -> None:
    from cmdop.adapters import e2e
    from cmdop.adapters.e2e_files import agent_key_path

    key_file = agent_key_path(sealed.a.home.env["CMDOP_STATE_DIR"])
    fingerprint = e2e.load_private(Path(key_file).read_bytes()).fingerprint
    status = json.loads(sealed.a.home.run("agent", "status", "--json").stdout)
    assert status["relay"]["e2e_key"] == fingerprint and status["relay"]["e2e_required"]
    assert sealed.c.run("exec", sealed.a.machine, "--", "echo", "pin").returncode == 0
    pins = Path(sealed.c.home.env["CMDOP_HOME"]) / "known_hosts.json"
    for path in (Path(key_file), pins):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert fingerprint in pins.read_text()
    # the caller's public key, the line an agent's authorized_callers takes
    from cmdop.adapters.e2e_files import parse_caller_public

    out = sealed.c.run("connect", "key", "show-public")
    assert out.returncode == 0 and len(parse_caller_public(out.stdout.strip())) == 32, out
    key_path = Path(sealed.c.home.env["CMDOP_HOME"]) / "caller_key"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600


def test_a_plaintext_call_is_refused_by_the_agent(sealed: Any) -> None:
    from cmdop.core.errors import E2EError
    from cmdop.relay.caller import remote_call

    with channel(sealed.relay, sealed.keys["ops"]) as ch:
        with pytest.raises(E2EError, match="only end-to-end encrypted"):
            remote_call(ch, sealed.a.machine, "execute_command", {"command": "echo clear"},
                        plaintext=True)
    assert not any(r.get("target") == "echo clear" for r in sealed.a.home.audit())

    def refusal() -> Any:
        found = [r for r in sealed.a.home.audit() if r.get("rule_id") == "e2e:plaintext"]
        return found[-1] if found else None
    rec = wait_for(refusal, 20, "the audit line of the refused plaintext call")
    assert (rec["decision"], rec["tool"], rec["user"]) == ("deny", "execute_command", "ops"), rec


def test_a_changed_host_key_is_refused_until_trusted(sealed: Any) -> None:
    """The relay offering another key for a pinned host — a relay swapping keys, or the host's
    owner rotating it — is refused with both fingerprints; `connect trust` accepts it."""
    from cmdop.adapters.e2e_files import agent_key_path

    out = sealed.c.run("exec", sealed.a.machine, "--", "echo", "before")
    assert out.returncode == 0, out.stderr
    sealed.a.proc.stop()
    os.rename(agent_key_path(sealed.a.home.env["CMDOP_STATE_DIR"]),
              str(sealed.a.home.root / "old_e2e_key"))
    sealed.a.start()
    out = sealed.c.run("exec", sealed.a.machine, "--", "echo", "after")
    assert out.returncode != 0 and "after" not in out.stdout
    assert "WARNING: the end-to-end key of" in out.stderr and "SHA256:" in out.stderr, out.stderr
    assert f"cmdop connect trust {sealed.a.machine}" in out.stderr, out.stderr
    out = sealed.c.run("connect", "trust", sealed.a.machine)      # no terminal, no --yes
    assert out.returncode == 2, (out.stdout, out.stderr)
    out = sealed.c.run("connect", "trust", sealed.a.machine, "--yes", "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["changed"] and row["old"] != row["new"]
    out = sealed.c.run("exec", sealed.a.machine, "--", "echo", "after")
    assert out.returncode == 0 and out.stdout == "after\n", out.stderr
