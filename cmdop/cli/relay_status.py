"""`cmdop relay status [--json]`: the nodes of a relay of several nodes, read from their bus.

Each node beats its status record into the bus every second (cmdop.relay.cluster): agents
linked to it, calls running, calls per second, the bus's lag as the node's own echo measured
it. A node missing for NODE_TTL_S is gone from the list (and its agents show offline).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cmdop.cli.common import CliContext, add_command
from cmdop.core.errors import UsageError

COLUMNS = (("NODE", "node"), ("ADDRESS", "address"), ("AGENTS", "agents"),
           ("CALLS", "calls_running"), ("CALLS/S", "calls_per_s"), ("BUS LAG MS", "bus_lag_ms"),
           ("STARTED", "started"))


def register(relay: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `relay status` to the `relay` group's subcommands."""
    p = add_command(relay, "status", "the relay's nodes (several nodes sharing --bus): agents, "
                                     "calls per second, bus lag", _status)
    bus_flag(p)


def bus_flag(p: argparse.ArgumentParser) -> None:
    """The --bus flag (`relay serve`, `relay status`)."""
    p.add_argument("--bus", default=None, metavar="URL",
                   help="the bus several relay nodes share: redis://[:PASSWORD@]HOST:PORT/DB, "
                        "rediss://… or unix://PATH (or give the URL in CMDOP_RELAY_BUS instead)")


def bus_location(args: argparse.Namespace, ctx: CliContext) -> str | None:
    """--bus, else CMDOP_RELAY_BUS, else None. A password in --bus gets a note: the command
    line is visible to every user of the machine."""
    given = getattr(args, "bus", None)
    if given and ("@" in given.split("://", 1)[-1].split("/", 1)[0]
                  or "password=" in given.lower()):
        ctx.note("note: the password in --bus is visible to other users (ps); "
                 "put the URL in CMDOP_RELAY_BUS instead")
    return given or ctx.settings.relay_bus or None


async def _read(url: str) -> list[dict[str, Any]]:
    from cmdop.relay.bus_redis import RedisBus
    from cmdop.relay.cluster import status_rows

    bus = RedisBus(url)
    try:
        return status_rows(await bus.nodes())
    finally:
        await bus.close()


def _human(doc: dict[str, Any]) -> str:
    rows = doc["nodes"]
    if not rows:
        return f"no live relay nodes on {doc['bus']}"
    table = [tuple(title for title, _ in COLUMNS)] + [
        tuple(str(r.get(k, "")) for _, k in COLUMNS) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines.append(f"{len(rows)} node(s), {doc['agents']} agent(s), {doc['calls_per_s']} calls/s, "
                 f"bus {doc['bus']}")
    return "\n".join(lines)


def _status(args: argparse.Namespace, ctx: CliContext) -> int:
    url = bus_location(args, ctx)
    if not url:
        raise UsageError("relay status reads the nodes from their bus: give --bus redis://… "
                         "(or CMDOP_RELAY_BUS)",
                         hint="a relay of one node has no bus; its log shows its state")
    from cmdop.relay.bus_redis import check_url, shown

    rows = asyncio.run(_read(check_url(url)))
    doc = {"bus": shown(url), "nodes": rows,
           "agents": sum(int(r.get("agents") or 0) for r in rows),
           "calls_per_s": round(sum(float(r.get("calls_per_s") or 0) for r in rows), 2)}
    ctx.emit(doc, _human)
    return 0
