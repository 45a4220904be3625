"""Opening files so that a symlink swapped in after the floor check cannot redirect the open.

Rules:
- The caller's path is canonicalised first (`~` expanded, relative to cwd, `..` folded, symlinks
  resolved) and the floor is checked on that canonical path.
- The canonical path is then opened by an fd-relative walk from `/`: every component is opened
  with O_NOFOLLOW relative to its parent's fd, so a component that has become a symlink since
  the check makes the open fail (ELOOP/ENOTDIR) instead of being followed. `..` never appears.
- After the open, the path the kernel reports for the fd (/proc/self/fd/N) is checked against
  the floor again: what was actually opened is what is judged.
Only this module opens caller-named paths for the file tools.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat

from cmdop.core.errors import PermissionDeniedError, ToolError

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class FloorDenied(PermissionDeniedError):
    """The path (as given or as actually opened) is on the floor. `reason` is the floor's text."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class SymlinkRefused(ToolError):
    """A path component turned out to be a symlink where none may be followed."""


def lexical_path(path: str, cwd: str, home: str) -> str:
    """`path` made absolute: `~` expanded to `home`, joined to `cwd`, `.`/`..` folded. No I/O."""
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    if not posixpath.isabs(path):
        path = posixpath.join(cwd or os.getcwd(), path)
    return posixpath.normpath(path)


def canonical(path: str, cwd: str, home: str) -> str:
    """The canonical path the floor judges (the gate's canonicaliser when present)."""
    try:
        from cmdop.adapters.canonical import canonical_path
    except ImportError:  # pragma: no cover - the gate's module is the normal path
        return os.path.realpath(lexical_path(path, cwd, home))
    return str(canonical_path(path, cwd or os.getcwd(), home))


def floor_reason(path: str, home: str) -> str | None:
    """The floor's reason for refusing `path`, or None."""
    from cmdop.core.policy.floor import check_path

    return check_path(path, home)


def check_floor(path: str, home: str) -> None:
    """Raise FloorDenied when `path` is on the floor."""
    reason = floor_reason(path, home)
    if reason:
        raise FloorDenied(path, reason)


class AgentPrivate(ToolError):
    """The path is the agent's own /proc entry (its environment and memory hold secrets)."""

    kind = "agent_private"


_PROC_PID = re.compile(r"^/proc/(\d+)(/|$)")


def agent_pids(agent_pid: int | None = None) -> frozenset[int]:
    """The agent process's pid and its thread ids (each is also reachable as /proc/TID)."""
    me = agent_pid or os.getpid()
    try:
        return frozenset({me} | {int(t) for t in os.listdir(f"/proc/{me}/task")})
    except OSError:
        return frozenset({me})


def is_agent_proc(path: str, pids: frozenset[int]) -> bool:
    """True when `path` is /proc/PID or below it, PID one of `pids`."""
    m = _PROC_PID.match(path)
    return m is not None and int(m.group(1)) in pids


def check_not_agent_proc(path: str, agent_pid: int | None = None) -> None:
    """Refuse /proc/PID/... when PID is the agent process or one of its threads: its environ,
    memory and fds hold the agent's own credentials. (The floor is the gate's; this is a fact
    only the running process knows.)"""
    if _PROC_PID.match(path) and is_agent_proc(path, agent_pids(agent_pid)):
        raise AgentPrivate(f"{path}: the agent's own process is not readable through its tools")


def fd_path(fd: int) -> str:
    """The path the kernel holds for `fd` (what was actually opened)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def _components(path: str) -> list[str]:
    if not posixpath.isabs(path):
        raise ToolError(f"not an absolute path: {path}")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ToolError(f"path is not canonical: {path}")
    return parts


def open_dir(path: str) -> int:
    """An O_PATH fd on directory `path`, reached without following any symlink."""
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in _components(path):
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(fd, part):
                    raise SymlinkRefused(f"{path}: component {part!r} is a symlink (changed after the check?)") from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_in(dir_fd: int, name: str, flags: int, mode: int = 0o600, shown: str = "") -> int:
    """Open `name` inside `dir_fd` with O_NOFOLLOW; a symlink there raises SymlinkRefused."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and _is_link(dir_fd, name)):
            raise SymlinkRefused(f"{shown or name} is a symlink; refusing to follow it") from None
        raise


def _protected_inodes(home: str) -> set[tuple[int, int]]:
    """(dev, ino) of the protected files a hard link would most likely be made to: everything in
    the home's floor directories (~/.ssh, ~/.cmdop, ~/.config/cmdop, ~/.git) and the floor-named
    files at the top of home (~/.env, ~/.bashrc, …). Unreadable entries are skipped."""
    from cmdop.core.policy.floor import FLOOR_DIRS, FLOOR_FILES

    out: set[tuple[int, int]] = set()
    dirs = [os.path.join(home, d) for d in (*FLOOR_DIRS, ".config/cmdop")]
    names = [os.path.join(home, f) for f in FLOOR_FILES]
    try:
        names += [os.path.join(home, e) for e in os.listdir(home) if e.startswith(".env")]
    except OSError:
        pass
    for d in dirs:
        for root, _subdirs, files in os.walk(d):
            names += [os.path.join(root, f) for f in files]
            if len(names) > 20_000:          # bounded: a huge .git is not worth walking whole
                break
    for name in names:
        try:
            st = os.lstat(name)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.add((st.st_dev, st.st_ino))
    return out


def check_hard_link(fd: int, shown: str, home: str) -> None:
    """Raise FloorDenied when the regular file open at `fd` has other hard links and is private
    (no group/other read: keys, tokens) or is one of the home's protected files under another
    name. The floor judges paths, and a hard link is the same file under a path it would pass."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink <= 1:
        return
    if stat.S_IMODE(st.st_mode) & 0o044 == 0:
        raise FloorDenied(shown, "floor: a private file with several hard links may be a protected "
                                 "file under another name")
    if (st.st_dev, st.st_ino) in _protected_inodes(home):
        raise FloorDenied(shown, "floor: a hard link to a protected file")


def open_checked(path: str, home: str, flags: int = os.O_RDONLY, agent_pid: int | None = None) -> int:
    """Open canonical `path` race-free and re-check the floor on what was opened.

    O_NONBLOCK is added so a FIFO cannot hang the open; it is cleared again afterwards.
    `agent_pid` names the agent when the caller is a helper process (default: this process).
    Raises FloorDenied, SymlinkRefused, AgentPrivate or OSError.
    """
    check_floor(path, home)
    parent, name = posixpath.split(path)
    if not name:  # "/" itself
        fd = os.open("/", flags | os.O_CLOEXEC)
    else:
        dfd = open_dir(parent)
        try:
            fd = open_in(dfd, name, flags | os.O_NONBLOCK, shown=path)
        finally:
            os.close(dfd)
    try:
        os.set_blocking(fd, True)
        actual = fd_path(fd)
        check_floor(actual, home)
        check_not_agent_proc(actual, agent_pid)
        check_hard_link(fd, actual, home)
    except BaseException:
        os.close(fd)
        raise
    return fd
