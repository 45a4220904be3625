"""Which credential a caller command uses, and the text formats around it.

Pure: no file, no environment, no clock. The CLI loads `ssh_workspaces.json`
(cmdop.adapters.workspaces_file) and the OAuth token, reads the flags and CMDOP_* variables, and
hands everything to `resolve_credential`, which applies this order:

    --api-key flag → CMDOP_API_KEY → --workspace NAME / CMDOP_WORKSPACE stored key (else the
    OAuth access token when the login is for NAME) → active workspace key → OAuth access token

The relay address: --relay flag → CMDOP_RELAY → the chosen workspace entry's `server` (for a key
from a flag or the environment: the named workspace's entry, else the active one's) → the OAuth
token's relay → config.yaml's `relay`. A pinned fingerprint / CA file is taken from the workspace
entry only when the relay address is that entry's own server: a pin for one relay never applies
to another. Likewise the OAuth token's pin / CA file apply only to the token's own relay.

Also here: the API key format (`cmdop_` + 12 hex key id + `_` + 43 urlsafe characters), workspace
names, relay addresses, certificate fingerprints, and `masked` — the only way a secret is shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from cmdop.core.errors import AuthError, UsageError

Source = Literal["flag", "env", "workspace", "active", "oauth", "none"]

# An OAuth access token expiring within this many seconds is refreshed before use.
REFRESH_MARGIN_S = 300.0
LIFETIME_SHARE = 3.0        # a short-lived token is renewed with a third of its life left

KEY_PREFIX = "cmdop_"
KEY_ID_LEN = 12
KEY_RANDOM_LEN = 43
KEY_DISPLAY_PREFIX_LEN = 8
_KEY_RE = re.compile(r"^cmdop_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
NAME_HINT = "a name is 1-64 characters: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit"


def refresh_margin(lifetime_s: float | None) -> float:
    """How long before expiry a token whose lifetime is `lifetime_s` is renewed: REFRESH_MARGIN_S,
    or a third of the lifetime for short-lived tokens — with the fixed margin a token living
    less than 5 minutes (Keycloak's default is 5) would be due the moment it was issued, and
    every command, every call in it, would refresh again. An unknown lifetime gets the fixed
    margin: at most one early refresh, which tells the lifetime."""
    if lifetime_s is None or lifetime_s <= 0:
        return REFRESH_MARGIN_S
    return min(REFRESH_MARGIN_S, lifetime_s / LIFETIME_SHARE)


# -- formats ---------------------------------------------------------------------------------

def parse_api_key(text: str) -> str | None:
    """The key id inside an API key's text, or None when the text is not an API key."""
    m = _KEY_RE.match(text)
    return m.group(1) if m else None


def check_api_key(text: str) -> str:
    """`text` stripped, or UsageError when it is not an API key (never echoing the text)."""
    text = text.strip()
    if parse_api_key(text) is None:
        raise UsageError(
            "that is not a cmdop API key (expected cmdop_ + 12 hex digits + _ + 43 characters)",
            hint="copy the whole key printed by `cmdop relay key create WORKSPACE --name N`",
        )
    return text


def valid_name(name: str) -> str:
    """A workspace name lower-cased, or UsageError when it is not 1-64 of `[a-z0-9][a-z0-9._-]*`."""
    lowered = name.strip().lower()
    if not _NAME_RE.match(lowered):
        raise UsageError(f"invalid name {name!r}", hint=NAME_HINT)
    return lowered


def split_host_port(text: str, *, listen: bool = False) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); UsageError otherwise. With `listen`, port 0
    (any free port, printed at start) is accepted too."""
    text = text.strip()
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$", text) or re.match(r"^([^:\[\]\s/]+):(\d{1,5})$", text)
    if not m or not ((0 if listen else 1) <= int(m.group(2)) < 65536):
        raise UsageError(f"invalid address {text!r}: expected HOST:PORT (IPv6 as [ADDR]:PORT)",
                         hint="for example relay.example.com:7443 or [::1]:7443")
    return m.group(1), int(m.group(2))


def normalize_fingerprint(text: str) -> str:
    """A certificate's SHA-256 fingerprint as 64 lower-case hex digits.

    Accepts `AA:BB:…`, `sha256:…` / `SHA256:…`, spaces, upper or lower case; UsageError otherwise.
    """
    value = text.strip()
    if value.lower().startswith("sha256:"):
        value = value[len("sha256:"):]
    value = value.replace(":", "").replace(" ", "").lower()
    if not _HEX64.match(value):
        raise UsageError(
            f"invalid certificate fingerprint {text!r}: expected 64 hex digits (SHA-256)",
            hint="copy the fingerprint `cmdop relay serve` prints at start",
        )
    return value


def masked(secret: str) -> str:
    """How a secret is ever shown: at most its first 8 characters, then `…`."""
    if not secret:
        return ""
    if len(secret) <= KEY_DISPLAY_PREFIX_LEN:
        return "…"
    return secret[:KEY_DISPLAY_PREFIX_LEN] + "…"


# -- the stored credentials ------------------------------------------------------------------

@dataclass(frozen=True)
class WorkspaceEntry:
    """One entry of ssh_workspaces.json. `extra` keeps keys this version does not know."""

    name: str
    api_key: str
    server: str
    relay_fingerprint: str = ""
    relay_ca: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class WorkspacesData:
    """The contents of ssh_workspaces.json."""

    active: str | None = None
    workspaces: tuple[WorkspaceEntry, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def get(self, name: str) -> WorkspaceEntry | None:
        for entry in self.workspaces:
            if entry.name == name:
                return entry
        return None

    @property
    def active_entry(self) -> WorkspaceEntry | None:
        return self.get(self.active) if self.active else None

    def names(self) -> list[str]:
        return [e.name for e in self.workspaces]


@dataclass(frozen=True)
class OAuthToken:
    """An OAuth token from token.json (`cmdop login` writes it; this is the resolver's view)."""

    access_token: str
    expires_at: float | None = None
    refresh_token: str = ""
    workspace: str = ""
    relay: str = ""
    # The relay's certificate pin / CA file, from the login (the relay's own OAuth server serves
    # its certificate): applied only when the relay used is this token's `relay`.
    relay_fingerprint: str = ""
    relay_ca: str = ""


@dataclass(frozen=True)
class ResolvedCredential:
    """The credential a caller command uses, where it came from, and where to send it."""

    source: Source
    secret: str
    workspace: str
    relay: str
    relay_fingerprint: str = ""
    relay_ca: str = ""
    expires_at: float | None = None

    @property
    def masked_secret(self) -> str:
        return masked(self.secret)


def resolve_credential(*, flag_key: str | None, env_key: str | None, flag_workspace: str | None,
                       env_workspace: str | None, env_relay: str | None, flag_relay: str | None,
                       workspaces: WorkspacesData, oauth: OAuthToken | None, now: float,
                       config_relay: str | None = None) -> ResolvedCredential:
    """The first source, in the order of the module docstring, that yields a credential.

    A workspace named by --workspace / CMDOP_WORKSPACE that is not stored is an AuthError (unless
    a key from the flag or environment wins anyway, or the OAuth login is for that very
    workspace: then the login is used): falling through to another workspace would call
    machines the user did not mean. An expired OAuth token without a refresh token yields
    nothing.
    """
    named = flag_workspace or env_workspace or None
    named_entry = workspaces.get(named) if named else None
    context = named_entry if named else workspaces.active_entry

    def where(entry: WorkspaceEntry | None, fallback_relay: str = "") -> tuple[str, str, str]:
        relay = flag_relay or env_relay or ""
        if not relay and entry is not None and entry.server:
            relay = entry.server
        if entry is not None and relay == entry.server:
            return relay, entry.relay_fingerprint, entry.relay_ca
        return relay or fallback_relay or (config_relay or ""), "", ""

    def made(source: Source, secret: str, entry: WorkspaceEntry | None, workspace: str,
             fallback_relay: str = "", expires_at: float | None = None) -> ResolvedCredential:
        relay, fingerprint, ca = where(entry, fallback_relay)
        return ResolvedCredential(source=source, secret=secret, workspace=workspace, relay=relay,
                                  relay_fingerprint=fingerprint, relay_ca=ca, expires_at=expires_at)

    context_name = named or (workspaces.active if context is not None else "") or ""
    if flag_key:
        return made("flag", flag_key, context, context_name)
    if env_key:
        return made("env", env_key, context, context_name)
    oauth_usable = oauth is not None and bool(oauth.access_token) and (
        oauth.expires_at is None or oauth.expires_at > now or bool(oauth.refresh_token))
    if named:
        if named_entry is None:
            if oauth is not None and oauth_usable and oauth.workspace == named:
                return _from_oauth(oauth, made)          # the login is for the named workspace
            stored = ", ".join(workspaces.names()) or "none"
            raise AuthError(
                f"workspace {named!r} has no stored key (stored: {stored})",
                hint=f"run `cmdop connect key set --workspace {named}` (the key is read from stdin)",
            )
        return made("workspace", named_entry.api_key, named_entry, named_entry.name)
    if context is not None:
        return made("active", context.api_key, context, context.name)
    if oauth is not None and oauth_usable:
        return _from_oauth(oauth, made)
    return made("none", "", None, "")


def _from_oauth(oauth: OAuthToken, made: Any) -> ResolvedCredential:
    """The login's access token, sent to its own relay with its pin (unless another relay is
    named: then without it)."""
    cred: ResolvedCredential = made("oauth", oauth.access_token, None, oauth.workspace, oauth.relay,
                                    oauth.expires_at)
    if oauth.relay and cred.relay == oauth.relay:
        cred = replace(cred, relay_fingerprint=oauth.relay_fingerprint, relay_ca=oauth.relay_ca)
    return cred
