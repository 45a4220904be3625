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
    """The machine `name` means: a unique (case-insensitive) prefix, or an exact name that was
    enrolled strictly before every other machine it is a prefix of (`db` beside its later
    `db-2`).
    (machine, ()) when found; (None, names) when ambiguous (the candidates, sorted); (None, ())
    when nothing matches. A machine enrolled later under exactly the name a user has been
    reaching another machine by (`web01` for `web01-prod`) makes the name ambiguous instead of
    silently receiving that user's calls."""
    want = name.strip().lower()
    if not want:
        return None, ()
    found = [m for m in machines if m.name.lower().startswith(want)]
    if len(found) == 1:
        return found[0], ()
    exact = [m for m in found if m.name.lower() == want]
    if len(exact) == 1 and all(_enrolled_after(m, exact[0]) for m in found if m is not exact[0]):
        return exact[0], ()
    return None, tuple(sorted(m.name for m in found))


# What a machine's name is made of (cmdop.relay.store: the hostname lower-cased, anything else
# replaced by `-`, then `-N` when taken).
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
# An ambiguous host name lists at most this many of the machines it matches.
MAX_MATCHES_SHOWN = 20


def host_prefix(name: str) -> str | None:
    """`name` as `resolve_host` compares it (stripped, lower-cased), or None when no machine
    name can start with it (empty, or a character names never hold): a store looks machines
    up by this prefix, never by the raw input."""
    want = name.strip().lower()
    return want if want and set(want) <= NAME_CHARS else None


def shown_matches(matches: Sequence[str]) -> str:
    """The names an ambiguous host matches, as a failure message lists them (bounded)."""
    if len(matches) <= MAX_MATCHES_SHOWN:
        return ", ".join(matches)
    return ", ".join(matches[:MAX_MATCHES_SHOWN]) + ", …"


def unresolved(host: str, workspace: str, matches: Sequence[str]) -> tuple[str, str, str]:
    """(code, message, hint) for a host name that names no one machine of `workspace`: the
    same words for a call, a host-key query and a new share."""
    if matches:
        return "host_ambiguous", f"{host!r} matches {shown_matches(matches)}", "type more of the name"
    return "host_unknown", f"no machine named {host!r} in workspace {workspace}", "see `cmdop hosts`"


def offline(name: str) -> tuple[str, str, str]:
    """(code, message, hint) for a machine whose agent is not linked."""
    return ("host_offline", f"{name} is not connected to the relay",
            "is its agent running (`cmdop agent status` on it)?")


def _enrolled_after(other: Named, exact: Named) -> bool:
    """Whether `other` came after `exact`: a later first_seen, or the same second with the
    name the relay derives from it (`vm-2` beside `vm`: given because `vm` was taken)."""
    a, b = _first_seen(other), _first_seen(exact)
    if a != b:
        return a > b
    suffix = other.name.lower()[len(exact.name):]
    return len(suffix) > 1 and suffix[0] == "-" and suffix[1:].isdigit()


def _first_seen(machine: object) -> str:
    return str(getattr(machine, "first_seen", "") or "")


def client_of(peer: str) -> str:
    """The client a failed login is counted against: the address, an IPv6 one by its /64
    (a host owns its whole /64 and could rotate through it)."""
    import ipaddress

    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def printable(text: str) -> str:
    """`text` with control and other non-printable characters removed (a value an agent sends
    that the relay stores and shows, e.g. its version)."""
    return "".join(c for c in text if c.isprintable())


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
        q = self._recent(client_of(address), now)
        if len(q) >= self.refuse_after:
            return "refuse", max(0.0, q[0] + self.window_s - now)
        if len(q) >= self.slow_after:
            return "slow", self.delay_s
        return "ok", 0.0

    def failed(self, address: str, now: float) -> None:
        """Record one failed attempt from `address` (an IPv6 one counts for its /64)."""
        address = client_of(address)
        if address not in self._failures and len(self._failures) >= self.max_addresses:
            # Bounded memory under a spray of addresses: forget the oldest entry.
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(address, deque()).append(now)
