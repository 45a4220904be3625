"""The kernel floor's pure planner: tables for the shapes that matter, and properties checked
on a model of what the mounts do, over generated home trees.

The model: every bind is recursive, so what covers a path is the mount at its longest
mount-point prefix (the latest of equals); `readonly` marks the top mount at a point (with
`recursive`, every mount at or below it); a hide is an empty read-only mount. A path is
writable when the mount covering it is not read-only, and a new name can be made in a directory
when the directory is writable.
"""

from __future__ import annotations

import posixpath

from hypothesis import given
from hypothesis import strategies as st

from cmdop.core.kernel_floor import (FsEntry, MountPlan, Protect, Treat, landlock_rules, plan_mounts,
                                     protected_entries)


class FakeFs:
    """A tree as {path: "d" | "f" | "l"}; every ancestor of an entry exists as a directory."""

    def __init__(self, tree: dict[str, str]) -> None:
        self.tree = dict(tree)
        for path in list(tree):
            parent = posixpath.dirname(path)
            while parent not in self.tree:
                self.tree[parent] = "d"
                parent = posixpath.dirname(parent)
        self.tree["/"] = "d"

    def entry(self, path: str, list_children: bool = False) -> FsEntry:
        kind = self.tree.get(path)
        if kind is None:
            return FsEntry("missing")
        if kind == "d":
            prefix = path.rstrip("/") + "/"
            kids = {p[len(prefix):].split("/")[0] for p in self.tree if p.startswith(prefix) and p != prefix}
            return FsEntry("dir", tuple(sorted(k for k in kids if k)))
        return FsEntry({"f": "file", "l": "link"}[kind])


class Model:
    """What a command sees after the plan's mounts (module docstring)."""

    def __init__(self, plan: MountPlan) -> None:
        self.mounts: list[dict[str, object]] = []
        for op in plan.ops:
            if op.op == "bind":
                self.mounts.append({"at": op.path, "ro": False, "hide": False})
            elif op.op in ("hide_dir", "hide_file"):
                self.mounts.append({"at": op.path, "ro": True, "hide": True})
            elif op.op == "readonly":
                for m in reversed(self.mounts):
                    at = str(m["at"])
                    if at == op.path or (op.recursive and at.startswith(op.path.rstrip("/") + "/")):
                        m["ro"] = True
                        if not op.recursive:
                            break

    def covering(self, path: str) -> dict[str, object] | None:
        best = None
        for m in self.mounts:
            at = str(m["at"])
            if path == at or path.startswith(at.rstrip("/") + "/"):
                if best is None or len(at) >= len(str(best["at"])):
                    best = m
        return best

    def writable(self, path: str) -> bool:
        m = self.covering(path)
        return m is None or not m["ro"]

    def hidden(self, path: str) -> bool:
        m = self.covering(path)
        return m is not None and bool(m["hide"])


HOME = "/home/u"


def plan_for(tree: dict[str, str], homes: tuple[str, ...] = (HOME,),
             agent_dirs: tuple[str, ...] = ()) -> tuple[MountPlan, FakeFs, tuple[Protect, ...]]:
    fs = FakeFs(tree)
    protected = protected_entries(homes, agent_dirs, (), (("/etc/shadow", "s"),),
                                  (("/etc/ssh", "e"), ("/proc/sys", "p"), ("/etc/ld.so.preload", "l")))
    return plan_mounts(protected, homes, fs), fs, protected


BASE = {f"{HOME}/.ssh/id_rsa": "f", f"{HOME}/.bashrc": "f", f"{HOME}/proj/a.py": "f",
        f"{HOME}/notes.txt": "f", f"{HOME}/.config/cmdop/permissions.yaml": "f",
        f"{HOME}/.config/nvim/init.vim": "f", f"{HOME}/.cache/x": "f", "/etc/shadow": "f",
        "/etc/hosts": "f", "/etc/ssh/sshd_config": "f", "/etc/ssh/ssh_host_rsa_key": "f",
        "/proc/sys/kernel/core_pattern": "f", "/srv/app/data": "f"}


def test_table_of_what_a_command_may_change() -> None:
    plan, fs, _ = plan_for(BASE)
    m = Model(plan)
    expect = {
        # hidden: credentials, cmdop's own config, password hashes
        f"{HOME}/.ssh": "hidden", f"{HOME}/.ssh/id_rsa": "hidden", f"{HOME}/.config/cmdop": "hidden",
        "/etc/shadow": "hidden",
        # read-only: login files, the home itself (nothing new in it), ssh config, tunables
        f"{HOME}/.bashrc": "ro", f"{HOME}": "ro", f"{HOME}/.config": "ro", "/etc/ssh/sshd_config": "ro",
        "/proc/sys/kernel/core_pattern": "ro",
        # writable: projects, non-dot files, tool dirs, the rest of the system
        f"{HOME}/proj/a.py": "rw", f"{HOME}/proj": "rw", f"{HOME}/notes.txt": "rw",
        f"{HOME}/.cache/x": "rw", f"{HOME}/.config/nvim/init.vim": "rw", "/etc/hosts": "rw",
        "/etc": "rw", "/srv/app/data": "rw", "/tmp": "rw",
    }
    got = {p: "hidden" if m.hidden(p) else ("rw" if m.writable(p) else "ro") for p in expect}
    assert got == expect
    # A missing login file or credential dir cannot be created: its directory is read-only.
    for missing in (f"{HOME}/.bash_profile", f"{HOME}/.gnupg", f"{HOME}/.config/systemd/user/x",
                    f"{HOME}/.cmdop", f"{HOME}/.local/share/systemd/user/x"):
        parent = posixpath.dirname(missing)
        while fs.entry(parent).kind == "missing":
            parent = posixpath.dirname(parent)
        assert not m.writable(parent), missing
    # Missing read-only entries outside homes are listed honestly, not silently dropped.
    assert [p.path for p in plan.uncovered] == ["/etc/ld.so.preload"]
    assert plan.ops[-1].op == "dev"


def test_agent_dirs_outside_homes_are_hidden() -> None:
    plan, _, _ = plan_for({**BASE, "/var/lib/cmdop/audit.log": "f"}, agent_dirs=("/var/lib/cmdop",))
    assert Model(plan).hidden("/var/lib/cmdop/audit.log")


def test_a_symlinked_credential_dir_is_not_followed_by_a_mount() -> None:
    plan, _, _ = plan_for({f"{HOME}/.ssh": "l", f"{HOME}/proj/a": "f"})
    assert all(op.path != f"{HOME}/.ssh" for op in plan.ops)
    assert not Model(plan).writable(HOME)    # the link itself cannot be replaced


def test_landlock_rules_table() -> None:
    rules = dict(landlock_rules(plan_for(BASE)[2], (HOME,), FakeFs(BASE)))
    assert rules[f"{HOME}/proj"] == "rw" and rules[f"{HOME}/notes.txt"] == "rw"
    assert rules[f"{HOME}/.bashrc"] == "ro" and rules["/etc/ssh"] == "ro" and rules["/proc/sys"] == "ro"
    assert rules["/etc/hosts"] == "rw" and rules["/srv"] == "rw"
    for none in (f"{HOME}/.ssh", f"{HOME}/.config/cmdop", "/etc/shadow", HOME, "/etc", "/"):
        assert none not in rules, none


NAMES = st.sampled_from([".ssh", ".bashrc", ".profile", ".config", "cmdop", "systemd", "user", "git",
                         "proj", "src", "notes", ".cache", ".local", "share", "state", ".gnupg",
                         ".cmdop", "a", ".vimrc"])
TREES = st.dictionaries(st.lists(NAMES, min_size=1, max_size=4).map(lambda c: HOME + "/" + "/".join(c)),
                        st.sampled_from(["f", "d", "l"]), max_size=25)


def _consistent(tree: dict[str, str]) -> dict[str, str]:
    """Drop entries below a file or link (a generated tree may put one there)."""
    out = {}
    for path in sorted(tree, key=len):
        anc = posixpath.dirname(path)
        ok = True
        while anc != "/":
            if out.get(anc, "d") != "d":
                ok = False
                break
            anc = posixpath.dirname(anc)
        if ok:
            out[path] = tree[path]
    return out


@given(TREES)
def test_properties_over_generated_homes(raw: dict[str, str]) -> None:
    tree = {HOME: "d", **_consistent(raw)}
    plan, fs, protected = plan_for(tree)
    m = Model(plan)
    prot = {p.path: p for p in protected}
    for p in protected:
        if not p.path.startswith(HOME + "/"):
            continue
        kind = fs.entry(p.path).kind
        if kind in ("dir", "file") and p.treat is Treat.HIDE:
            assert m.hidden(p.path), p
        elif kind in ("dir", "file"):
            assert not m.writable(p.path), p
        elif kind == "missing":
            # It could only be made in its deepest existing directory (a file or link on the way
            # would have to be replaced first, which a read-only directory also refuses).
            parent = posixpath.dirname(p.path)
            while fs.entry(parent).kind != "dir":
                parent = posixpath.dirname(parent)
            under_prot = any(parent == q or parent.startswith(q + "/") for q in prot)
            assert not m.writable(parent) or under_prot and m.hidden(parent), p
    # Everything else in the home stays usable: directories and non-dot files writable.
    for path, kind in fs.tree.items():
        if not path.startswith(HOME + "/") or kind == "l":
            continue
        if any(path == q or path.startswith(q + "/") for q in prot):
            continue
        rel = path[len(HOME) + 1:]
        if "/" not in rel and rel.startswith(".") and kind != "d":
            assert not m.writable(path), path          # a dotfile directly in the home
        elif any(path.startswith(a + "/") for a in plan.listed) and kind == "d" and path in plan.listed:
            assert not m.writable(path)                # sealed: holds a missing protected entry
        else:
            assert m.writable(path), (path, [o for o in plan.ops])
