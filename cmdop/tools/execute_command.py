"""execute_command{command, cwd?, timeout_ms?} -> {stdout, stderr, exit_code, ...}.

Promises:
- The command runs as `bash -c COMMAND` (`/bin/sh -c` where bash is absent) in its own session
  and process group, stdin on /dev/null, in a cwd that exists and is not on the floor.
- On Linux the child runs under the seccomp filter (cmdop.adapters.launcher). Without seccomp,
  remote/self callers are refused (SandboxUnavailableError, saying why); local callers run
  unsandboxed with a warning.
- The environment is the agent's minus its own secrets: every CMDOP_* variable and any variable
  whose value contains the API key.
- timeout_ms (default 120000, at most 600000) and cancellation kill the WHOLE process group:
  SIGTERM, then SIGKILL after a short grace. `timed_out` / `cancelled` say which happened.
- stdout and stderr are captured up to 1 MB each (`stdout_truncated`/`stderr_truncated`);
  output beyond the cap is drained and dropped so the child never blocks on a full pipe.
  Every chunk is also passed to `env.on_chunk` when set (streaming to a remote caller).
- `exit_code` is the command's status; a child killed by a signal reports 128+N and `signal`.
- The call returns at most DRAIN_GRACE_S after the command itself (the group leader) has
  exited, so at most timeout + KILL_GRACE_S + DRAIN_GRACE_S, whatever still holds its stdout or
  stderr; `output_left_open` is then true and that holder's later writes get EPIPE/SIGPIPE (our
  read ends are closed). Group members still alive after a TERM that ended the leader get their
  SIGKILL on schedule, after the call has returned. Background jobs of a command that exited by
  itself are left running (a normal exit kills nothing).
- Where the agent has a cgroup per call (`Sandbox.cgroups`), the command runs in its own cgroup
  with the configured pids.max and memory.max: a fork bomb stops at the limit. When the call ends
  — by exit, timeout or cancel — everything still in the cgroup is killed, processes that left
  the session (setsid, nohup, daemons) included, and the result carries `cgroup: true`,
  `peak_memory_bytes` and `limit_hit` ("pids" | "memory" | null). Without one (`cgroup: false`),
  a process that left the group escapes: only the call is bounded, not its lifetime.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from typing import Any, Mapping, Protocol

from cmdop.adapters import safe_open
from cmdop.adapters.launcher import kill_group
from cmdop.core.calls import CallerKind, command_dir
from cmdop.core.errors import SandboxUnavailableError
from cmdop.core.tool_input import MAX_TIMEOUT_MS
from cmdop.tools.base import BadInput, ToolEnv, get_int, get_str

DEFAULT_TIMEOUT_MS = 120_000
OUTPUT_CAP = 1 << 20
READ_STREAMING = 1 << 20          # one read (and one chunk frame) of streamed output at most
_F_SETPIPE_SZ = 1031              # fcntl.F_SETPIPE_SZ (Linux), named in fcntl only from 3.10


def _grow_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (capped by /proc/sys/fs/pipe-max-size); never fails."""
    import fcntl

    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, READ_STREAMING)
    except OSError:
        pass
KILL_GRACE_S = 1.0      # between SIGTERM and SIGKILL
# How long output is still read once the command itself has exited. Whatever holds the pipes
# after that (a `cmd &` it left running, or a `setsid`/daemonized process that even the group
# kill misses) would otherwise keep the call, and one of the daemon's worker slots, open for as
# long as it lives. Half a second lets a just-exited pipeline's last writers flush.
DRAIN_GRACE_S = 0.5
_TICK_S = 0.05          # how often cancellation is noticed
# A sandboxed child's wait(0) would put its socket in non-blocking mode (and misread "not yet"
# as "server gone"), so the while-output-flows poll blocks for this long at most instead.
_POLL_S = 0.001


class _Child(Protocol):
    pid: int

    def wait(self, timeout: float | None) -> int | None: ...


class _PlainChild:
    """An unsandboxed child (seccomp unavailable, local caller only)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.pid = proc.pid
        self._proc = proc

    def wait(self, timeout: float | None) -> int | None:
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def scrub_env(environ: Mapping[str, str], api_key: str | None) -> dict[str, str]:
    """The child's environment: `environ` without CMDOP_* variables or anything holding the key."""
    out = {}
    for key, value in environ.items():
        if key.startswith("CMDOP_"):
            continue
        if api_key and api_key in value:
            continue
        out[key] = value
    out.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin")
    return out


def shell_argv(command: str) -> list[str]:
    shell = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"
    return [shell, "-c", command]


def execute_command(tool_input: Mapping[str, Any], env: ToolEnv) -> dict[str, Any]:
    """Run one shell command as the module docstring promises and return its result."""
    command = get_str(tool_input, "command")
    if not command.strip():
        raise BadInput("field 'command' is empty", "command")
    timeout_ms = get_int(tool_input, "timeout_ms", DEFAULT_TIMEOUT_MS, 1, MAX_TIMEOUT_MS)
    assert timeout_ms is not None
    get_str(tool_input, "cwd", required=False)      # type-checks the field
    base = env.cwd or os.getcwd()
    cwd = safe_open.canonical(command_dir(tool_input, base), base, env.home)
    safe_open.check_floor(cwd, env.home)
    if not os.path.isdir(cwd):
        raise BadInput(f"cwd is not a directory: {cwd}", "cwd")
    child_env = scrub_env(os.environ, env.api_key)
    return run_argv(shell_argv(command), child_env, cwd, timeout_ms / 1000.0, env)


def _spawn(argv: list[str], child_env: dict[str, str], cwd: str, env: ToolEnv,
           out_w: int, err_w: int, cgroup: Any) -> tuple[_Child, bool]:
    sandbox = env.sandbox
    if sandbox is not None and sandbox.available:
        with open(os.devnull, "rb") as devnull:
            return sandbox.spawn(argv, child_env, cwd, devnull.fileno(), out_w, err_w,
                                 cgroup=cgroup), True
    reason = sandbox.reason if sandbox is not None else "no sandbox configured"
    required = (env.sandbox_required_for_local if env.caller_kind == CallerKind.LOCAL
                else env.sandbox_required_for_remote)
    if required:
        raise SandboxUnavailableError(f"refusing to run a command without the seccomp sandbox: {reason}")
    if env.warn is not None:
        env.warn(f"running the command WITHOUT the seccomp sandbox: {reason}")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w, cwd=cwd,
                            env=child_env, start_new_session=True, close_fds=True)
    return _PlainChild(proc), False


def run_argv(argv: list[str], child_env: dict[str, str], cwd: str, timeout_s: float,
             env: ToolEnv) -> dict[str, Any]:
    """Spawn `argv` (sandboxed where possible), capture capped output, enforce the deadline.

    Returns within timeout_s + KILL_GRACE_S + DRAIN_GRACE_S (plus scheduling noise), even when
    something outside the command's process group keeps its stdout/stderr open.
    """
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    if env.on_chunk is not None:
        # Streaming: bigger pipes and reads mean ~16x fewer chunks through the relay for the
        # same output (each chunk costs CPU in three processes); 64 KB pipes otherwise.
        for fd in (out_r, err_r):
            _grow_pipe(fd)
    cgroups = getattr(env.sandbox, "cgroups", None)
    cgroup = cgroups.create() if cgroups is not None else None
    try:
        child, sandboxed = _spawn(argv, child_env, cwd, env, out_w, err_w, cgroup)
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        if cgroup is not None:
            cgroup.finish()
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    started = time.monotonic()
    bufs = {"stdout": bytearray(), "stderr": bytearray()}
    truncated = {"stdout": False, "stderr": False}
    sel = selectors.DefaultSelector()
    sel.register(out_r, selectors.EVENT_READ, "stdout")
    sel.register(err_r, selectors.EVENT_READ, "stderr")
    deadline = started + timeout_s
    why_killed = ""            # "timeout" | "cancel"
    kill_at = 0.0              # when SIGKILL follows the SIGTERM (0: none pending)
    report_by = 0.0            # after the SIGKILL: when to stop waiting for the server's report
    returncode: int | None = None
    drain_until = 0.0          # once the command has exited: stop reading output at this time
    next_poll = 0.0            # when to ask again whether the command has exited
    left_open = False
    try:
        while True:
            now = time.monotonic()
            if returncode is None and not why_killed:
                if env.cancel is not None and env.cancel.is_set():
                    why_killed = "cancel"
                elif now >= deadline:
                    why_killed = "timeout"
                if why_killed:
                    kill_group(child.pid, signal.SIGTERM)
                    kill_at = now + KILL_GRACE_S
            if kill_at and now >= kill_at:
                kill_group(child.pid, signal.SIGKILL)
                if cgroup is not None:
                    cgroup.kill()       # and whatever left the process group
                kill_at = 0.0
                report_by = now + 2 * KILL_GRACE_S
            if report_by and now >= report_by and returncode is None:
                # Killed, yet no status: the sandbox server that reports it is stopped or gone
                # (a command can SIGSTOP its parent). Do not wait on it forever.
                # (A zombie the stopped server cannot reap keeps a process group "alive": past
                # a last grace the call ends all the same.)
                alive = cgroup.populated() if cgroup is not None else _group_alive(child.pid)
                if not alive or now >= report_by + 5 * KILL_GRACE_S:
                    returncode = -signal.SIGKILL
                    drain_until = time.monotonic()
                    if sandboxed and env.sandbox is not None:
                        env.sandbox.server_unresponsive()
            if returncode is None and (now >= next_poll or not sel.get_map()):
                # With output flowing, a brief poll once a tick; with none, block for the tick.
                returncode = child.wait(_POLL_S if sel.get_map() else _TICK_S)
                next_poll = now + _TICK_S
                if returncode is not None:
                    drain_until = time.monotonic() + DRAIN_GRACE_S
            if returncode is not None and (not sel.get_map() or time.monotonic() >= drain_until):
                left_open = bool(sel.get_map())
                break
            if sel.get_map():
                for key, _ in sel.select(_TICK_S):
                    _read_into(int(key.fd), str(key.data), bufs, truncated, env, sel)
        if cgroup is None and kill_at and _group_alive(child.pid):
            # The command died of the TERM but other members of its group have not yet: they
            # keep the rest of their grace before the SIGKILL, without holding the call open.
            # (With a cgroup, finish() below kills whatever is left, in the group or not.)
            killer = threading.Timer(max(0.0, kill_at - time.monotonic()), kill_group,
                                     (child.pid, signal.SIGKILL))
            killer.daemon = True
            killer.start()
    finally:
        # Closing our ends is what lets us return while an escaped process still holds the
        # write ends: its later writes fail with EPIPE (or it dies of SIGPIPE), not block.
        for key in list(sel.get_map().values()):
            sel.unregister(key.fileobj)
            os.close(key.fd)
        sel.close()
        usage = cgroup.finish() if cgroup is not None else None
    result: dict[str, Any] = {
        "stdout": bytes(bufs["stdout"]).decode("utf-8", "replace"),
        "stderr": bytes(bufs["stderr"]).decode("utf-8", "replace"),
        "exit_code": returncode if returncode >= 0 else 128 - returncode,
        "stdout_truncated": truncated["stdout"],
        "stderr_truncated": truncated["stderr"],
        "truncated": truncated["stdout"] or truncated["stderr"],
        "timed_out": why_killed == "timeout",
        "cancelled": why_killed == "cancel",
        "output_left_open": left_open,
        "sandboxed": sandboxed,
        "duration_ms": int((time.monotonic() - started) * 1000),
        "cgroup": False,
    }
    if usage is not None:
        result.update(usage.as_result())
    if returncode < 0:
        result["signal"] = signal.Signals(-returncode).name if -returncode in _SIGNALS else str(-returncode)
    return result


def _group_alive(pgid: int) -> bool:
    """True while process group `pgid` has a member (an unreaped zombie counts)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True     # a member we cannot signal still exists
    return True


_SIGNALS = {int(s) for s in signal.Signals}


def _read_into(fd: int, name: str, bufs: dict[str, bytearray], truncated: dict[str, bool],
               env: ToolEnv, sel: selectors.BaseSelector) -> None:
    data = os.read(fd, READ_STREAMING if env.on_chunk is not None else 65536)
    if not data:
        sel.unregister(fd)
        os.close(fd)
        return
    if env.on_chunk is not None:
        env.on_chunk(name, data)
    buf = bufs[name]
    room = OUTPUT_CAP - len(buf)
    if len(data) > room:
        truncated[name] = True
        data = data[:max(room, 0)]
    buf += data
