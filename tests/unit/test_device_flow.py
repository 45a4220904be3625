"""The sans-IO device flow (RFC 8628) of cmdop.core.device_flow: tables and properties."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmdop.core.device_flow import (DEFAULT_INTERVAL_S, DEVICE_CODE_GRANT, MAX_INTERVAL_S, MAX_NETWORK_FAILURES,
                                    NOT_JSON, DeviceFlow, Done, Failed, FlowStateError, Send, ShowCode,
                                    TokenError, TokenSet, Wait, id_token_subject, json_body,
                                    parse_token_response, printable)

T0 = 1_000_000.0
DEVICE = {"device_code": "DEVICE-SECRET", "user_code": "WDJB-MJHT",
          "verification_uri": "https://example.com/device",
          "verification_uri_complete": "https://example.com/device?user_code=WDJB-MJHT",
          "expires_in": 600, "interval": 5}
TOKENS = {"access_token": "ACCESS-SECRET", "token_type": "Bearer", "expires_in": 3600,
          "refresh_token": "REFRESH-SECRET", "scope": "openid offline_access"}


def pending() -> tuple[int, dict[str, str]]:
    return 400, {"error": "authorization_pending"}


def started(device: dict[str, Any] | None = None, now: float = T0) -> tuple[DeviceFlow, list[Any]]:
    flow = DeviceFlow("cmdop-cli", "openid offline_access")
    [send] = flow.start(now)
    assert send == Send("device", {"client_id": "cmdop-cli", "scope": "openid offline_access"})
    return flow, flow.receive_response(200, dict(DEVICE if device is None else device), now)


def test_the_happy_path() -> None:
    flow, actions = started()
    show, wait = actions
    assert show == ShowCode("WDJB-MJHT", DEVICE["verification_uri"], DEVICE["verification_uri_complete"],
                            T0 + 600, 5.0)
    assert wait == Wait(5.0, T0 + 600, "interval")
    [poll] = flow.wait_over(T0 + 5)
    assert poll == Send("token", {"grant_type": DEVICE_CODE_GRANT, "device_code": "DEVICE-SECRET",
                                  "client_id": "cmdop-cli"})
    assert flow.receive_response(*pending(), T0 + 5) == [Wait(5.0, T0 + 600, "interval")]
    flow.wait_over(T0 + 10)
    [done] = flow.receive_response(200, dict(TOKENS, workspace="acme", account="alice"), T0 + 10)
    assert isinstance(done, Done)
    assert done.tokens == TokenSet("ACCESS-SECRET", "Bearer", 3600.0, "REFRESH-SECRET", "openid offline_access",
                                   workspace="acme", account="alice")
    assert flow.state == "done"
    with pytest.raises(FlowStateError):
        flow.wait_over(T0 + 11)


def test_no_scope_no_scope_field_and_default_interval() -> None:
    flow = DeviceFlow("c")
    assert flow.start(T0) == [Send("device", {"client_id": "c"})]
    device = {k: v for k, v in DEVICE.items() if k != "interval"}
    actions = flow.receive_response(200, device, T0)
    assert actions[1] == Wait(DEFAULT_INTERVAL_S, T0 + 600, "interval")


def test_slow_down_adds_five_seconds_each_time_and_never_lowers() -> None:
    flow, _ = started()
    seen = []
    for error in ["slow_down", "authorization_pending", "slow_down", "slow_down", "authorization_pending"]:
        flow.wait_over(T0 + 1)
        [wait] = flow.receive_response(400, {"error": error}, T0 + 1)
        assert isinstance(wait, Wait)
        seen.append((wait.seconds, wait.reason))
    assert seen == [(10, "slow_down"), (10, "interval"), (15, "slow_down"), (20, "slow_down"), (20, "interval")]


def test_slow_down_with_the_servers_new_interval() -> None:
    flow, _ = started()
    flow.wait_over(T0 + 5)
    [wait] = flow.receive_response(400, {"error": "slow_down", "interval": 30}, T0 + 5)
    assert wait == Wait(30.0, T0 + 600, "slow_down")
    flow.wait_over(T0 + 35)
    [wait] = flow.receive_response(400, {"error": "slow_down", "interval": 7}, T0 + 35)
    assert wait == Wait(35.0, T0 + 600, "slow_down")             # never less than 5 s more


def test_extra_device_request_fields() -> None:
    flow = DeviceFlow("c", "s", extra={"workspace": "prod", "scope": "ignored", "empty": ""})
    assert flow.start(T0) == [Send("device", {"client_id": "c", "scope": "s", "workspace": "prod"})]


@pytest.mark.parametrize("status,body,error,needle", [
    (400, {"error": "access_denied"}, "access_denied", "denied"),
    (400, {"error": "expired_token"}, "expired_token", "expired"),
    (400, {"error": "invalid_grant", "error_description": "bad\x1b[2Jcode"}, "invalid_grant", "bad?[2Jcode"),
    (401, {"error": "invalid_client"}, "invalid_client", "invalid_client"),
    (200, NOT_JSON, "protocol", "not JSON"),
    (200, ["a", "list"], "protocol", "not a JSON object"),
    (200, {"token_type": "Bearer"}, "protocol", "no access_token"),
    (200, dict(TOKENS, token_type="DPoP"), "protocol", "token_type"),
    (400, {"no": "error"}, "protocol", "without an OAuth error"),
    (302, NOT_JSON, "protocol", "not JSON"),
])
def test_token_endpoint_outcomes(status: int, body: object, error: str, needle: str) -> None:
    flow, _ = started()
    flow.wait_over(T0 + 5)
    [failed] = flow.receive_response(status, body, T0 + 5)
    assert isinstance(failed, Failed) and failed.error == error and needle in failed.message
    assert "SECRET" not in failed.message and "\x1b" not in failed.message
    assert flow.state == "failed"


def test_network_errors_double_the_interval_then_give_up() -> None:
    flow, _ = started()
    waits = []
    for i in range(MAX_NETWORK_FAILURES - 1):
        flow.wait_over(T0 + i)
        [wait] = flow.receive_network_error("connection refused", T0 + i)
        assert isinstance(wait, Wait) and wait.reason == "retry" and wait.detail == "connection refused"
        waits.append(wait.seconds)
    assert waits == [10, 20, 40, 80]
    flow.wait_over(T0 + 10)
    [failed] = flow.receive_network_error("connection refused", T0 + 10)
    assert isinstance(failed, Failed) and failed.error == "network" and "5 times" in failed.message


def test_a_reply_resets_the_network_failure_count() -> None:
    flow, _ = started()
    for i in range(20):
        flow.wait_over(T0)
        if i % 2:
            flow.receive_response(*pending(), T0)
        else:
            [wait] = flow.receive_network_error("reset", T0)
            assert isinstance(wait, Wait)
    assert flow.interval == MAX_INTERVAL_S   # doubled every time, capped


def test_server_errors_are_transient() -> None:
    flow, _ = started()
    flow.wait_over(T0)
    [wait] = flow.receive_response(503, NOT_JSON, T0)
    assert isinstance(wait, Wait) and wait.reason == "retry" and "503" in wait.detail
    flow.wait_over(T0 + 10)
    [done] = flow.receive_response(200, TOKENS, T0 + 10)
    assert isinstance(done, Done)


def test_the_code_expires_on_the_callers_clock() -> None:
    flow, _ = started(dict(DEVICE, expires_in=12, interval=5))
    assert flow.wait_over(T0 + 5)[0].endpoint == "token"  # type: ignore[union-attr]
    [wait] = flow.receive_response(*pending(), T0 + 10)
    assert wait == Wait(2.0, T0 + 12, "interval")                # never past the deadline
    [failed] = flow.wait_over(T0 + 12)
    assert failed == Failed("expired_token", "the code expired before it was approved")


def test_device_request_retries_then_fails() -> None:
    flow = DeviceFlow("c")
    flow.start(T0)
    delays = []
    for _ in range(3):
        [wait] = flow.receive_network_error("timed out", T0)
        assert isinstance(wait, Wait) and wait.deadline is None
        delays.append(wait.seconds)
        assert flow.wait_over(T0) == [Send("device", {"client_id": "c"})]
    assert delays == [1, 2, 4]
    [failed] = flow.receive_response(500, NOT_JSON, T0)
    assert isinstance(failed, Failed) and failed.error == "network" and "4 attempts" in failed.message


@pytest.mark.parametrize("change,needle", [
    ({"device_code": None}, "device_code"),
    ({"user_code": ""}, "user_code"),
    ({"user_code": "A" * 65}, "user_code"),
    ({"user_code": "AB\x1b[31mCD"}, "user_code"),
    ({"verification_uri": "javascript:alert(1)"}, "verification_uri"),
    ({"verification_uri": None}, "verification_uri"),
])
def test_bad_device_replies(change: dict[str, Any], needle: str) -> None:
    device = {k: v for k, v in dict(DEVICE, **change).items() if v is not None}
    flow = DeviceFlow("c")
    flow.start(T0)
    [failed] = flow.receive_response(200, device, T0)
    assert isinstance(failed, Failed) and failed.error == "protocol" and needle in failed.message


def test_device_reply_quirks() -> None:
    # Google's verification_url, a string expires_in, an absurd interval, a bad complete URI
    device = {"device_code": "d", "user_code": "U", "verification_url": "https://g.co/device",
              "expires_in": "1800", "interval": 100000, "verification_uri_complete": "ftp://x"}
    flow = DeviceFlow("c")
    flow.start(T0)
    show, wait = flow.receive_response(200, device, T0)
    assert show == ShowCode("U", "https://g.co/device", "", T0 + 1800, MAX_INTERVAL_S)
    assert wait == Wait(MAX_INTERVAL_S, T0 + 1800, "interval")


def test_device_endpoint_errors() -> None:
    flow = DeviceFlow("c")
    flow.start(T0)
    [failed] = flow.receive_response(400, {"error": "invalid_client", "error_description": "unknown client"}, T0)
    assert failed == Failed("invalid_client", "the server refused the device authorization request: "
                                              "invalid_client: unknown client")


def test_events_out_of_order_are_driver_bugs() -> None:
    flow = DeviceFlow("c")
    with pytest.raises(FlowStateError):
        flow.wait_over(T0)
    with pytest.raises(FlowStateError):
        flow.receive_response(200, {}, T0)
    flow.start(T0)
    with pytest.raises(FlowStateError):
        flow.start(T0)


def test_secrets_stay_out_of_reprs() -> None:
    flow, actions = started()
    [send] = flow.wait_over(T0 + 5)
    [done] = flow.receive_response(200, dict(TOKENS, id_token="ID-SECRET"), T0 + 5)
    text = repr(flow) + repr(actions) + repr(send) + repr(done)
    assert "SECRET" not in text


# -- parse_token_response, id_token_subject, helpers ---------------------------------------

@pytest.mark.parametrize("body,expires_in,refresh,scope", [
    (TOKENS, 3600.0, "REFRESH-SECRET", "openid offline_access"),
    ({"access_token": "a", "token_type": "bearer"}, None, "", "asked"),
    ({"access_token": "a", "expires_in": "120"}, 120.0, "", "asked"),
    ({"access_token": "a", "expires_in": -5}, None, "", "asked"),
    ({"access_token": "a", "expires_in": True}, None, "", "asked"),
    ({"access_token": "a", "expires_in": 1e400}, None, "", "asked"),
    ({"access_token": "a", "expires_in": "²"}, None, "", "asked"),       # isdigit(), yet not a number
    ({"access_token": "a", "expires_in": "١٢٠"}, None, "", "asked"),
    ({"access_token": "a", "refresh_token": 7, "scope": None}, None, "", "asked"),
])
def test_parse_token_response(body: dict[str, Any], expires_in: float | None, refresh: str, scope: str) -> None:
    got = parse_token_response(200, body, requested_scope="asked")
    assert isinstance(got, TokenSet)
    assert (got.expires_in, got.refresh_token, got.scope) == (expires_in, refresh, scope)


def test_parse_token_response_transient() -> None:
    assert parse_token_response(429, NOT_JSON) == TokenError("server", "the server answered HTTP 429", 429, True)
    got = parse_token_response(502, {"error": "x"})
    assert isinstance(got, TokenError) and got.transient


def _jwt(claims: dict[str, Any]) -> str:
    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'ES256'})}.{part(claims)}.sig"


@pytest.mark.parametrize("claims,sub", [
    ({"iss": "https://i", "aud": "cmdop-cli", "sub": "alice"}, "alice"),
    ({"iss": "https://i", "aud": ["x", "cmdop-cli"], "sub": "bob"}, "bob"),
    ({"iss": "https://evil", "aud": "cmdop-cli", "sub": "alice"}, ""),
    ({"iss": "https://i", "aud": "other", "sub": "alice"}, ""),
    ({"iss": "https://i", "aud": "cmdop-cli"}, ""),
    ({"iss": "https://i", "aud": "cmdop-cli", "sub": "a\nb"}, "a?b"),
])
def test_id_token_subject(claims: dict[str, Any], sub: str) -> None:
    assert id_token_subject(_jwt(claims), issuer="https://i", client_id="cmdop-cli") == sub


@pytest.mark.parametrize("token", ["", "a.b", "a.!!!.c", "a.bm90IGpzb24.c", "a.WzFd.c"])
def test_id_token_subject_garbage(token: str) -> None:
    assert id_token_subject(token, issuer="https://i", client_id="c") == ""


def test_json_body_and_printable() -> None:
    assert json_body(b'{"a": 1}') == {"a": 1}
    assert json_body(b"\xff") is NOT_JSON
    assert json_body(b"[" * 100000) is NOT_JSON
    assert json_body(b"<html>") is NOT_JSON
    assert printable("a\x00b\u202ec") == "a?b?c"
    assert printable("x" * 300).endswith("…") and len(printable("x" * 300)) == 201


# -- properties ----------------------------------------------------------------------------

_REPLY = st.one_of(
    st.just(("pending",)), st.just(("slow_down",)), st.just(("network",)), st.just(("5xx",)),
    st.tuples(st.just("error"), st.sampled_from(["access_denied", "expired_token", "invalid_grant"])),
    st.just(("garbage",)), st.just(("tokens",)),
)


@given(replies=st.lists(_REPLY, max_size=40),
       expires_in=st.integers(min_value=1, max_value=3600),
       interval=st.one_of(st.none(), st.integers(min_value=-5, max_value=1000)),
       lateness=st.lists(st.floats(min_value=0, max_value=30), min_size=40, max_size=40))
def test_properties(replies: list[tuple[str, ...]], expires_in: int, interval: int | None,
                    lateness: list[float]) -> None:
    """Whatever the server answers and however late the driver wakes up: the interval never
    drops, no wait passes the deadline, no poll is sent at or after the deadline, slow_down adds
    exactly 5 s, the flow ends exactly once, and no secret is ever in an action's repr."""
    device = dict(DEVICE, expires_in=expires_in)
    if interval is None:
        device.pop("interval")
    else:
        device["interval"] = interval
    flow = DeviceFlow("c", "s")
    flow.start(T0)
    now = T0
    actions = flow.receive_response(200, device, now)
    deadline = T0 + expires_in
    ended = False
    for i, reply in enumerate(replies):
        assert not ended
        [*_, last] = actions
        assert "SECRET" not in repr(actions)
        if isinstance(last, (Done, Failed)):
            ended = True
            break
        assert isinstance(last, Wait)
        assert 0 <= last.seconds and now + last.seconds <= deadline + 1e-6
        now += last.seconds + lateness[i]
        before = flow.interval
        actions = flow.wait_over(now)
        if now >= deadline:
            assert actions == [Failed("expired_token", "the code expired before it was approved")]
            ended = True
            break
        [send] = actions
        assert isinstance(send, Send) and send.endpoint == "token"
        kind = reply[0]
        if kind == "network":
            actions = flow.receive_network_error("boom", now)
        elif kind == "pending":
            actions = flow.receive_response(400, {"error": "authorization_pending"}, now)
        elif kind == "slow_down":
            actions = flow.receive_response(400, {"error": "slow_down"}, now)
            assert flow.interval == min(before + 5, MAX_INTERVAL_S)
        elif kind == "5xx":
            actions = flow.receive_response(500, NOT_JSON, now)
        elif kind == "error":
            actions = flow.receive_response(400, {"error": reply[1]}, now)
            assert isinstance(actions[-1], Failed) and actions[-1].error == reply[1]
        elif kind == "garbage":
            actions = flow.receive_response(200, NOT_JSON, now)
            assert isinstance(actions[-1], Failed) and actions[-1].error == "protocol"
        else:
            actions = flow.receive_response(200, TOKENS, now)
            assert isinstance(actions[-1], Done)
        assert flow.interval >= before
    if ended:
        assert flow.state in ("done", "failed")
        with pytest.raises(FlowStateError):
            flow.wait_over(now)
