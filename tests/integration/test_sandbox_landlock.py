"""The Landlock domain of the command sandbox, tested with real processes.

A sandboxed command must not get ptrace-mode access (/proc/PID/mem, environ, cwd...) to any
process outside the sandbox (an operator's shell, the agent itself). Every denial is paired with
the same attempt from an unsandboxed child, which must succeed, so a test cannot pass because
the probe is broken or the kernel would refuse anyway.

Capabilities: a reader holding CAP_PERFMON or CAP_SYS_ADMIN (root) may read another process's
environ/maps/auxv without any LSM being asked (Linux's read-only mm_access() shortcut for
perfmon-capable callers, present in recent kernels). The environ tests therefore use a victim
and a reader that have dropped every capability, i.e. the agent and an operator's shell running
as the same non-root user. /proc/PID/mem needs ptrace ATTACH, which no capability short-cuts past
the LSM: those tests keep whatever capabilities the test run has.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from cmdop.adapters.launcher import Sandbox
from cmdop.tools.base import ToolEnv
from cmdop.tools.execute_command import execute_command

pytestmark = pytest.mark.seccomp

DENIED = (errno.EACCES, errno.EPERM)

# Drops every capability of the calling process (capset, _LINUX_CAPABILITY_VERSION_3, all zero).
DROP_CAPS = (
    "import ctypes\n"
    "hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)\n"
    "assert ctypes.CDLL(None).capset(hdr, (ctypes.c_uint32 * 6)()) == 0, 'capset failed'\n"
)

# argv: PATH MODE DROP_CAPS(0|1). MODE "rb"/"r+b" opens (and for "rb" reads, except mem),
# "readlink" reads the link. Prints one JSON line: {"ok": true, "data": ...} or
# {"ok": false, "errno": E}.
PROBE = (
    "import json, os, sys\n"
    "path, mode, drop = sys.argv[1], sys.argv[2], sys.argv[3] == '1'\n"
    "if drop:\n"
    + "".join("    " + line + "\n" for line in DROP_CAPS.splitlines())
    + "try:\n"
    "    if mode == 'readlink':\n"
    "        data = os.readlink(path)\n"
    "    else:\n"
    "        with open(path, mode) as f:\n"
    # /proc/PID/mem: opening is the access that matters (offset 0 is unmapped: EIO on read).
    "            data = '' if mode != 'rb' or path.endswith('/mem') else f.read(1 << 16).decode('latin-1')\n"
    "    print(json.dumps({'ok': True, 'data': data}))\n"
    "except OSError as e:\n"
    "    print(json.dumps({'ok': False, 'errno': e.errno}))\n"
)

SECRET = "landlock-test-secret-4f1c"


def kernel_landlock_abi() -> int:
    """The Landlock ABI this test process can use (landlock_create_ruleset's version query), or
    0 when there is none (no Landlock, disabled, or blocked by a seccomp filter on us)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(0, int(libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1))))


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox()
    if not sb.available:
        pytest.skip(f"seccomp unavailable: {sb.reason}")
    if not sb.landlock:
        why = sb.landlock_reason
        sb.close()   # (after reading: the properties would start a new server)
        if kernel_landlock_abi() >= 2:   # the kernel offers it: a missing domain is a bug, not a skip
            pytest.fail(f"Landlock ABI {kernel_landlock_abi()} is here but the sandbox has no "
                        f"domain: {why}")
        pytest.skip(f"no usable Landlock here: {why}")
    yield sb
    sb.close()


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """An unconfined process of our uid, as an operator's shell would be."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def capless_victim() -> Iterator[subprocess.Popen[bytes]]:
    """An unconfined process of our uid without capabilities, a secret in its environment."""
    code = DROP_CAPS + "import sys, time\nprint('ready', flush=True)\ntime.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OPERATOR_TOKEN": SECRET})
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc
    proc.kill()
    proc.wait()
    proc.stdout.close()


def boxed(sandbox: Sandbox, tmp_path: Path, command: str) -> dict[str, Any]:
    """execute_command through the real launcher; asserts it ran sandboxed."""
    env = ToolEnv(home=str(tmp_path), cwd=str(tmp_path), sandbox=sandbox)
    out = execute_command({"command": command, "timeout_ms": 30_000}, env)
    assert out["sandboxed"] is True, out
    return out


def probe_cmd(path: str, mode: str, drop_caps: bool) -> list[str]:
    return [sys.executable, "-c", PROBE, path, mode, "1" if drop_caps else "0"]


def probe_boxed(sandbox: Sandbox, tmp_path: Path, path: str, mode: str,
                drop_caps: bool = False) -> dict[str, Any]:
    out = boxed(sandbox, tmp_path, shlex.join(probe_cmd(path, mode, drop_caps)))
    assert out["exit_code"] == 0, out
    result: dict[str, Any] = json.loads(out["stdout"])
    return result


def probe_plain(path: str, mode: str, drop_caps: bool = False) -> dict[str, Any]:
    out = subprocess.run(probe_cmd(path, mode, drop_caps), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# -- (1) an unconfined process of the same uid ---------------------------------------------------

def test_mem_of_an_unconfined_process_is_denied(sandbox: Sandbox, tmp_path: Path,
                                                victim: subprocess.Popen[bytes]) -> None:
    mem = f"/proc/{victim.pid}/mem"
    assert probe_plain(mem, "r+b")["ok"] is True          # the hole exists without the domain
    got = probe_boxed(sandbox, tmp_path, mem, "r+b")
    assert got["ok"] is False and got["errno"] in DENIED, got
    # Read-only needs ATTACH mode as well for mem: no way in either.
    got = probe_boxed(sandbox, tmp_path, mem, "rb")
    assert got["ok"] is False and got["errno"] in DENIED, got


def test_environ_of_an_unconfined_process_is_denied(sandbox: Sandbox, tmp_path: Path,
                                                    capless_victim: subprocess.Popen[bytes]) -> None:
    environ = f"/proc/{capless_victim.pid}/environ"
    plain = probe_plain(environ, "rb", drop_caps=True)
    assert plain["ok"] is True and SECRET in plain["data"], plain
    got = probe_boxed(sandbox, tmp_path, environ, "rb", drop_caps=True)
    assert got["ok"] is False and got["errno"] in DENIED, got
    mem = f"/proc/{capless_victim.pid}/mem"
    assert probe_plain(mem, "r+b", drop_caps=True)["ok"] is True
    got = probe_boxed(sandbox, tmp_path, mem, "r+b", drop_caps=True)
    assert got["ok"] is False and got["errno"] in DENIED, got


def test_ptrace_mode_links_of_an_unconfined_process_are_denied(
        sandbox: Sandbox, tmp_path: Path, victim: subprocess.Popen[bytes]) -> None:
    """cwd/exe/fd links need ptrace READ too, and no capability short-cuts that check."""
    for name in ("cwd", "exe"):
        link = f"/proc/{victim.pid}/{name}"
        assert probe_plain(link, "readlink")["ok"] is True
        got = probe_boxed(sandbox, tmp_path, link, "readlink")
        assert got["ok"] is False and got["errno"] in DENIED, (name, got)


# -- (3) the agent's own process -----------------------------------------------------------------

def test_the_agent_process_is_out_of_reach(sandbox: Sandbox, tmp_path: Path) -> None:
    """This test process owns the sandbox as the agent does: its memory and fds stay closed."""
    me = os.getpid()
    for path, mode in ((f"/proc/{me}/mem", "r+b"), (f"/proc/{me}/mem", "rb"),
                       (f"/proc/{me}/cwd", "readlink"), (f"/proc/{me}/fd/0", "readlink")):
        assert probe_plain(path, mode)["ok"] is True, path
        got = probe_boxed(sandbox, tmp_path, path, mode)
        assert got["ok"] is False and got["errno"] in DENIED, (path, got)


# -- (2) inside the domain, ordinary work goes on ------------------------------------------------

def test_own_proc_entries_stay_readable(sandbox: Sandbox, tmp_path: Path) -> None:
    cmd = "LL_MARK=inside-the-domain " + shlex.join(probe_cmd("/proc/self/environ", "rb", False))
    got = json.loads(boxed(sandbox, tmp_path, cmd)["stdout"])
    assert got["ok"] is True and "LL_MARK=inside-the-domain" in got["data"], got
    got = probe_boxed(sandbox, tmp_path, "/proc/self/mem", "r+b")
    assert got["ok"] is True, got
    # A child of the command is in the same domain: the command may still read its environ.
    # (Read once the child has exec'd sleep: before that its environ is still the shell's.)
    out = boxed(sandbox, tmp_path,
                "LL_MARK=child sleep 5 & p=$!; "
                "for i in $(seq 100); do [ \"$(readlink /proc/$p/exe)\" != \"$(readlink /proc/$$/exe)\" ] "
                "&& break; sleep 0.02; done; "
                "tr '\\0' '\\n' < /proc/$p/environ | grep -c '^LL_MARK=child$'; kill $p")
    assert out["stdout"] == "1\n", out


def test_ps_still_lists_processes_outside_the_domain(sandbox: Sandbox, tmp_path: Path,
                                                     victim: subprocess.Popen[bytes]) -> None:
    if shutil.which("ps") is None:
        pytest.skip("ps is not installed here")
    out = boxed(sandbox, tmp_path, "ps aux")
    assert out["exit_code"] == 0, out
    pids = {line.split()[1] for line in out["stdout"].splitlines()[1:]}
    assert {str(victim.pid), str(os.getpid()), "1"} <= pids, out["stdout"][:2000]
    assert "sleep 60" in out["stdout"]                       # cmdline is not ptrace-protected


def test_files_move_between_directories_and_programs_run_anywhere(sandbox: Sandbox,
                                                                  tmp_path: Path) -> None:
    """Landlock denies cross-directory link/rename in a domain unless REFER is granted, and
    exec unless EXECUTE is: the domain grants both everywhere, so nothing of this changes."""
    code = ("import os\n"
            "os.makedirs('a/d'); os.mkdir('b')\n"
            "open('a/f', 'w').close()\n"
            "os.rename('a/f', 'b/f'); os.link('b/f', 'a/g'); os.rename('a/d', 'b/d')\n"
            "print(sorted(os.listdir('a')), sorted(os.listdir('b')))\n")
    out = boxed(sandbox, tmp_path, shlex.join([sys.executable, "-c", code])
                + " && cp /bin/true ./mytrue && ./mytrue && echo ran")
    assert out["exit_code"] == 0, out
    assert out["stdout"] == "['g'] ['d', 'f']\nran\n", out


def test_sandbox_describes_its_confinement(sandbox: Sandbox) -> None:
    assert sandbox.landlock == kernel_landlock_abi() and sandbox.landlock_reason == ""
    assert sandbox.describe() == f"seccomp filter + Landlock domain (ABI {sandbox.landlock})"


# -- without Landlock ----------------------------------------------------------------------------

# Run in a child: an outer seccomp filter refuses the landlock_* calls with EPERM, as systemd's
# SystemCallFilter=@system-service with SystemCallErrorNumber=EPERM does, then a sandbox starts.
NO_LANDLOCK = """
import json, logging, os, sys
import pyseccomp as sc
f = sc.SyscallFilter(sc.ALLOW)
for name in ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"):
    f.add_rule(sc.ERRNO(1), name)
f.load()
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
from cmdop.adapters.launcher import Sandbox
from cmdop.tools.base import ToolEnv
from cmdop.tools.execute_command import execute_command
sb = Sandbox()
out = execute_command({"command": sys.argv[1]}, ToolEnv(home=sys.argv[2], cwd=sys.argv[2], sandbox=sb))
print(json.dumps({"available": sb.available, "landlock": sb.landlock, "reason": sb.landlock_reason,
                  "describe": sb.describe(), "result": out}))
sb.close()
"""


def test_without_landlock_the_sandbox_serves_and_says_so(tmp_path: Path,
                                                         victim: subprocess.Popen[bytes]) -> None:
    pytest.importorskip("pyseccomp")
    probe = shlex.join(probe_cmd(f"/proc/{victim.pid}/mem", "r+b", False))
    run = subprocess.run([sys.executable, "-c", NO_LANDLOCK, probe, str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    if not got["available"]:
        pytest.skip(f"seccomp unavailable: {got['describe']}")
    assert got["landlock"] == 0
    assert "EPERM" in got["reason"] and "seccomp filter" in got["reason"], got
    assert got["describe"].startswith("seccomp filter only, no Landlock domain: "), got
    assert "cmdop.sandbox: command sandbox runs WITHOUT a Landlock domain" in run.stderr
    assert got["result"]["sandboxed"] is True
    # Without the domain, a root command is still kept out of other processes' memory: its
    # bounding set lacks CAP_SYS_PTRACE, so it holds fewer capabilities than the victim.
    assert json.loads(got["result"]["stdout"])["ok"] is (os.geteuid() != 0)


# -- the fork server's Landlock step, with a fake kernel -----------------------------------------

class _FakeLibc:
    """Answers landlock_create_ruleset's version query only; any other call is a test failure."""

    def __init__(self, abi: int, err: int = 0) -> None:
        def syscall(nr: Any, *args: Any) -> int:
            assert args[-1].value == 1, "only the version query may be made"
            if abi < 0:
                ctypes.set_errno(err)
            return abi

        self.syscall = syscall   # a plain function: the code under test sets its restype


@pytest.mark.parametrize("abi,err,words", [
    (-1, errno.ENOSYS, "no Landlock (ENOSYS)"),
    (-1, errno.EOPNOTSUPP, "disabled at boot"),
    (-1, errno.EPERM, "seccomp filter"),
    (1, 0, "Landlock ABI 1"),
])
def test_landlock_step_reports_why_there_is_no_domain(abi: int, err: int, words: str) -> None:
    from cmdop.sandbox_launcher import forkserver

    got_abi, why = forkserver.enter_landlock_domain(_FakeLibc(abi, err))  # type: ignore[arg-type]
    assert got_abi == 0 and words in why, why

