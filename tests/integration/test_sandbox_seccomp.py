"""The seccomp sandbox, tested from the inside: probes run through the real launcher.

Each blocked syscall is tried by a small C probe (tests/probes/syscall_probe.c, compiled with gcc
into a temp dir) with arguments that are harmless when unfiltered; under the sandbox each must
fail with EPERM (clone3: ENOSYS so glibc falls back to the inspectable clone), and syscalls
through a foreign ABI (i386 `int 0x80`, x32) must kill the probe with SIGSYS.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cmdop.adapters.launcher import Sandbox
from cmdop.adapters.sandbox import SandboxFilter, build_filter
from cmdop.core.calls import CallerKind
from cmdop.tools.base import ToolEnv
from cmdop.tools.execute_command import execute_command
from cmdop.tools.registry import run_tool
from cmdop.core.calls import ToolCall

pytestmark = pytest.mark.seccomp

PROBE_SRC = Path(__file__).resolve().parents[1] / "probes" / "syscall_probe.c"

BLOCKED = [
    "socket_raw", "socket_raw_flags", "socket_raw_hibits", "socket_packet", "socket_packet_hibits",
    "socket_sock_packet", "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount",
    "open_tree", "mount_setattr", "unshare", "setns", "clone_newuser", "clone_newnet", "clone_newns",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "bpf", "perf_event_open", "keyctl", "add_key",
    "request_key", "reboot", "swapon", "swapoff", "acct", "userfaultfd", "open_by_handle_at",
]


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    sb = Sandbox()
    if not sb.available:
        pytest.skip(f"seccomp unavailable: {sb.reason}")
    yield sb
    sb.close()


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build the syscall probe")
    out = tmp_path_factory.mktemp("probe") / "syscall_probe"
    subprocess.run([gcc, "-O1", "-o", str(out), str(PROBE_SRC)], check=True, capture_output=True)
    return str(out)


def run_in(sandbox: Sandbox, argv: list[str]) -> tuple[int, str]:
    """Run argv under the sandbox; (returncode, combined output)."""
    r, w = os.pipe()
    with open(os.devnull, "rb") as devnull:
        child = sandbox.spawn(argv, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, "/",
                              devnull.fileno(), w, w)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    rc = child.wait(30)
    assert rc is not None
    return rc, out


def parse(out: str) -> tuple[int, int]:
    m = re.search(r"ret=(-?\d+) errno=(\d+)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("name", BLOCKED)
def test_blocked_syscall_fails_with_eperm(sandbox: Sandbox, probe: str, name: str) -> None:
    rc, out = run_in(sandbox, [probe, name])
    assert rc == 0, out
    assert parse(out) == (-1, errno.EPERM), out


def test_probes_are_not_eperm_without_the_sandbox(probe: str) -> None:
    """Control: the probe's arguments do not fail with EPERM by themselves (we run as root)."""
    if os.geteuid() != 0:
        pytest.skip("the control needs root: unprivileged, the kernel itself answers EPERM")
    eperm_anyway = [n for n in BLOCKED
                    if parse(subprocess.run([probe, n], capture_output=True, text=True).stdout)[1] == errno.EPERM]
    assert eperm_anyway == []


def test_clone3_fails_with_enosys(sandbox: Sandbox, probe: str) -> None:
    rc, out = run_in(sandbox, [probe, "clone3"])
    assert parse(out) == (-1, errno.ENOSYS)


@pytest.mark.parametrize("abi", ["i386", "x32"])
def test_foreign_abi_kills_the_process(sandbox: Sandbox, probe: str, abi: str) -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("foreign-ABI probes are x86_64 only")
    rc, out = run_in(sandbox, [probe, abi])
    assert rc == -signal.SIGSYS, out
    assert "ret=" not in out


@pytest.mark.parametrize("name", ["clone_plain", "socket_inet"])
def test_ordinary_syscalls_still_work(sandbox: Sandbox, probe: str, name: str) -> None:
    rc, out = run_in(sandbox, [probe, name])
    assert parse(out) == (0, 0)


def test_filter_is_reported_in_proc_status(sandbox: Sandbox) -> None:
    rc, out = run_in(sandbox, ["/bin/sh", "-c", "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status"])
    assert "Seccomp:\t2" in out
    assert "NoNewPrivs:\t1" in out


def test_python_raw_socket_gets_permission_error(sandbox: Sandbox) -> None:
    code = ("import socket\ntry:\n socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)\n"
            "except PermissionError as e:\n print('EPERM', e.errno)\n")
    rc, out = run_in(sandbox, [sys.executable, "-c", code])
    assert rc == 0 and "EPERM 1" in out


def test_filter_builds_as_whole_bpf_instructions() -> None:
    filt = build_filter()
    if not filt.available:
        pytest.skip(filt.reason)
    assert filt.bpf and len(filt.bpf) % 8 == 0


# -- ordinary tooling keeps working ---------------------------------------------------------

ORDINARY = [
    ("bash", "bash -c 'echo $((6*7))'"),
    ("ls", "ls / >/dev/null && cat /proc/self/stat >/dev/null && echo ok | sort | uniq | wc -l"),
    ("git", "cd \"$T\" && git init -q r && cd r && git -c user.email=a@b -c user.name=a commit -q --allow-empty -m x && git log --oneline | wc -l"),
    ("grep", "printf 'a\\nb\\n' | grep -c b"),
    ("rg", "printf 'a\\nb\\n' | rg -c b"),
    ("python3", f"{sys.executable} -c 'import json, subprocess; print(subprocess.run([\"true\"]).returncode)'"),
    ("curl", "echo hello > \"$T/f\" && curl -sS \"file://$T/f\""),
    ("tar", "cd \"$T\" && echo x > a && tar czf a.tgz a && tar tzf a.tgz"),
    ("apt-get", "apt-get --simulate -qq check"),
    ("ps", "ps aux | head -2 | wc -l"),
    ("systemctl", "systemctl status --no-pager >/dev/null 2>&1; echo rc=$?"),
]


@pytest.mark.parametrize("tool,command", ORDINARY, ids=[t for t, _ in ORDINARY])
def test_ordinary_tooling_behaves_as_unsandboxed(sandbox: Sandbox, tmp_path: Path, tool: str,
                                                 command: str) -> None:
    if shutil.which(tool) is None and not tool.startswith("python"):
        pytest.skip(f"{tool} is not installed here")
    plain_dir, boxed_dir = tmp_path / "plain", tmp_path / "boxed"
    plain_dir.mkdir()
    boxed_dir.mkdir()
    plain = subprocess.run(["/bin/bash", "-c", command], capture_output=True, text=True,
                           env=dict(os.environ, T=str(plain_dir)), timeout=60)
    env = ToolEnv(home=str(tmp_path), cwd=str(tmp_path), sandbox=sandbox)
    os.environ["T"] = str(boxed_dir)
    try:
        boxed = execute_command({"command": command}, env)
    finally:
        del os.environ["T"]
    assert boxed["sandboxed"] is True
    assert boxed["exit_code"] == plain.returncode, (boxed, plain.stderr)
    assert boxed["stdout"] == plain.stdout
    assert "Bad system call" not in boxed["stderr"]


# -- no seccomp ------------------------------------------------------------------------------

def test_without_seccomp_remote_callers_are_refused_and_told_why(tmp_path: Path) -> None:
    sb = Sandbox(SandboxFilter(None, "kernel built without CONFIG_SECCOMP_FILTER"))
    for kind in (CallerKind.REMOTE, CallerKind.SELF):
        env = ToolEnv(home=str(tmp_path), cwd=str(tmp_path), caller_kind=kind, sandbox=sb)
        out = run_tool(ToolCall("execute_command", {"command": "echo hi"}), env)
        assert out["error"] == "sandbox_unavailable"
        assert "CONFIG_SECCOMP_FILTER" in out["message"]


def test_without_seccomp_local_callers_run_with_a_warning(tmp_path: Path) -> None:
    warnings: list[str] = []
    sb = Sandbox(SandboxFilter(None, "not Linux"))
    env = ToolEnv(home=str(tmp_path), cwd=str(tmp_path), caller_kind=CallerKind.LOCAL, sandbox=sb,
                  warn=warnings.append)
    out = run_tool(ToolCall("execute_command", {"command": "echo hi"}), env)
    assert out["stdout"] == "hi\n" and out["sandboxed"] is False
    assert warnings and "WITHOUT the seccomp sandbox" in warnings[0]


# -- the launcher as the daemon uses it ------------------------------------------------------

def test_concurrent_spawns_from_threads(tmp_path: Path) -> None:
    """The daemon runs calls in worker threads: one server serves them all, outputs not mixed."""
    import threading

    sb = Sandbox()
    if not sb.available:
        pytest.skip(f"seccomp unavailable: {sb.reason}")
    env = ToolEnv(home=str(tmp_path), cwd=str(tmp_path), sandbox=sb)
    bad: list[object] = []

    def worker(n: int) -> None:
        for i in range(5):
            out = execute_command({"command": f"echo {n}-{i}"}, env)
            if out["stdout"] != f"{n}-{i}\n" or not out["sandboxed"]:
                bad.append(out)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sb.close()
    assert bad == []


def test_a_dead_server_is_replaced(tmp_path: Path) -> None:
    sb = Sandbox()
    if not sb.available:
        pytest.skip(f"seccomp unavailable: {sb.reason}")
    env = ToolEnv(home=str(tmp_path), cwd=str(tmp_path), sandbox=sb)
    assert execute_command({"command": "echo a"}, env)["stdout"] == "a\n"
    assert sb._proc is not None
    os.kill(sb._proc.pid, signal.SIGKILL)
    sb._proc.wait()
    out = execute_command({"command": "echo b"}, env)
    sb.close()
    assert out["stdout"] == "b\n" and out["sandboxed"] is True
