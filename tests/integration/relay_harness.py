"""Helpers for the relay end-to-end tests: a real `cmdop relay serve`, real `cmdop agent run`
daemons and caller homes, each a separate process talking TLS gRPC over loopback.
(No tests in this module.)

Every process started here is tracked by its `Cluster` and ended (by its own pid: SIGTERM, then
SIGKILL) when the cluster closes, so a failing test never leaves a relay or an agent behind.
Remote commands that a test expects to be killed carry a unique marker argument
(`sleep 30.000123`): `procs_with_argv` finds them by their exact argv in /proc.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

from test_daemon_helpers import wait_for  # noqa: E402  (one poller for every daemon test)

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
START_TIMEOUT_S = 30.0
_marker = itertools.count(1)


def free_port() -> int:
    """A loopback port nobody listens on right now (the relay rejects `--listen HOST:0`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_seconds(base: int = 30) -> str:
    """A `sleep` argument no other process on the machine has: `30.000<pid><n>`."""
    return f"{base}.{os.getpid() % 100000:05d}{next(_marker):04d}"


def procs_with_argv(argv: list[str]) -> list[int]:
    """Pids of processes whose argv is exactly `argv` (as /proc/PID/cmdline shows it)."""
    want = b"\0".join(a.encode() for a in argv) + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read() == want:
                    found.append(int(entry))
        except OSError:
            continue
    return found


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


POLICY = """\
version: 1
mode: strict
ask_timeout_s: 60
self_bypass: true
rules:
- rule: execute_command(seq *)
  action: allow
- rule: execute_command(echo *)
  action: allow
- rule: execute_command(echo ask-*)
  action: ask
- rule: execute_command(exit *)
  action: allow
- rule: execute_command(sleep *)
  action: allow
- rule: execute_command(head -c *)
  action: allow
- rule: execute_command(tee -a *)
  action: allow
- rule: execute_command(cat *)
  action: allow
- rule: read_file
  action: allow
"""


@dataclass
class Home:
    """A private HOME (0700) with cmdop's dirs and socket inside it."""

    root: Path
    env: dict[str, str]

    @classmethod
    def make(cls, root: Path) -> "Home":
        root.mkdir(mode=0o700, parents=True)
        os.chmod(root, 0o700)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CMDOP_", "XDG_"))}
        env.update(
            HOME=str(root),
            CMDOP_CONFIG_DIR=str(root / ".config" / "cmdop"),
            CMDOP_STATE_DIR=str(root / ".local" / "state" / "cmdop"),
            CMDOP_HOME=str(root / ".cmdop"),
            CMDOP_SOCKET_PATH=str(root / "run" / "agent.sock"),
            PYTHONPATH=str(REPO),
            GRPC_VERBOSITY="ERROR",
        )
        return cls(root, env)

    @property
    def socket_path(self) -> str:
        return self.env["CMDOP_SOCKET_PATH"]

    @property
    def audit_path(self) -> Path:
        return Path(self.env["CMDOP_STATE_DIR"]) / "audit.log"

    def run(self, *args: str, input: str | None = None, timeout: float = 60,
            **extra_env: str) -> subprocess.CompletedProcess[str]:
        """`python -m cmdop ARGS` in this home, output captured."""
        return subprocess.run([PY, "-m", "cmdop", *args], env=dict(self.env, **extra_env),
                              input=input, text=True, capture_output=True, timeout=timeout,
                              cwd=self.root)

    def run_bytes(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([PY, "-m", "cmdop", *args], env=self.env, capture_output=True,
                              timeout=timeout, cwd=self.root)

    def store_key(self, key: str, workspace: str, relay: str, fingerprint: str) -> None:
        out = self.run("connect", "key", "set", "--workspace", workspace, "--relay", relay,
                       "--relay-fingerprint", fingerprint, "-", input=key + "\n")
        assert out.returncode == 0, out.stderr

    def write_policy(self, text: str = POLICY) -> Path:
        path = Path(self.env["CMDOP_CONFIG_DIR"]) / "permissions.yaml"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(textwrap.dedent(text))
        os.chmod(path, 0o600)
        return path

    def audit(self) -> list[dict[str, Any]]:
        try:
            text = self.audit_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def audit_for(self, target: str, timeout: float = 20.0) -> dict[str, Any]:
        """The (last) audit record whose target is exactly `target`, once it is written."""
        def find() -> dict[str, Any] | None:
            hits = [r for r in self.audit() if r.get("target") == target]
            return hits[-1] if hits else None
        return wait_for(find, timeout, f"an audit line for {target!r} in {self.audit_path}")


class Proc:
    """A tracked subprocess with its combined output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path,
                 what: str = "") -> None:
        self.log_path = log_path
        self.what = what
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd=cwd,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Signal it and reap it; SIGKILL if it does not end within `timeout`."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Relay:
    """`cmdop relay serve` on a fixed loopback port (so it can be restarted on the same one)."""

    def __init__(self, cluster: "Cluster", data_dir: Path) -> None:
        self.cluster = cluster
        self.data_dir = data_dir
        self.port = free_port()
        self.fingerprint = ""
        self.proc: Proc | None = None
        self.home = cluster.home("relay-admin")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin(self, *args: str) -> Any:
        """`cmdop relay ARGS --data-dir D --json`, parsed."""
        out = self.home.run("relay", *args, "--data-dir", str(self.data_dir), "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def serve_args(self) -> list[str]:
        """More `relay serve` arguments (a subclass's OAuth or OIDC settings)."""
        return []

    def started(self, info: dict[str, Any]) -> None:
        """Check and keep more of the start line (subclasses)."""

    def start(self) -> "Relay":
        assert self.proc is None or not self.proc.alive()
        self.proc = self.cluster.spawn(
            [PY, "-m", "cmdop", "relay", "serve", "--listen", self.address, *self.serve_args(),
             "--data-dir", str(self.data_dir), "--json"], self.home, "relay")
        proc = self.proc

        def ready() -> dict[str, Any] | None:
            if not proc.alive():
                raise AssertionError(f"relay exited {proc.proc.returncode}:\n{proc.log()}")
            for line in proc.log().splitlines():
                if line.startswith("{"):
                    info: dict[str, Any] = json.loads(line)   # the start line: port, fingerprint
                    return info
            return None

        info = wait_for(ready, START_TIMEOUT_S, "the relay's start line")
        assert info["port"] == self.port, info
        self.fingerprint = info["fingerprint"]
        self.started(info)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.stop(sig)


class Agent:
    """`cmdop agent run` in its own home, linked to the relay with a stored key."""

    def __init__(self, cluster: "Cluster", name: str, key: str | None, relay: Relay | None,
                 workspace: str = "demo", policy: str = POLICY, home: Home | None = None) -> None:
        """`key` None: the home's only credential is a login (`cmdop login` ran in `home`)."""
        self.cluster = cluster
        self.home = home or cluster.home(name)
        if key is not None:
            assert relay is not None
            self.home.store_key(key, workspace, relay.address, relay.fingerprint)
        self.home.write_policy(policy)
        # The home is sealed read-only inside the sandbox; entries that exist when the agent
        # starts are re-exposed writable: commands write here.
        self.work = self.home.root / "work"
        self.work.mkdir(mode=0o700)
        self.proc: Proc | None = None
        self.machine = ""          # the relay's name for this machine
        self.machine_id = ""

    def start(self, wait_online: bool = True) -> "Agent":
        self.proc = self.cluster.spawn([PY, "-m", "cmdop", "agent", "run"], self.home, "agent")
        if wait_online:
            st = self.wait_relay_state("online")
            self.machine = st["relay"]["machine"]
            self.machine_id = (Path(self.home.env["CMDOP_STATE_DIR"]) / "machine_id").read_text().strip()
        return self

    def status(self) -> dict[str, Any] | None:
        """The running agent's status over its socket (None while it does not answer)."""
        from cmdop.core.errors import DaemonError
        from cmdop.daemon.client import DaemonClient

        try:
            with DaemonClient.connect(self.home.socket_path) as c:
                st: dict[str, Any] = c.status()
                return st
        except (DaemonError, OSError):
            return None

    def wait_relay_state(self, state: str, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        proc = self.proc
        assert proc is not None

        def check() -> dict[str, Any] | None:
            if not proc.alive():
                raise AssertionError(f"agent exited {proc.proc.returncode}:\n{proc.log()}")
            st = self.status()
            return st if st and (st.get("relay") or {}).get("state") == state else None

        return wait_for(check, timeout, f"the agent's relay link to be {state}", every=0.1)


class Cluster:
    """A directory of homes and every process started in them; `close()` ends them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.marked: list[list[str]] = []     # argvs of remote commands to sweep up at close
        self._n = itertools.count(1)

    def home(self, name: str) -> Home:
        return Home.make(self.root / f"{name}-{next(self._n)}")

    def spawn(self, argv: list[str], home: Home, what: str) -> Proc:
        p = Proc(argv, home.env, self.root / f"{what}-{next(self._n)}.log", home.root, what)
        self.procs.append(p)
        return p

    def relay(self, workspace: str = "demo") -> Relay:
        r = Relay(self, self.root / f"relay-data-{next(self._n)}")
        r.admin("workspace", "create", workspace)
        return r

    def mark(self, argv: list[str]) -> list[str]:
        """Remember a remote command's argv, so close() kills any survivor."""
        self.marked.append(argv)
        return argv

    def close(self) -> None:
        # Relays last: a relay stopping with agent links still open waits out its grace period.
        for p in sorted(reversed(self.procs), key=lambda p: p.what == "relay"):
            p.stop(signal.SIGTERM, timeout=15)
        for argv in self.marked:
            kill_pids(procs_with_argv(argv))


@dataclass
class Caller:
    """A caller machine without an agent: its `cmdop exec` goes straight to the relay."""

    home: Home
    extra: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.home.run(*args, timeout=timeout, **self.extra)

    def popen(self, cluster: Cluster, *args: str) -> Proc:
        return cluster.spawn([PY, "-m", "cmdop", *args], self.home, "caller")


def caller(cluster: Cluster, name: str, key: str, relay: Relay, workspace: str = "demo",
           fingerprint: str | None = None) -> Caller:
    h = cluster.home(name)
    h.store_key(key, workspace, relay.address, fingerprint or relay.fingerprint)
    return Caller(h)


def token_path(home: Home) -> Path:
    """Where `cmdop login` keeps the login of `home`."""
    return Path(home.env["CMDOP_HOME"]) / "token.json"


def device_login(home: Home, args: list[str], approve: Callable[[str], None], timeout: float,
                 env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`cmdop login ARGS` in `home` (with `env`, by default the home's), `approve(user_code)`
    called with the code it prints; its exit code, stdout and all its stderr. Killed and reaped
    whatever happens (a failed `approve`, a timeout)."""
    proc = subprocess.Popen([PY, "-m", "cmdop", "login", *args], env=env or home.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=home.root)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "enter the code:" in line:
                approve(line.split()[-1])
                break
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, "".join(seen) + err


def channel(relay: Relay, key: str) -> Any:
    """An in-process RelayChannel (pinned) with `key`."""
    from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint

    return RelayChannel(RelayEndpoint(address=relay.address, fingerprint=relay.fingerprint), key)


def sealed_start(agent: Agent, tool: str, tool_input: dict[str, Any],
                 **fields: Any) -> tuple[Any, Any]:
    """A raw CallStart for `agent`, sealed end to end to its key as `cmdop exec` seals it (read
    from its key file: a test may), and the ResponseOpener of its answer; `fields` are more
    CallStart fields (e.g. a forged `caller`)."""
    import uuid

    from cmdop.adapters import e2e
    from cmdop.adapters.e2e_files import agent_key_path
    from cmdop.relay.proto import relay_pb2 as pb

    state = Path(agent.home.env["CMDOP_STATE_DIR"])
    key = e2e.load_private(Path(agent_key_path(str(state))).read_bytes())
    cid = uuid.uuid4().hex
    request = e2e.Request(call_id=cid, machine_id=(state / "machine_id").read_text().strip(),
                          caller="", tool=tool, input_json=json.dumps(tool_input).encode(),
                          response_key=e2e.new_response_key(),
                          stream=bool(fields.get("stream")))   # sealed: the agent reads it there
    start = pb.CallStart(call_id=cid, host=agent.machine, deadline_ms=60_000,
                         sealed=e2e.seal_request(request, key.public), **fields)
    return start, e2e.ResponseOpener(request)
