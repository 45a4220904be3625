"""Small daemon pieces: the approver's escaping, status classification, sd_notify timing,
peer policy (uid, and seccomp confinement read from /proc) and the task supervisor."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
import trio

from cmdop.adapters import peer_process
from cmdop.adapters.peer_process import SeccompState, parse_seccomp_status
from cmdop.cli.approvals import visible
from cmdop.daemon import status
from cmdop.daemon.local_server import peer_allowed, peer_confinement_allowed
from cmdop.daemon.notify import watchdog_interval
from cmdop.daemon.supervisor import supervise


@pytest.mark.parametrize("raw, shown", [
    ("ls -la", "ls -la"),
    ("echo \x1b[2J\x1b]0;pwned\x07", "echo \\x1b[2J\\x1b]0;pwned\\x07"),
    ("rm x\u202e\u2066txt.exe", "rm x<U+202E><U+2066>txt.exe"),
    ("a\u200bb\u200dc\ufeffd\u2060", "a<U+200B>b<U+200D>c<U+FEFF>d<U+2060>"),
    ("line1\nline2\rX\tY", "line1\\x0aline2\\x0dX\\x09Y"),
    ("c1\x9b31m", "c1\\x9b31m"),
    ("back\\x1b", "back\\\\x1b"),
    ("nbsp\u00a0shy\u00ad", "nbsp<U+00A0>shy<U+00AD>"),
    ("héllo 日本", "héllo 日本"),
])
def test_visible_shows_every_invisible_or_terminal_character(raw, shown):
    assert visible(raw) == shown


def test_visible_output_never_contains_control_or_format_characters():
    import unicodedata
    everything = "".join(chr(c) for c in range(0, 0x3000) if not 0xD800 <= c <= 0xDFFF)
    out = visible(everything)
    assert not [c for c in out if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None


def test_peer_policy_is_same_uid_or_root():
    assert peer_allowed(1000, 1000) and peer_allowed(0, 1000) and peer_allowed(0, 0)
    assert not peer_allowed(1001, 1000) and not peer_allowed(1001, 0)


def _sc(mode: int, filters: int | None) -> SeccompState:
    return SeccompState(mode=mode, filters=filters)


@pytest.mark.parametrize("peer, own, allowed", [
    # an operator's shell: no more filters than the agent
    (_sc(0, 0), _sc(0, 0), True),
    (_sc(0, 0), _sc(2, 1), True),          # agent under systemd's SystemCallFilter
    (_sc(2, 1), _sc(2, 1), True),          # both in the same container
    (_sc(2, 2), _sc(2, 3), True),
    # a command the agent ran: at least one filter more than the agent
    (_sc(2, 1), _sc(0, 0), False),
    (_sc(2, 2), _sc(2, 1), False),         # the sandbox on top of systemd's filter
    (_sc(2, 5), _sc(2, 1), False),         # and its children, which may stack more
    (_sc(1, 0), _sc(0, 0), False),         # strict mode is tighter than anything
    # unknown is refused (fail closed)
    (None, _sc(0, 0), False),
    (_sc(0, 0), None, False),
    (None, None, False),
    # kernels before 5.9 give no count: only an unfiltered peer is known to be no more confined
    (_sc(0, None), _sc(0, None), True),
    (_sc(0, None), _sc(2, None), True),
    (_sc(2, None), _sc(0, None), False),
    (_sc(2, None), _sc(2, None), False),
])
def test_peer_confinement_refuses_peers_more_confined_than_the_agent(peer, own, allowed):
    assert peer_confinement_allowed(peer, own) is allowed


def test_seccomp_status_parsing():
    text = "Name:\tsh\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t3\nSpeculation_Store_Bypass:\tx\n"
    assert parse_seccomp_status(text) == SeccompState(2, 3)
    assert parse_seccomp_status("Seccomp:\t0\n") == SeccompState(0, None)     # kernel < 5.9
    assert parse_seccomp_status("Name:\tsh\n") is None                       # no mode: unknown
    assert parse_seccomp_status("Seccomp:\tx\nSeccomp_filters:\t1\n") is None
    assert parse_seccomp_status("Seccomp:\t2\nSeccomp_filters:\tjunk\n") is None
    assert parse_seccomp_status("Seccomp:\t2\nSeccomp_filters:\t-1\n") is None


def test_reading_seccomp_fails_closed_for_processes_that_cannot_be_read():
    assert peer_process.read_seccomp("self") is not None
    assert peer_process.read_seccomp(0) is None          # SO_PEERCRED's "not in our pid namespace"
    assert peer_process.read_seccomp(-1) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert peer_process.read_seccomp(dead.pid) is None


def test_a_live_peers_seccomp_is_read_through_its_pidfd():
    import socket

    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        fds_before = len(os.listdir("/proc/self/fd"))
        found = peer_process.peer_seccomp(a, os.getpid())
        assert found.state == peer_process.read_seccomp("self")
        assert len(os.listdir("/proc/self/fd")) == fds_before     # the pidfd was closed
        if found.pidfd_supported:              # Linux >= 6.5
            assert found.pinned and found.why == ""


def test_a_peer_that_exited_before_the_check_is_unknown(tmp_path):
    import socket

    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    code = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, path], check=True, timeout=30)
    conn, _ = listener.accept()           # the peer connected and is gone (reaped)
    with listener, conn:
        pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        fds_before = len(os.listdir("/proc/self/fd"))
        found = peer_process.peer_seccomp(conn, pid)
        assert found.state is None and found.why
        assert len(os.listdir("/proc/self/fd")) == fds_before    # no pidfd leaked


def test_without_so_peerpidfd_the_pid_alone_is_used(monkeypatch):
    import socket

    monkeypatch.setattr(peer_process, "peer_pidfd", lambda sock: None)
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        found = peer_process.peer_seccomp(a, os.getpid())
        assert found.state == peer_process.read_seccomp("self")
        assert not found.pinned and not found.pidfd_supported


def test_pidfd_exited_tells_a_live_process_from_a_dead_one():
    if not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd_open")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    fd = os.pidfd_open(child.pid)
    try:
        assert not peer_process.pidfd_exited(fd)
        child.kill()
        child.wait()
        assert peer_process.pidfd_exited(fd)
    finally:
        os.close(fd)


def test_status_says_stopped_for_missing_or_stale_pid(tmp_path):
    pid_file, status_file = str(tmp_path / "daemon.pid"), str(tmp_path / "daemon.status")
    assert status.classify(pid_file, status_file)["state"] == "STOPPED"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "daemon.pid").write_text(f"{dead.pid}\n")
    out = status.classify(pid_file, status_file)
    assert out["state"] == "STOPPED" and out["stale"] and "stale" in out["detail"]


@pytest.mark.parametrize("written, policy_ok, expected", [
    ("starting", True, "STARTING"), ("online", True, "ONLINE"), ("degraded", False, "DEGRADED"),
])
def test_status_reports_the_live_daemons_state(tmp_path, monkeypatch, written, policy_ok, expected):
    monkeypatch.setattr(status, "_is_cmdop", lambda pid: True)     # this process plays the agent
    pid_file, status_file = str(tmp_path / "daemon.pid"), str(tmp_path / "daemon.status")
    (tmp_path / "daemon.pid").write_text(f"{os.getpid()}\n")
    assert status.classify(pid_file, status_file)["state"] == "STARTING"
    (tmp_path / "daemon.status").write_text(json.dumps(
        {"pid": os.getpid(), "state": written, "policy_ok": policy_ok, "audit_ok": True}))
    out = status.classify(pid_file, status_file)
    assert out["state"] == expected
    if not policy_ok:
        assert "policy" in out["detail"]


def test_status_names_a_credential_the_relay_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(status, "_is_cmdop", lambda pid: True)
    pid_file, status_file = str(tmp_path / "daemon.pid"), str(tmp_path / "daemon.status")
    (tmp_path / "daemon.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "daemon.status").write_text(json.dumps(
        {"pid": os.getpid(), "state": "degraded", "policy_ok": True, "audit_ok": True,
         "relay": {"state": "backoff", "refused": True, "last_error": "API key revoked"}}))
    out = status.classify(pid_file, status_file)
    assert out["state"] == "DEGRADED"
    assert out["detail"] == "relay refused this agent's credential: API key revoked"


@pytest.mark.parametrize("pid_text,expected", [
    ("garbage\n", "holds no pid"),                        # was "no pid file"
    ("1\n", "pid 1 is another program now"),              # was STARTING for as long as pid 1 lives
])
def test_status_names_an_odd_pid_file_stale(tmp_path, pid_text, expected):
    """Found by a black-box pass."""
    pid_file, status_file = str(tmp_path / "daemon.pid"), str(tmp_path / "daemon.status")
    (tmp_path / "daemon.pid").write_text(pid_text)
    out = status.classify(pid_file, status_file)
    assert out["state"] == "STOPPED" and out.get("stale") and expected in out["detail"], out


@pytest.mark.parametrize("layout, expected", [
    ("none", "no agent has run with this state dir yet"),   # was "cannot read ... (run as its owner)"
    ("dir", "no pid file"),
    ("closed", "cannot read the state dir"),
])
def test_status_tells_a_first_run_from_a_state_dir_it_cannot_read(tmp_path, monkeypatch, layout,
                                                                  expected):
    """A new user's first `agent status` (no state dir yet) was told to run as its owner."""
    state = tmp_path / "state"
    if layout != "none":
        state.mkdir(mode=0o700)
    if layout == "closed":  # (root may read any directory: stand in for the refused access)
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: path != str(state) and real_access(path, mode))
    out = status.classify(str(state / "daemon.pid"), str(state / "daemon.status"))
    assert out["state"] == "STOPPED" and expected in out["detail"], out


def test_supervisor_restarts_a_crashing_task_and_stops_when_it_returns(caplog):
    runs = []
    crashes: dict[str, int] = {}

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")

    trio.run(lambda: supervise("flaky", flaky, initial=0.001, crashes=crashes))
    assert len(runs) == 3 and crashes == {"flaky": 2}
    assert "task flaky crashed" in caplog.text


def test_a_live_daemon_whose_status_is_not_refreshed_is_degraded(tmp_path):
    pid_file, status_file = str(tmp_path / "daemon.pid"), str(tmp_path / "daemon.status")
    (tmp_path / "daemon.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "daemon.status").write_text(json.dumps(
        {"pid": os.getpid(), "state": "online", "policy_ok": True, "audit_ok": True,
         "refresh_s": 10, "updated_at": "2020-01-01T00:00:00Z"}))
    out = status.classify(pid_file, status_file)
    assert out["state"] == "DEGRADED" and "not refreshed" in out["detail"]


@pytest.mark.parametrize("make,why", [
    (lambda p: p.write_text("precious"), "not a socket"),
    (lambda p: p.mkdir(), "not a socket"),
])
def test_the_socket_path_never_replaces_what_is_not_a_socket(tmp_path, make, why) -> None:
    """CMDOP_SOCKET_PATH pointed at a file by mistake: the agent refused to start would be
    fine; deleting the file ("removing stale socket") was not."""
    from cmdop.core.errors import DaemonError
    from cmdop.daemon.local_server import bind_listener

    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    target = d / "agent.sock"
    make(target)
    with pytest.raises(DaemonError, match=why):
        bind_listener(str(target))
    assert target.exists() and (target.is_dir() or target.read_text() == "precious")


def test_a_socket_path_too_long_is_one_clear_error(tmp_path) -> None:
    from cmdop.core.errors import DaemonError
    from cmdop.daemon.local_server import bind_listener

    d = tmp_path / ("x" * 100)
    d.mkdir(mode=0o700)
    with pytest.raises(DaemonError, match="too long") as err:
        bind_listener(str(d / "agent.sock"))
    assert "CMDOP_SOCKET_PATH" in (err.value.hint or "")


def test_a_stale_socket_is_still_replaced(tmp_path) -> None:
    import socket as socketlib

    from cmdop.daemon.local_server import bind_listener

    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    path = str(d / "agent.sock")
    old = socketlib.socket(socketlib.AF_UNIX)
    old.bind(path)
    old.close()                      # nobody answers there now
    sock = bind_listener(path)
    sock.close()


def test_a_socket_someone_listens_on_is_not_taken(tmp_path) -> None:
    """Found by a black-box pass: a live listener that does not answer (a hung agent, another
    program) lost its socket as "stale"."""
    import socket as socketlib

    from cmdop.core.errors import DaemonError
    from cmdop.daemon.local_server import bind_listener

    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    path = str(d / "agent.sock")
    silent = socketlib.socket(socketlib.AF_UNIX)
    silent.bind(path)
    silent.listen(8)
    try:
        with pytest.raises(DaemonError, match="does not answer as a cmdop agent"):
            bind_listener(path)
        assert os.path.exists(path)
    finally:
        silent.close()
