"""`cmdop connect trust HOST` and `cmdop connect key show-public`: the caller's end of
end-to-end encryption.

`connect trust HOST` asks the relay for HOST's current end-to-end key (through this machine's
agent link when it has one, else directly), shows the pinned and offered fingerprints, and pins
the offered key after a yes: `--yes`, or a typed `y` at a terminal. Without a terminal and without
--yes it changes nothing and exits 2. Compare the new fingerprint with `cmdop agent status` on
the host before saying yes: the relay is the party the pin protects against.

`connect key show-public` prints this caller's public signing key (`ed25519:BASE64`, created on
first use), the line an agent's `authorized_callers` takes.
"""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Any

from cmdop.cli.common import CliContext, add_command
from cmdop.cli.credential_flags import add_credential_flags, add_tls_flags
from cmdop.core.errors import UsageError


def register(connect: Any, key: Any) -> None:
    """Add `connect trust` to the `connect` group and `show-public` to `connect key`."""
    p = add_command(connect, "trust", "accept a host's new end-to-end key (after a rotation)",
                    _trust)
    add_credential_flags(p)
    add_tls_flags(p)
    p.add_argument("host", metavar="HOST", help="machine name (exact, or a unique prefix)")
    p.add_argument("--yes", action="store_true",
                   help="accept without asking (compare the fingerprint first)")
    add_command(key, "show-public", "print this caller's public key for authorized_callers",
                _show_public)


def _show_public(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters.e2e_files import caller_public_text

    text = caller_public_text(ctx.settings.cmdop_home)
    ctx.emit({"public_key": text}, lambda obj: str(obj["public_key"]))
    return 0


def _lookup(args: argparse.Namespace, ctx: CliContext, host: str) -> dict[str, Any]:
    """The relay's answer for `host`: name, machine_id, e2e_key (bytes), relay."""
    from cmdop.cli import remote_cmd

    if not remote_cmd._uses_own_credential(args, ctx):
        from cmdop.cli.credential_flags import credential_claim, resolve_from_args
        from cmdop.core.errors import DaemonError
        from cmdop.daemon.client import DaemonClient
        from cmdop.relay.caller import failure_error

        claim = credential_claim(resolve_from_args(args, ctx.settings))
        try:
            client = DaemonClient.connect(ctx.settings.socket_path)
        except DaemonError:
            client = None                     # no agent here: ask the relay directly
        if client is not None:
            try:
                with client:
                    answer = client.relay_host_key(host, claim)
                return dict(answer, e2e_key=base64.b64decode(str(answer.get("e2e_key") or "")))
            except DaemonError as exc:
                if not remote_cmd.agent_cannot_ask(exc):
                    raise failure_error(getattr(exc, "code", ""), exc.message, exc.hint or "") from None
    with remote_cmd._channel(args, ctx) as channel:
        reply = channel.host_key(host)
        relay = channel.endpoint.address
    if reply.HasField("failure"):
        from cmdop.relay.caller import failure_error

        raise failure_error(reply.failure.code, reply.failure.message, reply.failure.hint)
    return {"name": reply.name, "machine_id": reply.machine_id, "e2e_key": bytes(reply.e2e_key),
            "relay": relay}


def _trust(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters import e2e_files
    from cmdop.adapters.e2e import fingerprint
    from cmdop.relay.sealing import no_key_error

    found = _lookup(args, ctx, args.host)
    name, key = str(found["name"]), bytes(found["e2e_key"])
    from cmdop.core.errors import E2EError

    if not name.isprintable() or not name.lower().startswith(args.host.strip().lower()):
        # The relay's text, shown beside the fingerprints the user compares: no escape
        # sequence or line break may forge or hide a line; nor may it answer another host.
        raise E2EError(f"the relay answered {name!r} for the host {args.host!r}; refusing it",
                       "the relay may be misrouting calls: check `cmdop hosts`")
    if not key:
        raise no_key_error(name)
    from cmdop.cli.remote_cmd import _pin_scope

    home, relay, machine_id = ctx.settings.cmdop_home, str(found["relay"]), str(found["machine_id"])
    scope = _pin_scope(args, ctx)
    exact = e2e_files.pinned_key(home, relay, machine_id, scope)
    pinned = exact
    if pinned is None:                  # a reinstalled host (new machine id): its name's pin
        same_name = e2e_files.pinned_by_name(home, relay, name, scope)
        pinned = same_name[1] if same_name is not None else None
    row = {"host": name, "machine_id": machine_id, "old": fingerprint(pinned) if pinned else "",
           "new": fingerprint(key), "changed": pinned is not None and exact != key}
    if exact == key:
        if args.host.strip().lower() != name.lower():   # the typed prefix now means this one
            e2e_files.pin(home, relay, machine_id, name, key, scope, alias=args.host)
        ctx.emit(dict(row, trusted=True), lambda r: f"{name}: already trusted ({r['new']})")
        return 0
    if not args.yes:
        ctx.note(f"{name}: pinned key {row['old'] or '(none)'}\n{name}: offered key {row['new']}\n"
                 f"compare it with `cmdop agent status` on {name}")
        if not (sys.stdin is not None and sys.stdin.isatty()):
            raise UsageError(f"not changing the pin of {name} without confirmation",
                             f"run `cmdop connect trust {args.host} --yes` once you have compared "
                             "the fingerprint")
        if input("accept the offered key? [y/N] ").strip().lower() not in ("y", "yes"):
            ctx.note("nothing changed")
            return 1
    e2e_files.pin(home, relay, machine_id, name, key, scope, alias=args.host)
    ctx.emit(dict(row, trusted=True), lambda r: f"{name}: now trusting {r['new']}")
    return 0
