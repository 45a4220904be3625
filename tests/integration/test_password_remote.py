"""The machine password end to end: a real relay, an agent A with a password and
`remote_requires_password: true`, an agent B without one, and a direct caller C, each a separate
process over TLS gRPC on loopback (relay_harness.py starts and reaps them).

Covered: a call without a session is refused (exit 3, with the unlock hint), for a direct caller,
a caller through its own agent, and A's own CLI (self); `cmdop password unlock A` gives a
session (cached 0600) and calls then pass the password check and meet the gate as usual; a wrong
password is refused, slows the next attempts down (shared with A's local gate) and is audited,
never the password; an expired session (a 2 s TTL) is refused again and dropped from the cache;
a machine that does not ask for a password has nothing to unlock.

Tests run in file order and share one cluster (module fixture `net`).
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from relay_harness import Agent, Cluster, caller, channel

pytestmark = [pytest.mark.network, pytest.mark.slow]

PW = "the machine password 1"
_n = itertools.count(500)


def uniq() -> str:
    return str(next(_n))


def write_config(agent: Agent, text: str) -> None:
    path = Path(agent.home.env["CMDOP_CONFIG_DIR"]) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(text)
    os.chmod(path, 0o600)


CONFIG = "remote_requires_password: true\npassword_session_ttl: 15m\n"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cluster = Cluster(tmp_path_factory.mktemp("password-remote") / "net")
    try:
        relay = cluster.relay()
        keys = {name: relay.admin("key", "create", "demo", "--name", name)["key"]
                for name in ("ops", "other")}
        relay.start()
        a = Agent(cluster, "a", keys["ops"], relay)
        b = Agent(cluster, "b", keys["other"], relay)
        write_config(a, CONFIG)
        out = a.home.run("password", "set", "--password-stdin", input=PW + "\n")
        assert out.returncode == 0, out.stderr
        a.start(wait_online=False)
        b.start(wait_online=False)
        for agent in (a, b):
            st = agent.wait_relay_state("online")
            agent.machine = st["relay"]["machine"]
        c = caller(cluster, "c", keys["ops"], relay)
        yield SimpleNamespace(cluster=cluster, relay=relay, keys=keys, a=a, b=b, c=c)
        for agent in (a, b):
            assert agent.proc is not None and agent.proc.alive(), agent.proc and agent.proc.log()
            assert "Traceback" not in agent.proc.log(), agent.proc.log()
            assert PW not in agent.proc.log()
            verify = agent.home.run("permissions", "audit", "--verify")
            assert verify.returncode == 0, (verify.stdout, verify.stderr)
        assert relay.proc is not None and PW not in relay.proc.log()
    finally:
        cluster.close()


def sessions_file(home: Any) -> Path:
    return Path(home.env["CMDOP_HOME"]) / "sessions.json"


def unlock_records(agent: Agent) -> list[dict[str, Any]]:
    return [r for r in agent.home.audit() if r.get("tool") == "unlock"]


def state_text(agent: Agent) -> str:
    """Every file of A's state and config dirs, as text (the password must be in none)."""
    out = []
    for d in (agent.home.env["CMDOP_STATE_DIR"], agent.home.env["CMDOP_CONFIG_DIR"]):
        for p in Path(d).rglob("*"):
            if p.is_file():
                out.append(p.read_bytes().decode("utf-8", "replace"))
    return "\n".join(out)


def test_a_call_without_a_session_is_refused_with_the_unlock_hint(net: Any) -> None:
    a = net.a
    word = f"echo locked-{uniq()}"
    out = net.c.run("exec", a.machine, "--", *word.split())
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert f"cmdop password unlock {a.machine}" in out.stderr and "admission:password_required" in out.stderr
    assert out.stdout == ""
    rec = a.home.audit_for(word)
    assert (rec["decision"], rec["rule_id"], rec["source"]) == ("deny", "admission:password_required", "floor")
    assert rec["caller"]["kind"] == "remote" and rec["user"] == "ops"

    out = net.c.run("call", a.machine, "read_file", "--input", json.dumps({"path": "/etc/hostname"}))
    assert out.returncode == 3 and json.loads(out.stdout)["rule_id"] == "admission:password_required"
    assert f"cmdop password unlock {a.machine}" in out.stderr

    # Through B's own agent (the fast `exec` path and the full CLI's `call`), and A's own CLI
    # (a self caller): all refused the same way.
    word = f"echo locked-{uniq()}"
    out = net.b.home.run("exec", a.machine, "--", *word.split())
    assert out.returncode == 3 and f"cmdop password unlock {a.machine}" in out.stderr, out.stderr
    out = a.home.run("exec", a.machine, "--", "echo", "self-locked")
    assert out.returncode == 3 and "password unlock" in out.stderr, out.stderr
    # A's own local caller is not asked: local calls never need the password.
    out = a.home.run("run", "execute_command", "--input", json.dumps({"command": "echo local"}))
    assert out.returncode == 0, out.stderr


def test_unlock_gives_a_cached_session_and_calls_then_meet_the_gate(net: Any) -> None:
    a, c = net.a, net.c
    before = len(unlock_records(a))
    out = c.home.run("password", "unlock", a.machine, "--password-stdin", "--json", input=PW + "\n")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["unlocked"] is True and info["workspace"] == "demo" and "session_token" not in info
    assert 890 < info["expires_at"] - time.time() <= 900

    path = sessions_file(c.home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cached = json.loads(path.read_text())["sessions"][f"demo/{a.machine}"]
    assert cached["token"].startswith("cmdop-session-")
    assert cached["token"] not in state_text(a)            # the agent keeps only its digest

    [rec] = unlock_records(a)[before:]
    assert (rec["decision"], rec["rule_id"], rec["user"]) == ("allow", "password:unlocked", "ops")
    assert rec["target"] == "" and rec["caller"]["kind"] == "remote"
    assert PW not in state_text(a)

    # The session passes the password check...
    n = uniq()
    out = c.run("exec", a.machine, "--", "seq", "1", n)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == n
    # ...and the gate still decides: strict mode denies what no rule allows.
    target = f"ls /nonexistent-{uniq()}"
    out = c.run("exec", a.machine, "--", *target.split())
    assert out.returncode == 3 and "password" not in out.stderr, out.stderr
    rec = a.home.audit_for(target)
    assert (rec["decision"], rec["source"]) == ("deny", "mode")
    st = json.loads(a.home.run("password", "status", "--json").stdout)
    assert st["active_sessions"] >= 1 and st["remote_password_in_force"] is True

    # Through B's agent: B unlocks with its own key (a session is bound to who unlocked).
    out = net.b.home.run("password", "unlock", a.machine, "--password-stdin", input=PW + "\n")
    assert out.returncode == 0, out.stderr
    n = uniq()
    out = net.b.home.run("exec", a.machine, "--", "seq", "1", n)       # the fast path
    assert out.returncode == 0, out.stderr
    rec = a.home.audit_for(f"seq 1 {n}")
    assert rec["decision"] == "allow" and rec["user"] == "other"
    out = net.b.home.run("call", a.machine, "read_file", "--input",
                         json.dumps({"path": str(a.work / "missing.txt")}))
    assert "password_required" not in out.stdout, out.stdout

    # A token presented by another principal (key `other` direct, with ops' token) is no session.
    from cmdop.relay.caller import remote_call

    with channel(net.relay, net.keys["other"]) as ch:
        result = remote_call(ch, a.machine, "execute_command", {"command": "echo stolen"},
                             deadline_s=30, session=cached["token"],
                             cmdop_home=str(net.cluster.root / "pins"))
    assert result["rule_id"] == "admission:password_required", result


def test_a_machine_without_a_password_has_nothing_to_unlock(net: Any) -> None:
    out = net.c.home.run("password", "unlock", net.b.machine, "--password-stdin", input="whatever-it-is\n")
    assert out.returncode == 0, out.stderr
    assert "does not ask remote callers for a password" in out.stdout


def test_a_wrong_password_is_refused_slowed_down_and_audited(net: Any) -> None:
    a, c = net.a, net.c
    before = len(unlock_records(a))
    for n in (1, 2, 3):
        out = c.home.run("password", "unlock", a.machine, "--password-stdin", input=f"wrong-guess-{n}\n")
        assert out.returncode == 4 and "wrong password" in out.stderr, out.stderr
        assert f"refuses the next attempt for {2 ** (n - 1)} s" in out.stderr
        if n < 3:
            time.sleep(2 ** (n - 1) + 0.1)
    # Within the 4 s slow-down the right password is refused too, without being checked...
    out = c.home.run("password", "unlock", a.machine, "--password-stdin", input=PW + "\n")
    assert out.returncode == 4 and "refused unchecked" in out.stderr, out.stderr
    # ...and the counter is the one A's local gate uses.
    st = json.loads(a.home.run("password", "status", "--json").stdout)
    assert st["failures"] == 3 and st["retry_in_s"] > 0
    out = a.home.run("permissions", "mode", "strict", "--password-stdin", input=PW + "\n")
    assert out.returncode == 4 and "refused unchecked" in out.stderr, out.stderr

    rules = [r["rule_id"] for r in unlock_records(a)[before:]]
    assert rules == ["password:wrong"] * 3 + ["password:slowed_down"], rules
    assert all(r["decision"] == "deny" and r["user"] == "ops" for r in unlock_records(a)[before:])
    text = state_text(a)
    assert "wrong-guess" not in text and PW not in text

    time.sleep(4.2)
    out = c.home.run("password", "unlock", a.machine, "--password-stdin", input=PW + "\n")
    assert out.returncode == 0, out.stderr
    assert json.loads(a.home.run("password", "status", "--json").stdout)["failures"] == 0


def test_an_expired_session_is_refused_again(net: Any) -> None:
    from cmdop.relay.caller import remote_call

    a, c = net.a, net.c
    # 5 s: the first call below must land while the token is fresh, on a loaded machine too.
    write_config(a, "remote_requires_password: true\npassword_session_ttl: 5s\n")
    try:
        out = c.home.run("password", "unlock", a.machine, "--password-stdin", "--json", input=PW + "\n")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["ttl_s"] == 5
        token = json.loads(sessions_file(c.home).read_text())["sessions"][f"demo/{a.machine}"]["token"]
        with channel(net.relay, net.keys["ops"]) as ch:
            result = remote_call(ch, a.machine, "execute_command", {"command": "echo fresh"},
                                 deadline_s=30, session=token,
                                 cmdop_home=str(net.cluster.root / "pins"))
        assert result.get("exit_code") == 0, result                 # still valid, just issued
        time.sleep(5.5)
        # The cached copy expired by our clock too, so the CLI sends none; the token itself is
        # refused by A as well.
        with channel(net.relay, net.keys["ops"]) as ch:
            result = remote_call(ch, a.machine, "execute_command", {"command": "echo stale"},
                                 deadline_s=30, session=token,
                                 cmdop_home=str(net.cluster.root / "pins"))
        assert result["rule_id"] == "admission:password_required", result
        out = c.run("exec", a.machine, "--", "echo", "after-expiry")
        assert out.returncode == 3 and f"cmdop password unlock {a.machine}" in out.stderr
    finally:
        write_config(a, CONFIG)
