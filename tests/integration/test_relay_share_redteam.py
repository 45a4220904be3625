"""Red team of guest shares with real processes: a relay, an agent A (key ops) whose machine has
a password and `remote_requires_password: true`, an agent B (key ops), an owner O holding a
second key of the workspace (`minter`) that mints the shares, and a guest G with nothing
configured (relay_harness.py starts and reaps them).

Attacks that worked when written, fixed since:
- the security model's advice for a leaked link — rotate the workspace key — did nothing: a
  share outlived the key that minted it, its running command went on and new calls passed;
- a guest (whose share lists no such tool) could call `unlock` and try the machine password,
  its wrong attempts slowing down every caller of that machine, the owner included.

Tests run in file order and share one cluster (module fixture `net`).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from relay_harness import (PY, Agent, Cluster, caller, procs_with_argv, unique_seconds,
                           wait_for)

pytestmark = [pytest.mark.network, pytest.mark.slow]

PW = "the machine password 1"
GONE_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cluster = Cluster(tmp_path_factory.mktemp("share-redteam") / "net")
    try:
        relay = cluster.relay()
        keys = {name: relay.admin("key", "create", "demo", "--name", name)
                for name in ("ops", "minter")}
        relay.start()
        a = Agent(cluster, "a", keys["ops"]["key"], relay)
        b = Agent(cluster, "b", keys["ops"]["key"], relay)
        cfg = Path(a.home.env["CMDOP_CONFIG_DIR"]) / "config.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        cfg.write_text("remote_requires_password: true\n")
        os.chmod(cfg, 0o600)
        out = a.home.run("password", "set", "--password-stdin", input=PW + "\n")
        assert out.returncode == 0, out.stderr
        for agent in (a, b):
            agent.start(wait_online=False)
        for agent in (a, b):
            agent.machine = agent.wait_relay_state("online")["relay"]["machine"]
        owner = caller(cluster, "owner", keys["minter"]["key"], relay)
        yield SimpleNamespace(cluster=cluster, relay=relay, keys=keys, a=a, b=b, owner=owner,
                              guest=cluster.home("guest"))
        for agent in (a, b):
            assert agent.proc is not None and "Traceback" not in agent.proc.log()
        assert relay.proc is not None and "Traceback" not in relay.proc.log(), relay.proc.log()
    finally:
        cluster.close()


def share(net: Any, machine: str, *flags: str) -> dict[str, Any]:
    out = net.owner.run("connect", "share", machine, *flags, "--json")
    assert out.returncode == 0, out.stderr
    obj: dict[str, Any] = json.loads(out.stdout)
    return obj


def guest_argv(info: dict[str, Any], *command: str) -> tuple[dict[str, str], list[str]]:
    """The printed command as the guest pastes it: (its environment, its argv after cmdop)."""
    env_word, _cmdop, *argv = shlex.split(info["command"].replace("COMMAND ARGS…",
                                                                  shlex.join(command)))
    name, _, value = env_word.partition("=")
    return {name: value}, argv


# A guest's own client sending `unlock` (the CLI offers guests no way to: `cmdop call HOST
# unlock` is refused, `password unlock` takes no share token): cmdop's caller, scripted.
UNLOCK = """
import json, os, sys
from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint
from cmdop.relay.caller import remote_call
relay, pin, host = sys.argv[1:4]
with RelayChannel(RelayEndpoint(relay, pin), os.environ["CMDOP_SHARE_TOKEN"]) as channel:
    print(json.dumps(remote_call(channel, host, "unlock", {"password": sys.stdin.readline().strip()},
                                 deadline_s=30)))
"""


def test_a_guest_cannot_try_the_machine_password_nor_slow_the_owner_down(net: Any) -> None:
    info = share(net, net.a.machine, "--ttl", "1h", "--tools", "read_file")
    env, argv = guest_argv(info, "true")
    assert argv[1] == "--relay" and argv[3] == "--relay-fingerprint"
    for password in ("not the password at all", PW):
        out = subprocess.run([PY, "-c", UNLOCK, argv[2], argv[4], net.a.machine],
                             env=dict(net.guest.env, **env), input=password + "\n", text=True,
                             capture_output=True, timeout=60, cwd=net.guest.root)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result.get("rule_id") == "password:guest" and "session_token" not in result, result
    records = [r for r in net.a.home.audit() if r.get("tool") == "unlock"]
    assert len(records) == 2 and all(r["rule_id"] == "password:guest" for r in records), records
    assert all(r["caller"]["share_id"] == info["id"] for r in records)
    status = net.a.home.run("password", "status", "--json")
    assert json.loads(status.stdout)["failures"] == 0, status.stdout     # the owner not slowed
    # A guest's refused call is not told to run `cmdop password unlock`, which it cannot
    # (found by a black-box pass).
    env, argv = guest_argv(share(net, net.a.machine, "--ttl", "1h"), "true")
    out = net.guest.run(*argv, **env)
    assert out.returncode == 3 and "a guest cannot unlock" in out.stderr, (out.stdout, out.stderr)
    assert "cmdop password unlock" not in out.stderr


def test_revoking_the_key_that_minted_a_share_cuts_the_guest_and_refuses_the_next(net: Any) -> None:
    info = share(net, net.b.machine, "--ttl", "1h")
    secs = unique_seconds()
    remote = net.cluster.mark(["sleep", secs])
    env, argv = guest_argv(info, "sleep", secs)
    live = net.cluster.spawn(["env", *(f"{k}={v}" for k, v in env.items()), PY, "-m", "cmdop",
                              *argv], net.guest, "guest")
    wait_for(lambda: procs_with_argv(remote), 30, "the guest's remote sleep to start")
    net.relay.admin("key", "revoke", net.keys["minter"]["id"])   # the rotation of a leaked key
    assert live.proc.wait(timeout=GONE_TIMEOUT_S) == 4, live.log()
    assert "revoked" in live.log()
    wait_for(lambda: not procs_with_argv(remote), GONE_TIMEOUT_S, "the remote sleep to be killed")
    env, argv = guest_argv(info, "echo", "again")
    out = net.guest.run(*argv, **env)
    assert out.returncode == 4 and "revoked" in out.stderr, (out.stdout, out.stderr)
