"""Per-call cgroups (cmdop.adapters.cgroups), with the kernel's real cgroups and real processes.

The parsers are table-tested on texts from v2-only, hybrid and v1-only machines. Everything else
runs against this machine's cgroups: a test that needs what the machine lacks (cgroups disabled,
no pids or memory controller) skips saying why. Children join a call the way the fork server
does: a tiny Python child is given the call's cgroup.procs fds (pass_fds), writes "0" into each,
closes them and execs bash. Every process started here is found again through a unique marker
in its argv (a sleep duration nothing else uses), read from /proc.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from cmdop.adapters.cgroups import (
    AGENT_LEAF,
    SERVER_LEAF,
    CallCgroup,
    CallCgroups,
    CgroupError,
    CgroupLayout,
    CgroupLimits,
    CgroupMount,
    CgroupUsage,
    ProcCgroup,
    current_layout,
    is_delegated,
    locate,
    parse_meminfo_total,
    parse_mountinfo,
    parse_proc_cgroup,
    parse_size,
    total_ram_bytes,
    unescape_mountinfo,
)

# -- texts from real machines -------------------------------------------------------------------
PROC_V2 = "0::/system.slice/cmdop.service\n"
PROC_HYBRID = (
    "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n"
    "4:memory:/process_api/2b92ebc36b1913051943a817253300ba\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n"
)
PROC_V1 = (
    "12:pids:/user.slice/user-1000.slice/session-2.scope\n11:cpu,cpuacct:/user.slice\n"
    "4:memory:/user.slice/user-1000.slice/session-2.scope\n1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n"
)

MOUNT_V2 = (
    "22 26 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
    "27 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
)
MOUNT_HYBRID = (
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
    "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
MOUNT_V1 = (
    "25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
    "30 25 0:27 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd\n"
    "33 25 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct\n"
    "35 25 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory\n"
    "38 25 0:35 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,pids\n"
)
# A container: cgroup2 bind-mounted from a sub-cgroup, at a mount point with a space and a tab.
MOUNT_NESTED = (
    "600 500 0:27 /docker/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n"
    "601 500 0:27 /docker/abc /srv/my\\040cgroups\\011x rw,nosuid master:3 - cgroup2 cgroup2 rw\n"
)


# -- parsers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, unified, v1", [
    (PROC_V2, "/system.slice/cmdop.service", {}),
    (PROC_HYBRID, "/", {"name=systemd": "/", "pids": "/", "blkio": "/", "freezer": "/",
                        "devices": "/", "memory": "/process_api/2b92ebc36b1913051943a817253300ba",
                        "cpuset": "/", "cpuacct": "/", "cpu": "/"}),
    (PROC_V1, None, {"pids": "/user.slice/user-1000.slice/session-2.scope",
                     "cpu": "/user.slice", "cpuacct": "/user.slice",
                     "memory": "/user.slice/user-1000.slice/session-2.scope",
                     "name=systemd": "/user.slice/user-1000.slice/session-2.scope"}),
    ("0::/a:b/with space/c\n", "/a:b/with space/c", {}),       # colons and spaces stay raw
    ("garbage\n\n1:pids\n0::relative\n", None, {}),             # malformed lines are skipped
    ("", None, {}),
])
def test_parse_proc_cgroup(text: str, unified: str | None, v1: dict[str, str]) -> None:
    parsed = parse_proc_cgroup(text)
    assert parsed.unified == unified
    assert dict(parsed.v1) == v1


@pytest.mark.parametrize("text, expected", [
    (MOUNT_V2, [CgroupMount("/sys/fs/cgroup", "/", 2,
                            frozenset({"rw", "nsdelegate", "memory_recursiveprot"}))]),
    (MOUNT_HYBRID, [
        CgroupMount("/sys/fs/cgroup/cpu", "/", 1, frozenset({"rw", "cpu"})),
        CgroupMount("/sys/fs/cgroup/memory", "/", 1, frozenset({"rw", "memory"})),
        CgroupMount("/sys/fs/cgroup/pids", "/", 1, frozenset({"rw", "pids"})),
        CgroupMount("/sys/fs/cgroup/systemd", "/", 1, frozenset({"rw", "name=systemd"})),
        CgroupMount("/sys/fs/cgroup/unified", "/", 2, frozenset({"rw"})),
    ]),
    (MOUNT_V1, [
        CgroupMount("/sys/fs/cgroup/systemd", "/", 1, frozenset({"rw", "xattr", "name=systemd"})),
        CgroupMount("/sys/fs/cgroup/cpu,cpuacct", "/", 1, frozenset({"rw", "cpu", "cpuacct"})),
        CgroupMount("/sys/fs/cgroup/memory", "/", 1, frozenset({"rw", "memory"})),
        CgroupMount("/sys/fs/cgroup/pids", "/", 1, frozenset({"rw", "pids"})),
    ]),
    (MOUNT_NESTED, [
        CgroupMount("/sys/fs/cgroup", "/docker/abc", 2, frozenset({"rw"})),
        CgroupMount("/srv/my cgroups\tx", "/docker/abc", 2, frozenset({"rw"})),
    ]),
    ("1 2 3:4 / /x rw - ext4 /dev/sda1 rw\nshort line\n", []),
])
def test_parse_mountinfo(text: str, expected: list[CgroupMount]) -> None:
    assert list(parse_mountinfo(text)) == expected


@pytest.mark.parametrize("raw, plain", [
    ("/a\\040b", "/a b"), ("/t\\011ab", "/t\tab"), ("/n\\012l", "/n\nl"),
    ("/back\\134slash", "/back\\slash"), ("/plain", "/plain"), ("/x\\04", "/x\\04"),
])
def test_unescape_mountinfo(raw: str, plain: str) -> None:
    assert unescape_mountinfo(raw) == plain


MEM_HASH = "/sys/fs/cgroup/memory/process_api/2b92ebc36b1913051943a817253300ba"


@pytest.mark.parametrize("proc, mounts, unified, problem_part, v1", [
    (PROC_V2, MOUNT_V2, "/sys/fs/cgroup/system.slice/cmdop.service", "", {}),
    (PROC_HYBRID, MOUNT_HYBRID, "/sys/fs/cgroup/unified", "",
     {"pids": "/sys/fs/cgroup/pids", "memory": MEM_HASH}),
    (PROC_V1, MOUNT_V1, None, "no cgroup2 hierarchy is mounted",
     {"pids": "/sys/fs/cgroup/pids/user.slice/user-1000.slice/session-2.scope",
      "memory": "/sys/fs/cgroup/memory/user.slice/user-1000.slice/session-2.scope"}),
    # cgroup2 mounted, but this process has no 0:: line
    (PROC_V1, MOUNT_HYBRID, None, "no 0:: line", {
        "pids": "/sys/fs/cgroup/pids/user.slice/user-1000.slice/session-2.scope",
        "memory": "/sys/fs/cgroup/memory/user.slice/user-1000.slice/session-2.scope"}),
    # a bind mount of a sub-cgroup: the path is relative to the mount's root
    ("0::/docker/abc/app\n", MOUNT_NESTED, "/sys/fs/cgroup/app", "", {}),
    ("0::/docker/abc\n", MOUNT_NESTED, "/sys/fs/cgroup", "", {}),
    # outside every mount's root (a sibling that only shares the prefix text, too)
    ("0::/docker/abcdef\n", MOUNT_NESTED, None, "not visible under any cgroup2 mount", {}),
    ("0::/other\n", MOUNT_NESTED, None, "not visible under any cgroup2 mount", {}),
    # nested path with spaces (raw in /proc/self/cgroup) under an escaped mount point
    ("0::/docker/abc/my app/x\n",
     "601 500 0:27 /docker/abc /srv/my\\040cgroups rw - cgroup2 cgroup2 rw\n",
     "/srv/my cgroups/my app/x", "", {}),
    # a cgroup namespace whose root lies above ours: "/.." components are refused
    ("0::/../escape\n", MOUNT_V2, None, "not visible", {}),
])
def test_locate(proc: str, mounts: str, unified: str | None, problem_part: str,
                v1: dict[str, str]) -> None:
    layout = locate(parse_proc_cgroup(proc), parse_mountinfo(mounts))
    assert layout.unified == unified
    assert problem_part in layout.unified_problem
    assert bool(layout.unified_problem) == (unified is None)
    assert dict(layout.v1) == v1


GIB = 1 << 30


@pytest.mark.parametrize("value, expected", [
    (1, 1), (4096, 4096), ("4096", 4096), ("512M", 512 << 20), ("512m", 512 << 20),
    ("2G", 2 * GIB), ("2GiB", 2 * GIB), ("2gb", 2 * GIB), (" 1.5G ", 3 * GIB // 2),
    ("64K", 64 << 10), ("1T", 1 << 40), ("10B", 10), ("50%", 8 * GIB), ("100%", 16 * GIB),
    ("12.5%", 2 * GIB), ("0.5 %", 16 * GIB // 200),
])
def test_parse_size(value: int | str, expected: int) -> None:
    assert parse_size(value, 16 * GIB) == expected


@pytest.mark.parametrize("value, message", [
    (0, "more than 0"), (-5, "more than 0"), ("0", "at least 1 byte"), ("0%", "more than 0"),
    ("101%", "at most 100"), ("", "expected"), ("12X", "expected"), ("-1G", "expected"),
    ("1e9", "expected"), ("G", "expected"), (True, "expected"), (1.5, "expected"),
    (None, "expected"), ("0.1B", "at least 1 byte"),
])
def test_parse_size_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(value, 16 * GIB)  # type: ignore[arg-type]


def test_parse_size_percent_needs_ram() -> None:
    with pytest.raises(ValueError, match="RAM size is unknown"):
        parse_size("50%", 0)


def test_meminfo() -> None:
    assert parse_meminfo_total("MemTotal:       24683520 kB\nMemFree: 1 kB\n") == 24683520 * 1024
    with pytest.raises(ValueError, match="MemTotal"):
        parse_meminfo_total("MemFree: 1 kB\n")
    with open("/proc/meminfo") as f:
        first = f.readline().split()
    assert total_ram_bytes() == int(first[1]) * 1024


@pytest.mark.parametrize("usage, result", [
    (CgroupUsage(None, False, False), {"cgroup": True, "peak_memory_bytes": None, "limit_hit": None}),
    (CgroupUsage(10, True, False), {"cgroup": True, "peak_memory_bytes": 10, "limit_hit": "pids"}),
    (CgroupUsage(10, False, True), {"cgroup": True, "peak_memory_bytes": 10, "limit_hit": "memory"}),
    (CgroupUsage(10, True, True), {"cgroup": True, "peak_memory_bytes": 10, "limit_hit": "memory"}),
])
def test_usage_as_result(usage: CgroupUsage, result: dict[str, object]) -> None:
    assert usage.as_result() == result


@pytest.mark.parametrize("kwargs", [
    {"pids_max": 1}, {"pids_max": 0}, {"pids_max": True}, {"memory_max": 0},
    {"memory_max": -1}, {"memory_max": "1G"},
])
def test_limits_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CgroupLimits(**kwargs)  # type: ignore[arg-type]


def test_disabled_instance() -> None:
    cg = CallCgroups.disabled("turned off in config.yaml")
    assert not cg.enabled and cg.reason == "turned off in config.yaml" and cg.mode == ""
    assert cg.describe() == "no (turned off in config.yaml)"
    assert cg.server_procs_fds() == () and cg.paths == ()
    with pytest.raises(CgroupError, match="turned off in config.yaml"):
        cg.create()
    cg.close()


# -- real cgroups ---------------------------------------------------------------------------------
JOIN = (
    "import os, sys\n"
    "fds = [int(x) for x in sys.argv[1].split(',')]\n"
    "for fd in fds: os.write(fd, b'0')\n"
    "for fd in fds: os.close(fd)\n"
    "os.execv('/bin/bash', ['bash', '-c', sys.argv[2]])\n"
)

# Like the fork server: join the call, start the command, go home, report the command's pid.
FORK_SERVER_LIKE = (
    "import os, subprocess, sys\n"
    "call = [int(x) for x in sys.argv[1].split(',')]\n"
    "home = [int(x) for x in sys.argv[2].split(',')]\n"
    "for fd in call: os.write(fd, b'0')\n"
    "child = subprocess.Popen(['sleep', os.environ['TAG']], start_new_session=True, close_fds=True)\n"
    "for fd in home: os.write(fd, b'0')\n"
    "print(child.pid, flush=True)\n"
    "sys.stdin.read()\n"
)


def marker() -> str:
    """A sleep duration (seconds) no other process on the machine uses."""
    return f"{600 + secrets.randbelow(10**6)}.{secrets.randbelow(10**6):06d}"


def live_with(arg: str) -> list[int]:
    """Pids of live (non-zombie) processes with `arg` in their argv."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if arg.encode() in argv and state not in ("Z", "X"):
            found.append(int(entry))
    return found


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def gone(*tags: str) -> bool:
    """True once no live process carries any of `tags` (waiting up to 5 s: a killed process
    leaves its cgroup early in its exit, a moment before /proc shows it as a zombie)."""
    return wait_for(lambda: not any(live_with(t) for t in tags), 5)


def proc_cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read()


def pids_in(cgroup_dir: str) -> list[int]:
    try:
        with open(os.path.join(cgroup_dir, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def remove_cgroup_dir(path: str) -> None:
    """Test clean-up: kill what is in cgroup directory `path` (v2) and remove it bottom-up."""
    kill = os.path.join(path, "cgroup.kill")
    if os.path.exists(kill):
        with open(kill, "w") as f:
            f.write("1")
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        wait_for(lambda: not pids_in(dirpath), 5)
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children started by a test; killed (if needed) and reaped afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def cgroups() -> Iterator[Callable[..., CallCgroups]]:
    """make(pids_max=..., memory_max=...) -> an enabled CallCgroups (skips when unavailable);
    every one is closed afterwards."""
    made: list[CallCgroups] = []

    def make(pids_max: int | None = 64, memory_max: int | None = None,
             need: tuple[str, ...] = ()) -> CallCgroups:
        cg = CallCgroups.setup(CgroupLimits(pids_max=pids_max, memory_max=memory_max))
        made.append(cg)
        if not cg.enabled:
            pytest.skip(f"per-call cgroups are not available here: {cg.reason}")
        for controller in need:
            if f"{controller}." not in cg.describe():
                pytest.skip(f"no {controller} controller for calls here: {cg.describe()}")
        return cg

    yield make
    for cg in made:
        cg.close()


def join(procs: list[subprocess.Popen[bytes]], call: CallCgroup, script: str) -> subprocess.Popen[bytes]:
    """Start `bash -c script` inside `call` (the child joins before it execs bash)."""
    fds = call.procs_fds
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", JOIN, ",".join(map(str, fds)), script],
                            pass_fds=fds, start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(proc)
    return proc


def in_cgroup(call: CallCgroup) -> list[int]:
    return pids_in(call.paths[0])


def test_setup_here_matches_the_machine(cgroups: Callable[..., CallCgroups]) -> None:
    layout = current_layout()
    if layout.unified is None:
        pytest.skip(f"no cgroup2 here: {layout.unified_problem}")
    cg = cgroups(pids_max=1024, memory_max=4 * GIB)
    with open(os.path.join(layout.unified, "cgroup.controllers")) as f:
        v2 = set(f.read().split())
    if {"pids", "memory"} <= v2:
        assert cg.mode == "v2"
        assert cg.describe().startswith("yes (cgroup v2")
        assert "pids.max 1024, memory.max 4.0 GiB" in cg.describe()
        assert len(cg.paths) == 1
    elif not v2 & {"pids", "memory"} and {"pids", "memory"} <= set(layout.v1):
        # This VM: cgroup2 at /sys/fs/cgroup/unified with only hugetlb, pids+memory on v1.
        assert cg.mode == "hybrid"
        assert cg.describe() == ("yes (hybrid: v2 for membership and kill, v1 pids+memory: "
                                 "pids.max 1024, memory.limit_in_bytes 4.0 GiB)")
        assert cg.reason == ""
        assert len(cg.paths) == 3
        assert cg.paths[1].startswith(layout.v1["pids"] + "/cmdop-")
        assert cg.paths[2].startswith(layout.v1["memory"] + "/cmdop-")
    else:
        pytest.skip(f"a mixed layout this test has no expectation for: {cg.describe()}")
    name = os.path.basename(cg.paths[0])
    assert name.startswith(f"cmdop-{os.getpid()}-")
    assert all(os.path.basename(p) == name for p in cg.paths)
    assert len(cg.server_procs_fds()) == len(cg.paths)
    for path in cg.paths:
        assert os.path.isdir(os.path.join(path, SERVER_LEAF))
    # No process was moved: the test process is where it was.
    assert current_layout() == layout


def test_fork_bomb_hits_pids_max_and_finish_kills_it(cgroups: Callable[..., CallCgroups],
                                                     procs: list[subprocess.Popen[bytes]]) -> None:
    cg = cgroups(pids_max=64, need=("pids",))
    call = cg.create()
    tag = marker()
    bash = join(procs, call, f"for i in $(seq 3000); do sleep {tag} & done; wait")
    assert wait_for(lambda: len(in_cgroup(call)) >= 64), "the fork bomb never reached pids.max"
    # A forked child shows bash's argv until it has exec'd sleep: wait for all 63 (a loaded
    # machine may take longer than any fixed pause).
    assert wait_for(lambda: len(live_with(tag)) == 63), f"sleeps: {len(live_with(tag))}"
    assert len(in_cgroup(call)) == 64            # bash + 63 sleeps: the limit holds
    usage = call.finish()
    assert usage.pids_limit_hit and not usage.memory_limit_hit
    assert usage.as_result()["limit_hit"] == "pids"
    assert bash.wait(timeout=10) == -9
    assert gone(tag), f"sleeps left: {live_with(tag)}"
    assert not any(os.path.exists(p) for p in call.paths)
    assert not call.populated()


def test_setsid_nohup_and_daemons_are_killed(cgroups: Callable[..., CallCgroups],
                                            procs: list[subprocess.Popen[bytes]]) -> None:
    cg = cgroups(pids_max=64, memory_max=None)
    call = cg.create()
    tags = [marker() for _ in range(3)]
    # bash exits at once; what it started has left its session and process group.
    bash = join(procs, call, f"setsid sleep {tags[0]} & nohup sleep {tags[1]} >/dev/null 2>&1 & "
                             f"(setsid bash -c 'sleep {tags[2]} &' &); exit 0")
    assert bash.wait(timeout=10) == 0
    assert wait_for(lambda: all(live_with(t) for t in tags)), "the escapees never started"
    escapees = [live_with(t)[0] for t in tags]
    assert os.getsid(escapees[0]) == escapees[0]   # really a session of its own
    assert os.getsid(escapees[2]) not in (bash.pid, escapees[2])   # a daemon: orphan of a session
    assert call.populated()
    call.kill()
    assert wait_for(lambda: not call.populated(), 5)
    assert gone(*tags)
    call.kill()                                     # idempotent
    usage = call.finish()
    assert usage == CgroupUsage(usage.peak_memory_bytes, False, False)
    if "memory." in cg.describe():
        assert isinstance(usage.peak_memory_bytes, int) and usage.peak_memory_bytes > 0
    call.kill()                                     # after finish: still fine
    assert call.finish() is usage                   # a second finish answers the same


def test_finish_alone_kills_a_setsid_child(cgroups: Callable[..., CallCgroups],
                                          procs: list[subprocess.Popen[bytes]]) -> None:
    call = cgroups().create()
    tag = marker()
    join(procs, call, f"setsid sleep {tag} & exit 0")
    assert wait_for(lambda: bool(live_with(tag)))
    started = time.monotonic()
    call.finish(timeout=30.0)
    assert time.monotonic() - started < 30.0     # done by the kill, not by the wait running out
    assert gone(tag)


def test_memory_limit_oom_kills_and_is_reported(cgroups: Callable[..., CallCgroups],
                                               procs: list[subprocess.Popen[bytes]]) -> None:
    limit = 64 << 20
    cg = cgroups(memory_max=limit, need=("memory",))
    call = cg.create()
    hog = join(procs, call, f"exec {sys.executable} -I -S -c 'x = b\"1\" * (512 << 20)'")
    assert hog.wait(timeout=60) == -9               # the kernel's OOM killer: SIGKILL
    usage = call.finish()
    assert usage.memory_limit_hit and not usage.pids_limit_hit
    assert usage.as_result()["limit_hit"] == "memory"
    assert usage.peak_memory_bytes is not None
    assert limit // 2 <= usage.peak_memory_bytes <= limit + (4 << 20)


def test_under_the_limit_is_not_a_hit(cgroups: Callable[..., CallCgroups],
                                      procs: list[subprocess.Popen[bytes]]) -> None:
    cg = cgroups(memory_max=256 << 20, need=("memory",))
    call = cg.create()
    worker = join(procs, call, f"exec {sys.executable} -I -S -c 'x = b\"1\" * (32 << 20)'")
    assert worker.wait(timeout=60) == 0
    usage = call.finish()
    assert not usage.memory_limit_hit and not usage.pids_limit_hit
    assert usage.peak_memory_bytes is not None and usage.peak_memory_bytes >= 32 << 20


def test_empty_call(cgroups: Callable[..., CallCgroups]) -> None:
    cg = cgroups()
    call = cg.create()
    assert call.name == "call-1" and cg.create().name == "call-2"
    assert all(os.path.isdir(p) for p in call.paths)
    assert len(call.procs_fds) == len(cg.paths)
    assert not call.populated()
    usage = call.finish()
    assert not usage.pids_limit_hit and not usage.memory_limit_hit
    assert not any(os.path.exists(p) for p in call.paths)
    for fd in call.procs_fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_fork_server_style_join(cgroups: Callable[..., CallCgroups],
                                procs: list[subprocess.Popen[bytes]]) -> None:
    """The protocol the fork server follows: join the call, fork, go home. The command stays in
    the call, the server is back in its leaf; finish kills only the command, close the server."""
    cg = cgroups()
    call = cg.create()
    tag = marker()
    server_fds = cg.server_procs_fds()
    server = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", FORK_SERVER_LIKE, ",".join(map(str, call.procs_fds)),
         ",".join(map(str, server_fds))],
        pass_fds=(*call.procs_fds, *server_fds), start_new_session=True, env={"TAG": tag},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    procs.append(server)
    assert server.stdout is not None
    command = int(server.stdout.readline())
    assert in_cgroup(call) == [command]
    name = os.path.basename(cg.paths[0])
    assert f"/{name}/{call.name}\n" in proc_cgroup_of(command)
    assert f"/{name}/{SERVER_LEAF}\n" in proc_cgroup_of(server.pid)
    assert f"/{call.name}\n" not in proc_cgroup_of(server.pid)
    call.finish()
    assert gone(tag)
    assert server.poll() is None                     # the server was not in the call
    cg.close()
    assert server.wait(timeout=5) == -9              # close() kills the whole subtree


def test_close_removes_everything_it_created(cgroups: Callable[..., CallCgroups],
                                             procs: list[subprocess.Popen[bytes]]) -> None:
    cg = cgroups()
    paths = cg.paths
    finished = cg.create()
    finished.finish()
    running = cg.create()
    idle = cg.create()
    tag = marker()
    join(procs, running, f"setsid sleep {tag} & sleep {tag}")
    assert wait_for(lambda: len(live_with(tag)) == 2)
    cg.close()
    assert gone(tag)
    for path in (*paths, *running.paths, *idle.paths):
        assert not os.path.exists(path), path
    with pytest.raises(CgroupError, match="closed"):
        cg.create()
    cg.close()                                       # idempotent
    running.kill()
    running.finish()                                 # a call outliving its parent: no error


def test_calls_and_agents_do_not_disturb_each_other(cgroups: Callable[..., CallCgroups],
                                                    procs: list[subprocess.Popen[bytes]]) -> None:
    one, two = cgroups(pids_max=16, need=("pids",)), cgroups(pids_max=16, need=("pids",))
    assert one.paths[0] != two.paths[0]
    bomb_call, quiet_call, sibling_call = one.create(), two.create(), one.create()
    bomb_tag, quiet_tag, sibling_tag = marker(), marker(), marker()
    join(procs, bomb_call, f"for i in $(seq 500); do sleep {bomb_tag} & done; wait")
    assert wait_for(lambda: len(in_cgroup(bomb_call)) >= 16)
    # Each call has a limit of its own: a full call does not starve its neighbours.
    join(procs, quiet_call, f"for i in $(seq 10); do sleep {quiet_tag} & done; wait")
    join(procs, sibling_call, f"for i in $(seq 10); do sleep {sibling_tag} & done; wait")
    assert wait_for(lambda: len(live_with(quiet_tag)) == 10 and len(live_with(sibling_tag)) == 10)
    bomb_call.kill()
    assert gone(bomb_tag)
    assert len(live_with(quiet_tag)) == 10 and len(live_with(sibling_tag)) == 10
    assert bomb_call.finish().pids_limit_hit
    one.close()                                       # kills sibling_call (same agent) only
    assert gone(sibling_tag)
    assert len(live_with(quiet_tag)) == 10 and quiet_call.populated()
    usage = quiet_call.finish()
    assert not usage.pids_limit_hit
    assert gone(quiet_tag)


def test_stale_subtrees_are_removed_at_setup(cgroups: Callable[..., CallCgroups],
                                             procs: list[subprocess.Popen[bytes]]) -> None:
    """A subtree left by a dead agent (its pid gone) is emptied and removed by the next setup;
    live agents' subtrees and other names are left alone. The dead agent is a real process that
    is killed after its subtree was populated. Other agents running at the same time may do the
    removal first: that is the same code at work, and the outcome is the same."""
    first = cgroups()
    bases = [os.path.dirname(p) for p in first.paths]
    agent = subprocess.Popen(["sleep", "600"], start_new_session=True)
    procs.append(agent)
    stale = f"cmdop-{agent.pid}-{secrets.token_hex(4)}"
    live = f"cmdop-{os.getpid()}-{secrets.token_hex(4)}"
    other = f"cmdop-x{agent.pid}-{secrets.token_hex(4)}"   # not our naming: left alone
    made = [os.path.join(base, name) for base in bases for name in (stale, live, other)]
    try:
        for path in made:
            os.makedirs(os.path.join(path, "call-1"))
        fds = [os.open(os.path.join(base, stale, "call-1", "cgroup.procs"), os.O_WRONLY)
               for base in bases]
        tag = marker()
        try:
            procs.append(subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", JOIN, ",".join(map(str, fds)),
                 f"setsid sleep {tag} & wait"],
                pass_fds=fds, start_new_session=True, stdout=subprocess.DEVNULL))
        finally:
            for fd in fds:
                os.close(fd)
        assert wait_for(lambda: bool(live_with(tag)))
        agent.kill()
        agent.wait()                                  # the "agent" is gone: its subtree is stale
        second = cgroups()
        assert second.enabled
        for base in bases:
            assert not os.path.exists(os.path.join(base, stale))
            assert os.path.isdir(os.path.join(base, live, "call-1"))
            assert os.path.isdir(os.path.join(base, other, "call-1"))
        assert all(os.path.isdir(p) for p in first.paths)   # a live agent's subtree stays
        assert gone(tag)
    finally:
        for path in made:
            remove_cgroup_dir(path)


def test_delegation_marks(cgroups: Callable[..., CallCgroups]) -> None:
    cg = cgroups()
    probe = os.path.join(os.path.dirname(cg.paths[0]), f"cmdop-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(probe)
    try:
        assert not is_delegated(probe)
        for name in ("trusted.delegate", "user.delegate"):
            try:
                os.setxattr(probe, name, b"1")
            except OSError as exc:
                pytest.skip(f"cannot set {name} on a cgroup here: {exc}")
            assert is_delegated(probe)
            os.removexattr(probe, name)
            assert not is_delegated(probe)
        os.setxattr(probe, "user.delegate", b"0")
        assert not is_delegated(probe)
    finally:
        os.rmdir(probe)


def test_not_delegated_under_systemd_is_disabled(tmp_path: Path) -> None:
    layout = current_layout()
    if layout.unified is None:
        pytest.skip(f"no cgroup2 here: {layout.unified_problem}")
    base = layout.unified
    if os.path.basename(base) == AGENT_LEAF:
        base = os.path.dirname(base)
    if is_delegated(base):
        pytest.skip(f"this process's cgroup {base} is delegated")
    # Pretend systemd is PID 1 (its marker directory exists): the real cgroup lacks the mark.
    cg = CallCgroups.setup(CgroupLimits(), systemd_marker=str(tmp_path))
    assert not cg.enabled
    assert cg.reason == (f"not delegated: the agent's cgroup {base} is not delegated (run it from "
                         "the cmdop systemd unit, which sets Delegate=yes)")
    assert cg.describe() == f"no ({cg.reason})"
    assert cg.server_procs_fds() == ()
    with pytest.raises(CgroupError, match="not delegated"):
        cg.create()


def test_layout_is_read_from_this_process() -> None:
    with open("/proc/self/cgroup") as f:
        proc = parse_proc_cgroup(f.read())
    with open("/proc/self/mountinfo") as f:
        mounts = parse_mountinfo(f.read())
    assert current_layout() == locate(proc, mounts)
    layout: CgroupLayout = current_layout()
    if layout.unified is not None:
        assert os.path.isfile(os.path.join(layout.unified, "cgroup.procs"))
    for where in layout.v1.values():
        assert os.path.isfile(os.path.join(where, "cgroup.procs"))
    assert isinstance(proc, ProcCgroup)


# Run in a child: join cgroup argv[1], try to enable a controller there, then set up per-call
# cgroups; report where the child ended up and where its subtree went.
ENABLE_AND_SETUP = (
    "import json, sys\n"
    "from cmdop.adapters.cgroups import CallCgroups, CgroupLimits, enable_subtree_controllers\n"
    "with open(sys.argv[1] + '/cgroup.procs', 'w') as f:\n"
    "    f.write('0')\n"
    "problem = enable_subtree_controllers(sys.argv[1], ['hugetlb'])\n"
    "with open('/proc/self/cgroup') as f:\n"
    "    mine = [l[3:] for l in f.read().splitlines() if l.startswith('0::')][0]\n"
    "cg = CallCgroups.setup(CgroupLimits())\n"
    "print(json.dumps({'problem': problem, 'cgroup': mine, 'paths': cg.paths}))\n"
    "cg.close()\n"
)


def test_no_internal_processes_rule(cgroups: Callable[..., CallCgroups],
                                    procs: list[subprocess.Popen[bytes]]) -> None:
    """An agent alone in its cgroup moves itself into the leaf `agent` before enabling
    controllers, and its subtree then goes beside that leaf; with a foreign process there it
    moves nowhere and says which process is in the way. (This machine may offer no v2
    controller to a non-root cgroup: the move is still made and checked, the enabling fails.)"""
    cg = cgroups()
    layout = current_layout()
    assert layout.unified is not None
    top = os.path.join(os.path.dirname(cg.paths[0]), f"cmdop-{os.getpid()}-{secrets.token_hex(4)}")
    unit, crowded = os.path.join(top, "unit"), os.path.join(top, "crowded")
    with open("/proc/self/cgroup") as f:
        own = parse_proc_cgroup(f.read()).unified or "/"
    if own != "/" and not layout.unified.endswith(own):
        pytest.skip(f"the cgroup2 mount does not show the whole hierarchy: {layout.unified}")
    mount = layout.unified[:len(layout.unified) - len(own)] if own != "/" else layout.unified
    rel = mount.rstrip("/")                          # a directory minus this: its cgroup path
    try:
        os.makedirs(unit)
        os.makedirs(crowded)
        # The foreign process: a sleep that already lives in `crowded`.
        fd = os.open(os.path.join(crowded, "cgroup.procs"), os.O_WRONLY)
        try:
            procs.append(subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", JOIN, str(fd), f"exec sleep {marker()}"], pass_fds=(fd,),
                start_new_session=True))
        finally:
            os.close(fd)
        assert wait_for(lambda: len(pids_in(crowded)) == 1)
        foreign = pids_in(crowded)[0]
        results = {}
        for where in (unit, crowded):
            out = subprocess.run([sys.executable, "-c", ENABLE_AND_SETUP, where], capture_output=True,
                                 text=True, timeout=60, check=True).stdout
            results[where] = json.loads(out)
        alone, shared = results[unit], results[crowded]
        assert alone["cgroup"] == unit[len(rel):] + "/" + AGENT_LEAF
        assert alone["problem"] in ("", f"cannot enable +hugetlb in {unit}/cgroup.subtree_control: "
                                        f"not offered to {unit} by its parent (see its cgroup.controllers)")
        assert os.path.dirname(alone["paths"][0]) == unit       # beside the agent leaf
        assert shared["cgroup"] == crowded[len(rel):]           # not moved
        assert shared["problem"].startswith(f"cannot enable +hugetlb in {crowded}/cgroup.subtree_control: "
                                            f"other processes live in {crowded} (pid {foreign})")
        assert os.path.dirname(shared["paths"][0]) == crowded
        assert not os.path.exists(alone["paths"][0]) and not os.path.exists(shared["paths"][0])
    finally:
        remove_cgroup_dir(top)
