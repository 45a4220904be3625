"""Reading the audit log: tail with filters, follow across rotation, verify the chain and seals.

The reader never writes. It takes a consistent snapshot by opening every file while holding a
shared `flock` on `audit.lock` (writers hold it exclusively while appending or rotating) and
noting the active file's size, and reads the chain head (`audit.head`) under the same lock; it
then reads without the lock, so a long read never stalls the writer. Renames do not disturb open
files, so the snapshot stays valid while the log rotates.

`verify` checks, in order: no rotated file missing between existing ones; every line a JSON
object with `seq` following the line before and `prev` its hash (the first line `GENESIS`, or,
with fewer than the maximum backups, seq 1); each rotated file's seal; then the end of the chain
against `audit.head` by the HEAD RULE of `cmdop.core.audit.check_head` (lines cut from the end,
a truncated file, a rewritten file with a recomputed chain, a deleted or foreign head). Logs
written before chain heads (no audit.head and no line with `"chain": 2`) pass with a warning,
their old head in audit.lock still checked.

`records` streams every record oldest first, one file in memory at a time (whole-log passes).

Files in order, oldest first: audit.log.5 … audit.log.1, audit.log.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO, Callable, Iterator

from cmdop.adapters import audit_key
from cmdop.adapters.audit_log import HEAD_NAME, LOCK_NAME, LOG_NAME, read_lock_head
from cmdop.core.audit import (CHAIN_MARK, GENESIS, HEAD_SIZE, ChainLine, Head, check_head,
                              head_mac_key, line_hash, parse_head, parse_ts)
from cmdop.core.errors import AuditIntegrityError

MAX_BACKUPS = 5
SINCE_MARGIN = timedelta(minutes=10)


@dataclass(frozen=True)
class Filter:
    """Which records to show: all given conditions must hold."""

    since: datetime | None = None
    tool: str | None = None
    decision: str | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if self.tool is not None and record.get("tool") != self.tool:
            return False
        if self.decision is not None and record.get("decision") != self.decision:
            return False
        if self.since is not None:
            try:
                return parse_ts(str(record.get("ts", ""))) >= self.since
            except ValueError:
                return False
        return True


@dataclass
class _File:
    name: str
    f: BinaryIO
    size: int


def _names(state_dir: str, backups: int = MAX_BACKUPS) -> list[str]:
    """Existing log file names, oldest first (a gap is left for verify to report)."""
    out = [f"{LOG_NAME}.{i}" for i in range(backups, 0, -1)
           if os.path.exists(os.path.join(state_dir, f"{LOG_NAME}.{i}"))]
    return out + [LOG_NAME]


def _snapshot(state_dir: str, backups: int = MAX_BACKUPS) -> list[_File]:
    """Open every log file under a shared lock; sizes fixed at that moment."""
    return _snapshot_with_head(state_dir, backups)[0]


@dataclass(frozen=True)
class _Heads:
    """The chain head(s) as read under the lock: `raw` the bytes of audit.head (None: no such
    file), `lock` the pre-audit.head writers' (seq, hash) from audit.lock."""

    raw: bytes | None
    lock: tuple[int, str] | None


def _snapshot_with_head(state_dir: str, backups: int = MAX_BACKUPS) -> tuple[list[_File], _Heads]:
    """`_snapshot`, plus the writers' chain head(s) read under the same lock."""
    files: list[_File] = []
    raw: bytes | None = None
    lock_head = None
    lock_fd = -1
    try:
        lock_fd = os.open(os.path.join(state_dir, LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(lock_fd, fcntl.LOCK_SH)
        lock_head = read_lock_head(lock_fd)
    except OSError:
        lock_fd = -1  # no writer ever ran here (or we may not lock): read as is
    try:
        try:
            with open(os.path.join(state_dir, HEAD_NAME), "rb") as hf:
                raw = hf.read(HEAD_SIZE * 2)
        except FileNotFoundError:
            pass
        for name in _names(state_dir, backups):
            try:
                f = open(os.path.join(state_dir, name), "rb")
            except FileNotFoundError:
                continue
            files.append(_File(name, f, os.fstat(f.fileno()).st_size))
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
    return files, _Heads(raw, lock_head)


def _lines(file: _File) -> list[bytes]:
    data = file.f.read(file.size)
    file.f.close()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


Position = tuple[int, int]  # (inode, offset) of the active file where a snapshot ended


def tail(state_dir: str, n: int | None, flt: Filter = Filter(),
         backups: int = MAX_BACKUPS) -> list[tuple[bytes, dict[str, Any]]]:
    """The last `n` records (all when None) that match `flt`, oldest first, as (raw line, record).

    Reads files newest first and stops as soon as it has `n`, so a short tail of a long log is
    cheap. Lines that are not JSON objects are skipped (`verify` reports them).
    """
    return tail_at(state_dir, n, flt, backups)[0]


def tail_at(state_dir: str, n: int | None, flt: Filter = Filter(), backups: int = MAX_BACKUPS
            ) -> tuple[list[tuple[bytes, dict[str, Any]]], Position | None]:
    """`tail`, plus the position where it ended, for `follow` to go on from without a gap."""
    files = _snapshot(state_dir, backups)
    pos = None
    if files and files[-1].name == LOG_NAME:
        pos = (os.fstat(files[-1].f.fileno()).st_ino, files[-1].size)
    found: list[tuple[bytes, dict[str, Any]]] = []
    # Lines are in append order and ts is taken near the append, so scanning back with --since
    # can stop once it is well past the cut (the margin covers writers' clock skew and asks).
    floor = flt.since - SINCE_MARGIN if flt.since is not None else None
    done = n == 0
    for file in reversed(files):
        if done:
            file.f.close()
            continue
        for line in reversed(_lines(file)):
            rec = _parse(line)
            if rec is None:
                continue
            if flt.matches(rec):
                found.append((line, rec))
                if n is not None and len(found) >= n:
                    done = True
                    break
            elif floor is not None and _ts_before(rec, floor):
                done = True
                break
    found.reverse()
    return found, pos


def records(state_dir: str, flt: Filter = Filter(), backups: int = MAX_BACKUPS
            ) -> Iterator[dict[str, Any]]:
    """Every record that matches `flt`, oldest first across all files, holding one file's bytes
    at a time: for whole-log passes (`permissions replay`). The snapshot is taken at the first
    `next()`; lines that are not JSON objects are skipped (`verify` reports them)."""
    files = _snapshot(state_dir, backups)
    try:
        for file in files:
            for line in _lines(file):
                rec = _parse(line)
                if rec is not None and flt.matches(rec):
                    yield rec
    finally:
        _close(files)


def _ts_before(rec: dict[str, Any], when: datetime) -> bool:
    try:
        return parse_ts(str(rec.get("ts", ""))) < when
    except ValueError:
        return False


def _open_at(state_dir: str, start: Position | None) -> tuple[BinaryIO | None, int]:
    """The file to follow from: the one `start` points into (it may have become audit.log.1),
    else the end of audit.log."""
    path = os.path.join(state_dir, LOG_NAME)
    for name in (path, path + ".1") if start else (path,):
        try:
            f = open(name, "rb")
        except FileNotFoundError:
            continue
        ino = os.fstat(f.fileno()).st_ino
        if start is None:
            f.seek(0, os.SEEK_END)
            return f, ino
        if ino == start[0]:
            f.seek(start[1])
            return f, ino
        f.close()
    if start is not None:  # rotated more than once meanwhile: go on from the current file
        return _open_at(state_dir, None)
    return None, -1


def _rotated_after(state_dir: str, ino: int) -> list[str]:
    """Rotated files newer than the one with inode `ino`, oldest first."""
    path = os.path.join(state_dir, LOG_NAME)
    for k in range(1, MAX_BACKUPS + 1):
        try:
            if os.stat(f"{path}.{k}").st_ino == ino:
                return [f"{path}.{i}" for i in range(k - 1, 0, -1)]
        except FileNotFoundError:
            break
    return []


def follow(state_dir: str, flt: Filter = Filter(), poll: float = 0.2,
           stop: Callable[[], bool] = lambda: False,
           start: Position | None = None) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Yield records appended to audit.log after `start` (default: from now on), like `tail -F`:
    when the file is rotated away the rest of it is read and the new audit.log is followed from
    its start."""
    path = os.path.join(state_dir, LOG_NAME)
    buf = b""
    f, ino = _open_at(state_dir, start)
    try:
        while not stop():
            chunk = f.read() if f is not None else b""
            if not chunk:
                try:
                    now_ino = os.stat(path).st_ino
                except FileNotFoundError:
                    now_ino = -1
                if now_ino == ino or now_ino == -1:
                    time.sleep(poll)
                    continue
                # Rotated: finish the old file, then any file rotated after it (several rotations
                # between two polls), then start on the new audit.log.
                if f is not None:
                    chunk = f.read()
                    f.close()
                    for newer in _rotated_after(state_dir, ino):
                        with open(newer, "rb") as g:
                            chunk += g.read()
                f = open(path, "rb")
                ino = os.fstat(f.fileno()).st_ino
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for line in complete:
                rec = _parse(line)
                if rec is not None and flt.matches(rec):
                    yield line, rec
    finally:
        if f is not None:
            f.close()


@dataclass(frozen=True)
class Verified:
    """What `verify_report` found: `records` and `files` counted, `head` how the chain head
    matched ("" when there is none to speak of), `warnings` to show (not failures)."""

    records: int
    files: int
    head: str = ""
    warnings: tuple[str, ...] = ()


def verify(state_dir: str, backups: int = MAX_BACKUPS) -> tuple[int, int]:
    """(records, files) of `verify_report`; raises AuditIntegrityError in the same cases."""
    r = verify_report(state_dir, backups)
    return r.records, r.files


def verify_report(state_dir: str, backups: int = MAX_BACKUPS) -> Verified:
    """Walk every file and line and check the chain head; return the counts when all holds.

    Raises AuditIntegrityError naming the first problem: `FILE:LINE` and what is wrong (not
    JSON, truncated, seq gap, prev mismatch), a missing rotated file, a missing or invalid seal,
    a sealed file whose bytes changed; then the end of the chain against audit.head (HEAD RULE
    in `cmdop.core.audit.check_head`): lines missing at the end, lines the head does not cover,
    a last line that differs from the head, a missing, malformed, unauthenticated or foreign
    head. A log no writer ever wrote is fine (0 records).
    Assumes at least one backup is kept (with none, rotation itself empties the log).
    """
    files, heads = _snapshot_with_head(state_dir, backups)
    names = [f.name for f in files]
    rotated = [int(n.rsplit(".", 1)[1]) for n in names if n != LOG_NAME]
    for i in range(1, max(rotated, default=0)):
        if f"{LOG_NAME}.{i}" not in names:
            _close(files)
            raise AuditIntegrityError(f"{LOG_NAME}.{i} is missing (older files exist)",
                                      hint="a rotated audit file was deleted or renamed")
    try:
        public_key = audit_key.load_public_key(state_dir) if rotated else None
        walk = _walk(state_dir, files, public_key, len(rotated) < backups)
    finally:
        _close(files)
    head: Head | None = None
    if heads.raw:  # an empty file is a head never written (its writer died first): as missing
        try:
            head = parse_head(heads.raw)
        except ValueError:
            raise AuditIntegrityError(f"{HEAD_NAME} is not a chain head record (overwritten?)",
                                      hint="compare the log with a copy") from None
    seed = audit_key.read_seed(state_dir) if head is not None else None
    verdict = check_head(head, mac_key=head_mac_key(seed) if seed is not None else None,
                         last=walk.last, before_last=walk.before_last, live=LOG_NAME,
                         first_marked=walk.first_marked, partial=walk.partial,
                         key_name=audit_key.KEY_NAME, head_name=HEAD_NAME)
    if verdict.problem is not None:
        raise AuditIntegrityError(verdict.problem, hint=verdict.hint)
    if head is None and walk.first_marked is None:
        _check_lock_head(heads.lock, walk.last)
    return Verified(walk.records, sum(1 for f in files if f.size or f.name != LOG_NAME),
                    verdict.summary, verdict.warnings)


def _check_lock_head(head: tuple[int, str] | None, last: ChainLine | None) -> None:
    """Logs from writers before audit.head: they kept (seq, hash) of their last line in
    audit.lock; a log that ends before it was cut at the end, a last line that differs from it
    was edited."""
    if head is None:
        return
    last_seq, last_hash, where = (last.seq, last.hash, last.where) if last is not None else (0, GENESIS, LOG_NAME)
    if head[0] > last_seq:
        raise AuditIntegrityError(
            f"{where}: the log ends at seq {last_seq} but the writer appended up to seq {head[0]}: "
            "records were cut from the end", hint="restore the missing lines from a copy, if any")
    if head[0] == last_seq and head[1] != last_hash:
        raise AuditIntegrityError(f"{where}: the last line differs from what the writer appended (edited)")


@dataclass
class _Walk:
    """What the walk saw for the head check (fields as `check_head` takes them)."""

    records: int = 0
    last: ChainLine | None = None
    before_last: ChainLine | None = None
    first_marked: int | None = None
    partial: str | None = None


def _walk(state_dir: str, files: list[_File], public_key: Any, must_start: bool) -> _Walk:
    """Check every line's JSON and link, then each rotated file's seal; return what the head
    check needs. `must_start`: fewer than the maximum backups exist, so nothing was dropped and
    the oldest line must be seq 1. A last line without its newline is left to the head check in
    the live file (a crash can leave one there), a failure in a rotated file."""
    out = _Walk()
    last_seq, last_hash = None, None
    for file in files:
        data = file.f.read(file.size)
        lines = data.split(b"\n")
        file_first = 0
        for lineno, line in enumerate(lines[:-1], 1):
            where = f"{file.name}:{lineno}"
            rec = _parse(line)
            if rec is None:
                raise AuditIntegrityError(f"{where}: not a JSON object (edited or truncated)")
            seq, prev = rec.get("seq"), rec.get("prev")
            if not isinstance(seq, int) or not isinstance(prev, str):
                raise AuditIntegrityError(f"{where}: no seq/prev chain fields")
            if last_seq is None:
                if seq == 1 and prev != GENESIS:
                    raise AuditIntegrityError(f"{where}: first record does not start the chain")
                if seq != 1 and must_start:
                    raise AuditIntegrityError(
                        f"{where}: chain starts at seq {seq}, not 1: older records or files are missing")
            else:
                if seq != last_seq + 1:
                    raise AuditIntegrityError(
                        f"{where}: seq {seq} follows {last_seq} (lines missing or reordered)")
                if prev != last_hash:
                    raise AuditIntegrityError(
                        f"{where}: prev does not match the line before (that line was edited)")
            if lineno == 1:
                file_first = seq
            if out.first_marked is None and rec.get("chain") == CHAIN_MARK:
                out.first_marked = seq
            last_seq, last_hash = seq, line_hash(line)
            out.before_last = out.last
            out.last = ChainLine(seq, last_hash, where, file.name, file_first)
            out.records += 1
        if lines[-1] != b"":
            where = f"{file.name}:{len(lines)}"
            if file.name != LOG_NAME:
                raise AuditIntegrityError(f"{where}: truncated line (no newline at end)")
            out.partial = where
        if file.name != LOG_NAME:
            _check_seal(state_dir, file.name, data, public_key)
    return out


def _check_seal(state_dir: str, name: str, data: bytes, public_key: Any) -> None:
    import hashlib

    try:
        with open(os.path.join(state_dir, name + ".sig"), "rb") as f:
            seal = f.read()
    except FileNotFoundError:
        raise AuditIntegrityError(f"{name}.sig is missing: {name} is not sealed") from None
    try:
        body = audit_key.check_seal(public_key, seal)
    except ValueError as exc:
        raise AuditIntegrityError(f"{name}.sig: {exc}") from None
    if body.get("sha256") != hashlib.sha256(data).hexdigest():
        raise AuditIntegrityError(f"{name}: content differs from its seal (the file was changed)")


def _close(files: list[_File]) -> None:
    for file in files:
        file.f.close()
