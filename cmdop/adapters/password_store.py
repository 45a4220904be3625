"""The machine password on disk, its wrong-attempt counter, its sessions, and the caller's cache
of session tokens. Rules (the pure parts in `cmdop.core.password_policy`):

Agent side (`PasswordStore`):
- The hash is the file `password` in the config dir (Settings.config_dir), 0600, written
  atomically (`secure_file.atomic_write`), one JSON line:
  `{"v":1,"kdf":"scrypt","n":32768,"r":8,"p":1,"salt":B64,"hash":B64}` — scrypt
  (cryptography's `Scrypt`) of the UTF-8 password with a 16-byte random salt; checked with a
  constant-time compare. A file readable by others or owned by someone else is refused
  (`secure_file.read_private`), a damaged one is an error (never "no password"). The password
  is "set" while the file exists (`is_set`), whatever it holds: a damaged file still guards.
- The wrong-attempt counter (`password_failures.json`: failures, last_failure) and the
  sessions (`password_sessions.json`: sha256 digests of the tokens, never the tokens, with the
  principal each was issued to, issue and expiry times) are 0600 files in the state dir, so the
  slow-down survives restarts. Every read-modify-write of them, and every check (scrypt
  included), runs under an exclusive `flock` on `password.lock` in the state dir: concurrent
  attempts, from the CLI and the agent alike, are judged one after the other, so a burst of
  guesses still gets one check per slow-down window.
- `attempt(password)` is the one check: while slowed down it refuses WITHOUT checking;
  otherwise a wrong password counts a failure, a right one resets the counter.
- `set_password` and `clear` end every session and reset the counter.
- A session is bound to the principal that unlocked (`principal_label`: workspace/name as the
  relay stamped them): another key of the workspace cannot use a token it got hold of.

The agent's `unlock` call (`handle_unlock`, run by the relay link for a forwarded call with tool
`unlock`): refused unless the machine has a password and remote callers need it; the attempt
and its outcome are audited (tool `unlock`, source floor, rule_id `password:...`), the password
never: the record's target is empty and its input digest is over `{"password": "[not
recorded]"}`, not over the input. A session is issued only once its audit line is written.

Caller side (`SessionCache`): `~/.cmdop/sessions.json` (Settings.cmdop_home), 0600, atomic: the
session tokens this user got from `cmdop password unlock HOST`, per workspace and host (the
host as typed), with their expiry; sent as CallStart.session on later calls to that host.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from cmdop.adapters.secure_file import (atomic_write, ensure_private_dir, exclusive_lock,
                                         read_private)
from cmdop.core import password_policy as policy
from cmdop.core.errors import CmdopError
from cmdop.core.settings import SESSIONS_FILE_NAME

if TYPE_CHECKING:
    from cmdop.core.calls import Caller
    from cmdop.core.settings import Settings

log = logging.getLogger("cmdop.password")

PASSWORD_NAME = "password"
FAILURES_NAME = "password_failures.json"
SESSIONS_NAME = "password_sessions.json"
LOCK_NAME = "password.lock"
CACHE_NAME = SESSIONS_FILE_NAME
CACHE_LOCK_NAME = "sessions.lock"
TOKEN_PREFIX = "cmdop-session-"
MAX_TOKEN_CHARS = 200
NOT_RECORDED = {"password": "[not recorded]"}


class PasswordFileError(CmdopError):
    """A password store file is damaged."""


def principal_label(workspace: str, user: str) -> str:
    """Who a session belongs to: the workspace and name the relay stamped on the caller."""
    return f"{workspace}/{user}"


def token_digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, params: policy.ScryptParams) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    kdf = Scrypt(salt=salt, length=params.length, n=params.n, r=params.r, p=params.p)
    return kdf.derive(password.encode("utf-8", "surrogatepass"))


def hash_password(password: str, salt: bytes | None = None,
                  params: policy.ScryptParams = policy.DEFAULT_PARAMS) -> dict[str, Any]:
    """The stored form of `password` (a fresh random salt unless given)."""
    salt = secrets.token_bytes(policy.SALT_BYTES) if salt is None else salt
    return {"v": 1, "kdf": "scrypt", "n": params.n, "r": params.r, "p": params.p,
            "salt": _b64(salt), "hash": _b64(_derive(password, salt, params))}


def verify_hash(stored: Mapping[str, Any], password: str, path: str = "password") -> bool:
    """Whether `password` matches the stored form; PasswordFileError when it is damaged or asks
    for parameters this version will not run."""
    try:
        if stored.get("v") != 1 or stored.get("kdf") != "scrypt":
            raise ValueError("unknown format")
        salt = base64.b64decode(str(stored["salt"]), validate=True)
        want = base64.b64decode(str(stored["hash"]), validate=True)
        params = policy.ScryptParams(n=stored["n"], r=stored["r"], p=stored["p"], length=len(want))
    except (KeyError, ValueError, TypeError) as exc:
        raise PasswordFileError(f"{path} is damaged ({exc})",
                                f"set the password again: remove {path}, then `cmdop password set`") from None
    if not policy.params_ok(params, len(salt)):
        raise PasswordFileError(f"{path} asks for scrypt parameters outside the allowed range",
                                f"set the password again: remove {path}, then `cmdop password set`")
    return hmac.compare_digest(_derive(password, salt, params), want)


@dataclass(frozen=True)
class Attempt:
    """One password check. outcome: "ok" | "wrong" | "slowed" (refused unchecked) | "not_set".
    `failures`: consecutive wrong attempts after it; `retry_in_s`: wait before the next check."""

    outcome: str
    failures: int = 0
    retry_in_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class PasswordStore:
    """The agent's password, counter and sessions for one Settings (see the module doc)."""

    def __init__(self, settings: "Settings") -> None:
        self.path = os.path.join(settings.config_dir, PASSWORD_NAME)
        self.state_dir = settings.state_dir
        self.failures_path = os.path.join(settings.state_dir, FAILURES_NAME)
        self.sessions_path = os.path.join(settings.state_dir, SESSIONS_NAME)

    # -- locking and files --------------------------------------------------------------------

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return exclusive_lock(os.path.join(self.state_dir, LOCK_NAME))

    def is_set(self) -> bool:
        return os.path.lexists(self.path)

    def _stored(self) -> dict[str, Any] | None:
        try:
            data = read_private(self.path)
        except FileNotFoundError:
            return None
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            obj = None
        if not isinstance(obj, dict):
            raise PasswordFileError(f"{self.path} is damaged (not a JSON object)",
                                    f"set the password again: remove {self.path}, then "
                                    "`cmdop password set`")
        return obj

    def _read_failures(self) -> policy.FailureState:
        try:
            data = read_private(self.failures_path)
        except FileNotFoundError:
            return policy.FailureState()
        try:
            obj = json.loads(data.decode("utf-8"))
            failures, last = obj["failures"], obj["last_failure"]
            if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0 \
                    or isinstance(last, bool) or not isinstance(last, (int, float)):
                raise ValueError("bad values")
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            raise PasswordFileError(
                f"{self.failures_path} (the wrong-password counter) is damaged",
                f"remove it to reset the counter: rm {self.failures_path}") from None
        return policy.FailureState(failures, float(last))

    def _write_failures(self, state: policy.FailureState) -> None:
        if state.failures == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.failures_path)
            return
        atomic_write(self.failures_path, json.dumps(
            {"failures": state.failures, "last_failure": state.last_failure}) + "\n")

    def _read_sessions(self) -> list[dict[str, Any]]:
        """The stored sessions; none when the file is missing or damaged (fail closed)."""
        try:
            data = read_private(self.sessions_path)
            obj = json.loads(data.decode("utf-8"))
        except FileNotFoundError:
            return []
        except (UnicodeDecodeError, ValueError):
            log.warning("%s is damaged: no session is valid until the next unlock", self.sessions_path)
            return []
        rows = obj.get("sessions") if isinstance(obj, dict) else None
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []

    def _write_sessions(self, sessions: list[dict[str, Any]]) -> None:
        if not sessions:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.sessions_path)
            return
        atomic_write(self.sessions_path, json.dumps({"v": 1, "sessions": sessions}) + "\n")

    # -- the password ---------------------------------------------------------------------------

    def set_password(self, password: str) -> None:
        """Store `password` (its hash), end every session and reset the counter. UsageError-free:
        the caller checks `policy.password_problem(password, new=True)` first."""
        stored = hash_password(password)
        with self._locked():
            ensure_private_dir(os.path.dirname(self.path))
            atomic_write(self.path, json.dumps(stored) + "\n")
            self._write_failures(policy.after_success())
            self._write_sessions([])

    def clear(self) -> None:
        """Remove the password, every session and the counter."""
        with self._locked():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._write_failures(policy.after_success())
            self._write_sessions([])

    def attempt(self, password: str, now: float | None = None) -> Attempt:
        """Check `password` under the slow-down: refused unchecked while slowed down; a wrong
        one counts, a right one resets the counter."""
        with self._locked():
            moment = time.time() if now is None else now
            stored = self._stored()
            if stored is None:
                return Attempt("not_set")
            state = self._read_failures()
            wait = policy.wait_s(state, moment)
            if wait > 0:
                return Attempt("slowed", state.failures, wait)
            if verify_hash(stored, password, self.path):
                if state.failures:
                    self._write_failures(policy.after_success())
                return Attempt("ok")
            state = policy.after_failure(state, moment)
            self._write_failures(state)
            return Attempt("wrong", state.failures, policy.slowdown_s(state.failures))

    # -- sessions -------------------------------------------------------------------------------

    def issue_session(self, who: str, ttl_s: float, now: float | None = None) -> tuple[str, float]:
        """A new session token for principal `who`, valid `ttl_s` seconds: (token, expires_at).
        Only its digest is stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._locked():
            moment = time.time() if now is None else now
            expires = policy.session_expires_at(moment, ttl_s)
            row = {"digest": token_digest(token), "who": who, "issued_at": moment,
                   "expires_at": expires}
            self._write_sessions(policy.keep_sessions([*self._read_sessions(), row], moment))
        return token, expires

    def session_ok(self, token: str, who: str, now: float | None = None) -> bool:
        """Whether `token` is a valid, unexpired session of principal `who` (False while the
        machine has no password)."""
        if not token or len(token) > MAX_TOKEN_CHARS or not self.is_set():
            return False
        digest = token_digest(token)
        with self._locked():
            moment = time.time() if now is None else now
            found = False
            for row in policy.keep_sessions(self._read_sessions(), moment):
                if hmac.compare_digest(str(row.get("digest", "")), digest) and row.get("who") == who:
                    found = True
            return found

    def active_sessions(self, now: float | None = None) -> int:
        with self._locked():
            return len(policy.keep_sessions(self._read_sessions(), time.time() if now is None else now))

    def status(self, now: float | None = None) -> dict[str, Any]:
        """What `cmdop password status` shows (never a hash or a token)."""
        moment = time.time() if now is None else now
        if not os.path.isdir(self.state_dir):   # nothing to read, and a look makes no state dir
            state, sessions = policy.FailureState(), 0
        else:
            with self._locked():
                state = self._read_failures()
                sessions = len(policy.keep_sessions(self._read_sessions(), moment))
        return {"password_set": self.is_set(), "failures": state.failures,
                "last_failure": _iso(state.last_failure) if state.failures else None,
                "retry_in_s": round(policy.wait_s(state, moment), 1),
                "active_sessions": sessions}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- config.yaml's answers, cached per file version --------------------------------------------

_config_cache: dict[str, tuple[tuple[int, int, int], Any]] = {}


def _config(settings: "Settings") -> Any:
    """config.yaml (AgentConfig), re-read when the file changes; ConfigFileError as `load`."""
    from cmdop.adapters.config_file import load

    path = settings.config_file
    try:
        st = os.stat(path)
        version = (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        version = (0, 0, 0)
    hit = _config_cache.get(path)
    if hit is not None and hit[0] == version:
        return hit[1]
    config = load(path)
    _config_cache[path] = (version, config)
    return config


def remote_password_required(settings: "Settings") -> bool:
    """Whether remote callers must unlock this machine: it has a password and config.yaml says
    `remote_requires_password: true`. A config.yaml that does not load counts as true (fail
    closed) — only where a password exists."""
    if not os.path.lexists(os.path.join(settings.config_dir, PASSWORD_NAME)):
        return False
    from cmdop.core.errors import ConfigFileError

    try:
        return bool(_config(settings).remote_requires_password)
    except ConfigFileError as exc:
        log.warning("config.yaml rejected (%s): remote callers need the password", exc.message)
        return True


def session_ttl_s(settings: "Settings") -> int:
    """config.yaml's `password_session_ttl` (the default when the file does not load)."""
    from cmdop.core.errors import ConfigFileError

    try:
        return int(_config(settings).password_session_ttl)
    except ConfigFileError:
        return policy.DEFAULT_SESSION_TTL_S


# -- the agent's `unlock` call -----------------------------------------------------------------

def handle_unlock(settings: "Settings", audit: Any, caller: "Caller", tool_input: Mapping[str, Any],
                  mode: str = "", now: float | None = None) -> dict[str, Any]:
    """Serve a remote caller's `unlock` call (blocking: scrypt, files, the audit line): the
    result is `{"session_token", "expires_at", "ttl_s"}`, or the permission_denied object with
    rule_id `password:...` (a wrong password, or slowed down: `retry_in_s`), or an error when
    the machine does not ask remote callers for a password. Never raises for a caller's input."""
    from cmdop.core.audit import build_record
    from cmdop.core.policy.decision import Decision

    moment = time.time() if now is None else now

    def audited(outcome: str, rule: str, reason: str) -> bool:
        decision = Decision(decision="allow" if outcome == "allow" else "deny", source="floor",
                            reason=reason, mode=mode, tool="unlock", rule_id=rule)
        try:
            audit.append(build_record(decision=decision, outcome=outcome, tool_input=NOT_RECORDED,
                                      caller=caller, now=datetime.fromtimestamp(moment, timezone.utc)))
            return True
        except Exception as exc:  # noqa: BLE001 - AuditWriteError or worse: no line, no session
            log.warning("audit log unwritable: %s", exc)
            return False

    def denied(rule: str, reason: str, **extra: Any) -> dict[str, Any]:
        audited("deny", rule, reason)
        return {"error": "permission_denied", "tool": "unlock", "target": "", "decision": "deny",
                "source": "floor", "rule_id": rule, "reason": reason, **extra}

    from cmdop.core.calls import CallerKind

    if caller.kind is CallerKind.GUEST:
        # A share's guest never tries the password: it is not one of a share's tools, and each
        # wrong attempt would slow down every caller, the owner included, for the share's life.
        return denied("password:guest", "unlock refused: a guest (share token) cannot unlock "
                      "this machine")
    store = PasswordStore(settings)
    if not remote_password_required(settings):
        audited("deny", "password:not_required", "unlock: this machine does not ask remote "
                "callers for a password")
        return {"error": "password_not_required", "tool": "unlock",
                "message": "this machine does not ask remote callers for a password"}
    password = tool_input.get("password")
    problem = policy.password_problem(password) if isinstance(password, str) else "no password given"
    if problem is not None:
        return denied("password:bad_input", f"unlock refused: {problem}")
    try:
        attempt = store.attempt(password, moment)  # type: ignore[arg-type]
    except CmdopError as exc:
        return denied("password:error", f"unlock refused: {exc.message}")
    if attempt.outcome == "slowed":
        wait = int(attempt.retry_in_s + 0.999)
        return denied("password:slowed_down", f"unlock refused unchecked: {attempt.failures} wrong "
                      f"password(s) in a row; try again in {wait} s", retry_in_s=wait)
    if attempt.outcome == "wrong":
        wait = int(attempt.retry_in_s + 0.999)
        return denied("password:wrong", f"wrong password ({attempt.failures} in a row); the next "
                      f"attempt is refused for {wait} s", retry_in_s=wait)
    if attempt.outcome != "ok":
        return denied("password:not_set", "unlock refused: this machine has no password")
    ttl = session_ttl_s(settings)
    if not audited("allow", "password:unlocked", f"password accepted: a session for {ttl} s"):
        return {"error": "permission_denied", "tool": "unlock", "target": "", "decision": "deny",
                "source": "floor", "rule_id": "admission:audit_unwritable",
                "reason": "audit log unwritable"}
    try:
        token, expires = store.issue_session(principal_label(caller.workspace, caller.user), ttl, moment)
    except (OSError, CmdopError) as exc:
        return {"error": "unlock_failed", "tool": "unlock",
                "message": f"the session could not be stored: {exc}"}
    return {"session_token": token, "expires_at": expires, "ttl_s": ttl}


# -- the caller's cache of session tokens ------------------------------------------------------

def cache_key(workspace: str, host: str) -> str:
    return f"{workspace}/{host}"


class SessionCache:
    """`sessions.json` in cmdop_home: session tokens by workspace and host (see the module doc)."""

    def __init__(self, cmdop_home: str) -> None:
        self.dir = cmdop_home
        self.path = os.path.join(cmdop_home, CACHE_NAME)

    def _read(self) -> dict[str, Any]:
        try:
            obj = json.loads(read_private(self.path).decode("utf-8"))
        except FileNotFoundError:
            return {}
        except (UnicodeDecodeError, ValueError):
            return {}
        rows = obj.get("sessions") if isinstance(obj, dict) else None
        return {k: v for k, v in rows.items() if isinstance(v, dict)} if isinstance(rows, dict) else {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        with exclusive_lock(os.path.join(self.dir, CACHE_LOCK_NAME)):
            rows = self._read()
            yield rows
            now = time.time()
            keep = {k: v for k, v in rows.items()
                    if isinstance(v.get("expires_at"), (int, float)) and v["expires_at"] > now}
            atomic_write(self.path, json.dumps({"v": 1, "sessions": keep}, indent=1) + "\n")

    def get(self, workspace: str, host: str, now: float | None = None) -> str | None:
        """The cached token for (workspace, host) unless it expired by our clock."""
        try:
            row = self._read().get(cache_key(workspace, host))
        except CmdopError:        # a cache others can read is not used (and not deleted)
            return None
        if not row:
            return None
        token, expires = row.get("token"), row.get("expires_at")
        moment = time.time() if now is None else now
        if isinstance(token, str) and token and isinstance(expires, (int, float)) and expires > moment:
            return token
        return None

    def put(self, workspace: str, host: str, token: str, expires_at: float) -> None:
        with self._locked() as rows:
            rows[cache_key(workspace, host)] = {"token": token, "expires_at": expires_at}

    def drop(self, workspace: str, host: str) -> bool:
        """Forget (workspace, host)'s token; whether there was one."""
        if not os.path.exists(self.path):
            return False
        with self._locked() as rows:
            return rows.pop(cache_key(workspace, host), None) is not None


def caller_workspace(settings: "Settings", flag_workspace: str | None = None) -> str:
    """The workspace a caller command's credential comes from (the session cache's key): the
    named workspace, else the active stored one; "" when none can be told."""
    try:
        from cmdop.adapters import workspaces_file
        from cmdop.core.credentials import valid_name

        named = flag_workspace or settings.workspace
        if named:
            return valid_name(named)
        return workspaces_file.load(settings.workspaces_file).active or ""
    except (CmdopError, OSError):
        return ""


def cached_session(settings: "Settings", host: str, flag_workspace: str | None = None) -> str:
    """The session token to send with a call to `host` ("" when none is cached). Never raises:
    a cache that cannot be read sends none (the target then asks for an unlock)."""
    try:
        return SessionCache(settings.cmdop_home).get(caller_workspace(settings, flag_workspace),
                                                     host) or ""
    except Exception:  # noqa: BLE001
        return ""


def forget_session(settings: "Settings", host: str, flag_workspace: str | None = None) -> None:
    """Drop `host`'s cached token (the target refused it: expired, or the password changed)."""
    try:
        SessionCache(settings.cmdop_home).drop(caller_workspace(settings, flag_workspace), host)
    except Exception:  # noqa: BLE001
        log.debug("could not drop the cached session of %s", host, exc_info=True)
