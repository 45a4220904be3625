"""The audit log writer: the one owner of `audit.log` in the state dir.

Rules:
- One line per record, written with a single `write()` on an O_APPEND descriptor while holding
  both a thread lock (writers in this process) and an exclusive `flock` on `audit.lock` (writers
  in other processes). Everything that decides what the line says (its `seq`, its `prev`) and
  whether the file must rotate happens under that lock, so with any number of threads and
  processes there is one file, one chain, and no line lost, duplicated or split.
- The chain state (last seq, last line's hash) is read back from the file's tail under the lock,
  and cached per process keyed by (inode, size): a lone writer never re-reads, a second process
  that appended in between is noticed because the size changed.
- Chain head (format and verify rule: `cmdop.core.audit`): every line carries `"chain": 2`, and
  after its line is written the writer overwrites the HEAD_SIZE-byte record at offset 0 of
  `audit.head` (0600, descriptor kept open) with one `pwrite`: (seq, hash, gen, base, MAC). No
  fsync of its own: the background flusher syncs it with the log. The order is line, then head,
  both under the locks, so a crash leaves the head at the last line or one line behind it, and
  the verifier accepts exactly those two. The MAC is HMAC-SHA256 keyed from `audit.key` (created
  at the first append; ≈ 0.5 µs a line): a same-uid forger who can rewrite audit.log and
  audit.head but cannot read audit.key cannot make them agree. Trade-off: an Ed25519 signature
  per line would let `audit.pub` alone check the head, but costs ≈ 50 µs in-process, and the
  agent does not load `cryptography` at all (it seals in a child, ≈ 0.1 s); rotated files are
  signed anyway (their seal holds their last seq and hash, i.e. the head at rotation), so only
  the live file's end needs the key to check. Not caught: restoring an older, genuine
  audit.head together with the log cut back to it (a rollback); a running writer notices its
  file shrank and links the next line to what it really wrote, so the gap shows from then on.
- When the file's tail is behind the head (lines cut from the end, or lost to a power cut) the
  next line links to the head, so `--verify` shows the gap where it happened instead of the
  chain silently closing over it. A writer that finds audit.head missing or unreadable starts
  a new one with `base` = the chain's last seq and logs a warning; `--verify` reports a restarted
  head over lines that had one.
- Rotation: before a line that would take the file past `max_bytes`, `audit.log` is sealed
  (an Ed25519 signature over its sha256 and chain ends, `audit.log.1.sig`), then
  audit.log.N → N+1 (sigs with them, the oldest dropped), audit.log → audit.log.1, and a new
  empty audit.log is created. The chain continues across files.
- A write that fails or comes up short is cut back (`ftruncate` to the size before it) so no
  partial line stays, and `AuditWriteError` is raised: the caller must deny remote calls. The
  next append simply tries again, so the log recovers when the disk does. A partial last line
  left by a crash is cut back the same way before the next append.
- fsync policy: data is `fdatasync`ed by a background flusher at most `fsync_interval` (1 s)
  after the first unsynced append (the log, then audit.head), so power loss loses at most about
  the last second; rotation fsyncs the old file and the directory before going on. The kernel
  may write either file back first, so after a power cut the head can be up to that second ahead
  of or behind the log, which `--verify` reports (lines missing at the end / not recorded).
  `fsync_interval=0` syncs the line, then writes and syncs the head, on every append.
  The flusher thread is started by the first append and joined by `close()`.
- Files are 0600, the state dir is created 0700.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from types import TracebackType
from typing import Any

from cmdop.adapters import audit_key
from cmdop.adapters.secure_file import ensure_private_dir
from cmdop.core.audit import (CHAIN_MARK, GENESIS, HEAD_SIZE, Head, HeadMac, encode_head, encode_line,
                              head_mac_key, line_hash, parse_head)
from cmdop.core.errors import AuditWriteError, CmdopError

log = logging.getLogger("cmdop.audit")

LOG_NAME = "audit.log"
LOCK_NAME = "audit.lock"
HEAD_NAME = "audit.head"
_CHUNK = 1 << 16


def read_last_line(fd: int, size: int) -> tuple[int, bytes]:
    """(offset, bytes) of the last line of the readable file `fd` whose size is `size`, with its
    newline if it has one; (0, b"") for an empty file."""
    if size == 0:
        return 0, b""
    pos = size - 1  # a newline in the very last byte terminates the last line; look before it
    while pos > 0:
        start = max(0, pos - _CHUNK)
        idx = os.pread(fd, pos - start, start).rfind(b"\n")
        if idx >= 0:
            off = start + idx + 1
            return off, os.pread(fd, size - off, off)
        pos = start
    return 0, os.pread(fd, size, 0)


def read_first_line(fd: int, size: int) -> bytes:
    """The first line of the readable file `fd` whose size is `size`, without its newline."""
    buf = b""
    off = 0
    while off < size:
        chunk = os.pread(fd, min(_CHUNK, size - off), off)
        if not chunk:
            break
        idx = chunk.find(b"\n")
        if idx >= 0:
            return buf + chunk[:idx]
        buf += chunk
        off += len(chunk)
    return buf


def read_lock_head(fd: int) -> tuple[int, str] | None:
    """(seq, hash) from the start of audit.lock, where writers before audit.head kept the chain
    head (`%020d sha256:HEX\n`); None if absent. Read only for logs those writers left."""
    raw = os.pread(fd, 128, 0)
    try:
        seq_s, digest = raw.split(b"\n", 1)[0].decode("ascii").split(" ")
        if not digest.startswith("sha256:") or len(digest) != 71:
            return None
        return int(seq_s), digest
    except ValueError:
        return None


def read_head_file(fd: int) -> Head | None:
    """The record in audit.head open as `fd`; None when it is empty or not a head record."""
    try:
        return parse_head(os.pread(fd, HEAD_SIZE + 1, 0))
    except ValueError:
        return None


def _parse_seq(line: bytes) -> int:
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return 0
    return seq if isinstance(seq, int) else 0


class AuditLog:
    """Appends audit records to `state_dir/audit.log`; thread- and process-safe (see module doc)."""

    def __init__(self, state_dir: str, *, max_bytes: int = 10 * 1024 * 1024, backups: int = 5,
                 fsync_interval: float = 1.0) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, LOG_NAME)
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync_interval = fsync_interval
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._fd = -1
        self._ino = -1
        self._gen: int | None = None  # seq of the first line of the file open as _fd, if known
        self._lock_fd = -1
        self._head_fd = -1
        self._base: int | None = None  # the head's base; None: the head file starts at this append
        self._mac: HeadMac | None = None
        self._cache: tuple[int, int, int, str] | None = None  # (inode, size, last seq, last hash)
        self._dirty_since: float | None = None
        self._flusher: threading.Thread | None = None
        self._closed = False
        self._pid = os.getpid()

    # -- public -------------------------------------------------------------------------------

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write `record` as one line with `seq` and `prev` added; return the record as written.

        Raises AuditWriteError when the line could not be written completely (nothing of it is
        left in the file then) or the log is closed.
        """
        if self._pid != os.getpid():
            self._forget_inherited()
        with self._lock:
            if self._closed:
                raise AuditWriteError(f"audit log {self.path} is closed")
            try:
                if self._lock_fd < 0:
                    ensure_private_dir(self.state_dir)
                    self._lock_fd = os.open(os.path.join(self.state_dir, LOCK_NAME),
                                            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                try:
                    out = self._append_locked(record)
                finally:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            except OSError as exc:
                raise AuditWriteError(
                    f"cannot write audit line to {self.path}: {exc.strerror or exc}") from exc
            self._synced()
            return out

    def close(self) -> None:
        """Flush to disk, stop the flusher thread and release the files. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            flusher = self._flusher
        if flusher is not None:
            flusher.join()
        with self._lock:
            for fd in (self._fd, self._head_fd, self._lock_fd):
                if fd >= 0:
                    try:
                        if fd != self._lock_fd:
                            os.fdatasync(fd)
                    except OSError:
                        pass
                    os.close(fd)
            self._fd = self._head_fd = self._lock_fd = -1

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _forget_inherited(self) -> None:
        """In a forked child: the inherited descriptors share the parent's flock (a flock belongs
        to the open file description), so they would not exclude the parent; and the thread lock
        may have been held by the parent's flusher at the fork, with no thread left to release
        it. Start over with fresh locks and our own descriptors."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        for fd in (self._fd, self._head_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._head_fd = self._lock_fd = -1
        self._gen = None
        self._cache = None
        self._flusher = None  # threads do not survive fork
        self._dirty_since = None
        self._pid = os.getpid()

    # -- under the locks ----------------------------------------------------------------------

    def _open_current(self) -> None:
        """Make self._fd the file now named audit.log (another process may have rotated it)."""
        created = False
        try:
            if self._fd >= 0 and os.stat(self.path).st_ino == self._ino:
                return
        except FileNotFoundError:
            created = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
        self._fd, self._ino, self._gen = fd, st.st_ino, None
        if created:
            # The new name (and any rotation renames before it) must survive a power loss too.
            dfd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _open_head(self) -> None:
        """Open audit.head (creating it 0600) and take its base; load the MAC key (lock held)."""
        fd = os.open(os.path.join(self.state_dir, HEAD_NAME),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
        head = read_head_file(fd)
        self._base = head.base if head is not None else None
        self._head_fd = fd
        if self._mac is None:
            self._load_key()

    def _load_key(self) -> None:
        """Key the head's MAC from audit.key, creating the key if there is none. A key that
        cannot be used does not stop logging: heads go out without a MAC, which `--verify`
        reports (tried again at each rotation)."""
        try:
            self._mac = HeadMac(head_mac_key(audit_key.load_or_create_seed(self.state_dir)))
        except (CmdopError, ValueError, OSError) as exc:
            self._mac = None
            log.error("audit: cannot use %s to authenticate the chain head: %s",
                      os.path.join(self.state_dir, audit_key.KEY_NAME), exc)

    def _chain_state(self, size: int) -> tuple[int, str]:
        """(last seq, last line hash) of the chain, from the cache or the files' tails."""
        c = self._cache
        if c is not None and c[0] == self._ino and c[1] == size:
            return c[2], c[3]
        seq, digest = self._tail_state(size)
        best = seq, digest
        if os.fstat(self._head_fd).st_nlink == 0:  # deleted: take up the file now named so
            os.close(self._head_fd)
            self._head_fd = -1
            self._open_head()
        head = read_head_file(self._head_fd)
        if head is not None:
            if head.seq > seq:
                best = head.seq, head.hash
        else:  # a log kept by writers before audit.head: their head is in audit.lock
            old = read_lock_head(self._lock_fd)
            if old is not None and old[0] > seq:
                best = old
        if c is not None and c[0] == self._ino and c[1] > size and c[2] > best[0]:
            # Our own file shrank below what we wrote: someone cut it (and the head with it).
            best = c[2], c[3]
        if best[0] > seq:
            # Lines the writers had appended are gone from the end (cut, or lost with the disk):
            # link to what was really there, so --verify shows the gap right here.
            log.error("audit: %s ends at seq %d but seq %d was appended: lines are missing at "
                      "the end; the next line links to seq %d", self.path, seq, best[0], best[0])
        return best

    def _tail_state(self, size: int) -> tuple[int, str]:
        """(seq, hash) of the last line actually in audit.log, or audit.log.1 if it is empty."""
        if size > 0:
            _, line = read_last_line(self._fd, size)
            return _parse_seq(line), line_hash(line)
        try:  # an empty audit.log continues the chain of audit.log.1
            fd = os.open(self.path + ".1", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0, GENESIS
        try:
            _, line = read_last_line(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        return (_parse_seq(line), line_hash(line)) if line else (0, GENESIS)

    def _append_locked(self, record: dict[str, Any]) -> dict[str, Any]:
        if self._head_fd < 0:
            self._open_head()
        self._open_current()
        size = os.fstat(self._fd).st_size
        c = self._cache
        if size and not (c and c[0] == self._ino and c[1] == size):
            if os.pread(self._fd, 1, size - 1) != b"\n":
                size = self._cut_partial(size)
        seq, prev = self._chain_state(size)
        if self._base is None:
            self._base = seq
            if seq:
                log.warning("audit: %s was missing or unreadable: a new chain head starts at seq %d",
                            os.path.join(self.state_dir, HEAD_NAME), seq)
        out = dict(record)
        out["seq"] = seq + 1
        out["prev"] = prev
        out["chain"] = CHAIN_MARK
        data = encode_line(out)
        if size and size + len(data) > self.max_bytes:
            self._rotate(size, seq, prev)
            size = 0
        if not size:
            gen = seq + 1  # this line starts the file
        elif self._gen is not None:
            gen = self._gen
        else:  # a file this process has not written yet: its first line says where it starts
            gen = _parse_seq(read_first_line(self._fd, size))
        try:
            written = os.write(self._fd, data)
        except OSError:
            self._truncate(size)
            raise
        if written != len(data):
            self._truncate(size)
            raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
        new_hash = line_hash(data)
        self._gen = gen
        self._cache = (self._ino, size + written, seq + 1, new_hash)
        if self.fsync_interval <= 0:
            os.fdatasync(self._fd)  # the line is on disk before a head that names it
        try:
            os.pwrite(self._head_fd, encode_head(seq + 1, gen, self._base, new_hash, self._mac), 0)
        except OSError as exc:  # the line is written; --verify will say the head is behind
            log.error("audit: cannot update %s: %s", HEAD_NAME, exc.strerror or exc)
        return out

    def _truncate(self, size: int) -> None:
        """Remove whatever a failed write left after `size` bytes."""
        self._cache = None
        try:
            if os.fstat(self._fd).st_size > size:
                os.ftruncate(self._fd, size)
        except OSError:
            pass  # the next append finds the partial line and cuts it then

    def _cut_partial(self, size: int) -> int:
        """A crash or failed write left a line without its newline: drop it, keep the rest."""
        off, _ = read_last_line(self._fd, size)
        os.ftruncate(self._fd, off)
        self._cache = None
        return off

    def _rotate(self, size: int, last_seq: int, last_hash: str) -> None:
        """Seal audit.log, shift the backups, start an empty audit.log (lock held)."""
        os.fsync(self._fd)
        base = self.path
        if self.backups > 0:
            tmp = base + ".sig.tmp"
            sealed = self._write_seal(tmp, size, last_seq, last_hash)
            for i in range(self.backups - 1, 0, -1):
                for suffix in ("", ".sig"):
                    src, dst = f"{base}.{i}{suffix}", f"{base}.{i + 1}{suffix}"
                    if os.path.exists(src):
                        os.replace(src, dst)
                    elif suffix == ".sig" and os.path.exists(dst):
                        os.unlink(dst)  # never leave a stale seal beside a shifted file
            os.replace(base, base + ".1")
            if sealed:
                os.replace(tmp, base + ".1.sig")
        else:
            os.unlink(base)
        os.close(self._fd)
        self._fd = -1
        self._open_current()  # creates audit.log and fsyncs the directory, renames included
        self._cache = (self._ino, 0, last_seq, last_hash)
        if self._mac is None:
            self._load_key()  # the key may have been fixed meanwhile

    def _write_seal(self, tmp: str, size: int, last_seq: int, last_hash: str) -> bool:
        """Write the seal of the current file to `tmp`. A seal that cannot be made (key file
        unreadable or refused) does not stop logging: the file rotates unsealed, which
        `--verify` reports, rather than every later call being denied."""
        digest = hashlib.sha256()
        first = b""
        for off in range(0, size, 1 << 20):
            chunk = os.pread(self._fd, min(1 << 20, size - off), off)  # fd is O_RDWR
            if not first:
                first = chunk[: chunk.find(b"\n") + 1 or len(chunk)]
            digest.update(chunk)
        try:
            seal = audit_key.seal_elsewhere(self.state_dir, {
                "sha256": digest.hexdigest(), "first_seq": _parse_seq(first), "last_seq": last_seq,
                "last_hash": last_hash})
        except (CmdopError, ValueError, OSError) as exc:
            log.error("audit: cannot seal %s before rotating it: %s", self.path, exc)
            return False
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, seal)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    # -- durability ---------------------------------------------------------------------------

    def _synced(self) -> None:
        """Arrange for the append just made to reach the disk (self._lock held)."""
        if self.fsync_interval <= 0:
            try:
                os.fdatasync(self._head_fd)  # the line itself was synced before the head write
            except OSError as exc:
                raise AuditWriteError(f"cannot sync audit head in {self.state_dir}: {exc.strerror}") from exc
            return
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="audit-flush", daemon=True)
                self._flusher.start()
            self._cond.notify()

    def _flush_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._dirty_since is None:
                        self._cond.wait()
                        continue
                    left = self._dirty_since + self.fsync_interval - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closed:
                    return
                self._dirty_since = None
                fds = [os.dup(fd) for fd in (self._fd, self._head_fd) if fd >= 0]
            for fd in fds:  # the log first, then the head that names its lines
                try:
                    os.fdatasync(fd)
                except OSError:
                    pass  # a failing disk shows up as AuditWriteError on the next append
                finally:
                    os.close(fd)
