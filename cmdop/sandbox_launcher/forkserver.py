"""Sandbox fork server: confines ITSELF (seccomp filter, Landlock domain), then spawns children.

Runs in a fresh, single-threaded interpreter (`python -I -S -c SOURCE CONFIG_FD CTL_FD`), started by
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

Before confining itself the server enters the kernel floor (the plan of
`cmdop.core.kernel_floor`, computed by the agent): a mount namespace of its own (inside a new user
namespace when the agent is not root) where credentials and cmdop's state are hidden and login
files, /proc/sys, /sys and cmdop's code are read-only, and /dev opens no device but the harmless
ones. It then drops the dangerous capabilities from its bounding set (`cmdop.core.capabilities`).
Every child inherits all of it. A child joins its call's cgroup(s) without any code between fork
and exec: the server (single-threaded) moves itself into the call cgroup, spawns, and moves back.

CONFIG_FD carries one JSON line, then the BPF bytes:
  {"mounts": [op, ...] | null, "dev_allowed": [...], "landlock_rules": [[path, "rw"|"ro"], ...],
   "drop_caps": [N, ...], "home_cg": [fd, ...]}
  (ops as `MountOp.as_json`; home_cg: cgroup.procs fds of the server's own leaf, inherited)

Protocol on CTL_FD (AF_UNIX SOCK_SEQPACKET, one JSON object per message):
  server -> client once:  {"ok": true, "landlock": ABI, "landlock_reason": "...",
                           "kernel_floor": "mount namespace" | "user+mount namespace" | "landlock"
                                           | "", "kernel_floor_reason": "...", "caps_dropped": N}
                          (ABI: the Landlock ABI version of the domain every child runs in, 0 when
                          there is none, and then landlock_reason says why; kernel_floor "" when
                          no kernel floor could be built, and kernel_floor_reason says why;
                          "landlock" when no namespace could be made and the CONFIG's
                          landlock_rules hold the floor instead)
                          | {"ok": false, "reason": "..."} (then the server exits)
  client -> server:       {"argv": [...], "env": {...}, "cwd": "...", "cg": N} with SCM_RIGHTS
                          [reply, stdin, stdout, stderr, N cgroup.procs fds of the call]
  server -> reply socket: {"pid": N} then later {"returncode": RC} (negative = killed by signal),
                          or {"error": "...", "errno": E} when the spawn failed.
When CTL_FD reaches EOF (the agent went away, or retired this server for a fresh namespace) the
server takes no more requests, reports the children still running as they end, then exits.
"""

from __future__ import annotations

import array
import ctypes
import errno
import json
import os
import re
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
from typing import Any

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_SLAVE, MS_RELATIME = 16384, 1 << 18, 1 << 19, 1 << 21
MNT_DETACH = 2
# statvfs f_flag bits (ST_*) -> the per-mount flags a bind remount must restate: in a user
# namespace the kernel refuses a remount that would clear a flag the parent namespace locked.
_ST_TO_MS = ((1, MS_RDONLY), (2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC),
             (1024, MS_NOATIME), (2048, MS_NODIRATIME), (4096, MS_RELATIME))
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


# Every file-system right of each ABI (linux/landlock.h), and the ones that make sense on a file.
LANDLOCK_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
LANDLOCK_FS_RIGHTS_LATEST = (1 << 16) - 1      # ABI 5+: IOCTL_DEV
LANDLOCK_FILE_RIGHTS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)
LANDLOCK_READ_RIGHTS = (1 << 0) | (1 << 2) | (1 << 3)   # EXECUTE, READ_FILE, READ_DIR
LANDLOCK_READ_DIR = 1 << 3
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0    # ABI 6


def _landlock_rule(libc: ctypes.CDLL, ruleset: int, path: str, access: int) -> None:
    """Grant `access` beneath `path` (only the file rights for a file). Raises OSError."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= LANDLOCK_FILE_RIGHTS
        # struct landlock_path_beneath_attr {__u64 allowed_access; __s32 parent_fd;} is packed.
        beneath = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
        if _landlock_call(libc, NR_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH,
                          beneath, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, _landlock_errno_text(f"landlock_add_rule {path}", err))
    finally:
        os.close(fd)


def enter_landlock_domain(libc: ctypes.CDLL,
                          file_rules: list[tuple[str, str]] | None = None) -> tuple[int, str]:
    """Put this process (and so every later child) into a new Landlock domain.

    Without `file_rules` the domain restricts no file access: only EXECUTE and REFER are
    handled, and both are granted beneath "/" (it is there for its process scoping). With
    `file_rules` ((path, "rw" | "ro") from `cmdop.core.kernel_floor.landlock_rules`) every
    file-system right of this ABI is handled, directory listing is granted everywhere, and the
    rest only where a rule says: this is the kernel floor where no mount namespace can be built.

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
    handled = LANDLOCK_HANDLED_FS if file_rules is None else LANDLOCK_FS_RIGHTS.get(abi, LANDLOCK_FS_RIGHTS_LATEST)
    # struct landlock_ruleset_attr {handled_access_fs; handled_access_net (ABI 4); scoped (ABI 6)}.
    # From ABI 6 the domain is also scoped for abstract Unix sockets: a command cannot connect
    # to one bound outside the sandbox (a session's tmux or D-Bus helper). Signals are NOT
    # scoped: `kill -HUP` of a service's process is ordinary administration.
    if abi >= 6:
        attr = ctypes.create_string_buffer(struct.pack("=QQQ", handled, 0, LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET), 24)
    else:
        attr = ctypes.create_string_buffer(struct.pack("=Q", handled), 8)
    ruleset = _landlock_call(libc, NR_LANDLOCK_CREATE_RULESET, attr, len(attr), 0)
    if ruleset < 0:
        return 0, _landlock_errno_text("landlock_create_ruleset", ctypes.get_errno())
    try:
        if file_rules is None:
            _landlock_rule(libc, ruleset, "/", LANDLOCK_HANDLED_FS)
        else:
            _landlock_rule(libc, ruleset, "/", LANDLOCK_READ_DIR)
            for path, kind in file_rules:
                try:
                    _landlock_rule(libc, ruleset, path, handled if kind == "rw" else LANDLOCK_READ_RIGHTS)
                except FileNotFoundError:
                    continue        # gone since the plan was made: nothing to grant
        if _landlock_call(libc, NR_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            return 0, _landlock_errno_text("landlock_restrict_self", ctypes.get_errno())
    except OSError as exc:
        return 0, f"Landlock rules: {exc.strerror or exc}"
    finally:
        os.close(ruleset)
    return abi, ""


class MountError(Exception):
    """A step of building the namespace failed (the namespace may be half built)."""


class NamespaceUnavailable(MountError):
    """No namespace could be created at all (nothing was changed)."""


def _enc(value: str | None) -> bytes | None:
    # os.fsencode: names from os.listdir that are not UTF-8 arrive as surrogate escapes.
    return os.fsencode(value) if value is not None else None


def _mount(libc: ctypes.CDLL, src: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    enc = _enc
    if libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise MountError(f"mount {target}: {os.strerror(err)}")


def _mountpoints() -> list[str]:
    """Mount points of this namespace, in mount order (/proc/self/mountinfo, octal escapes)."""
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            raw = line.split(b" ")[4]
            out.append(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), raw)
                       .decode("utf-8", "surrogateescape"))
    return out


def _remount(libc: ctypes.CDLL, path: str, add: int) -> None:
    """Add `add` (MS_RDONLY, MS_NODEV) to the mount at `path`, restating its other flags."""
    try:
        f_flag = os.statvfs(path).f_flag
    except OSError as exc:
        raise MountError(f"statvfs {path}: {exc.strerror}") from None
    flags = add
    for st, ms in _ST_TO_MS:
        if f_flag & st:
            flags |= ms
    _mount(libc, None, path, None, MS_REMOUNT | MS_BIND | flags)


def _open_nofollow(path: str) -> int | None:
    """An O_PATH fd of `path` itself (a final symlink is not followed), None when it is gone."""
    try:
        return os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MountError(f"open {path!r}: {exc.strerror}") from None


def _via_fd(libc: ctypes.CDLL, path: str, action: Any, must_exist: bool = False) -> None:
    """Run `action(target)` on the object at `path`, named through /proc/self/fd so that a
    symlink swapped in after planning cannot redirect the mount. A path that vanished since
    planning is skipped (nothing there to protect or re-expose), unless `must_exist`; a path
    that became a symlink is never mounted on: skipped for a re-exposure, an error for a hide."""
    fd = _open_nofollow(path)
    if fd is None:
        if must_exist:
            raise MountError(f"{path!r} vanished while the kernel floor was built")
        return
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            if must_exist:
                raise MountError(f"{path!r} became a symlink while the kernel floor was built")
            return
        action(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def enter_mount_namespace(libc: ctypes.CDLL, ops: list[dict[str, Any]],
                          dev_allowed: list[str]) -> str:
    """Unshare a mount namespace (inside a new user namespace when not root) and apply `ops`.

    Returns the kind built ("mount namespace" | "user+mount namespace"); raises MountError
    saying why not. Must run before the seccomp filter (which refuses unshare and mount).
    """
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    uid, gid = os.geteuid(), os.getegid()
    kind = "mount namespace"
    if uid == 0:
        if libc.unshare(CLONE_NEWNS) != 0:
            raise NamespaceUnavailable("unshare(CLONE_NEWNS): " + os.strerror(ctypes.get_errno()))
    else:
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
            err = ctypes.get_errno()
            raise NamespaceUnavailable("unprivileged user namespaces are not available here "
                                       f"(unshare: {os.strerror(err)})")
        kind = "user+mount namespace"
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                           ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    # Private: nothing done here reaches the host, and nothing the host mounts later arrives
    # here with its own (writable) flags inside a read-only area; the agent rebuilds the
    # namespace when the host's mount table changes. Failing here (a seccomp filter on the
    # agent refusing mount) has changed nothing yet: the namespace is unavailable.
    try:
        _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    except MountError as exc:
        raise NamespaceUnavailable(f"{exc} (is mount() refused by a seccomp filter on the agent?)") from None
    hide_dirs = [op["path"] for op in ops if op["op"] == "hide_dir"]
    scratch = hide_dirs[0] if hide_dirs and any(op["op"] == "hide_file" for op in ops) else ""
    empty = ""
    if scratch:
        # An empty file to bind over hidden files: made in a scratch tmpfs on a directory that is
        # hidden anyway, which then gets its own empty read-only tmpfs at the end.
        _via_fd(libc, scratch, lambda t: _mount(libc, "tmpfs", t, "tmpfs",
                                                 MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0700"),
                must_exist=True)
        empty = os.path.join(scratch, "empty")
        os.close(os.open(empty, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o444))
    hidden_fs = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    for op in ops:
        path = op["path"]
        what = op["op"]
        if what == "bind":
            _via_fd(libc, path, lambda t: _mount(libc, t, t, None, MS_BIND | MS_REC))
        elif what == "readonly":
            targets = [path]
            if op.get("recursive"):
                prefix = path.rstrip("/") + "/"
                targets += [m for m in _mountpoints() if m.startswith(prefix)]
            for target in dict.fromkeys(targets):
                _via_fd(libc, target, lambda t: _remount(libc, t, MS_RDONLY))
        elif what == "hide_dir":
            if path != scratch:
                _via_fd(libc, path, lambda t: _mount(libc, "tmpfs", t, "tmpfs", hidden_fs,
                                                     "size=4k,nr_inodes=1,mode=0555"), must_exist=True)
        elif what == "hide_file":
            _via_fd(libc, path, lambda t: _mount(libc, empty, t, None, MS_BIND), must_exist=True)
            # A fresh fd: the first one still names the file under the new mount.
            _via_fd(libc, path, lambda t: _remount(libc, t, hidden_fs), must_exist=True)
        elif what == "dev":
            _enter_dev(libc, path, dev_allowed)
        else:
            raise MountError(f"unknown mount operation {what!r}")
    if scratch:
        if libc.umount2(_enc(scratch), MNT_DETACH) != 0:
            raise MountError(f"umount {scratch}: {os.strerror(ctypes.get_errno())}")
        _via_fd(libc, scratch, lambda t: _mount(libc, "tmpfs", t, "tmpfs", hidden_fs,
                                                 "size=4k,nr_inodes=1,mode=0555"), must_exist=True)
    return kind


def _enter_dev(libc: ctypes.CDLL, path: str, dev_allowed: list[str]) -> None:
    """/dev with no device but the allowed ones, and a pty namespace of our own: a fresh devpts
    instance, so a command cannot open another session's /dev/pts/N (read what an operator
    types, write onto their terminal)."""
    _mount(libc, path, path, None, MS_BIND | MS_REC)
    for name in dev_allowed:
        node = os.path.join(path, name)
        try:
            st = os.lstat(node)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode):
            _mount(libc, node, node, None, MS_BIND)
    shm = os.path.join(path, "shm")
    if os.path.isdir(shm) and not os.path.islink(shm):
        # A POSIX shared-memory tmpfs of the namespace's own, capped: what a command leaves in
        # /dev/shm stays in RAM after its call, so the host's (half the RAM) would let every
        # call pin memory outside its cgroup's limit.
        _mount(libc, "tmpfs", shm, "tmpfs", MS_NOSUID | MS_NODEV, "size=5%,mode=1777")
    pts = os.path.join(path, "pts")
    if os.path.isdir(pts):
        try:
            _mount(libc, "devpts", pts, "devpts", MS_NOSUID | MS_NOEXEC,
                   "newinstance,ptmxmode=0666,mode=0620")
            ptmx = os.path.join(path, "ptmx")
            if not os.path.islink(ptmx) and os.path.exists(ptmx):
                _mount(libc, os.path.join(pts, "ptmx"), ptmx, None, MS_BIND)
        except MountError:
            # No devpts of our own (an old kernel, a user namespace that may not): no ptys at
            # all rather than the host's.
            _mount(libc, "tmpfs", pts, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   "size=4k,nr_inodes=1,mode=0555")
    _remount(libc, path, MS_NODEV)
    prefix = path.rstrip("/") + "/"
    for m in _mountpoints():
        if m.startswith(prefix) and not m.startswith(pts + "/") and m != pts:
            # /dev/shm, /dev/mqueue, /dev/hugepages: no device node there may open either.
            if os.path.isdir(m):
                _via_fd(libc, m, lambda t: _remount(libc, t, MS_NODEV))


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_capabilities(libc: ctypes.CDLL, caps: list[int]) -> int:
    """Drop `caps` from the bounding set (so no child can ever hold them), and clear the
    inheritable and ambient sets. Returns how many were dropped; raises OSError."""
    dropped = 0
    for cap in caps:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:        # this kernel does not know the capability
                continue
            raise OSError(err, f"PR_CAPBSET_DROP {cap}: {os.strerror(err)}")
        dropped += 1
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = CapHeader(0x20080522, 0)      # _LINUX_CAPABILITY_VERSION_3
    data = (CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for i in range(2):
        data[i].inheritable = 0
        for cap in caps:
            if cap // 32 == i:
                bit = 1 << (cap % 32)
                data[i].effective &= ~bit
                data[i].permitted &= ~bit
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    return dropped


def confine_self(bpf: bytes, file_rules: list[tuple[str, str]] | None = None) -> tuple[str, int, str]:
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
    landlock_abi, landlock_problem = enter_landlock_domain(libc, file_rules)
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


def _join(fds: list[int]) -> None:
    """Move this process into the cgroup(s) whose cgroup.procs are `fds`."""
    for fd in fds:
        os.write(fd, b"0")


def spawn(req: dict[str, Any], fds: list[int], children: Children, home_cg: list[int]) -> None:
    reply, stdin, stdout, stderr = fds[:4]
    call_cg = fds[4:]
    rsock = socket.socket(fileno=reply)
    try:
        # The child is born in the call's cgroup: we step in, spawn (no code of ours runs in the
        # child between fork and exec), and step back out. Single-threaded, so nothing else of
        # ours runs while we are in there.
        try:
            _join(call_cg)
            proc = subprocess.Popen(
                req["argv"], stdin=stdin, stdout=stdout, stderr=stderr, cwd=req.get("cwd") or None,
                env=req.get("env"), start_new_session=True, close_fds=True,
            )
        finally:
            if call_cg:
                _join(home_cg)
    except OSError as exc:
        send(rsock, {"error": str(exc), "errno": exc.errno or 0})
        rsock.close()
        return
    except Exception as exc:
        send(rsock, {"error": str(exc), "errno": 0})
        rsock.close()
        return
    finally:
        for fd in (stdin, stdout, stderr, *call_cg):
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


def read_config(fd: int) -> tuple[dict[str, Any], bytes]:
    data = read_all(fd)
    head, _, bpf = data.partition(b"\n")
    return json.loads(head), bpf


def main() -> int:
    config_fd, ctl_fd = int(sys.argv[1]), int(sys.argv[2])
    ctl = socket.socket(fileno=ctl_fd)
    try:
        config, bpf = read_config(config_fd)
    except (OSError, ValueError) as exc:
        send(ctl, {"ok": False, "reason": f"bad sandbox configuration: {exc}"})
        return 1
    home_cg = [int(fd) for fd in config.get("home_cg") or []]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    hello: dict[str, Any] = {"ok": True, "kernel_floor": "", "kernel_floor_reason": "", "caps_dropped": 0}
    try:
        _join(home_cg)
    except OSError as exc:
        send(ctl, {"ok": False, "reason": f"cannot join the sandbox's cgroup: {exc}"})
        return 1
    file_rules = None
    if config.get("mounts") is not None:
        try:
            hello["kernel_floor"] = enter_mount_namespace(libc, config["mounts"],
                                                          list(config.get("dev_allowed") or []))
        except NamespaceUnavailable as exc:
            hello["kernel_floor_reason"] = str(exc)
            # No namespace here (e.g. unprivileged user namespaces refused): the same floor as
            # Landlock file rules, which any process may apply to itself.
            if config.get("landlock_rules") is not None:
                file_rules = [(str(p), str(k)) for p, k in config["landlock_rules"]]
        except (MountError, OSError) as exc:
            # Half a namespace is worse than a clear refusal: stop, and say why.
            send(ctl, {"ok": False, "reason": f"building the kernel floor failed: {exc}"})
            return 1
    else:
        hello["kernel_floor_reason"] = str(config.get("mounts_reason") or "not requested")
    try:
        hello["caps_dropped"] = drop_capabilities(libc, [int(c) for c in config.get("drop_caps") or []])
    except OSError as exc:
        send(ctl, {"ok": False, "reason": f"dropping capabilities failed: {exc}"})
        return 1
    problem, landlock_abi, landlock_problem = confine_self(bpf, file_rules)
    if problem:
        send(ctl, {"ok": False, "reason": problem})
        return 1
    if file_rules is not None:
        if landlock_abi:
            hello["kernel_floor"] = "landlock"
        else:
            hello["kernel_floor_reason"] += f"; Landlock file rules: {landlock_problem}"
    # SIGCHLD wakes the loop through a pipe; the handler itself does nothing.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    hello.update(landlock=landlock_abi, landlock_reason=landlock_problem)
    send(ctl, hello)
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, "ctl")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    children: Children = {}
    serving = True
    while serving or children:
        for key, _ in sel.select(None if serving else 1.0):
            if key.data == "wake":
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                reap(children)
                continue
            try:
                msg, anc, _flags, _addr = ctl.recvmsg(MAX_MSG, socket.CMSG_SPACE(4 * 16))
            except InterruptedError:
                continue
            if not msg:
                # Retired (or the agent is gone): finish reporting on the children we have.
                serving = False
                sel.unregister(ctl)
                continue
            fds = array.array("i")
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            try:
                req = json.loads(msg)
                ok = isinstance(req, dict) and len(fds) == 4 + int(req.get("cg") or 0)
            except (ValueError, TypeError):
                ok = False
            if not ok:
                for fd in fds:
                    os.close(fd)
                continue
            spawn(req, list(fds), children, home_cg)
        reap(children)
    return 0


def guarded_main() -> int:
    """main(), but any unexpected error ends the server with a reason the agent logs (on the
    control socket when it is still there), never a half-confined server."""
    try:
        return main()
    except Exception as exc:  # noqa: BLE001 - report and stop
        try:
            ctl = socket.socket(fileno=int(sys.argv[2]))
            send(ctl, {"ok": False, "reason": f"sandbox server failed: {type(exc).__name__}: {exc}"})
        except (OSError, ValueError, IndexError):
            pass
        return 1


if __name__ == "__main__":
    sys.exit(guarded_main())
