"""Sandbox fork server: confines ITSELF (seccomp filter, Landlock domain), then spawns children.

Runs in a fresh, single-threaded interpreter (`python -I -S -c SOURCE BPF_FD CTL_FD`), started by
`cmdop.adapters.launcher` through subprocess (fork+exec in C, safe while the agent has threads).
Stdlib only, no cmdop imports: it must run from a zipapp and start fast.

Why a server that confines itself: the filter, PR_SET_NO_NEW_PRIVS and the Landlock domain are
inherited across fork and execve and cannot be removed, so every child is confined from its first
instruction without running any Python between fork and exec in a multi-threaded agent.

The Landlock domain (best effort, see `enter_landlock_domain`): Landlock refuses ptrace-mode
access from inside a domain to any process outside it, whatever the uid, so a command cannot open
/proc/PID/mem (or fd/, cwd, exe...) of the agent, an operator's shell or any other process outside
the sandbox, which seccomp alone (blocking ptrace() but not /proc) did not prevent. The domain
restricts no file access: it handles only EXECUTE and REFER and grants both beneath "/".
Processes inside the one domain (this server and every command) can still reach each other.

Protocol on CTL_FD (AF_UNIX SOCK_SEQPACKET, one JSON object per message):
  server -> client once:  {"ok": true, "landlock": ABI, "landlock_reason": "..."}
                          (ABI: the Landlock ABI version of the domain every child runs in, 0 when
                          there is none, and then landlock_reason says why)
                          | {"ok": false, "reason": "..."} (then the server exits)
  client -> server:       {"argv": [...], "env": {...}, "cwd": "..."} with SCM_RIGHTS
                          [reply, stdin, stdout, stderr]
  server -> reply socket: {"pid": N} then later {"returncode": RC} (negative = killed by signal),
                          or {"error": "...", "errno": E} when the spawn failed.
The server exits when CTL_FD reaches EOF (the agent went away).
"""

from __future__ import annotations

import array
import ctypes
import errno
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
from typing import Any

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
MAX_MSG = 1 << 20

# Landlock (linux/landlock.h). The syscall numbers are the same on every architecture but alpha,
# which numbers them 110 higher.
NR_LANDLOCK_CREATE_RULESET = 444 + (110 if os.uname().machine == "alpha" else 0)
NR_LANDLOCK_ADD_RULE = NR_LANDLOCK_CREATE_RULESET + 1
NR_LANDLOCK_RESTRICT_SELF = NR_LANDLOCK_CREATE_RULESET + 2
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_ACCESS_FS_EXECUTE = 1 << 0
LANDLOCK_ACCESS_FS_REFER = 1 << 13     # ABI 2
# EXECUTE: a ruleset must handle at least one right, and executing is allowed everywhere by the
# rule below anyway. REFER: Landlock denies linking or renaming a file into another directory in
# ANY domain unless a rule grants REFER (it is "handled" implicitly), which would break `mv`,
# git, package managers and every os.replace() across directories; granting it beneath "/" keeps
# them working. ABI 1 has no REFER right at all, hence no domain there.
LANDLOCK_HANDLED_FS = LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_REFER
LANDLOCK_MIN_ABI = 2


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _landlock_call(libc: ctypes.CDLL, nr: int, *args: int | ctypes.Array[ctypes.c_char] | None) -> int:
    """syscall(nr, args...) -> its result, -1 with errno set on failure. Every argument goes
    as a full register (c_long or a pointer): syscall() reads longs."""
    conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return int(libc.syscall(ctypes.c_long(nr), *conv))


def _landlock_errno_text(what: str, err: int) -> str:
    if err == errno.ENOSYS:
        return f"{what}: this kernel has no Landlock (ENOSYS)"
    if err == errno.EOPNOTSUPP:
        return f"{what}: Landlock is built in but disabled at boot (not in lsm=) (EOPNOTSUPP)"
    if err == errno.EPERM:
        # systemd's SystemCallFilter=@system-service does not include the landlock_* calls.
        return (f"{what}: refused with EPERM, most likely by a seccomp filter on the agent "
                "(e.g. systemd SystemCallFilter= without the landlock_* calls)")
    return f"{what}: {os.strerror(err)}"


def enter_landlock_domain(libc: ctypes.CDLL) -> tuple[int, str]:
    """Put this process (and so every later child) into a new Landlock domain that restricts no
    file access: only EXECUTE and REFER are handled, and both are granted beneath "/".

    Needs PR_SET_NO_NEW_PRIVS already set. Never raises. Returns (ABI version, "") when the
    domain is in force, or (0, why) when it is not: no Landlock in the kernel (ENOSYS), disabled
    at boot (EOPNOTSUPP), the calls blocked by a seccomp filter (EPERM), ABI 1 (see
    LANDLOCK_HANDLED_FS), or a step that failed. The process is then left as it was.
    """
    libc.syscall.restype = ctypes.c_long
    abi = _landlock_call(libc, NR_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 0:
        return 0, _landlock_errno_text("Landlock ABI query", ctypes.get_errno())
    if abi < LANDLOCK_MIN_ABI:
        return 0, (f"Landlock ABI {abi} (Linux 5.13-5.18) forbids moving files between "
                   "directories in every domain; no domain used")
    # struct landlock_ruleset_attr: only its first field (handled_access_fs); size 8 is valid
    # for every ABI, and the later fields (net, scoped) stay unhandled.
    attr = ctypes.create_string_buffer(struct.pack("=Q", LANDLOCK_HANDLED_FS), 8)
    ruleset = _landlock_call(libc, NR_LANDLOCK_CREATE_RULESET, attr, 8, 0)
    if ruleset < 0:
        return 0, _landlock_errno_text("landlock_create_ruleset", ctypes.get_errno())
    root = -1
    try:
        root = os.open("/", os.O_PATH | os.O_CLOEXEC)
        # struct landlock_path_beneath_attr {__u64 allowed_access; __s32 parent_fd;} is packed.
        beneath = ctypes.create_string_buffer(struct.pack("=Qi", LANDLOCK_HANDLED_FS, root), 12)
        if _landlock_call(libc, NR_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH,
                          beneath, 0) != 0:
            return 0, _landlock_errno_text("landlock_add_rule", ctypes.get_errno())
        if _landlock_call(libc, NR_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            return 0, _landlock_errno_text("landlock_restrict_self", ctypes.get_errno())
    except OSError as exc:
        return 0, f"Landlock rule for /: {exc}"
    finally:
        os.close(ruleset)
        if root >= 0:
            os.close(root)
    return abi, ""


def confine_self(bpf: bytes) -> tuple[str, int, str]:
    """NO_NEW_PRIVS, the Landlock domain (best effort), then the seccomp filter, on this process.

    Returns (problem, landlock_abi, landlock_problem): `problem` is "" when NO_NEW_PRIVS and the
    filter are in force (else the server must not serve); the other two are
    `enter_landlock_domain`'s answer, which never stops the server.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return "prctl(PR_SET_NO_NEW_PRIVS) failed: " + os.strerror(ctypes.get_errno()), 0, ""
    # Before the filter, so no entry of our own blacklist can ever turn the domain off.
    landlock_abi, landlock_problem = enter_landlock_domain(libc)
    # Commands share the server's Landlock domain, so the domain does not keep them out of the
    # server's own memory; being undumpable does (for non-root commands): /proc/<server>/mem,
    # environ, fd become root-only. Children get dumpable back at execve, as usual.
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    return install_filter(libc, bpf), landlock_abi, landlock_problem


def install_filter(libc: ctypes.CDLL, bpf: bytes) -> str:
    """Apply the BPF program to this process (NO_NEW_PRIVS must be set). Returns an error text
    or ""."""
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
    problem, landlock_abi, landlock_problem = confine_self(read_all(bpf_fd))
    if problem:
        send(ctl, {"ok": False, "reason": problem})
        return 1
    # SIGCHLD wakes the loop through a pipe; the handler itself does nothing.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send(ctl, {"ok": True, "landlock": landlock_abi, "landlock_reason": landlock_problem})
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
