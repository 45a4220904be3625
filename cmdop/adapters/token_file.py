"""`~/.cmdop/token.json` (Settings.token_file): the OAuth tokens of `cmdop login`.

    {"issuer", "token_endpoint", "revocation_endpoint", "client_id", "access_token",
     "refresh_token", "expires_at" (epoch seconds or null), "scope", "workspace", "account",
     "relay"?, "issuer_fingerprint"?, "ca_file"?, "relay_fingerprint"?, "relay_ca"?}

`ca_file` / `issuer_fingerprint`: how the issuer's certificate is trusted (refresh and logout
use them again). `relay_fingerprint` / `relay_ca`: how the relay's is, set only when the relay
address came from the issuer's own metadata (`cmdop_relay`): the issuer's pin (the relay's
embedded OAuth server serves the relay's certificate), else the metadata's
`cmdop_relay_fingerprint`, else the issuer's CA file. Keys this version does not know are kept
on save.

Rules (as ssh_workspaces.json): written 0600 in a 0700 directory, atomically; a file others can
read or owned by someone else is refused with the chmod/chown to run; a file that does not parse
is an error naming it, never silently replaced except by a new `cmdop login`.

Refreshing: `ensure_fresh(settings)` refreshes the token when it expires within 5 minutes (a
third of its lifetime for a token living less than 15, the lifetime recorded as `lifetime_s`),
under an exclusive lock (`token.json.lock`, fcntl) so two CLIs — or a CLI and the agent — never
refresh at once: the second one waits, re-reads the file and finds it fresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from cmdop.adapters.secure_file import atomic_write, check_private, ensure_private_dir, read_private
from cmdop.core.credentials import OAuthToken, refresh_margin
from cmdop.core.errors import CmdopError, ConfigError, UnreachableError
from cmdop.core.settings import Settings

LOCK_TIMEOUT_S = 90.0
_STRING_KEYS = ("issuer", "token_endpoint", "revocation_endpoint", "client_id", "access_token",
                "refresh_token", "scope", "workspace", "account", "relay", "issuer_fingerprint",
                "ca_file", "relay_fingerprint", "relay_ca")
_KNOWN = (*_STRING_KEYS, "expires_at", "lifetime_s")


@dataclass(frozen=True)
class StoredToken:
    """The contents of token.json. Secrets stay out of repr."""

    issuer: str
    token_endpoint: str
    access_token: str = field(repr=False)
    refresh_token: str = field(default="", repr=False)
    expires_at: float | None = None
    revocation_endpoint: str = ""
    lifetime_s: float | None = None     # what the issuer granted (expires_in): sets the margin
    client_id: str = "cmdop-cli"
    scope: str = ""
    workspace: str = ""
    account: str = ""
    relay: str = ""
    issuer_fingerprint: str = ""
    ca_file: str = ""
    relay_fingerprint: str = ""
    relay_ca: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def to_oauth(self) -> OAuthToken:
        """The resolver's view (cmdop.core.credentials)."""
        return OAuthToken(access_token=self.access_token, expires_at=self.expires_at,
                          refresh_token=self.refresh_token, workspace=self.workspace, relay=self.relay,
                          relay_fingerprint=self.relay_fingerprint, relay_ca=self.relay_ca)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def due(self, now: float, margin: float | None = None) -> bool:
        """Expires within `margin` seconds (by default credentials.refresh_margin of its
        lifetime: 5 minutes, or a third of a shorter-lived token's life)."""
        if margin is None:
            margin = refresh_margin(self.lifetime_s)
        return self.expires_at is not None and self.expires_at - now < margin


def _corrupt(path: str, problem: str) -> ConfigError:
    return ConfigError(f"{path} is not a valid token file: {problem}",
                       hint=f"run `cmdop login` again (it replaces the file), or remove it: rm {path}")


def parse(text: str, path: str = "token.json") -> StoredToken:
    """The file's text → StoredToken; ConfigError naming `path` and the problem."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        where = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else "not JSON"
        raise _corrupt(path, where) from None
    if not isinstance(doc, dict):
        raise _corrupt(path, "the top level must be an object")
    for key in _STRING_KEYS:
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise _corrupt(path, f"`{key}` must be a string")
    expires_at = doc.get("expires_at")
    if expires_at is not None and (isinstance(expires_at, bool) or not isinstance(expires_at, (int, float))):
        raise _corrupt(path, "`expires_at` must be epoch seconds or null")
    lifetime = doc.get("lifetime_s")
    if lifetime is not None and (isinstance(lifetime, bool) or not isinstance(lifetime, (int, float))
                                 or not 0 < lifetime < float("inf")):
        raise _corrupt(path, "`lifetime_s` must be a positive number of seconds or null")
    for key in ("issuer", "token_endpoint", "access_token"):
        if not doc.get(key):
            raise _corrupt(path, f"`{key}` is missing")
    values = {k: doc.get(k) or "" for k in _STRING_KEYS}
    return StoredToken(**values, expires_at=float(expires_at) if expires_at is not None else None,
                       lifetime_s=float(lifetime) if lifetime is not None else None,
                       extra={k: v for k, v in doc.items() if k not in _KNOWN})


def dump(token: StoredToken) -> str:
    """StoredToken → the file's text (stable key order, empty optional fields left out)."""
    doc: dict[str, Any] = {
        "issuer": token.issuer, "token_endpoint": token.token_endpoint,
        "revocation_endpoint": token.revocation_endpoint, "client_id": token.client_id,
        "access_token": token.access_token, "refresh_token": token.refresh_token,
        "expires_at": int(token.expires_at) if token.expires_at is not None else None,
        "scope": token.scope, "workspace": token.workspace, "account": token.account,
    }
    if token.lifetime_s is not None and token.lifetime_s >= 1:     # (whole seconds; 0 is invalid)
        doc["lifetime_s"] = int(token.lifetime_s)
    for key in ("relay", "issuer_fingerprint", "ca_file", "relay_fingerprint", "relay_ca"):
        value = getattr(token, key)
        if value:
            doc[key] = value
    for key, value in token.extra.items():
        doc.setdefault(key, value)
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def load(path: str) -> StoredToken | None:
    """The stored token, or None when there is no file. SecretFileError when others can read it."""
    try:
        data = read_private(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint=f"check the owner and mode of {path}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _corrupt(path, "not UTF-8 text") from None
    return parse(text, path)


def save(path: str, token: StoredToken) -> None:
    """Write token.json atomically, 0600, in a 0700 directory."""
    ensure_private_dir(os.path.dirname(os.path.abspath(path)))
    check_private(path)
    atomic_write(path, dump(token), mode=0o600)


def remove(path: str) -> bool:
    """Delete token.json; False when there was none."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def locked(path: str, *, timeout: float = LOCK_TIMEOUT_S,
           sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Hold the exclusive lock `PATH.lock` (fcntl.flock; released when the process dies)."""
    lock_path = path + ".lock"
    ensure_private_dir(os.path.dirname(os.path.abspath(lock_path)))
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = clock() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            if clock() >= deadline:
                raise CmdopError(f"another cmdop has been refreshing the login for {timeout:.0f} s "
                                 f"(lock {lock_path})", hint="try again; if it persists, look for a stuck "
                                                            "cmdop process")
            sleep(0.1)
        yield
    finally:
        os.close(fd)   # closing the descriptor releases the lock


# -- refreshing ----------------------------------------------------------------------------

Refresher = Callable[[StoredToken], StoredToken]


def refresh_stored(token: StoredToken, *, now: float | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> StoredToken:
    """Ask the issuer for new tokens (no file access). AuthError when the server refused the
    refresh token (expired or revoked login), UnreachableError when it could not be asked."""
    from cmdop.adapters import oauth_client
    from cmdop.core.errors import AuthError

    if not token.refresh_token:
        raise AuthError(f"the login at {token.issuer} cannot be refreshed (no refresh token)",
                        "run `cmdop login` to sign in again")
    transport = oauth_client.Transport(oauth_client.TlsOptions(ca_file=token.ca_file,
                                                               fingerprint=token.issuer_fingerprint))
    moment = time.time() if now is None else now
    fresh = oauth_client.refresh(transport, token.token_endpoint, refresh_token=token.refresh_token,
                                 client_id=token.client_id, scope=token.scope, sleep=sleep)
    return dataclasses.replace(
        token, access_token=fresh.access_token, refresh_token=fresh.refresh_token,
        expires_at=moment + fresh.expires_in if fresh.expires_in is not None else None,
        lifetime_s=fresh.expires_in if fresh.expires_in else None,
        scope=fresh.scope or token.scope, workspace=fresh.workspace or token.workspace,
        account=fresh.account or token.account)


def ensure_fresh(settings: Settings, *, now: float | None = None, margin: float | None = None,
                 strict: bool = False, refresher: Refresher | None = None) -> StoredToken | None:
    """The stored token, refreshed first (and saved, refresh token rotated) when it expires
    within `margin` seconds; None when there is no token.json.

    The refresh runs under the file lock; whoever waited for the lock re-reads the file and uses
    the token the other process stored. A token that cannot be refreshed (no refresh token) is
    returned as it is: the resolver decides whether it is still usable. Failures: AuthError when
    the server refused the refresh token; UnreachableError when it could not be reached — unless
    `strict` is false and the current access token has not expired yet, then that one is
    returned (the next command tries again). The agent's refresh task passes `strict=True`.
    """
    path = settings.token_file
    token = load(path)
    moment = time.time() if now is None else now
    if token is None or not token.due(moment, margin) or not token.refresh_token:
        return token
    do_refresh = refresher or (lambda t: refresh_stored(t, now=moment))
    with locked(path):
        token = load(path)                      # another process may have refreshed meanwhile
        if token is None or not token.due(moment, margin) or not token.refresh_token:
            return token
        try:
            fresh = do_refresh(token)
        except UnreachableError:
            if strict or token.expired(moment):
                raise
            return token
        save(path, fresh)
        return fresh
