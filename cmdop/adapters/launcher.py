"""Spawning children under the seccomp filter, without running Python between fork and exec.

Approach (measured, see bench/spawn.py and the README): a fork server. On first use the agent
builds the BPF once (`cmdop.adapters.sandbox`), starts `cmdop/sandbox_launcher/forkserver.py` in
a fresh interpreter through subprocess (C fork+exec: safe while grpc/trio threads run), and
hands it the BPF on a pipe. The server sets PR_SET_NO_NEW_PRIVS and installs the filter on
itself, then spawns each child on request; the filter is inherited and cannot be lifted.
Why not a loader per call: a fresh Python loader costs ~7 ms per spawn (~25 ms importing
pyseccomp); a compiled C helper would need a compiler on every target of the zipapp. The server
costs one interpreter start per agent process and well under a millisecond per spawn.

Every child: its own session and process group (pgid == pid), stdin/stdout/stderr given as fds,
every other fd closed, SIGPIPE/SIGXFSZ restored to default.

The server also puts itself into a Landlock domain where the kernel allows it, so no child can
open /proc/PID/mem (or any other ptrace-mode /proc file) of a process outside the sandbox.
Without Landlock the sandbox still serves, seccomp only: `Sandbox.landlock` is then 0,
`Sandbox.landlock_reason` says why, and each server start logs that as a warning.

With a `FloorSpec` the server first builds the kernel floor (`cmdop.core.kernel_floor`): its own
mount namespace, built once per server. When a directory the plan listed changes (a new project
in a home, a new home), the next spawn retires the server (it finishes reporting on its running
children, then exits) and starts a fresh one on a fresh plan, so a new directory is writable and
a new home sealed. With `CallCgroups` each child is born in its call's cgroup.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from cmdop.adapters import kernel_floor_fs
from cmdop.adapters.sandbox import SandboxFilter, build_filter
from cmdop.core import kernel_floor
from cmdop.core.capabilities import DROPPED
from cmdop.core.errors import SandboxUnavailableError

if TYPE_CHECKING:
    from cmdop.adapters.cgroups import CallCgroup, CallCgroups
    from cmdop.adapters.config_file import AgentConfig
    from cmdop.core.settings import Settings

_MAX_MSG = 1 << 20
RETRY_S = 2.0          # a failed server start is tried again after this long
HELLO_TIMEOUT_S = 30.0
ANSWER_TIMEOUT_S = 10.0  # a live server answers a spawn in well under a millisecond

log = logging.getLogger("cmdop.sandbox")


@dataclass
class SandboxedChild:
    """A child spawned by the fork server. `pid` is also its process group id."""

    pid: int
    _reply: socket.socket
    returncode: int | None = None
    # Told when the server is found dead, so the sandbox reaps it before the next spawn.
    _server_lost: Callable[[], None] | None = None

    def wait(self, timeout: float | None) -> int | None:
        """The child's return code (negative: killed by that signal), or None on timeout."""
        if self.returncode is not None:
            return self.returncode
        self._reply.settimeout(timeout)
        try:
            data = self._reply.recv(_MAX_MSG)
        except (TimeoutError, socket.timeout):
            return None
        except OSError:
            data = b""
        if not data:  # the fork server died: the child's status is lost; report it as killed
            self.returncode = -signal.SIGKILL
            if self._server_lost is not None:
                self._server_lost()
        else:
            self.returncode = int(json.loads(data)["returncode"])
        self._reply.close()
        return self.returncode

    def close(self) -> None:
        self._reply.close()


class Sandbox:
    """The per-process sandbox: a lazily built filter and a lazily started fork server.

    Thread-safe. `available` is False (and `reason` says why) where seccomp cannot be applied;
    `landlock` is 0 (and `landlock_reason` says why) where children run without a Landlock domain;
    `enforcement()` says which kernel floor children run in, and why there is none.
    """

    def __init__(self, filt: SandboxFilter | None = None,
                 floor: kernel_floor_fs.FloorSpec | None = None,
                 cgroups: "CallCgroups | None" = None) -> None:
        self._filter = filt
        self._floor = floor
        self.cgroups = cgroups if cgroups is not None and cgroups.enabled else None
        self._cgroups_reason = "" if self.cgroups else (
            cgroups.reason if cgroups is not None else "not configured")
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._retired: list[subprocess.Popen[bytes]] = []
        self._ctl: socket.socket | None = None
        self._reason = ""
        self._retry_at = 0.0
        self._landlock = 0
        self._landlock_reason = ""
        self._kernel_floor = ""
        self._floor_reason = "no kernel floor configured" if floor is None else ""
        self._caps_dropped = 0
        self._watched: tuple[str, ...] = ()
        self._fingerprint: tuple[tuple[int, int], ...] = ()
        self.plan: kernel_floor.MountPlan | None = None
        # Fixed now, before any command ran: every server starts from this interpreter.
        self._interpreter = kernel_floor_fs.agent_interpreter()
        # What this process has mapped (the same interpreter's libpython, libc, libffi, ...):
        # a server started later must load exactly these.
        self._mapped = kernel_floor_fs.mapped_files(os.getpid())
        self._start_files = kernel_floor_fs.server_start_files(self._mapped)

    # -- state -----------------------------------------------------------------------------
    def _ensure(self) -> socket.socket | None:
        """Start the server if needed; None (with `_reason` set) where it cannot run. A filter
        that cannot be built is final; a server that failed to start (the namespace could not
        be built, it did not answer) is tried again after RETRY_S, so one bad moment — a
        directory vanishing while the namespace is built — does not disable commands for good."""
        if self._ctl is not None:
            return self._ctl
        if self._filter is None:
            self._filter = build_filter()
        if self._filter.bpf is None:
            self._reason = self._filter.reason
            return None
        if self._reason and time.monotonic() < self._retry_at:
            return None
        self._reason = ""
        self._ctl = self._start(self._filter.bpf)
        if self._ctl is None:
            self._retry_at = time.monotonic() + RETRY_S
        return self._ctl

    def _config(self) -> dict[str, Any]:
        """The server's configuration: the mount plan (fresh), capabilities, cgroup home."""
        config: dict[str, Any] = {"mounts": None, "drop_caps": list(DROPPED) if os.geteuid() == 0 else [],
                                  "home_cg": list(self.cgroups.server_procs_fds()) if self.cgroups else []}
        if self._floor is not None:
            try:
                plan, rules, self._watched = kernel_floor_fs.build_plan(self._floor)
            except Exception as exc:  # noqa: BLE001 - reading the machine failed: say why
                # Fail closed: a home whose contents break the planner must not switch the
                # kernel floor off. The sandbox is then unavailable, and remote commands refused.
                config["fatal"] = f"planning the kernel floor failed: {type(exc).__name__}: {exc}"
                return config
            self._fingerprint = kernel_floor_fs.fingerprint(self._watched)
            self.plan = plan
            config["mounts"] = [op.as_json() for op in plan.ops]
            config["landlock_rules"] = [list(rule) for rule in rules]
            config["dev_allowed"] = list(kernel_floor.DEV_ALLOWED)
        else:
            config["mounts_reason"] = "no kernel floor configured"
        return config

    def _start(self, bpf: bytes) -> socket.socket | None:
        source = resources.files("cmdop.sandbox_launcher").joinpath("forkserver.py").read_text()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (parent, child):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _MAX_MSG)
        config = self._config()
        now = kernel_floor_fs.server_start_files(self._mapped)
        changed = [p for p, ident in now.items() if ident != self._start_files.get(p)]
        if changed:
            config["fatal"] = (f"what a sandbox server starts from changed since the agent started "
                               f"({', '.join(changed[:3])}); refusing to start one from it — restart "
                               "the agent once the change is intended")
        if config.get("fatal"):
            self._reason = str(config["fatal"])
            log.error("command sandbox unavailable: %s", self._reason)
            parent.close()
            child.close()
            return None
        bpf_r, bpf_w = os.pipe()
        try:
            proc = subprocess.Popen(
                # The real interpreter (no venv symlink a command could swap); -I -S need no venv.
                [self._interpreter, "-I", "-S", "-c", source, str(bpf_r), str(child.fileno())],
                pass_fds=(bpf_r, child.fileno(), *config["home_cg"]), stdin=subprocess.DEVNULL,
                start_new_session=True,  # terminal signals must not reach the server
                # Commands can read their parent's /proc/PPID/environ: give the server none of
                # the agent's secrets (each child gets its own scrubbed env per request).
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        finally:
            os.close(bpf_r)
            child.close()
        with os.fdopen(bpf_w, "wb") as w:
            w.write(json.dumps(config).encode() + b"\n" + bpf)
        parent.settimeout(HELLO_TIMEOUT_S)
        try:
            hello = json.loads(parent.recv(_MAX_MSG) or b'{"ok": false, "reason": "server exited"}')
        except (OSError, ValueError) as exc:
            hello = {"ok": False, "reason": f"no answer from the sandbox server: {exc}"}
        parent.settimeout(None)
        if not hello.get("ok"):
            self._reason = f"the sandbox server could not start: {hello.get('reason')}"
            log.error("command sandbox unavailable (retried in %.0f s): %s", RETRY_S, self._reason)
            parent.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:     # it never answered: it does not get to linger
                proc.kill()
                proc.wait()
            return None
        self._proc = proc
        self._kernel_floor = str(hello.get("kernel_floor") or "")
        self._floor_reason = str(hello.get("kernel_floor_reason") or "") or (
            "" if self._kernel_floor else "unknown")
        self._caps_dropped = int(hello.get("caps_dropped") or 0)
        if self._floor is not None and not self._kernel_floor:
            log.warning("commands run WITHOUT the kernel floor (static floor only): %s",
                        self._floor_reason)
        elif self._kernel_floor == "landlock":
            log.warning("kernel floor as Landlock file rules (no mount namespace here: %s)",
                        self._floor_reason)
        self._landlock = int(hello.get("landlock") or 0)
        self._landlock_reason = "" if self._landlock else str(
            hello.get("landlock_reason") or "the sandbox server did not report a Landlock domain")
        if not self._landlock:
            # Once per server start (once per agent process, or after a dead server's
            # replacement): commands still run, but can open other processes' /proc/PID/mem.
            log.warning("command sandbox runs WITHOUT a Landlock domain (seccomp only): %s; "
                        "commands can reach /proc/PID/mem of processes outside the sandbox",
                        self._landlock_reason)
        return parent

    @property
    def available(self) -> bool:
        """True when children can be spawned under the filter (starts the server if needed)."""
        with self._lock:
            return self._ensure() is not None

    @property
    def reason(self) -> str:
        """Why the sandbox is unavailable ("" when it is available)."""
        with self._lock:
            self._ensure()
            return self._reason

    @property
    def landlock(self) -> int:
        """The Landlock ABI version of the domain children run in; 0 when they run in none
        (no Landlock here, or no sandbox at all). Starts the server if needed."""
        with self._lock:
            return self._landlock if self._ensure() is not None else 0

    @property
    def landlock_reason(self) -> str:
        """Why children run without a Landlock domain ("" when they run in one). Starts the
        server if needed."""
        with self._lock:
            if self._ensure() is None:
                return f"no sandbox: {self._reason}"
            return self._landlock_reason

    def enforcement(self) -> dict[str, str]:
        """Which enforcement children run under, for `agent status` and `doctor` (one word or
        phrase per layer, then why where a layer is missing)."""
        with self._lock:
            ok = self._ensure() is not None
            floor, floor_why = self._kernel_floor, self._floor_reason
            landlock, landlock_why, caps = self._landlock, self._landlock_reason, self._caps_dropped
            reason = self._reason
        out: dict[str, str] = {}
        if not ok:
            out["seccomp"] = f"unavailable: {reason}"
            out["kernel_floor"] = "static only"
            out["kernel_floor_reason"] = "no sandbox"
        else:
            out["seccomp"] = "filter"
            out["kernel_floor"] = floor or "static only"
            if floor_why:
                out["kernel_floor_reason"] = floor_why
            if floor and self.plan is not None and self.plan.notes:
                out["kernel_floor_notes"] = "; ".join(self.plan.notes)   # limits met planning
        out["landlock"] = f"ABI {landlock}" if ok and landlock else "none"
        if not (ok and landlock):
            out["landlock_reason"] = landlock_why or reason
        out["cgroup_per_call"] = "yes" if self.cgroups else "no"
        if self.cgroups:
            out["cgroup_detail"] = self.cgroups.describe()
        else:
            out["cgroup_reason"] = self._cgroups_reason
        out["capabilities"] = (f"trimmed ({caps} dropped)" if ok and caps else
                               "n/a (not root)" if os.geteuid() != 0 else "not trimmed")
        return out

    def describe(self) -> str:
        """One line for status output and logs: which confinement children run under."""
        if not self.available:
            return f"unavailable: {self.reason}"
        if self.landlock:
            return f"seccomp filter + Landlock domain (ABI {self.landlock})"
        return f"seccomp filter only, no Landlock domain: {self.landlock_reason}"

    # -- spawning --------------------------------------------------------------------------
    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str,
              stdin: int, stdout: int, stderr: int,
              cgroup: "CallCgroup | None" = None) -> SandboxedChild:
        """Start `argv` under the filter with the given fds as 0/1/2 (they stay open here), in
        `cgroup` when given.

        Raises SandboxUnavailableError when there is no sandbox, OSError when the program could
        not be started (e.g. FileNotFoundError for a missing cwd or program).
        """
        cg_fds = list(cgroup.procs_fds) if cgroup is not None else []
        request = json.dumps({"argv": list(argv), "env": dict(env), "cwd": cwd,
                              "cg": len(cg_fds)}).encode()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            for attempt in (1, 2):
                with self._lock:
                    self._refresh()
                    ctl = self._ensure()
                    if ctl is None:
                        raise SandboxUnavailableError(f"the command sandbox is unavailable: {self._reason}")
                    try:
                        socket.send_fds(ctl, [request], [theirs.fileno(), stdin, stdout, stderr, *cg_fds])
                        server = self._proc      # the one that will report on this child
                        break
                    except OSError:
                        if attempt == 2:
                            raise
                        self._drop_server()  # the server died: start a fresh one and retry once
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.settimeout(ANSWER_TIMEOUT_S)
        try:
            raw = mine.recv(_MAX_MSG)
        except OSError:
            raw = b'{"error": "sandbox server did not answer", "errno": 0}'
            # Stopped or wedged (a command can SIGSTOP its parent): replace it.
            self.server_unresponsive()
        if not raw:
            # The server ended without answering: killed, perhaps by a command it had just
            # started (which then ran). Reap it so the next spawn gets a fresh one.
            raw = (b'{"error": "the sandbox server ended before it reported on the command '
                   b'(a command may have killed it); the next call starts a fresh one", "errno": 0}')
            self.server_lost(server)
        mine.settimeout(None)
        answer: dict[str, Any] = json.loads(raw)
        if "pid" not in answer:
            mine.close()
            err = int(answer.get("errno") or 0)
            if err:
                raise OSError(err, str(answer.get("error")))
            raise OSError(str(answer.get("error")))
        return SandboxedChild(pid=int(answer["pid"]), _reply=mine,
                              _server_lost=lambda: self.server_lost(server))

    def server_lost(self, server: "subprocess.Popen[bytes] | None") -> None:
        """A child's report ended without a status: its server died (a command can kill it).
        Reap that server now. A dying process closes its sockets one by one, so the child's
        report can end while the control socket still takes a request; a spawn sent then would
        be dropped unanswered. Once reaped, the next spawn starts a fresh server."""
        with self._lock:
            if server is None or server is not self._proc:
                return          # a retired server, or one already replaced
            try:
                server.wait(timeout=2)
            except subprocess.TimeoutExpired:
                return          # alive after all: only this report was cut; keep it
            self._drop_server()

    def server_unresponsive(self) -> None:
        """The server stopped answering (a command stopped it, or it wedged): kill it (SIGKILL
        works on a stopped process); the next spawn starts a fresh one."""
        with self._lock:
            if self._proc is not None:
                log.warning("the sandbox server stopped answering; replacing it")
                self._proc.kill()
            self._drop_server()

    def _refresh(self) -> None:
        """Retire the server when a listing its mount plan depends on has changed (caller holds
        the lock); the next `_ensure` starts a fresh one on a fresh plan. A server that has
        exited is dropped, so the next `_ensure` replaces it."""
        self._retired = [p for p in self._retired if p.poll() is None]
        if self._proc is not None and self._proc.poll() is not None:
            self._drop_server()
            return
        if self._ctl is None or self._floor is None:
            return
        if kernel_floor_fs.fingerprint(self._watched) == self._fingerprint:
            return
        log.info("a directory the kernel floor depends on changed; rebuilding the namespace")
        self._ctl.close()          # EOF: the old server reports on its children, then exits
        self._ctl = None
        if self._proc is not None:
            self._retired.append(self._proc)
            self._proc = None

    def _drop_server(self) -> None:
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=2)  # EOF on its control socket makes it exit
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def warm(self) -> bool:
        """Build the filter and start the server now (the daemon calls this at start-up so the
        first command does not pay ~60 ms). Returns `available`."""
        return self.available

    def close(self) -> None:
        """Stop the fork server (children already running are left alone)."""
        with self._lock:
            self._drop_server()
            for proc in self._retired:
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._retired = []
            if self.cgroups is not None:
                self.cgroups.close()


def kill_group(pgid: int, sig: int) -> None:
    """Send `sig` to process group `pgid`; a group that is already gone is fine."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def sandbox_for_agent(settings: "Settings", config: "AgentConfig") -> Sandbox:
    """The production sandbox of an agent: the kernel floor for its settings, a cgroup per call
    with the limits of config.yaml (where cgroups are delegated; otherwise it says why)."""
    from cmdop.adapters.cgroups import CallCgroups, CgroupLimits, parse_size, total_ram_bytes

    try:
        memory_max: int | None = parse_size(config.call_memory_max, total_ram_bytes())
    except (ValueError, OSError) as exc:
        log.warning("call_memory_max %r not usable (%s); no memory limit per call",
                    config.call_memory_max, exc)
        memory_max = None
    cgroups = CallCgroups.setup(CgroupLimits(pids_max=config.call_pids_max, memory_max=memory_max))
    return Sandbox(floor=kernel_floor_fs.spec_for(settings), cgroups=cgroups)
