"""The machine password's rules, pure: hashing parameters, the slow-down after wrong attempts,
session expiry, and the values config.yaml may give. No I/O; `now` is always passed in.

The password (`cmdop password set|clear|status|unlock`) is stored as a scrypt hash
(`cmdop.adapters.password_store`). When set it guards the local CLI actions that change
security state, and, with `remote_requires_password: true` in config.yaml, remote callers
present it once (`cmdop password unlock HOST`, checked by the agent, never by the relay) for a
session token that is valid for `password_session_ttl` (default 15 minutes).

SCRYPT: n = 2**15, r = 8, p = 1, a 16-byte random salt, a 32-byte key. Memory 128·n·r = 32 MiB
per check, ≈ 56 ms on the development machine (2 cores): slow for a guesser, unnoticeable for
a person. The parameters are stored with each hash, so a later change still verifies old hashes;
a stored hash whose parameters are outside `STORED_LIMITS` is refused (a file asking for 4 GiB
of memory per check would be a denial of service).

SLOW-DOWN (`slowdown_s`, `wait_s`): after n consecutive wrong attempts (n ≥ 1) the next attempt
is refused, without being checked, until min(2**(n-1), 300) seconds after the last wrong one;
a right password resets n to 0. Local and remote attempts count together. A clock that went
back never makes the wait longer than the slow-down itself.

SESSIONS (`session_expires_at`, `session_valid`): a session is valid while issued_at - 5 s <=
now < expires_at (a session "issued" in the future — a clock that jumped back — is not trusted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCRYPT_N = 2 ** 15
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32

SLOWDOWN_MAX_S = 300.0
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024

DEFAULT_SESSION_TTL_S = 15 * 60
MIN_SESSION_TTL_S = 1
MAX_SESSION_TTL_S = 24 * 3600
MAX_SESSIONS = 256          # active sessions kept; the soonest to expire are dropped beyond it
CLOCK_SKEW_S = 5.0


@dataclass(frozen=True)
class ScryptParams:
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P
    length: int = KEY_BYTES


DEFAULT_PARAMS = ScryptParams()


def params_ok(params: ScryptParams, salt_len: int) -> bool:
    """Whether stored parameters are ones this version will run (STORED_LIMITS): n a power of
    two in [2**14, 2**20], r in [1, 32], p in [1, 16], key 16–64 bytes, salt 16–64 bytes, and
    at most 1 GiB of memory (128·n·r)."""
    n, r, p = params.n, params.r, params.p
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (n, r, p, params.length)):
        return False
    return (2 ** 14 <= n <= 2 ** 20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16
            and 16 <= params.length <= 64 and 16 <= salt_len <= 64 and 128 * n * r <= 1 << 30)


@dataclass(frozen=True)
class FailureState:
    """Consecutive wrong attempts and when the last one happened (epoch seconds)."""

    failures: int = 0
    last_failure: float = 0.0


def slowdown_s(failures: int) -> float:
    """How long after the last wrong attempt the next one is refused: 0 with no failure, else
    min(2**(failures-1), 300)."""
    if failures <= 0:
        return 0.0
    if failures > 20:           # 2**19 is far past the cap already
        return SLOWDOWN_MAX_S
    return float(min(2 ** (failures - 1), SLOWDOWN_MAX_S))


def wait_s(state: FailureState, now: float) -> float:
    """Seconds until the next attempt may be checked (0: now). Never more than the slow-down
    itself, whatever the clock did."""
    delay = slowdown_s(state.failures)
    if delay <= 0:
        return 0.0
    return max(0.0, min(delay, state.last_failure + delay - now))


def after_failure(state: FailureState, now: float) -> FailureState:
    return FailureState(max(0, state.failures) + 1, now)


def after_success() -> FailureState:
    return FailureState(0, 0.0)


def password_problem(password: str, *, new: bool = False) -> str | None:
    """Why `password` cannot be used ("" is never a password), or None. `new`: for `password
    set`, which also wants at least MIN_PASSWORD_CHARS characters."""
    if not password:
        return "the password is empty"
    if len(password) > MAX_PASSWORD_CHARS:
        return f"the password is longer than {MAX_PASSWORD_CHARS} characters"
    if "\n" in password or "\r" in password or "\0" in password:
        return "the password may not contain a newline or a NUL character"
    if new and len(password) < MIN_PASSWORD_CHARS:
        return f"the password must have at least {MIN_PASSWORD_CHARS} characters"
    return None


def session_expires_at(now: float, ttl_s: float) -> float:
    return now + ttl_s


def session_valid(issued_at: float, expires_at: float, now: float) -> bool:
    """A session is valid from its issue (less CLOCK_SKEW_S) until it expires."""
    return issued_at - CLOCK_SKEW_S <= now < expires_at


_DURATION = re.compile(r"^([1-9][0-9]{0,6})([smh]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_ttl(value: object) -> int | None:
    """`password_session_ttl` in seconds: a whole number of seconds, or a string "90s", "15m",
    "2h"; between MIN_SESSION_TTL_S and MAX_SESSION_TTL_S. None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        return None
    m = _DURATION.match(text)
    if m is None:
        return None
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)]
    return seconds if MIN_SESSION_TTL_S <= seconds <= MAX_SESSION_TTL_S else None


def keep_sessions(sessions: list[dict[str, object]], now: float) -> list[dict[str, object]]:
    """The sessions still valid at `now`, at most MAX_SESSIONS (the latest to expire kept).
    Entries without numeric `issued_at`/`expires_at` are dropped."""
    alive = []
    for s in sessions:
        issued, expires = s.get("issued_at"), s.get("expires_at")
        if isinstance(issued, (int, float)) and isinstance(expires, (int, float)) \
                and not isinstance(issued, bool) and not isinstance(expires, bool) \
                and session_valid(float(issued), float(expires), now):
            alive.append(s)
    alive.sort(key=lambda s: float(s["expires_at"]), reverse=True)  # type: ignore[arg-type]
    return alive[:MAX_SESSIONS]


# -- the caller's side ---------------------------------------------------------------------------

PASSWORD_REQUIRED_RULE = "admission:password_required"


def needs_unlock(result: object) -> bool:
    """Whether a call's result is the refusal of a machine that wants its password first."""
    return (isinstance(result, dict) and result.get("error") == "permission_denied"
            and result.get("rule_id") == PASSWORD_REQUIRED_RULE)


def unlock_hint(host: str) -> str:
    return f"run `cmdop password unlock {host}` (its password), then try again"
