"""Guest access end to end: `cmdop connect share` on the owner's machine, the printed command run
by a guest with no configuration, a real relay and two real agents (relay_harness.py).

Covered: the guest runs what the receiver's policy allows on the shared machine, and the
agent's audit line names the share and its note; another machine, an expired share, a revoked
one (cutting a running `sleep`), one beyond its uses and a tool outside the share's subset are
each refused with their own reason; the guest meets the receiver's deny and ask rules like any
remote caller and is never `self`, even from the owner's own machine.
"""

from __future__ import annotations

import itertools
import json
import shlex
import sqlite3
from types import SimpleNamespace
from typing import Any

import pytest

from relay_harness import (PY, POLICY, Agent, Cluster, caller, procs_with_argv, unique_seconds,
                           wait_for)

pytestmark = [pytest.mark.network, pytest.mark.slow]

GONE_TIMEOUT_S = 20.0
_n = itertools.count(500)
SHARE_POLICY = POLICY + """\
- rule: execute_command(echo deny-*)
  action: deny
"""


def uniq() -> str:
    return str(next(_n))


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A relay (workspace demo), agents A and B (key ops), the owner O (key ops, no agent) and
    a guest G (nothing configured)."""
    cluster = Cluster(tmp_path_factory.mktemp("relay-shares") / "net")
    try:
        relay = cluster.relay()
        key = relay.admin("key", "create", "demo", "--name", "ops")["key"]
        relay.start()
        a = Agent(cluster, "a", key, relay, policy=SHARE_POLICY)
        b = Agent(cluster, "b", key, relay)
        a.start(wait_online=False)
        b.start(wait_online=False)
        for agent in (a, b):
            agent.machine = agent.wait_relay_state("online")["relay"]["machine"]
        owner = caller(cluster, "owner", key, relay)
        guest = cluster.home("guest")
        yield SimpleNamespace(cluster=cluster, relay=relay, a=a, b=b, owner=owner, guest=guest)
        assert relay.proc is not None and "Traceback" not in relay.proc.log(), relay.proc.log()
    finally:
        cluster.close()


def share(net: Any, *flags: str) -> dict[str, Any]:
    out = net.owner.run("connect", "share", net.a.machine, *flags, "--json")
    assert out.returncode == 0, out.stderr
    obj: dict[str, Any] = json.loads(out.stdout)
    return obj


def guest_argv(info: dict[str, Any], *command: str) -> tuple[dict[str, str], list[str]]:
    """The printed command, as the guest pastes it: (its environment, its argv after cmdop)."""
    words = shlex.split(info["command"].replace("COMMAND ARGS…", shlex.join(command)))
    env_word, cmdop, *argv = words
    name, _, value = env_word.partition("=")
    assert (name, cmdop) == ("CMDOP_SHARE_TOKEN", "cmdop") and value == info["token"]
    return {name: value}, argv


def as_guest(net: Any, info: dict[str, Any], *command: str, host: str | None = None,
             home: Any = None) -> Any:
    env, argv = guest_argv(info, *command)
    if host is not None:
        argv[argv.index(net.a.machine)] = host
    return (home or net.guest).run(*argv, **env)


def test_a_guest_runs_what_the_policy_allows_and_the_audit_names_share_and_note(net: Any) -> None:
    info = share(net, "--ttl", "24h", "--note", "bob, ticket 42")
    assert info["token"].startswith("cmdop_share_") and info["state"] == "active"
    n = uniq()
    out = as_guest(net, info, "echo", f"hi-{n}")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"hi-{n}\n"
    rec = net.a.home.audit_for(f"echo hi-{n}")
    assert rec["decision"] == "allow" and rec["source"] == "rule", rec
    assert rec["caller"]["kind"] == "guest" and rec["caller"]["credential"] == "share", rec
    assert rec["caller"]["share_id"] == info["id"] and rec["caller"]["note"] == "bob, ticket 42"
    listed = net.owner.run("connect", "share", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert info["token"] not in listed.stdout
    row = next(r for r in json.loads(listed.stdout) if r["id"] == info["id"])
    assert (row["host"], row["uses"], row["state"]) == (net.a.machine, 1, "active")


def test_another_machine_is_refused_naming_the_shared_one(net: Any) -> None:
    info = share(net, "--ttl", "90m")
    out = as_guest(net, info, "echo", "x", host=net.b.machine)
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert f"is for {net.a.machine}" in out.stderr
    env, argv = guest_argv(info, "x")
    hosts = net.guest.run("hosts", *argv[1:5], "--json", **env)   # --relay R --relay-fingerprint F
    assert hosts.returncode == 0, hosts.stderr
    assert [h["name"] for h in json.loads(hosts.stdout)] == [net.a.machine]


def test_a_tool_outside_the_subset_is_refused_by_the_agents_admission(net: Any) -> None:
    info = share(net, "--ttl", "1h", "--tools", "read_file,list_dir")
    n = uniq()
    out = as_guest(net, info, "echo", f"tool-{n}")
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "not one of the share's tools" in out.stderr
    rec = net.a.home.audit_for(f"echo tool-{n}")
    assert rec["rule_id"] == "admission:guest_tool" and rec["caller"]["kind"] == "guest", rec
    (net.a.work / f"shared-{n}.txt").write_text("for the guest\n")
    env, argv = guest_argv(info, "x")
    call = net.guest.run("call", *argv[1:5], net.a.machine, "read_file",
                         "--input", json.dumps({"path": str(net.a.work / f"shared-{n}.txt")}), **env)
    assert call.returncode == 0, (call.stdout, call.stderr)      # a tool of the share, allowed
    assert "for the guest" in call.stdout


def test_the_guest_meets_deny_and_ask_rules_and_is_never_self(net: Any) -> None:
    info = share(net, "--ttl", "1h", "--note", "carol")
    n = uniq()
    out = as_guest(net, info, "echo", f"deny-{n}")
    assert out.returncode == 3, (out.stdout, out.stderr)
    rec = net.a.home.audit_for(f"echo deny-{n}")
    assert rec["decision"] == "deny" and rec["source"] == "rule", rec
    out = as_guest(net, info, "echo", f"ask-{n}")              # no approver: denied, never run
    assert out.returncode == 3 and f"ask-{n}" not in out.stdout, (out.stdout, out.stderr)
    rec = net.a.home.audit_for(f"echo ask-{n}")
    assert rec["decision"] == "deny" and rec["caller"]["kind"] == "guest", rec
    # From the shared machine itself (its agent and the owner's key right there): still a
    # guest gated in full — self_bypass is on, and the audit would say "bypass" for self.
    out = as_guest(net, info, "echo", f"home-{n}", home=net.a.home)
    assert out.returncode == 0, out.stderr
    rec = net.a.home.audit_for(f"echo home-{n}")
    assert rec["caller"]["kind"] == "guest" and rec["source"] == "rule", rec


def test_a_share_beyond_its_uses_is_refused(net: Any) -> None:
    info = share(net, "--ttl", "1h", "--max-uses", "1")
    assert as_guest(net, info, "echo", "once").returncode == 0
    out = as_guest(net, info, "echo", "twice")
    assert out.returncode == 4, (out.stdout, out.stderr)
    assert "no uses left" in out.stderr


def test_an_expired_share_is_refused(net: Any) -> None:
    info = share(net, "--ttl", "1h")
    db = sqlite3.connect(str(net.relay.data_dir / "relay.db"))
    with db:                                                  # an hour passes
        db.execute("UPDATE shares SET expires = expires - 7200 WHERE id = ?", (info["id"],))
    db.close()
    out = as_guest(net, info, "echo", "late")
    assert out.returncode == 4, (out.stdout, out.stderr)
    assert "has expired" in out.stderr
    # `hosts` with it: the guest's hint, not "run `cmdop login`" (found by a black-box pass)
    env, argv = guest_argv(info, "echo", "late")
    relay_flags = argv[1:argv.index(net.a.machine)]
    out = net.guest.run("hosts", *relay_flags, **env)
    assert out.returncode == 4, (out.stdout, out.stderr)
    assert "cmdop login" not in out.stderr and "share" in out.stderr, out.stderr
    listed = json.loads(net.owner.run("connect", "share", "list", "--json").stdout)
    assert next(r for r in listed if r["id"] == info["id"])["state"] == "expired"


def test_revoking_a_share_cuts_the_guests_running_command_and_refuses_the_next(net: Any) -> None:
    info = share(net, "--ttl", "1h")
    secs = unique_seconds()
    remote = net.cluster.mark(["sleep", secs])
    env, argv = guest_argv(info, "sleep", secs)
    live = net.cluster.spawn(["env", *(f"{k}={v}" for k, v in env.items()), PY, "-m", "cmdop",
                              *argv], net.guest, "guest")
    wait_for(lambda: procs_with_argv(remote), 30, "the guest's remote sleep to start")
    out = net.owner.run("connect", "share", "revoke", info["id"])
    assert out.returncode == 0, out.stderr
    assert live.proc.wait(timeout=GONE_TIMEOUT_S) == 4, live.log()
    assert "revoked" in live.log()
    wait_for(lambda: not procs_with_argv(remote), GONE_TIMEOUT_S, "the remote sleep to be killed")
    out = as_guest(net, info, "echo", "again")
    assert out.returncode == 4 and "revoked" in out.stderr, (out.stdout, out.stderr)


def test_a_share_needs_an_explicit_expiry(net: Any) -> None:
    out = net.owner.run("connect", "share", net.a.machine)
    assert out.returncode == 2 and "--no-expiry" in out.stderr, out.stderr
    out = net.owner.run("connect", "share", net.a.machine, "--ttl", "0h")
    assert out.returncode == 2, out.stderr


@pytest.mark.parametrize("command", [["exec"], ["call"]])
def test_a_guest_without_the_pin_is_told_how_to_trust_the_relay(net: Any, command: list[str]) -> None:
    """Found by a black-box pass: a guest's exec/call to a self-signed relay without
    --relay-fingerprint hung for good once the guest had the host's key pinned (from an earlier
    call with the pin): the call went straight to the stream, which waited up to the command's
    deadline for a TLS connection that could never be made."""
    info = share(net, "--ttl", "1h")
    home = net.cluster.home(f"guest-nopin-{command[0]}")
    assert as_guest(net, info, "echo", "pin", home=home).returncode == 0   # pins the host key
    env, argv = guest_argv(info, "echo", "nopin")
    i = argv.index("--relay-fingerprint")
    del argv[i:i + 2]
    if command == ["call"]:
        host = argv[argv.index("--") - 1]
        argv = ["call", *[a for a in argv[1:argv.index("--") - 1]], host, "list_dir",
                "--input", json.dumps({"path": "/tmp"})]
    out = home.run(*argv, timeout=60, **env)
    assert out.returncode == 5, (out.stdout, out.stderr)
    assert "does not trust" in out.stderr and "--relay-fingerprint" in out.stderr, out.stderr
