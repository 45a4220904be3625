"""When to refresh an OAuth token (cmdop.core.token_policy): tables and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmdop.core.credentials import REFRESH_MARGIN_S
from cmdop.core.token_policy import (BACKOFF_CAP_S, MAX_FAILURES, RefreshState, after_failure, after_success,
                                     backoff_delay, plan_refresh, refresh_due_at)

NOW = 1_800_000_000.0
FRESH = RefreshState()


@pytest.mark.parametrize("expires_at,refreshable,state,action,at,status", [
    (None, True, FRESH, "idle", None, "OK"),
    (NOW + 3600, True, FRESH, "wait", NOW + 3600 - REFRESH_MARGIN_S, "OK"),
    (NOW + REFRESH_MARGIN_S, True, FRESH, "refresh", NOW, "OK"),        # exactly at the margin
    (NOW + 60, True, FRESH, "refresh", NOW, "OK"),
    (NOW - 60, True, FRESH, "refresh", NOW, "DEGRADED"),
    (NOW + 60, False, FRESH, "wait", NOW + 60, "OK"),
    (NOW - 1, False, FRESH, "give_up", None, "DEGRADED"),
    (NOW + 60, True, RefreshState(2, NOW + 30, "timed out"), "wait", NOW + 30, "OK"),
    (NOW - 60, True, RefreshState(2, NOW + 30, "timed out"), "wait", NOW + 30, "DEGRADED"),
    (NOW + 60, True, RefreshState(2, NOW - 1, "timed out"), "refresh", NOW, "OK"),
    (NOW + 3600, True, RefreshState(1, NOW + 10, "timed out"), "wait", NOW + 10, "OK"),
    (NOW + 3600, True, RefreshState(1, None, "x", given_up=True), "give_up", None, "DEGRADED"),
])
def test_plan_table(expires_at: float | None, refreshable: bool, state: RefreshState, action: str,
                    at: float | None, status: str) -> None:
    plan = plan_refresh(NOW, expires_at=expires_at, has_refresh_token=refreshable, state=state)
    assert (plan.action, plan.at, plan.status) == (action, at, status)
    assert plan.reason


def test_reasons_name_what_to_do() -> None:
    plan = plan_refresh(NOW, expires_at=NOW - 1, has_refresh_token=False)
    assert "cmdop login" in plan.reason and "T" in plan.reason
    state = after_failure(FRESH, NOW, "invalid_grant: grant request is invalid", permanent=True, expires_at=NOW + 60)
    plan = plan_refresh(NOW, expires_at=NOW + 60, has_refresh_token=True, state=state)
    assert plan.action == "give_up" and plan.status == "DEGRADED"
    assert "invalid_grant" in plan.reason and "cmdop login" in plan.reason
    state = after_failure(FRESH, NOW, "cannot reach x: timed out", permanent=False, expires_at=NOW + 60)
    plan = plan_refresh(NOW + 1, expires_at=NOW + 60, has_refresh_token=True, state=state)
    assert plan.action == "wait" and "timed out" in plan.reason and "1 time " in plan.reason
    # the retry itself, the token expired meanwhile: still says why the earlier tries failed
    plan = plan_refresh(NOW + 61, expires_at=NOW + 60, has_refresh_token=True, state=state)
    assert plan.action == "refresh" and plan.status == "DEGRADED"
    assert "expired" in plan.reason and "timed out" in plan.reason and "1 time " in plan.reason


def test_backoff() -> None:
    assert [backoff_delay(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert backoff_delay(3, jitter=0.2) == pytest.approx(24)
    assert backoff_delay(3, jitter=-9) == pytest.approx(10)        # clamped to -50 %
    assert backoff_delay(10 ** 6) == BACKOFF_CAP_S


def test_transient_failures_give_up_only_after_expiry() -> None:
    state = FRESH
    for _ in range(MAX_FAILURES + 5):                 # the token is still valid: never give up
        state = after_failure(state, NOW, "down", permanent=False, expires_at=NOW + 100)
    assert not state.given_up
    state = FRESH
    for i in range(MAX_FAILURES):
        state = after_failure(state, NOW + 200, "down", permanent=False, expires_at=NOW + 100)
        assert state.given_up == (i == MAX_FAILURES - 1)
    assert "run `cmdop login`" in state.last_error
    assert after_success() == FRESH


def test_due_at() -> None:
    assert refresh_due_at(NOW) == NOW - 300
    assert refresh_due_at(NOW, margin=0) == NOW


@given(expires_in=st.floats(min_value=-10_000, max_value=100_000),
       refreshable=st.booleans(),
       outcomes=st.lists(st.sampled_from(["ok", "transient", "permanent"]), max_size=30),
       jitters=st.lists(st.floats(min_value=-0.2, max_value=0.2), min_size=30, max_size=30))
def test_a_refresher_loop(expires_in: float, refreshable: bool, outcomes: list[str], jitters: list[float]) -> None:
    """Driving the policy like the agent's task does: time never goes backwards, a refresh is
    never attempted before it is due nor before the backoff ends, a wait always names a time
    in the future, DEGRADED only once the token has expired or was given up, and a given-up
    state stays given up."""
    now = NOW
    expires_at = NOW + expires_in
    state = FRESH
    for i, outcome in enumerate(outcomes):
        plan = plan_refresh(now, expires_at=expires_at, has_refresh_token=refreshable, state=state)
        if plan.status == "DEGRADED":
            assert now >= expires_at or state.given_up
        if plan.action in ("idle", "give_up"):
            assert plan.at is None
            if plan.action == "give_up":
                assert plan.status == "DEGRADED"
            break
        if plan.action == "wait":
            assert plan.at is not None and plan.at > now
            now = plan.at
            continue
        assert plan.action == "refresh" and refreshable
        assert now >= refresh_due_at(expires_at)
        assert state.retry_at is None or now >= state.retry_at
        if outcome == "ok":
            state = after_success()
            expires_at = now + 3600
        else:
            new = after_failure(state, now, "boom", permanent=outcome == "permanent", expires_at=expires_at,
                                jitter=jitters[i])
            assert new.failures == state.failures + 1
            assert new.given_up or (new.retry_at is not None and new.retry_at > now)
            state = new
