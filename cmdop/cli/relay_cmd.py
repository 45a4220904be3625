"""`cmdop relay serve|workspace|key` — the self-hosted relay and its administration.

`relay serve` runs the relay (cmdop.relay.server). The admin commands work on the relay's
database (`relay.db` in `--data-dir`, cmdop.relay.store) directly, without the network, and may
run while the relay serves: it notices their changes (RelayStore.data_version).

`relay key create WS --name N` prints the key on stdout once (notes go to stderr, so
`KEY=$(cmdop relay key create ...)` captures just the key); only its SHA-256 is stored. Listings
show a key's display prefix (`cmdop_ab12cd34…`), never the key.

Device login (the OAuth cabinet, cmdop.relay.cabinet): `cmdop login` on a caller's machine
shows a user code; the relay's administrator approves it offline with
`cmdop relay approve USER-CODE --account EMAIL --workspace W` (the account is created when new)
or refuses it with `cmdop relay deny USER-CODE`; `relay device list` shows the pending ones.
`relay account list|disable|enable` manage accounts; disabling revokes their tokens and a
running relay ends their links and calls.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import TYPE_CHECKING, Any

from cmdop.cli import relay_status
from cmdop.cli.common import CliContext, add_command, add_group
from cmdop.core.errors import CmdopError, UsageError

if TYPE_CHECKING:
    from cmdop.relay.store import Account, DeviceRequest, KeyInfo, Workspace
    from cmdop.relay.store_api import RelayStoreApi

DEFAULT_LISTEN = "0.0.0.0:7443"
MIN_ACCESS_TOKEN_TTL_S = 10


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `relay` command group to `sub`."""
    relay = add_group(sub, "relay", "run the self-hosted relay and administer it")

    serve = add_command(relay, "serve", "run the relay (TLS always; self-signed unless --tls-cert)", _serve)
    serve.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                       help=f"address to listen on ({DEFAULT_LISTEN}; IPv6 as [::]:7443)")
    _data_dir_flag(serve)
    serve.add_argument("--tls-cert", default=None, metavar="FILE",
                       help="PEM certificate (chain) to serve instead of the self-signed one")
    serve.add_argument("--tls-key", default=None, metavar="FILE",
                       help="its PEM private key (0600); required with --tls-cert")
    serve.add_argument("--oauth-listen", default=None, metavar="HOST:PORT",
                       help="HTTPS address of the device-login (OAuth) endpoints (default: the "
                            "--listen host, its port + 1; port 0 = any free port; `off` = none)")
    serve.add_argument("--issuer-url", default=None, metavar="URL",
                       help="the OAuth issuer URL callers reach (default https://HOST:OAUTH-PORT)")
    serve.add_argument("--oidc-issuer", default=None, metavar="URL",
                       help="also accept access tokens of this external OpenID Connect issuer")
    serve.add_argument("--oidc-audience", default=None, metavar="A",
                       help="the audience its tokens must carry (required with --oidc-issuer)")
    serve.add_argument("--oidc-workspace-claim", default="workspace", metavar="C",
                       help="the claim that names the caller's workspace (default: workspace)")
    # Short-lived tokens for tests of the refresh path (not for production: hidden from --help).
    serve.add_argument("--oidc-ca-file", default=None, metavar="FILE",
                       help="trust the external issuer's certificate through this PEM CA file "
                            "(default: the system's CAs)")
    serve.add_argument("--new-machines-per-hour", type=int, default=20, metavar="N",
                       help="new machines one key may enrol an hour (20; a fleet roll-out "
                            "with one key needs more)")
    serve.add_argument("--access-token-ttl", type=int, default=3600, metavar="SECONDS",
                       help=argparse.SUPPRESS)
    # Several nodes (cmdop.relay.cluster): a shared bus, a shared PostgreSQL store.
    relay_status.bus_flag(serve)
    serve.add_argument("--node-id", default=None, metavar="ID",
                       help="this node's id on the bus (default HOSTNAME:PORT)")
    relay_status.register(relay)

    workspace = add_group(relay, "workspace", "create and list workspaces")
    p = add_command(workspace, "create", "create a workspace", _workspace_create)
    p.add_argument("name", metavar="NAME", help="1-64 of a-z 0-9 . _ - (lower-cased)")
    _data_dir_flag(p)
    _data_dir_flag(add_command(workspace, "list", "list the workspaces", _workspace_list))

    key = add_group(relay, "key", "create, list and revoke API keys")
    p = add_command(key, "create", "create an API key (printed once)", _key_create)
    p.add_argument("workspace", metavar="WORKSPACE")
    p.add_argument("--name", required=True, metavar="N", help="the key's name, unique in the workspace")
    _data_dir_flag(p)
    p = add_command(key, "list", "list API keys (their display prefix, never the key)", _key_list)
    p.add_argument("--workspace", default=None, metavar="W", help="only this workspace's keys")
    _data_dir_flag(p)
    p = add_command(key, "revoke", "revoke an API key", _key_revoke)
    p.add_argument("key_id", metavar="ID", help="the key's id or its display prefix")
    _data_dir_flag(p)

    p = add_command(relay, "approve", "approve a device login (`cmdop login`) by its user code", _approve)
    p.add_argument("user_code", metavar="USER-CODE", help="the code `cmdop login` shows (XXXX-XXXX)")
    p.add_argument("--account", required=True, metavar="EMAIL",
                   help="the person's e-mail address (the account is created when new)")
    p.add_argument("--workspace", default=None, metavar="W",
                   help="the workspace the login is for (default: the one the device asked for)")
    _data_dir_flag(p)
    p = add_command(relay, "deny", "refuse a device login by its user code", _deny)
    p.add_argument("user_code", metavar="USER-CODE")
    _data_dir_flag(p)
    device = add_group(relay, "device", "device logins waiting for approval")
    _data_dir_flag(add_command(device, "list", "list pending device logins", _device_list))

    account = add_group(relay, "account", "list, disable and enable accounts (device-login users)")
    _data_dir_flag(add_command(account, "list", "list accounts", _account_list))
    p = add_command(account, "disable", "disable an account: its tokens stop working at once",
                    _account_disable)
    p.add_argument("email", metavar="EMAIL")
    _data_dir_flag(p)
    p = add_command(account, "enable", "enable a disabled account (it must log in again)",
                    _account_enable)
    p.add_argument("email", metavar="EMAIL")
    _data_dir_flag(p)


def _data_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="the relay's state (default $XDG_DATA_HOME/cmdop-relay, "
                        "i.e. ~/.local/share/cmdop-relay)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="the relay's database: postgresql://USER@HOST:PORT/DB (password from "
                        "PGPASSFILE; or give the URL in CMDOP_RELAY_STORE instead), or "
                        "sqlite:/DIR (default: relay.db in the data dir)")


def store_location(args: argparse.Namespace, ctx: CliContext) -> str | None:
    """--store, else CMDOP_RELAY_STORE, else None (SQLite in the data dir). A password in
    --store gets a note: the command line is visible to every user of the machine."""
    given = getattr(args, "store", None)
    if given and re.match(r"^postgres(ql)?://[^/@?]*:[^/@?]*@", given.strip(), re.IGNORECASE):
        ctx.note("note: the password in --store is visible to other users (ps); "
                 "put the URL in CMDOP_RELAY_STORE or the password in PGPASSFILE instead")
    return given or ctx.settings.relay_store or None


def data_dir(args: argparse.Namespace, ctx: CliContext) -> str:
    """The data dir from --data-dir, else the default under the user's data home."""
    chosen = args.data_dir or ctx.settings.relay_data_dir or os.path.join(
        ctx.settings.home, ".local", "share", "cmdop-relay")
    return os.path.abspath(os.path.expanduser(chosen))


def _open(args: argparse.Namespace, ctx: CliContext, create: bool = False) -> RelayStoreApi:
    """The relay's store. Only `create` (making a workspace, the first step on a new relay)
    may start an SQLite store where there is none: anywhere else a missing one is a mistyped
    --data-dir, and listing it would answer "nothing" from a database made up on the spot."""
    from cmdop.relay.store import DB_NAME
    from cmdop.relay.store_api import open_store, sqlite_dir

    location, directory = store_location(args, ctx), data_dir(args, ctx)
    sqlite = sqlite_dir(location, directory)
    if not create and sqlite is not None and not os.path.exists(os.path.join(sqlite, DB_NAME)):
        raise CmdopError(f"no relay data in {sqlite} (no {DB_NAME} there)",
                         hint="check --data-dir (the relay's own, e.g. /var/lib/cmdop-relay); a new "
                              "relay starts with `cmdop relay workspace create NAME`")
    return open_store(location, directory)


# -- serve ------------------------------------------------------------------------------------

def _serve(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.core.credentials import split_host_port

    split_host_port(args.listen, listen=True)  # UsageError for a bad address, before anything starts
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together: give both or neither",
                         hint="without them the relay makes (once) and serves a self-signed certificate")
    from cmdop.adapters.logging_setup import configure
    from cmdop.relay.server import ServeOptions, serve

    # A server logs at info unless told otherwise (the CLI default, warning, is for commands).
    configure(getattr(args, "log_level", None) or "info", ctx.log_format)

    if args.oauth_listen and args.oauth_listen.strip().lower() not in ("off", "none", "no"):
        split_host_port(args.oauth_listen, listen=True)
    if args.oidc_issuer and not args.oidc_audience:
        raise UsageError("--oidc-issuer needs --oidc-audience A (the audience its tokens carry for this relay)")
    if args.access_token_ttl < MIN_ACCESS_TOKEN_TTL_S:
        raise UsageError(f"--access-token-ttl must be at least {MIN_ACCESS_TOKEN_TTL_S} seconds")

    def ready(info: Any) -> None:
        """The contract's start line: where it listens and the certificate's fingerprint."""
        oauth_port = getattr(info, "oauth_port", None)
        issuer = getattr(info, "issuer", None)
        obj = {"listen": info.address, "port": info.port, "fingerprint": info.fingerprint,
               "self_signed": info.self_signed, "cert": info.cert_path, "data_dir": info.data_dir,
               "oauth_listen": getattr(info, "oauth_address", None), "oauth_port": oauth_port,
               "issuer": issuer, "oidc_issuer": getattr(info, "oidc_issuer", None),
               "store": getattr(info, "store", None), "node": getattr(info, "node", "") or None,
               "bus": getattr(info, "bus", "") or None}
        lines = [f"relay listening on {info.address} (port {info.port}), data dir {info.data_dir}"
                 + (f", store {obj['store']}" if str(obj["store"] or "").startswith("postgresql:") else ""),
                 f"certificate sha256 fingerprint: {info.fingerprint}"
                 + (" (self-signed)" if info.self_signed else "")]
        if info.self_signed:
            lines.append("callers pin it: cmdop connect key set --relay HOST:PORT "
                         f"--relay-fingerprint {info.fingerprint}")
        if issuer:
            lines.append(f"device login (OAuth) on port {oauth_port}: cmdop login --issuer {issuer}")
        if obj["oidc_issuer"]:
            lines.append(f"accepting access tokens of {obj['oidc_issuer']}")
        if obj["node"]:
            lines.append(f"relay node {obj['node']} on bus {obj['bus']}")
        ctx.emit(obj, "\n".join(lines))
        ctx.stdout.flush()

    options = ServeOptions(
        listen=args.listen,
        data_dir=data_dir(args, ctx),
        tls_cert=os.path.abspath(args.tls_cert) if args.tls_cert else None,
        tls_key=os.path.abspath(args.tls_key) if args.tls_key else None,
        on_ready=ready,
        oauth_listen=args.oauth_listen,
        issuer_url=args.issuer_url,
        oidc_issuer=args.oidc_issuer,
        oidc_audience=args.oidc_audience,
        oidc_workspace_claim=args.oidc_workspace_claim,
        access_token_ttl_s=args.access_token_ttl,
        new_machines_per_hour=args.new_machines_per_hour,
        oidc_ca_file=args.oidc_ca_file,
        store=store_location(args, ctx),
        bus=relay_status.bus_location(args, ctx),
        node_id=args.node_id,
    )
    return int(serve(options))


# -- workspaces -------------------------------------------------------------------------------

def _ws_obj(ws: Workspace) -> dict[str, Any]:
    return {"id": ws.id, "name": ws.name, "created_at": ws.created_at}


def _workspace_create(args: argparse.Namespace, ctx: CliContext) -> int:
    with _open(args, ctx, create=True) as store:
        ws = store.create_workspace(args.name)
    ctx.emit(_ws_obj(ws), f"created workspace {ws.name}\n"
                          f"next: cmdop relay key create {ws.name} --name NAME")
    return 0


def _workspace_list(args: argparse.Namespace, ctx: CliContext) -> int:
    with _open(args, ctx) as store:
        rows = store.list_workspaces()

    def human(_: object) -> str:
        if not rows:
            return "no workspaces (create one: cmdop relay workspace create NAME)"
        width = max(4, *(len(w.name) for w in rows))
        lines = [f"{'NAME':<{width}}  CREATED"]
        lines += [f"{w.name:<{width}}  {w.created_at}" for w in rows]
        return "\n".join(lines)

    ctx.emit([_ws_obj(w) for w in rows], human)
    return 0


# -- keys -------------------------------------------------------------------------------------

def _display(info: KeyInfo) -> str:
    return f"cmdop_{info.prefix}…"


def _key_obj(info: KeyInfo) -> dict[str, Any]:
    return {"id": info.id, "workspace": info.workspace, "name": info.name, "prefix": info.prefix,
            "created_at": info.created_at, "revoked_at": info.revoked_at,
            "last_used_at": info.last_used_at}


def _key_create(args: argparse.Namespace, ctx: CliContext) -> int:
    with _open(args, ctx) as store:
        info, text = store.create_key(args.workspace, args.name)
    if ctx.json:
        ctx.emit({"id": info.id, "name": info.name, "workspace": info.workspace, "key": text})
    else:
        print(text, file=ctx.stdout)
        ctx.note(f"created key {info.name!r} ({_display(info)}) in workspace {info.workspace}")
        ctx.note("this key will not be shown again: store it now, e.g. on the caller's machine "
                 f"`cmdop connect key set --workspace {info.workspace} --relay HOST:PORT` (reads it from stdin)")
    return 0


def _key_list(args: argparse.Namespace, ctx: CliContext) -> int:
    with _open(args, ctx) as store:
        rows = store.list_keys(args.workspace)

    def human(_: object) -> str:
        if not rows:
            return "no keys (create one: cmdop relay key create WORKSPACE --name NAME)"
        table = [("KEY", "WORKSPACE", "NAME", "CREATED", "LAST USED", "STATUS")]
        for k in rows:
            status = f"revoked {k.revoked_at}" if k.revoked_at else "active"
            table.append((_display(k), k.workspace, k.name, k.created_at, k.last_used_at or "never", status))
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in table)

    ctx.emit([_key_obj(k) for k in rows], human)
    return 0


def _key_revoke(args: argparse.Namespace, ctx: CliContext) -> int:
    with _open(args, ctx) as store:
        before = store.find_key(args.key_id)
        info = store.revoke_key(before.id)
    if before.revoked_at is not None:
        text = f"key {info.name!r} ({_display(info)}) of workspace {info.workspace} was already revoked at {info.revoked_at}"
    else:
        text = (f"revoked key {info.name!r} ({_display(info)}) of workspace {info.workspace}; "
                "a running relay refuses it from now on")
    ctx.emit(_key_obj(info), text)
    return 0


# -- device logins and accounts -----------------------------------------------------------------

def _device_obj(req: DeviceRequest) -> dict[str, Any]:
    from cmdop.relay.store import utc_text

    return {"id": req.id, "client_id": req.client_id, "scope": req.scope,
            "workspace_hint": req.workspace_hint or None, "client_address": req.client_address,
            "created_at": req.created_at, "expires_at": utc_text(req.expires), "status": req.status,
            "account": req.account, "workspace": req.workspace}


def _account_obj(acct: Account) -> dict[str, Any]:
    return {"id": acct.id, "email": acct.email, "workspaces": list(acct.workspaces),
            "created_at": acct.created_at, "disabled_at": acct.disabled_at}


def _approve(args: argparse.Namespace, ctx: CliContext) -> int:
    with _open(args, ctx) as store:
        req, acct = store.approve_device(args.user_code, args.account, args.workspace)
    obj = {"device": _device_obj(req), "account": _account_obj(acct)}
    ctx.emit(obj, f"approved the device login from {req.client_address or 'an unknown address'} "
                  f"(started {req.created_at}) for {acct.email} in workspace {req.workspace}; "
                  "`cmdop login` finishes within seconds")
    return 0


def _deny(args: argparse.Namespace, ctx: CliContext) -> int:
    with _open(args, ctx) as store:
        req = store.deny_device(args.user_code)
    ctx.emit(_device_obj(req), f"denied the device login from {req.client_address or 'an unknown address'} "
                               f"(started {req.created_at})")
    return 0


def _device_list(args: argparse.Namespace, ctx: CliContext) -> int:
    with _open(args, ctx) as store:
        rows = store.list_device_requests()

    def human(_: object) -> str:
        if not rows:
            return "no device logins waiting (a person starts one with `cmdop login`)"
        table = [("STARTED", "FROM", "WORKSPACE ASKED", "EXPIRES")]
        table += [(r.created_at, r.client_address, r.workspace_hint or "-", _device_obj(r)["expires_at"])
                  for r in rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
        out.append("approve one with the code its user sees: cmdop relay approve USER-CODE "
                   "--account EMAIL --workspace W")
        return "\n".join(out)

    ctx.emit([_device_obj(r) for r in rows], human)
    return 0


def _account_list(args: argparse.Namespace, ctx: CliContext) -> int:
    with _open(args, ctx) as store:
        rows = store.list_accounts()

    def human(_: object) -> str:
        if not rows:
            return "no accounts (one is created by: cmdop relay approve USER-CODE --account EMAIL ...)"
        table = [("EMAIL", "WORKSPACES", "CREATED", "STATUS")]
        table += [(a.email, ",".join(a.workspaces) or "-", a.created_at,
                   f"disabled {a.disabled_at}" if a.disabled_at else "active") for a in rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in table)

    ctx.emit([_account_obj(a) for a in rows], human)
    return 0


def _account_disable(args: argparse.Namespace, ctx: CliContext) -> int:
    with _open(args, ctx) as store:
        before = store.find_account(args.email)
        acct = store.set_account_disabled(before.email, True)
    if before.disabled_at is not None:
        text = f"account {acct.email} was already disabled at {acct.disabled_at}"
    else:
        text = (f"disabled account {acct.email}: its tokens are revoked and a running relay ends "
                "its links and calls")
    ctx.emit(_account_obj(acct), text)
    return 0


def _account_enable(args: argparse.Namespace, ctx: CliContext) -> int:
    with _open(args, ctx) as store:
        acct = store.set_account_disabled(args.email, False)
    ctx.emit(_account_obj(acct), f"enabled account {acct.email}; it logs in again with `cmdop login`")
    return 0
