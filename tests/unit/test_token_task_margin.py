"""The agent's token refresher with short-lived tokens (cmdop.daemon.token_task).

With the fixed 5-minute margin a token living less than 5 minutes is due again the moment it
is issued: the refresher renewed it in a tight loop, hammering the issuer. The margin is now a
third of the lifetime the issuer grants (at most 5 minutes). Virtual time (trio's MockClock);
token.json and the issuer are fakes.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from cmdop.adapters import token_file
from cmdop.core.credentials import REFRESH_MARGIN_S
from cmdop.daemon import token_task
from cmdop.core.credentials import refresh_margin
from cmdop.daemon.token_task import TokenState, run_token_refresher

T0 = 1_800_000_000.0


class FakeIssuer:
    """token.json in memory; `ensure_fresh` refreshes (as the real one: when due within the
    margin) with tokens of `ttl` seconds."""

    def __init__(self, ttl: float, first_expires_in: float) -> None:
        self.ttl = ttl
        self.token = token_file.StoredToken(issuer="https://i", token_endpoint="https://i/t",
                                            access_token="A0", refresh_token="R0",
                                            expires_at=T0 + first_expires_in)
        self.refreshed_at: list[float] = []
        self.late = 0                  # refreshes of a token that had expired already

    def load(self, path: str) -> token_file.StoredToken:
        return self.token

    def ensure_fresh(self, settings: Any, *, now: float, margin: float = REFRESH_MARGIN_S,
                     strict: bool = False) -> token_file.StoredToken:
        if len(self.refreshed_at) > 200:
            raise AssertionError("the refresher refreshes in a tight loop")
        if self.token.due(now, margin):
            self.late += self.token.expired(now)
            n = len(self.refreshed_at) + 1
            self.token = dataclasses.replace(self.token, access_token=f"A{n}", refresh_token=f"R{n}",
                                             expires_at=now + self.ttl)
            self.refreshed_at.append(now)
        return self.token


def run_for(issuer: FakeIssuer, seconds: float, monkeypatch: pytest.MonkeyPatch) -> tuple[TokenState, list[str]]:
    monkeypatch.setattr(token_file, "load", issuer.load)
    monkeypatch.setattr(token_file, "ensure_fresh", issuer.ensure_fresh)

    async def inline(fn: Any, *args: Any, **kwargs: Any) -> Any:
        # No worker threads: the mock clock would jump ahead while one runs.
        await trio.lowlevel.checkpoint()
        return fn(*args)

    monkeypatch.setattr(trio.to_thread, "run_sync", inline)
    state = TokenState()
    announced: list[str] = []

    async def main() -> None:
        with trio.move_on_after(seconds):
            await run_token_refresher(SimpleNamespace(token_file="/x/token.json"), state,  # type: ignore[arg-type]
                                      announced.append, clock=lambda: T0 + trio.current_time())

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return state, announced


def test_the_margin() -> None:
    assert refresh_margin(None) == REFRESH_MARGIN_S
    assert refresh_margin(0) == REFRESH_MARGIN_S
    assert refresh_margin(3600) == REFRESH_MARGIN_S
    assert refresh_margin(30) == pytest.approx(10)
    assert refresh_margin(12) == pytest.approx(4)


@pytest.mark.parametrize("ttl", [12.0, 30.0, 120.0])
def test_short_tokens_are_refreshed_once_per_two_thirds_of_their_life(ttl: float,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = FakeIssuer(ttl, first_expires_in=ttl)
    window = 20 * ttl
    state, announced = run_for(issuer, window, monkeypatch)
    # the first token's lifetime is unknown: refreshed at once (5-minute margin); then every
    # 2/3 of the lifetime the issuer grants
    gaps = [b - a for a, b in zip(issuer.refreshed_at[1:], issuer.refreshed_at[2:])]
    assert gaps and all(g == pytest.approx(ttl * 2 / 3, abs=1.0) for g in gaps), gaps
    assert len(issuer.refreshed_at) <= 2 + window / (ttl * 2 / 3)
    assert state.refreshes == len(issuer.refreshed_at) and state.status == "OK"
    assert state.lifetime_s == pytest.approx(ttl)
    assert announced == [f"A{n}" for n in range(1, len(issuer.refreshed_at) + 1)]
    assert issuer.late == 0             # every token was renewed before it expired


def test_hour_tokens_keep_the_five_minute_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = FakeIssuer(3600.0, first_expires_in=3600.0)
    run_for(issuer, 3 * 3600.0, monkeypatch)
    assert issuer.refreshed_at[0] == pytest.approx(T0 + 3600 - REFRESH_MARGIN_S, abs=token_task.MAX_SLEEP_S)
    gaps = [b - a for a, b in zip(issuer.refreshed_at, issuer.refreshed_at[1:])]
    assert gaps and all(g == pytest.approx(3600 - REFRESH_MARGIN_S, abs=1.0) for g in gaps), gaps


class CappedIssuer(FakeIssuer):
    """Refreshed tokens never outlive a fixed moment (a session's end): ever shorter ones."""

    def __init__(self, ends_at: float) -> None:
        super().__init__(ttl=0.0, first_expires_in=ends_at - T0)
        self.ends_at = ends_at

    def ensure_fresh(self, settings: Any, *, now: float, margin: float = REFRESH_MARGIN_S,
                     strict: bool = False) -> token_file.StoredToken:
        self.ttl = max(0.0, self.ends_at - now)
        return super().ensure_fresh(settings, now=now, margin=margin, strict=strict)


def test_ever_shorter_lifetimes_cannot_spin_the_refresher(monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = CappedIssuer(T0 + 60)
    run_for(issuer, 90.0, monkeypatch)
    gaps = [b - a for a, b in zip(issuer.refreshed_at, issuer.refreshed_at[1:])]
    assert gaps and min(gaps) >= token_task.MIN_INTERVAL_S - 1e-6, gaps
    assert len(issuer.refreshed_at) <= 2 + 60 / token_task.MIN_INTERVAL_S


class DeadIssuer(FakeIssuer):
    def ensure_fresh(self, settings: Any, *, now: float, margin: float = REFRESH_MARGIN_S,
                     strict: bool = False) -> token_file.StoredToken:
        from cmdop.core.errors import UnreachableError

        self.refreshed_at.append(now)            # attempts, here
        raise UnreachableError("cannot reach i: connection refused")


def test_the_status_turns_degraded_when_the_token_expires_between_retries(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries back off (5, 10, 20 s…); the token expiring meanwhile is reported at its expiry,
    not at the next retry."""
    issuer = DeadIssuer(ttl=12.0, first_expires_in=20.0)
    state, announced = run_for(issuer, 22.0, monkeypatch)
    assert len(issuer.refreshed_at) == 3 and not announced          # at 0, ~5, ~15 s
    assert state.status == "DEGRADED", state
    assert "expired" in state.reason and "refreshing failed 3 times" in state.reason, state.reason
    assert "connection refused" in state.reason
