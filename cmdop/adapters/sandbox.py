"""The seccomp blacklist every `execute_command` child runs under (CONTRACT §6, issue 5).

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
  (which the kernel ignores for an `int`) cannot slip a value past an EQ comparison.

Where the entries come from: the syscalls container runtimes block by default (Docker/moby
`default.json`, systemd `@mount @module @reboot @swap @raw-io @obsolete @cpu-emulation`),
narrowed to what the issue names plus the known escape helpers (open_by_handle_at, iopl/ioperm).
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass

# Socket domains/types (linux/socket.h, linux/net.h).
AF_PACKET = 17
SOCK_RAW = 3
SOCK_PACKET = 10
SOCK_TYPE_MASK = 0xF          # type also carries SOCK_NONBLOCK | SOCK_CLOEXEC above these bits
INT_MASK = 0xFFFFFFFF

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

# Syscalls denied outright with EPERM, grouped by why.
BLOCKED_SYSCALLS: dict[str, tuple[str, ...]] = {
    "debugging other processes": ("ptrace", "process_vm_readv", "process_vm_writev"),
    "mount manipulation": (
        "mount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick",
        "move_mount", "open_tree", "mount_setattr",
    ),
    "namespaces": ("unshare", "setns"),
    "io_uring (bypasses syscall filtering)": ("io_uring_setup", "io_uring_enter", "io_uring_register"),
    "kernel replacement and modules": (
        "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    ),
    "kernel programs and tracing": ("bpf", "perf_event_open"),
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
    f.add_rule(eperm, "socket", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, INT_MASK, AF_PACKET))
    for sock_type in (SOCK_RAW, SOCK_PACKET):
        f.add_rule(eperm, "socket", pyseccomp.Arg(1, pyseccomp.MASKED_EQ, SOCK_TYPE_MASK, sock_type))
    with tempfile.TemporaryFile() as tmp:
        f.export_bpf(tmp)
        tmp.seek(0)
        data = tmp.read()
    if not data or len(data) % 8:
        raise ValueError(f"exported BPF has a bad size ({len(data)} bytes)")
    return data
