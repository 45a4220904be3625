"""When to refresh an OAuth access token: a pure decision, for the CLI and the agent's refresh task.

    plan = plan_refresh(now, expires_at=..., has_refresh_token=..., state=state)
    plan.action: "idle"     nothing to do ever (the token does not expire)
                 "wait"     look again at `plan.at`
                 "refresh"  refresh now; then `state = after_success()` or
                            `state = after_failure(state, now, error, permanent=..., expires_at=...)`
                 "give_up"  stop trying until the token file changes (a new `cmdop login`)
    plan.status: "OK" while the access token is usable, "DEGRADED" once it has expired without a
                 successful refresh (or refreshing was given up); `plan.reason` says why.

Rules:
- a refresh is due REFRESH_MARGIN_S (5 minutes) before `expires_at`, or with a third of its
  lifetime left for a token living less than 15 minutes (`credentials.refresh_margin`);
- a failed refresh is retried after an exponential backoff: BACKOFF_BASE_S × 2^(failures-1),
  capped at BACKOFF_CAP_S, stretched by the caller's `jitter` (a fraction, e.g. ±0.2, drawn by the
  caller: this module has no randomness and no clock);
- a permanent failure (the server refused the refresh token: `invalid_grant`, a revoked login)
  gives up at once; transient ones (network, HTTP 5xx) give up only when the access token has
  expired and `max_failures` attempts in a row have failed;
- without a refresh token there is nothing to do but wait for the expiry, then give up.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Final, Literal

from cmdop.core.credentials import REFRESH_MARGIN_S

BACKOFF_BASE_S: Final = 5.0
BACKOFF_CAP_S: Final = 300.0
MAX_FAILURES: Final = 12

Status = Literal["OK", "DEGRADED"]


@dataclass(frozen=True)
class RefreshState:
    """What the refresher remembers between attempts. A new login starts from RefreshState()."""

    failures: int = 0              # consecutive failed refreshes
    retry_at: float | None = None  # no attempt before this time
    last_error: str = ""           # the last failure, as a user-readable line (no secret)
    given_up: bool = False


@dataclass(frozen=True)
class RefreshPlan:
    action: Literal["idle", "wait", "refresh", "give_up"]
    at: float | None
    status: Status
    reason: str


def _when(epoch: float) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"{epoch:.0f}"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def refresh_due_at(expires_at: float, margin: float = REFRESH_MARGIN_S) -> float:
    """The moment a token expiring at `expires_at` should be refreshed."""
    return expires_at - margin


def backoff_delay(failures: int, jitter: float = 0.0) -> float:
    """Seconds to wait after `failures` (≥ 1) consecutive failures; `jitter` is a fraction in
    [-0.5, 0.5] chosen by the caller."""
    jitter = max(-0.5, min(0.5, jitter))
    base = min(BACKOFF_CAP_S, BACKOFF_BASE_S * float(2 ** max(0, min(failures, 32) - 1)))
    return float(base * (1.0 + jitter))


def plan_refresh(now: float, *, expires_at: float | None, has_refresh_token: bool,
                 state: RefreshState = RefreshState(), margin: float = REFRESH_MARGIN_S) -> RefreshPlan:
    """What to do about the token at `now` (see the module docstring)."""
    expired = expires_at is not None and now >= expires_at
    status: Status = "DEGRADED" if expired else "OK"
    if state.given_up:
        return RefreshPlan("give_up", None, "DEGRADED",
                           state.last_error or "refreshing the login was given up: run `cmdop login`")
    if expires_at is None:
        return RefreshPlan("idle", None, "OK", "the access token has no expiry")
    if not has_refresh_token:
        if expired:
            return RefreshPlan("give_up", None, "DEGRADED",
                               f"the access token expired at {_when(expires_at)} and there is no refresh "
                               "token: run `cmdop login`")
        return RefreshPlan("wait", expires_at, "OK",
                           f"no refresh token: the login ends at {_when(expires_at)}")
    due = refresh_due_at(expires_at, margin)
    if state.failures == 0 and now < due:
        return RefreshPlan("wait", due, "OK", f"refresh due at {_when(due)}")
    if state.retry_at is not None and now < state.retry_at:
        reason = (f"refreshing failed {state.failures} time{'s' if state.failures != 1 else ''} "
                  f"(last: {state.last_error}); next try at {_when(state.retry_at)}")
        if expired:
            reason = f"the access token expired at {_when(expires_at)}; " + reason
        return RefreshPlan("wait", state.retry_at, status, reason)
    reason = "the access token expires within the refresh margin" if not expired else \
        f"the access token expired at {_when(expires_at)}"
    if state.failures:
        # Retrying: the status still says why the earlier tries failed, not only "expired".
        reason += (f"; refreshing failed {state.failures} time{'s' if state.failures != 1 else ''} "
                   f"(last: {state.last_error}); trying again now")
    return RefreshPlan("refresh", now, status, reason)


def after_success() -> RefreshState:
    """The state after a successful refresh."""
    return RefreshState()


def after_failure(state: RefreshState, now: float, error: str, *, permanent: bool,
                  expires_at: float | None, jitter: float = 0.0,
                  max_failures: int = MAX_FAILURES) -> RefreshState:
    """The state after a failed refresh at `now`. `error` is a user-readable line (no secret);
    `permanent`: the server refused the refresh token itself."""
    failures = state.failures + 1
    if permanent:
        return RefreshState(failures, None, f"the server refused the refresh token ({error}): "
                                            "run `cmdop login`", given_up=True)
    expired = expires_at is not None and now >= expires_at
    if expired and failures >= max_failures:
        return RefreshState(failures, None, f"refreshing failed {failures} times in a row (last: {error}); "
                                            "run `cmdop login` once the server is reachable",
                            given_up=True)
    return RefreshState(failures, now + backoff_delay(failures, jitter), error, given_up=False)
