"""The audit record: its shape, the input digest, redaction and the hash chain.

Pure: every function takes facts (and `now` where time matters) and returns values; the writer
(`cmdop.adapters.audit_log`) and the reader (`cmdop.adapters.audit_reader`) do the I/O.

Record shape, one JSON object per line, the 13 fields of the security model's sample, always all
present so a consumer never has to guess: ts, decision, tool, operation, target, mode, source,
rule_id, reason, input_digest, ask_ms, hostname, user; plus `redacted: true` when a secret was
replaced in target or reason. The writer adds `seq` and `prev`.

Hash chain: `seq` counts records from 1 across rotated files; `prev` is `sha256:` + hex of the
previous line's bytes (without its newline), `GENESIS` for the very first record. Editing,
removing or reordering any line breaks the link of the line after it. Writers that keep the chain
head (below) also add `"chain": 2` to every line (CHAIN_MARK); lines without it were written
before chain heads existed.

Chain head (`audit.head`, see HEAD RULE in `check_head`): the chain alone cannot show lines cut
from the end, nor a file rewritten with every `seq` and `prev` recomputed. So after each line the
writer overwrites one fixed-size ASCII record (HEAD_SIZE bytes, written at offset 0):

    cmdop-audit-head 1 seq=<20 digits> gen=<20 digits> base=<20 digits> hash=sha256:<64 hex> mac=<64 hex>\n

- `seq`, `hash`: the `seq` and chain hash (`line_hash`, what the next line's `prev` will be) of
  the last line appended;
- `gen`: the `seq` of the first line of the file that line went into (names the file across
  renames: audit.log becomes audit.log.1 but still starts at the same seq);
- `base`: the chain's last `seq` when this head file was started (0 for a new log; the last seq
  of the older lines when a log written before chain heads gets its first one, or when the head
  file had been deleted);
- `mac`: HMAC-SHA256 of everything before ` mac=` under `head_mac_key(seed)`, the seed being the
  32 bytes of `audit.key`; 64 `-` when the writer could not use the key. A same-uid forger who
  cannot read audit.key can therefore not write a head that matches a rewritten log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from cmdop.core.calls import Caller, CallerKind
from cmdop.core.policy.decision import Decision
from cmdop.core.redact import redact

__all__ = [
    "OUTCOMES", "FIELDS", "GENESIS", "MAX_TARGET_CHARS", "build_record", "input_digest", "redact",
    "format_ts", "parse_ts", "parse_since", "line_hash", "encode_line", "CHAIN_MARK", "Head",
    "HEAD_SIZE", "HeadMac", "head_mac_key", "encode_head", "parse_head", "ChainLine", "HeadVerdict",
    "check_head",
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
    """`sha256:` + hex over the canonical JSON of the full tool input."""
    return "sha256:" + hashlib.sha256(canonical_json(dict(tool_input))).hexdigest()


def format_ts(now: datetime) -> str:
    """`now` as UTC to the second with a Z (`2026-04-27T10:15:30Z`); naive means UTC already."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


RESERVED = frozenset(FIELDS) | {"redacted", "seq", "prev", "chain", "caller"}


def build_record(*, decision: Decision, outcome: str, tool_input: Mapping[str, Any], caller: Caller,
                 ask_ms: int = 0, now: datetime,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The audit record of one call: `decision` as the gate gave it, `outcome` as it ended.

    `outcome` is one of OUTCOMES (for an ask the gate's decision is "ask" and the outcome says how
    it ended). Secrets in target and reason are redacted and `redacted: true` is added when that
    happened. `extra` adds fields after the fixed ones, e.g.
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
    principal = caller.audit_fields()
    if caller.kind is not CallerKind.LOCAL and len(principal) > 1:
        # Who a relay call came from, as the relay verified it (kind, workspace, credential
        # kind, the caller's machine id): a local line needs none of it.
        record["caller"] = principal
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
    text = value.strip()
    if text[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat knows only numeric offsets
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
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


# -- the chain head -----------------------------------------------------------------------------

CHAIN_MARK = 2  # the value of "chain" in every line of a writer that keeps audit.head
_HEAD_MAGIC = b"cmdop-audit-head 1"
_NO_MAC = b"-" * 64
_HEAD_RE = re.compile(rb"cmdop-audit-head 1 seq=(\d{20}) gen=(\d{20}) base=(\d{20}) "
                      rb"hash=(sha256:[0-9a-f]{64}) mac=([0-9a-f]{64}|-{64})\n\Z")


@dataclass(frozen=True)
class Head:
    """One parsed head record (fields as in the module doc); `mac` is "" when there is none."""

    seq: int
    gen: int
    base: int
    hash: str
    mac: str
    body: bytes  # the bytes the mac covers


class HeadMac:
    """HMAC-SHA256 under one key, with the padded key blocks hashed once (≈ 0.5 µs a head
    instead of ≈ 1.5 µs for `hmac.digest`); the result is plain HMAC-SHA256."""

    def __init__(self, key: bytes) -> None:
        block = key.ljust(64, b"\0") if len(key) <= 64 else hashlib.sha256(key).digest().ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def hexdigest(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode("ascii")


def head_mac_key(seed: bytes) -> bytes:
    """The head's HMAC key derived from the 32-byte audit.key seed (kept apart from the Ed25519
    use of the same seed by its own prefix)."""
    return hashlib.sha256(b"cmdop-audit-head-mac-v1\n" + seed).digest()


def encode_head(seq: int, gen: int, base: int, hash_: str, mac: HeadMac | None) -> bytes:
    """The HEAD_SIZE-byte head record; `hash_` is a `line_hash` (or GENESIS). Raises ValueError
    for a hash of another shape, since the record must keep its fixed size."""
    if len(hash_) != 71:
        raise ValueError(f"not a chain hash: {hash_!r}")
    body = b"%s seq=%020d gen=%020d base=%020d hash=%s" % (_HEAD_MAGIC, seq, gen, base, hash_.encode("ascii"))
    return body + b" mac=" + (mac.hexdigest(body) if mac is not None else _NO_MAC) + b"\n"


HEAD_SIZE = len(encode_head(0, 0, 0, GENESIS, None))


def parse_head(raw: bytes) -> Head:
    """The head in `raw` (a whole audit.head). Raises ValueError unless it is exactly one record."""
    m = _HEAD_RE.match(raw)
    if m is None:
        raise ValueError("not a chain head record")
    mac = m.group(5).decode("ascii")
    return Head(seq=int(m.group(1)), gen=int(m.group(2)), base=int(m.group(3)),
                hash=m.group(4).decode("ascii"), mac="" if mac == "-" * 64 else mac,
                body=raw[: raw.rindex(b" mac=")])


@dataclass(frozen=True)
class ChainLine:
    """One line of the chain as the verifier saw it: `where` is `FILE:LINE`, `file` the file's
    name and `file_first` the seq of that file's first line."""

    seq: int
    hash: str
    where: str
    file: str
    file_first: int


@dataclass(frozen=True)
class HeadVerdict:
    """`problem` (a failure, None when the head holds), `summary` (how the head matched, for
    the ok line; "" when there is no head) and `warnings` (to print, not failures)."""

    problem: str | None
    summary: str = ""
    warnings: tuple[str, ...] = ()
    hint: str | None = None


def _lines(n: int) -> str:
    return "1 line is" if n == 1 else f"{n} lines are"


def check_head(head: Head | None, *, mac_key: bytes | None, last: ChainLine | None,
               before_last: ChainLine | None, live: str, first_marked: int | None,
               partial: str | None, key_name: str = "audit.key", head_name: str = "audit.head"
               ) -> HeadVerdict:
    """HEAD RULE: does the end of the chain match the writers' head? Pure; the reader has walked
    every line already (links and seals hold) and passes what it saw:

    `head` (None: no head file, or an empty one), `mac_key` (`head_mac_key` of audit.key's seed,
    None when the key is not there), `last`/`before_last` (the chain's last two lines, None when
    absent), `live` (the live file's name), `first_marked` (lowest seq of a line carrying
    CHAIN_MARK, None when none does), `partial` (`FILE:LINE` of a last line of the live file
    without its newline, None when it ends cleanly).

    1. No head: fine when the log has no lines; a WARNING when no line carries CHAIN_MARK (a log
       written before chain heads: its end cannot be checked) or when only the last line does
       (a writer died after its first line, before its first head write); else a FAILURE (the
       head file was deleted).
    2. The head must carry a MAC, `audit.key` must be there to check it, and it must match:
       otherwise a FAILURE (a head without a valid MAC may have been written by anyone).
    3. A line carrying CHAIN_MARK with a seq below `head.base` is a FAILURE: the head file was
       started again over a log that already had one (it had been deleted).
    4. Where the head points, with L the last line and P the one before it:
       - head.seq > L.seq (or no line at all): FAILURE, lines are missing at the end;
       - head.seq == L.seq: the head must name L (its hash, and gen = the first seq of L's file);
         ok, "at the last line";
       - head.seq == L.seq - 1: the head must name P likewise; ok, "one line behind": the writer
         writes the line, then the head, so a crash between the two leaves exactly this;
       - head.seq < L.seq - 1: FAILURE, lines follow that no writer recorded.
    5. A partial last line (no newline) in the live file is the write a crash cut short only
       when the head is at the last complete line (rule 4, first ok case): a WARNING then (the
       next append removes it); otherwise a FAILURE naming the truncated line.
    """
    where_end = live
    if last is not None:
        where_end = last.file if last.file == live else f"{live} is empty and {last.file}"
    end_seq = last.seq if last is not None else 0
    cut_line = f"{partial}: truncated line (no newline at end)" if partial else None
    warnings: list[str] = []
    if head is None:
        if last is None:  # nothing, or only the first line, cut short before any head write
            return HeadVerdict(None, warnings=(
                (f"{partial}: a partial first line, a write a crash cut short; the next append "
                 "removes it",) if partial else ()))
        if cut_line is not None:
            return HeadVerdict(cut_line)
        if first_marked is None:
            return HeadVerdict(None, warnings=(
                f"no {head_name} and no line carries \"chain\": {CHAIN_MARK}: this log was written "
                "before chain heads, so lines cut from its end cannot be detected (the next "
                "append starts a head)",))
        assert last is not None
        if first_marked == last.seq:
            return HeadVerdict(None, warnings=(
                f"no {head_name}, and only the last line (seq {last.seq}) was written with one: "
                "the writer stopped between that line and its first head write; accepted",))
        return HeadVerdict(
            f"{head_name} is missing but {where_end} holds lines written with a chain head "
            f"(from seq {first_marked}): the head was deleted, so lines cut from the end or a "
            "rewritten log cannot be ruled out",
            hint=f"compare with a copy of the log; the next append starts a new {head_name}, "
                 "and --verify keeps reporting this")
    if not head.mac:
        return HeadVerdict(
            f"{head_name} carries no MAC: the writer could not use {key_name} (see the agent's "
            "log), or the head was rewritten by someone without the key",
            hint=f"make {key_name} usable again (0600, owned by the agent's user); the next "
                 "append writes an authenticated head")
    if mac_key is None:
        return HeadVerdict(
            f"{key_name} is missing, so {head_name} cannot be authenticated (the key was "
            "deleted, or this is a copy of the log without it)",
            hint=f"verify where {key_name} is, or copy it beside the log")
    if not hmac.compare_digest(HeadMac(mac_key).hexdigest(head.body), head.mac.encode("ascii")):
        return HeadVerdict(
            f"{head_name}: its MAC does not match {key_name}: the head was rewritten, or comes "
            "from another log", hint="the end of the log cannot be trusted; compare with a copy")
    if first_marked is not None and first_marked < head.base:
        return HeadVerdict(
            f"{head_name} was started again at seq {head.base} although lines from seq "
            f"{first_marked} were written with a chain head: the earlier head was deleted, so "
            f"lines cut from the end before seq {head.base} cannot be ruled out",
            hint="compare with a copy of the log")
    if head.seq > end_seq:
        missing = head.seq - end_seq
        if last is None:
            what = f"{live} has no lines but the chain head says seq {head.seq}"
        else:
            what = f"{where_end} ends at seq {end_seq} but the chain head says {head.seq}"
        msg = (f"{what}: {_lines(missing)} missing at the end (cut off, or the file was "
               "rewritten without them)")
        return HeadVerdict(f"{cut_line}; {msg}" if cut_line else msg,
                           hint="restore the missing lines from a copy, if any (a power cut "
                                "can also lose up to the last second of lines)")
    if last is None:  # a head at seq 0 over an empty log: nothing to compare
        return HeadVerdict(cut_line)
    if head.seq == last.seq:
        target, summary = last, f"chain head at the last line (seq {last.seq}, {last.file})"
    elif head.seq == last.seq - 1 and before_last is not None:
        target, summary = before_last, (
            f"chain head one line behind (seq {head.seq}; seq {last.seq} was written but the "
            "head not yet updated, as a crash between the two writes leaves it)")
    elif head.seq == last.seq - 1:  # head.seq 0: no line before the last one
        target, summary = None, (
            f"chain head one line behind (none yet; seq {last.seq} was written but the head "
            "not yet updated, as a crash between the two writes leaves it)")
    else:
        extra = last.seq - head.seq
        return HeadVerdict(
            f"{where_end} goes on to seq {last.seq} but the chain head says {head.seq}: "
            f"{extra} line{'s' if extra != 1 else ''} after seq {head.seq} "
            f"{'were' if extra != 1 else 'was'} not recorded by the writer (added afterwards, or "
            "the file was replaced)",
            hint="lines after the head cannot be trusted; a power cut can also leave the head "
                 "up to a second behind")
    if target is not None:
        if target.hash != head.hash:
            which = "the last line" if target is last else "the line before last"
            return HeadVerdict(
                f"{target.where}: {which} (seq {target.seq}) differs from the one the chain head "
                "recorded (edited, or the file was replaced with a recomputed chain)",
                hint="the log was changed; compare with a copy")
        if target.file_first != head.gen:
            return HeadVerdict(
                f"{target.where}: seq {target.seq} is in a file starting at seq "
                f"{target.file_first}, but the chain head put it in the file starting at seq "
                f"{head.gen} (files were cut or joined)", hint="compare with a copy of the log")
    if cut_line is not None:
        if target is not last:
            return HeadVerdict(cut_line)
        warnings.append(f"{partial}: a partial last line, the write a crash cut short after "
                        f"seq {last.seq}; the next append removes it")
    return HeadVerdict(None, summary=summary, warnings=tuple(warnings))
