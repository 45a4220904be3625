"""Sandbox fork server: installs the seccomp filter on ITSELF, then spawns children on request.

Runs in a fresh, single-threaded interpreter (`python -I -S -c SOURCE BPF_FD CTL_FD`), started by
`cmdop.adapters.launcher` through subprocess (fork+exec in C, safe while the agent has threads).
Stdlib only, no cmdop imports: it must run from a zipapp and start fast.

Why a server that filters itself: the filter and PR_SET_NO_NEW_PRIVS are inherited across fork
and execve and cannot be removed, so every child is confined from its first instruction without
running any Python between fork and exec in a multi-threaded agent.

Protocol on CTL_FD (AF_UNIX SOCK_SEQPACKET, one JSON object per message):
  server -> client once:  {"ok": true} | {"ok": false, "reason": "..."} (then the server exits)
  client -> server:       {"argv": [...], "env": {...}, "cwd": "..."} with SCM_RIGHTS
                          [reply, stdin, stdout, stderr]
  server -> reply socket: {"pid": N} then later {"returncode": RC} (negative = killed by signal),
                          or {"error": "...", "errno": E} when the spawn failed.
The server exits when CTL_FD reaches EOF (the agent went away).
"""

from __future__ import annotations

import array
import ctypes
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
from typing import Any

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
MAX_MSG = 1 << 20


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_filter(bpf: bytes) -> str:
    """Apply NO_NEW_PRIVS and the BPF program to this process. Returns an error text or ""."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return "prctl(PR_SET_NO_NEW_PRIVS) failed: " + os.strerror(ctypes.get_errno())
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        return "prctl(PR_SET_SECCOMP) failed: " + os.strerror(ctypes.get_errno())
    return ""


def read_all(fd: int) -> bytes:
    chunks = []
    while True:
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    return b"".join(chunks)


def send(sock: socket.socket, obj: dict[str, Any]) -> None:
    try:
        sock.send(json.dumps(obj).encode())
    except OSError:
        pass  # the client gave up on this child; nothing to tell


Children = dict[int, "tuple[subprocess.Popen[bytes], socket.socket]"]


def spawn(req: dict[str, Any], fds: list[int], children: Children) -> None:
    reply, stdin, stdout, stderr = fds
    rsock = socket.socket(fileno=reply)
    try:
        proc = subprocess.Popen(
            req["argv"], stdin=stdin, stdout=stdout, stderr=stderr, cwd=req.get("cwd") or None,
            env=req.get("env"), start_new_session=True, close_fds=True,
        )
    except OSError as exc:
        send(rsock, {"error": str(exc), "errno": exc.errno or 0})
        rsock.close()
        return
    except Exception as exc:
        send(rsock, {"error": str(exc), "errno": 0})
        rsock.close()
        return
    finally:
        for fd in (stdin, stdout, stderr):
            os.close(fd)
    send(rsock, {"pid": proc.pid})
    children[proc.pid] = (proc, rsock)


def reap(children: Children) -> None:
    for pid in list(children):
        proc, rsock = children[pid]
        rc = proc.poll()
        if rc is not None:
            send(rsock, {"returncode": rc})
            rsock.close()
            del children[pid]


def main() -> int:
    bpf_fd, ctl_fd = int(sys.argv[1]), int(sys.argv[2])
    ctl = socket.socket(fileno=ctl_fd)
    problem = install_filter(read_all(bpf_fd))
    if problem:
        send(ctl, {"ok": False, "reason": problem})
        return 1
    # SIGCHLD wakes the loop through a pipe; the handler itself does nothing.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send(ctl, {"ok": True})
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, "ctl")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    children: Children = {}
    while True:
        for key, _ in sel.select():
            if key.data == "wake":
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                reap(children)
                continue
            try:
                msg, anc, _flags, _addr = ctl.recvmsg(MAX_MSG, socket.CMSG_SPACE(4 * 4))
            except InterruptedError:
                continue
            if not msg:
                return 0
            fds = array.array("i")
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            if len(fds) != 4:
                for fd in fds:
                    os.close(fd)
                continue
            try:
                req = json.loads(msg)
            except ValueError:
                for fd in fds:
                    os.close(fd)
                continue
            spawn(req, list(fds), children)
        reap(children)


if __name__ == "__main__":
    sys.exit(main())
