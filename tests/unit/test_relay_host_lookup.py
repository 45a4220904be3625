"""A call's host, looked up by index (`RelayStore.host_candidates`), means the machine the full
rule (`routing.resolve_host` over every machine of the workspace) picks — for any fleet and any
name a caller types. (Both backends: tests/integration/test_relay_store_suite.py.)"""

from __future__ import annotations

import itertools
import tempfile
from typing import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from cmdop.relay import routing
from cmdop.relay.store import RelayStore

_WORKSPACES = itertools.count()
_store: RelayStore | None = None


class _Clock:
    t = 1_796_553_600.0

    def __call__(self) -> float:
        return self.t


_CLOCK = _Clock()


def _shared() -> RelayStore:
    """One SQLite store for every example (a fresh workspace each): opening one costs more
    than the example."""
    global _store
    if _store is None:
        _store = RelayStore.open(tempfile.mkdtemp(prefix="cmdop-host-lookup-"), clock=_CLOCK)
    return _store


_NAME = st.text(alphabet="ab-1.", min_size=1, max_size=4)
_TYPED = st.one_of(_NAME, st.text(alphabet="aAbB-1. é%_", max_size=5))


@given(fleet=st.lists(st.tuples(_NAME, st.booleans()), min_size=1, max_size=30),
       typed=st.lists(_TYPED, min_size=1, max_size=8), shown=st.sampled_from([1, 2, 3, 20]))
@settings(max_examples=100, deadline=None)
def test_indexed_lookup_picks_what_the_full_rule_picks(fleet: list[tuple[str, bool]],
                                                       typed: list[str], shown: int) -> None:
    # A small bound makes the limited prefix read (and what it must add back) matter in most
    # examples, not only in fleets of more than 20 look-alike names.
    default, routing.MAX_MATCHES_SHOWN = routing.MAX_MATCHES_SHOWN, shown
    try:
        _check(fleet, typed)
    finally:
        routing.MAX_MATCHES_SHOWN = default


def _check(fleet: list[tuple[str, bool]], typed: list[str]) -> None:
    store = _shared()
    ws = f"w{next(_WORKSPACES)}"
    store.create_workspace(ws)
    key, _ = store.create_key(ws, "k")
    for i, (hostname, same_second) in enumerate(fleet):
        _CLOCK.t += 0 if same_second else 1
        store.enroll_machine(ws, key.id, hostname, f"mid-{i}", "1")
    everything = store.list_machines(ws)
    for host in typed + [m.name for m in everything] + [m.name[:2] for m in everything]:
        machine, matches = routing.resolve_host(host, store.host_candidates(ws, host))
        want, want_matches = routing.resolve_host(host, everything)
        assert machine == want, host
        assert routing.shown_matches(matches) == routing.shown_matches(want_matches), host


def _names(n: int) -> Iterator[str]:
    return (f"node-{i:03d}" for i in range(n))


def test_an_ambiguous_prefix_of_many_machines_reads_a_bounded_few() -> None:
    store = _shared()
    ws = f"w{next(_WORKSPACES)}"
    store.create_workspace(ws)
    key, _ = store.create_key(ws, "k")
    for i, name in enumerate(_names(300)):
        store.enroll_machine(ws, key.id, name, f"mid-{i}", "1")
    got = store.host_candidates(ws, "node")
    assert len(got) == routing.MAX_MATCHES_SHOWN + 1
    machine, matches = routing.resolve_host("node", got)
    assert machine is None and routing.shown_matches(matches).endswith(", …")
    assert [m.name for m in store.host_candidates(ws, "NODE-123 ")] == ["node-123"]
