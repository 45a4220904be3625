"""The audit writer against real files: rotation, seals, chain, concurrency, disk full, tampering."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmdop.adapters import audit_reader
from cmdop.adapters.audit_log import AuditLog
from cmdop.core.audit import GENESIS, line_hash
from cmdop.core.errors import AuditIntegrityError, AuditWriteError

REPO = Path(__file__).resolve().parents[2]


def rec(i: int, pad: str = "") -> dict[str, object]:
    return {"ts": "2026-04-27T10:15:30Z", "decision": "allow", "tool": "execute_command",
            "target": f"echo {i:04d}{pad}", "n": i}


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_first_lines_chain_modes(tmp_path):
    state = tmp_path / "state"
    with AuditLog(str(state)) as log:
        a = log.append(rec(1))
        b = log.append(rec(2))
    assert (a["seq"], a["prev"]) == (1, GENESIS)
    raw = lines(state / "audit.log")
    assert b["seq"] == 2 and b["prev"] == line_hash(raw[0])
    assert [json.loads(x) for x in raw] == [a, b]
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "audit.log").st_mode) == 0o600
    assert audit_reader.verify(str(state)) == (2, 1)


def test_rotation_at_the_byte_boundary(tmp_path):
    one = len(json.dumps(dict(rec(0), seq=1, prev=GENESIS, chain=2), separators=(",", ":"))) + 1
    with AuditLog(str(tmp_path), max_bytes=one * 3, backups=2) as log:
        for i in range(3):
            log.append(rec(i))
        assert not (tmp_path / "audit.log.1").exists()
        assert (tmp_path / "audit.log").stat().st_size == one * 3  # exactly full, not rotated
        log.append(rec(3))
        assert (tmp_path / "audit.log.1").stat().st_size == one * 3
        assert len(lines(tmp_path / "audit.log")) == 1
        for i in range(4, 12):
            log.append(rec(i))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.head", "audit.key", "audit.lock", "audit.log", "audit.log.1",
                     "audit.log.1.sig", "audit.log.2", "audit.log.2.sig", "audit.pub"]
    for name in ("audit.head", "audit.key", "audit.log.1", "audit.log.1.sig"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    seqs = [json.loads(x)["seq"] for n in ("audit.log.2", "audit.log.1", "audit.log") for x in lines(tmp_path / n)]
    assert seqs[0] > 1 and seqs == list(range(seqs[0], 13))  # the oldest file was dropped
    assert audit_reader.verify(str(tmp_path), backups=2) == (len(seqs), 3)


def test_chain_continues_across_rotation_and_reopen(tmp_path):
    with AuditLog(str(tmp_path), max_bytes=2000) as log:
        for i in range(30):
            log.append(rec(i))
    with AuditLog(str(tmp_path), max_bytes=2000) as log:  # a new process would start like this
        out = log.append(rec(30))
    assert out["seq"] == 31
    assert audit_reader.verify(str(tmp_path), backups=5)[0] > 0


def test_threads_and_processes_50k_records(tmp_path):
    """8 threads in 2 processes write 50k records while rotating: each present exactly once."""
    script = r"""
import sys, threading
from cmdop.adapters.audit_log import AuditLog
state, proc = sys.argv[1], int(sys.argv[2])
log = AuditLog(state, max_bytes=1 << 20, backups=40)
def run(t):
    for i in range(6250):
        log.append({"tool": "t", "id": f"{proc}-{t}-{i}", "target": "x" * (i % 50)})
ts = [threading.Thread(target=run, args=(t,)) for t in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
log.close()
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(p)], env=env) for p in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    ids: list[str] = []
    seqs: list[int] = []
    for n in range(40, 0, -1):
        p = tmp_path / f"audit.log.{n}"
        if p.exists():
            assert p.stat().st_size <= 1 << 20
            for line in lines(p):
                obj = json.loads(line)
                ids.append(obj["id"])
                seqs.append(obj["seq"])
    for line in lines(tmp_path / "audit.log"):
        obj = json.loads(line)
        ids.append(obj["id"])
        seqs.append(obj["seq"])
    assert len(ids) == 50_000 and len(set(ids)) == 50_000
    assert seqs == list(range(1, 50_001))
    assert audit_reader.verify(str(tmp_path), backups=40)[0] == 50_000


def test_threads_in_one_process(tmp_path):
    with AuditLog(str(tmp_path), max_bytes=50_000) as log:
        def run(t: int) -> None:
            for i in range(500):
                log.append(rec(t * 1000 + i))
        threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert audit_reader.verify(str(tmp_path), backups=5)[0] > 0


DISK_FULL = r"""
import os, resource, signal, sys, json
from cmdop.adapters.audit_log import AuditLog
from cmdop.core.errors import AuditWriteError
state = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # so write() fails with EFBIG instead of killing us
log = AuditLog(state)
log.append({"n": 0})
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(state + "/audit.log") + 1000, hard))
ok = 0
err = ""
try:
    for i in range(1, 1000):
        log.append({"n": i, "pad": "p" * 97})
        ok += 1
except AuditWriteError as exc:
    err = str(exc)
size_full = os.path.getsize(state + "/audit.log")
with open(state + "/audit.log", "rb") as f:
    whole = f.read().endswith(b"\n")
try:
    log.append({"n": "again", "pad": "p" * 97})
    still_failing = False
except AuditWriteError:
    still_failing = True
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))   # the disk has room again
log.append({"n": "recovered"})
log.close()
print(json.dumps({"ok": ok, "err": err, "whole": whole, "still": still_failing, "size": size_full}))
"""


def test_disk_full_reports_failure_leaves_no_partial_line_and_recovers(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", DISK_FULL, str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] >= 1 and "cannot write audit line" in out["err"]
    assert out["whole"] and out["still"]
    recs = [json.loads(x) for x in lines(tmp_path / "audit.log")]
    assert [x["n"] for x in recs] == list(range(out["ok"] + 1)) + ["recovered"]
    assert audit_reader.verify(str(tmp_path)) == (out["ok"] + 2, 1)


def test_unwritable_state_dir_raises_audit_write_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    log = AuditLog(str(blocker / "state"))
    with pytest.raises(AuditWriteError):
        log.append(rec(1))
    log.close()
    with pytest.raises(AuditWriteError, match="closed"):
        log.append(rec(1))


def test_partial_line_from_a_crash_is_cut_before_the_next_append(tmp_path):
    with AuditLog(str(tmp_path)) as log:
        log.append(rec(1))
    with open(tmp_path / "audit.log", "ab") as f:
        f.write(b'{"half":')
    with AuditLog(str(tmp_path)) as log:
        assert log.append(rec(2))["seq"] == 2
    assert audit_reader.verify(str(tmp_path)) == (2, 1)


def test_fsync_every_append_mode_and_flusher_joined(tmp_path):
    with AuditLog(str(tmp_path), fsync_interval=0) as log:
        log.append(rec(1))
    log = AuditLog(str(tmp_path / "b"), fsync_interval=0.05)
    log.append(rec(1))
    assert any(t.name == "audit-flush" for t in threading.enumerate())
    log.close()
    assert not any(t.name == "audit-flush" for t in threading.enumerate())


# -- verify catches tampering ----------------------------------------------------------------

def _make(tmp_path: Path, n: int = 40, max_bytes: int = 1500) -> None:
    with AuditLog(str(tmp_path), max_bytes=max_bytes, backups=5) as log:
        for i in range(n):
            log.append(rec(i))


def _rewrite(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    data = lines(path)
    path.write_bytes(b"".join(x + b"\n" for x in fn(data)))


def test_verify_ok(tmp_path):
    _make(tmp_path)
    records, files = audit_reader.verify(str(tmp_path))
    assert records == 40 - 0 and files >= 3


def test_verify_catches_edited_line(tmp_path):
    _make(tmp_path)
    _rewrite(tmp_path / "audit.log", lambda d: [d[0].replace(b"allow", b"deny!")] + d[1:])
    with pytest.raises(AuditIntegrityError, match=r"audit\.log:2: prev does not match"):
        audit_reader.verify(str(tmp_path))


def test_verify_catches_truncated_line(tmp_path):
    _make(tmp_path)
    p = tmp_path / "audit.log"
    p.write_bytes(p.read_bytes()[:-20])
    n = len(lines(p))
    with pytest.raises(AuditIntegrityError, match=rf"audit\.log:{n}: "):
        audit_reader.verify(str(tmp_path))


def test_verify_catches_removed_line(tmp_path):
    _make(tmp_path)
    _rewrite(tmp_path / "audit.log", lambda d: d[:1] + d[2:])
    with pytest.raises(AuditIntegrityError, match=r"audit\.log:2: seq \d+ follows"):
        audit_reader.verify(str(tmp_path))


def test_verify_catches_edited_rotated_file_even_with_fixed_chain(tmp_path):
    _make(tmp_path)
    p = tmp_path / "audit.log.2"
    p.write_bytes(p.read_bytes().replace(b'"echo ', b'"ECHO ', 1))
    with pytest.raises(AuditIntegrityError, match=r"audit\.log\.2:2: prev"):
        audit_reader.verify(str(tmp_path))
    # an edit to the last line keeps every link but not the seal
    _make(tmp_path / "b")
    p = tmp_path / "b" / "audit.log.1"
    data = lines(p)
    _rewrite(p, lambda d: d[:-1] + [d[-1].replace(b'"execute_command"', b'"execute_commanX"')])
    with pytest.raises(AuditIntegrityError, match="audit.log.1"):
        audit_reader.verify(str(tmp_path / "b"))
    assert data


def test_verify_catches_missing_file_and_seal(tmp_path):
    _make(tmp_path)
    (tmp_path / "audit.log.1.sig").unlink()
    with pytest.raises(AuditIntegrityError, match=r"audit\.log\.1\.sig is missing"):
        audit_reader.verify(str(tmp_path))
    _make(tmp_path / "b")
    (tmp_path / "b" / "audit.log.2").unlink()
    with pytest.raises(AuditIntegrityError, match=r"audit\.log\.2 is missing"):
        audit_reader.verify(str(tmp_path / "b"))
    _make(tmp_path / "c", n=20, max_bytes=2000)
    oldest = max(int(p.name.rsplit(".", 1)[1]) for p in (tmp_path / "c").glob("audit.log.[0-9]"))
    (tmp_path / "c" / f"audit.log.{oldest}").unlink()
    with pytest.raises(AuditIntegrityError, match="older records or files are missing"):
        audit_reader.verify(str(tmp_path / "c"))


def test_verify_catches_forged_seal(tmp_path):
    _make(tmp_path)
    sig = tmp_path / "audit.log.1.sig"
    body = json.loads(sig.read_text())
    body["last_seq"] += 1
    sig.write_text(json.dumps(body))
    with pytest.raises(AuditIntegrityError, match="signature does not match"):
        audit_reader.verify(str(tmp_path))


def test_verify_empty_or_missing_log_is_ok(tmp_path):
    assert audit_reader.verify(str(tmp_path / "nothing")) == (0, 0)


def test_unusable_key_rotates_unsealed_and_verify_says_so(tmp_path, caplog):
    _make(tmp_path, n=10)
    (tmp_path / "audit.key").chmod(0o644)  # refused as a secret file readable by others
    with AuditLog(str(tmp_path), max_bytes=1500) as log:
        for i in range(10, 30):
            log.append(rec(i))  # keeps logging: no AuditWriteError
    assert "cannot seal" in caplog.text
    with pytest.raises(AuditIntegrityError, match=r"audit\.key is readable by other users .*proves nothing"):
        audit_reader.verify(str(tmp_path))
    (tmp_path / "audit.key").chmod(0o600)
    with pytest.raises(AuditIntegrityError, match=r"audit\.log\.\d\.sig is missing"):
        audit_reader.verify(str(tmp_path))


def test_chain_state_read_back_across_long_lines(tmp_path):
    """A fresh writer finds the last line by reading the tail in chunks, even past 64 KiB lines."""
    with AuditLog(str(tmp_path)) as log:
        log.append(rec(1, pad="y" * 200_000))
        log.append(rec(2, pad="z" * 70_000))
    with AuditLog(str(tmp_path)) as log:
        assert log.append(rec(3))["seq"] == 3
    assert audit_reader.verify(str(tmp_path)) == (3, 1)


FORK_SCENARIO = r"""
import os, sys, time, signal, warnings
from cmdop.adapters.audit_log import AuditLog
from cmdop.adapters import audit_reader
d = sys.argv[1]
rec = lambda i: {"i": i, "target": "t%d" % i}
log = AuditLog(d)
log.append(rec(0))
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    pid = os.fork()
if pid == 0:  # child: both write 200 lines at once through the "same" object
    try:
        for i in range(200):
            log.append(rec(1000 + i))
        log.close()
    finally:
        os._exit(0)
for i in range(200):
    log.append(rec(i + 1))
deadline = time.monotonic() + 30
while os.waitpid(pid, os.WNOHANG) == (0, 0):
    if time.monotonic() > deadline:
        os.kill(pid, signal.SIGKILL)
        print("forked child hung"); sys.exit(1)
    time.sleep(0.01)
log.close()
print(audit_reader.verify(d))
"""


def test_forked_child_gets_its_own_lock(tmp_path):
    # Forking is done in a fresh interpreter: inside pytest, threads left by other tests may hold
    # locks at fork time and hang the child for reasons that have nothing to do with the writer.
    r = subprocess.run([sys.executable, "-c", FORK_SCENARIO, str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "(401, 1)"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=60),
       st.integers(min_value=300, max_value=3000), st.integers(min_value=1, max_value=4))
def test_rotation_invariants(sizes, max_bytes, backups):
    """Whatever the line sizes: no file passes max_bytes unless one line alone does, the kept
    records are the newest ones in order, and the chain verifies."""
    with tempfile.TemporaryDirectory() as d:
        with AuditLog(d, max_bytes=max_bytes, backups=backups) as log:
            for i, n in enumerate(sizes):
                log.append({"i": i, "pad": "x" * n})
        names = [f"audit.log.{k}" for k in range(backups, 0, -1)] + ["audit.log"]
        kept = []
        for name in names:
            p = Path(d) / name
            if p.exists():
                data = lines(p)
                assert p.stat().st_size <= max_bytes or len(data) == 1
                kept += [json.loads(x)["i"] for x in data]
        assert kept == list(range(len(sizes) - len(kept), len(sizes)))
        assert audit_reader.verify(d, backups=backups)[0] == len(kept)


def test_verify_catches_lines_cut_from_the_end(tmp_path):
    _make(tmp_path)
    p = tmp_path / "audit.log"
    data = lines(p)
    _rewrite(p, lambda d: d[:-2])  # cleanly, whole lines: the chain alone cannot see this
    with pytest.raises(AuditIntegrityError, match=r"^audit\.log ends at seq 38 but the chain head says 40: "
                                                  r"2 lines are missing at the end"):
        audit_reader.verify(str(tmp_path))
    # the next append links to what the writer really wrote, so the gap stays visible right there
    with AuditLog(str(tmp_path), max_bytes=1500) as log:
        assert log.append(rec(99))["seq"] == 41
    with pytest.raises(AuditIntegrityError, match=rf"audit\.log:{len(data) - 1}: seq 41 follows 38"):
        audit_reader.verify(str(tmp_path))


def test_verify_catches_edited_last_line_and_emptied_log(tmp_path):
    _make(tmp_path, n=3, max_bytes=10_000)
    p = tmp_path / "audit.log"
    _rewrite(p, lambda d: d[:-1] + [d[-1].replace(b'"allow"', b'"deny"')])
    with pytest.raises(AuditIntegrityError, match=r"audit\.log:3: the last line \(seq 3\) differs"):
        audit_reader.verify(str(tmp_path))
    p.write_bytes(b"")
    with pytest.raises(AuditIntegrityError, match="audit.log has no lines but the chain head says "
                                                  "seq 3: 3 lines are missing at the end"):
        audit_reader.verify(str(tmp_path))


SEAL_IN_CHILD = r"""
import json, sys
from cmdop.adapters.audit_log import AuditLog
rec = {"ts": "2026-04-27T10:15:30Z", "decision": "allow", "tool": "execute_command",
       "target": "uptime", "mode": "strict", "source": "rule", "reason": "r" * 200}
with AuditLog(sys.argv[1], max_bytes=2000, backups=3) as log:
    for i in range(40):
        log.append(dict(rec, n=i))
print(json.dumps("cryptography" in sys.modules))
"""


def test_a_process_without_cryptography_seals_in_a_child_and_the_seals_verify(tmp_path):
    """The daemon never loads cryptography (~10 MB) for the seals: a child signs, and the seal
    is exactly what an in-process signature would be (Ed25519 is deterministic)."""
    r = subprocess.run([sys.executable, "-c", SEAL_IN_CHILD, str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) is False
    assert (tmp_path / "audit.log.3.sig").exists() and (tmp_path / "audit.key").exists()
    for name in ("audit.key", "audit.pub", "audit.log.1.sig"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    total, files = audit_reader.verify(str(tmp_path), backups=3)
    assert files == 4 and total > 0
    from cmdop.adapters import audit_key
    seal = (tmp_path / "audit.log.1.sig").read_bytes()
    meta = {k: v for k, v in json.loads(seal).items() if k not in ("sig", "v")}
    assert audit_key.seal(audit_key.load_or_create_key(str(tmp_path)), meta) == seal
