"""The OAuth 2.0 device authorization grant (RFC 8628) as a sans-IO state machine.

Like h11, this module does no I/O and has no clock: the caller feeds it events — an HTTP reply
(status + the body parsed as JSON, or `NOT_JSON`), a network failure, the end of a wait, each with
the current time — and gets back actions to carry out:

    Send(endpoint, form)   POST `form` to the "device" authorization or the "token" endpoint
    ShowCode(...)          show the user the verification URI and the user code
    Wait(seconds, ...)     wait that long, then call `wait_over(now)`
    Done(tokens)           the user approved: here are the tokens
    Failed(error, message) the flow ended without tokens (`error` is machine-readable)

A driver (cmdop.adapters.oauth_client.run_device_flow) is a loop around it:

    flow = DeviceFlow(client_id="cmdop-cli", scope="openid offline_access")
    actions = flow.start(now)
    ... for each action: Send → POST, then flow.receive_response(status, body, now)
                                        (or flow.receive_network_error(reason, now));
                         Wait → sleep, then flow.wait_over(now); ShowCode → print;
                         Done / Failed → stop.

Rules it keeps (RFC 8628 §3.2-3.5):
- the polling interval is the server's `interval` (default 5 s), raised by 5 s on every
  `slow_down` (or to the `interval` that reply names, when longer) and never lowered; a connection failure doubles it (capped at MAX_INTERVAL_S), and
  MAX_NETWORK_FAILURES failures in a row end the flow;
- `authorization_pending` waits one interval; `access_denied` and `expired_token` end the flow;
- the code's lifetime (`expires_in`) is tracked on the caller's clock: no poll is sent after it;
- an HTTP 5xx is a transient failure like a network error; any other unexpected reply ends the
  flow with error "protocol" and says what was wrong, never echoing a secret.
Secrets (device code, tokens) are never in an action's repr, nor in any message.

Also here, pure and shared with refresh: `parse_token_response` (RFC 6749 §5.1/5.2) and
`id_token_subject` (the `sub` of an ID token received straight from the token endpoint).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Union

DEVICE_CODE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL_S: Final = 5.0
SLOW_DOWN_STEP_S: Final = 5.0
MAX_INTERVAL_S: Final = 300.0
MAX_NETWORK_FAILURES: Final = 5
DEVICE_RETRY_DELAYS_S: Final = (1.0, 2.0, 4.0)   # the device authorization request's retries
DEFAULT_EXPIRES_IN_S: Final = 600.0              # when a server leaves `expires_in` out
MAX_USER_CODE_LEN: Final = 64
MAX_TEXT_LEN: Final = 200


class _NotJson:
    """The body of a reply that was not JSON (a singleton, `NOT_JSON`)."""

    _instance: "_NotJson | None" = None

    def __new__(cls) -> "_NotJson":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON: Final = _NotJson()


class FlowStateError(Exception):
    """A driver bug: an event the flow cannot take in its present state."""


# -- values --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenSet:
    """A successful token response (RFC 6749 §5.1), plus the fields cmdop's relay adds."""

    access_token: str = field(repr=False)
    token_type: str = "Bearer"
    expires_in: float | None = None
    refresh_token: str = field(default="", repr=False)
    scope: str = ""
    id_token: str = field(default="", repr=False)
    workspace: str = ""
    account: str = ""


@dataclass(frozen=True)
class TokenError:
    """An error token response (RFC 6749 §5.2), or a reply that is neither (error "protocol"
    or "server"). `transient`: worth retrying (HTTP 5xx, 429)."""

    error: str
    description: str = ""
    status: int = 0
    transient: bool = False

    def text(self) -> str:
        return f"{self.error}: {self.description}" if self.description else self.error


# -- actions -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Send:
    """POST `form` (application/x-www-form-urlencoded) to the named endpoint."""

    endpoint: Literal["device", "token"]
    form: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class ShowCode:
    """Tell the user where to go and which code to enter. Every field is printable text."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_at: float
    interval: float


@dataclass(frozen=True)
class Wait:
    """Wait `seconds`, then call `wait_over`. `deadline`: when the user code expires (None
    before there is one); `reason`: why (a retry carries the failure in `detail`)."""

    seconds: float
    deadline: float | None
    reason: Literal["interval", "slow_down", "retry"]
    detail: str = ""


@dataclass(frozen=True)
class Done:
    tokens: TokenSet


@dataclass(frozen=True)
class Failed:
    """The flow ended without tokens. `error`: the OAuth error code (access_denied,
    expired_token, invalid_client, …) or one of ours: network, protocol."""

    error: str
    message: str


Action = Union[Send, ShowCode, Wait, Done, Failed]


# -- helpers -------------------------------------------------------------------------------

def printable(value: object, limit: int = MAX_TEXT_LEN) -> str:
    """`value` as one line of text safe to print: control characters replaced, cut at `limit`."""
    text = value if isinstance(value, str) else repr(value)
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "…"


def _number(value: object) -> float | None:
    """A JSON number (or a string of digits, as some servers send) → float; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        # (isascii: str.isdigit() is true for "²", which float() refuses)
        number = float(value.strip())
    else:
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None


def _clean_text(value: object) -> str | None:
    """A string with nothing unprintable in it, else None."""
    if not isinstance(value, str) or not value or not value.isprintable():
        return None
    return value


def parse_token_response(status: int, body: object, *, requested_scope: str = "") -> TokenSet | TokenError:
    """An HTTP reply of a token endpoint → TokenSet or TokenError (never raises)."""
    if status >= 500 or status == 429:
        return TokenError("server", f"the server answered HTTP {status}", status, transient=True)
    if not isinstance(body, dict):
        what = "is not JSON" if body is NOT_JSON else "is not a JSON object"
        return TokenError("protocol", f"the token endpoint's reply (HTTP {status}) {what}", status)
    if status != 200:
        error = body.get("error")
        if isinstance(error, str) and error:
            description = body.get("error_description")
            return TokenError(printable(error, 64),
                              printable(description) if isinstance(description, str) else "", status)
        return TokenError("protocol", f"the token endpoint answered HTTP {status} without an OAuth error", status)
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        return TokenError("protocol", "the token endpoint's reply has no access_token", status)
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        return TokenError("protocol", f"unsupported token_type {printable(token_type, 32)!r} (cmdop "
                                      "uses Bearer tokens)", status)
    expires_in = _number(body.get("expires_in"))
    if expires_in is not None and expires_in < 0:
        expires_in = None
    refresh = body.get("refresh_token")
    scope = body.get("scope")
    id_token = body.get("id_token")
    workspace = body.get("workspace")
    account = body.get("account")
    return TokenSet(
        access_token=access, token_type="Bearer", expires_in=expires_in,
        refresh_token=refresh if isinstance(refresh, str) else "",
        scope=scope if isinstance(scope, str) else requested_scope,
        id_token=id_token if isinstance(id_token, str) else "",
        workspace=printable(workspace, 64) if isinstance(workspace, str) else "",
        account=printable(account, 128) if isinstance(account, str) else "",
    )


def id_token_subject(id_token: str, *, issuer: str, client_id: str) -> str:
    """The `sub` of an ID token received straight from the token endpoint over verified TLS
    (OpenID Connect Core §3.1.3.7: TLS server validation may stand in for the signature check
    then), when its `iss` is `issuer` and its `aud` names `client_id`; "" otherwise."""
    parts = id_token.split(".")
    if len(parts) != 3:
        return ""
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error, RecursionError):
        return ""
    if not isinstance(claims, dict):
        return ""
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if claims.get("iss") != issuer or client_id not in audiences:
        return ""
    sub = claims.get("sub")
    return printable(sub, 128) if isinstance(sub, str) and sub else ""


# -- the state machine ---------------------------------------------------------------------

State = Literal["idle", "requesting_code", "retry_code", "polling", "waiting", "done", "failed"]


class DeviceFlow:
    """One run of the device flow for a public client (see the module docstring)."""

    def __init__(self, client_id: str, scope: str = "", *, extra: dict[str, str] | None = None,
                 max_network_failures: int = MAX_NETWORK_FAILURES) -> None:
        self.client_id = client_id
        self.scope = scope
        self.extra = dict(extra or {})     # more fields of the device authorization request
        self.max_network_failures = max_network_failures
        self.state: State = "idle"
        self.interval = DEFAULT_INTERVAL_S
        self.expires_at: float | None = None
        self.network_failures = 0
        self.polls = 0
        self._device_code = ""
        self._code_attempts = 0

    def __repr__(self) -> str:
        return (f"DeviceFlow(state={self.state!r}, interval={self.interval}, "
                f"expires_at={self.expires_at}, polls={self.polls})")

    # events ------------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Begin: the device authorization request (RFC 8628 §3.1)."""
        self._expect("idle")
        return self._request_code()

    def receive_response(self, status: int, body: object, now: float) -> list[Action]:
        """The reply to the last `Send`: its HTTP status and its body as parsed JSON
        (`NOT_JSON` when it was not JSON)."""
        if self.state == "requesting_code":
            return self._device_reply(status, body, now)
        self._expect("polling")
        return self._token_reply(status, body, now)

    def receive_network_error(self, reason: str, now: float) -> list[Action]:
        """The last `Send` got no HTTP reply (refused, reset, timed out)."""
        if self.state == "requesting_code":
            return self._retry_code(printable(reason))
        self._expect("polling")
        return self._transient(printable(reason), now)

    def wait_over(self, now: float) -> list[Action]:
        """The last `Wait` has passed."""
        if self.state == "retry_code":
            return self._request_code()
        self._expect("waiting")
        if self.expires_at is not None and now >= self.expires_at:
            return self._fail("expired_token", "the code expired before it was approved")
        self.state = "polling"
        self.polls += 1
        return [Send("token", {"grant_type": DEVICE_CODE_GRANT, "device_code": self._device_code,
                               "client_id": self.client_id})]

    # internals ---------------------------------------------------------------------------

    def _expect(self, *states: State) -> None:
        if self.state not in states:
            raise FlowStateError(f"event not allowed in state {self.state!r} (expected {' or '.join(states)})")

    def _fail(self, error: str, message: str) -> list[Action]:
        self.state = "failed"
        self._device_code = ""
        return [Failed(error, message)]

    def _request_code(self) -> list[Action]:
        self.state = "requesting_code"
        self._code_attempts += 1
        form = {"client_id": self.client_id}
        if self.scope:
            form["scope"] = self.scope
        form.update((k, v) for k, v in self.extra.items() if v and k not in form)
        return [Send("device", form)]

    def _retry_code(self, detail: str) -> list[Action]:
        if self._code_attempts > len(DEVICE_RETRY_DELAYS_S):
            return self._fail("network", f"no answer from the device authorization endpoint after "
                                         f"{self._code_attempts} attempts ({detail})")
        self.state = "retry_code"
        return [Wait(DEVICE_RETRY_DELAYS_S[self._code_attempts - 1], None, "retry", detail)]

    def _device_reply(self, status: int, body: object, now: float) -> list[Action]:
        if status >= 500 or status == 429:
            return self._retry_code(f"the server answered HTTP {status}")
        if not isinstance(body, dict):
            what = "is not JSON" if body is NOT_JSON else "is not a JSON object"
            return self._fail("protocol", f"the device authorization reply (HTTP {status}) {what}")
        if status != 200:
            err = parse_token_response(status, body)
            assert isinstance(err, TokenError)
            return self._fail(err.error, f"the server refused the device authorization request: {err.text()}")
        device_code = body.get("device_code")
        user_code = _clean_text(body.get("user_code"))
        uri = _clean_text(body.get("verification_uri") or body.get("verification_url"))
        complete = _clean_text(body.get("verification_uri_complete")) or ""
        if not isinstance(device_code, str) or not device_code:
            return self._fail("protocol", "the device authorization reply has no device_code")
        if user_code is None or len(user_code) > MAX_USER_CODE_LEN:
            return self._fail("protocol", "the device authorization reply has no usable user_code")
        if uri is None or not uri.lower().startswith(("https://", "http://")):
            return self._fail("protocol", "the device authorization reply has no usable verification_uri")
        if complete and not complete.lower().startswith(("https://", "http://")):
            complete = ""
        expires_in = _number(body.get("expires_in"))
        if expires_in is None or expires_in <= 0:
            expires_in = DEFAULT_EXPIRES_IN_S
        interval = _number(body.get("interval"))
        if interval is not None:
            self.interval = min(max(interval, 1.0), MAX_INTERVAL_S)
        self._device_code = device_code
        self.expires_at = now + expires_in
        self.state = "waiting"
        return [ShowCode(user_code=user_code, verification_uri=uri, verification_uri_complete=complete,
                         expires_at=self.expires_at, interval=self.interval),
                self._wait(now, "interval")]

    def _wait(self, now: float, reason: Literal["interval", "slow_down", "retry"], detail: str = "") -> Wait:
        assert self.expires_at is not None
        self.state = "waiting"
        seconds = max(0.0, min(self.interval, self.expires_at - now))
        return Wait(seconds, self.expires_at, reason, detail)

    def _transient(self, detail: str, now: float) -> list[Action]:
        self.network_failures += 1
        if self.network_failures >= self.max_network_failures:
            return self._fail("network", f"the token endpoint failed {self.network_failures} times in a "
                                         f"row (last: {detail})")
        self.interval = min(self.interval * 2, MAX_INTERVAL_S)
        return [self._wait(now, "retry", detail)]

    def _token_reply(self, status: int, body: object, now: float) -> list[Action]:
        result = parse_token_response(status, body, requested_scope=self.scope)
        if isinstance(result, TokenSet):
            self.state = "done"
            self._device_code = ""
            return [Done(result)]
        if result.transient:
            return self._transient(result.description or result.error, now)
        self.network_failures = 0
        if result.error == "authorization_pending":
            return [self._wait(now, "interval")]
        if result.error == "slow_down":   # 5 s more (RFC 8628 §3.5), or the server's new interval
            asked = _number(body.get("interval")) if isinstance(body, dict) else None
            self.interval = min(max(self.interval + SLOW_DOWN_STEP_S, asked or 0.0), MAX_INTERVAL_S)
            return [self._wait(now, "slow_down")]
        if result.error == "access_denied":
            return self._fail("access_denied", "the login was denied at the authorization server")
        if result.error == "expired_token":
            return self._fail("expired_token", "the code expired before it was approved")
        if result.error == "protocol":
            return self._fail("protocol", result.description)
        return self._fail(result.error, f"the token endpoint refused: {result.text()}")


def flow_error_kind(error: str) -> Literal["auth", "unreachable", "protocol"]:
    """How a `Failed.error` maps onto the project's errors: "auth" (exit 4), "unreachable"
    (exit 5) or "protocol" (exit 1)."""
    if error == "network" or error == "server":
        return "unreachable"
    if error == "protocol":
        return "protocol"
    return "auth"


def json_body(text: bytes) -> Any:
    """A reply's bytes parsed as JSON, or NOT_JSON (never raises)."""
    try:
        return json.loads(text.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return NOT_JSON
