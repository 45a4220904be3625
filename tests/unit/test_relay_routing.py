"""The relay's pure decisions: host names, caller class, authentication throttling; and the
agent link's pure helpers (backoff, the caller a forwarded call gets, the credit window)."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmdop.core.calls import CallerKind
from cmdop.daemon.relay_link import (BACKOFF_MAX_S, CreditWindow, caller_from_principal,
                                     next_backoff)
from cmdop.relay import routing
from cmdop.relay.proto import relay_pb2 as pb


@dataclass(frozen=True)
class M:
    name: str
    first_seen: str = "2026-12-01T00:00:00Z"


MACHINES = [M("web01"), M("web02"), M("db"), M("db-2", "2026-12-02T00:00:00Z"), M("Build"),
            M("app-prod"), M("app", "2026-12-03T00:00:00Z")]


@pytest.mark.parametrize("typed, found, matches", [
    ("web01", "web01", ()),
    ("WEB01", "web01", ()),
    (" web01 ", "web01", ()),
    ("web", None, ("web01", "web02")),      # ambiguous prefix lists the candidates
    ("db", "db", ()),                       # exact, enrolled before the db-2 it prefixes
    ("app", None, ("app", "app-prod")),     # a later exact name cannot capture a prefix in use
    ("db-", "db-2", ()),                    # unique prefix
    ("build", "Build", ()),
    ("nope", None, ()),
    ("", None, ()),
])
def test_host_names_resolve_exact_then_unique_prefix(typed, found, matches):
    machine, candidates = routing.resolve_host(typed, MACHINES)
    assert (machine.name if machine else None, candidates) == (found, matches)


@pytest.mark.parametrize("caller, via, target, kind", [
    ("k1", "k1", "k1", "self"),       # through its own enrolled machine, to its own machine
    ("k1", None, "k1", "remote"),     # direct: the caller's machine is not verified
    ("k1", "k1", "k2", "remote"),     # someone else's machine
    ("", "", "", "remote"),           # nothing known is never self
])
def test_self_only_through_an_own_machine_to_an_own_machine(caller, via, target, kind):
    assert routing.caller_kind(caller_principal=caller, via_machine_principal=via,
                               target_principal=target) == kind


@given(st.text(max_size=8), st.one_of(st.none(), st.text(max_size=8)), st.text(max_size=8))
def test_self_needs_all_three_equal(caller, via, target):
    kind = routing.caller_kind(caller_principal=caller, via_machine_principal=via,
                               target_principal=target)
    assert (kind == "self") == (bool(caller) and via == caller == target)


def test_auth_throttle_slows_then_refuses_then_forgets():
    t = routing.AuthThrottle(slow_after=3, refuse_after=5, window_s=60, delay_s=1.0)
    for i in range(3):
        assert t.verdict("1.2.3.4", i)[0] == "ok"
        t.failed("1.2.3.4", i)
    assert t.verdict("1.2.3.4", 3) == ("slow", 1.0)
    t.failed("1.2.3.4", 3)
    t.failed("1.2.3.4", 4)
    verdict, wait = t.verdict("1.2.3.4", 5)
    assert verdict == "refuse" and 0 < wait <= 60
    assert t.verdict("5.6.7.8", 5)[0] == "ok"            # other addresses unaffected
    assert t.verdict("1.2.3.4", 200)[0] == "ok"          # the window passed


def test_auth_throttle_memory_is_bounded():
    t = routing.AuthThrottle(max_addresses=100)
    for i in range(1000):
        t.failed(f"10.0.{i // 256}.{i % 256}", 0)
    assert len(t._failures) <= 100


def test_backoff_doubles_to_a_cap_with_jitter():
    rng = random.Random(1)
    waits, delay = [], 0.0
    for _ in range(12):
        delay = next_backoff(delay, rng)
        waits.append(delay)
    assert 0.8 <= waits[0] <= 1.2
    assert all(w <= BACKOFF_MAX_S * 1.2 for w in waits)
    assert waits[-1] >= BACKOFF_MAX_S * 0.8


@pytest.mark.parametrize("kind, expected", [
    ("self", CallerKind.SELF), ("remote", CallerKind.REMOTE), ("guest", CallerKind.GUEST),
    ("local", CallerKind.REMOTE),    # a relay can never make a caller local
    ("", CallerKind.REMOTE), ("SELF", CallerKind.REMOTE), ("bypass", CallerKind.REMOTE),
])
def test_forwarded_caller_is_what_the_relay_stamped_never_local(kind, expected):
    caller = caller_from_principal(pb.Principal(kind=kind, name="ops", workspace="demo",
                                                credential="api_key", hostname="web01",
                                                machine_id="m1"))
    assert caller.kind is expected
    assert (caller.user, caller.hostname, caller.workspace) == ("ops", "web01", "demo")


def test_credit_window_blocks_until_granted_and_wakes_on_cancel():
    cancel = threading.Event()
    window = CreditWindow(10, cancel)
    assert window.take(10)                # the window is used up
    got: list[bool] = []
    worker = threading.Thread(target=lambda: got.append(window.take(5)))
    worker.start()
    worker.join(0.3)
    assert worker.is_alive()              # waits for credit
    window.grant(5)
    worker.join(5)
    assert got == [True]
    worker = threading.Thread(target=lambda: got.append(window.take(5)))
    worker.start()
    cancel.set()
    window.wake()
    worker.join(5)
    assert got == [True, False]           # a cancelled call stops waiting and drops the chunk
