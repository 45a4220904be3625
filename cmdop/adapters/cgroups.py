"""Per-call cgroups: every command the agent runs lives in its own cgroup.

Responsibility: give each call (one shell command and everything it starts) a cgroup of its own
with a pids limit and a memory limit, kill that cgroup whole (including processes that left the
command's session with setsid, nohup or by daemonizing: cgroup membership is inherited and cannot
be shed without write access to a cgroup.procs file) and report its peak memory and whether a
limit was hit. The fork server (`cmdop.sandbox_launcher.forkserver`) does the joining: it writes
its own pid into the call's cgroup.procs fds, forks the command, and writes its pid back into its
home leaf's fds; the command stays behind in the call cgroup.

Layouts supported (found from /proc/self/cgroup and /proc/self/mountinfo, see `locate`):
- "v2": the pure unified hierarchy carries membership, cgroup.kill (Linux >= 5.14) and the
  pids/memory controllers. The "no internal processes" rule: a non-root cgroup with processes
  cannot enable controllers for its children, so the agent moves ITSELF into the leaf
  `<own>/agent` (only when it is the only process in `<own>`) before writing `+pids +memory` to
  `<own>/cgroup.subtree_control`. An agent whose cgroup already is `<x>/agent` uses `<x>`.
- "hybrid": a cgroup2 hierarchy gives membership and cgroup.kill, and the pids and memory
  controllers sit in cgroup v1 hierarchies. Each call then has one directory per hierarchy
  (v2 first) and one cgroup.procs fd per directory; a process must join each of them.
- "membership": cgroup2 present but no usable pids/memory controller: membership and kill only;
  `reason` says why there are no limits.
- disabled: no cgroup2 hierarchy with cgroup.kill, nothing writable, or (systemd is PID 1) the
  agent's cgroup is not delegated. `reason` says what to do.

Layout on disk, in every hierarchy used, beneath the agent's own cgroup:
  cmdop-<pid>-<hex>/        this agent's subtree (several agents may share one cgroup)
    server/                 the fork server's home leaf
    call-<n>/               one leaf per call
Subtrees named cmdop-<pid>-* whose pid is gone are removed at setup (best effort; their
processes are killed), unless they hold a process from another pid namespace (listed as pid 0).

Rules: nothing here raises into the agent except `CallCgroups.create` (CgroupError), the parsing
of configuration (`parse_size`, `CgroupLimits`: ValueError) and `total_ram_bytes`; everything
else reports through return values and `reason`. No state lives
in the module: each `CallCgroups` owns its subtree and its fds, each `CallCgroup` its leaves.
Memory limits cover RAM and swap (memory.swap.max 0 / memory.memsw.limit_in_bytes = limit where
those files exist). `memory_limit_hit` means the kernel had to OOM-kill inside the call, not
merely that reclaim ran at the limit (which page cache does all the time).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import select
import signal
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping

from cmdop.core.errors import CmdopError

log = logging.getLogger("cmdop.cgroups")

SYSTEMD_MARKER = "/run/systemd/system"   # exists when systemd is PID 1 (sd_booted())
AGENT_LEAF = "agent"                     # where the agent moves itself in "v2" mode
SERVER_LEAF = "server"
SUBTREE_PREFIX = "cmdop-"
LIMIT_CONTROLLERS = ("pids", "memory")
DEFAULT_PIDS_MAX = 1024
STALE_TIMEOUT_S = 1.0                   # per stale subtree: how long its processes may take to die
CLOSE_TIMEOUT_S = 2.0

_SUBTREE_RE = re.compile(r"cmdop-(\d+)-[0-9a-f]+")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_OCTAL_ESCAPE_RE = re.compile(r"\\([0-7]{3})")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class CgroupError(CmdopError):
    """A call cgroup could not be created (or cgroups are disabled)."""

    default_hint = "see `cmdop agent status` for the per-call cgroup state"


# -- configuration ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CgroupLimits:
    """Limits for every call cgroup. None: no limit (memory use is still reported).

    pids_max counts every process and thread of the call; the fork server counts too while it
    forks the command inside the call, so at least 2.
    """

    pids_max: int | None = DEFAULT_PIDS_MAX
    memory_max: int | None = None

    def __post_init__(self) -> None:
        if self.pids_max is not None and (isinstance(self.pids_max, bool)
                                          or not isinstance(self.pids_max, int)
                                          or self.pids_max < 2):
            raise ValueError(f"pids_max must be an integer >= 2 or None, not {self.pids_max!r}")
        if self.memory_max is not None and (isinstance(self.memory_max, bool)
                                            or not isinstance(self.memory_max, int)
                                            or self.memory_max <= 0):
            raise ValueError(f"memory_max must be a positive number of bytes or None, "
                             f"not {self.memory_max!r}")


def parse_size(value: int | str, total_ram_bytes: int) -> int:
    """A memory size from config as a positive number of bytes.

    Accepts an int (bytes) or a string: a number with an optional binary unit K, M, G or T
    (case-insensitive, "512M", "1.5G", "2GiB", "4096"), or a percentage of `total_ram_bytes`
    ("50%", more than 0 and at most 100). Raises ValueError saying what is accepted.
    """
    accepted = "a number of bytes, a size like '512M', '2G' or '1.5T', or a percentage of RAM like '50%'"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"memory size {value!r}: expected {accepted}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"memory size {value}: must be more than 0 bytes")
        return value
    text = value.strip()
    percent = _PERCENT_RE.fullmatch(text)
    if percent:
        share = Decimal(percent.group(1))
        if not 0 < share <= 100:
            raise ValueError(f"memory size {value!r}: a percentage must be more than 0 and at most 100")
        if total_ram_bytes <= 0:
            raise ValueError(f"memory size {value!r}: the machine's RAM size is unknown")
        result = int(Decimal(total_ram_bytes) * share / 100)
    else:
        size = _SIZE_RE.fullmatch(text)
        if not size:
            raise ValueError(f"memory size {value!r}: expected {accepted}")
        try:
            result = int(Decimal(size.group(1)) * _UNITS[size.group(2).lower()])
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
            raise ValueError(f"memory size {value!r}: {exc}") from exc
    if result <= 0:
        raise ValueError(f"memory size {value!r}: must come to at least 1 byte")
    return result


def parse_meminfo_total(text: str) -> int:
    """MemTotal from /proc/meminfo text, in bytes. Raises ValueError when it is missing."""
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == "MemTotal":
            parts = rest.split()
            if parts and parts[0].isdigit():
                unit = parts[1].lower() if len(parts) > 1 else ""
                return int(parts[0]) * (1024 if unit == "kb" else 1)
    raise ValueError("no MemTotal line in /proc/meminfo")


def total_ram_bytes() -> int:
    """The machine's RAM in bytes (MemTotal of /proc/meminfo). Raises OSError or ValueError."""
    return parse_meminfo_total(_read("/proc/meminfo"))


# -- pure parsing of the kernel's views --------------------------------------------------------
@dataclass(frozen=True)
class ProcCgroup:
    """/proc/<pid>/cgroup, parsed: the v2 path ("0::PATH") and each v1 controller's path.

    `v1` maps every controller of a v1 line ("cpu,cpuacct" gives two keys) and named
    hierarchies ("name=systemd") to the path.
    """

    unified: str | None
    v1: Mapping[str, str] = field(default_factory=dict)


def parse_proc_cgroup(text: str) -> ProcCgroup:
    """Parse /proc/<pid>/cgroup text ("ID:CONTROLLERS:PATH" lines). Malformed lines are skipped."""
    unified: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        hier_id, controllers, path = parts
        if hier_id == "0" and controllers == "":
            unified = path
        else:
            for name in controllers.split(","):
                if name:
                    v1[name] = path
    return ProcCgroup(unified=unified, v1=v1)


@dataclass(frozen=True)
class CgroupMount:
    """One cgroup or cgroup2 mount from /proc/<pid>/mountinfo.

    `root` is the cgroup (as /proc/<pid>/cgroup names it) shown at `mount_point`; `options` are
    the super options, which for v1 name the controllers ("pids", "cpu", "name=systemd").
    """

    mount_point: str
    root: str
    version: int
    options: frozenset[str]


def unescape_mountinfo(field_text: str) -> str:
    """Undo mountinfo's octal escapes (\\040 space, \\011 tab, \\012 newline, \\134 backslash)."""
    return _OCTAL_ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), field_text)


def parse_mountinfo(text: str) -> tuple[CgroupMount, ...]:
    """The cgroup and cgroup2 mounts in /proc/<pid>/mountinfo text, in mount order."""
    mounts: list[CgroupMount] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 4:
            continue
        fstype = fields[sep + 1]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mounts.append(CgroupMount(
            mount_point=unescape_mountinfo(fields[4]),
            root=unescape_mountinfo(fields[3]),
            version=2 if fstype == "cgroup2" else 1,
            options=frozenset(fields[sep + 3].split(",")),
        ))
    return tuple(mounts)


@dataclass(frozen=True)
class CgroupLayout:
    """Where this process's cgroups are in the filesystem.

    `unified`: directory of its v2 cgroup (None with `unified_problem` saying why);
    `v1`: for "pids" and "memory" when a v1 hierarchy carries them, the directory of its cgroup
    there.
    """

    unified: str | None
    unified_problem: str
    v1: Mapping[str, str] = field(default_factory=dict)


def _dir_of(path: str, mounts: Iterable[CgroupMount]) -> str | None:
    """The directory showing cgroup `path` under the first of `mounts` whose root contains it."""
    for mount in mounts:
        root = mount.root.rstrip("/")
        if root and path != root and not path.startswith(root + "/"):
            continue
        rel = path[len(root):].strip("/")
        if ".." in rel.split("/"):
            continue
        return mount.mount_point.rstrip("/") + ("/" + rel if rel else "") or "/"
    return None


def locate(proc: ProcCgroup, mounts: Iterable[CgroupMount]) -> CgroupLayout:
    """Combine /proc/self/cgroup and the cgroup mounts into directories (pure)."""
    mounts = tuple(mounts)
    v2_mounts = [m for m in mounts if m.version == 2]
    unified: str | None = None
    problem = ""
    if not v2_mounts:
        problem = ("no cgroup2 hierarchy is mounted (cgroup v1 only); per-call cgroups need "
                   "cgroup2 for cgroup.kill: boot with systemd.unified_cgroup_hierarchy=1 or "
                   "mount cgroup2")
    elif proc.unified is None:
        problem = "this process is in no cgroup2 cgroup (no 0:: line in /proc/self/cgroup)"
    else:
        unified = _dir_of(proc.unified, v2_mounts)
        if unified is None:
            problem = (f"the agent's cgroup {proc.unified} is not visible under any cgroup2 mount "
                       f"({', '.join(m.mount_point for m in v2_mounts)})")
    v1: dict[str, str] = {}
    for controller in LIMIT_CONTROLLERS:
        path = proc.v1.get(controller)
        if path is None:
            continue
        where = _dir_of(path, [m for m in mounts if m.version == 1 and controller in m.options])
        if where is not None:
            v1[controller] = where
    return CgroupLayout(unified=unified, unified_problem=problem, v1=v1)


def current_layout() -> CgroupLayout:
    """`locate` for this process, from /proc/self/cgroup and /proc/self/mountinfo."""
    return locate(parse_proc_cgroup(_read("/proc/self/cgroup")),
                  parse_mountinfo(_read("/proc/self/mountinfo")))


def _keyed(text: str) -> dict[str, int]:
    """A flat-keyed cgroup file ("key value" lines) as a dict; non-integer values skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


# -- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CgroupUsage:
    """What a finished call cgroup reports. peak_memory_bytes is None where not measurable."""

    peak_memory_bytes: int | None
    pids_limit_hit: bool
    memory_limit_hit: bool

    def as_result(self) -> dict[str, Any]:
        """Fields to merge into the command's result. When both limits were hit, "memory" wins
        (an OOM kill is the likelier cause of a failure)."""
        hit = "memory" if self.memory_limit_hit else "pids" if self.pids_limit_hit else None
        return {"cgroup": True, "peak_memory_bytes": self.peak_memory_bytes, "limit_hit": hit}


_NO_USAGE = CgroupUsage(peak_memory_bytes=None, pids_limit_hit=False, memory_limit_hit=False)


# -- small I/O helpers ------------------------------------------------------------------------
def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read_pids(path: str) -> list[int]:
    return [int(x) for x in _read(path).split()]


def _listed(cgroup_dir: str) -> list[int]:
    """The pids in cgroup_dir/cgroup.procs; [] when it cannot be read."""
    try:
        return _read_pids(os.path.join(cgroup_dir, "cgroup.procs"))
    except (OSError, ValueError):
        return []


def _why(exc: OSError) -> str:
    """An OSError from cgroupfs as a reason a user can act on."""
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"{where}permission denied (uid {os.geteuid()} may not write there; run the agent "
                "from the cmdop systemd unit, which sets Delegate=yes, or give it a writable "
                "cgroup)")
    if exc.errno == errno.EROFS:
        return (f"{where}the cgroup filesystem is mounted read-only (a container without a "
                "writable cgroup mount?)")
    if exc.errno == errno.EBUSY:
        return f"{where}busy (other processes live in that cgroup)"
    return f"{where}{exc.strerror or exc}"


def is_delegated(path: str) -> bool:
    """True when systemd marked cgroup directory `path` as delegated: xattr trusted.delegate
    (units run by root) or user.delegate (user units) is "1" (systemd >= 251)."""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name).strip() == b"1":
                return True
        except OSError:
            continue
    return False


def _populated(v2_dir: str) -> bool:
    try:
        return _keyed(_read(os.path.join(v2_dir, "cgroup.events"))).get("populated", 0) != 0
    except OSError:
        return False


def _wait_empty(v2_dir: str, deadline: float) -> bool:
    """Wait until v2 cgroup `v2_dir` (and its subtree) holds no process, or until `deadline`
    (time.monotonic). Wakes on cgroup.events changes (POLLPRI) and also re-reads it after 1, 2,
    4 ... 50 ms: the kernel delays a cgroup file's notification by up to 10 ms when the previous
    one was less than 10 ms ago (a command that has only just joined). True when empty (or
    gone)."""
    try:
        fd = os.open(os.path.join(v2_dir, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        delay = 0.001
        while True:
            try:
                data = os.pread(fd, 4096, 0).decode(errors="replace")
            except OSError:
                return True
            if _keyed(data).get("populated", 0) == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            poller.poll(min(remaining, delay) * 1000)
            delay = min(delay * 2, 0.05)
    finally:
        os.close(fd)


def _procs_in_tree(top: str) -> Iterable[tuple[str, list[int]]]:
    """(cgroup.procs path, pids) for every cgroup in the subtree `top`."""
    for dirpath, _dirs, _files in os.walk(top):
        procs = os.path.join(dirpath, "cgroup.procs")
        try:
            yield procs, _read_pids(procs)
        except (OSError, ValueError):
            continue


def _foreign_namespace(top: str) -> bool:
    """True when the subtree holds a process of another pid namespace (listed as pid 0)."""
    return any(0 in pids for _path, pids in _procs_in_tree(top))


def _kill_listed(top: str, deadline: float) -> bool:
    """SIGKILL every process listed in the cgroup.procs files of subtree `top`, until they are
    empty or `deadline`; for v1 hierarchies, which have no cgroup.kill. A pid is signalled
    through a pidfd opened while the pid was still listed, so no process that left the cgroup
    (and no pid reused outside it) is hit. True when empty."""
    delay = 0.001
    while True:
        listed = [(path, pids) for path, pids in _procs_in_tree(top) if pids]
        if not listed:
            return True
        if time.monotonic() >= deadline:
            return False
        for path, pids in listed:
            for pid in pids:
                if pid <= 0:
                    continue
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError:
                    continue
                try:
                    if pid in _read_pids(path):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except (OSError, ValueError):
                    pass
                finally:
                    os.close(pidfd)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _rmdir(path: str, deadline: float) -> bool:
    """rmdir `path`, retrying while the kernel still calls it busy, until `deadline`."""
    delay = 0.001
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _remove_tree(top: str, version: int, deadline: float) -> bool:
    """Kill every process in subtree `top` and remove its directories bottom-up. True when gone."""
    if version == 2:
        try:
            _write(os.path.join(top, "cgroup.kill"), "1")
        except OSError:
            pass
        _wait_empty(top, deadline)
    else:
        _kill_listed(top, deadline)
    ok = True
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        ok = _rmdir(dirpath, deadline) and ok
    return ok and not os.path.exists(top)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _clean_stale(bases: Iterable[tuple[str, int]]) -> list[str]:
    """Remove cmdop-<pid>-* subtrees under each (base dir, version) whose pid is gone. Best
    effort; returns the directories removed."""
    removed: list[str] = []
    for base, version in bases:
        try:
            with os.scandir(base) as listing:
                entries = [e for e in listing if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for entry in entries:
            match = _SUBTREE_RE.fullmatch(entry.name)
            if not match or _pid_alive(int(match.group(1))):
                continue
            if _foreign_namespace(entry.path):
                continue  # an agent in another pid namespace: its pid means nothing here
            if _remove_tree(entry.path, version, time.monotonic() + STALE_TIMEOUT_S):
                removed.append(entry.path)
                log.info("removed the stale cgroup subtree %s", entry.path)
            else:
                log.warning("could not remove the stale cgroup subtree %s", entry.path)
    return removed


def enable_subtree_controllers(base: str, wanted: Iterable[str]) -> str:
    """Make `wanted` controllers available to the children of v2 cgroup `base`: write them to
    base/cgroup.subtree_control, first moving this process into the leaf base/agent when it is
    the only process in `base` (the "no internal processes" rule; the root cgroup is exempt).
    Returns "" on success, else why not."""
    control = os.path.join(base, "cgroup.subtree_control")
    try:
        missing = sorted(set(wanted) - set(_read(control).split()))
    except OSError as exc:
        return f"cannot read {control}: {_why(exc)}"
    if not missing:
        return ""
    plus = " ".join("+" + c for c in missing)
    if os.path.exists(os.path.join(base, "cgroup.type")):  # not the root cgroup
        try:
            procs = _read_pids(os.path.join(base, "cgroup.procs"))
        except (OSError, ValueError) as exc:
            return f"cannot list the processes of {base}: {exc}"
        others = [p for p in procs if p != os.getpid()]
        if others:
            shown = ", ".join(str(p) for p in others[:5]) + (", ..." if len(others) > 5 else "")
            return (f"cannot enable {plus} in {control}: other processes live in {base} "
                    f"(pid {shown}), and a cgroup with processes cannot hand controllers to its "
                    "children; run the agent from the cmdop systemd unit (Delegate=yes) or start "
                    "it alone in its own cgroup")
        if procs:
            leaf = os.path.join(base, AGENT_LEAF)
            try:
                os.makedirs(leaf, exist_ok=True)
                _write(os.path.join(leaf, "cgroup.procs"), "0")
            except OSError as exc:
                return f"cannot move the agent into the leaf cgroup {leaf}: {_why(exc)}"
    try:
        _write(control, plus)
    except OSError as exc:
        if exc.errno == errno.ENOENT:  # not in base/cgroup.controllers
            return (f"cannot enable {plus} in {control}: not offered to {base} by its parent "
                    "(see its cgroup.controllers)")
        return f"cannot enable {plus} in {control}: {_why(exc)}"
    return ""


def _human(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# -- the per-call cgroup ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Hierarchy:
    """One hierarchy this agent uses: its subtree directory and which limits it carries."""

    version: int
    subtree: str
    controllers: frozenset[str]


class CallCgroup:
    """One call's cgroup: a leaf `call-<n>` in every hierarchy used (v2 first).

    `procs_fds`: O_WRONLY, close-on-exec fds of each leaf's cgroup.procs, in the order of
    `paths`; a process joins the call by writing its pid (or "0", itself) into every one. They
    are closed by `finish`. Thread-safe: `kill` and `populated` may run while `finish` waits.
    """

    def __init__(self, name: str, hierarchies: tuple[_Hierarchy, ...], paths: tuple[str, ...],
                 procs_fds: tuple[int, ...]) -> None:
        self.name = name
        self.paths = paths
        self.procs_fds = procs_fds
        self._hierarchies = hierarchies
        self._lock = threading.Lock()
        self._usage: CgroupUsage | None = None

    def kill(self) -> None:
        """SIGKILL every process in the call cgroup now (v2 cgroup.kill; the kernel also stops
        forks racing with it). Idempotent, never raises; after `finish` it does nothing.

        A fork server still inside the call (between joining and going home) dies with it: the
        server must go home before it reports the command's pid."""
        try:
            _write(os.path.join(self.paths[0], "cgroup.kill"), "1")
        except OSError:
            pass

    def populated(self) -> bool:
        """True while any process is in the call cgroup (v2 cgroup.events); False after finish."""
        return _populated(self.paths[0])

    def finish(self, timeout: float = 2.0) -> CgroupUsage:
        """Kill whatever is left, wait (at most `timeout` seconds) until the cgroup is empty,
        read the usage, remove every hierarchy's directory and close `procs_fds`.

        Never raises. A second call returns the first one's usage. Directories that cannot be
        removed in time (a process stuck in the kernel) are left for `CallCgroups.close`."""
        with self._lock:
            if self._usage is not None:
                return self._usage
            deadline = time.monotonic() + timeout
            try:
                if self.populated():
                    self.kill()
                    if not _wait_empty(self.paths[0], deadline):
                        log.warning("call cgroup %s still has processes after %.1f s",
                                    self.paths[0], timeout)
                for hierarchy, path in zip(self._hierarchies, self.paths):
                    # Processes that joined a v1 leaf but not the v2 one (cgroup.kill missed them).
                    if hierarchy.version == 1 and _listed(path):
                        _kill_listed(path, deadline)
                usage = self._read_usage()
            except Exception:  # never raise: a broken stats file must not lose the call's result
                log.exception("reading the usage of call cgroup %s failed", self.paths[0])
                usage = _NO_USAGE
            for fd in self.procs_fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            for path in reversed(self.paths):
                if not _rmdir(path, deadline):
                    log.warning("could not remove the call cgroup %s", path)
            self._usage = usage
            return usage

    def _read_usage(self) -> CgroupUsage:
        peak: int | None = None
        pids_hit = memory_hit = False
        for hierarchy, path in zip(self._hierarchies, self.paths):
            if "pids" in hierarchy.controllers:
                pids_hit = pids_hit or _keyed_file(path, "pids.events").get("max", 0) > 0
            if "memory" not in hierarchy.controllers:
                continue
            if hierarchy.version == 2:
                peak = _int_file(path, "memory.peak")
                events = _keyed_file(path, "memory.events")
                memory_hit = events.get("oom", 0) > 0 or events.get("oom_kill", 0) > 0
            else:
                peak = _int_file(path, "memory.max_usage_in_bytes")
                oom = _keyed_file(path, "memory.oom_control")
                if "oom_kill" in oom:   # Linux >= 4.13
                    memory_hit = oom["oom_kill"] > 0 or oom.get("under_oom", 0) > 0
                else:
                    memory_hit = (_int_file(path, "memory.failcnt") or 0) > 0
        return CgroupUsage(peak_memory_bytes=peak, pids_limit_hit=pids_hit,
                           memory_limit_hit=memory_hit)


def _keyed_file(path: str, name: str) -> dict[str, int]:
    try:
        return _keyed(_read(os.path.join(path, name)))
    except OSError:
        return {}


def _int_file(path: str, name: str) -> int | None:
    try:
        return int(_read(os.path.join(path, name)).split()[0])
    except (OSError, ValueError, IndexError):
        return None


class CallCgroups:
    """This agent's cgroup subtree and the factory of per-call cgroups.

    Build it with `setup` (never raises) before starting the fork server: in "v2" mode the agent
    may move itself into a leaf, and an already started child would count as a foreign process
    in its cgroup. `enabled` is False (and `reason` says why) when cgroups cannot be used;
    `reason` also says why limits are missing when `enabled` is True with partial limits, and is
    "" when everything works. Thread-safe.
    """

    def __init__(self, *, limits: CgroupLimits, reason: str, mode: str = "",
                 hierarchies: tuple[_Hierarchy, ...] = (), server_fds: tuple[int, ...] = (),
                 delegated: bool = False) -> None:
        self.limits = limits
        self._reason = reason
        self._mode = mode
        self._hierarchies = hierarchies
        self._server_fds = server_fds
        self._delegated = delegated
        self._lock = threading.Lock()
        self._next = 1
        self._closed = not hierarchies

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def disabled(cls, reason: str, limits: CgroupLimits | None = None) -> CallCgroups:
        """A CallCgroups that is off (e.g. by configuration), saying `reason`."""
        return cls(limits=limits or CgroupLimits(), reason=reason)

    @classmethod
    def setup(cls, limits: CgroupLimits, *, systemd_marker: str = SYSTEMD_MARKER) -> CallCgroups:
        """Find the layout, check delegation, enable controllers, clean stale subtrees and create
        this agent's subtree with the fork server's leaf. Never raises.

        `systemd_marker`: the path whose existence means systemd is PID 1 (tests point it
        elsewhere)."""
        try:
            return cls._setup(limits, systemd_marker)
        except Exception as exc:  # the promise is "never raises": report it instead
            log.exception("cgroup setup failed")
            return cls.disabled(f"unexpected error while setting up cgroups: {exc!r}", limits)

    @classmethod
    def _setup(cls, limits: CgroupLimits, systemd_marker: str) -> CallCgroups:
        try:
            layout = current_layout()
        except OSError as exc:
            return cls.disabled(f"cannot read this process's cgroups: {exc}", limits)
        if layout.unified is None:
            return cls.disabled(layout.unified_problem, limits)
        base = layout.unified
        if os.path.basename(base) == AGENT_LEAF:
            base = os.path.dirname(base)  # this agent (or its unit's earlier one) moved there
        systemd = os.path.isdir(systemd_marker)
        if systemd and not is_delegated(base):
            return cls.disabled(
                f"not delegated: the agent's cgroup {base} is not delegated (run it from the "
                "cmdop systemd unit, which sets Delegate=yes)", limits)
        try:
            v2_available = set(_read(os.path.join(base, "cgroup.controllers")).split())
        except OSError as exc:
            return cls.disabled(f"cannot read the agent's cgroup {base}: {_why(exc)}", limits)
        notes: list[str] = []
        v2_wanted = [c for c in LIMIT_CONTROLLERS if c in v2_available]
        if v2_wanted:
            problem = enable_subtree_controllers(base, v2_wanted)
            if problem:
                notes.append(f"limits not available: {problem}")
                v2_wanted = []
        v1_wanted = {c: d for c, d in layout.v1.items()
                     if c not in v2_available and c in LIMIT_CONTROLLERS}

        _clean_stale([(base, 2), *((d, 1) for d in v1_wanted.values())])

        name = f"{SUBTREE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        made: list[tuple[str, int]] = []

        def fail(reason: str) -> CallCgroups:
            deadline = time.monotonic() + CLOSE_TIMEOUT_S
            for path, version in made:
                _remove_tree(path, version, deadline)
            return cls.disabled(reason, limits)

        top = os.path.join(base, name)
        try:
            os.mkdir(top, 0o755)
        except OSError as exc:
            return fail(f"cannot create the agent's cgroup subtree: {_why(exc)}")
        made.append((top, 2))
        if not os.path.exists(os.path.join(top, "cgroup.kill")):
            return fail(f"this kernel ({os.uname().release}) has no cgroup.kill "
                        "(Linux >= 5.14 needed)")
        if v2_wanted:
            plus = " ".join("+" + c for c in v2_wanted)
            try:
                _write(os.path.join(top, "cgroup.subtree_control"), plus)
            except OSError as exc:
                notes.append(f"limits not available: cannot enable {plus} in {top}: {_why(exc)}")
                v2_wanted = []
        hierarchies = [_Hierarchy(2, top, frozenset(v2_wanted))]
        for controller, own in sorted(v1_wanted.items(), key=lambda kv: kv[0] != "pids"):
            sub = os.path.join(own, name)
            try:
                os.mkdir(sub, 0o755)
            except OSError as exc:
                notes.append(f"no {controller} limit: cannot create {sub}: {_why(exc)}")
                continue
            made.append((sub, 1))
            hierarchies.append(_Hierarchy(1, sub, frozenset([controller])))
        fds: list[int] = []
        try:
            for hierarchy in hierarchies:
                leaf = os.path.join(hierarchy.subtree, SERVER_LEAF)
                os.mkdir(leaf, 0o755)
                fds.append(os.open(os.path.join(leaf, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            return fail(f"cannot create the fork server's cgroup leaf: {_why(exc)}")
        used = {c for h in hierarchies for c in h.controllers}
        if not used and not notes:
            notes.append("limits not available: neither cgroup2 nor a cgroup v1 hierarchy "
                         "here offers the pids or memory controller")
        if not used:
            mode = "membership"
        elif len(hierarchies) > 1:
            mode = "hybrid"
        else:
            mode = "v2"
        return cls(limits=limits, reason="; ".join(notes), mode=mode,
                   hierarchies=tuple(hierarchies), server_fds=tuple(fds), delegated=systemd)

    # -- state -----------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True when calls get cgroups (membership and kill at least)."""
        return bool(self._hierarchies)

    @property
    def reason(self) -> str:
        """Why cgroups are disabled, or why some limits are missing; "" when all is in force."""
        return self._reason

    @property
    def mode(self) -> str:
        """"v2", "hybrid", "membership" (no limits) or "" (disabled)."""
        return self._mode

    @property
    def paths(self) -> tuple[str, ...]:
        """This agent's subtree directory in every hierarchy used (v2 first); () when disabled."""
        return tuple(h.subtree for h in self._hierarchies)

    def describe(self) -> str:
        """One line for `agent status`: whether calls get cgroups, how, and which limits."""
        if not self.enabled:
            return f"no ({self._reason})"
        used = {c: h.version for h in self._hierarchies for c in h.controllers}
        limits = []
        if "pids" in used:
            limits.append(f"pids.max {self.limits.pids_max or 'max'}")
        if "memory" in used:
            name = "memory.max" if used["memory"] == 2 else "memory.limit_in_bytes"
            value = _human(self.limits.memory_max) if self.limits.memory_max else "max"
            limits.append(f"{name} {value}")
        if self._mode == "v2":
            head = "cgroup v2, delegated" if self._delegated else "cgroup v2"
        elif self._mode == "hybrid":
            v1 = "+".join(c for c in LIMIT_CONTROLLERS if used.get(c) == 1)
            head = f"hybrid: v2 for membership and kill, v1 {v1}"
        else:
            head = "cgroup v2 membership and kill only"
        text = head + (": " + ", ".join(limits) if limits else "")
        if self._reason:
            text += "; " + self._reason
        return f"yes ({text})"

    def server_procs_fds(self) -> tuple[int, ...]:
        """O_WRONLY fds of the fork server's home leaf's cgroup.procs, one per hierarchy (same
        order as a call's `procs_fds`). Owned by this object (closed by `close`): pass them to
        the fork server (pass_fds / SCM_RIGHTS), do not close them. () when disabled."""
        return self._server_fds

    # -- calls -----------------------------------------------------------------------------
    def create(self) -> CallCgroup:
        """A new, empty call cgroup with the limits applied. Raises CgroupError when cgroups are
        disabled or closed, or when the directories or limits cannot be made (nothing is left
        behind then)."""
        with self._lock:  # held throughout, so `close` cannot remove the subtree meanwhile
            if self._closed:
                raise CgroupError("per-call cgroups are not available: "
                                  + (self._reason if not self._hierarchies else "closed"))
            name = f"call-{self._next}"
            self._next += 1
            paths: list[str] = []
            fds: list[int] = []
            try:
                for hierarchy in self._hierarchies:
                    path = os.path.join(hierarchy.subtree, name)
                    os.mkdir(path, 0o755)
                    paths.append(path)
                    self._apply_limits(hierarchy, path)
                for path in paths:
                    fds.append(os.open(os.path.join(path, "cgroup.procs"),
                                       os.O_WRONLY | os.O_CLOEXEC))
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                deadline = time.monotonic() + 1.0
                for path in reversed(paths):
                    _rmdir(path, deadline)
                raise CgroupError(f"cannot create the call cgroup {name}: {_why(exc)}") from exc
        return CallCgroup(name, self._hierarchies, tuple(paths), tuple(fds))

    def _apply_limits(self, hierarchy: _Hierarchy, path: str) -> None:
        pids_max, memory_max = self.limits.pids_max, self.limits.memory_max
        if "pids" in hierarchy.controllers and pids_max is not None:
            _write(os.path.join(path, "pids.max"), str(pids_max))
        if "memory" in hierarchy.controllers and memory_max is not None:
            if hierarchy.version == 2:
                _write(os.path.join(path, "memory.max"), str(memory_max))
                swap, swap_value = os.path.join(path, "memory.swap.max"), "0"
            else:
                _write(os.path.join(path, "memory.limit_in_bytes"), str(memory_max))
                swap, swap_value = os.path.join(path, "memory.memsw.limit_in_bytes"), str(memory_max)
            if os.path.exists(swap):  # no swap accounting: RAM is all there is to limit
                _write(swap, swap_value)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Kill every process in this agent's subtree (the fork server's leaf included), remove
        all its directories and close the server fds. Idempotent, never raises; what cannot be
        removed within `timeout` seconds is logged (a later agent's setup removes it as stale)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for fd in self._server_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for hierarchy in self._hierarchies:
            try:
                if not _remove_tree(hierarchy.subtree, hierarchy.version, deadline):
                    log.warning("could not remove the cgroup subtree %s", hierarchy.subtree)
            except Exception:  # never raise on shutdown
                log.exception("removing the cgroup subtree %s failed", hierarchy.subtree)
