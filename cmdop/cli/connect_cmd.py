"""`cmdop connect key set|list|rm`, `cmdop connect use` and `cmdop auth status`.

The caller's stored credentials live in `ssh_workspaces.json` (cmdop.adapters.workspaces_file).
`connect key set` reads the key from stdin — one line from a pipe, or typed without echo at a
terminal — never from the command line, where every user of the machine could read it. The first
workspace stored becomes the active one. While the machine has a password (`cmdop password set`),
`connect key set` and `connect key rm` ask for it first (with `--password-stdin`: stdin's first
line, before the key) and refuse without it, exit 4.

`auth status` names the credential a caller command would use (`flag|env|workspace|active|oauth|
none`), its workspace, relay and expiry, and the key masked to its first 8 characters. With no
credential it exits 4 (under --json after printing the object with `"source": "none"`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Callable

from cmdop.cli.common import CliContext, add_command, add_group
from cmdop.cli.credential_flags import add_credential_flags, check_ca
from cmdop.cli.password_cmd import add_password_flag, require_password
from cmdop.core.errors import AuthError, NotFoundError, UsageError

DEFAULT_WORKSPACE = "default"


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `connect` and `auth` command groups to `sub`."""
    connect = add_group(sub, "connect", "store the keys and relays this machine calls with")
    key = add_group(connect, "key", "store, list and remove workspace API keys")
    p = add_command(key, "set", "store a workspace's API key, read from stdin", _key_set)
    p.add_argument("--workspace", default=None, metavar="NAME",
                   help="the workspace to store it as (default: CMDOP_WORKSPACE, the active one, "
                        f"else {DEFAULT_WORKSPACE!r})")
    p.add_argument("--relay", default=None, metavar="HOST:PORT",
                   help="the relay this key belongs to (required for a new workspace unless CMDOP_RELAY is set)")
    p.add_argument("--relay-fingerprint", default=None, metavar="HEX",
                   help="pin the relay's certificate by its SHA-256 fingerprint (as `cmdop relay serve` prints it)")
    p.add_argument("--relay-ca", default=None, metavar="FILE",
                   help="trust the relay's certificate through this PEM CA file")
    p.add_argument("stdin", nargs="?", choices=["-"], metavar="-",
                   help="read the key from stdin (the default; a terminal prompts without echo)")
    add_password_flag(p, "the machine password is stdin's first line, the key the next one")
    add_command(key, "list", "list stored workspaces (keys masked)", _key_list)
    p = add_command(key, "rm", "remove a stored workspace and its key", _key_rm)
    p.add_argument("name", metavar="NAME")
    add_password_flag(p)
    p = add_command(connect, "use", "make a stored workspace the active one", _use)
    p.add_argument("name", metavar="NAME")
    from cmdop.cli import share_cmd

    share_cmd.register(connect)
    from cmdop.cli import trust_cmd

    trust_cmd.register(connect, key)

    auth = add_group(sub, "auth", "which credential caller commands use")
    p = add_command(auth, "status", "name the credential in use (never showing it)", _auth_status)
    add_credential_flags(p)


# -- helpers ----------------------------------------------------------------------------------

def _read_key() -> str:
    """The key from stdin: typed without echo at a terminal, else the first line."""
    from cmdop.core.credentials import check_api_key

    stdin = sys.stdin
    if stdin is None:
        raise UsageError("no stdin to read the key from", hint="pipe the key in: ... | cmdop connect key set -")
    if stdin.isatty():
        import getpass

        try:
            text = getpass.getpass("API key (input hidden): ")
        except EOFError:
            text = ""
    else:
        text = stdin.readline()
    if not text.strip():
        raise UsageError("no key on stdin",
                         hint="pipe it in: `printf '%s\\n' \"$KEY\" | cmdop connect key set --relay HOST:PORT`")
    return check_api_key(text)


def _entry_obj(entry: Any, active: str | None) -> dict[str, Any]:
    from cmdop.core.credentials import masked

    return {"name": entry.name, "server": entry.server, "key": masked(entry.api_key),
            "active": entry.name == active, "relay_fingerprint": entry.relay_fingerprint,
            "relay_ca": entry.relay_ca}


# -- connect key ------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, CliContext], int]


def _one_writer(handler: Handler) -> Handler:
    """Run a handler that reads, changes and writes the workspaces file under its lock."""
    def run(args: argparse.Namespace, ctx: CliContext) -> int:
        from cmdop.adapters import secure_file

        with secure_file.writer_lock(ctx.settings.workspaces_file):
            return handler(args, ctx)
    return run


def _key_set(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters import secure_file, workspaces_file
    from cmdop.core.credentials import (WorkspaceEntry, WorkspacesData, masked, normalize_fingerprint,
                                        split_host_port, valid_name)

    path = ctx.settings.workspaces_file
    # Validate every flag, and read the file, before reading the key: a mistake costs no retyping.
    # An empty flag would store the key in another workspace, or keep the old relay or pin.
    from cmdop.cli.credential_flags import refuse_empty

    refuse_empty((("--workspace", args.workspace), ("--relay", args.relay),
                  ("--relay-fingerprint", args.relay_fingerprint), ("--relay-ca", args.relay_ca)))
    fingerprint = normalize_fingerprint(args.relay_fingerprint) if args.relay_fingerprint else None
    ca = check_ca(args.relay_ca) if args.relay_ca else None
    if args.relay:
        split_host_port(args.relay)

    def target(data: WorkspacesData) -> tuple[str, WorkspaceEntry | None, str]:
        name = valid_name(args.workspace or ctx.settings.workspace or data.active or DEFAULT_WORKSPACE)
        old = data.get(name)
        server = args.relay or (old.server if old else "") or ctx.settings.relay or ""
        if not server:
            raise UsageError(f"workspace {name!r} is new: which relay does the key belong to?",
                             hint="give --relay HOST:PORT (or set CMDOP_RELAY)")
        split_host_port(server)
        return name, old, server

    target(workspaces_file.load(path))      # a usage mistake is told before the key is asked for
    require_password(args, ctx, "connect key set")
    api_key = _read_key()
    # Read, merge and write under the lock (not while a prompt waits): a parallel `key set`
    # of another workspace is kept, not written over.
    with secure_file.writer_lock(path):
        data = workspaces_file.load(path)
        name, old, server = target(data)
        same_server = old is not None and old.server == server
        entry = WorkspaceEntry(
            name=name, api_key=api_key, server=server,
            relay_fingerprint=fingerprint if fingerprint is not None else (old.relay_fingerprint if same_server and old else ""),
            relay_ca=ca if ca is not None else (old.relay_ca if same_server and old else ""),
            extra=dict(old.extra) if old else {},
        )
        entries = [entry if e.name == name else e for e in data.workspaces]
        if old is None:
            entries.append(entry)
        active = data.active if data.active_entry is not None else name
        workspaces_file.save(path, dataclasses.replace(data, active=active, workspaces=tuple(entries)))
    dropped = old is not None and not same_server and bool(old.relay_fingerprint or old.relay_ca) \
        and fingerprint is None and ca is None
    lines = [f"{'updated' if old else 'stored'} the key of workspace {name} ({masked(entry.api_key)}), "
             f"relay {server}"]
    if entry.relay_fingerprint:
        lines.append(f"relay certificate pinned: sha256 {entry.relay_fingerprint}")
    if dropped:
        lines.append("the old relay's certificate pin was dropped (the relay changed)")
    if active == name and data.active != name:
        lines.append(f"{name} is now the active workspace")
    ctx.emit({"workspace": name, "server": server, "key": masked(entry.api_key), "active": active == name,
              "relay_fingerprint": entry.relay_fingerprint, "relay_ca": entry.relay_ca}, "\n".join(lines))
    return 0


def _key_list(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters import workspaces_file

    data = workspaces_file.load(ctx.settings.workspaces_file)
    rows = [_entry_obj(e, data.active) for e in data.workspaces]

    def human(_: object) -> str:
        if not rows:
            return "no stored workspaces (store one: cmdop connect key set --workspace NAME --relay HOST:PORT)"
        table = [("", "NAME", "RELAY", "KEY", "TLS")]
        for r in rows:
            tls = (f"pinned {r['relay_fingerprint'][:16]}…" if r["relay_fingerprint"]
                   else f"ca {r['relay_ca']}" if r["relay_ca"] else "system CAs")
            table.append(("*" if r["active"] else "", r["name"], r["server"], r["key"], tls))
        widths = [max(len(t[i]) for t in table) for i in range(len(table[0]) - 1)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(t, widths)) + "  " + t[-1] for t in table)

    ctx.emit(rows, human)
    return 0


def _unknown(name: str, names: list[str]) -> NotFoundError:
    return NotFoundError(f"no stored workspace {name!r} (stored: {', '.join(names) or 'none'})",
                         hint="list them with `cmdop connect key list`")


@_one_writer
def _key_rm(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters import workspaces_file

    path = ctx.settings.workspaces_file
    data = workspaces_file.load(path)
    name = args.name.strip().lower()
    if data.get(name) is None:
        raise _unknown(name, data.names())
    require_password(args, ctx, "connect key rm")
    entries = tuple(e for e in data.workspaces if e.name != name)
    active = data.active
    if active == name or data.active_entry is None:
        active = entries[0].name if len(entries) == 1 else None
    workspaces_file.save(path, dataclasses.replace(data, active=active, workspaces=entries))
    lines = [f"removed workspace {name}"]
    if active != data.active:
        lines.append(f"{active} is now the active workspace" if active else
                     "no workspace is active now" + (" (choose one: cmdop connect use NAME)" if entries else ""))
    ctx.emit({"removed": name, "active": active}, "\n".join(lines))
    return 0


@_one_writer
def _use(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters import workspaces_file

    path = ctx.settings.workspaces_file
    data = workspaces_file.load(path)
    name = args.name.strip().lower()
    entry = data.get(name)
    if entry is None:
        raise _unknown(name, data.names())
    if data.active != name:
        workspaces_file.save(path, dataclasses.replace(data, active=name))
    ctx.emit({"active": name, "server": entry.server}, f"active workspace: {name} (relay {entry.server})")
    return 0


# -- auth status ------------------------------------------------------------------------------

def _auth_status(args: argparse.Namespace, ctx: CliContext) -> int:
    import time

    from cmdop.cli.credential_flags import resolve_from_args
    from cmdop.core.credentials import masked

    cred = resolve_from_args(args, ctx.settings)
    expires = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cred.expires_at))
               if cred.expires_at is not None else None)
    obj: dict[str, Any] = {"source": cred.source, "workspace": cred.workspace, "relay": cred.relay,
                           "key": masked(cred.secret), "expires_at": expires,
                           "relay_fingerprint": cred.relay_fingerprint, "relay_ca": cred.relay_ca}
    login_lines: list[str] = []
    if cred.source == "oauth":   # the login's account and issuer (cmdop login), never the token
        from cmdop.adapters import token_file

        stored = token_file.load(ctx.settings.token_file)
        if stored is not None:
            obj.update(account=stored.account, issuer=stored.issuer,
                       refreshable=bool(stored.refresh_token))
            login_lines = [f"account:    {stored.account or '-'}", f"issuer:     {stored.issuer}"]
    none_error = AuthError(
        "no credential: no --api-key, CMDOP_API_KEY, stored workspace or login",
        hint="store a key with `cmdop connect key set --relay HOST:PORT` (read from stdin), "
             "set CMDOP_API_KEY, or run `cmdop login`",
    )
    if cred.source == "none":
        if ctx.json:
            ctx.emit(obj)
        raise none_error
    tls = (f"pinned sha256 {cred.relay_fingerprint}" if cred.relay_fingerprint
           else f"CA file {cred.relay_ca}" if cred.relay_ca else "system CAs")
    human = "\n".join([
        f"source:     {cred.source}",
        f"workspace:  {cred.workspace or '-'}",
        f"relay:      {cred.relay or '- (none set: give --relay or set CMDOP_RELAY)'}",
        f"tls:        {tls}",
        f"key:        {obj['key']}",
        f"expires:    {expires or 'never'}",
        *login_lines,
    ])
    ctx.emit(obj, human)
    return 0
