"""The kernel floor as data: what a command's mount namespace hides or freezes, and how.

Pure. `protected_entries` says WHAT is protected (from the homes, cmdop's own directories and
the system paths the adapter found); `plan_mounts` turns that, plus a read-only view of the file
system (`FsView`), into an ordered list of mount operations the sandbox fork server performs once
in its own mount namespace, before it confines itself. Every command it spawns inherits the
namespace, so the floor holds where the kernel resolves the path, whatever the command's text
says (the static floor reads text; this does not).

Two treatments:
- HIDE: the entry is replaced by an empty read-only one (a tmpfs for a directory, an empty file
  for a file): credentials and cmdop's own state are not there to read, list or change.
- READONLY: the entry is visible but cannot be changed (a read-only bind mount).

Entries that do not exist yet must not be creatable either (a new ~/.ssh/authorized_keys, a new
~/.bash_profile). A mount needs an existing mount point, so the rule is: every home is SEALED
(the home directory itself is read-only, so nothing can be created, renamed or removed directly
in it) and its existing entries are re-exposed writable one by one, except the protected ones.
Dotfiles directly in a home (`.bashrc`, `.profile`, `.vimrc`, `.gitconfig`, ...) are never
re-exposed: every one of them is configuration some program runs as code on the next login. A
protected entry deeper in a home that is missing (`~/.config/systemd/user`) seals its deepest
existing ancestor the same way. Outside homes a missing entry cannot be sealed without breaking
administration (sealing /etc would stop package installs); the plan lists it in `uncovered`.

Where the entries come from: the floor of the security model (credentials, cmdop's state, login
files), Docker's default read-only and masked paths for /proc and /sys (`/proc/sys`,
`/proc/sysrq-trigger`, `/proc/kcore`, `/sys`), and the red-team findings of the kernel-floor
issue (`/proc/sys/kernel/core_pattern`, block devices, the audit log).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Protocol, Sequence


class Treat(str, Enum):
    HIDE = "hide"
    READONLY = "readonly"


@dataclass(frozen=True)
class Protect:
    """One protected entry: an absolute path, its treatment, and why (for docs and status)."""

    path: str
    treat: Treat
    why: str


# Inside every home. HIDE: credentials and cmdop's own files. READONLY: configuration that other
# programs run as code (a unit in ~/.config/systemd/user runs at the next user-manager start).
HOME_HIDDEN: tuple[tuple[str, str], ...] = (
    (".ssh", "ssh keys"), (".gnupg", "gpg keys"), (".cmdop", "cmdop credentials"),
    (".config/cmdop", "cmdop policy and config"), (".local/state/cmdop", "cmdop state"),
    (".local/share/cmdop-relay", "a relay's TLS key and database"),
)
HOME_READONLY: tuple[tuple[str, str], ...] = (
    (".config/systemd/user", "user units"), (".local/share/systemd/user", "user units"),
    (".config/environment.d", "user-manager environment"), (".config/git", "git config"),
    (".config/autostart", "session autostart"), (".config/fish", "fish start-up files"),
    # Code run at the next login without being a dotfile itself (red team, round 1): the first
    # directories on a login PATH, and what Debian's and rustup's .profile source.
    (".local/bin", "commands first on the login PATH"), (".bashrc.d", "bash start-up files"),
    (".cargo/env", "sourced by .profile"), (".cargo/bin", "commands on the login PATH"),
)
# Outside homes, on every machine (missing ones are skipped or listed as uncovered). /proc and
# /sys entries follow Docker's default masked and read-only paths.
SYSTEM_HIDDEN: tuple[tuple[str, str], ...] = (
    ("/etc/shadow", "password hashes"), ("/etc/gshadow", "group password hashes"),
    ("/etc/shadow-", "password hashes (backup)"), ("/etc/gshadow-", "group password hashes (backup)"),
    ("/etc/ssl/private", "TLS private keys"), ("/proc/kcore", "kernel memory"),
    ("/proc/keys", "kernel keyrings"), ("/proc/timer_list", "kernel timers"),
    ("/proc/sched_debug", "scheduler internals"), ("/proc/latency_stats", "kernel latencies"),
    ("/proc/acpi", "ACPI"), ("/proc/scsi", "SCSI"), ("/sys/firmware", "firmware tables"),
)
SYSTEM_READONLY: tuple[tuple[str, str], ...] = (
    ("/etc/sudoers", "sudo policy"), ("/etc/sudoers.d", "sudo policy"), ("/etc/ssh", "ssh config"),
    # Accounts: a uid-0 line with a password hash in /etc/passwd logs in like root, and a line in
    # /etc/group makes a sudoer (/etc/shadow being hidden, adding users fails anyway).
    ("/etc/passwd", "accounts"), ("/etc/passwd-", "accounts (backup)"),
    ("/etc/group", "groups"), ("/etc/group-", "groups (backup)"),
    ("/etc/ld.so.preload", "libraries preloaded into every program"),
    ("/proc/sys", "kernel tunables (core_pattern, modprobe, binfmt_misc)"),
    ("/proc/sysrq-trigger", "kernel SysRq"), ("/proc/irq", "interrupt affinity"),
    ("/proc/bus", "device buses"), ("/proc/fs", "file-system tunables"),
    ("/sys", "kernel and device state"),
)
# Character devices a command may open under /dev; every other device node there (block devices,
# raw disk and NVMe character devices, memory, input, consoles) cannot be opened (nodev).
DEV_ALLOWED = ("null", "zero", "full", "random", "urandom", "tty", "ptmx")
# Entries of one sealed directory re-exposed writable at most; the rest stay read-only (and
# the plan says so), so a directory with 100,000 entries cannot make the namespace unbuildable.
MAX_REEXPOSED = 2048


@dataclass(frozen=True)
class FsEntry:
    """What the adapter found at a path. kind: dir | file | link | other | missing."""

    kind: str
    children: tuple[str, ...] = ()     # names, for a directory the planner asked to list


class FsView(Protocol):
    """Read-only facts about the file system, answered by the adapter (or a test's dict)."""

    def entry(self, path: str, list_children: bool = False) -> FsEntry: ...


@dataclass(frozen=True)
class MountOp:
    """One step for the fork server.

    op: bind (path onto itself, recursive) | readonly (remount read-only; `recursive` includes
    every mount below) | hide_dir (empty read-only tmpfs) | hide_file (empty read-only file) |
    dev (bind /dev, allowed nodes re-bound, the rest nodev).
    """

    op: str
    path: str
    recursive: bool = False

    def as_json(self) -> dict[str, object]:
        return {"op": self.op, "path": self.path, "recursive": self.recursive}


@dataclass(frozen=True)
class MountPlan:
    ops: tuple[MountOp, ...]
    listed: tuple[str, ...]            # directories whose listing the plan depends on
    uncovered: tuple[Protect, ...]     # missing read-only entries a command could create here
    protected: tuple[Protect, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())   # limits met while planning (said in status)


def protected_entries(homes: Iterable[str], agent_dirs: Iterable[str], own_code: Iterable[str],
                      system_hidden: Iterable[tuple[str, str]] = SYSTEM_HIDDEN,
                      system_readonly: Iterable[tuple[str, str]] = SYSTEM_READONLY) -> tuple[Protect, ...]:
    """Every protected entry for these homes, cmdop's own directories (config, credentials,
    state: hidden) and code (package, site-packages, zipapp, unpack cache: read-only).
    Paths are normalised; duplicates keep their first treatment, HIDE winning over READONLY."""
    out: dict[str, Protect] = {}

    def add(path: str, treat: Treat, why: str) -> None:
        p = posixpath.normpath(path)
        if p == "/" or not p.startswith("/"):
            return
        old = out.get(p)
        if old is None or (old.treat is Treat.READONLY and treat is Treat.HIDE):
            out[p] = Protect(p, treat, why)

    for d in agent_dirs:
        add(d, Treat.HIDE, "cmdop's own config, credentials and state")
    for home in homes:
        for rel, why in HOME_HIDDEN:
            add(posixpath.join(home, rel), Treat.HIDE, why)
        for rel, why in HOME_READONLY:
            add(posixpath.join(home, rel), Treat.READONLY, why)
    for path, why in system_hidden:
        add(path, Treat.HIDE, why)
    for path, why in system_readonly:
        add(path, Treat.READONLY, why)
    for path in own_code:
        add(path, Treat.READONLY, "cmdop's own program")
    return tuple(out.values())


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# Directories never sealed, even to hold a link in place: sealing them would stop ordinary
# administration (a link there is the system's, administered like the rest of it).
NEVER_SEAL = frozenset({"/", "/etc", "/usr", "/var", "/opt", "/srv", "/tmp", "/var/tmp", "/run",
                        "/mnt", "/media", "/boot", "/lib", "/lib64", "/bin", "/sbin", "/dev",
                        "/proc", "/sys", "/home"})


def plan_mounts(protected: Sequence[Protect], homes: Sequence[str], fs: FsView,
                extra_sealed: Sequence[str] = ()) -> MountPlan:
    """The ordered mount operations that put `protected` in force and seal `homes` (see the
    module docstring). Parents come before children; a directory is made read-only only after
    its re-exposed children are bound, so they stay writable. `extra_sealed`: directories that
    hold a link the floor depends on (a home reached through a link, a link in a chain leading
    to a login file), sealed too so the link cannot be replaced; as is the directory of any
    protected entry that is itself a link."""
    homes = sorted({posixpath.normpath(h) for h in homes if posixpath.normpath(h) != "/"})
    homes = [h for h in homes if fs.entry(h).kind == "dir"]
    by_path = {p.path: p for p in protected}
    kinds = {q: fs.entry(q).kind for q in by_path}
    exists = {q: k != "missing" for q, k in kinds.items()}
    ops: list[MountOp] = []
    listed: list[str] = []
    uncovered: list[Protect] = []
    notes: list[str] = []

    # Sealed: each home, and the deepest existing ancestor (inside a home) of each missing
    # protected entry. A missing entry below an existing protected directory needs nothing (that
    # directory is hidden or read-only); elsewhere it is uncovered.
    sealed: set[str] = set(homes)
    for p in protected:
        if exists[p.path]:
            continue
        home = next((h for h in homes if _under(p.path, h)), None)
        if home is not None:
            anc = posixpath.dirname(p.path)
            while anc != home and fs.entry(anc).kind != "dir":
                anc = posixpath.dirname(anc)
            sealed.add(anc)
        elif p.treat is Treat.READONLY and not any(
                _under(p.path, q) and q != p.path and exists[q] for q in by_path):
            uncovered.append(p)     # could be created (a missing HIDE entry has nothing to leak)

    extra = {posixpath.normpath(d) for d in extra_sealed}
    extra |= {posixpath.dirname(q) for q, k in kinds.items() if k == "link"}
    sealed |= {d for d in extra if d not in NEVER_SEAL and fs.entry(d).kind == "dir"}

    marks = set(by_path) | sealed

    def nearest_below(path: str) -> list[str]:
        """Protected or sealed paths strictly below `path` with none of those in between."""
        out = []
        for q in sorted(marks):
            if not _under(q, path) or q == path:
                continue
            mid = posixpath.dirname(q)
            while mid != path and mid not in marks:
                mid = posixpath.dirname(mid)
            if mid == path:
                out.append(q)
        return out

    def has_marks_below(path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return any(q.startswith(prefix) for q in marks)

    def protect(path: str) -> None:
        """An existing protected entry."""
        kind = fs.entry(path).kind
        if by_path[path].treat is Treat.HIDE:
            if kind == "dir":
                ops.append(MountOp("hide_dir", path))
            elif kind in ("file", "other"):
                ops.append(MountOp("hide_file", path))
            # A symlink is left alone: a mount would land on its target. Sealed parents keep the
            # link itself unchangeable, and where it points is protected if it is listed.
            return
        if kind in ("dir", "file"):
            ops.append(MountOp("bind", path))
            inside(path)
            ops.append(MountOp("readonly", path, recursive=True))

    def inside(path: str) -> None:
        """Everything marked strictly below `path`, which is already bound."""
        for q in nearest_below(path):
            if q in by_path:
                if exists[q]:
                    protect(q)
            else:
                seal(q, home=None)

    def seal(path: str, home: str | None) -> None:
        """Make `path` read-only with its unprotected entries re-exposed writable."""
        entry = fs.entry(path, list_children=True)
        listed.append(path)
        ops.append(MountOp("bind", path))
        reexposed = 0
        for name in sorted(entry.children):
            child = posixpath.join(path, name)
            if child in by_path:
                if exists[child]:
                    protect(child)
                continue
            kind = fs.entry(child).kind
            if path == home and name.startswith(".") and kind != "dir":
                continue        # a dotfile directly in a home: read-only through the seal
            if kind == "dir" and child in sealed:
                seal(child, child if child in homes else home)
            elif kind == "dir" and has_marks_below(child):
                ops.append(MountOp("bind", child))
                inside(child)
            elif kind in ("dir", "file", "other"):
                reexposed += 1
                if reexposed > MAX_REEXPOSED:
                    if reexposed == MAX_REEXPOSED + 1:
                        notes.append(f"{path}: more than {MAX_REEXPOSED} entries; the rest are read-only")
                    continue
                ops.append(MountOp("bind", child))
            # symlinks stay: unchangeable in the sealed directory, followed as usual
        ops.append(MountOp("readonly", path))

    for home in homes:
        if not any(_under(home, h) and h != home for h in homes):
            seal(home, home)
    # Sealed directories outside every home (holding a link the floor depends on), outermost.
    for d in sorted(sealed, key=lambda d: (d.count("/"), d)):
        if not any(_under(d, h) for h in homes) and not any(
                _under(d, o) and o != d for o in sealed if not any(_under(o, h) for h in homes)):
            seal(d, None)
    # Protected entries outside the homes, outermost first.
    outside = [p.path for p in protected if not any(_under(p.path, h) for h in homes)]
    for path in sorted(outside):
        if exists[path] and not any(_under(path, q) and q != path and exists[q] for q in outside):
            protect(path)
    ops.append(MountOp("dev", "/dev"))
    # Every directory on the way to what was mounted becomes a mount point itself, so it cannot
    # be renamed away: `mv /home /home.x` would carry the mounts along and leave the old path to
    # a command to fill (red team, round 1). First, so the later mounts land on these copies.
    targets = {op.path for op in ops if op.op in ("bind", "hide_dir", "hide_file")}
    ancestors: set[str] = set()
    for t in targets:
        anc = posixpath.dirname(t)
        while anc != "/" and anc not in ancestors:
            ancestors.add(anc)
            anc = posixpath.dirname(anc)
    pre = [MountOp("bind", a) for a in sorted(ancestors - targets, key=lambda a: (a.count("/"), a))]
    return MountPlan(tuple(pre + ops), tuple(listed), tuple(uncovered), tuple(protected), tuple(notes))


def landlock_rules(protected: Sequence[Protect], homes: Sequence[str], fs: FsView,
                   extra_sealed: Sequence[str] = ()) -> tuple[tuple[str, str], ...]:
    """The same floor as Landlock file rules, for where no mount namespace can be built (a user
    agent where unprivileged user namespaces are refused). (path, "rw" | "ro") pairs: "rw"
    grants every file-system right beneath the path, "ro" reading and executing only; listing
    directories is granted everywhere separately. A HIDE entry gets nothing (it cannot be opened),
    a READONLY one "ro". Landlock only adds rights, so a directory on the way to a protected entry
    gets no rule itself and each of its entries gets its own: nothing can be created, renamed or
    removed directly in it — for a user agent that is "/", "/home" and the home, where the user
    could create only home entries anyway; dotfiles directly in a home are "ro" as in the mount
    plan."""
    homes_n = {posixpath.normpath(h) for h in homes if posixpath.normpath(h) != "/"}
    by_path = {p.path: p for p in protected}
    held = {posixpath.normpath(d) for d in extra_sealed} | {
        posixpath.dirname(p.path) for p in protected if fs.entry(p.path).kind == "link"}
    held -= NEVER_SEAL
    rules: list[tuple[str, str]] = []

    def marked_below(path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return (any(q.startswith(prefix) for q in by_path) or any(h.startswith(prefix) for h in homes_n)
                or any(h.startswith(prefix) for h in held))

    def grant(path: str) -> None:
        p = by_path.get(path)
        entry = fs.entry(path, list_children=True)
        if entry.kind in ("missing", "link"):
            return      # a link's target gets the rule of where it really is
        if p is not None:
            if p.treat is Treat.READONLY:
                read_only(path)
            return
        if entry.kind != "dir" or (path not in homes_n and path not in held and not marked_below(path)):
            rules.append((path, "rw"))
            return
        home_here = path in homes_n
        for name in sorted(entry.children):
            if name in ("", ".", "..") or "/" in name:
                continue
            child = posixpath.join(path, name)
            kind = fs.entry(child).kind
            if home_here and name.startswith(".") and kind in ("file", "other") and child not in by_path:
                rules.append((child, "ro"))
            elif kind == "link":
                continue    # a rule would land on the target; the target has its own place
            else:
                grant(child)

    def read_only(path: str) -> None:
        """"ro" beneath `path`, except under a hidden entry inside it: Landlock rules only add
        rights, so a read rule on the parent would open the hidden child too."""
        entry = fs.entry(path, list_children=True)
        if entry.kind != "dir" or not marked_below(path):
            rules.append((path, "ro"))
            return
        for name in sorted(entry.children):
            if name in ("", ".", "..") or "/" in name:
                continue
            child = posixpath.join(path, name)
            q = by_path.get(child)
            if q is not None and q.treat is Treat.HIDE:
                continue
            if fs.entry(child).kind not in ("missing", "link"):
                read_only(child)

    def dev() -> None:
        """Only the harmless nodes of /dev, and its shared-memory directories."""
        for name in DEV_ALLOWED:
            if name != "ptmx" and fs.entry("/dev/" + name).kind == "other":
                rules.append(("/dev/" + name, "rw"))
        for name in ("shm", "mqueue"):
            if fs.entry("/dev/" + name).kind == "dir":
                rules.append(("/dev/" + name, "rw"))

    by_path.setdefault("/dev", Protect("/dev", Treat.HIDE, "device nodes"))
    grant("/")
    dev()
    return tuple(rules)
