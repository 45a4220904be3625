"""sd_notify without a library: datagrams to `$NOTIFY_SOCKET` (READY=1, WATCHDOG=1, STATUS=,
STOPPING=1).

Rules:
- With no NOTIFY_SOCKET every call is a silent no-op (not under systemd, or Type=simple).
- A name starting with `@` is an abstract socket (systemd's documented convention).
- Sending never blocks and never raises: a lost notification must not crash the daemon; the
  first failure is logged once.
- The watchdog interval is half of WATCHDOG_USEC, and only when WATCHDOG_PID is unset or ours.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

log = logging.getLogger("cmdop.daemon.notify")


class Notifier:
    """Sends sd_notify messages to the socket named in the environment given at creation."""

    def __init__(self, env: Mapping[str, str]) -> None:
        addr = env.get("NOTIFY_SOCKET") or ""
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        self._addr = addr
        self._sock: socket.socket | None = None
        self._warned = False
        self.watchdog_interval_s = watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def send(self, *lines: str) -> bool:
        """Send one datagram holding `lines`; True when it was handed to the kernel."""
        if not self._addr:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode("utf-8"), self._addr)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify failed: %s", exc)
                self._warned = True
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not requested."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 2 / 1_000_000
