"""A throw-away PostgreSQL server for tests: `initdb` into a temporary directory, `pg_ctl start`
listening on a Unix socket in that directory (trusted) and on 127.0.0.1:a free port (SCRAM
passwords), a fresh database
per test, stopped and removed at the end.

The binaries come from `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin (Debian's
`postgresql` package; `.ci/setup` installs it). initdb refuses to run as root, so under root the
server runs as `nobody` (setpriv) in a directory it owns. Missing binaries skip the PostgreSQL
cases with the reason, except under CI=true, where they fail: CI installs them.

Fixtures (import them into a test module): `pg_server` (session), `pg_database` (session) and
`pg_dsn` (that database with no relay schema: a fresh store for one test).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from test_daemon_helpers import peer_missing

START_TIMEOUT_S = 60


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    candidates: list[str] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    # Debian keeps the server beside its version: newest first (15 before 9.6 needs numbers).
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: [int(x) if x.isdigit() else 0 for x in p.split("/")[-2].split(".")],
                  reverse=True)
    candidates += versions
    for c in candidates:
        if c and all(os.access(os.path.join(c, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return Path(c)
    return None


class PgServer:
    """One PostgreSQL cluster in its own directory (module docstring)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="cmdop-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.user = "cmdop"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("nobody")
            self._as = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.root.chmod(0o700)

    def _run(self, *argv: str) -> None:
        out = subprocess.run([*self._as, *argv], capture_output=True, text=True, check=False,
                             timeout=START_TIMEOUT_S, cwd=self.root,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"})
        if out.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")

    def start(self) -> PgServer:
        """initdb (first time only) and start; returns when it accepts connections."""
        if not self.data.exists():
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth-local=trust",
                      "--auth-host=scram-sha-256",
                      "-E", "UTF8", "--no-locale", "--no-sync")
            self._run("mkdir", "-p", str(self.sock))
        opts = (f"-k {self.sock} -c listen_addresses=127.0.0.1 -p {self.port} -F "
                "-c max_connections=40 -c shared_buffers=16MB")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-o", opts, "-w", "-t", str(START_TIMEOUT_S), "start")
        return self

    def stop(self) -> None:
        """Stop at once (running sessions are cut)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{dbname}?host={self.sock}&port={self.port}"

    def tcp_role(self, role: str, password: str) -> None:
        """A role that logs in over TCP (127.0.0.1:port) with a password (SCRAM)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)))

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.dsn(name)

    def reset_schema(self, dsn: str, schema: str = "cmdop") -> None:
        """Drop the relay's schema from the database at `dsn` (a fresh start for the next test)."""
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    def drop_database(self, dsn: str) -> None:
        import psycopg

        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pg_or_skip() -> Path:
    """The server binaries' directory; skips (fails under CI=true) when they are missing."""
    bindir = find_bindir()
    if bindir is None:
        peer_missing("PostgreSQL server binaries (initdb, pg_ctl) not found: install `postgresql` (.ci/setup)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        peer_missing("psycopg is not installed (a cmdop dependency: bash .ci/setup)")
    return bindir


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer(pg_or_skip())
    try:
        yield server.start()
    finally:
        server.remove()


@pytest.fixture(scope="session")
def pg_database(pg_server: PgServer) -> str:
    return pg_server.create_database()


@pytest.fixture
def pg_dsn(pg_server: PgServer, pg_database: str) -> Iterator[str]:
    """The session's database with no relay schema in it: dropping the schema (5 ms) is much
    faster than a new database (300 ms) per test."""
    pg_server.reset_schema(pg_database)
    yield pg_database
    pg_server.reset_schema(pg_database)
