"""The seccomp blacklist every `execute_command` child runs under.

Responsibility: build the filter ONCE per process with pyseccomp and export it as raw BPF bytes.
Nothing here installs the filter in this process; `cmdop.adapters.launcher` hands the bytes to a
small fork server that installs them on itself, so every child it spawns inherits them.

Rules of the table below:
- Default action ALLOW (it is a blacklist: normal shell tooling must keep working).
- Blocked calls fail with EPERM, so ordinary tools print "Operation not permitted" and go on.
- Killing is used only where it is safer than an error: a syscall made through a foreign ABI
  (i386 via `int 0x80`, x32 via `__X32_SYSCALL_BIT`) kills the whole process
  (SCMP_ACT_KILL_PROCESS as the bad-arch action). No legitimate tool on an x86_64 server issues
  those, and a filter written for one ABI cannot be trusted to cover the other numbering.
- `clone3` fails with ENOSYS, not EPERM: its flags live in memory a filter cannot inspect, and
  ENOSYS makes glibc fall back to `clone`, whose flags word we *can* inspect.
- Integer arguments are compared with MASKED_EQ so upper-half garbage in the 64-bit register
  (which the kernel ignores for an `int`) cannot slip a value past an EQ comparison. A rule on
  two arguments matches only when both comparisons do (libseccomp ANDs a rule's arguments and
  ORs separate rules).

Where the entries come from: the syscalls container runtimes block by default (Docker/moby
`default.json`, systemd `@mount @module @reboot @swap @raw-io @obsolete @cpu-emulation`),
narrowed to what the issue names plus the known escape helpers (open_by_handle_at, iopl/ioperm)
and the calls moby's profile grants only with a capability a container lacks by default:
`chroot` (CAP_SYS_CHROOT; also systemd @mount), `kcmp` (CAP_SYS_PTRACE, with ptrace),
`syslog` (CAP_SYSLOG) and `fanotify_init` (CAP_SYS_ADMIN).

Argument rules (`SOCKET_RULES`, `DEVICE_NODE_TYPES`), where blocking the whole call would break
ordinary tooling:
- socket(): AF_PACKET is refused for every type (link-layer frames: sniff or forge any traffic
  on the host); SOCK_RAW and SOCK_PACKET are refused for AF_INET and AF_INET6 only (raw IP:
  forged packets, port-scan tricks, legacy iptables' socket). AF_NETLINK must stay allowed
  whatever its type: netlink sockets are SOCK_RAW, and `ip`, `ss`, `hostname -I` and glibc's
  getifaddrs() cannot work without them. AF_UNIX and socketpair() are untouched.
- mknod/mknodat: refused only when the mode makes a block or character device. moby allows
  both calls and relies on the device cgroup and a dropped CAP_MKNOD; a command here has
  neither limit, so a root command could leave, say, a world-writable node for the host's disk
  or /dev/mem in a tmp or home dir, outliving the command and open to every local user.
  FIFOs (`mkfifo`), sockets and regular files made with mknod keep working.
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass

# Socket domains/types (linux/socket.h, linux/net.h).
AF_INET = 2
AF_INET6 = 10
AF_PACKET = 17
SOCK_RAW = 3
SOCK_PACKET = 10
SOCK_TYPE_MASK = 0xF          # type also carries SOCK_NONBLOCK | SOCK_CLOEXEC above these bits
INT_MASK = 0xFFFFFFFF

# socket() calls refused with EPERM: (domain, type), type None meaning every type. Each entry is
# one rule; a domain and a type in the same entry must BOTH match. Unlisted domains (AF_NETLINK,
# AF_UNIX, ...) are allowed whatever their type.
SOCKET_RULES: tuple[tuple[int, int | None], ...] = (
    (AF_PACKET, None),
    (AF_INET, SOCK_RAW),
    (AF_INET, SOCK_PACKET),     # the kernel turns (AF_INET, SOCK_PACKET) into an AF_PACKET socket
    (AF_INET6, SOCK_RAW),
    (AF_INET6, SOCK_PACKET),
)

# File types (linux/stat.h). mknod's `mode` is a umode_t: the kernel reads its low 16 bits only.
S_IFMT = 0o170000
S_IFCHR = 0o020000
S_IFBLK = 0o060000
# mknod/mknodat refused with EPERM when (mode & S_IFMT) is one of these.
DEVICE_NODE_TYPES = (S_IFBLK, S_IFCHR)
# Which argument holds the mode: mknod(path, mode, dev), mknodat(dirfd, path, mode, dev).
MKNOD_MODE_ARG = {"mknod": 1, "mknodat": 2}

# Namespace flags clone() may carry (linux/sched.h). CLONE_NEWTIME (0x80) is absent on purpose:
# for clone() that bit is part of the exit-signal byte; unshare/clone3 are blocked outright.
CLONE_NS_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

# Syscalls denied outright with EPERM, grouped by why (source in brackets where it is not the
# issue itself).
BLOCKED_SYSCALLS: dict[str, tuple[str, ...]] = {
    # kcmp: compares kernel objects (files, mm, fd tables) of other processes; moby grants it
    # only with CAP_SYS_PTRACE, together with ptrace.
    "debugging other processes": ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp"),
    # chroot [systemd @mount; moby: CAP_SYS_CHROOT]: gives a root command a filesystem root of
    # its own making, where programs that trust absolute paths (/etc/passwd, /etc/ld.so.preload)
    # read the caller's files; no ordinary remote command needs it.
    "mount manipulation": (
        "mount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick",
        "move_mount", "open_tree", "mount_setattr", "chroot",
    ),
    "namespaces": ("unshare", "setns"),
    "io_uring (bypasses syscall filtering)": ("io_uring_setup", "io_uring_enter", "io_uring_register"),
    "kernel replacement and modules": (
        "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    ),
    "kernel programs and tracing": ("bpf", "perf_event_open"),
    # [moby: CAP_SYSLOG / CAP_SYS_ADMIN] reads the kernel ring buffer (kernel addresses, other
    # users' messages) and can clear it (evidence gone).
    "kernel log": ("syslog",),
    # [moby: CAP_SYS_ADMIN] watches every file access on a mount or whole filesystem and, with
    # permission events, can stall other processes' opens.
    "filesystem-wide file monitoring": ("fanotify_init",),
    "kernel keyring": ("keyctl", "add_key", "request_key"),
    "machine state": ("reboot", "swapon", "swapoff", "acct"),
    "kernel races helper": ("userfaultfd",),
    "container escape helpers": ("open_by_handle_at", "iopl", "ioperm"),
}


@dataclass(frozen=True)
class SandboxFilter:
    """A built filter: BPF program bytes ready for prctl(PR_SET_SECCOMP), or why there is none."""

    bpf: bytes | None
    reason: str = ""      # why `bpf` is None (seccomp unavailable here)

    @property
    def available(self) -> bool:
        return self.bpf is not None


def _all_blocked() -> list[str]:
    return [name for group in BLOCKED_SYSCALLS.values() for name in group]


def build_filter() -> SandboxFilter:
    """Build the blacklist and export it as BPF. Never raises: a missing libseccomp, a non-Linux
    host or an unknown architecture yields `SandboxFilter(None, reason)`."""
    if not os.uname().sysname == "Linux":
        return SandboxFilter(None, f"seccomp needs Linux; this is {os.uname().sysname}")
    try:
        import pyseccomp as sc
    except Exception as exc:  # pyseccomp missing, or libseccomp.so not loadable
        return SandboxFilter(None, f"libseccomp is not usable: {exc}")
    try:
        return SandboxFilter(_export(sc))
    except Exception as exc:
        return SandboxFilter(None, f"building the seccomp filter failed: {exc}")


def _export(sc: object) -> bytes:
    import pyseccomp

    eperm = pyseccomp.ERRNO(errno.EPERM)
    f = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    # Only the native ABI is in the filter; every other ABI (i386, x32) meets the bad-arch action.
    f.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    for name in _all_blocked():
        try:
            f.add_rule(eperm, name)
        except Exception:
            # The syscall does not exist on this architecture (e.g. iopl on aarch64): nothing to block.
            continue
    f.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in CLONE_NS_FLAGS.values():
        f.add_rule(eperm, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
    for domain, sock_type in SOCKET_RULES:
        args = [pyseccomp.Arg(0, pyseccomp.MASKED_EQ, INT_MASK, domain)]
        if sock_type is not None:
            args.append(pyseccomp.Arg(1, pyseccomp.MASKED_EQ, SOCK_TYPE_MASK, sock_type))
        f.add_rule(eperm, "socket", *args)
    for name, mode_arg in MKNOD_MODE_ARG.items():
        if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) < 0:
            continue  # not a syscall of this architecture (aarch64 has mknodat only)
        for node_type in DEVICE_NODE_TYPES:
            f.add_rule(eperm, name, pyseccomp.Arg(mode_arg, pyseccomp.MASKED_EQ, S_IFMT, node_type))
    with tempfile.TemporaryFile() as tmp:
        f.export_bpf(tmp)
        tmp.seek(0)
        data = tmp.read()
    if not data or len(data) % 8:
        raise ValueError(f"exported BPF has a bad size ({len(data)} bytes)")
    return data
