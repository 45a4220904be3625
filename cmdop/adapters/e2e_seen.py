"""The agent's memory of sealed requests it already accepted, so none runs twice.

A relay (or anyone who recorded the ciphertext) can deliver a sealed request again: under another
caller prefix, on another link, or after the agent restarted. What this promises:
- A request is accepted only when its `issued_at` (the caller's clock) is within WINDOW_S of
  this machine's clock, either way, and its call id was not accepted before in that window.
- The accepted ids are kept in the state dir (`e2e_seen`, 0600, one `ISSUED_AT CALL_ID` line
  each, appended), so a restart forgets none of those still inside the window; older lines are
  dropped when the file is compacted.
- A file that is not private or not readable is an error (fail closed): never an empty memory.
- An id is written to the file before its call runs (one `write` to a file kept open for
  appending; reopened after each compaction). Once written it is in the kernel's page cache, so
  a crash or kill of the agent, or any restart of it, loses none. It is not fsync'ed: a power
  loss or kernel crash can lose the ids of the last seconds (those the kernel had not written
  back yet), and a call of those seconds could then be replayed once after the reboot, within
  WINDOW_S of its issue. An fsync per call would close that window at the price of a disk
  flush (milliseconds on real disks) on every call.
"""

from __future__ import annotations

import os
import threading
import weakref

from cmdop.core.errors import E2EError

SEEN_FILE = "e2e_seen"
WINDOW_S = 300          # the clock difference tolerated between a caller and this machine
_COMPACT_AFTER = 4096   # appended lines before expired ones are dropped from the file
_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class SeenRequests:
    """Call ids of accepted sealed requests; `path` None keeps them in memory only (tests)."""

    def __init__(self, path: str | None, now: float, window_s: int = WINDOW_S) -> None:
        self._path, self._window = path, window_s
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._appended = 0
        self._fd = -1                 # the file, open for appending (-1: not yet, or reopen)
        self._closer: weakref.finalize | None = None    # type: ignore[type-arg]
        if path is not None:
            self._load(path, now)

    def _load(self, path: str, now: float) -> None:
        from cmdop.adapters.secure_file import read_private
        from cmdop.core.errors import SecretFileError

        try:
            text = read_private(path).decode("ascii", "replace")
        except FileNotFoundError:
            return
        except (SecretFileError, OSError) as exc:
            raise E2EError(f"cannot use {path}, the record of sealed calls already run: {exc}",
                           "chmod 600 it (or remove it: calls of the last minutes could then "
                           "be replayed once)") from None
        for line in text.splitlines():
            issued, _, call_id = line.partition(" ")
            if issued.isdigit() and call_id and int(issued) >= now - self._window:
                self._ids[call_id] = int(issued)
        try:
            self._compact(now)
        except OSError as exc:
            raise E2EError(f"cannot rewrite {path}, the record of sealed calls already run: "
                           f"{exc.strerror or exc}", "free disk space (or fix the file)") from None

    def accept(self, call_id: str, issued_at: int, now: float) -> None:
        """Record `call_id` as run; E2EError when it was run before, or `issued_at` is outside
        the window around `now` (a request replayed later, or clocks too far apart)."""
        if not 0 < len(call_id) <= 64 or not set(call_id) <= _ID_OK:
            raise E2EError("a sealed request is malformed (its call id)")
        skew = issued_at - now
        if abs(skew) > self._window:
            raise E2EError(
                f"the sealed call was issued {abs(skew):.0f} s "
                f"{'ahead of' if skew > 0 else 'before'} this machine's clock (at most "
                f"{self._window} s is accepted): refused as a possible replay",
                "check the clocks of the calling machine and of this one (NTP)")
        with self._lock:
            if call_id in self._ids:
                raise E2EError("this sealed call was already run here: refused as a replay",
                               "the relay delivered a recorded call again")
            self._ids[call_id] = issued_at
            if self._path is not None:
                try:
                    self._append(f"{issued_at} {call_id}\n")
                    if self._appended > _COMPACT_AFTER:
                        self._compact(now)
                except OSError as exc:
                    # Unrecorded, the call could be replayed after a restart: refuse this one
                    # call (its id stays in memory), and never end the link over it.
                    self.close()
                    raise E2EError(f"cannot record the sealed call in {self._path}: "
                                   f"{exc.strerror or exc}; refused",
                                   "free disk space (or fix the file) on this machine") from None

    def _append(self, line: str) -> None:
        # Called on the agent's event loop for every sealed call: one write(2), not
        # open + write + close (opening a path costs several times a write, and each syscall
        # hands the GIL to the link's threads and waits to get it back).
        assert self._path is not None
        if self._fd < 0:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                               | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self._closer = weakref.finalize(self, os.close, self._fd)
        data = line.encode("ascii", "replace")
        if os.write(self._fd, data) != len(data):     # a full disk: fail closed, never half
            raise OSError(f"short write to {self._path}")
        self._appended += 1

    def close(self) -> None:
        """Close the file kept open for appending (the next accept reopens it)."""
        if self._closer is not None:
            self._closer()            # closes the fd once, however often it is called
            self._closer = None
        self._fd = -1

    def _compact(self, now: float) -> None:
        """Forget expired ids, in memory and in the file (rewritten atomically)."""
        from cmdop.adapters.secure_file import atomic_write

        self._ids = {c: t for c, t in self._ids.items() if t >= now - self._window}
        if self._path is not None:
            atomic_write(self._path, "".join(f"{t} {c}\n" for c, t in self._ids.items()))
            self.close()              # the file was replaced: append to the new one
        self._appended = 0
