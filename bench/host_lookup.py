"""How long the relay takes to find a call's target machine in a large workspace, per store.

    .venv/bin/python bench/host_lookup.py [--machines 5000] [--rounds 300] [--json]

One workspace with --machines enrolled machines (`node-00001`…), in SQLite (a temporary data
dir) and, when a PostgreSQL server can be started (tests/integration/pg_server.py: initdb, a
Unix socket), in PostgreSQL. Per store, --rounds lookups of random existing names, median and
p99 in ms:
- `listed`: what the router did before — every machine of the workspace
  (`list_machines`), then `routing.resolve_host` over them;
- `indexed`: what it does now — `host_candidates` (the exact name and the names it is a prefix
  of, by index), then `routing.resolve_host` over those.
Plus one ambiguous prefix (`node-0`: thousands of matches) through `indexed`.
No timing is asserted; the exit status is 0 unless the set-up fails.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from cmdop.relay import routing  # noqa: E402
from cmdop.relay.store_api import RelayStoreApi, open_store  # noqa: E402


def _ms(fn: Callable[[], Any], rounds: int) -> dict[str, float]:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 3),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3)}


def _fill(store: RelayStoreApi, machines: int) -> None:
    store.create_workspace("w")
    key, _ = store.create_key("w", "k")
    for i in range(machines):
        store.enroll_machine("w", key.id, f"node-{i:05d}", f"mid-{i}", "1")


def _measure(store: RelayStoreApi, machines: int, rounds: int) -> dict[str, Any]:
    names = [f"node-{random.randrange(machines):05d}" for _ in range(rounds)]
    it = iter(names * 2)

    def listed() -> None:
        host = next(it)
        assert routing.resolve_host(host, store.list_machines("w"))[0] is not None

    def indexed() -> None:
        host = next(it)
        assert routing.resolve_host(host, store.host_candidates("w", host))[0] is not None

    listed_ms = _ms(listed, rounds)
    indexed_ms = _ms(indexed, rounds)
    ambiguous = _ms(lambda: routing.resolve_host("node-0", store.host_candidates("w", "node-0")),
                    rounds)
    return {"listed": listed_ms, "indexed": indexed_ms, "indexed_ambiguous": ambiguous}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--machines", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"machines": args.machines, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        with open_store(None, tmp) as store:
            _fill(store, args.machines)
            out["sqlite"] = _measure(store, args.machines, args.rounds)
        try:
            from pg_server import PgServer, find_bindir
            bindir = find_bindir()
        except Exception as exc:  # noqa: BLE001 - PostgreSQL is optional here
            bindir, out["postgresql"] = None, f"skipped: {exc}"
        if bindir is not None:
            server = PgServer(bindir).start()
            try:
                with open_store(server.dsn(), tmp) as store:
                    _fill(store, args.machines)
                    out["postgresql"] = _measure(store, args.machines, args.rounds)
            finally:
                server.remove()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for backend in ("sqlite", "postgresql"):
            row = out.get(backend)
            if not isinstance(row, dict):
                print(f"{backend}: {row}")
                continue
            print(f"{backend} ({args.machines} machines): "
                  + "; ".join(f"{k} {v['median_ms']} ms median, {v['p99_ms']} p99"
                              for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
