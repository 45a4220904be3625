"""The chain head (audit.head) against real files: what --verify must refuse at the end of the
live log (cut lines, truncation, a rewritten file with a recomputed chain, a deleted or foreign
head) and the states a crash or rotation leaves, which it must accept."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest

from cmdop.adapters import audit_reader
from cmdop.adapters.audit_log import AuditLog
from cmdop.core.audit import (GENESIS, HEAD_SIZE, HeadMac, encode_head, encode_line, head_mac_key,
                              line_hash, parse_head)
from cmdop.core.errors import AuditIntegrityError

REPO = Path(__file__).resolve().parents[2]
BIG = 10 * 1024 * 1024  # no rotation


def rec(i: int) -> dict[str, object]:
    return {"ts": "2026-04-27T10:15:30Z", "decision": "allow", "tool": "execute_command",
            "target": f"echo {i:04d}", "n": i}


def make(d: Path, n: int = 40, max_bytes: int = BIG, start: int = 0) -> None:
    with AuditLog(str(d), max_bytes=max_bytes) as log:
        for i in range(start, start + n):
            log.append(rec(i))


def records(p: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in p.read_bytes().splitlines()]


def relink(recs: list[dict[str, object]]) -> bytes:
    """What a forger writes: the records renumbered from the first one's seq, every prev
    recomputed, with the same encoder the writer uses."""
    out, prev, seq = [], recs[0]["prev"], recs[0]["seq"]
    assert isinstance(seq, int)
    for r in recs:
        line = encode_line(dict(r, seq=seq, prev=prev))
        out.append(line)
        prev, seq = line_hash(line), seq + 1
    return b"".join(out)


def forged_head(recs_bytes: bytes, key: bytes | None, gen: int = 1, base: int = 0) -> bytes:
    """A head naming the last line of `recs_bytes` (one file starting at `gen`)."""
    last = recs_bytes.splitlines()[-1]
    return encode_head(json.loads(last)["seq"], gen, base, line_hash(last),
                       HeadMac(head_mac_key(key)) if key is not None else None)


def verify_fails(d: Path, pattern: str) -> None:
    with pytest.raises(AuditIntegrityError, match=pattern):
        audit_reader.verify(str(d))


# -- the head file itself ------------------------------------------------------------------------

def test_head_names_the_last_line_and_is_private(tmp_path):
    make(tmp_path, 5)
    head_file = tmp_path / "audit.head"
    assert stat.S_IMODE(head_file.stat().st_mode) == 0o600
    assert head_file.stat().st_size == HEAD_SIZE
    head = parse_head(head_file.read_bytes())
    last = (tmp_path / "audit.log").read_bytes().splitlines()[-1]
    assert (head.seq, head.gen, head.base, head.hash) == (5, 1, 0, line_hash(last))
    assert all(r["chain"] == 2 for r in records(tmp_path / "audit.log"))
    seed = (tmp_path / "audit.key").read_bytes()  # created by the first append, for the MAC
    assert len(seed) == 32 and stat.S_IMODE((tmp_path / "audit.key").stat().st_mode) == 0o600
    assert head.mac.encode() == HeadMac(head_mac_key(seed)).hexdigest(head.body)
    r = audit_reader.verify_report(str(tmp_path))
    assert (r.records, r.files, r.warnings) == (5, 1, ())
    assert r.head == "chain head at the last line (seq 5, audit.log)"


def test_head_follows_rotation(tmp_path):
    with AuditLog(str(tmp_path), max_bytes=1500) as log:
        for i in range(40):
            log.append(rec(i))
            head = parse_head((tmp_path / "audit.head").read_bytes())
            live = records(tmp_path / "audit.log")
            assert (head.seq, head.gen) == (live[-1]["seq"], live[0]["seq"])
            assert audit_reader.verify_report(str(tmp_path)).head.startswith(
                f"chain head at the last line (seq {i + 1}, audit.log)")
    assert len(list(tmp_path.glob("audit.log.?"))) == 5


# -- tampering with the live file's end: each fails, naming the file and what is missing ------------

def cut_lines(n: int) -> Callable[[Path], None]:
    def run(d: Path) -> None:
        p = d / "audit.log"
        p.write_bytes(b"".join(x + b"\n" for x in p.read_bytes().splitlines()[:-n]))
    return run


def truncate_mid_line(d: Path) -> None:
    p = d / "audit.log"
    data = p.read_bytes()
    cut = sum(len(x) + 1 for x in data.splitlines()[:30]) + 17  # 17 bytes into line 31
    p.write_bytes(data[:cut])


def truncate_to_zero(d: Path) -> None:
    (d / "audit.log").write_bytes(b"")


def renumbered(d: Path) -> None:
    """Lines 10-25 removed, the rest renumbered and re-chained: every link holds."""
    recs = records(d / "audit.log")
    (d / "audit.log").write_bytes(relink(recs[:9] + recs[25:]))


def renumbered_with_unkeyed_head(d: Path) -> None:
    renumbered(d)
    (d / "audit.head").write_bytes(forged_head((d / "audit.log").read_bytes(), None))


def renumbered_with_head_under_another_key(d: Path) -> None:
    renumbered(d)
    (d / "audit.head").write_bytes(forged_head((d / "audit.log").read_bytes(), os.urandom(32)))


def edited_and_rechained(d: Path) -> None:
    """Same number of lines, one decision changed, the chain recomputed from there on."""
    recs = records(d / "audit.log")
    recs[4]["decision"] = "deny"
    (d / "audit.log").write_bytes(relink(recs))


def head_deleted(d: Path) -> None:
    (d / "audit.head").unlink()


def head_emptied(d: Path) -> None:
    (d / "audit.head").write_bytes(b"")


def head_garbage(d: Path) -> None:
    (d / "audit.head").write_bytes(b"x" * HEAD_SIZE)


def head_from_another_log(d: Path) -> None:
    other = d.parent / "other"
    make(other, 40, start=100)  # another log of the same length, other records
    shutil.copy(other / "audit.head", d / "audit.head")


def head_and_key_from_another_log(d: Path) -> None:
    other = d.parent / "other"
    make(other, 40, start=100)  # another log of the same length, other records
    for name in ("audit.head", "audit.key"):
        shutil.copy(other / name, d / name)


def key_deleted(d: Path) -> None:
    (d / "audit.key").unlink()


def lines_added_after_head(d: Path) -> None:
    """Two well-chained lines appended behind the writer's back (one alone looks exactly like
    the crash window and is accepted: see test_crash_window_head_one_line_behind)."""
    p = d / "audit.log"
    recs = records(p)
    more = [dict(recs[-1], n=90, prev=line_hash(p.read_bytes().splitlines()[-1]), seq=41),
            dict(recs[-1], n=91)]
    with open(p, "ab") as f:
        f.write(relink(more))


def head_restarted_by_a_new_writer(d: Path) -> None:
    (d / "audit.head").unlink()
    cut_lines(5)(d)
    make(d, 1, start=99)  # a fresh writer: links to the cut tail, starts a new head (base 35)


def head_with_wrong_gen(d: Path) -> None:
    """A correctly keyed head whose line is said to be in another file (files cut or joined)."""
    seed = (d / "audit.key").read_bytes()
    (d / "audit.head").write_bytes(forged_head((d / "audit.log").read_bytes(), seed, gen=7))


TAMPERING = [
    ("cut 1 line", cut_lines(1),
     r"^audit\.log ends at seq 39 but the chain head says 40: 1 line is missing at the end"),
    ("cut 16 lines", cut_lines(16),
     r"^audit\.log ends at seq 24 but the chain head says 40: 16 lines are missing at the end"),
    ("truncated mid-line", truncate_mid_line,
     r"^audit\.log:31: truncated line \(no newline at end\); audit\.log ends at seq 30 but the "
     r"chain head says 40: 10 lines are missing"),
    ("truncated to 0 bytes", truncate_to_zero,
     r"^audit\.log has no lines but the chain head says seq 40: 40 lines are missing"),
    ("renumbered, re-chained copy", renumbered,
     r"^audit\.log ends at seq 24 but the chain head says 40: 16 lines are missing"),
    ("renumbered copy + head without MAC", renumbered_with_unkeyed_head, r"^audit\.head carries no MAC"),
    ("renumbered copy + head under another key", renumbered_with_head_under_another_key,
     r"^audit\.head: its MAC does not match audit\.key"),
    ("edited line, chain recomputed", edited_and_rechained,
     r"^audit\.log:40: the last line \(seq 40\) differs from the one the chain head recorded"),
    ("head deleted", head_deleted,
     r"^audit\.head is missing but audit\.log holds lines written with a chain head \(from seq 1\)"),
    ("head emptied", head_emptied, r"^audit\.head is missing"),
    ("head overwritten", head_garbage, r"^audit\.head is not a chain head record"),
    ("head from another log", head_from_another_log, r"^audit\.head: its MAC does not match audit\.key"),
    ("head and key from another log", head_and_key_from_another_log,
     r"^audit\.log:40: the last line \(seq 40\) differs"),
    ("key deleted", key_deleted, r"^audit\.key is missing, so audit\.head cannot be authenticated"),
    ("2 lines added after the head", lines_added_after_head,
     r"^audit\.log goes on to seq 42 but the chain head says 40: 2 lines after seq 40 were not recorded"),
    ("head deleted, then a fresh writer", head_restarted_by_a_new_writer,
     r"^audit\.head was started again at seq 35 although lines from seq 1 were written with a chain head"),
    ("head puts the line in another file", head_with_wrong_gen,
     r"^audit\.log:40: seq 40 is in a file starting at seq 1, but the chain head put it in the "
     r"file starting at seq 7"),
]


@pytest.mark.parametrize("name,tamper,pattern", TAMPERING, ids=[t[0] for t in TAMPERING])
def test_verify_refuses_a_tampered_end(tmp_path, name, tamper, pattern):
    d = tmp_path / "state"
    make(d, 40)
    audit_reader.verify(str(d))
    tamper(d)
    verify_fails(d, pattern)


def test_cut_tail_across_rotation_names_the_rotated_file(tmp_path):
    make(tmp_path, 40, max_bytes=1500)
    live = tmp_path / "audit.log"
    n_live = len(live.read_bytes().splitlines())
    last_rotated = records(tmp_path / "audit.log.1")[-1]["seq"]
    live.write_bytes(b"")
    verify_fails(tmp_path, rf"^audit\.log is empty and audit\.log\.1 ends at seq {last_rotated} but the "
                           rf"chain head says 40: {n_live} lines? (is|are) missing at the end")


def test_unusable_key_gives_an_unauthenticated_head_until_fixed(tmp_path, caplog):
    make(tmp_path, 3)
    (tmp_path / "audit.key").chmod(0o644)  # refused as a secret others could read
    make(tmp_path, 2, start=3)
    assert "cannot use" in caplog.text and "audit.key" in caplog.text
    verify_fails(tmp_path, r"audit\.key is readable by other users .*proves nothing")
    (tmp_path / "audit.key").chmod(0o600)
    verify_fails(tmp_path, r"^audit\.head carries no MAC: the writer could not use audit\.key")
    make(tmp_path, 1, start=5)
    assert audit_reader.verify(str(tmp_path)) == (6, 1)


# -- states a crash or rotation leaves: accepted, and said which ------------------------------------

def crash_after_line(d: Path, max_bytes: int = BIG, rotate: bool = False) -> None:
    """The log as a crash between a line's write and its head write leaves it: the head of the
    append before. With `rotate`, that last append is the one that rotated the file."""
    with AuditLog(str(d), max_bytes=max_bytes) as log:
        for i in range(200):
            saved = (d / "audit.head").read_bytes() if i else b""
            before = (d / "audit.log.1").exists() and (d / "audit.log.1").stat().st_ino
            log.append(rec(i))
            rotated = (d / "audit.log.1").exists() and (d / "audit.log.1").stat().st_ino != before
            if i >= 20 and rotated == rotate:
                break
    (d / "audit.head").write_bytes(saved)


def test_crash_window_head_one_line_behind(tmp_path):
    crash_after_line(tmp_path)
    r = audit_reader.verify_report(str(tmp_path))
    assert r.records == 21 and r.warnings == ()
    assert r.head.startswith("chain head one line behind (seq 20; seq 21 was written but the head not yet updated")
    make(tmp_path, 1, start=50)  # the next append brings the head up to date
    assert audit_reader.verify_report(str(tmp_path)).head == "chain head at the last line (seq 22, audit.log)"


def test_crash_window_across_rotation(tmp_path):
    crash_after_line(tmp_path, max_bytes=1500, rotate=True)
    live = records(tmp_path / "audit.log")
    assert len(live) == 1  # the rotating append's line is alone in the new file
    head = parse_head((tmp_path / "audit.head").read_bytes())
    assert head.seq == live[0]["seq"] - 1 and head.gen == records(tmp_path / "audit.log.1")[0]["seq"]
    assert audit_reader.verify_report(str(tmp_path)).head.startswith("chain head one line behind")


def test_crash_mid_write_partial_line_is_a_warning_and_cut_by_the_next_append(tmp_path):
    make(tmp_path, 10)
    with open(tmp_path / "audit.log", "ab") as f:
        f.write(b'{"ts":"2026-04-27T10:15:30Z","deci')
    r = audit_reader.verify_report(str(tmp_path))
    assert r.records == 10 and r.head == "chain head at the last line (seq 10, audit.log)"
    assert r.warnings == ("audit.log:11: a partial last line, the write a crash cut short after seq 10; "
                          "the next append removes it",)
    make(tmp_path, 1, start=10)
    assert audit_reader.verify_report(str(tmp_path)).warnings == ()


def test_crash_before_the_first_head_write(tmp_path):
    """A writer died after its first line, before its first head write: no head, only the last
    line marked. Accepted with a warning; a second marked line makes it a deleted head."""
    legacy(tmp_path, 5)
    make(tmp_path, 1, start=5)
    (tmp_path / "audit.head").unlink()
    r = audit_reader.verify_report(str(tmp_path))
    assert r.records == 6 and "only the last line (seq 6) was written with one" in r.warnings[0]
    make(tmp_path, 1, start=6)
    assert audit_reader.verify_report(str(tmp_path)).head.startswith("chain head at the last line (seq 7")


def legacy(d: Path, n: int, lock_head: bool = False) -> None:
    """A log as writers before chain heads left it: no "chain" mark, no audit.head; with
    `lock_head`, their (seq, hash) head at the start of audit.lock."""
    d.mkdir(parents=True, exist_ok=True)
    out, prev = [], GENESIS
    for i in range(n):
        line = encode_line(dict(rec(i), seq=i + 1, prev=prev))
        out.append(line)
        prev = line_hash(line)
    (d / "audit.log").write_bytes(b"".join(out))
    if lock_head:
        (d / "audit.lock").write_bytes(b"%020d %s\n" % (n, prev.encode()))


def test_log_from_before_chain_heads_is_a_warning(tmp_path):
    legacy(tmp_path, 8)
    r = audit_reader.verify_report(str(tmp_path))
    assert (r.records, r.head) == (8, "")
    assert r.warnings[0].startswith('no audit.head and no line carries "chain": 2: this log was '
                                    "written before chain heads")
    # the old writers' head in audit.lock is still checked
    legacy(tmp_path / "b", 8, lock_head=True)
    audit_reader.verify(str(tmp_path / "b"))
    cut_lines(2)(tmp_path / "b")
    verify_fails(tmp_path / "b", r"the log ends at seq 6 but the writer appended up to seq 8")


def test_upgraded_log_starts_its_head_at_the_old_end(tmp_path):
    legacy(tmp_path, 8, lock_head=True)
    make(tmp_path, 3, start=8)
    head = parse_head((tmp_path / "audit.head").read_bytes())
    assert (head.seq, head.base) == (11, 8)
    r = audit_reader.verify_report(str(tmp_path))
    assert (r.records, r.warnings) == (11, ())
    cut_lines(3)(tmp_path)
    verify_fails(tmp_path, r"^audit\.log ends at seq 8 but the chain head says 11: 3 lines are missing")


def test_a_running_writer_shows_a_rollback_it_did_not_make(tmp_path):
    """Lines cut AND a genuine older head put back (a rollback) verify clean — the limit of a
    head kept beside the log — but a writer that is still running knows what it wrote: its next
    line links to that, so the gap shows from then on."""
    with AuditLog(str(tmp_path)) as log:
        for i in range(10):
            log.append(rec(i))
        old_log, old_head = (tmp_path / "audit.log").read_bytes(), (tmp_path / "audit.head").read_bytes()
        for i in range(10, 15):
            log.append(rec(i))
        (tmp_path / "audit.log").write_bytes(old_log)
        (tmp_path / "audit.head").write_bytes(old_head)
        assert audit_reader.verify(str(tmp_path)) == (10, 1)
        assert log.append(rec(15))["seq"] == 16
    verify_fails(tmp_path, r"audit\.log:11: seq 16 follows 10")


# -- concurrency: threads and processes keep the head right ------------------------------------------

def test_threads_keep_the_head_at_the_last_line(tmp_path):
    with AuditLog(str(tmp_path), max_bytes=20_000) as log:
        def run(t: int) -> None:
            for i in range(300):
                log.append(rec(t * 1000 + i))
        threads = [threading.Thread(target=run, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    r = audit_reader.verify_report(str(tmp_path))
    assert r.head == "chain head at the last line (seq 1800, audit.log)" and r.warnings == ()


TWO_PROCS = r"""
import sys, threading
from cmdop.adapters.audit_log import AuditLog
state, proc = sys.argv[1], int(sys.argv[2])
log = AuditLog(state, max_bytes=30_000, backups=40)
def run(t):
    for i in range(1000):
        log.append({"tool": "t", "id": f"{proc}-{t}-{i}"})
ts = [threading.Thread(target=run, args=(t,)) for t in range(3)]
[t.start() for t in ts]; [t.join() for t in ts]
log.close()
"""


def test_two_processes_keep_the_head_at_the_last_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCS, str(tmp_path), str(p)], env=env)
             for p in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    r = audit_reader.verify_report(str(tmp_path), backups=40)
    assert r.records == 6000 and r.files > 2
    assert r.head == "chain head at the last line (seq 6000, audit.log)" and r.warnings == ()
    head = parse_head((tmp_path / "audit.head").read_bytes())
    assert head.base == 0 and head.gen == records(tmp_path / "audit.log")[0]["seq"]
