"""Device login end to end against the relay's own OAuth cabinet, with no API key anywhere:
`cmdop relay serve` → `cmdop login --issuer https://127.0.0.1:PORT` → `cmdop relay approve CODE`
→ `cmdop agent run` (linked with the login) → `cmdop hosts` / `cmdop exec` from a second
machine logged in too. Every program is a separate process (relay_harness.py starts and reaps
them); each "machine" is its own HOME.

The relay issues 12-second access tokens (`relay serve --access-token-ttl`, hidden), so the
agent's refresher runs many cycles within the test: remote calls keep working across them and
the agent's link never drops; the refresher does not hammer the issuer. Then the failure paths:
the issuer gone (the agent DEGRADED with the reason, recovered when the relay is back on the
same ports and data dir), a disabled account, a revoked login and an expired one (exit 4 with a
hint to run `cmdop login`).

One relay and its logins are shared by the module (`world`); the test that stops the relay
runs last. No timing is asserted (generous waits); the refresh count is bounded only loosely.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from relay_harness import (
    START_TIMEOUT_S, Agent, Caller, Cluster, Home, Relay, free_port, procs_with_argv,
    device_login, token_path, unique_seconds, wait_for,
)

pytestmark = [pytest.mark.network, pytest.mark.slow]

WORKSPACE = "demo"
TTL_S = 12                    # the relay's access-token lifetime in this module
LOGIN_TIMEOUT_S = 60.0


class OAuthRelay(Relay):
    """`cmdop relay serve` with its OAuth cabinet on a fixed port too (a restart keeps the issuer
    URL) and short-lived access tokens."""

    def __init__(self, cluster: Cluster, data_dir: Path, ttl_s: int) -> None:
        super().__init__(cluster, data_dir)
        self.oauth_port = free_port()
        while self.oauth_port == self.port:
            self.oauth_port = free_port()
        self.ttl_s = ttl_s
        self.issuer = ""

    def serve_args(self) -> list[str]:
        return ["--oauth-listen", f"127.0.0.1:{self.oauth_port}",
                "--access-token-ttl", str(self.ttl_s)]

    def started(self, info: dict[str, Any]) -> None:
        assert info["oauth_port"] == self.oauth_port, info
        self.issuer = info["issuer"]
        assert self.issuer == f"https://127.0.0.1:{self.oauth_port}", info


def login(relay: OAuthRelay, home: Home, account: str) -> dict[str, Any]:
    """`cmdop login` in `home`, answered by `cmdop relay approve` with the user code it prints."""
    def approve(code: str) -> None:
        approved = relay.admin("approve", code, "--account", account, "--workspace", WORKSPACE)
        assert approved["account"]["email"] == account, approved

    code, out, err = device_login(
        home, ["--issuer", relay.issuer, "--issuer-fingerprint", relay.fingerprint,
               "--workspace", WORKSPACE, "--no-browser", "--json"], approve, LOGIN_TIMEOUT_S)
    assert code == 0, err
    status: dict[str, Any] = json.loads(out)
    assert (status["account"], status["workspace"]) == (account, WORKSPACE), status
    return status


def login_all(relay: OAuthRelay, logins: dict[str, tuple[Home, str]]) -> dict[str, dict[str, Any]]:
    """Several logins at once (each waits one polling interval of the device flow)."""
    results: dict[str, Any] = {}

    def one(name: str, home: Home, account: str) -> None:
        try:
            results[name] = login(relay, home, account)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            results[name] = exc

    threads = [threading.Thread(target=one, args=(n, h, a), daemon=True) for n, (h, a) in logins.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOGIN_TIMEOUT_S + 30)
    for name, result in results.items():
        if isinstance(result, BaseException):
            raise AssertionError(f"the login of {name} failed: {result}") from result
    assert set(results) == set(logins)
    return results


class LoginAgent(Agent):
    """`cmdop agent run` in a home whose only credential is its login."""

    def __init__(self, cluster: Cluster, home: Home) -> None:
        super().__init__(cluster, "", None, None, home=home)

    def cli_status(self) -> dict[str, Any]:
        out = self.home.run("agent", "status", "--json")
        st: dict[str, Any] = json.loads(out.stdout) if out.stdout.strip().startswith("{") else {}
        return st


def json_out(out: subprocess.CompletedProcess[str]) -> Any:
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The relay (12 s tokens); machine A: logged in as alice, its agent linked with the login;
    machine C: logged in as carol, no agent; D (dave) and E (erin): logged in, for the account
    and revocation tests."""
    cluster = Cluster(tmp_path_factory.mktemp("login-e2e") / "w")
    try:
        relay = OAuthRelay(cluster, cluster.root / "relay-data", TTL_S)
        relay.admin("workspace", "create", WORKSPACE)
        relay.start()
        homes = {name: cluster.home(name) for name in ("a", "c", "d", "e")}
        accounts = {"a": "alice@example.com", "c": "carol@example.com", "d": "dave@example.com",
                    "e": "erin@example.com"}
        logins = login_all(relay, {n: (homes[n], accounts[n]) for n in homes})
        a = LoginAgent(cluster, homes["a"])
        a.start()
        w = SimpleNamespace(cluster=cluster, relay=relay, a=a, c=Caller(homes["c"]), d=Caller(homes["d"]),
                            e=Caller(homes["e"]), homes=homes, accounts=accounts, logins=logins)
        yield w
        assert a.proc is not None and a.proc.alive(), a.proc and a.proc.log()
        assert "Traceback" not in a.proc.log(), a.proc.log()
        assert relay.proc is not None and relay.proc.alive(), relay.proc and relay.proc.log()
        assert "Traceback" not in relay.proc.log(), relay.proc.log()
        verify = a.home.run("permissions", "audit", "--verify")
        assert verify.returncode == 0, (verify.stdout, verify.stderr)
    finally:
        cluster.close()


# -- 1. the relay's own cabinet end to end --------------------------------------------------------


def test_login_agent_and_exec_from_another_machine_with_no_api_key(world: Any) -> None:
    relay, a, c = world.relay, world.a, world.c
    # the login names the relay the issuer advertised, pinned by the same certificate
    for name in ("a", "c"):
        doc = json.loads(token_path(world.homes[name]).read_text())
        assert doc["relay"] == relay.address and doc["relay_fingerprint"] == relay.fingerprint, doc
        assert doc["account"] == world.accounts[name] and doc["workspace"] == WORKSPACE
        assert doc["refresh_token"] and doc["expires_at"]
    # A's agent linked with its login
    st = a.status()
    assert st is not None
    assert st["relay"]["state"] == "online" and st["relay"]["source"] == "oauth", st["relay"]
    assert st["relay"]["workspace"] == WORKSPACE and st["relay"]["key_id"] == "", st["relay"]
    assert st["relay"]["connects"] == 1, st["relay"]
    assert st["login"]["present"] is True, st["login"]

    # C (carol, no agent) lists A online and runs a command on it
    hosts = {h["name"]: h for h in json_out(c.run("hosts", "--json"))}
    assert hosts[a.machine]["online"], hosts
    out = c.run("exec", a.machine, "--", "seq", "1", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "1\n2\n3\n"
    rec = a.home.audit_for("seq 1 3")
    assert rec["decision"] == "allow" and rec["user"] == "carol@example.com", rec
    assert rec["caller"]["kind"] == "remote" and rec["caller"]["credential"] == "oauth", rec
    assert rec["caller"]["workspace"] == WORKSPACE, rec

    # `--workspace demo` / CMDOP_WORKSPACE=demo with no stored key: the login is for demo
    assert c.run("hosts", "--workspace", WORKSPACE).returncode == 0
    out = c.home.run("hosts", CMDOP_WORKSPACE=WORKSPACE)
    assert out.returncode == 0, out.stderr
    # ... but a workspace neither a stored key nor the login is for is refused
    out = c.run("hosts", "--workspace", "elsewhere")
    assert out.returncode == 4 and "elsewhere" in out.stderr, out.stderr

    # no API key anywhere: no ssh_workspaces.json in any home, none in the environment
    assert not list(world.cluster.root.rglob("ssh_workspaces.json"))
    assert not any(k == "CMDOP_API_KEY" for h in world.homes.values() for k in h.env)


def test_no_credential_at_all_names_login_too(world: Any) -> None:
    h = world.cluster.home("nothing")
    out = h.run("hosts")
    assert out.returncode == 4, (out.stdout, out.stderr)
    assert "cmdop login" in out.stderr and "connect key set" in out.stderr, out.stderr


# -- 2. the daemon's refresher over many cycles ----------------------------------------------------


def test_refresh_cycles_keep_the_link_and_calls_alive(world: Any) -> None:
    """12 s tokens: the refresher renews the login every few seconds (never in a tight loop);
    a long remote call and a stream of short ones run across the refreshes; the agent's link
    is the same one throughout (its `connects` does not move)."""
    a, c, cluster = world.a, world.c, world.cluster
    before = a.status()
    assert before is not None and before["relay"]["state"] == "online"
    connects, refreshes = before["relay"]["connects"], before["login"]["refreshes"]
    started = time.monotonic()

    secs = unique_seconds(20)
    remote = cluster.mark(["sleep", secs])
    long_call = c.popen(cluster, "exec", a.machine, "--", "sh", "-c", f"echo begin; sleep {secs}; echo end")
    wait_for(lambda: procs_with_argv(remote), 30, "the long remote call to start")

    results: list[tuple[int, subprocess.CompletedProcess[str]]] = []
    i = 0
    while True:
        i += 1
        results.append((i, c.run("exec", a.machine, "--", "seq", "1", str(i))))
        st = a.status() or {}
        assert (st.get("relay") or {}).get("connects") == connects, st.get("relay")
        grown = (st.get("login") or {}).get("refreshes", 0) - refreshes
        if grown >= 3 and not long_call.alive():
            break
        assert time.monotonic() - started < 150, f"only {grown} refreshes so far: {st.get('login')}"
        time.sleep(1.0)

    assert long_call.proc.wait(timeout=60) == 0, long_call.log()
    assert long_call.log().split() == ["begin", "end"], long_call.log()
    for n, out in results:
        assert out.returncode == 0 and out.stdout == "".join(f"{k}\n" for k in range(1, n + 1)), (n, out)

    after = a.status()
    assert after is not None
    elapsed = time.monotonic() - started
    assert after["relay"]["state"] == "online" and after["relay"]["connects"] == connects == 1, after["relay"]
    assert after["state"] == "online" and after["login"]["status"] == "OK", after["login"]
    # not a tight loop: about one refresh per 2/3 of the token's life (a loose bound)
    done = after["login"]["refreshes"] - refreshes
    assert 3 <= done <= 2 + 3 * elapsed / TTL_S, (done, elapsed)
    # every call came from carol's login, refreshed by her own CLI on each command
    for rec in a.home.audit()[-3:]:
        assert rec["user"] == "carol@example.com" and rec["caller"]["credential"] == "oauth", rec


# -- 4. expired, disabled and revoked logins ---------------------------------------------------------


def copy_login(cluster: Cluster, source: Home, name: str, **changes: Any) -> Caller:
    """A new home holding `source`'s token.json (the same login on another machine), with
    `changes` to its fields."""
    home = cluster.home(name)
    Path(home.env["CMDOP_HOME"]).mkdir(mode=0o700, parents=True)
    doc = json.loads(token_path(source).read_text())
    doc.update(changes)
    token_path(home).write_text(json.dumps(doc))
    os.chmod(token_path(home), 0o600)
    return Caller(home)


def test_a_disabled_account_exits_4_with_the_login_hint(world: Any) -> None:
    """Refused twice over: refreshing the login fails, and the access token itself is refused
    by the relay (a copy whose expiry says it needs no refresh yet: sent as it is)."""
    d = world.d
    assert d.run("hosts").returncode == 0                  # (refreshes: a token < TTL_S old)
    unrefreshed = copy_login(world.cluster, d.home, "d2", expires_at=int(time.time()) + 3600)
    world.relay.admin("account", "disable", world.accounts["d"])
    for who in (d, unrefreshed):
        for argv in (("hosts",), ("exec", world.a.machine, "--", "seq", "1", "2")):
            out = who.run(*argv)
            assert out.returncode == 4, (argv, out.stdout, out.stderr)
            assert "hint: run `cmdop login`" in out.stderr, out.stderr
            assert "Traceback" not in out.stderr
    assert "refused the login" in unrefreshed.run("hosts").stderr


def test_a_revoked_login_exits_4_with_the_login_hint(world: Any) -> None:
    """E's login copied to F (the same login on a second machine) and to F2 (a copy whose
    expiry says it needs no refresh: its access token is sent as it is); `cmdop logout` on E
    revokes the refresh token and the access token at the relay: both are refused."""
    e = world.e
    assert e.run("hosts").returncode == 0                  # (refreshes: a token < TTL_S old)
    f = copy_login(world.cluster, e.home, "f")
    f2 = copy_login(world.cluster, e.home, "f2", expires_at=int(time.time()) + 3600)
    out = e.home.run("logout", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["revoked"] is True, out.stderr
    for who in (f, f2):
        out = who.run("hosts")
        assert out.returncode == 4, (out.stdout, out.stderr)
        assert "hint: run `cmdop login`" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "revoked" in f.run("hosts").stderr
    assert "refused the login" in f2.run("hosts").stderr
    out = e.run("hosts")                         # logged out: no credential at all
    assert out.returncode == 4 and "cmdop login" in out.stderr, out.stderr


def test_an_expired_login_exits_4_with_the_login_hint(world: Any) -> None:
    """A login past its expiry with no refresh token (the issuer gave none, or it was dropped)."""
    g = copy_login(world.cluster, world.homes["c"], "g", refresh_token="",
                   expires_at=int(time.time()) - 60)
    out = g.run("hosts")
    assert out.returncode == 4, (out.stdout, out.stderr)
    assert "expired" in out.stderr and "cmdop login" in out.stderr, out.stderr


# -- 3. the issuer gone: DEGRADED with the reason, then recovery (stops the relay: last) ----------


def test_refresh_failure_degrades_the_agent_and_it_recovers(world: Any) -> None:
    relay, a = world.relay, world.a
    st = a.status()
    assert st is not None and st["relay"]["state"] == "online", st
    connects = st["relay"]["connects"]
    # right after a refresh: the token now expires within TTL_S while the relay is gone
    refreshes = st["login"]["refreshes"]
    wait_for(lambda: (a.status() or {}).get("login", {}).get("refreshes", 0) > refreshes,
             4 * TTL_S, "the next refresh")
    relay.kill(signal.SIGKILL)

    def degraded() -> dict[str, Any] | None:
        out = a.cli_status()
        return out if out.get("state") == "DEGRADED" else None

    st = wait_for(degraded, 6 * TTL_S, "`cmdop agent status` to say DEGRADED", every=0.5)
    assert st["login"]["status"] == "DEGRADED", st["login"]
    assert "refresh" in st["login"]["reason"] and "expired" in st["login"]["reason"], st["login"]

    relay.start()                                    # the same ports and data dir

    def recovered() -> dict[str, Any] | None:
        out = a.cli_status()
        rel, log = out.get("relay") or {}, out.get("login") or {}
        ok = (out.get("state") == "ONLINE" and rel.get("state") == "online"
              and rel.get("connects", 0) > connects and log.get("status") == "OK")
        return out if ok else None

    st = wait_for(recovered, 150, "the agent to recover (ONLINE, link back, login OK)", every=0.5)
    assert st["relay"]["source"] == "oauth" and st["relay"]["machine"] == a.machine, st["relay"]
    out = world.c.run("exec", a.machine, "--", "seq", "1", "4")
    assert out.returncode == 0 and out.stdout.split() == ["1", "2", "3", "4"], out.stderr
