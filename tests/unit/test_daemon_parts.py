"""Small daemon pieces: the approver's escaping, status classification, sd_notify timing,
peer policy and the task supervisor."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import trio

from cmdop.cli.approvals import visible
from cmdop.daemon import status
from cmdop.daemon.local_server import peer_allowed
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
def test_status_reports_the_live_daemons_state(tmp_path, written, policy_ok, expected):
    pid_file, status_file = str(tmp_path / "daemon.pid"), str(tmp_path / "daemon.status")
    (tmp_path / "daemon.pid").write_text(f"{os.getpid()}\n")
    assert status.classify(pid_file, status_file)["state"] == "STARTING"
    (tmp_path / "daemon.status").write_text(json.dumps(
        {"pid": os.getpid(), "state": written, "policy_ok": policy_ok, "audit_ok": True}))
    out = status.classify(pid_file, status_file)
    assert out["state"] == expected
    if not policy_ok:
        assert "policy" in out["detail"]


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
