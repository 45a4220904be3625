"""`cmdop connect share HOST|list|revoke ID`: let a guest run tools on one machine for a while.

`connect share HOST --ttl 24h [--tools T,…] [--max-uses N] [--note TEXT]` asks the relay for a
share token bound to HOST (one machine of the caller's workspace); the relay keeps only its hash.
The token is printed once, with a ready-to-paste command for the guest that carries the relay's
address and certificate pin and passes the token through CMDOP_SHARE_TOKEN (an environment
value, not an argument every user of the guest's machine could read in ps). An expiry is
required: `--ttl` (90m, 24h, 7d) or `--no-expiry` on purpose.

`connect share list` shows each share's id, host, note, created, expires, uses, tools and state
(active, expired, revoked, used_up), never a token; `connect share revoke ID` refuses the share
from now on and cuts the guest's calls in flight.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from cmdop.cli.common import CliContext, add_command
from cmdop.cli.credential_flags import add_credential_flags, add_tls_flags
from cmdop.core.errors import CmdopError, UsageError

_ACTIONS = ("list", "revoke")


def register(connect: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `connect share` to the `connect` group."""
    p = add_command(connect, "share", "share one machine with a guest: HOST, list, or revoke ID",
                    _share)
    add_credential_flags(p)
    add_tls_flags(p)
    p.add_argument("what", metavar="HOST|list|revoke",
                   help="the machine to share, or `list`, or `revoke ID`")
    p.add_argument("id", nargs="?", default=None, metavar="ID", help="the share to revoke (sh_…)")
    p.add_argument("--ttl", default=None, metavar="DURATION",
                   help="how long the share lasts: 90m, 24h, 7d (required unless --no-expiry)")
    p.add_argument("--no-expiry", action="store_true", help="a share that never expires (revoke it)")
    p.add_argument("--tools", action="append", default=[], metavar="T,…",
                   help="the tools the guest may use (default: all; the machine's rules still apply)")
    p.add_argument("--max-uses", type=int, default=None, metavar="N",
                   help="how many calls the share allows, 1 or more (default: no limit)")
    p.add_argument("--note", default="", metavar="TEXT",
                   help="who it is for: shown in lists and in the machine's audit log")


def _input_error(exc: Any) -> UsageError:
    return UsageError(str(exc), exc.hint)


def _share(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.what in _ACTIONS:
        given = [f for f, v in (("--ttl", args.ttl), ("--no-expiry", args.no_expiry),
                                ("--tools", args.tools),
                                ("--max-uses", args.max_uses is not None),
                                ("--note", args.note)) if v]
        if given:
            raise UsageError(f"{given[0]} is for creating a share, not `share {args.what}`")
        if args.what == "list":
            if args.id:
                raise UsageError("`connect share list` takes no argument")
            return _list(args, ctx)
        if not args.id:
            raise UsageError("which share?", "cmdop connect share revoke ID (see `cmdop connect share list`)")
        return _revoke(args, ctx)
    if not args.what.strip():     # `share "$HOST"` with HOST unset: not a machine to look up
        raise UsageError("HOST is empty", "cmdop connect share HOST --ttl 24h "
                         "(`cmdop hosts` lists them)")
    if args.id:
        raise UsageError(f"unexpected argument {args.id!r}",
                         "cmdop connect share HOST --ttl 24h [--tools …] [--max-uses N] [--note TEXT]")
    return _create(args, ctx)


def _max_uses(given: int | None) -> int:
    """The request's max_uses: 0 (the proto's "no limit") only when --max-uses is left out.
    An explicit 0 is refused like -1: the proto cannot tell it from "not given", so the relay
    would read it as unlimited."""
    from cmdop.relay import shares

    if given is None:
        return 0
    if given < 1:
        raise shares.ShareInputError(f"--max-uses {given} is out of range",
                                     f"give 1 to {shares.MAX_USES}, or leave it out for no limit")
    return shares.check_max_uses(given)


def _create(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.cli.remote_cmd import _channel, _shown
    from cmdop.relay import shares
    from cmdop.relay.proto import relay_pb2 as pb

    if args.ttl and args.no_expiry:
        raise UsageError("give --ttl or --no-expiry, not both")
    if not args.ttl and not args.no_expiry:
        raise UsageError("a share needs an expiry",
                         "give --ttl 24h (90m, 7d, …), or --no-expiry on purpose")
    try:
        ttl_s = shares.parse_ttl(args.ttl) if args.ttl else 0
        tools = shares.parse_tools(args.tools)
        max_uses = _max_uses(args.max_uses)
        note = shares.check_note(args.note)
    except shares.ShareInputError as exc:
        raise _input_error(exc) from None
    request = pb.CreateShareRequest(host=args.what, ttl_s=ttl_s, no_expiry=args.no_expiry,
                                    tools=list(tools), max_uses=max_uses, note=note)
    with _channel(args, ctx) as channel:
        info = channel.share_rpc("CreateShare", request)
        endpoint = channel.endpoint
    if not shares.looks_like_token(info.token):
        raise CmdopError("the relay answered with something that is not a share token",
                         hint="is the relay a cmdop relay of this version?")
    # (the host as shown: a real host name has no control characters to lose)
    command = guest_command(info.token, endpoint.address, endpoint.fingerprint,
                            _shown(info.host), bool(endpoint.ca_file))
    obj = dict(_row(info), token=info.token, command=command)

    def human(_: object) -> str:
        lines = [_describe(info),
                 f"token (shown once; the relay keeps only its hash): {info.token}",
                 "the guest runs (the token travels in the environment, not on the command line):",
                 f"  {command}"]
        if endpoint.ca_file:
            lines.append("the guest also needs the relay's CA certificate: "
                         "add --relay-ca FILE to that command")
        lines.append(f"revoke it with: cmdop connect share revoke {_shown(info.id)}")
        return "\n".join(lines)

    ctx.emit(obj, human)
    return 0


def guest_command(token: str, relay: str, fingerprint: str, host: str, ca: bool = False) -> str:
    """The command a guest pastes: the token in CMDOP_SHARE_TOKEN, the relay and its pin as
    flags, then the host and a command placeholder."""
    words = ["cmdop", "exec", "--relay", relay]
    if fingerprint:
        words += ["--relay-fingerprint", fingerprint]
    return (f"CMDOP_SHARE_TOKEN={shlex.quote(token)} {shlex.join(words + [host])} -- "
            "COMMAND ARGS…")


def _describe(info: Any) -> str:
    """`share ID of HOST: expiry, uses, tools` — every value the relay sent made safe for a
    terminal (a hostile relay must not write escape sequences here)."""
    from cmdop.cli.remote_cmd import _shown

    expires = f"expires {_shown(info.expires)}" if info.expires else "never expires"
    uses = f"{info.uses}/{info.max_uses} uses" if info.max_uses else f"{info.uses} uses"
    return (f"share {_shown(info.id)} of {_shown(info.host)}: {expires}, {uses}, tools "
            f"{_shown(','.join(info.tools))}")


def _row(info: Any) -> dict[str, Any]:
    return {"id": info.id, "host": info.host, "note": info.note, "created": info.created,
            "expires": info.expires or None, "uses": info.uses, "max_uses": info.max_uses or None,
            "tools": list(info.tools), "state": info.state}


def _list(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.cli.remote_cmd import _channel, _shown
    from cmdop.relay.proto import relay_pb2 as pb

    with _channel(args, ctx) as channel:
        reply = channel.share_rpc("ListShares", pb.ListSharesRequest())
    rows = [_row(s) for s in reply.shares]

    def human(_: object) -> str:
        if not rows:
            return "no shares (create one: cmdop connect share HOST --ttl 24h)"
        table = [("ID", "HOST", "STATE", "EXPIRES", "USES", "TOOLS", "NOTE")]
        for r in rows:
            uses = f"{r['uses']}/{r['max_uses']}" if r["max_uses"] else str(r["uses"])
            table.append((_shown(r["id"]), _shown(r["host"]), _shown(r["state"]),
                          _shown(r["expires"] or "never"), uses, _shown(",".join(r["tools"])),
                          _shown(r["note"])))
        widths = [max(len(t[i]) for t in table) for i in range(len(table[0]) - 1)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(t, widths)) + "  " + t[-1]
                         for t in table)

    ctx.emit(rows, human)
    return 0


def _revoke(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.cli.remote_cmd import _channel
    from cmdop.relay.proto import relay_pb2 as pb

    with _channel(args, ctx) as channel:
        info = channel.share_rpc("RevokeShare", pb.RevokeShareRequest(id=args.id))
    ctx.emit(_row(info), f"revoked {_describe(info)}: the guest's calls are cut and refused "
                         "from now on")
    return 0
