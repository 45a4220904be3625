"""The seccomp confinement of a process, as Linux reports it in /proc/<pid>/status, and of the
process at the other end of a Unix socket (used by the local socket's peer check).

- `read_seccomp(pid)` reads the `Seccomp:` mode (0 off, 1 strict, 2 filter) and the
  `Seccomp_filters:` count (Linux ≥ 5.9; None on older kernels) of a process, or of this one
  (`"self"`). None when the file cannot be read or holds no `Seccomp:` line: the caller must
  treat that as "unknown", never as "unconfined".
- `peer_seccomp(sock, pid)` does the same for a connected peer and makes sure the numbers belong
  to the process that connected, not to a later process that reused its pid: with SO_PEERPIDFD
  (Linux ≥ 6.5) it takes a pidfd for the peer first, reads /proc/<pid>/status, then checks
  through the pidfd that the peer is still alive (a live process keeps its pid, so the pid
  could not have been reused while we read). Without SO_PEERPIDFD it falls back to the pid
  alone; `PeerSeccomp.pinned` says which happened.

Nothing here decides anything; `cmdop.daemon.local_server.peer_confinement_allowed` does.
Every function here is bounded and never blocks on the peer; `read_seccomp` and `peer_seccomp`
never raise (an unknown answer is None), `peer_pidfd` raises OSError as documented.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from dataclasses import dataclass
from typing import Literal, Protocol

# SO_PEERPIDFD (asm-generic/socket.h, Linux 6.5). Python 3.11's socket module lacks the name.
SO_PEERPIDFD = 77


class _PeerSocket(Protocol):
    """A connected socket, stdlib or trio: only getsockopt is needed."""

    def getsockopt(self, level: int, optname: int) -> int: ...


@dataclass(frozen=True)
class SeccompState:
    """A process's seccomp state: `mode` 0 off, 1 strict, 2 filter; `filters` how many filters
    are stacked on it (None when the kernel does not say, before Linux 5.9)."""

    mode: int
    filters: int | None


@dataclass(frozen=True)
class PeerSeccomp:
    """What `peer_seccomp` found: `state` None when it could not be known (`why` says why);
    `pinned` True when a pidfd confirmed the peer was alive after its status was read;
    `pidfd_supported` False when the kernel has no SO_PEERPIDFD (the pid alone was used)."""

    state: SeccompState | None
    pinned: bool
    why: str = ""
    pidfd_supported: bool = True


def parse_seccomp_status(text: str) -> SeccompState | None:
    """The seccomp state in the text of a /proc/<pid>/status file; None without a valid
    `Seccomp:` line (a `Seccomp_filters:` line that is present but not a number is also None)."""
    mode: int | None = None
    filters: int | None = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or key not in ("Seccomp", "Seccomp_filters"):
            continue
        try:
            number = int(value.strip())
        except ValueError:
            return None
        if number < 0:
            return None
        if key == "Seccomp":
            mode = number
        else:
            filters = number
    if mode is None:
        return None
    return SeccompState(mode=mode, filters=filters)


def read_seccomp(pid: int | Literal["self"]) -> SeccompState | None:
    """The seccomp state of process `pid` (or of this process for "self"); None when its status
    cannot be read (it exited, /proc is missing or hidden) or does not say."""
    if pid != "self" and (not isinstance(pid, int) or pid <= 0):
        return None        # SO_PEERCRED says 0 for a peer in a pid namespace we cannot see
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            raw = f.read(65536)
    except OSError:
        return None
    return parse_seccomp_status(raw.decode("utf-8", "replace"))


def peer_pidfd(sock: _PeerSocket) -> int | None:
    """A pidfd for the process that connected `sock` (SO_PEERPIDFD), or None when this kernel
    has no SO_PEERPIDFD. OSError for any other failure (the peer is gone or has no pid here)."""
    try:
        fd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            return None
        raise
    return int(fd)


def pidfd_exited(pidfd: int) -> bool:
    """True when the process behind `pidfd` has exited (a pidfd polls readable once it has)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    try:
        events = poller.poll(0)
    except OSError:
        return True         # cannot tell: count it as gone (callers fail closed)
    return any(ev & (select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL)
               for _, ev in events)


def peer_seccomp(sock: _PeerSocket, pid: int) -> PeerSeccomp:
    """The seccomp state of the peer of `sock` whose SO_PEERCRED pid is `pid`.

    With SO_PEERPIDFD the state is returned only if the peer is still alive after its status
    was read, so it cannot be a later process that reused the pid (`pinned=True`); the pidfd is
    closed before returning. Without it the pid alone is used (`pinned=False`). `state` is None,
    with `why`, whenever the answer is not known."""
    try:
        pidfd = peer_pidfd(sock)
    except OSError as exc:
        return PeerSeccomp(None, False, f"no pidfd for the peer: {os.strerror(exc.errno or 0)}")
    if pidfd is None:
        state = read_seccomp(pid)
        return PeerSeccomp(state, False, "" if state else f"/proc/{pid}/status unreadable",
                           pidfd_supported=False)
    try:
        state = read_seccomp(pid)
        if state is None:
            return PeerSeccomp(None, True, f"/proc/{pid}/status unreadable")
        if pidfd_exited(pidfd):
            # Read after the peer exited: the pid may already name another process.
            return PeerSeccomp(None, True, "the peer exited before it could be checked")
        return PeerSeccomp(state, True)
    finally:
        os.close(pidfd)
