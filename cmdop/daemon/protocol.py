"""The local socket protocol between `cmdop` commands and the agent daemon (version 1).

Transport: a Unix stream socket. The daemon reads the
peer's credentials with SO_PEERCRED; only the daemon's own uid, or root, is served. Anyone else
gets one `forbidden` error frame and is disconnected; the attempt is logged. So does a peer more
seccomp-confined than the daemon (more filters in /proc/<pid>/status: a command the agent ran,
or its child), or one whose confinement cannot be read, whatever its uid.

Framing: every message is a 4-byte big-endian unsigned length N followed by N bytes of UTF-8 JSON
holding one object. N is at most MAX_FRAME (4 MiB). A larger length, bad JSON, a non-object, or a
frame that does not arrive completely within FRAME_TIMEOUT_S of its first byte gets the
connection dropped, after an error frame when possible (`too_large`, `bad_json`, `slow`); other
connections are not affected. Bad JSON includes NaN, Infinity and -Infinity (not JSON, though
Python reads them), numbers that overflow to them (1e999), nesting too deep for the parser and
integers longer than Python's digit limit (4300): never echoed back, never a crash.
A connection idle for IDLE_TIMEOUT_S between requests is closed.

Requests: `{"v": 1, "id": ANY, "op": OP, ...arguments}`. One connection may carry any number of
requests, answered in order. Responses echo `id`:
`{"v": 1, "id": ..., "ok": true, "result": {...}}` or
`{"v": 1, "id": ..., "ok": false, "error": {"code": C, "message": M, "hint": H}}`.
A request whose `v` is not 1 gets error `bad_version`.

Ops:
- `ping` → `{"pid", "version"}`.
- `status` → the daemon.status object (pid, version, started_at, state, mode, relay, counters).
- `call` `{tool, input, cwd?, operation?, as_caller?}` → the tool's result, a `permission_denied` object when the gate denied. The caller is **local** with the
  identity of the peer (SO_PEERCRED uid → user name, this host's name). `as_caller` may be
  `"remote"` or `"self"` and may only *downgrade* privileges: the call is gated as that caller
  kind (used to try a policy, and by tests), while the audit identity still comes from the real
  peer, and the downgrade is recorded in each audit line as the extra field
  `"as_caller": "remote"|"self"` (the gate's reasons also end in "[as_caller=remote]").
- `pending` → `{"asks": [ASK...]}`, asks waiting for an approver.
- `answer` `{ask_id, verdict: "allow"|"deny", scope?: "once"|"session"|"always", input_digest?}`
  → `{"ask_id", "outcome"}`. The answer applies to that pending ask only; when `input_digest` is
  given it must equal the ask's, so an approval is bound to the exact call. `session` adds a
  session rule, `always` a global rule, each matching exactly that one target.
- `watch` → turns the connection into a stream of events from the daemon; the client attaches as
  an *approver* and sends nothing more. Events: `{"v":1,"event":"ask","ask":ASK}`,
  `{"v":1,"event":"resolved","ask_id","outcome"}`, `{"v":1,"event":"hello","pending":[ASK...]}`
  first. While at least one watcher is attached, asks wait for an answer (up to ask_timeout_s);
  with none, an ask is denied at once (`no approver attached`).
- `reload` → `{"policy_ok", "error"?}`: reload permissions.yaml now (the last good policy stays on
  error).
- `token` → `{"access_token", "expires_at"}` for the next issues; `unavailable` error until the
  credential store exists.
- `add_session_rule` `{rule, action: "allow"|"ask"|"deny", reason?}` → `{"rule_id", "rule",
  "action", "scope": "session"}`: an in-memory rule for this agent's lifetime;
  error `bad_rule` when the rule does not parse, `unavailable` when the gate is not loaded.
- `list_rules` → `{"mode", "policy_ok", "rules": [{"rule_id", "rule", "action", "reason",
  "scope": "global"|"session"}...]}`: the rules the running gate decides with, file rules first.

- `relay_call` `{host, call_id, sealed, deadline_ms?, stream?, credential?}` → a call to
  ANOTHER machine through this agent's open relay link (so the relay knows which machine it
  comes from), sealed end to end by the client: `sealed` is the request it sealed to the
  target's key (base64), bound to `call_id` (32 hex digits); no tool or input travels here,
  and a call in the clear is refused (`bad_request`). Error `no_link` at once when the agent
  has no link up (the CLI then connects directly). Otherwise the connection streams event
  frames `{"v":1,"event":"accepted","machine"}`, `{"v":1,"event":"chunk","fd":1|2,
  "data":BASE64}` (a sealed response frame), and ends the call with
  `{"v":1,"event":"result","sealed":BASE64}` or `{"v":1,"event":"failure","code","message",
  "hint"}`; then the connection takes requests again. The client opens the frames; this agent
  never sees the call's content. The client may send `{"op":"cancel"}` meanwhile; closing the
  connection cancels the call too.
- `relay_host_key` `{host, credential?}` → `{"name", "machine_id", "e2e_key": BASE64, "relay",
  "workspace"}`: the key the relay holds for that host (the client checks it against its own
  pin); errors as a call's failures (`host_unknown`, `host_offline`, ...) or `no_link`.

ASK = `{"ask_id", "tool", "operation", "target", "input_digest", "cwd", "caller": {"kind",
"user", "hostname"}, "rule_id", "reason", "mode", "created_at", "expires_in_s"}`.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, Mapping

VERSION = 1
MAX_FRAME = 4 * 1024 * 1024
FRAME_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 300.0
HEADER = struct.Struct(">I")

OPS = ("ping", "status", "call", "pending", "answer", "watch", "reload", "token",
       "add_session_rule", "list_rules", "relay_call", "relay_host_key")
CALLER_DOWNGRADES = ("remote", "self")


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame; the connection must be dropped."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode(obj: Mapping[str, Any]) -> bytes:
    """One frame holding `obj` as JSON. Raises ProtocolError if it exceeds MAX_FRAME."""
    try:
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:    # a lone surrogate (JSON's "\ud800" decodes to one): escape it
        body = json.dumps(obj, separators=(",", ":")).encode("ascii")
    if len(body) > MAX_FRAME:
        raise ProtocolError("too_large", f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length announced by a 4-byte header; ProtocolError when over MAX_FRAME."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError("too_large", f"frame of {length} bytes exceeds {MAX_FRAME}")
    return int(length)


def _reject_constant(name: str) -> Any:
    """json.loads hook for NaN, Infinity and -Infinity: Python accepts them, JSON does not, and
    an echoed `"id": NaN` would make our own answer invalid JSON."""
    raise ProtocolError("bad_json", f"frame is not JSON: {name} is not a JSON value")


def _finite_float(text: str) -> float:
    """json.loads hook for numbers with a fraction or exponent: `1e999` is valid JSON syntax
    but overflows to inf, which we could only echo back as the non-JSON `Infinity`."""
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError("bad_json", f"frame is not JSON: {text[:40]} is out of range")
    return value


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object in a frame body; ProtocolError("bad_json") for bad UTF-8, bad JSON
    (NaN, Infinity, -Infinity, and numbers like 1e999 that overflow to them), nesting too deep
    for the parser, an integer literal over Python's digit limit, or a non-object. Never raises
    anything else."""
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant,
                         parse_float=_finite_float)
    except RecursionError:   # e.g. 100,000 nested "[": the C parser's depth guard
        raise ProtocolError("bad_json", "frame is not JSON: nested too deeply") from None
    except ValueError as exc:
        # JSONDecodeError, UnicodeDecodeError, and the int-from-string digit limit
        # ("Exceeds the limit (4300 digits)...") are all ValueErrors.
        raise ProtocolError("bad_json", f"frame is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", "frame is not a JSON object")
    return obj


def ok(req_id: Any, result: Any) -> dict[str, Any]:
    """A success response to request `req_id` (`result` is any JSON value; an object for every
    op but `call`, whose list_dir/grep results are lists)."""
    return {"v": VERSION, "id": req_id, "ok": True, "result": result}


def error(req_id: Any, code: str, message: str, hint: str | None = None) -> dict[str, Any]:
    """A failure response to request `req_id`."""
    err: dict[str, Any] = {"code": code, "message": message}
    if hint:
        err["hint"] = hint
    return {"v": VERSION, "id": req_id, "ok": False, "error": err}


def event(name: str, **fields: Any) -> dict[str, Any]:
    """A pushed event on a `watch` stream."""
    return {"v": VERSION, "event": name, **fields}


class FrameBuffer:
    """Incremental decoder for blocking clients: feed bytes, take complete objects."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> dict[str, Any] | None:
        """The next complete object, or None when more bytes are needed."""
        if len(self._buf) < HEADER.size:
            return None
        length = frame_length(bytes(self._buf[: HEADER.size]))
        end = HEADER.size + length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[HEADER.size:end])
        del self._buf[:end]
        return decode(body)
