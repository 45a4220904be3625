"""`cmdop permissions audit` as a user runs it: tail, filters, --json, --since, --follow, --verify."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest

from cmdop.adapters.audit_log import AuditLog


def _ts(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(timezone.utc) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fill(state_dir, n: int = 30, max_bytes: int = 10 * 1024 * 1024, start: int = 0) -> None:
    tools = ["execute_command", "read_file", "write_file"]
    decisions = ["allow", "deny", "ask_allowed", "ask_timeout"]
    with AuditLog(str(state_dir), max_bytes=max_bytes) as log:
        for i in range(start, start + n):
            log.append({"ts": _ts(timedelta(hours=-(start + n - i), minutes=30)), "decision": decisions[i % 4],
                        "tool": tools[i % 3], "operation": "", "target": f"target-{i}", "mode": "strict",
                        "source": "rule", "rule_id": "r-0123456789ab", "reason": "test", "input_digest": "",
                        "ask_ms": 0, "hostname": "box", "user": "alice", "i": i})


def _json_lines(out: str) -> list[dict]:
    return [json.loads(x) for x in out.splitlines()]


def test_tail_default_20_json_raw_lines(cmdop_env):
    _fill(cmdop_env.state_dir, 30, max_bytes=3000)
    r = cmdop_env.run("permissions", "audit", "--json")
    assert r.returncode == 0, r.stderr
    recs = _json_lines(r.stdout)
    assert [x["i"] for x in recs] == list(range(10, 30))  # across rotated files, in order
    stored = b"".join(p.read_bytes() for p in cmdop_env.state_dir.glob("audit.log*"))
    for line in r.stdout.splitlines():
        assert line.encode() in stored  # raw, exactly as written
    r = cmdop_env.run("--json", "permissions", "audit", "--tail", "3")
    assert [x["i"] for x in _json_lines(r.stdout)] == [27, 28, 29]


def test_table_is_the_default(cmdop_env):
    _fill(cmdop_env.state_dir, 5)
    r = cmdop_env.run("permissions", "audit", "--tail", "2")
    assert r.returncode == 0
    out = r.stdout.splitlines()
    assert out[0].split()[:3] == ["TIME", "DECISION", "TOOL"]
    assert len(out) == 3 and "target-4" in out[2] and "alice@box" in out[2]


def test_filters(cmdop_env):
    _fill(cmdop_env.state_dir, 30)
    r = cmdop_env.run("permissions", "audit", "--json", "--tool", "read_file", "--tail", "100")
    assert {x["tool"] for x in _json_lines(r.stdout)} == {"read_file"} and len(r.stdout.splitlines()) == 10
    r = cmdop_env.run("permissions", "audit", "--json", "--decision", "deny", "--tool", "read_file")
    recs = _json_lines(r.stdout)
    assert recs and all(x["decision"] == "deny" and x["tool"] == "read_file" for x in recs)
    r = cmdop_env.run("permissions", "audit", "--json", "--since", "5h")
    assert [x["i"] for x in _json_lines(r.stdout)] == [25, 26, 27, 28, 29]
    # records are 30 minutes off whole hours, so a since cut to the minute never lands on one
    since = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%MZ")
    r = cmdop_env.run("permissions", "audit", "--json", "--since", since)
    assert [x["i"] for x in _json_lines(r.stdout)] == [27, 28, 29]
    r = cmdop_env.run("permissions", "audit", "--json", "--since", since.replace("Z", ":00+00:00"))
    assert [x["i"] for x in _json_lines(r.stdout)] == [27, 28, 29]


def test_bad_values_are_usage_errors(cmdop_env):
    for args in (["--since", "yesterday"], ["--decision", "maybe"], ["--tail", "-1"]):
        r = cmdop_env.run("permissions", "audit", *args)
        assert r.returncode == 2, args
        assert r.stderr.startswith("cmdop: error: ") and "Traceback" not in r.stderr


def test_empty_log(cmdop_env):
    r = cmdop_env.run("permissions", "audit")
    assert r.returncode == 0 and r.stdout == ""
    r = cmdop_env.run("permissions", "audit", "--verify")
    assert r.returncode == 0 and r.stdout.strip() == "audit chain ok: 0 records in 0 files"


def test_verify_ok_and_broken(cmdop_env):
    _fill(cmdop_env.state_dir, 40, max_bytes=4000)
    r = cmdop_env.run("permissions", "audit", "--verify")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("audit chain ok: 40 records in ")
    r = cmdop_env.run("permissions", "audit", "--verify", "--json")
    assert json.loads(r.stdout)["records"] == 40
    p = cmdop_env.state_dir / "audit.log.1"
    p.write_bytes(p.read_bytes().replace(b'"deny"', b'"allow"', 1))
    r = cmdop_env.run("permissions", "audit", "--verify")
    assert r.returncode == 1
    assert "cmdop: error: audit.log.1:" in r.stderr and "Traceback" not in r.stderr


def test_follow_survives_rotation_and_ctrl_c_exits_0(cmdop_env):
    _fill(cmdop_env.state_dir, 3)
    proc = subprocess.Popen([sys.executable, "-m", "cmdop", "permissions", "audit", "--follow", "--json",
                             "--tail", "1"], env=cmdop_env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    got: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: [got.put(x) for x in proc.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        assert json.loads(got.get(timeout=15))["i"] == 2  # the tail first
        _fill(cmdop_env.state_dir, 60, max_bytes=4000, start=3)  # rotates several times
        seen = [json.loads(got.get(timeout=15))["i"] for _ in range(60)]
        assert seen == list(range(3, 63))
        assert len(list(cmdop_env.state_dir.glob("audit.log.?"))) >= 3
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        finally:
            proc.kill()
        reader.join(timeout=5)
        err = proc.stderr.read() if proc.stderr else ""
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()
    assert proc.returncode == 0 and err == ""
    assert os.path.exists(cmdop_env.state_dir / "audit.log")


def test_verify_names_a_truncated_line(cmdop_env):
    _fill(cmdop_env.state_dir, 5)
    p = cmdop_env.state_dir / "audit.log"
    p.write_bytes(p.read_bytes()[:-30])
    r = cmdop_env.run("permissions", "audit", "--verify")
    assert r.returncode == 1
    assert "cmdop: error: audit.log:5: " in r.stderr and "truncated" in r.stderr


def test_table_escapes_control_characters_from_callers(cmdop_env):
    with AuditLog(str(cmdop_env.state_dir)) as log:
        log.append({"ts": _ts(), "decision": "deny", "tool": "execute_command",
                    "target": "echo \x1b]0;pwned\x07\x1b[2J\nrm -rf x", "user": "eve\x1b[31m", "hostname": "h"})
    r = cmdop_env.run("permissions", "audit")
    assert r.returncode == 0
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "\\x1b]0;pwned\\x07" in r.stdout and "\\nrm -rf x" in r.stdout
    assert len(r.stdout.splitlines()) == 2


def test_tail_zero_and_since_stops_early(cmdop_env):
    _fill(cmdop_env.state_dir, 10)
    r = cmdop_env.run("permissions", "audit", "--json", "--tail", "0")
    assert r.returncode == 0 and r.stdout == ""
    # the library call behind --since: every record since the cut, the scan stops past it
    from cmdop.adapters import audit_reader
    from cmdop.core.audit import parse_since
    flt = audit_reader.Filter(since=parse_since("3h", datetime.now(timezone.utc)))
    assert [rec["i"] for _, rec in audit_reader.tail(str(cmdop_env.state_dir), None, flt)] == [7, 8, 9]


# -- --verify and the chain head ----------------------------------------------------------------

def _cut(n: int):  # type: ignore[no-untyped-def]
    def run(state) -> None:  # type: ignore[no-untyped-def]
        p = state / "audit.log"
        p.write_bytes(b"".join(x + b"\n" for x in p.read_bytes().splitlines()[:-n]))
    return run


def _truncate_mid_line(state) -> None:  # type: ignore[no-untyped-def]
    p = state / "audit.log"
    data = p.read_bytes()
    p.write_bytes(data[: sum(len(x) + 1 for x in data.splitlines()[:20]) + 9])


def _renumber(state) -> None:  # type: ignore[no-untyped-def]
    """Lines 6-10 dropped, the rest renumbered and re-chained, and a head written for it without
    the key (a forger who cannot read audit.key)."""
    from cmdop.core.audit import encode_head, encode_line, line_hash
    p = state / "audit.log"
    recs = _json_lines(p.read_text())
    recs = recs[:5] + recs[10:]
    out, prev = [], recs[0]["prev"]
    for seq, r in enumerate(recs, 1):
        line = encode_line(dict(r, seq=seq, prev=prev))
        out.append(line)
        prev = line_hash(line)
    p.write_bytes(b"".join(out))
    (state / "audit.head").write_bytes(encode_head(len(recs), 1, 0, prev, None))


def _renumber_keep_head(state) -> None:  # type: ignore[no-untyped-def]
    head = (state / "audit.head").read_bytes()
    _renumber(state)
    (state / "audit.head").write_bytes(head)


def _head_from_other(state) -> None:  # type: ignore[no-untyped-def]
    other = state.parent / "other-state"
    _fill(other, 30, start=100)
    (state / "audit.head").write_bytes((other / "audit.head").read_bytes())


VERIFY_FAILURES = [
    ("cut 1 line", _cut(1), "cmdop: error: audit.log ends at seq 29 but the chain head says 30: "
                            "1 line is missing at the end"),
    ("cut 12 lines", _cut(12), "cmdop: error: audit.log ends at seq 18 but the chain head says 30: "
                               "12 lines are missing at the end"),
    ("truncated mid-line", _truncate_mid_line,
     "cmdop: error: audit.log:21: truncated line (no newline at end); audit.log ends at seq 20 but "
     "the chain head says 30: 10 lines are missing at the end"),
    ("renumbered + forged head", _renumber, "cmdop: error: audit.head carries no MAC"),
    ("renumbered, head kept", _renumber_keep_head,
     "cmdop: error: audit.log ends at seq 25 but the chain head says 30: 5 lines are missing"),
    ("head deleted", lambda s: (s / "audit.head").unlink(),
     "cmdop: error: audit.head is missing but audit.log holds lines written with a chain head"),
    ("head from another log", _head_from_other, "cmdop: error: audit.head: its MAC does not match audit.key"),
]


@pytest.mark.parametrize("name,tamper,message", VERIFY_FAILURES, ids=[v[0] for v in VERIFY_FAILURES])
def test_verify_fails_on_a_tampered_end(cmdop_env, name, tamper, message):
    _fill(cmdop_env.state_dir, 30)
    tamper(cmdop_env.state_dir)
    r = cmdop_env.run("permissions", "audit", "--verify")
    assert r.returncode == 1, r.stdout
    assert r.stdout == "" and r.stderr.startswith(message), r.stderr
    assert "\nhint: " in r.stderr and "Traceback" not in r.stderr


def test_verify_says_where_the_head_is(cmdop_env):
    _fill(cmdop_env.state_dir, 30)
    r = cmdop_env.run("permissions", "audit", "--verify")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout == ("audit chain ok: 30 records in 1 files; chain head at the last line "
                        "(seq 30, audit.log)\n")
    r = cmdop_env.run("permissions", "audit", "--verify", "--json")
    assert json.loads(r.stdout) == {"ok": True, "records": 30, "files": 1, "warnings": [],
                                    "head": "chain head at the last line (seq 30, audit.log)"}
    # the state a crash between a line and its head write leaves: accepted, and said so
    head = (cmdop_env.state_dir / "audit.head").read_bytes()
    _fill(cmdop_env.state_dir, 1, start=30)
    (cmdop_env.state_dir / "audit.head").write_bytes(head)
    r = cmdop_env.run("permissions", "audit", "--verify")
    assert r.returncode == 0
    assert r.stdout.startswith("audit chain ok: 31 records in 1 files; chain head one line behind "
                               "(seq 30; seq 31 was written but the head not yet updated")


def test_verify_warns_about_a_log_from_before_chain_heads(cmdop_env):
    from cmdop.core.audit import GENESIS, encode_line, line_hash
    cmdop_env.state_dir.mkdir(parents=True)
    prev, out = GENESIS, []
    for i in range(4):
        line = encode_line({"ts": _ts(), "decision": "allow", "tool": "read_file", "i": i,
                            "seq": i + 1, "prev": prev})
        out.append(line)
        prev = line_hash(line)
    (cmdop_env.state_dir / "audit.log").write_bytes(b"".join(out))
    r = cmdop_env.run("permissions", "audit", "--verify")
    assert r.returncode == 0 and r.stdout == "audit chain ok: 4 records in 1 files\n"
    assert r.stderr.startswith('warning: no audit.head and no line carries "chain": 2: this log was '
                               "written before chain heads, so lines cut from its end cannot be detected")
    r = cmdop_env.run("permissions", "audit", "--verify", "--json")
    assert r.returncode == 0 and r.stderr == ""
    assert "written before chain heads" in json.loads(r.stdout)["warnings"][0]


def test_verify_refuses_a_key_others_could_read_or_replace(cmdop_env):
    """Found by a black-box pass: with audit.key at 0644 (anyone could have read it and forged
    the chain head) --verify said "audit chain ok"."""
    _fill(cmdop_env.state_dir, 5)
    key = cmdop_env.state_dir / "audit.key"
    assert cmdop_env.run("permissions", "audit", "--verify").returncode == 0
    key.chmod(0o644)
    r = cmdop_env.run("permissions", "audit", "--verify")
    assert r.returncode == 1 and "chain ok" not in r.stdout, r.stdout
    assert "audit.key" in r.stderr and "proves nothing" in r.stderr and "chmod 600" in r.stderr
    key.chmod(0o600)
    cmdop_env.state_dir.chmod(0o777)          # a directory others could swap the key in
    try:
        r = cmdop_env.run("permissions", "audit", "--verify")
        assert r.returncode == 1 and "chain ok" not in r.stdout and "chmod 700" in r.stderr, r.stderr
    finally:
        cmdop_env.state_dir.chmod(0o700)
