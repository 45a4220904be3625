"""Red team of the kernel floor: every attempt to get past it, by its effect.

Each attempt runs end to end through the production path (gate with the static floor switched
off → audit → `sandbox_for_agent` → fork server → command) as a REMOTE caller of a root agent in
`mode: bypass`, against a fixture home whose secrets carry a random marker. The agent runs in a
child process (`DRIVER`), so an attempt that hangs, crashes or confines the agent never touches
the test process; the child is the "agent" whose /proc entries, fds and memory the attempts aim
at (it holds an fd on the fixture's ssh key and has the key in its memory, as a daemon holds its
token).

Two forms of the floor, as `test_kernel_floor_modes` names them:
- "mount": the mount namespace a root agent builds;
- "landlock": the same agent where unshare() is refused (an outer seccomp filter, as a unit's
  SystemCallFilter= does), so the floor is Landlock file rules.

After each attempt the checks are effects only: no marker in the result, every protected file
byte-identical, no protected path created, the agent's audit lines untouched, no process left
behind, plus the attempt's own effect (a flag file, bytes on a terminal, a survivor). Attempts
that got through were fixed and are now regression tests like the rest; what is left as
`xfail(strict=True)` is an ACCEPTED LIMIT the README states (a root agent administers the
machine; sockets of unconfined services; signals); the rest are regression
tests. Damage, should a defence fail, lands only in the fixture home, the test's tmp dir or a
`/home/cmdop-rt-<token>*` directory the test removes; kernel knobs are written with their own
current value.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

pytestmark = [
    pytest.mark.seccomp,
    pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0,
                       reason="the red team runs a root agent (mount namespace, loop devices, /home)"),
]

REPO = Path(__file__).resolve().parents[2]
MARK = secrets.token_hex(12)
TOKEN = secrets.token_hex(4)                       # names /home/cmdop-rt-<TOKEN>* and sleep tags
TAG = 5000 + secrets.randbelow(4000)               # `sleep TAG` marks a would-be survivor
MOUNT, LANDLOCK = "mount", "landlock"
MODES = (MOUNT, LANDLOCK)

SECRETS = {
    ".ssh/id_rsa": f"-----BEGIN KEY----- ssh-{MARK}\n",
    ".ssh/authorized_keys": f"ssh-ed25519 AAAA owner-{MARK}\n",
    ".cmdop/ssh_workspaces.json": json.dumps({"api_key": f"key-{MARK}"}),
    ".gnupg/private-keys-v1.d/k.key": f"gpg-{MARK}\n",
    ".config/cmdop/config.yaml": f"# cfg-{MARK}\n",
}
LOGIN_FILES = {".bashrc": "# bashrc\n", ".profile": "# profile\n", ".gitconfig": "[user]\n\tname = o\n"}
MUST_NOT_EXIST = (".bash_profile", ".bash_login", ".zshrc", ".ssh/authorized_keys2",
                  ".config/systemd/user/evil.service", ".local/share/systemd/user/evil.service",
                  ".config/cmdop/permissions.yaml.new")

# --------------------------------------------------------------------------------------------
# The agent, in a child process.
DRIVER = r"""
import json, os, sys, time
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["repo"])
for k in [k for k in os.environ if k.startswith("CMDOP_")]:
    del os.environ[k]
home = spec["home"]
os.environ["HOME"] = home
if spec.get("deny_unshare"):
    # The Landlock form: unshare() refused to the agent and so to its fork server.
    import pyseccomp as sc
    f = sc.SyscallFilter(sc.ALLOW)
    f.add_rule(sc.ERRNO(1), "unshare")
    f.load()
from cmdop.adapters.audit_log import AuditLog
from cmdop.adapters.config_file import AgentConfig
from cmdop.adapters.gatekeeper import Gatekeeper
from cmdop.adapters.launcher import sandbox_for_agent
from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.settings import Settings
from cmdop.pipeline import CallContext, handle_call
settings = Settings.from_env({"HOME": home}, home)
held = []
for p in spec.get("hold", []):          # what a daemon keeps: an open fd, the bytes in memory
    try:
        held.append((os.open(p, os.O_RDONLY), open(p).read()))
    except OSError:
        pass
ctx = CallContext(settings=settings,
                  gatekeeper=Gatekeeper(settings, unsafe_test_only_static_floor_off=True),
                  audit=AuditLog(settings.state_dir),
                  sandbox=sandbox_for_agent(settings, AgentConfig(call_pids_max=spec.get("pids_max", 256), call_memory_max=spec.get("memory_max", "50%"))),
                  hostname="redteam")
print(json.dumps({"ready": True, "pid": os.getpid(), "enforcement": ctx.sandbox.enforcement(),
                  "state_dir": settings.state_dir, "audit_file": settings.audit_file}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    t0 = time.monotonic()
    try:
        out = handle_call(ToolCall("execute_command", {"command": req["command"],
                                                       "timeout_ms": req.get("timeout_ms", 20000)},
                                   cwd=req.get("cwd") or home + "/proj"),
                          Caller(CallerKind.REMOTE, user="red-team", hostname="elsewhere"), ctx)
    except BaseException as exc:
        out = {"error": "driver_exception", "message": repr(exc)}
    if not isinstance(out, dict):
        out = {"result": out}
    out["elapsed"] = time.monotonic() - t0
    print(json.dumps(out), flush=True)
ctx.close()
"""


class Driver:
    """One agent process and a line protocol to it."""

    def __init__(self, spec: dict[str, Any], python: str = sys.executable, stderr: Path | None = None) -> None:
        self.errlog = stderr
        self._err: Any = open(stderr, "wb") if stderr else subprocess.DEVNULL
        self.proc = subprocess.Popen([python, "-c", DRIVER, json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, cwd=str(REPO))
        self._buf = b""
        hello = self._line(90)
        if hello is None:
            self.close()
            raise RuntimeError(f"agent did not start: {self.stderr_text()[-3000:]}")
        self.hello = json.loads(hello)
        self.pid = int(self.hello["pid"])
        self.enforcement: dict[str, str] = self.hello["enforcement"]

    def stderr_text(self) -> str:
        try:
            return self.errlog.read_text(errors="replace") if self.errlog else ""
        except OSError:
            return ""

    def _line(self, timeout: float) -> bytes | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return None
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def run(self, command: str, timeout_ms: int = 20_000, wait: float | None = None) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"command": command, "timeout_ms": timeout_ms}).encode() + b"\n")
        self.proc.stdin.flush()
        line = self._line(wait if wait is not None else timeout_ms / 1000 + 60)
        if line is None:
            return {"error": "no_answer", "agent_stderr": self.stderr_text()[-2000:]}
        out: dict[str, Any] = json.loads(line)
        return out

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stdin):
            try:
                if f:
                    f.close()
            except OSError:
                pass
        if self._err is not subprocess.DEVNULL:
            self._err.close()


# --------------------------------------------------------------------------------------------
# Fixture homes and the effects that are checked after every attempt.
def _write(path: Path, text: str | bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(mode)


def make_home(root: Path, extra: Callable[[Path], None] | None = None) -> Path:
    home = root / "home"
    home.mkdir(parents=True)
    for rel, text in SECRETS.items():
        _write(home / rel, text)
    for rel, text in LOGIN_FILES.items():
        _write(home / rel, text, 0o644)
    _write(home / "proj" / "README", "hello\n", 0o644)
    (home / ".config" / "systemd").mkdir(parents=True)
    _write(home / ".config" / "cmdop" / "permissions.yaml", "version: 1\nmode: bypass\nrules: []\n")
    if extra is not None:
        extra(home)
    return home


def _digest(path: Path) -> str:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"error:{exc.errno}"
    if stat.S_ISDIR(st.st_mode):
        try:
            return "dir:" + ",".join(sorted(p.name for p in path.iterdir()))
        except OSError as exc:
            return f"dir-error:{exc.errno}"
    if stat.S_ISLNK(st.st_mode):
        return "link:" + os.readlink(path)
    if not stat.S_ISREG(st.st_mode):
        return f"special:{stat.S_IFMT(st.st_mode):o}"
    return hashlib.sha256(path.read_bytes()).hexdigest() + f":{stat.S_IMODE(st.st_mode):o}"


def snapshot(home: Path, state_dir: Path, extra: tuple[str, ...] = ()) -> dict[str, str]:
    paths = [*SECRETS, *LOGIN_FILES, *MUST_NOT_EXIST, ".config/cmdop/permissions.yaml", ".ssh",
             ".cmdop", ".gnupg", ".config/cmdop", ".config/systemd", ".", *extra]
    snap = {rel: _digest(home / rel) for rel in paths}
    try:
        snap.update({f"state/{p.name}": _digest(p) for p in sorted(state_dir.iterdir())
                     if p.name not in ("audit.log", "audit.head")})
    except OSError as exc:
        snap["state"] = f"error:{exc.errno}"
    return snap


def leftovers(tag: int = TAG) -> list[int]:
    """Processes whose command line carries the tag (a survivor of an attempt)."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"sleep {tag}" in cmd and "tmux" not in cmd.split(" ")[0]:
            out.append(int(p))
    return out


def kill_leftovers(tag: int = TAG) -> None:
    for pid in leftovers(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def remove_home_probes() -> None:
    """Remove /home/cmdop-rt-<TOKEN>* that attempts create (exact prefix, this run's token)."""
    try:
        names = os.listdir(b"/home")
    except OSError:
        return
    for name in names:
        if name.startswith(f"cmdop-rt-{TOKEN}".encode()):
            shutil.rmtree(os.path.join(b"/home", name), ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Probes the commands run (python, ctypes): each tries a full chain and prints what it got.
PROBE_LIB = r"""
import ctypes, os, sys, tempfile
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *a):
    conv = [ctypes.c_long(x) if isinstance(x, int) else x for x in a]
    r = libc.syscall(ctypes.c_long(nr), *conv)
    return r, ctypes.get_errno()
def show(path, dir_fd=None):
    try:
        fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
        print(path, os.read(fd, 4096).decode(errors="replace"))
        os.close(fd)
    except OSError as e:
        print("read", path, e)
"""
PROBES = {
    # mount(2) a non-recursive bind of the home: the hidden entries' mounts stay behind.
    "bind_home": r"""
home = sys.argv[1]; d = tempfile.mkdtemp(prefix="rt-bind-", dir=sys.argv[2])
r = libc.mount(home.encode(), d.encode(), None, ctypes.c_ulong(4096), None)
print("mount", r, ctypes.get_errno())
show(d + "/.ssh/id_rsa"); show(d + "/.cmdop/ssh_workspaces.json")
if r == 0:
    open(d + "/.bash_profile", "w").write("evil\n")
    libc.umount2(d.encode(), 2)
""",
    # open_tree(OPEN_TREE_CLONE) without AT_RECURSIVE: a detached copy of the home's mount alone.
    "open_tree": r"""
home = sys.argv[1]
fd, err = sc(428, -100, home.encode(), 1)
print("open_tree", fd, err)
if fd >= 0:
    show(".ssh/id_rsa", dir_fd=fd)
""",
    # The "shocker" chain: a handle of the home dir opened on the root mount walks under the
    # hidden entries' mounts (CAP_DAC_READ_SEARCH is kept).
    "by_handle": r"""
home = sys.argv[1]
buf = ctypes.create_string_buffer(136)
ctypes.memmove(buf, (128).to_bytes(4, "little"), 4)
mid = ctypes.c_int()
r, err = sc(303, -100, home.encode(), buf, ctypes.byref(mid), 0)
print("name_to_handle_at", r, err)
root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
fd, err = sc(304, root, buf, os.O_RDONLY | os.O_DIRECTORY)
print("open_by_handle_at", fd, err)
if fd >= 0:
    show(".ssh/id_rsa", dir_fd=fd); show(".cmdop/ssh_workspaces.json", dir_fd=fd)
""",
    # x32 ABI: mount through __X32_SYSCALL_BIT, then read the copy.
    "x32_bind": r"""
home = sys.argv[1]; d = sys.argv[2]; os.makedirs(d, exist_ok=True)
print("x32 mount", sc(0x40000000 | 165, home.encode(), d.encode(), None, 4096, None))
""",
    # Borrow fds from a process: pidfd_getfd on every fd number.
    "pidfd_getfd": r"""
pid = int(sys.argv[1])
pfd, err = sc(434, pid, 0)
print("pidfd_open", pfd, err)
for n in range(0, 256):
    fd, err = sc(438, pfd, n, 0)
    if fd >= 0:
        try:
            os.lseek(fd, 0, 0)
        except OSError:
            pass
        try:
            print(n, os.readlink(f"/proc/self/fd/{fd}"), os.read(fd, 4096).decode(errors="replace"))
        except OSError as e:
            print(n, e)
""",
    # Read a process's memory through /proc/PID/mem and print what follows the key's header.
    "proc_mem": r"""
pid = sys.argv[1]; needle = sys.argv[2].encode()
try:
    maps = open(f"/proc/{pid}/maps").read().splitlines()
    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
except OSError as e:
    print("open", e); sys.exit(0)
for line in maps:
    rng, perms = line.split()[:2]
    if "r" not in perms:
        continue
    lo, hi = (int(x, 16) for x in rng.split("-"))
    if hi - lo > 1 << 28:
        continue
    try:
        data = os.pread(mem, hi - lo, lo)
    except OSError:
        continue
    i = data.find(needle)
    if i >= 0:
        print("found", data[i:i + 80].decode(errors="replace")); break
""",
    "mknod_blk": r"""
path = sys.argv[1]; dev = os.stat(sys.argv[2]).st_rdev
for mode in (0o060600, 0o060600 | 0x10000, 0o020600):
    try:
        os.mknod(path, mode, dev); print("made", oct(mode))
        print(open(path, "rb").read(64)); break
    except OSError as e:
        print("mknod", oct(mode), e)
""",
    "abstract_connect": r"""
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect("\0" + sys.argv[1]); print(s.recv(4096).decode())
except OSError as e:
    print("connect", e)
""",
    "thread_bomb": r"""
import threading, time
n = 0
try:
    for _ in range(int(sys.argv[1])):
        threading.Thread(target=time.sleep, args=(3,), daemon=True).start(); n += 1
except Exception as e:
    print("stopped:", e)
print("threads", n)
""",
    # A daemon the classic way: double fork, setsid, close everything, chdir /.
    "daemonize": r"""
import time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.chdir("/")
        for fd in range(0, 256):
            try: os.close(fd)
            except OSError: pass
        os.execvp("sleep", ["sleep", sys.argv[1]])
    os._exit(0)
print("daemonized")
""",
}


@dataclass
class Outside:
    """What lives outside the sandbox during the table: a terminal, a tmux server, an abstract
    socket, a loop device with data, the probes."""

    tmp: Path
    probes: Path
    pty_master: int = -1
    pty_name: str = ""
    tmux_sock: str = ""
    abstract: str = ""
    abstract_hits: list[bytes] = field(default_factory=list)
    loop: str = ""
    cleanups: list[Callable[[], object]] = field(default_factory=list)


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outside]:
    tmp = tmp_path_factory.mktemp("redteam-outside")
    probes = tmp / "probes"
    probes.mkdir()
    for name, body in PROBES.items():
        (probes / f"{name}.py").write_text(PROBE_LIB + body)
    o = Outside(tmp=tmp, probes=probes)
    # A terminal, as an operator's ssh or tmux pane: nobody holds it as a controlling tty.
    o.pty_master, slave = pty.openpty()
    o.pty_name = os.ttyname(slave)
    o.cleanups += [lambda: os.close(o.pty_master), lambda: os.close(slave)]
    # An operator's tmux server (root), on a socket in the test's tmp.
    if shutil.which("tmux"):
        o.tmux_sock = str(tmp / "tmux.sock")
        subprocess.run(["tmux", "-S", o.tmux_sock, "new-session", "-d", "-s", "op", "sleep 3600"],
                       check=True, env={**os.environ, "TMUX": ""})
        o.cleanups.append(lambda: subprocess.run(["tmux", "-S", o.tmux_sock, "kill-server"],
                                                 capture_output=True))
    # A service on an abstract unix socket (as dbus, X11, containerd shims, ... use).
    o.abstract = f"cmdop-rt-{TOKEN}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind("\0" + o.abstract)
    srv.listen(8)
    srv.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                o.abstract_hits.append(b"hit")
                conn.sendall(f"abstract-service-{MARK}\n".encode())
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    o.cleanups += [srv.close, lambda: t.join(2), stop.set]      # run in reverse order
    # A loop device whose data starts with the marker.
    if shutil.which("losetup"):
        img = tmp / "disk.img"
        img.write_bytes(f"LOOPDATA-{MARK}".encode().ljust(1 << 20, b"\0"))
        made = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True)
        if made.returncode == 0:
            o.loop = made.stdout.strip()
            o.cleanups.append(lambda: subprocess.run(["losetup", "-d", o.loop], capture_output=True))
    try:
        yield o
    finally:
        for fn in reversed(o.cleanups):
            try:
                fn()
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass
        kill_leftovers()
        remove_home_probes()


@dataclass
class Agent:
    mode: str
    home: Path
    driver: Driver
    outside: Outside

    @property
    def state_dir(self) -> Path:
        return Path(self.driver.hello["state_dir"])

    @property
    def audit_file(self) -> Path:
        return Path(self.driver.hello["audit_file"])

    def expand(self, text: str) -> str:
        o = self.outside
        for token, value in (("@H@", str(self.home)), ("@S@", str(self.state_dir)),
                             ("@A@", str(self.driver.pid)), ("@PY@", sys.executable),
                             ("@P@", str(o.probes)), ("@T@", str(o.tmp)), ("@PTY@", o.pty_name),
                             ("@TMUX@", o.tmux_sock), ("@ABS@", o.abstract), ("@LOOP@", o.loop),
                             ("@TAG@", str(TAG)), ("@TOKEN@", TOKEN)):
            text = text.replace(token, value)
        return text

    def run(self, command: str, **kw: Any) -> dict[str, Any]:
        return self.driver.run(self.expand(command), **kw)


def start_agent(mode: str, root: Path, outside: Outside, extra: Callable[[Path], None] | None = None,
                home_link: bool = False, python: str = sys.executable) -> Agent:
    home = make_home(root, extra)
    agent_home = home
    if home_link:
        agent_home = root / "home-link"
        agent_home.symlink_to(home)
    spec = {"repo": str(REPO), "home": str(agent_home), "deny_unshare": mode == LANDLOCK,
            "hold": [str(home / ".ssh" / "id_rsa")]}
    driver = Driver(spec, python=python, stderr=root / "agent.stderr")
    want = "mount namespace" if mode == MOUNT else "landlock"
    if driver.enforcement.get("kernel_floor") != want:
        driver.close()
        pytest.fail(f"expected the {want} form of the floor: {driver.enforcement}")
    driver.run("true")          # the first call creates the audit log, its key and lock
    return Agent(mode, home, driver, outside)


@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          outside: Outside) -> Iterator[Agent]:
    a = start_agent(request.param, tmp_path_factory.mktemp(f"redteam-{request.param}"), outside)
    try:
        yield a
    finally:
        a.driver.close()


# --------------------------------------------------------------------------------------------
# The table. (id, command, modes in which it gets through -> reason, extra check)
Check = Callable[[Agent, dict[str, Any]], None]


def _no_pty_traffic(a: Agent, out: dict[str, Any]) -> None:
    os.set_blocking(a.outside.pty_master, False)
    try:
        got = os.read(a.outside.pty_master, 4096)
    except (BlockingIOError, OSError):
        got = b""
    assert b"from-sandbox" not in got, f"a command wrote onto a terminal outside the sandbox: {got!r}"


def _pty_typed(a: Agent) -> None:
    """The operator types a secret on their terminal (it waits in the tty's input queue)."""
    os.write(a.outside.pty_master, f"typed-{MARK}\n".encode())


def _no_abstract_hit(a: Agent, out: dict[str, Any]) -> None:
    hits = list(a.outside.abstract_hits)
    a.outside.abstract_hits.clear()
    assert not hits, "a command connected to an abstract socket served outside the sandbox"


def _thread_limit(a: Agent, out: dict[str, Any]) -> None:
    started = [ln for ln in out.get("stdout", "").splitlines() if ln.startswith("threads ")]
    assert started and int(started[0].split()[1]) < 256, out
    assert out.get("limit_hit") == "pids", {k: v for k, v in out.items() if k != "stderr"}


def _write_failed(a: Agent, out: dict[str, Any]) -> None:
    """For knobs written with their own value (no visible change either way): every write the
    command reported must have failed."""
    lines = out.get("stdout", "").splitlines()
    assert any(ln.startswith("TRIED ") for ln in lines), f"no knob was tried: {out}"
    wrote = [ln for ln in lines if ln.startswith("WROTE ")]
    assert not wrote, f"kernel knobs written: {wrote}"


def _nothing_made(a: Agent, out: dict[str, Any]) -> None:
    made = [ln for ln in out.get("stdout", "").splitlines() if ln.startswith("MADE ")]
    assert not made, f"created: {made}"


def _no_knob_no_cgroup(a: Agent, out: dict[str, Any]) -> None:
    _write_failed(a, out)
    _nothing_made(a, out)


PTY_WRITE = ("@PY@ -c \"import os, select; fd = os.open('@PTY@', os.O_RDWR | os.O_NOCTTY); "
             "os.write(fd, b'from-sandbox\\n'); r, _, _ = select.select([fd], [], [], 2); "
             "print(os.read(fd, 200) if r else b'')\"")
Attempt = tuple[str, str, dict[str, str], "Check | None"]
ATTEMPTS: list[Attempt] = [
    # -- (a) reading hidden files, past the mounts ----------------------------------------------
    ("umount-hidden", "umount -l ~/.ssh ~/.cmdop; cat ~/.ssh/id_rsa ~/.cmdop/*", {}, None),
    ("unshare-umount", "unshare -m sh -c 'umount -l ~/.ssh; cat ~/.ssh/id_rsa'; "
                       "unshare -Urm sh -c 'umount -l ~/.ssh; cat ~/.ssh/id_rsa'", {}, None),
    ("bind-home-nonrecursive", "@PY@ @P@/bind_home.py @H@ @T@", {}, None),
    ("open-tree-clone", "@PY@ @P@/open_tree.py @H@", {}, None),
    ("open-by-handle", "@PY@ @P@/by_handle.py @H@", {}, None),
    ("x32-abi-bind", "@PY@ @P@/x32_bind.py @H@ @T@/x32-$$; cat @T@/x32-$$/.ssh/id_rsa", {}, None),
    ("nsenter-pid1", "nsenter -t 1 -m cat @H@/.ssh/id_rsa; nsenter -t @A@ -m -p cat @H@/.ssh/id_rsa", {}, None),
    ("proc-agent-root-cwd", "cat /proc/@A@/root@H@/.ssh/id_rsa; ls /proc/@A@/cwd/; "
                            "cat /proc/@A@/environ", {}, None),
    ("proc-agent-fd", "for f in /proc/@A@/fd/*; do cat $f; done 2>&1 | head -c 3000", {}, None),
    ("pidfd-getfd-agent", "@PY@ @P@/pidfd_getfd.py @A@ 2>&1 | head -c 3000", {}, None),
    ("proc-agent-mem", "@PY@ @P@/proc_mem.py @A@ 'BEGIN KEY----- ssh-'", {}, None),
    ("proc-server-mem-fd", "@PY@ @P@/proc_mem.py $PPID 'BEGIN KEY----- ssh-'; "
                           "@PY@ @P@/pidfd_getfd.py $PPID", {}, None),
    ("chroot-escape", "mkdir -p @T@/c$$ && chroot @T@/c$$ /bin/true; "
                      "@PY@ -c 'import os; os.chroot(\"/tmp\"); print(open(\"@H@/.ssh/id_rsa\").read())'", {}, None),
    ("hardlink-hidden", "ln ~/.ssh/id_rsa ~/proj/k; ln @S@/audit.key ~/proj/a; cat ~/proj/k ~/proj/a", {}, None),
    ("mountinfo-paths", "grep -o '[^ ]*\\.ssh[^ ]*' /proc/self/mountinfo | while read p; do cat $p/id_rsa; done",
     {}, None),
    ("inherited-fds", "for n in $(ls /proc/$$/fd); do [ $n -gt 2 ] && cat /proc/$$/fd/$n; done 2>/dev/null "
                      "| head -c 2000; ls -l /proc/$$/fd", {}, None),
    ("state-dir-files", "cat @S@/audit.log @S@/audit.key @S@/audit.head @S@/daemon.status 2>&1", {}, None),
    # -- (b) changing or creating protected files ---------------------------------------------
    ("remount-rw", "mount -o remount,bind,rw ~; mount -o remount,rw ~; echo evil >> ~/.bashrc; "
                   "touch ~/.bash_profile", {}, None),
    ("umount-seal", "umount -l ~; echo evil >> ~/.bashrc; touch ~/.bash_profile; "
                    "echo k >> ~/.ssh/authorized_keys", {}, None),
    ("hardlink-dotfile", "ln ~/.bashrc ~/proj/b && echo evil >> ~/proj/b", {}, None),
    ("symlink-from-project", "ln -s ~/.bashrc ~/proj/l; echo evil >> ~/proj/l; ln -s ~ ~/proj/h; "
                             "touch ~/proj/h/.bash_profile", {}, None),
    ("rename-exchange", "@PY@ -c 'import ctypes,os; l=ctypes.CDLL(None,use_errno=True); "
                        "print(l.renameat2(-100,b\"@H@/proj\",-100,b\"@H@/.ssh\",2), ctypes.get_errno())'; "
                        "echo k > ~/.ssh/authorized_keys2", {}, None),
    ("proc-agent-root-write", "echo evil >> /proc/@A@/root@H@/.bashrc; "
                              "touch /proc/@A@/root@H@/.bash_profile", {}, None),
    ("policy-and-audit", "echo 'mode: bypass' >> ~/.config/cmdop/permissions.yaml; "
                         "printf x > ~/.config/cmdop/permissions.yaml.new; echo x >> @S@/audit.log", {}, None),
    # -- (c) kernel knobs, devices ---------------------------------------------------------------
    ("proc-sys-paths", "for p in /proc/sys/kernel/printk_ratelimit /proc/self/../sys/kernel/printk_ratelimit "
                       "/proc/thread-self/../../../sys/kernel/printk_ratelimit /proc/1/root/proc/sys/kernel/printk_ratelimit "
                       "/proc/$PPID/root/proc/sys/kernel/printk_ratelimit; "
                       "do v=$(cat $p) && echo TRIED $p && (echo $v > $p) && echo WROTE $p; done; true", {}, _write_failed),
    ("sysfs-knobs", "for p in /sys/kernel/mm/transparent_hugepage/khugepaged/pages_to_scan "
                    "/sys/kernel/mm/ksm/pages_to_scan /sys/module/printk/parameters/time "
                    "/sys/fs/cgroup/unified/cgroup.max.depth; do [ -e $p ] || continue; "
                    "v=$(cat $p) && echo TRIED $p && (echo $v > $p) && echo WROTE $p; done; true", {}, _write_failed),
    ("cgroup-v1-release-agent", "for h in /sys/fs/cgroup/*/; do [ -e $h/release_agent ] || continue; "
                                "v=$(cat $h/release_agent); echo TRIED $h; (echo \"$v\" > $h/release_agent) && "
                                "echo WROTE $h/release_agent; (cat $h/notify_on_release > $h/notify_on_release) "
                                "&& echo WROTE $h/notify_on_release; mkdir $h/cmdop-rt-@TOKEN@ "
                                "&& echo MADE $h && rmdir $h/cmdop-rt-@TOKEN@; done; true",
     {}, _no_knob_no_cgroup),
    ("proc-irq-knob", "p=/proc/irq/default_smp_affinity; [ -e $p ] && v=$(cat $p) && echo TRIED $p && "
                      "(echo $v > $p) && echo WROTE $p; true",
     {}, _write_failed),
    ("loop-device-read", "head -c 64 @LOOP@; echo x | dd of=@LOOP@ bs=1 count=1 seek=900000 conv=notrunc 2>&1",
     {}, None),
    ("mknod-block", "@PY@ @P@/mknod_blk.py @T@/blk-$$ @LOOP@; rm -f @T@/blk-$$", {}, None),
    ("dev-fuse-and-mem", "head -c 8 /dev/fuse /dev/mem /dev/kmsg /dev/port 2>&1 | head -c 400", {}, None),
    ("dev-pts-outside", PTY_WRITE,
     {}, _no_pty_traffic),
    # -- (d) cgroup and lifetime ----------------------------------------------------------------
    ("cgroup-procs-escape", "for f in /sys/fs/cgroup/cgroup.procs /sys/fs/cgroup/*/cgroup.procs "
                            "/sys/fs/cgroup/unified/cgroup.procs /proc/$PPID/fd/*; do "
                            "(echo $$ > $f) 2>/dev/null; done; (sleep @TAG@ &) ; echo spawned", {}, None),
    ("daemonize-double-fork", "@PY@ @P@/daemonize.py @TAG@; setsid -f sleep @TAG@; nohup sleep @TAG@ >/dev/null 2>&1 &"
                              " disown; echo ok", {}, None),
    ("thread-bomb", "@PY@ @P@/thread_bomb.py 2000", {}, _thread_limit),
    ("scheduler-handoff", "(echo 'sleep @TAG@' | at now) 2>&1; systemd-run --no-block sleep @TAG@ 2>&1; "
                          "(echo '* * * * * sleep @TAG@' | crontab -) 2>&1; true", {}, None),
    # -- (e) leaving through someone else ----------------------------------------------------
    ("tmux-server-outside", "tmux -S @TMUX@ new-window -d 'cat @H@/.ssh/id_rsa > @T@/tmux-leak; sleep @TAG@' "
                            "&& sleep 1 && cat @T@/tmux-leak",
     {MOUNT: "ACCEPTED LIMIT (docs/security.md, sockets of unconfined services): a tmux server started "
             "outside the sandbox runs whatever a command asks on its pathname socket",
      LANDLOCK: "ACCEPTED LIMIT (docs/security.md): pathname unix sockets are not covered by Landlock"}, None),
    ("abstract-socket-outside", "@PY@ @P@/abstract_connect.py @ABS@",
     {}, _no_abstract_hit),
    ("setuid-helpers", "su -c 'cat @H@/.ssh/id_rsa' root 2>&1 </dev/null; mkdir @T@/m$$; mount --bind @H@ @T@/m$$ 2>&1; "
                       "cat @T@/m$$/.ssh/id_rsa 2>&1", {}, None),
]


def _params() -> list[Any]:
    out = []
    for mode in MODES:
        for name, command, holes, check in ATTEMPTS:
            marks = [pytest.mark.xfail(strict=True, reason=holes[mode])] if mode in holes else []
            out.append(pytest.param(mode, name, command, check, id=f"{mode}-{name}", marks=marks))
    return out


@pytest.mark.parametrize("agent,name,command,check", _params(), indirect=["agent"])
def test_attempt_has_no_effect(agent: Agent, name: str, command: str, check: Check | None) -> None:
    if "@LOOP@" in command and not agent.outside.loop:
        pytest.skip("no loop device here")
    if "@TMUX@" in command and not agent.outside.tmux_sock:
        pytest.skip("no tmux here")
    if name == "dev-pts-outside":
        _pty_typed(agent)
    agent.outside.abstract_hits.clear()
    before = snapshot(agent.home, agent.state_dir)
    audit_before = agent.audit_file.read_bytes() if agent.audit_file.exists() else b""
    try:
        out = agent.run(command)
        time.sleep(0.3)
        left = leftovers()
    finally:
        kill_leftovers()
        remove_home_probes()
    text = json.dumps(out)
    assert "error" not in out or out.get("error") is None, f"{name}: the agent refused or failed: {text[:2000]}"
    assert MARK not in text, f"{name}: a marker leaked: {text[:3000]}"
    assert not left, f"{name}: processes survived the call: {left}"
    after = snapshot(agent.home, agent.state_dir)
    changed = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
    assert not changed, f"{name}: protected paths changed: {changed}\n{text[:2000]}"
    assert agent.audit_file.read_bytes().startswith(audit_before), f"{name}: earlier audit lines changed"
    if check is not None:
        check(agent, out)


# --------------------------------------------------------------------------------------------
# Places outside the homes where code runs later, outside the sandbox (harmless probes: an
# append of nothing to a file, access(W_OK) on a directory, both refused on a read-only mount).
ACCEPTED_EXEC = {
    # A root agent administers the machine: these stay writable on purpose (README, "what holds
    # where"); each is code the system runs later, outside the sandbox.
    "profile.d", "cron.d", "systemd-system", "ld.so.conf.d", "apt.conf.d",
}


def _exec_points() -> list[tuple[str, str, str]]:
    stdlib = os.path.dirname(os.__file__)
    return [
        ("interpreter", os.path.realpath(sys.executable),
         "the fork server is started again from it (unconfined, host namespace, full "
         "capabilities) on every rebuild"),
        ("stdlib", stdlib, "the fork server imports json/ctypes/socket/subprocess... from here "
                           "before it confines itself; the agent imports lazily from here"),
        ("passwd", "/etc/passwd", "a new uid-0 account with a password hash in passwd "
                                  "(/etc/shadow hidden does not matter) logs in outside"),
        ("group", "/etc/group", "adding an account to sudo/wheel"),
        ("profile.d", "/etc/profile.d", "runs in every login shell"),
        ("cron.d", "/etc/cron.d", "cron runs it (no cron on this VM)"),
        ("systemd-system", "/etc/systemd/system", "systemd runs it (no systemd on this VM)"),
        ("ld.so.conf.d", "/etc/ld.so.conf.d", "library search path of every program after ldconfig"),
        ("apt.conf.d", "/etc/apt/apt.conf.d", "APT::Update::Pre-Invoke runs at the next apt-get update"),
        ("ld.so.preload", "/etc/ld.so.preload",
         "ld.so loads the libraries it names into every program started afterwards, outside the "
         "sandbox too (the next fork server included, before it confines itself)"),
    ]


@pytest.mark.parametrize("name,path,why", [pytest.param(
    n, p, w, id=n, marks=[pytest.mark.xfail(
        strict=True, reason=f"ACCEPTED LIMIT (docs/security.md): {p} is writable for a root agent and {w}")]
    if n in ACCEPTED_EXEC else []) for n, p, w in _exec_points()])
def test_code_run_outside_later_is_read_only(agent_mount: Agent, name: str, path: str, why: str) -> None:
    if os.path.isdir(path):
        probe = f"test -w {path} && echo WRITABLE"
    elif os.path.exists(path):
        # Writing nothing to it, or moving it aside to put another in its place.
        probe = f": >> {path} && echo WRITABLE; mv {path} {path}.rt 2>/dev/null && mv {path}.rt {path} && echo WRITABLE"
    elif name == "ld.so.preload":
        # Missing: creatable when its directory is writable (probed without creating it).
        probe = f"test ! -e {path} && test -w {os.path.dirname(path)} && echo WRITABLE"
    else:
        pytest.skip(f"{path} does not exist here")
    out = agent_mount.run(probe)
    assert "WRITABLE" not in out.get("stdout", ""), f"{path}: writable from a command ({why})"


def test_a_pyvenv_cfg_beside_the_interpreter_stops_the_server(tmp_path: Path, outside: Outside) -> None:
    """The interpreter's directory may be writable (a pyenv tree in a home); a pyvenv.cfg placed
    there would point the next server start at another standard library: the launcher refuses
    to start from it (no command runs), and says why.
    The agent runs from a private copy of the interpreter (a `--copies` venv in tmp_path): a
    pyvenv.cfg beside the machine's real interpreter would, while it lasted, stop every other
    agent's next server start and every python started from that interpreter (another xdist
    worker's tests)."""
    venv = tmp_path / "venv"
    subprocess.run([os.path.realpath(sys.executable), "-m", "venv", "--copies", "--without-pip", str(venv)],
                   check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    (site / "redteam.pth").write_text("\n".join([*deps, str(REPO)]) + "\n")
    assert os.path.realpath(venv / "bin" / "python") == str(venv / "bin" / "python"), "not a copy"
    a = start_agent(MOUNT, tmp_path / "box", outside, python=str(venv / "bin" / "python"))
    cfg = str(venv / "bin" / "pyvenv.cfg")
    try:
        a.run(f"test -w {os.path.dirname(cfg)} && printf 'home = /tmp\\n' > {cfg}; kill -9 $PPID")
        out = a.run("cat ~/.ssh/id_rsa; echo ran")
        text = json.dumps(out)
        assert MARK not in text and "ran" not in out.get("stdout", ""), text
        assert "pyvenv.cfg" in text, f"refused, but not for the pyvenv.cfg: {text}"
    finally:
        try:
            os.unlink(cfg)
        except FileNotFoundError:
            pass
        a.driver.close()


@pytest.fixture(scope="module")
def agent_mount(tmp_path_factory: pytest.TempPathFactory, outside: Outside) -> Iterator[Agent]:
    a = start_agent(MOUNT, tmp_path_factory.mktemp("redteam-exec"), outside)
    try:
        yield a
    finally:
        a.driver.close()


# --------------------------------------------------------------------------------------------
# Homes the plan does not expect: symlinks where it looks for entries.
def _link_ssh(home: Path) -> None:
    (home / "dotfiles").mkdir()
    (home / ".ssh").rename(home / "dotfiles" / "ssh")
    (home / ".ssh").symlink_to("dotfiles/ssh")


def _link_bashrc(home: Path) -> None:
    (home / "dotfiles").mkdir()
    (home / ".bashrc").rename(home / "dotfiles" / "bashrc")
    (home / ".bashrc").symlink_to("dotfiles/bashrc")


def _link_units(home: Path) -> None:
    (home / "dotfiles" / "units").mkdir(parents=True)
    (home / ".config" / "systemd" / "user").symlink_to(home / "dotfiles" / "units")


def _link_cmdop_config(home: Path) -> None:
    (home / "dotfiles").mkdir()
    (home / ".config" / "cmdop").rename(home / "dotfiles" / "cmdop")
    (home / ".config" / "cmdop").symlink_to("../dotfiles/cmdop")


SYMLINKS = [
    ("home-is-symlink", None, True,
     "cat ~/.ssh/id_rsa; echo evil >> ~/.bashrc; touch ~/.bash_profile",
     "homes_for() drops a home that is a symlink: HOME -> real dir gets no seal and no hidden "
     "~/.ssh (only the agent_dirs, resolved by mount(2) through the link, are hidden)"),
    ("ssh-dir-symlink", _link_ssh, False, "cat ~/.ssh/id_rsa; echo k >> ~/.ssh/authorized_keys",
     "a protected entry that is a symlink is 'left alone' and its target (~/dotfiles/ssh, "
     "re-exposed writable) is not protected: keys readable, authorized_keys writable"),
    ("bashrc-symlink", _link_bashrc, False, "echo evil >> ~/.bashrc",
     "a dotfile that is a symlink (stow/chezmoi/yadm layouts) writes through to its target, "
     "which the seal re-exposes writable"),
    ("user-units-symlink", _link_units, False,
     "echo '[Service]' > ~/.config/systemd/user/evil.service",
     "~/.config/systemd/user as a symlink: READONLY skips links, the target stays writable"),
    ("cmdop-config-symlink", _link_cmdop_config, False,
     "cat ~/.config/cmdop/config.yaml; echo 'mode: bypass' >> ~/.config/cmdop/permissions.yaml",
     "the agent's own config dir as a symlink (-> ~/dotfiles/cmdop): a HIDE entry that is a "
     "link is left alone, so config.yaml is readable and permissions.yaml writable through it"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,setup,home_link,command,reason", [
    pytest.param(*s, id=s[0]) for s in SYMLINKS])
def test_symlinked_entries(tmp_path: Path, outside: Outside, mode: str, name: str,
                           setup: Callable[[Path], None] | None, home_link: bool, command: str,
                           reason: str) -> None:
    a = start_agent(mode, tmp_path, outside, setup, home_link=home_link)
    try:
        real = a.home
        watch = ("dotfiles/ssh/authorized_keys", "dotfiles/bashrc", "dotfiles/units/evil.service",
                 "dotfiles/cmdop/permissions.yaml")
        before = snapshot(real, a.state_dir, watch)
        out = a.run(command)
        text = json.dumps(out)
        assert MARK not in text, f"{name}: a marker leaked: {text[:2000]}"
        after = snapshot(real, a.state_dir, watch)
        changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        assert not changed, f"{name}: changed: {changed}"
    finally:
        a.driver.close()


# --------------------------------------------------------------------------------------------
# Moving what the mounts hang on.
@pytest.mark.parametrize("mode", [
    MOUNT, LANDLOCK])
def test_rename_an_ancestor_of_the_home(tmp_path: Path, outside: Outside, mode: str) -> None:
    root = tmp_path / "box"
    a = start_agent(mode, root, outside)
    moved = tmp_path / "box.moved"
    try:
        before = snapshot(a.home, a.state_dir)
        key = (a.state_dir / "audit.key").read_bytes().hex()
        first = a.run(f"mv {root} {moved} && mkdir -p ~/.ssh ~/proj ~/.config/cmdop ~/.local/state/cmdop && "
                      "echo attacker-key > ~/.ssh/authorized_keys && "
                      "printf 'version: 1\\nmode: bypass\\nrules: []\\n' > ~/.config/cmdop/permissions.yaml")
        moved_state = moved / a.state_dir.relative_to(root)
        second = a.run(f"cat {moved}/home/.ssh/id_rsa {moved}/home/.cmdop/ssh_workspaces.json; "
                       f"od -An -tx1 {moved_state}/audit.key | tr -d ' \\n'")
        text = json.dumps([first, second])
        after = snapshot(a.home, a.state_dir)
        assert MARK not in text, f"the moved home's secrets leaked: {text[:2000]}"
        assert key not in text, "the agent's audit seal key leaked from the moved state dir"
        assert after == before, f"the home path now holds something else: " \
                                f"{ {k: (before[k], after[k]) for k in before if before[k] != after[k]} }"
    finally:
        a.driver.close()
        if moved.exists():
            shutil.rmtree(root, ignore_errors=True)
            moved.rename(root)


def test_a_host_mount_made_later_stays_read_only(tmp_path: Path, outside: Outside) -> None:
    def shared(home: Path) -> None:
        (home / ".config" / "git" / "sub").mkdir(parents=True)
        (home / ".config" / "environment.d").mkdir()
        subprocess.run(["mount", "--bind", str(home), str(home)], check=True)
        subprocess.run(["mount", "--make-shared", str(home)], check=True)
    home = tmp_path / "home"
    sub = home / ".config" / "git" / "sub"
    a = None
    try:
        a = start_agent(MOUNT, tmp_path, outside, shared)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "rt-later", str(sub)], check=True)
        a.run("echo evil > ~/.config/git/sub/config")
        assert not (sub / "config").exists(), "a command wrote into a read-only region through a later host mount"
    finally:
        if a is not None:
            a.driver.close()
        subprocess.run(["umount", str(sub)], capture_output=True)
        subprocess.run(["umount", str(home)], capture_output=True)


# --------------------------------------------------------------------------------------------
# Code a sealed login file runs, kept in places the seal re-exposes writable.
def _login_sources(home: Path) -> None:
    _write(home / ".profile", '# profile\n. "$HOME/.cargo/env"\n'
                              'if [ -d "$HOME/.local/bin" ]; then PATH="$HOME/.local/bin:$PATH"; fi\n', 0o644)
    _write(home / ".bashrc", "# bashrc\nfor f in ~/.bashrc.d/*.sh; do . $f; done\n", 0o644)
    _write(home / ".cargo" / "env", 'export PATH="$HOME/.cargo/bin:$PATH"\n', 0o644)
    _write(home / ".bashrc.d" / "a.sh", "alias ll='ls -l'\n", 0o644)
    (home / ".local" / "share").mkdir(parents=True)


LOGIN_SOURCES = [
    ("cargo-env", "echo 'cp ~/.ssh/id_rsa /tmp/x' >> ~/.cargo/env", ".cargo/env", MODES,
     "~/.profile runs `. ~/.cargo/env` (rustup's default; this VM's /root/.profile does), and "
     "dot-directories in a home are re-exposed writable"),
    ("bashrc-d", "echo 'evil' > ~/.bashrc.d/b.sh", ".bashrc.d/b.sh", MODES,
     "~/.bashrc sources ~/.bashrc.d/*.sh; the directory is re-exposed writable"),
    ("local-bin", "mkdir -p ~/.local/bin && printf '#!/bin/sh\\nevil\\n' > ~/.local/bin/sudo",
     ".local/bin", (MOUNT,),
     "Debian's ~/.profile puts ~/.local/bin first on PATH when it exists; ~/.local is bound "
     "writable (not sealed) once ~/.local/share exists, so ~/.local/bin/sudo can be created"),
]


@pytest.mark.parametrize("mode,name,command,target", [
    pytest.param(m, n, c, t, id=f"{m}-{n}") for m in MODES for n, c, t, _modes, _why in LOGIN_SOURCES])
def test_code_sourced_by_login_files(tmp_path: Path, outside: Outside, mode: str, name: str,
                                     command: str, target: str) -> None:
    a = start_agent(mode, tmp_path, outside, _login_sources)
    try:
        before = _digest(a.home / target)
        a.run(command)
        assert _digest(a.home / target) == before, f"{target} changed: login code is writable"
    finally:
        a.driver.close()


# --------------------------------------------------------------------------------------------
# Names and shapes in a home that the plan must survive.
def _odd_entries(home: Path) -> None:
    for name in ("a b", "new\nline", "back\\040slash", "x" * 250, "-leading-dash", "..."):
        (home / name).mkdir()
    os.mkfifo(home / "fifo")
    (home / "loop").symlink_to("loop")
    (home / "rootlink").symlink_to("/")
    (home / "locked").mkdir(mode=0)
    shutil.rmtree(home / ".gnupg")
    os.mkfifo(home / ".gnupg")                      # a FIFO where a hidden dir should be
    (home / ".config" / "systemd" / "user").write_text("not a dir\n")   # a file where a dir is


@pytest.mark.parametrize("mode", MODES)
def test_odd_names_in_a_home(tmp_path: Path, outside: Outside, mode: str) -> None:
    a = start_agent(mode, tmp_path, outside, _odd_entries)
    try:
        before = snapshot(a.home, a.state_dir, (".config/systemd/user",))
        out = a.run("for d in 'a b' $'new\\nline' 'back\\040slash' " + "x" * 250 + " -leading-dash ... locked; "
                    "do touch ~/\"$d\"/w && echo ok; done; cat ~/.ssh/id_rsa; echo x > ~/.gnupg; "
                    "echo x >> ~/.config/systemd/user; touch ~/.bash_profile")
        text = json.dumps(out)
        assert out.get("error") is None, text[:2000]
        assert MARK not in text
        assert out["stdout"].count("ok") == 7, out        # the odd directories stay writable
        after = snapshot(a.home, a.state_dir, (".config/systemd/user",))
        assert before == after, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    finally:
        a.driver.close()


NON_UTF8 = ("the fork server encodes mount paths with str.encode() (strict UTF-8): a name that is "
            "not UTF-8 (os.listdir gives a surrogate) raises UnicodeEncodeError, the server dies "
            "before its hello, and Sandbox latches `_reason` for good: every later command of every "
            "caller is refused (sandbox_unavailable) until the agent restarts")


@pytest.mark.parametrize("mode", [MOUNT, LANDLOCK])
def test_non_utf8_name_in_a_home(tmp_path: Path, outside: Outside, mode: str) -> None:
    def setup(home: Path) -> None:
        os.mkdir(os.path.join(os.fsencode(home), b"caf\xe9"))
    try:
        a = start_agent(mode, tmp_path, outside, setup)
    except BaseException as exc:  # noqa: BLE001 - a failed start is the finding
        pytest.fail(f"the agent could not start its sandbox: {exc}")
    try:
        out = a.run("cat ~/.ssh/id_rsa; echo still-serving")
        assert MARK not in json.dumps(out)
        assert out.get("stdout", "").strip().endswith("still-serving"), out
    finally:
        a.driver.close()


@pytest.mark.parametrize("mode", [MOUNT, LANDLOCK])
def test_a_command_cannot_break_the_next_rebuild_with_a_name(tmp_path: Path, outside: Outside, mode: str) -> None:
    a = start_agent(mode, tmp_path, outside)
    try:
        a.run("mkdir /home/cmdop-rt-@TOKEN@-$'\\xff'")
        a.run("echo rebuild")
        out = a.run("echo still-serving")
        assert out.get("stdout", "").strip() == "still-serving", out
    finally:
        a.driver.close()
        remove_home_probes()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_command_cannot_break_the_next_rebuild_with_many_entries(tmp_path: Path, outside: Outside) -> None:
    a = start_agent(MOUNT, tmp_path, outside)
    try:
        a.run("mkdir /home/cmdop-rt-@TOKEN@-many && cd /home/cmdop-rt-@TOKEN@-many && "
              "seq 1 100500 | xargs touch && echo made", timeout_ms=120_000)
        a.run("echo rebuild", wait=120)
        out = a.run("echo still-serving", wait=120)
        assert out.get("stdout", "").strip() == "still-serving", out
    finally:
        a.driver.close()
        remove_home_probes()


# --------------------------------------------------------------------------------------------
# The fork server: a command's parent, root, in the same Landlock domain.
@pytest.mark.timeout(180)
def test_stopping_the_fork_server_does_not_hang_the_call(tmp_path: Path, outside: Outside) -> None:
    a = start_agent(MOUNT, tmp_path, outside)
    flag = outside.tmp / f"server-pid-{TOKEN}"
    stop = threading.Event()

    def watchdog() -> None:      # resume the server after 25 s so the test ends either way
        if not stop.wait(25):
            try:
                os.kill(int(flag.read_text()), signal.SIGCONT)
            except (OSError, ValueError):
                pass
    t = threading.Thread(target=watchdog, daemon=True)
    t.start()
    try:
        out = a.run(f"echo $PPID > {flag}; kill -STOP $PPID; echo stopped", timeout_ms=3000, wait=90)
        assert out.get("elapsed", 99) < 3 + 10, f"the call took {out.get('elapsed')} s (timeout 3 s): {out}"
    finally:
        stop.set()
        t.join(5)
        try:
            os.kill(int(flag.read_text()), signal.SIGCONT)
        except (OSError, ValueError):
            pass
        a.driver.close()


@pytest.mark.xfail(strict=True, reason=(
    "ACCEPTED LIMIT (docs/security.md): signals are not scoped, since `kill -HUP` of a service's process is "
    "ordinary administration; a root command can kill the agent (its unit restarts it)"))
def test_a_command_cannot_kill_the_agent(tmp_path: Path, outside: Outside) -> None:
    a = start_agent(MOUNT, tmp_path, outside)
    try:
        a.run("kill -9 $(cut -d' ' -f4 /proc/$PPID/stat)", wait=30)
        time.sleep(0.5)
        assert a.driver.proc.poll() is None, "the agent was killed by a command it ran"
    finally:
        a.driver.close()


def test_killing_the_fork_server_restarts_it_confined(tmp_path: Path, outside: Outside) -> None:
    a = start_agent(MOUNT, tmp_path, outside)
    try:
        a.run("kill -9 $PPID; sleep 1")
        out = a.run("cat ~/.ssh/id_rsa; grep ' /proc/sys ' /proc/self/mountinfo; echo alive")
        assert "alive" in out.get("stdout", ""), out
        assert MARK not in json.dumps(out)
        assert " ro," in out["stdout"], out
    finally:
        a.driver.close()


def test_replacing_the_interpreter_then_restarting_the_server(tmp_path: Path, outside: Outside) -> None:
    base = os.path.realpath(sys.executable)
    venv = tmp_path / "venv"
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    (site / "redteam.pth").write_text("\n".join([*deps, str(REPO)]) + "\n")
    a = start_agent(MOUNT, tmp_path / "box", outside, python=str(venv / "bin" / "python"))
    leak = outside.tmp / f"interp-leak-{TOKEN}"
    try:
        wrapper = f"#!/bin/sh\ncat {a.home}/.ssh/id_rsa > {leak} 2>&1\nexec {base} \"$@\"\n"
        a.run(f"rm -f {venv}/bin/python && printf '%s' '{wrapper}' > {venv}/bin/python && "
              f"chmod +x {venv}/bin/python && kill -9 $PPID")
        out = a.run(f"cat {leak}")
        assert MARK not in json.dumps(out), f"a replaced interpreter ran unconfined: {out}"
        assert not leak.exists() or MARK not in leak.read_text(errors="replace")
    finally:
        a.driver.close()
        leak.unlink(missing_ok=True)
