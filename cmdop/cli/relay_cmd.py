"""`cmdop relay serve|workspace|key` — the self-hosted relay and its administration (CONTRACT §7).

`relay serve` runs the relay (cmdop.relay.server). The admin commands work on the relay's
database (`relay.db` in `--data-dir`, cmdop.relay.store) directly, without the network, and may
run while the relay serves: it notices their changes (RelayStore.data_version).

`relay key create WS --name N` prints the key on stdout once (notes go to stderr, so
`KEY=$(cmdop relay key create ...)` captures just the key); only its SHA-256 is stored. Listings
show a key's display prefix (`cmdop_ab12cd34…`), never the key.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from cmdop.cli.common import CliContext, add_command, add_group
from cmdop.core.errors import UsageError

if TYPE_CHECKING:
    from cmdop.relay.store import KeyInfo, RelayStore, Workspace

DEFAULT_LISTEN = "0.0.0.0:7443"


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


def _data_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="the relay's state (default $XDG_DATA_HOME/cmdop-relay, "
                        "i.e. ~/.local/share/cmdop-relay)")


def data_dir(args: argparse.Namespace, ctx: CliContext) -> str:
    """The data dir from --data-dir, else the default under the user's data home."""
    chosen = args.data_dir or ctx.settings.relay_data_dir or os.path.join(
        ctx.settings.home, ".local", "share", "cmdop-relay")
    return os.path.abspath(os.path.expanduser(chosen))


def _open(args: argparse.Namespace, ctx: CliContext) -> RelayStore:
    from cmdop.relay.store import RelayStore

    return RelayStore.open(data_dir(args, ctx))


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

    def ready(info: Any) -> None:
        """The contract's start line: where it listens and the certificate's fingerprint."""
        obj = {"listen": info.address, "port": info.port, "fingerprint": info.fingerprint,
               "self_signed": info.self_signed, "cert": info.cert_path, "data_dir": info.data_dir}
        lines = [f"relay listening on {info.address} (port {info.port}), data dir {info.data_dir}",
                 f"certificate sha256 fingerprint: {info.fingerprint}"
                 + (" (self-signed)" if info.self_signed else "")]
        if info.self_signed:
            lines.append("callers pin it: cmdop connect key set --relay HOST:PORT "
                         f"--relay-fingerprint {info.fingerprint}")
        ctx.emit(obj, "\n".join(lines))
        ctx.stdout.flush()

    options = ServeOptions(
        listen=args.listen,
        data_dir=data_dir(args, ctx),
        tls_cert=os.path.abspath(args.tls_cert) if args.tls_cert else None,
        tls_key=os.path.abspath(args.tls_key) if args.tls_key else None,
        on_ready=ready,
    )
    return int(serve(options))


# -- workspaces -------------------------------------------------------------------------------

def _ws_obj(ws: Workspace) -> dict[str, Any]:
    return {"id": ws.id, "name": ws.name, "created_at": ws.created_at}


def _workspace_create(args: argparse.Namespace, ctx: CliContext) -> int:
    with _open(args, ctx) as store:
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
