"""`cmdop permissions watch` on a terminal says at once that it is waiting, and for which agent
(socket path and pid), before any ask arrives; piped (--json / no tty) it prints nothing extra."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from test_daemon_helpers import start_daemon, wait_for, write_policy

POLICY = "version: 1\nmode: default\nask_timeout_s: 20\nrules: []\n"


def test_watch_on_a_terminal_says_it_is_waiting_and_for_which_agent(cmdop_env) -> None:  # type: ignore[no-untyped-def]
    write_policy(cmdop_env, POLICY)
    d = start_daemon(cmdop_env)
    master, slave = pty.openpty()
    watch = subprocess.Popen([sys.executable, "-m", "cmdop", "permissions", "watch"],
                             env=cmdop_env.env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    try:
        def waiting_shown() -> bool:
            nonlocal seen
            seen += os.read(master, 65536)
            return b"\n" in seen
        wait_for(waiting_shown, 15, "the waiting line")
        first = seen.decode("utf-8", "replace").splitlines()[0]
        assert first.startswith("waiting for asks from the agent on ")
        assert str(cmdop_env.socket_path) in first and f"(pid {d.proc.pid})" in first
    finally:
        watch.terminate()
        watch.wait(timeout=15)
        os.close(master)
        assert d.stop() == 0


def test_watch_without_a_terminal_prints_no_waiting_line(cmdop_env) -> None:  # type: ignore[no-untyped-def]
    write_policy(cmdop_env, POLICY)
    d = start_daemon(cmdop_env)
    try:
        r = subprocess.run([sys.executable, "-m", "cmdop", "permissions", "watch", "--json"],
                           env=cmdop_env.env, input="", capture_output=True, text=True, timeout=30)
        assert r.returncode == 0
        assert "waiting for asks" not in r.stdout + r.stderr
    finally:
        assert d.stop() == 0
