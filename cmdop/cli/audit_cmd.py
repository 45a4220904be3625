"""`cmdop permissions audit`: read the audit log.

`--tail N` (default 20) the last N matching records · `--follow` then keep printing new ones,
across rotation, until Ctrl-C · `--since 1h|2026-04-27T10:00Z` · `--tool T` · `--decision D` ·
`--json` raw lines (exactly as stored) instead of a table · `--verify` walk the whole chain, the
seals of rotated files and the end of the chain against the writers' head (`audit.head`): exit 0
with `audit chain ok: N records in M files; chain head at the last line (seq S, audit.log)` (or
`one line behind`, the state a crash between a line and its head write leaves), with any warning
on stderr as `warning: …` (e.g. a log written before chain heads, whose end cannot be checked);
else exit 1 naming the first broken line, missing file or missing lines at the end
(`cmdop: error: audit.log ends at seq 41 but the chain head says 57: 16 lines are missing at the
end …`). With `--json`: `{"ok": true, "records", "files", "head", "warnings"}`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from cmdop.cli.common import CliContext, add_command
from cmdop.core.display import escaped
from cmdop.core.errors import UsageError

if TYPE_CHECKING:  # datetime is imported where it is used: `permissions check` loads this module
    from datetime import datetime


def since_arg(text: str | None) -> datetime | None:
    """A `--since` value (`1h`, `30m`, an ISO timestamp) as a UTC time; None when not given.
    UsageError naming the problem when it cannot be read."""
    from datetime import datetime, timezone

    from cmdop.core.audit import parse_since

    if text is None:
        return None
    try:
        return parse_since(text, datetime.now(timezone.utc))
    except ValueError as exc:
        raise UsageError(str(exc)) from None

DECISIONS = ("allow", "deny", "ask_allowed", "ask_denied", "ask_timeout")
_COLUMNS = (("TIME", 20), ("DECISION", 11), ("TOOL", 15), ("SOURCE", 6), ("RULE", 15), ("CALLER", 20))


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", only: str | None = None) -> None:
    """Add `audit` to the `cmdop permissions` subcommands (`only`, cmdop.cli.main's filter, can
    only name it)."""
    p = add_command(sub, "audit", "show or verify the audit log of tool calls", _run)
    p.add_argument("--tail", type=int, default=None, metavar="N", help="show the last N records (default 20; with --since, all since then)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records (Ctrl-C stops)")
    p.add_argument("--since", metavar="WHEN", help="only records since an age (30s, 15m, 1h, 2d) or a time "
                                                   "(2026-04-27T10:00Z)")
    p.add_argument("--tool", metavar="T", help="only records of this tool")
    p.add_argument("--decision", metavar="D", help=f"only records with this decision ({'|'.join(DECISIONS)})")
    p.add_argument("--verify", action="store_true", help="check the hash chain, the seals of rotated files and the chain head")


# A remote caller chooses the target: its fields are shown escaped (cmdop.core.display).
_printable = escaped


def _row(rec: dict[str, Any]) -> str:
    caller = "@".join(x for x in (str(rec.get("user", "")), str(rec.get("hostname", ""))) if x)
    cells = [rec.get("ts", ""), rec.get("decision", ""), rec.get("tool", ""), rec.get("source", ""),
             rec.get("rule_id", ""), caller]
    out = "".join(f"{_printable(c):<{w}} " for c, (_, w) in zip(cells, _COLUMNS))
    target = _printable(rec.get("target", ""))
    return out + (target if len(target) <= 80 else target[:79] + "…")


def _header() -> str:
    return "".join(f"{name:<{w}} " for name, w in _COLUMNS) + "TARGET"


def _run(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters import audit_reader

    state_dir = ctx.settings.state_dir
    if args.verify:
        r = audit_reader.verify_report(state_dir)  # raises AuditIntegrityError (exit 1)
        if not ctx.json:
            for warning in r.warnings:
                ctx.note(f"warning: {warning}")
        ctx.emit({"ok": True, "records": r.records, "files": r.files, "head": r.head,
                  "warnings": list(r.warnings)},
                 f"audit chain ok: {r.records} records in {r.files} files" + (f"; {r.head}" if r.head else ""))
        return 0
    if args.tail is not None and args.tail < 0:
        raise UsageError(f"--tail must be 0 or more, not {args.tail}")
    if args.decision is not None and args.decision not in DECISIONS:
        raise UsageError(f"--decision must be one of {', '.join(DECISIONS)}, not {args.decision!r}")
    since = since_arg(args.since)
    flt = audit_reader.Filter(since=since, tool=args.tool, decision=args.decision)
    n = args.tail if args.tail is not None else (None if since is not None else 20)
    out = ctx.stdout

    def show(line: bytes, rec: dict[str, Any]) -> None:
        print(line.decode("utf-8", "replace") if ctx.json else _row(rec), file=out, flush=args.follow)

    rows, pos = audit_reader.tail_at(state_dir, n, flt)
    if not ctx.json and (rows or args.follow):
        print(_header(), file=out)
    for line, rec in rows:
        show(line, rec)
    if not rows and not ctx.json and not args.follow:
        ctx.note("no audit records" + (" match" if (since or args.tool or args.decision) else ""))
    if args.follow:
        try:
            for line, rec in audit_reader.follow(state_dir, flt, start=pos):
                show(line, rec)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how --follow ends: exit 0 quietly
        finally:
            sys.stdout.flush()
    return 0
