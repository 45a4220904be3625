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
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping, Sequence

from cmdop.adapters.sandbox import SandboxFilter, build_filter
from cmdop.core.errors import SandboxUnavailableError

_MAX_MSG = 1 << 20

log = logging.getLogger("cmdop.sandbox")


@dataclass
class SandboxedChild:
    """A child spawned by the fork server. `pid` is also its process group id."""

    pid: int
    _reply: socket.socket
    returncode: int | None = None

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
        else:
            self.returncode = int(json.loads(data)["returncode"])
        self._reply.close()
        return self.returncode

    def close(self) -> None:
        self._reply.close()


class Sandbox:
    """The per-process sandbox: a lazily built filter and a lazily started fork server.

    Thread-safe. `available` is False (and `reason` says why) where seccomp cannot be applied;
    `landlock` is 0 (and `landlock_reason` says why) where children run without a Landlock domain.
    """

    def __init__(self, filt: SandboxFilter | None = None) -> None:
        self._filter = filt
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._reason = ""
        self._landlock = 0
        self._landlock_reason = ""

    # -- state -----------------------------------------------------------------------------
    def _ensure(self) -> socket.socket | None:
        """Start the server if needed; None (with `_reason` set) where seccomp is unavailable."""
        if self._ctl is not None:
            return self._ctl
        if self._reason:
            return None
        if self._filter is None:
            self._filter = build_filter()
        if self._filter.bpf is None:
            self._reason = self._filter.reason
            return None
        self._ctl = self._start(self._filter.bpf)
        return self._ctl

    def _start(self, bpf: bytes) -> socket.socket | None:
        source = resources.files("cmdop.sandbox_launcher").joinpath("forkserver.py").read_text()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (parent, child):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _MAX_MSG)
        bpf_r, bpf_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", source, str(bpf_r), str(child.fileno())],
                pass_fds=(bpf_r, child.fileno()), stdin=subprocess.DEVNULL,
                start_new_session=True,  # terminal signals must not reach the server
                # Commands can read their parent's /proc/PPID/environ: give the server none of
                # the agent's secrets (each child gets its own scrubbed env per request).
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        finally:
            os.close(bpf_r)
            child.close()
        with os.fdopen(bpf_w, "wb") as w:
            w.write(bpf)
        parent.settimeout(30)
        try:
            hello = json.loads(parent.recv(_MAX_MSG) or b'{"ok": false, "reason": "server exited"}')
        except (OSError, ValueError) as exc:
            hello = {"ok": False, "reason": f"no answer from the sandbox server: {exc}"}
        parent.settimeout(None)
        if not hello.get("ok"):
            self._reason = f"seccomp filter could not be installed: {hello.get('reason')}"
            parent.close()
            proc.wait(timeout=5)
            return None
        self._proc = proc
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

    def describe(self) -> str:
        """One line for status output and logs: which confinement children run under."""
        if not self.available:
            return f"unavailable: {self.reason}"
        if self.landlock:
            return f"seccomp filter + Landlock domain (ABI {self.landlock})"
        return f"seccomp filter only, no Landlock domain: {self.landlock_reason}"

    # -- spawning --------------------------------------------------------------------------
    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str,
              stdin: int, stdout: int, stderr: int) -> SandboxedChild:
        """Start `argv` under the filter with the given fds as 0/1/2 (they stay open here).

        Raises SandboxUnavailableError when there is no sandbox, OSError when the program could
        not be started (e.g. FileNotFoundError for a missing cwd or program).
        """
        request = json.dumps({"argv": list(argv), "env": dict(env), "cwd": cwd}).encode()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            for attempt in (1, 2):
                with self._lock:
                    ctl = self._ensure()
                    if ctl is None:
                        raise SandboxUnavailableError(f"the command sandbox is unavailable: {self._reason}")
                    try:
                        socket.send_fds(ctl, [request], [theirs.fileno(), stdin, stdout, stderr])
                        break
                    except OSError:
                        if attempt == 2:
                            raise
                        self._drop_server()  # the server died: start a fresh one and retry once
        finally:
            theirs.close()
        mine.settimeout(30)  # a live server answers in well under a millisecond
        try:
            raw = mine.recv(_MAX_MSG)
        except OSError:
            raw = b""
        mine.settimeout(None)
        answer: dict[str, Any] = json.loads(raw or b'{"error": "sandbox server did not answer", "errno": 0}')
        if "pid" not in answer:
            mine.close()
            err = int(answer.get("errno") or 0)
            if err:
                raise OSError(err, str(answer.get("error")))
            raise OSError(str(answer.get("error")))
        return SandboxedChild(pid=int(answer["pid"]), _reply=mine)

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


def kill_group(pgid: int, sig: int) -> None:
    """Send `sig` to process group `pgid`; a group that is already gone is fine."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
