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
import os
import pwd
import stat
from dataclasses import dataclass

from cmdop.core import kernel_floor as kf
from cmdop.core.settings import Settings


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
    own = tuple(own_code()) if code is None else code
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
    return FloorSpec(home=settings.home,
                     agent_dirs=(settings.config_dir, settings.cmdop_home, settings.state_dir),
                     own_code=code, root=os.geteuid() == 0)


def homes_for(spec: FloorSpec) -> list[str]:
    """The homes this agent's floor covers (module docstring)."""
    homes = [spec.home]
    if spec.root:
        homes.append("/root")
        try:
            homes += [os.path.join("/home", n) for n in os.listdir("/home")]
        except OSError:
            pass
        for entry in pwd.getpwall():
            if entry.pw_uid >= 1000 and entry.pw_dir not in ("", "/") and entry.pw_uid != 65534:
                homes.append(entry.pw_dir)
    out = []
    for h in homes:
        h = os.path.normpath(h)
        if h not in out and h != "/" and os.path.isdir(h) and not os.path.islink(h):
            out.append(h)
    return out


def own_code() -> list[str]:
    """The code the agent runs: the cmdop package (a checkout, site-packages or the zipapp's
    unpacked copy), the site-packages it imports from, and the zipapp file itself. Rewriting any
    of them is rewriting the gate."""
    import sys
    import zipfile

    import cmdop

    out = [os.path.dirname(os.path.abspath(cmdop.__file__))]
    # The dependencies it imports, and the `.pth` files any later Python of this install runs.
    out += [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    entry = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if entry and os.path.isfile(entry) and (entry.endswith(".pyz") or zipfile.is_zipfile(entry)):
        out.append(entry)
    return out


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


def build_plan(spec: FloorSpec) -> tuple[kf.MountPlan, tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The mount plan for `spec` on this machine, the same floor as Landlock rules (for where
    no namespace can be built), and the directories to fingerprint."""
    homes = homes_for(spec)
    hidden, readonly = _system_entries(spec.root)
    protected = kf.protected_entries(homes, spec.agent_dirs, spec.own_code, hidden, readonly)
    fs = RealFs()
    plan = kf.plan_mounts(protected, homes, fs)
    rules = kf.landlock_rules(protected, homes, fs)
    watched = tuple(dict.fromkeys((*plan.listed, *(["/home"] if spec.root else []))))
    return plan, rules, watched


def fingerprint(paths: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """(inode, mtime) of each path: changes when an entry is added, removed or renamed in it."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_mtime_ns))
        except OSError:
            out.append((0, 0))
    return tuple(out)
