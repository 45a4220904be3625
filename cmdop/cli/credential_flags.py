"""The credential flags of caller commands and the glue to the pure resolver.

A caller command (`cmdop auth status`, `hosts`, `exec`, `call`) adds the flags with
`add_credential_flags(parser)` and gets its credential with `resolve_from_args(args, settings)`:
this loads `ssh_workspaces.json`, the OAuth token and (only when nothing else names a relay)
config.yaml's `relay`, and hands them with the flags and CMDOP_* values (already in `Settings`)
to `cmdop.core.credentials.resolve_credential`.

`--api-key` is accepted because the resolution order puts it first, but a key on the command line is
visible to every user of the machine (ps, /proc): CMDOP_API_KEY or a stored workspace is better.
"""

from __future__ import annotations

import argparse
import time
from typing import Iterable

from cmdop.core.credentials import OAuthToken, ResolvedCredential, resolve_credential, valid_name
from cmdop.core.errors import AuthError, UsageError
from cmdop.core.settings import Settings


def add_credential_flags(parser: argparse.ArgumentParser, *, api_key: bool = True) -> None:
    """`--api-key KEY`, `--workspace NAME`, `--relay HOST:PORT` on `parser`."""
    if api_key:
        parser.add_argument("--api-key", default=None, metavar="KEY",
                            help="API key (visible to other users in ps: prefer CMDOP_API_KEY "
                                 "or `cmdop connect key set`)")
    parser.add_argument("--workspace", default=None, metavar="NAME",
                        help="use this stored workspace's key (else CMDOP_WORKSPACE, else the active one)")
    parser.add_argument("--relay", default=None, metavar="HOST:PORT",
                        help="relay address (else CMDOP_RELAY, else the workspace's)")


def load_oauth_token(settings: Settings, now: float | None = None) -> OAuthToken | None:
    """The OAuth token of `cmdop login` (token.json), refreshed first when it expires within
    5 minutes (cmdop.adapters.token_file.ensure_fresh: under a file lock, so two CLIs never
    refresh at once). AuthError (exit 4, "run `cmdop login`") when the login has expired or was
    revoked; UnreachableError (exit 5) when an expired token could not be refreshed."""
    from cmdop.adapters import token_file

    moment = time.time() if now is None else now
    stored = token_file.load(settings.token_file)
    if stored is None:
        return None
    if stored.due(moment):
        # A running agent keeps the login fresh: it refreshes (and saves) when asked, so this
        # command does not refresh on its own as well; without an agent, ensure_fresh does it
        # under the file lock.
        _token_from_agent(settings)
    token = token_file.ensure_fresh(settings, now=moment)
    if token is None:
        return None
    if token.expired(moment) and not token.refresh_token:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(token.expires_at or 0))
        raise AuthError(f"the login at {token.issuer} expired at {when}",
                        "run `cmdop login` to sign in again (or use a workspace API key)")
    return token.to_oauth()


def _token_from_agent(settings: Settings) -> tuple[str, float | None] | None:
    """(access token, expiry) from the running agent's `token` op (it refreshes first when the
    token is due, and saves it to token.json); None when no agent answers or has no login."""
    from cmdop.core.errors import DaemonError
    from cmdop.daemon.client import DaemonClient

    try:
        with DaemonClient.connect(settings.socket_path) as client:
            answer = client.request("token")
    except DaemonError:
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
        return None
    expires = answer.get("expires_at")
    return answer["access_token"], float(expires) if isinstance(expires, (int, float)) else None


def refuse_empty(flags: Iterable[tuple[str, str | None]]) -> None:
    """UsageError for the first (flag, value) given but empty or blank (`--workspace "$UNSET"`):
    never quietly the default workspace, relay, key or pin."""
    for flag, value in flags:
        if value is not None and not value.strip():
            raise UsageError(f"{flag} is empty", f"give {flag} a value, or leave it out")


def check_ca(path: str) -> str:
    """`--relay-ca PATH` as an absolute path to a readable PEM certificate file; UsageError
    otherwise (not ten seconds of "unreachable" from a TLS handshake that cannot succeed)."""
    import os

    from cmdop.core.errors import UsageError

    full = os.path.abspath(os.path.expanduser(path))
    try:
        with open(full, "rb") as f:
            head = f.read(1 << 20)
    except OSError as exc:
        raise UsageError(f"cannot read --relay-ca {full}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise UsageError(f"--relay-ca {full} holds no PEM certificate",
                         hint="give a PEM file starting with -----BEGIN CERTIFICATE-----")
    return full


def resolve_from_args(args: argparse.Namespace, settings: Settings,
                      now: float | None = None) -> ResolvedCredential:
    """The credential for this command: flags in `args` (absent ones count as not given),
    environment values from `settings`, stored files from their Settings paths."""
    from cmdop.adapters import workspaces_file

    flag_workspace = getattr(args, "workspace", None)
    env_workspace = settings.workspace
    flag_relay = getattr(args, "relay", None)
    refuse_empty((("--workspace", flag_workspace), ("--relay", flag_relay),
                  ("--api-key", getattr(args, "api_key", None))))
    from cmdop.core.credentials import split_host_port

    if flag_relay:
        split_host_port(flag_relay)
    elif settings.relay:
        try:
            split_host_port(settings.relay)
        except UsageError as exc:     # not 10 s of "unreachable" for a typo in the environment
            raise UsageError(f"CMDOP_RELAY: {exc.message}", exc.hint) from None
    data = workspaces_file.load(settings.workspaces_file)
    moment = time.time() if now is None else now
    oauth: OAuthToken | None = None

    def resolve(config_relay: str | None) -> ResolvedCredential:
        return resolve_credential(
            flag_key=getattr(args, "api_key", None) or None,
            env_key=settings.api_key,
            flag_workspace=valid_name(flag_workspace) if flag_workspace else None,
            env_workspace=valid_name(env_workspace) if env_workspace else None,
            env_relay=settings.relay, flag_relay=flag_relay or None,
            workspaces=data, oauth=oauth, now=moment,
            config_relay=config_relay,
        )

    try:
        cred = resolve(None)
    except AuthError:
        # A named workspace with no stored key: the login is used when it is for that workspace
        # (resolve_credential decides; it raises again when the login is for another one).
        from cmdop.adapters import token_file

        named = flag_workspace or env_workspace
        stored = token_file.load(settings.token_file)
        if stored is None or not named or stored.workspace != valid_name(named):
            raise
        oauth = load_oauth_token(settings, moment)
        cred = resolve(None)
    if cred.source == "none":
        # OAuth comes last: token.json is read, and refreshed, only when it is the
        # credential that will be used.
        oauth = load_oauth_token(settings, moment)
        if oauth is not None:
            cred = resolve(None)
    if cred.source == "none" and data.active and data.active_entry is None:
        # The file names an active workspace it does not hold (hand-edited, or another tool):
        # say that, rather than "no credential" while keys are stored.
        raise AuthError(f"the active workspace {data.active!r} in {settings.workspaces_file} is not "
                        f"one of the stored ones ({', '.join(data.names()) or 'none'})",
                        "choose one: cmdop connect use NAME (or store its key: cmdop connect key set)")
    if not cred.relay:
        from cmdop.adapters.config_file import load as load_config

        relay = load_config(settings.config_file).relay
        if relay:
            cred = resolve(relay)
    return cred


def credential_claim(cred: ResolvedCredential) -> dict[str, str] | None:
    """What a caller tells its local agent about the credential it would use (never the
    secret): the key's public id and the relay. None when it has none (the agent's link then
    carries the call, like ssh's ControlMaster)."""
    from cmdop.core.credentials import parse_api_key

    if cred.source == "none" or not cred.secret:
        return None
    return {"key_id": parse_api_key(cred.secret) or "", "relay": cred.relay}


def add_share_flags(parser: argparse.ArgumentParser) -> None:
    """`--share TOKEN|-`, `--relay-fingerprint HEX`, `--relay-ca FILE`: a guest's access (a
    share token from `cmdop connect share`; the guest has no stored workspace)."""
    parser.add_argument("--share", default=None, metavar="TOKEN",
                        help="call as a guest with this share token ('-': read it from stdin; "
                             "better: CMDOP_SHARE_TOKEN, not visible in ps)")
    add_tls_flags(parser)


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """`--relay-fingerprint HEX`, `--relay-ca FILE`: how to trust the relay for this command
    (either replaces the trust stored with the key)."""
    parser.add_argument("--relay-fingerprint", default=None, metavar="HEX",
                        help="pin the relay's certificate (a guest's command carries it)")
    parser.add_argument("--relay-ca", default=None, metavar="FILE",
                        help="trust the relay's certificate through this PEM CA file")


def share_token(args: argparse.Namespace, settings: Settings) -> str | None:
    """The guest's share token: `--share TOKEN`, `--share -` (stdin's first line), else
    CMDOP_SHARE_TOKEN; None when neither is given. UsageError (never echoing the text) when it
    is not a share token."""
    import sys

    from cmdop.core.errors import UsageError
    from cmdop.relay.shares import looks_like_token

    given: str | None = getattr(args, "share", None)
    if given == "-":
        given = sys.stdin.readline() if sys.stdin is not None else ""
    raw = given if given is not None else settings.share_token
    if raw is None:
        return None
    text = raw.strip()
    if not text:
        # `--share "$EMPTY"` asked for a guest call: never fall back to the owner's credential
        raise UsageError("the share token is empty",
                         "give the whole token `cmdop connect share` printed (--share or "
                         "CMDOP_SHARE_TOKEN)")
    if not looks_like_token(text):
        raise UsageError("that is not a cmdop share token (expected cmdop_share_ + 43 characters)",
                         "copy the whole token `cmdop connect share` printed")
    return text
