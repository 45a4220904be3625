"""The daemon's OAuth token refresher: keeps `token.json` fresh ahead of expiry, so the relay link
and local CLIs never present an expired access token.

The decisions are `cmdop.core.token_policy` (pure: when to refresh, backoff, when to give up);
this task only sleeps until the plan's moment, runs the refresh off the trio thread (under the
same file lock a CLI uses, so the two never race), and tells the relay link about a new access
token (a Reauth frame on the open stream: no call is dropped). A refresh that failed for good
turns the agent DEGRADED with the reason, until `cmdop login` writes a new token.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import trio

from cmdop.core import token_policy
from cmdop.core.credentials import refresh_margin
from cmdop.core.errors import AuthError, CmdopError

if TYPE_CHECKING:
    from cmdop.core.settings import Settings

log = logging.getLogger("cmdop.daemon.token")

MAX_SLEEP_S = 60.0          # re-read token.json at least this often (a new `cmdop login`)
MIN_INTERVAL_S = 2.0        # never two refreshes closer than this (an issuer granting ever
                            # shorter lifetimes, e.g. capped at a session's end, cannot spin us)


@dataclass
class TokenState:
    """The login as `agent status` reports it (never the token itself)."""

    present: bool = False
    expires_at: float | None = None
    status: str = "OK"
    reason: str = ""
    refreshes: int = 0
    lifetime_s: float | None = None     # of the tokens this agent's refreshes got (None: unknown)
    refreshed_at: float | None = None   # the last refresh (the clock's time)
    policy: token_policy.RefreshState = field(default_factory=token_policy.RefreshState)

    def as_dict(self) -> dict[str, Any]:
        return {"present": self.present, "expires_at": self.expires_at, "status": self.status,
                "reason": self.reason, "refreshes": self.refreshes}


async def run_token_refresher(settings: "Settings", state: TokenState,
                              on_new_token: Callable[[str], None],
                              clock: Callable[[], float] = time.time) -> None:
    """Forever: refresh token.json when the policy says so; `on_new_token(access_token)` after
    each refresh (the relay link reauthenticates with it)."""
    from cmdop.adapters import token_file

    while True:
        token = await trio.to_thread.run_sync(token_file.load, settings.token_file)
        now = clock()
        state.present = token is not None
        if token is None:
            state.status, state.reason, state.expires_at = "OK", "", None
            await trio.sleep(MAX_SLEEP_S)
            continue
        state.expires_at = token.expires_at
        plan = token_policy.plan_refresh(now, expires_at=token.expires_at,
                                         has_refresh_token=bool(token.refresh_token),
                                         state=state.policy, margin=_margin(state, token))
        state.status, state.reason = plan.status, plan.reason
        if plan.action == "refresh":
            since = None if state.refreshed_at is None else now - state.refreshed_at
            if state.policy.failures == 0 and since is not None and 0 <= since < MIN_INTERVAL_S:
                await trio.sleep(MIN_INTERVAL_S - since)
                continue
            await _refresh(settings, state, token, on_new_token, clock)
            continue
        wait = MAX_SLEEP_S if plan.at is None else min(MAX_SLEEP_S, max(0.5, plan.at - now))
        if token.expires_at is not None and token.expires_at > now:
            # Look again when it expires: the status turns DEGRADED then, not at the next retry.
            wait = min(wait, max(0.5, token.expires_at - now))
        await trio.sleep(wait)
        fresh = await trio.to_thread.run_sync(token_file.load, settings.token_file)
        if fresh is not None and fresh.access_token != token.access_token:
            # A new `cmdop login` (or a CLI's refresh): start over with it.
            state.policy = token_policy.RefreshState()
            on_new_token(fresh.access_token)


def _margin(state: TokenState, token: Any) -> float:
    """The refresh margin for `token`: by the lifetime token.json recorded when the token was got
    (a login — perhaps a new one granting longer tokens — or a refresh), else the one this
    agent's refreshes saw."""
    return refresh_margin(token.lifetime_s or state.lifetime_s)


async def _refresh(settings: "Settings", state: TokenState, token: Any,
                   on_new_token: Callable[[str], None], clock: Callable[[], float]) -> None:
    from cmdop.adapters import token_file

    now = clock()
    margin = _margin(state, token)
    try:
        fresh = await trio.to_thread.run_sync(
            lambda: token_file.ensure_fresh(settings, now=now, margin=margin, strict=True))
    except CmdopError as exc:
        permanent = isinstance(exc, AuthError)
        state.policy = token_policy.after_failure(
            state.policy, now, exc.message, permanent=permanent, expires_at=token.expires_at,
            jitter=random.uniform(-0.2, 0.2))
        level = logging.ERROR if state.policy.given_up else logging.WARNING
        log.log(level, "refreshing the login failed: %s", exc.message)
        return
    state.policy = token_policy.after_success()
    if fresh is None or fresh.access_token == token.access_token:
        # Not due by the file's own check after all (the plan's moment and ensure_fresh's
        # comparison can differ at the very boundary): look again in a moment, not at once.
        await trio.sleep(0.5)
        return
    state.refreshes += 1
    state.refreshed_at = now
    if fresh.expires_at is not None:
        state.lifetime_s = fresh.expires_at - now     # what the issuer grants: the next margin
    log.info("login refreshed (expires in %.0f s)", (fresh.expires_at or now) - now)
    on_new_token(fresh.access_token)
