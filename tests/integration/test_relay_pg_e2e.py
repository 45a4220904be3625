"""`cmdop relay serve --store postgresql://…` as a user meets it: real processes (relay, agent,
caller, admin commands) over TLS on loopback, the store in a real PostgreSQL server
(pg_server.py). A remote command runs; a key revoked by an admin command in another process is
noticed by the running relay; with the database stopped, admin commands say so in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pg_server import PgServer, pg_database, pg_dsn, pg_or_skip, pg_server  # noqa: F401
from relay_harness import Agent, Cluster, Relay, caller, wait_for

pytestmark = [pytest.mark.network, pytest.mark.slow]


class PgRelay(Relay):
    """A relay whose store is PostgreSQL; its admin commands get the URL from the environment
    (CMDOP_RELAY_STORE), the server from --store."""

    def __init__(self, cluster: Cluster, data_dir: Path, dsn: str) -> None:
        super().__init__(cluster, data_dir)
        self.dsn = dsn
        self.home.env["CMDOP_RELAY_STORE"] = dsn

    def serve_args(self) -> list[str]:
        return ["--store", self.dsn]

    def started(self, info: dict[str, Any]) -> None:
        assert info["store"].startswith("postgresql://cmdop@"), info


def test_relay_on_postgresql_runs_calls_and_notices_revocations(tmp_path: Path, pg_dsn: str) -> None:
    cluster = Cluster(tmp_path / "net")
    try:
        relay = PgRelay(cluster, tmp_path / "relay-data", pg_dsn)
        relay.admin("workspace", "create", "demo")
        agent_key = relay.admin("key", "create", "demo", "--name", "agent")
        caller_key = relay.admin("key", "create", "demo", "--name", "caller")
        assert not (tmp_path / "relay-data" / "relay.db").exists()     # nothing in SQLite
        relay.start()
        agent = Agent(cluster, "a", agent_key["key"], relay)
        agent.start(wait_online=False)
        machine = agent.wait_relay_state("online")["relay"]["machine"]
        c = caller(cluster, "c", caller_key["key"], relay)
        out = c.run("exec", machine, "--", "seq", "1", "3")
        assert (out.returncode, out.stdout) == (0, "1\n2\n3\n"), out.stderr

        relay.admin("key", "revoke", caller_key["id"])      # another process, same database

        def refused() -> Any:
            again = c.run("exec", machine, "--", "seq", "1", "2")
            return again if again.returncode != 0 else None
        again = wait_for(refused, 30, "the revoked key to be refused")
        assert again.returncode == 4 and "Traceback" not in again.stderr, again.stderr
        assert relay.proc is not None and "Traceback" not in relay.proc.log()
    finally:
        cluster.close()


def test_admin_command_with_the_database_down_is_one_clear_line(tmp_path: Path, pg_dsn: str) -> None:
    cluster = Cluster(tmp_path / "net")
    home = cluster.home("admin")
    dsn = f"postgresql://cmdop:hunter2@/cmdop?host={tmp_path}&port=5999"     # nothing listens
    out = home.run("relay", "key", "list", "--store", dsn, "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 5, out.stderr
    assert "Traceback" not in out.stderr and "hunter2" not in out.stderr + out.stdout
    assert "the relay's database at" in out.stderr and "is not reachable" in out.stderr
    assert "password in --store is visible to other users" in out.stderr
    out = home.run("relay", "key", "list", "--json", "--data-dir", str(tmp_path / "d"),
                   CMDOP_RELAY_STORE=pg_dsn)
    assert out.returncode == 0 and json.loads(out.stdout) == [], out.stderr


def test_database_down_refuses_new_callers_clearly_then_recovers(tmp_path: Path) -> None:
    """PostgreSQL stopped under a running relay: a caller's credential cannot be checked, so
    the call is refused (fail closed) with a line that says why; started again, calls work."""
    server = PgServer(pg_or_skip()).start()
    cluster = Cluster(tmp_path / "net")
    try:
        relay = PgRelay(cluster, tmp_path / "relay-data", server.dsn())
        relay.admin("workspace", "create", "demo")
        key = relay.admin("key", "create", "demo", "--name", "caller")
        relay.start()
        c = caller(cluster, "c", key["key"], relay)
        assert c.run("hosts", "--json").returncode == 0
        server.stop()
        out = c.run("hosts", "--json")
        assert out.returncode != 0 and "database is unreachable" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        server.start()
        wait_for(lambda: c.run("hosts", "--json").returncode == 0 or None, 30,
                 "the relay to reach its database again")
        assert relay.proc is not None and "Traceback" not in relay.proc.log(), relay.proc.log()
    finally:
        cluster.close()
        server.remove()


def test_database_down_keeps_linked_agents_and_calls_in_flight(tmp_path: Path) -> None:
    """PostgreSQL stopped under a relay with an agent linked and a call running: the call
    finishes, the agent stays linked as the identity verified when it linked, and every new
    call is refused in one clear line (each Call RPC checks its caller's credential anew,
    which needs the database). Started again: calls work, nothing restarted, the agent's link
    is the same one; the relay logged the outage once, not once per retry."""
    from relay_harness import procs_with_argv, unique_seconds

    server = PgServer(pg_or_skip()).start()
    cluster = Cluster(tmp_path / "net")
    try:
        relay = PgRelay(cluster, tmp_path / "relay-data", server.dsn())
        relay.admin("workspace", "create", "demo")
        agent_key = relay.admin("key", "create", "demo", "--name", "agent")
        caller_key = relay.admin("key", "create", "demo", "--name", "caller")
        relay.start()
        agent = Agent(cluster, "a", agent_key["key"], relay).start()
        c = caller(cluster, "c", caller_key["key"], relay)
        assert c.run("exec", agent.machine, "--", "seq", "1", "2").returncode == 0

        secs = unique_seconds(base=6)
        remote = cluster.mark(["sleep", secs])
        live = c.popen(cluster, "exec", agent.machine, "--", "sleep", secs)
        wait_for(lambda: procs_with_argv(remote), 30, "the remote sleep to start")
        server.stop()
        out = c.run("exec", agent.machine, "--", "seq", "1", "2")
        assert out.returncode == 5 and "database is unreachable" in out.stderr, out.stderr
        assert "try again shortly" in out.stderr and "Traceback" not in out.stderr
        assert live.proc.wait(timeout=60) == 0, live.log()          # the call in flight ended well
        st = agent.status()
        assert st is not None and st["relay"]["state"] == "online", st

        server.start()
        back = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(
            c.run("exec", agent.machine, "--", "seq", "1", "3")), 30, "calls to work again")
        assert back.stdout == "1\n2\n3\n"
        assert relay.proc is not None
        log = relay.proc.log()
        assert log.count(" linked from ") == 1, log               # never re-linked
        assert log.count("cannot read revocations") == 1, log      # once per outage
        assert log.count("is reachable again") == 1 and log.count("connected again") == 1, log
        assert "Traceback" not in log, log
    finally:
        cluster.close()
        server.remove()
