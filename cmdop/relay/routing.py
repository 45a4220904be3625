"""The relay's decisions as pure functions: which machine a host name means, what class of
caller a call comes from, and when an address has failed authentication too often.

No I/O and no clock of their own (time comes in as `now`), so each is tested with tables.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, Sequence, TypeVar

PROTOCOL_VERSION = 1
# What this relay offers in its Welcome: streamed output, cancellation both ways, calls that
# start on an agent's own link (the caller's machine is then verified).
CAPABILITIES = ("stream", "cancel", "outgoing")


class Named(Protocol):
    @property
    def name(self) -> str: ...


M = TypeVar("M", bound=Named)


def resolve_host(name: str, machines: Sequence[M]) -> tuple[M | None, tuple[str, ...]]:
    """The machine `name` means: an exact (case-insensitive) name first, then a unique prefix.
    (machine, ()) when found; (None, names) when the prefix is ambiguous (the candidates, sorted);
    (None, ()) when nothing matches."""
    want = name.strip().lower()
    if not want:
        return None, ()
    for m in machines:
        if m.name.lower() == want:
            return m, ()
    found = [m for m in machines if m.name.lower().startswith(want)]
    if len(found) == 1:
        return found[0], ()
    return None, tuple(sorted(m.name for m in found))


def caller_kind(*, caller_principal: str, via_machine_principal: str | None,
                target_principal: str) -> str:
    """"self" only when the call came through one of the caller's own enrolled machines (the
    relay saw it arrive on that machine's agent link, authenticated as `via_machine_principal`)
    and the target machine is enrolled by the same principal; "remote" otherwise — whatever the
    caller claims about itself. (A receiver with `self_bypass: false` gates self as remote.)"""
    if (via_machine_principal is not None and caller_principal
            and via_machine_principal == caller_principal == target_principal):
        return "self"
    return "remote"


@dataclass
class AuthThrottle:
    """Failed authentications per client address: after `slow_after` failures within `window_s`
    every further attempt from it waits `delay_s` before its answer; after `refuse_after` it is
    refused outright until the window has passed. Successes never clear the count (an attacker
    holding one valid key must not be able to reset it)."""

    slow_after: int = 5
    refuse_after: int = 30
    window_s: float = 300.0
    delay_s: float = 1.0
    max_addresses: int = 100_000
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, address: str, now: float) -> deque[float]:
        q = self._failures.get(address)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._failures[address]
        return q

    def verdict(self, address: str, now: float) -> tuple[str, float]:
        """("ok", 0) · ("slow", seconds to wait first) · ("refuse", seconds until it may try)."""
        q = self._recent(address, now)
        if len(q) >= self.refuse_after:
            return "refuse", max(0.0, q[0] + self.window_s - now)
        if len(q) >= self.slow_after:
            return "slow", self.delay_s
        return "ok", 0.0

    def failed(self, address: str, now: float) -> None:
        """Record one failed attempt from `address`."""
        if address not in self._failures and len(self._failures) >= self.max_addresses:
            # Bounded memory under a spray of addresses: forget the oldest entry.
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(address, deque()).append(now)
