"""The audit record: its shape, the input digest, redaction and the hash chain (CONTRACT §5).

Pure: every function takes facts (and `now` where time matters) and returns values; the writer
(`cmdop.adapters.audit_log`) and the reader (`cmdop.adapters.audit_reader`) do the I/O.

Record shape, one JSON object per line, the 13 fields of the security model's sample, always all
present so a consumer never has to guess: ts, decision, tool, operation, target, mode, source,
rule_id, reason, input_digest, ask_ms, hostname, user; plus `redacted: true` when a secret was
replaced in target or reason. The writer adds `seq` and `prev`.

Hash chain: `seq` counts records from 1 across rotated files; `prev` is `sha256:` + hex of the
previous line's bytes (without its newline), `GENESIS` for the very first record. Editing,
removing or reordering any line breaks the link of the line after it.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from cmdop.core.calls import Caller
from cmdop.core.policy.decision import Decision
from cmdop.core.redact import redact

__all__ = [
    "OUTCOMES", "FIELDS", "GENESIS", "MAX_TARGET_CHARS", "build_record", "input_digest", "redact",
    "format_ts", "parse_ts", "parse_since", "line_hash", "encode_line",
]

OUTCOMES = ("allow", "deny", "ask_allowed", "ask_denied", "ask_timeout")
FIELDS = ("ts", "decision", "tool", "operation", "target", "mode", "source", "rule_id", "reason",
          "input_digest", "ask_ms", "hostname", "user")
GENESIS = "sha256:" + "0" * 64
# A target longer than this is cut (after redaction, so no secret is cut in half and kept);
# the input_digest still covers the full input.
MAX_TARGET_CHARS = 4096
# Built once: json.dumps with options builds a new encoder per call, which costs ~2 µs a line.
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
_ASCII_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of `value`: sorted keys, no spaces, UTF-8, non-ASCII kept.
    A lone surrogate (JSON input may carry "\\ud800") is kept as its 3 bytes, so every input has
    a digest and two different inputs never share one."""
    return _CANONICAL.encode(value).encode("utf-8", "surrogatepass")


def input_digest(tool_input: Mapping[str, Any]) -> str:
    """`sha256:` + hex over the canonical JSON of the full tool input (CONTRACT §5)."""
    return "sha256:" + hashlib.sha256(canonical_json(dict(tool_input))).hexdigest()


def format_ts(now: datetime) -> str:
    """`now` as UTC to the second with a Z (`2026-04-27T10:15:30Z`); naive means UTC already."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


RESERVED = frozenset(FIELDS) | {"redacted", "seq", "prev"}


def build_record(*, decision: Decision, outcome: str, tool_input: Mapping[str, Any], caller: Caller,
                 ask_ms: int = 0, now: datetime,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The audit record of one call: `decision` as the gate gave it, `outcome` as it ended.

    `outcome` is one of OUTCOMES (for an ask the gate's decision is "ask" and the outcome says how
    it ended). Secrets in target and reason are redacted and `redacted: true` is added when that
    happened. `extra` adds fields after the fixed ones (CONTRACT §5 allows extra fields), e.g.
    `as_caller` for a local client gated as a remote one; it can never replace a fixed field.
    Raises ValueError for an unknown outcome or an extra key that is a fixed field: both are bugs
    of the caller.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome must be one of {OUTCOMES}, not {outcome!r}")
    clash = RESERVED.intersection(extra or {})
    if clash:
        raise ValueError(f"extra audit fields may not replace {sorted(clash)}")
    # Cut very long text before redacting too, so redaction time stays bounded; the margin keeps
    # a secret that crosses MAX_TARGET_CHARS recognisable (PEM blocks redact to the end anyway).
    target, t_red = redact(decision.target[: MAX_TARGET_CHARS + 1024])
    reason, r_red = redact(decision.reason[: MAX_TARGET_CHARS + 1024])
    if len(target) > MAX_TARGET_CHARS:
        target = target[:MAX_TARGET_CHARS] + "…"
    if len(reason) > MAX_TARGET_CHARS:
        reason = reason[:MAX_TARGET_CHARS] + "…"
    record: dict[str, Any] = {
        "ts": format_ts(now),
        "decision": outcome,
        "tool": decision.tool,
        "operation": decision.operation,
        "target": target,
        "mode": decision.mode,
        "source": decision.source,
        "rule_id": decision.rule_id,
        "reason": reason,
        "input_digest": input_digest(tool_input),
        "ask_ms": max(0, int(ask_ms)),
        "hostname": caller.hostname,
        "user": caller.user,
    }
    if t_red or r_red:
        record["redacted"] = True
    if extra:
        record.update(extra)
    return record


def encode_line(record: Mapping[str, Any]) -> bytes:
    """One audit line: compact JSON, UTF-8, terminated by a newline. JSON escapes every control
    character, so the only newline is the terminator. A record holding a lone surrogate is
    written with every non-ASCII character escaped (`\\ud800`): still one valid JSON line."""
    try:
        return _LINE_ENCODER.encode(record).encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return _ASCII_LINE_ENCODER.encode(record).encode("ascii") + b"\n"


def line_hash(line: bytes) -> str:
    """The chain hash of one line's bytes; a trailing newline is not part of it."""
    end = len(line) - 1 if line.endswith(b"\n") else len(line)
    return "sha256:" + hashlib.sha256(memoryview(line)[:end]).hexdigest()


def parse_ts(value: str) -> datetime:
    """Parse an ISO 8601 time (`Z` or an offset; naive means UTC) into an aware UTC datetime.

    Raises ValueError when `value` is not such a time.
    """
    dt = datetime.fromisoformat(value.strip().replace("z", "Z"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: datetime) -> datetime:
    """`--since`: a relative age (`30s`, `15m`, `1h`, `2d`, `1w`) before `now`, or an absolute ISO
    time (`2026-04-27T10:00Z`, with seconds, with an offset). Raises ValueError otherwise."""
    m = _RELATIVE.match(value)
    if m:
        if now.tzinfo is None:
            now = now.replace(tzinfo=timezone.utc)
        return now.astimezone(timezone.utc) - timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    try:
        return parse_ts(value)
    except ValueError:
        raise ValueError(
            f"bad --since value {value!r}: use an age like 30s, 15m, 1h, 2d or a time like "
            "2026-04-27T10:00Z") from None
