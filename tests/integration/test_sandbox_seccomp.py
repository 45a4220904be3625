"""The seccomp sandbox, tested from the inside: probes run through the real launcher.

Each blocked syscall is tried by a small C probe (tests/probes/syscall_probe.c, compiled with gcc
into a temp dir) with arguments that are harmless when unfiltered; under the sandbox each must
fail with EPERM (clone3: ENOSYS so glibc falls back to the inspectable clone), and syscalls
through a foreign ABI (i386 `int 0x80`, x32) must kill the probe with SIGSYS.
Controls run the same probes unsandboxed (as root): none fails with EPERM there, and the ones
that are harmless to perform (raw/packet sockets, chroot("/"), fanotify_init, reading the
kernel log, kcmp, device nodes in a temp dir that the probe deletes at once) succeed, so a
refusal inside cannot come from the operation never working here.
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
    # raw IPv6 and every AF_PACKET type (AF_INET raw/SOCK_PACKET are the socket_* entries above)
    "socket_raw6", "socket_raw6_flags", "socket_raw6_hibits", "socket_sock_packet6",
    "socket_packet_raw", "socket_packet_raw_flags", "socket_packet_stream",
    "chroot", "fanotify_init", "syslog", "kcmp",
    # device nodes only (mode & S_IFMT is S_IFBLK or S_IFCHR); made in a temp dir
    "mknod_blk", "mknod_chr", "mknod_blk_hibits", "mknod_chr_hibits",
    "mknodat_blk", "mknodat_chr", "mknodat_blk_hibits", "mknodat_chr_hibits",
]

# Blocked probes that SUCCEED unsandboxed as root (harmless there: sockets are closed at once,
# chroot("/") changes nothing, the kernel log is only read, device nodes are made in a temp dir
# and unlinked by the probe). The rest of BLOCKED fail unsandboxed too, just not with EPERM.
SUCCEED_UNSANDBOXED = [
    "socket_raw", "socket_raw_flags", "socket_raw_hibits", "socket_packet", "socket_packet_hibits",
    "socket_sock_packet", "socket_raw6", "socket_raw6_flags", "socket_raw6_hibits",
    "socket_packet_raw", "socket_packet_raw_flags", "chroot", "fanotify_init", "syslog", "kcmp",
    "mknod_blk", "mknod_chr", "mknod_blk_hibits", "mknod_chr_hibits",
    "mknodat_blk", "mknodat_chr", "mknodat_blk_hibits", "mknodat_chr_hibits",
]

# Probes that must still succeed (ret=0) under the sandbox.
ALLOWED = [
    "clone_plain", "socket_inet", "socket_inet6", "socket_inet_dgram", "socket_unix",
    # netlink sockets are SOCK_RAW (or DGRAM): ip, ss, hostname -I, getifaddrs() need them
    "socket_netlink", "socket_netlink_plain", "socket_netlink_diag", "socket_netlink_dgram",
    # mknod of anything but a device node, and mkfifo (glibc: mknodat with S_IFIFO)
    "mknod_fifo", "mknod_reg", "mknod_reg_notype", "mknod_sock", "mknodat_fifo", "mknodat_reg",
    "mkfifo",
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


def probe_argv(probe: str, name: str, node_dir: Path) -> list[str]:
    """The mknod/mkfifo probes create (and remove) DIR/node: they get a directory to do it in."""
    return [probe, name, str(node_dir)] if name.startswith(("mknod", "mkfifo")) else [probe, name]


def parse(out: str) -> tuple[int, int]:
    m = re.search(r"ret=(-?\d+) errno=(\d+)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("name", BLOCKED)
def test_blocked_syscall_fails_with_eperm(sandbox: Sandbox, probe: str, tmp_path: Path,
                                          name: str) -> None:
    rc, out = run_in(sandbox, probe_argv(probe, name, tmp_path))
    assert rc == 0, out
    assert parse(out) == (-1, errno.EPERM), out
    assert os.listdir(tmp_path) == []   # no device node was made


def test_probes_are_not_eperm_without_the_sandbox(probe: str, tmp_path: Path) -> None:
    """Control: the probe's arguments do not fail with EPERM by themselves (we run as root)."""
    if os.geteuid() != 0:
        pytest.skip("the control needs root: unprivileged, the kernel itself answers EPERM")
    eperm_anyway = [n for n in BLOCKED
                    if parse(subprocess.run(probe_argv(probe, n, tmp_path), capture_output=True,
                                            text=True).stdout)[1] == errno.EPERM]
    assert eperm_anyway == []
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", SUCCEED_UNSANDBOXED)
def test_blocked_operation_succeeds_without_the_sandbox(probe: str, tmp_path: Path,
                                                        name: str) -> None:
    """Control: as root and unfiltered the very same call works (a device node of the right
    type is made in tmp_path and removed by the probe), so EPERM inside is the filter's."""
    if os.geteuid() != 0:
        pytest.skip("the control needs root (raw sockets, chroot, fanotify, mknod of devices)")
    out = subprocess.run(probe_argv(probe, name, tmp_path), capture_output=True, text=True).stdout
    ret, err = parse(out)
    assert ret >= 0 and err == 0, out
    assert os.listdir(tmp_path) == []


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


@pytest.mark.parametrize("name", ALLOWED)
def test_ordinary_syscalls_still_work(sandbox: Sandbox, probe: str, tmp_path: Path,
                                      name: str) -> None:
    rc, out = run_in(sandbox, probe_argv(probe, name, tmp_path))
    assert rc == 0 and parse(out) == (0, 0), out
    assert os.listdir(tmp_path) == []   # the probe removed what it made


def test_shell_mknod_refuses_devices_but_makes_fifos(sandbox: Sandbox, tmp_path: Path) -> None:
    """coreutils mkfifo/mknod inside; the same script outside (as root) makes the devices."""
    if shutil.which("mknod") is None or shutil.which("mkfifo") is None:
        pytest.skip("coreutils mknod/mkfifo are not installed here")
    script = ('cd "$1" && mkfifo f && test -p f && mknod p p && test -p p && echo fifos-ok; '
              'mknod b b 0 0; echo blk=$?; mknod c c 1 3; echo chr=$?; '
              'test -b b && echo blk-node; test -c c && echo chr-node; rm -f f p b c')
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    rc, out = run_in(sandbox, ["/bin/sh", "-c", script, "sh", str(inside)])
    assert "fifos-ok" in out and "blk=1" in out and "chr=1" in out, out
    assert "Operation not permitted" in out and "-node" not in out, out
    if os.geteuid() == 0:
        plain = subprocess.run(["/bin/sh", "-c", script, "sh", str(outside)], capture_output=True,
                               text=True, timeout=30)
        assert "fifos-ok" in plain.stdout and "blk=0" in plain.stdout and "chr=0" in plain.stdout, plain
        assert "blk-node" in plain.stdout and "chr-node" in plain.stdout, plain
    assert os.listdir(inside) == [] and os.listdir(outside) == []


NETWORK_TOOLS = [("ip", "ip addr"), ("ip", "ip route"), ("ss", "ss -tlnp"), ("hostname", "hostname -I")]


@pytest.mark.parametrize("tool,command", NETWORK_TOOLS, ids=[c for _, c in NETWORK_TOOLS])
def test_netlink_tools_work_inside(sandbox: Sandbox, tmp_path: Path, tool: str, command: str) -> None:
    """These talk to the kernel over AF_NETLINK SOCK_RAW sockets, which the raw-socket rules
    must leave alone (`ss` even exits 0 without netlink, so its stderr is checked too)."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed here (Debian: apt-get install iproute2 / hostname)")
    plain = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=30)
    assert plain.returncode == 0 and plain.stdout.strip(), plain   # the tool works here at all
    env = ToolEnv(home=str(tmp_path), cwd=str(tmp_path), sandbox=sandbox)
    boxed = execute_command({"command": command}, env)
    assert boxed["sandboxed"] is True
    assert boxed["exit_code"] == 0, boxed
    assert boxed["stdout"].strip(), boxed
    assert "Operation not permitted" not in boxed["stderr"], boxed
    assert "Cannot open netlink socket" not in boxed["stdout"] + boxed["stderr"], boxed


def test_filter_table_has_the_new_entries() -> None:
    from cmdop.adapters import sandbox as sb

    blocked = {n for group in sb.BLOCKED_SYSCALLS.values() for n in group}
    assert {"chroot", "fanotify_init", "syslog", "kcmp"} <= blocked
    # argument rules only: blocking these outright would break mkfifo, netlink, AF_UNIX pairs
    assert not {"mknod", "mknodat", "socket", "socketpair"} & blocked
    domains = {d for d, _ in sb.SOCKET_RULES}
    assert domains == {sb.AF_PACKET, sb.AF_INET, sb.AF_INET6}
    assert (sb.AF_PACKET, None) in sb.SOCKET_RULES


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


def test_a_command_that_kills_its_server_does_not_cost_the_next_one(tmp_path: Path) -> None:
    """Found in CI: a command ran `kill -9 $PPID`; its report ended while the dying server's
    control socket still took a request, so the next command got "sandbox server did not
    answer". The next command now runs on a fresh server, every time. (Under load the command
    can even kill its server before the server reports its pid: that call says so.)"""
    sb = Sandbox()
    if not sb.available:
        pytest.skip(f"seccomp unavailable: {sb.reason}")
    env = ToolEnv(home=str(tmp_path), cwd=str(tmp_path), sandbox=sb)
    failed: list[object] = []
    servers: set[int] = set()
    for i in range(25):
        assert sb._proc is not None or i == 0
        if sb._proc is not None:
            servers.add(sb._proc.pid)
        try:
            execute_command({"command": "kill -9 $PPID"}, env)
        except OSError as exc:   # it may kill the server before the server reports its pid
            assert "ended before it reported" in str(exc)
        out = execute_command({"command": f"echo {i}"}, env)
        if out.get("stdout") != f"{i}\n" or out.get("sandboxed") is not True:
            failed.append(out)
    sb.close()
    assert failed == []
    assert len(servers) >= 24          # each kill really took a server down


def test_a_report_cut_by_a_dying_server_waits_for_it_before_the_next_spawn() -> None:
    """The CI race, made deterministic: a dying server has closed a child's report socket but
    not yet its control socket. The child's wait must reap that server and drop its control
    socket, so the next spawn cannot be sent into it."""
    import socket as socketlib

    from cmdop.adapters.launcher import SandboxedChild

    sb = Sandbox(SandboxFilter(None, "not needed"))
    dying = subprocess.Popen(["sleep", "0.3"])           # still exiting when the report ends
    ctl, server_end = socketlib.socketpair(socketlib.AF_UNIX, socketlib.SOCK_SEQPACKET)
    sb._proc, sb._ctl = dying, ctl
    mine, theirs = socketlib.socketpair(socketlib.AF_UNIX, socketlib.SOCK_SEQPACKET)
    theirs.close()
    child = SandboxedChild(pid=1, _reply=mine, _server_lost=lambda: sb.server_lost(dying))
    assert child.wait(5) == -signal.SIGKILL
    assert dying.poll() is not None                       # reaped before wait() returned
    assert sb._ctl is None and sb._proc is None           # the next spawn starts a fresh one
    server_end.close()
