"""The file-system side of the kernel floor: which homes and paths exist here, and the plan.

`build_plan(floor)` reads the machine (homes from /etc/passwd and /home, ssh host keys, what
exists) and hands it to the pure planner (`cmdop.core.kernel_floor.plan_mounts`). `fingerprint`
answers cheaply whether a listing the plan depends on has changed since (a new directory in a
home must be re-exposed writable, a new home sealed): the sandbox rebuilds its namespace then.

Which homes: for a root agent every home on the machine (/root, every directory in /home, and
the home of every account with uid >= 1000); for any other agent only its own, since other
users' credentials are already out of its reach by ordinary file permissions. For the same
reason a non-root agent's plan leaves out system entries its user could neither read (hidden
ones) nor write (read-only ones).
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
import pwd
import stat
from dataclasses import dataclass

from cmdop.core import kernel_floor as kf
from cmdop.core.settings import Settings

# In their own module so the gate's protected dirs (`permissions check`) need not import the
# kernel floor; re-exported here for the floor's callers.
from cmdop.adapters.own_code import agent_interpreter as agent_interpreter
from cmdop.adapters.own_code import own_code as own_code


@dataclass(frozen=True)
class FloorSpec:
    """What the kernel floor protects for one agent (paths as the agent sees them)."""

    home: str
    agent_dirs: tuple[str, ...]       # config, credentials, state: hidden
    own_code: tuple[str, ...]         # package, site-packages, zipapp, unpack cache: read-only
    root: bool                        # a root agent protects every home on the machine


def spec_for(settings: Settings, code: tuple[str, ...] | None = None) -> FloorSpec:
    """The FloorSpec of an agent with these settings (`code`: its own program, default
    `own_code()`), creating its config and state dirs (0700) so they exist to be hidden."""
    own = tuple(own_code(runtime=True)) if code is None else code
    # The distribution's own site-packages (/usr/lib/python3/dist-packages) stay writable:
    # freezing them would stop `apt-get install python3-...`, and a root command can replace the
    # interpreter itself there anyway. cmdop's own package, zipapp and cache stay read-only.
    own = tuple(p for p in own if not (p.startswith("/usr/") and p.endswith(("site-packages", "dist-packages"))))
    for d in (settings.state_dir, settings.config_dir):
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError:
            pass      # the plan then seals or lists it as it finds it
    shiv_root = os.environ.get("SHIV_ROOT") or os.path.join(settings.home, ".shiv")
    code = tuple(dict.fromkeys((*own, *([shiv_root] if os.path.isdir(shiv_root) else []))))
    if os.geteuid() == 0:
        ensure_preload_placeholder()     # before the launcher notes what a server starts from
    return FloorSpec(home=settings.home,
                     agent_dirs=(settings.config_dir, settings.cmdop_home, settings.state_dir),
                     own_code=code, root=os.geteuid() == 0)


def homes_for(spec: FloorSpec) -> list[str]:
    """The homes this agent's floor covers (module docstring), by their real paths: a home
    reached through a symlink is sealed where it really is. For a root agent /home itself is
    sealed as well, so no home (or a symlink standing for one) can be replaced or added there."""
    homes = [spec.home]
    if spec.root:
        homes += ["/root", "/home"]
        try:
            homes += [os.path.join("/home", n) for n in os.listdir("/home")]
        except OSError:
            pass
        for entry in pwd.getpwall():
            if entry.pw_uid >= 1000 and entry.pw_dir not in ("", "/") and entry.pw_uid != 65534:
                homes.append(entry.pw_dir)
    out = []
    for h in homes:
        real = os.path.realpath(h)
        if real not in out and real != "/" and os.path.isdir(real):
            out.append(real)
    return out


Identity = tuple[int, int, int, int, int] | str | None
# The dynamic linker reads these before any code of ours: a new server must find them as before.
LINKER_FILES = ("/etc/ld.so.cache", "/etc/ld.so.preload")
_DIGEST_MAX = 16 << 20
_EMPTY = hashlib.sha256(b"").hexdigest()


def file_identity(path: str) -> Identity:
    """(device, inode, size, mtime, ctime) of `path` (following links), None when absent: any
    replacement or change of the file changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def content_identity(path: str) -> Identity:
    """The SHA-256 of `path`'s bytes (following links), None when absent: a file rewritten with
    the same bytes keeps it, as `ldconfig` does to the linker's cache on every package install.
    A file over 16 MiB falls back to `file_identity`."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > _DIGEST_MAX:
                return file_identity(path)
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None if not os.path.lexists(path) else file_identity(path)


def server_start_files(mapped: tuple[str, ...] = ()) -> dict[str, Identity]:
    """Every file whose change would change what a new sandbox server runs before it confines
    itself, with its identity: the `pyvenv.cfg` files Python would read beside the interpreter
    (one could point it at another standard library), the zip archives first on its `sys.path`
    (missing ones must stay missing: Python imports `encodings` from one before any code of
    ours), the dynamic linker's cache and preload list — these by their bytes, so a rewrite
    with the same content is no change — and `mapped` — the files the first server had mapped
    (the interpreter's libpython, libc, libffi, extension modules), by their inode and times,
    so a reinstalled library counts as changed. The launcher compares this before each later
    server start and refuses to start on a change."""
    exe = agent_interpreter()
    settings = [os.path.join(d, "pyvenv.cfg") for d in (os.path.dirname(exe), os.path.dirname(os.path.dirname(exe)))]
    settings += [p for p in sys.path if p.endswith(".zip")]
    settings += LINKER_FILES
    out = {p: content_identity(p) for p in dict.fromkeys(settings)}
    for p in LINKER_FILES:
        if out.get(p) == _EMPTY:
            # An empty preload list preloads nothing, as a missing one does: a root agent
            # creating the empty placeholder (ensure_preload_placeholder) changes nothing for
            # another agent on this machine.
            out[p] = None
    out.update({p: file_identity(p) for p in mapped if p not in out})
    return out


def mapped_files(pid: int) -> tuple[str, ...]:
    """The regular files process `pid` has mapped (its interpreter, shared libraries, extension
    modules), from /proc/PID/maps; () when it cannot be read."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    out = []
    for line in lines:
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/") and not fields[5].endswith(" (deleted)"):
            out.append(fields[5])
    return tuple(dict.fromkeys(out))


class RealFs:
    """`kf.FsView` over the real file system (lstat: a symlink is a link, never followed)."""

    def entry(self, path: str, list_children: bool = False) -> kf.FsEntry:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return kf.FsEntry("missing")
        except OSError:
            return kf.FsEntry("other")
        if stat.S_ISDIR(st.st_mode):
            children: tuple[str, ...] = ()
            if list_children:
                try:
                    children = tuple(os.listdir(path))
                except OSError:
                    children = ()
            return kf.FsEntry("dir", children)
        if stat.S_ISLNK(st.st_mode):
            return kf.FsEntry("link")
        if stat.S_ISREG(st.st_mode):
            return kf.FsEntry("file")
        return kf.FsEntry("other")


def _system_entries(root: bool) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    hidden = list(kf.SYSTEM_HIDDEN) + [(k, "ssh host key")
                                       for k in sorted(glob.glob("/etc/ssh/ssh_host_*_key"))]
    readonly = list(kf.SYSTEM_READONLY)
    if not root:
        hidden = [(p, w) for p, w in hidden if os.access(p, os.R_OK)]
        readonly = [(p, w) for p, w in readonly if os.access(p, os.W_OK)]
    return tuple(hidden), tuple(readonly)


PRELOAD = "/etc/ld.so.preload"


def ensure_preload_placeholder(path: str = PRELOAD) -> bool:
    """Create an empty /etc/ld.so.preload (root only) where there is none, so the namespace can
    hold it read-only: a missing one could be created by a root command, and the dynamic linker
    would then load its library into every program started afterwards, outside the sandbox
    too. An empty file is what the linker reads as "nothing to preload". True when created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        return False      # it exists (or /etc is not ours to write): nothing to do
    os.close(fd)
    return True


def _chain(path: str, limit: int = 40) -> tuple[list[str], str]:
    """The links met resolving `path` itself (its last component, then each link it points to),
    and the final path (which may not exist: a dangling link)."""
    links: list[str] = []
    cur = path
    for _ in range(limit):
        if not os.path.islink(cur):
            break
        links.append(cur)
        target = os.readlink(cur)
        cur = os.path.normpath(os.path.join(os.path.dirname(cur), target))
        cur = os.path.join(os.path.realpath(os.path.dirname(cur)), os.path.basename(cur))
    return links, cur


def _with_link_targets(protected: tuple[kf.Protect, ...], homes: list[str]
                       ) -> tuple[tuple[kf.Protect, ...], list[str]]:
    """`protected` with every entry also protected where it really is, and the directories that
    hold links the floor depends on (to be sealed, so no link can be replaced):
    - an entry reached through a linked directory (`~/.config -> dotfiles/config`) is protected
      at the resolved path too;
    - an entry that is a link, or a chain of links (`~/.bashrc -> dotfiles/current -> real`), is
      protected at the final target — even a dangling one, which then cannot be created — and
      every link of the chain is held in place by sealing its directory;
    - a dotfile directly in a home that is a link counts as a login file (read-only target).
    A mount never follows a link, so the target itself must carry the protection."""
    out = list(protected)
    seen = {p.path for p in protected}
    seals: list[str] = []

    def add(path: str, treat: kf.Treat, why: str) -> None:
        if path not in seen and path != "/":
            seen.add(path)
            out.append(kf.Protect(path, treat, why))

    def resolve(path: str, treat: kf.Treat, why: str) -> None:
        parent = os.path.realpath(os.path.dirname(path))
        direct = os.path.join(parent, os.path.basename(path))
        if direct != path:
            add(direct, treat, f"{why} (through a linked directory)")
        links, final = _chain(direct)
        for link in links:
            seals.append(os.path.dirname(link))
        if links:
            add(final, treat, f"{why} (the target of {path})")

    for p in protected:
        resolve(p.path, p.treat, p.why)
    for home in homes:
        try:
            names = os.listdir(home)
        except OSError:
            continue
        for name in names:
            path = os.path.join(home, name)
            # A dotfile link is a login file; a linked dot-directory (~/.config -> dotfiles/..)
            # is not itself one: what is protected below it was resolved above.
            if name.startswith(".") and os.path.islink(path) and not os.path.isdir(path) and path not in seen:
                resolve(path, kf.Treat.READONLY, "a login file")
    return tuple(out), seals


def build_plan(spec: FloorSpec) -> tuple[kf.MountPlan, tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The mount plan for `spec` on this machine, the same floor as Landlock rules (for where
    no namespace can be built), and the directories to fingerprint."""
    homes = homes_for(spec)
    hidden, readonly = _system_entries(spec.root)
    protected, seals = _with_link_targets(
        kf.protected_entries(homes, spec.agent_dirs, spec.own_code, hidden, readonly), homes)
    # A home reached through a link: the link is held in place too (HOME keeps naming it).
    seals += [os.path.dirname(h) for h in (spec.home,) if os.path.islink(h)]
    fs = RealFs()
    plan = kf.plan_mounts(protected, homes, fs, seals)
    rules = kf.landlock_rules(protected, homes, fs, seals)
    watched = tuple(dict.fromkeys((*plan.listed, *(["/home"] if spec.root else []))))
    return plan, rules, watched


def fingerprint(paths: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """(inode, mtime) of each path — changes when an entry is added, removed or renamed in it —
    and last a digest of this process's mount table: the namespace is private, so a mount the
    host makes later reaches commands only through a rebuild (with the floor applied over it)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_mtime_ns))
        except OSError:
            out.append((0, 0))
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            out.append((hash(f.read()), 0))
    except OSError:
        out.append((0, 0))
    return tuple(out)
