"""Audit writer benchmark: appends per second and µs per record, against a bare os.write of the
same bytes in the same run.

    .venv/bin/python bench/audit.py [--records N]

Cases: bare `os.write` of pre-encoded lines to an O_APPEND file (the floor: one syscall per
line); `AuditLog.append` without rotation (a limit the run never reaches); with the real
rotation at 10 MB (seal + shift about every 25,000 records; this process has not loaded
`cryptography`, so each seal is signed in a child, as in the agent); with rotation every 1 MB
(a stress case, ten times more often than real); and with `fsync_interval=0` (fdatasync on every
append) to show why that is not the default.
Each case writes into its own fresh temporary state dir. Target: ≤ 50 µs per record.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cmdop.adapters.audit_log import AuditLog  # noqa: E402
from cmdop.core.audit import GENESIS, build_record, encode_line  # noqa: E402
from cmdop.core.calls import Caller, CallerKind  # noqa: E402
from cmdop.core.policy.decision import Decision  # noqa: E402


def sample() -> dict[str, object]:
    d = Decision(decision="allow", source="rule", reason="matched allow rule", mode="default",
                 tool="execute_command", operation="run", target="uptime", rule_id="r-7")
    return build_record(decision=d, outcome="allow", tool_input={"command": "uptime"},
                        caller=Caller(CallerKind.REMOTE, "ubuntu", "vps-audi"), now=datetime.now(timezone.utc))


def bare(n: int, line: bytes) -> float:
    with tempfile.TemporaryDirectory() as d:
        fd = os.open(os.path.join(d, "bare.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        t = time.perf_counter()
        for _ in range(n):
            os.write(fd, line)
        el = time.perf_counter() - t
        os.close(fd)
    return el


def audit(n: int, rec: dict[str, object], **kw: object) -> float:
    with tempfile.TemporaryDirectory() as d:
        log = AuditLog(d, **kw)  # type: ignore[arg-type]
        t = time.perf_counter()
        for _ in range(n):
            log.append(rec)
        el = time.perf_counter() - t
        log.close()
    return el


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    n = ap.parse_args().records
    rec = sample()
    line = encode_line(dict(rec, seq=123456, prev=GENESIS))
    base = min(bare(n, line) for _ in range(3))
    rows = [("bare os.write (baseline)", base)]
    rows.append(("AuditLog.append, no rotation", min(audit(n, rec, max_bytes=1 << 40) for _ in range(3))))
    rows.append(("AuditLog.append, rotating at 10 MB (real)", min(audit(n, rec) for _ in range(3))))
    rows.append(("AuditLog.append, rotating every 1 MB (stress)",
                 min(audit(n, rec, max_bytes=1 << 20) for _ in range(3))))
    m = max(1000, n // 50)
    fs = audit(m, rec, fsync_interval=0) * n / m
    rows.append(("AuditLog.append, fdatasync each append", fs))
    build_t = time.perf_counter()
    for _ in range(n // 10):
        sample()
    build_us = (time.perf_counter() - build_t) / (n // 10) * 1e6
    print(f"audit bench: {n} records of {len(line)} bytes, python {sys.version.split()[0]}")
    print(f"{'case':46} {'µs/record':>10} {'appends/s':>11} {'× bare':>8}")
    for name, el in rows:
        print(f"{name:46} {el / n * 1e6:10.1f} {n / el:11,.0f} {el / base:8.1f}")
    print(f"(build_record incl. redaction and digest: {build_us:.1f} µs/record, not included above)")


if __name__ == "__main__":
    main()
