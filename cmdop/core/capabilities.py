"""Which Linux capabilities a root agent's commands keep, and why (the kernel-floor issue).

Pure data. The sandbox fork server drops every DROPPED capability from its bounding set before
it spawns anything, so a command run as root can never hold one of them, whatever it executes
(setuid binaries and file capabilities included: the bounding set caps both). A non-root agent's
commands hold no capabilities at all, so this table matters only for a root agent.

Each entry: (name, number from linux/capability.h, dropped?, why).
"""

from __future__ import annotations

CAPABILITIES: tuple[tuple[str, int, bool, str], ...] = (
    ("CAP_SYS_MODULE", 16, True, "loading kernel modules is running code in the kernel"),
    ("CAP_SYS_RAWIO", 17, True, "raw I/O ports and /dev/mem: reading and writing any memory"),
    ("CAP_SYS_CHROOT", 18, True, "chroot is a classic way out of a mount namespace"),
    ("CAP_SYS_PTRACE", 19, True, "tracing processes outside the sandbox (the agent, shells)"),
    ("CAP_SYS_ADMIN", 21, True,
     "mounts, namespaces, sethostname, quotas, trusted xattrs: nothing ordinary administration "
     "needs was measured to break without it (test_kernel_floor_effects: apt, systemctl, "
     "journalctl, ip, ss, git, tar, curl, writes under /var /opt /srv); hostname NEW, fstrim, "
     "quota tools and trusted.* xattrs stop working"),
    ("CAP_SYS_BOOT", 22, True, "reboot and kexec"),
    ("CAP_MKNOD", 27, True, "creating device nodes (a block device outside /dev)"),
    ("CAP_AUDIT_CONTROL", 30, True, "turning the kernel audit system off"),
    ("CAP_MAC_OVERRIDE", 32, True, "bypassing AppArmor/SELinux"),
    ("CAP_MAC_ADMIN", 33, True, "changing AppArmor/SELinux policy"),
    ("CAP_SYSLOG", 34, True, "reading kernel addresses from the kernel log"),
    ("CAP_PERFMON", 38, True, "performance monitoring of other processes and the kernel"),
    ("CAP_BPF", 39, True, "loading BPF programs into the kernel"),
    ("CAP_CHOWN", 0, False, "package installs and ownership fixes"),
    ("CAP_DAC_OVERRIDE", 1, False, "root reading and writing files it does not own"),
    ("CAP_DAC_READ_SEARCH", 2, False, "root reading any file (open_by_handle_at is refused by seccomp)"),
    ("CAP_FOWNER", 3, False, "chmod and utime on others' files"),
    ("CAP_FSETID", 4, False, "keeping setuid bits when root edits a file"),
    ("CAP_KILL", 5, False, "stopping services' processes"),
    ("CAP_SETGID", 6, False, "running a program as another group (runuser, su)"),
    ("CAP_SETUID", 7, False, "running a program as another user (runuser, su)"),
    ("CAP_SETPCAP", 8, False, "dropping capabilities further (capsh, systemd-run)"),
    ("CAP_LINUX_IMMUTABLE", 9, False, "chattr +i / -i"),
    ("CAP_NET_BIND_SERVICE", 10, False, "starting a server on a port below 1024"),
    ("CAP_NET_BROADCAST", 11, False, "unused by the kernel"),
    ("CAP_NET_ADMIN", 12, False, "ip, iptables, nft: network administration"),
    ("CAP_NET_RAW", 13, False, "ping (raw IPv4/IPv6 sockets are refused by seccomp anyway)"),
    ("CAP_IPC_LOCK", 14, False, "mlock for databases"),
    ("CAP_IPC_OWNER", 15, False, "System V IPC of other users"),
    ("CAP_SYS_PACCT", 20, False, "acct() is refused by seccomp"),
    ("CAP_SYS_NICE", 23, False, "renice, ionice"),
    ("CAP_SYS_RESOURCE", 24, False, "raising limits (ulimit), quota overrides"),
    ("CAP_SYS_TIME", 25, False, "setting the clock (date -s, hwclock)"),
    ("CAP_SYS_TTY_CONFIG", 26, False, "vhangup"),
    ("CAP_LEASE", 28, False, "file leases (Samba, NFS servers)"),
    ("CAP_AUDIT_WRITE", 29, False, "login tools writing audit records"),
    ("CAP_SETFCAP", 31, False, "setcap on binaries (package installs)"),
    ("CAP_WAKE_ALARM", 35, False, "timers that wake the machine"),
    ("CAP_BLOCK_SUSPEND", 36, False, "keeping the machine awake"),
    ("CAP_AUDIT_READ", 37, False, "reading the audit log over netlink"),
    ("CAP_CHECKPOINT_RESTORE", 40, False, "checkpoint/restore tools"),
)

DROPPED: tuple[int, ...] = tuple(num for _, num, dropped, _ in CAPABILITIES if dropped)
