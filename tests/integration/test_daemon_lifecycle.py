"""The real daemon as a subprocess: readiness, status, one daemon per socket, socket modes,
sd_notify/watchdog, hostile local clients, other uids refused, clean stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest

from test_daemon_helpers import start_daemon, wait_for, write_policy

from cmdop.daemon import protocol

GOOD_POLICY = """\
version: 1
mode: strict
ask_timeout_s: 2
rules: []
"""


@pytest.fixture
def daemon(cmdop_env):
    write_policy(cmdop_env, GOOD_POLICY)
    d = start_daemon(cmdop_env)
    yield d
    if d.proc.poll() is None:
        d.stop()
    assert "Traceback" not in d.log(), d.log()   # clients coming and going are not crashes


def test_status_online_pidfile_modes_and_clean_stop(cmdop_env, daemon):
    out = cmdop_env.run("agent", "status", "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["state"] == "ONLINE", st
    assert st["pid"] == daemon.proc.pid and st["mode"] == "strict"
    assert st["relay_connected"] is False and "counters" in st and st["started_at"]
    assert int((cmdop_env.state_dir / "daemon.pid").read_text()) == daemon.proc.pid
    sock = cmdop_env.socket_path
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
    human = cmdop_env.run("agent", "status")
    assert human.stdout.startswith("ONLINE (pid ")

    assert daemon.stop() == 0
    assert not sock.exists() and not (cmdop_env.state_dir / "daemon.pid").exists()
    out = cmdop_env.run("agent", "status", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "STOPPED"


def test_a_second_daemon_refuses_to_start(cmdop_env, daemon):
    second = cmdop_env.run("agent", "run", timeout=30)
    assert second.returncode == 1
    assert f"already running (pid {daemon.proc.pid})" in second.stderr
    with daemon.client() as c:  # the first one still owns its socket
        assert c.ping()["pid"] == daemon.proc.pid


def test_a_second_daemon_on_the_same_socket_with_another_state_dir_refuses(cmdop_env, daemon, tmp_path):
    other = cmdop_env.run("agent", "run", timeout=30, CMDOP_STATE_DIR=str(tmp_path / "other"))
    assert other.returncode == 1 and f"already running (pid {daemon.proc.pid})" in other.stderr
    with daemon.client() as c:
        assert c.ping()["pid"] == daemon.proc.pid


def test_a_stale_socket_and_pid_file_are_replaced(cmdop_env):
    write_policy(cmdop_env, GOOD_POLICY)
    sock_path = cmdop_env.socket_path
    sock_path.parent.mkdir(mode=0o700, parents=True)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(sock_path))
    dead.close()  # the file stays, nobody listens
    cmdop_env.state_dir.mkdir(parents=True)
    (cmdop_env.state_dir / "daemon.pid").write_text("999999\n")
    stale = cmdop_env.run("agent", "status", "--json")
    assert json.loads(stale.stdout)["state"] == "STOPPED" and "stale" in stale.stdout
    d = start_daemon(cmdop_env)
    try:
        assert "removing stale socket" in d.log()
    finally:
        assert d.stop() == 0


def test_sd_notify_ready_watchdog_stopping_in_order(cmdop_env, tmp_path):
    write_policy(cmdop_env, GOOD_POLICY)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(20)
    d = start_daemon(cmdop_env, extra_env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                           "WATCHDOG_USEC": "200000"}, wait=False)
    messages: list[str] = []

    def read_until(pred):
        while not pred():
            messages.append(listener.recv(4096).decode())

    try:
        read_until(lambda: sum("WATCHDOG=1" in m for m in messages) >= 3)
        d.stop()
        read_until(lambda: any("STOPPING=1" in m for m in messages))
    finally:
        if d.proc.poll() is None:
            d.stop()
        listener.close()
    assert d.proc.returncode == 0
    first_ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
    watchdogs = [i for i, m in enumerate(messages) if "WATCHDOG=1" in m]
    stopping = next(i for i, m in enumerate(messages) if "STOPPING=1" in m)
    assert all(first_ready < i for i in watchdogs)
    assert len([i for i in watchdogs if i < stopping]) >= 3
    assert f"MAINPID={d.proc.pid}" in messages[first_ready]
    assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in messages)
    # READY=1 means "serving": by the time it arrived the socket accepted connections
    assert messages.count(next(m for m in messages if "READY=1" in m)) == 1


def _raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def _read_frame(s: socket.socket) -> dict | None:
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return None if not buf else protocol.decode(buf[4:])
        buf += chunk
        if len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
            return protocol.decode(buf[4:4 + struct.unpack(">I", buf[:4])[0]])


def test_malformed_oversized_and_slow_clients_do_not_affect_others(daemon):
    path = daemon.socket_path
    slow = _raw(path)
    slow.sendall(struct.pack(">I", 100) + b'{"v":1')       # half a frame, then silence
    big = _raw(path)
    big.sendall(struct.pack(">I", protocol.MAX_FRAME + 1))
    assert _read_frame(big)["error"]["code"] == "too_large"
    assert big.recv(10) == b""                               # and dropped
    junk = _raw(path)
    junk.sendall(struct.pack(">I", 5) + b"hello")
    assert _read_frame(junk)["error"]["code"] == "bad_json"
    # a wrong version or op is answered, and the connection stays usable
    with daemon.client() as c:
        c.send({"v": 99, "id": 1, "op": "ping"})
        assert c.receive(10)["error"]["code"] == "bad_version"
        c.send({"v": 1, "id": 2, "op": "nope"})
        assert c.receive(10)["error"]["code"] == "bad_request"
        assert c.ping()["pid"] == daemon.proc.pid            # served while `slow` hangs
    for s in (slow, big, junk):
        s.close()
    with daemon.client() as c:
        assert c.status()["counters"]["dropped_clients"] >= 2


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("useradd"),
                    reason="needs root, setpriv and useradd to run a client under another uid")
def test_a_client_under_another_uid_is_refused_and_logged(daemon):
    # A real second uid. It also gets CAP_DAC_OVERRIDE (ambient), so the 0700 directory and the
    # 0600 socket do not stop it first: this exercises the SO_PEERCRED check itself.
    user = "cmdoptest"
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        # The other xdist worker may create it at the same moment: "already exists" (9) is fine.
        made = subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", user], capture_output=True, text=True)
        assert made.returncode in (0, 9), made.stderr
    client = (
        "import json,socket,struct,sys\n"
        "s=socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n"
        "b=json.dumps({'v':1,'id':1,'op':'ping'}).encode()\n"
        "try: s.sendall(struct.pack('>I',len(b))+b)\n"
        "except BrokenPipeError: pass  # refused before we could even ask\n"
        "d=b''\n"
        "while (c:=s.recv(4096)): d+=c\n"
        "print(d[4:].decode())\n"
    )
    out = subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
         "--inh-caps=+dac_override", "--ambient-caps=+dac_override",
         sys.executable, "-c", client, daemon.socket_path],
        capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["ok"] is False and answer["error"]["code"] == "forbidden"
    uid = int(subprocess.run(["id", "-u", user], capture_output=True, text=True).stdout)
    wait_for(lambda: f"uid {uid}" in daemon.log(), 10, "the refusal in the log")
    assert "refused local client" in daemon.log()
    with daemon.client() as c:
        assert c.status()["counters"]["refused_peers"] == 1


def test_json_logs_on_stderr(cmdop_env):
    write_policy(cmdop_env, GOOD_POLICY)
    d = start_daemon(cmdop_env, "--log-format", "json")
    assert d.stop() == 0
    lines = [json.loads(line) for line in d.log().splitlines() if line.strip()]
    assert any(x["msg"].startswith("agent ready") for x in lines)
    assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)


def test_sigint_also_stops_cleanly(daemon):
    time.sleep(0.1)
    assert daemon.stop(signal.SIGINT) == 0


def test_service_install_dry_run_prints_the_unit_and_steps(cmdop_env):
    out = cmdop_env.run("service", "install", "--user", "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["unit_path"].endswith("/.config/systemd/user/cmdop.service")
    assert "Type=notify" in plan["unit"] and "agent run" in plan["unit"]
    assert plan["steps"][0].startswith("loginctl enable-linger ")
    assert plan["steps"][-1] == "systemctl --user enable --now cmdop.service"
    assert not os.path.exists(plan["unit_path"])          # a dry run writes nothing
    text = cmdop_env.run("service", "uninstall", "--system", "--dry-run")
    assert "systemctl disable --now cmdop.service" in text.stdout
