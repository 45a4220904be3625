"""`cmdop login` and `cmdop logout`: an OAuth device-flow login instead of an API key.

`cmdop login [--issuer URL] [--workspace W] [--relay HOST:PORT] [--no-browser] [--ca-file FILE |
--issuer-fingerprint HEX]` finds the issuer's endpoints (RFC 8414 / OpenID Connect discovery),
runs the device flow (RFC 8628: the verification URL and user code on stderr, a countdown while
it waits), and stores the tokens in token.json (cmdop.adapters.token_file: 0600, atomic) with
their expiry, scope, workspace and account. Caller commands use them when no API key is given or
stored (OAuth comes last), refreshed when they expire within 5 minutes.

`cmdop logout` revokes the refresh and access tokens where the server has a revocation endpoint
(RFC 7009), then deletes token.json — the file goes even when the server cannot be reached
(a warning says the tokens stay valid until they expire).

TLS is always verified: the system CAs, `--ca-file` / CMDOP_CA_FILE, or the pinned certificate
(`--issuer-fingerprint`, as `cmdop relay serve` prints it). Tokens never appear in output, errors
or argv. Progress goes to stderr; `--json` prints one object on stdout at the end.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

from cmdop.cli.common import CliContext, add_command

# Seams for tests: the wall clock and sleep the login waits with.
CLOCK: Callable[[], float] = time.time
SLEEP: Callable[[float], None] = time.sleep
PROGRESS_EVERY_S = 10.0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `login` and `logout` to `sub`."""
    p = add_command(sub, "login", "sign in with OAuth (device flow) instead of an API key", _login)
    p.add_argument("--issuer", default=None, metavar="URL",
                   help="the authorization server (https://…; default: the one of the last login)")
    p.add_argument("--workspace", default=None, metavar="NAME",
                   help="the workspace this login is for (when the server does not say)")
    p.add_argument("--relay", default=None, metavar="HOST:PORT",
                   help="the relay to call through with this login (default: the one the issuer "
                        "advertises)")
    p.add_argument("--relay-fingerprint", default=None, metavar="HEX",
                   help="pin the relay's certificate (with --relay, for an issuer that does not "
                        "advertise the relay)")
    p.add_argument("--relay-ca", default=None, metavar="FILE",
                   help="trust the relay's certificate through this PEM CA file (with --relay)")
    p.add_argument("--resource", default=None, metavar="URI",
                   help="the resource (RFC 8707) to ask the issuer's tokens for: an external "
                        "issuer may need the relay's audience here")
    p.add_argument("--no-browser", action="store_true",
                   help="only print the URL and code; do not try to open a browser")
    p.add_argument("--ca-file", default=None, metavar="FILE",
                   help="trust the issuer's certificate through this PEM CA file (else CMDOP_CA_FILE)")
    p.add_argument("--issuer-fingerprint", default=None, metavar="HEX",
                   help="pin the issuer's certificate by its SHA-256 fingerprint (a cmdop relay "
                        "prints it at start)")
    p.add_argument("--client-id", default=None, metavar="ID", help="the OAuth client id (default cmdop-cli)")
    p.add_argument("--scope", default=None, metavar="SCOPES",
                   help="the scopes to ask for (default: openid offline_access where offered)")
    from cmdop.cli.password_cmd import add_password_flag

    out = add_command(sub, "logout", "revoke the login's tokens and delete token.json", _logout)
    add_password_flag(out)


# -- helpers ----------------------------------------------------------------------------------

def _iso(epoch: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch is not None else None


def _mmss(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.999))
    return f"{seconds // 60}:{seconds % 60:02d}"


class _Progress:
    """The waiting line on stderr: rewritten in place on a terminal, a line every ~10 s else."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        try:
            self.tty = bool(stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.last_line: float | None = None
        self.dirty = False

    def show(self, text: str, now: float) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self.dirty = True
        elif self.last_line is None or now - self.last_line >= PROGRESS_EVERY_S:
            print(text, file=self.stream)
            self.last_line = now

    def line(self, text: str) -> None:
        self.clear()
        print(text, file=self.stream)

    def clear(self) -> None:
        if self.dirty:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.dirty = False


def _waiter(progress: _Progress) -> Callable[[Any], None]:
    """The device flow's `wait`: sleep in steps of ≤ 1 s, showing the countdown."""
    from cmdop.core.device_flow import Wait

    def wait(action: Wait) -> None:
        start = CLOCK()
        end = start + action.seconds
        if action.reason == "retry":
            progress.line(f"cmdop: {action.detail}; retrying in {action.seconds:.0f} s")
        elif action.reason == "slow_down":
            progress.line(f"cmdop: the server asked to poll more slowly (every {action.seconds:.0f} s)")
        while True:
            now = CLOCK()
            left = end - now
            if left <= 0:
                break
            if action.deadline is not None and (action.seconds > 1 or progress.tty):
                progress.show(f"waiting for approval… the code expires in {_mmss(action.deadline - now)}", now)
            SLEEP(min(1.0, left))
    return wait


def _open_browser(url: str, ctx: CliContext) -> bool:
    """Open `url` in a graphical browser when there is one to open (never a terminal browser,
    which would take over this terminal)."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        if not ctx.stderr.isatty():
            return False
        import webbrowser

        return bool(webbrowser.open(url, new=2))
    except Exception:   # a browser that fails to start is no reason to fail the login
        return False


# -- login ------------------------------------------------------------------------------------

def _login(args: argparse.Namespace, ctx: CliContext) -> int:
    import dataclasses

    from cmdop.adapters import oauth_client, token_file
    from cmdop.core.credentials import normalize_fingerprint, split_host_port, valid_name
    from cmdop.core.device_flow import ShowCode, id_token_subject
    from cmdop.core.errors import ConfigError, UsageError

    path = ctx.settings.token_file
    previous: token_file.StoredToken | None = None
    try:
        previous = token_file.load(path)
    except ConfigError:   # a broken old file is replaced by this login
        previous = None
    issuer_arg = args.issuer or (previous.issuer if previous else None)
    if not issuer_arg:
        raise UsageError("which authorization server? give --issuer https://HOST[:PORT]",
                         hint="for a cmdop relay: its OAuth address, with --issuer-fingerprint HEX "
                              "(printed by `cmdop relay serve`)")
    issuer = oauth_client.normalize_issuer(issuer_arg)
    same_issuer = previous is not None and previous.issuer.rstrip("/") == issuer
    if args.issuer_fingerprint and args.ca_file:
        raise UsageError("give --ca-file or --issuer-fingerprint, not both")
    fingerprint = normalize_fingerprint(args.issuer_fingerprint) if args.issuer_fingerprint else ""
    # A relay named by hand is trusted only as the user says (a pin or a CA file of its own);
    # checked now, before the user approves anything.
    relay_pin = normalize_fingerprint(args.relay_fingerprint) if args.relay_fingerprint else ""
    ca_file = "" if fingerprint else (args.ca_file or os.environ.get("CMDOP_CA_FILE") or "")
    if not fingerprint and not ca_file and same_issuer and previous is not None:
        fingerprint, ca_file = previous.issuer_fingerprint, previous.ca_file   # as the last login
    if ca_file:
        ca_file = os.path.abspath(os.path.expanduser(ca_file))
        if not os.path.isfile(ca_file):
            raise UsageError(f"the CA file {ca_file} does not exist", hint="check --ca-file / CMDOP_CA_FILE")
    workspace = valid_name(args.workspace) if args.workspace else ""
    if args.relay:
        split_host_port(args.relay)
    client_id = args.client_id or oauth_client.CLIENT_ID

    transport = oauth_client.Transport(oauth_client.TlsOptions(ca_file=ca_file, fingerprint=fingerprint))
    progress = _Progress(ctx.stderr)

    def on_retry(detail: str, delay: float) -> None:
        progress.line(f"cmdop: {detail}; retrying in {delay:.0f} s")

    meta = oauth_client.discover(issuer, transport, sleep=SLEEP, on_retry=on_retry)
    scope = args.scope if args.scope is not None else oauth_client.default_scope(meta)

    def show(code: ShowCode) -> None:
        lines = [f"To sign in, open {code.verification_uri}",
                 f"and enter the code: {code.user_code}"]
        if code.verification_uri_complete:
            lines.append(f"(or open {code.verification_uri_complete} — the code is filled in)")
        for line in lines:
            progress.line(line)
        if not args.no_browser and _open_browser(code.verification_uri_complete or code.verification_uri, ctx):
            progress.line("(opened in your browser)")

    try:
        # A cmdop relay shows the workspace asked for to the administrator who approves.
        extra: dict[str, str] | None = (
            {"workspace": workspace} if meta.cmdop_relay and workspace else None)
        if args.resource:
            extra = {**(extra or {}), "resource": args.resource}
        tokens = oauth_client.run_device_flow(meta, transport, client_id=client_id, scope=scope, show=show,
                                              wait=_waiter(progress), clock=CLOCK, extra=extra)
    finally:
        progress.clear()   # an error or Ctrl-C is printed on a clean line, not after the countdown
    now = CLOCK()
    account = tokens.account or (id_token_subject(tokens.id_token, issuer=meta.issuer, client_id=client_id)
                                 if tokens.id_token else "")
    relay_from_issuer = bool(meta.cmdop_relay) and args.relay in (None, "", meta.cmdop_relay)
    relay = args.relay or meta.cmdop_relay or ""
    if relay:
        try:
            split_host_port(relay)
        except UsageError:
            relay = ""
            relay_from_issuer = False
    stored = token_file.StoredToken(
        issuer=meta.issuer, token_endpoint=meta.token_endpoint,
        revocation_endpoint=meta.revocation_endpoint, client_id=client_id,
        access_token=tokens.access_token, refresh_token=tokens.refresh_token,
        expires_at=now + tokens.expires_in if tokens.expires_in is not None else None,
        lifetime_s=tokens.expires_in if tokens.expires_in else None,
        scope=tokens.scope, workspace=tokens.workspace or workspace, account=account, relay=relay,
        issuer_fingerprint=fingerprint, ca_file=ca_file,
        # The relay the issuer advertises is trusted as the issuer is: the same pin (a relay's
        # OAuth server serves the relay's certificate), else the certificate its metadata names
        # (fetched over verified TLS), else the same CA file.
        relay_fingerprint=relay_pin or ((fingerprint or meta.cmdop_relay_fingerprint)
                                        if relay_from_issuer else ""),
        relay_ca=args.relay_ca or (ca_file if relay_from_issuer and not (
            fingerprint or meta.cmdop_relay_fingerprint) else ""),
    )
    if previous is not None and same_issuer:
        stored = dataclasses.replace(stored, extra=dict(previous.extra))
    with token_file.locked(path):
        token_file.save(path, stored)

    obj: dict[str, Any] = {"status": "logged_in", "issuer": stored.issuer, "account": stored.account,
                           "workspace": stored.workspace, "relay": stored.relay, "scope": stored.scope,
                           "expires_at": _iso(stored.expires_at), "refreshable": bool(stored.refresh_token),
                           "token_file": path}
    who = f"as {stored.account}" if stored.account else "(account not named by the server)"
    lines = [f"logged in {who} at {stored.issuer}",
             f"workspace: {stored.workspace or '-'}   relay: {stored.relay or '- (give --relay or set CMDOP_RELAY)'}",
             f"the token expires {_iso(stored.expires_at) or 'never'}"
             + ("; it is refreshed automatically" if stored.refresh_token else "; then run `cmdop login` again")]
    ctx.emit(obj, "\n".join(lines))
    _warn_if_shadowed(ctx)
    return 0


def _warn_if_shadowed(ctx: CliContext) -> None:
    """Say so when an API key would still win over this login (OAuth comes last)."""
    from cmdop.adapters import workspaces_file

    try:
        data = workspaces_file.load(ctx.settings.workspaces_file)
    except Exception:
        return
    if ctx.settings.api_key:
        ctx.note("note: CMDOP_API_KEY is set and wins over this login (unset it to use the login)")
    elif data.active_entry is not None:
        ctx.note(f"note: the stored key of workspace {data.active} wins over this login "
                 f"(`cmdop connect key rm {data.active}` to use the login instead)")


# -- logout -----------------------------------------------------------------------------------

def _logout(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters import oauth_client, token_file
    from cmdop.cli.password_cmd import require_password
    from cmdop.core.errors import CmdopError

    require_password(args, ctx, "logout")     # changes this machine's security state

    path = ctx.settings.token_file
    token = token_file.load(path)
    if token is None:
        ctx.emit({"status": "logged_out", "revoked": False, "removed": False},
                 "not logged in (no token file)")
        return 0
    revoked = False
    warning = ""
    if token.revocation_endpoint:
        transport = oauth_client.Transport(oauth_client.TlsOptions(ca_file=token.ca_file,
                                                                   fingerprint=token.issuer_fingerprint))
        try:
            for secret, hint in ((token.refresh_token, "refresh_token"), (token.access_token, "access_token")):
                if secret:
                    oauth_client.revoke(transport, token.revocation_endpoint, token=secret, token_type_hint=hint,
                                        client_id=token.client_id, sleep=SLEEP)
            revoked = True
        except CmdopError as exc:
            warning = (f"warning: could not revoke the tokens at the server ({exc.message}); they stay "
                       f"valid until they expire ({_iso(token.expires_at) or 'no expiry given'})")
    else:
        warning = (f"note: {token.issuer} offers no revocation: the tokens stay valid until they expire "
                   f"({_iso(token.expires_at) or 'no expiry given'})")
    with token_file.locked(path):
        removed = token_file.remove(path)
    if warning:
        ctx.note(warning)
    ctx.emit({"status": "logged_out", "revoked": revoked, "removed": removed, "issuer": token.issuer},
             f"logged out of {token.issuer}" + (" (tokens revoked)" if revoked else ""))
    return 0

