"""The audit record's shape (CONTRACT §5, the security model's sample line), digest, time parsing."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmdop.core import audit
from cmdop.core.calls import Caller, CallerKind
from cmdop.core.policy.decision import Decision

# Verbatim from spec/security-model.txt ("Auditing").
SAMPLE = ('{ "ts": "2026-04-27T10:15:30Z", "decision": "allow", "tool": "execute_command", "operation": "run", '
          '"target": "uptime", "mode": "default", "source": "rule", "rule_id": "r-7", "reason": "matched allow rule", '
          '"input_digest": "sha256:...", "ask_ms": 0, "hostname": "vps-audi", "user": "ubuntu" }')

NOW = datetime(2026, 4, 27, 10, 15, 30, 123456, tzinfo=timezone.utc)
CALLER = Caller(CallerKind.REMOTE, user="ubuntu", hostname="vps-audi")


def _decision(**kw: object) -> Decision:
    base: dict[str, object] = dict(decision="allow", source="rule", reason="matched allow rule", mode="default",
                                   tool="execute_command", operation="run", target="uptime", rule_id="r-7")
    base.update(kw)
    return Decision(**base)  # type: ignore[arg-type]


def test_record_matches_the_seed_sample_exactly():
    sample = json.loads(SAMPLE)
    rec = audit.build_record(decision=_decision(), outcome="allow", tool_input={"command": "uptime"},
                             caller=CALLER, now=NOW)
    assert list(rec) == list(sample) == list(audit.FIELDS)
    digest = rec.pop("input_digest")
    sample.pop("input_digest")
    assert rec == sample
    assert digest == "sha256:" + hashlib.sha256(b'{"command":"uptime"}').hexdigest()


def test_types_and_ts_format():
    rec = audit.build_record(decision=_decision(decision="ask"), outcome="ask_allowed",
                             tool_input={}, caller=CALLER, ask_ms=1234,
                             now=datetime(2026, 4, 27, 12, 15, 30, tzinfo=timezone(timedelta(hours=2))))
    assert rec["ts"] == "2026-04-27T10:15:30Z"
    assert rec["decision"] == "ask_allowed" and rec["ask_ms"] == 1234
    assert all(isinstance(rec[k], str) for k in audit.FIELDS if k != "ask_ms")
    assert "redacted" not in rec
    naive = audit.build_record(decision=_decision(), outcome="deny", tool_input={}, caller=CALLER,
                               now=datetime(2026, 1, 2, 3, 4, 5))
    assert naive["ts"] == "2026-01-02T03:04:05Z"


@pytest.mark.parametrize("outcome", audit.OUTCOMES)
def test_every_outcome_is_accepted(outcome):
    rec = audit.build_record(decision=_decision(), outcome=outcome, tool_input={}, caller=CALLER, now=NOW)
    assert rec["decision"] == outcome


@pytest.mark.parametrize("outcome", ["ask", "allowed", "", "ALLOW"])
def test_unknown_outcome_is_a_bug(outcome):
    with pytest.raises(ValueError):
        audit.build_record(decision=_decision(), outcome=outcome, tool_input={}, caller=CALLER, now=NOW)


def test_secret_in_target_is_redacted_and_flagged():
    rec = audit.build_record(decision=_decision(target="mysql -uroot -pHunter22 prod"), outcome="deny",
                             tool_input={"command": "mysql -uroot -pHunter22 prod"}, caller=CALLER, now=NOW)
    assert rec["target"] == "mysql -uroot -p[REDACTED] prod"
    assert rec["redacted"] is True
    assert "Hunter22" not in json.dumps(rec)
    assert rec["tool"] == "execute_command" and rec["decision"] == "deny"


def test_long_target_is_capped_after_redaction():
    rec = audit.build_record(decision=_decision(target="echo " + "a " * 5000), outcome="allow",
                             tool_input={}, caller=CALLER, now=NOW)
    assert len(rec["target"]) == audit.MAX_TARGET_CHARS + 1 and rec["target"].endswith("…")


def test_input_digest_is_canonical():
    a = audit.input_digest({"b": 1, "a": "é ü", "c": [1, {"y": 2, "x": 1}]})
    b = audit.input_digest({"c": [1, {"x": 1, "y": 2}], "a": "é ü", "b": 1})
    expected = hashlib.sha256('{"a":"é ü","b":1,"c":[1,{"x":1,"y":2}]}'.encode()).hexdigest()
    assert a == b == "sha256:" + expected


@given(st.dictionaries(st.text(), st.one_of(st.text(), st.integers(), st.booleans(), st.none())))
def test_digest_ignores_key_order(d):
    assert audit.input_digest(d) == audit.input_digest(dict(reversed(list(d.items()))))


@given(st.dictionaries(st.text(), st.text()))
def test_encoded_line_is_one_line_of_json(d):
    line = audit.encode_line(d)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == d


def test_line_hash_ignores_newline():
    assert audit.line_hash(b"abc\n") == audit.line_hash(b"abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("value, expected", [
    ("30s", NOW - timedelta(seconds=30)),
    ("15m", NOW - timedelta(minutes=15)),
    ("1h", NOW - timedelta(hours=1)),
    ("2d", NOW - timedelta(days=2)),
    ("1w", NOW - timedelta(days=7)),
    ("2026-04-27T10:00Z", datetime(2026, 4, 27, 10, 0, tzinfo=timezone.utc)),
    ("2026-04-27T10:00:05Z", datetime(2026, 4, 27, 10, 0, 5, tzinfo=timezone.utc)),
    ("2026-04-27T12:00:00+02:00", datetime(2026, 4, 27, 10, 0, tzinfo=timezone.utc)),
    ("2026-04-27T10:00", datetime(2026, 4, 27, 10, 0, tzinfo=timezone.utc)),
    ("2026-04-27", datetime(2026, 4, 27, tzinfo=timezone.utc)),
])
def test_parse_since(value, expected):
    assert audit.parse_since(value, NOW) == expected


@pytest.mark.parametrize("value", ["", "1", "h", "1y", "-1h", "yesterday", "2026-13-01", "10:00Z junk"])
def test_parse_since_rejects(value):
    with pytest.raises(ValueError, match="--since"):
        audit.parse_since(value, NOW)


def test_extra_fields_follow_the_fixed_ones_and_cannot_replace_them():
    rec = audit.build_record(decision=_decision(), outcome="deny", tool_input={}, caller=CALLER,
                             now=NOW, extra={"as_caller": "remote"})
    assert list(rec) == [*audit.FIELDS, "as_caller"] and rec["as_caller"] == "remote"
    plain = audit.build_record(decision=_decision(), outcome="deny", tool_input={}, caller=CALLER,
                               now=NOW)
    assert {k: v for k, v in rec.items() if k != "as_caller"} == plain
    for key in ("reason", "user", "seq", "prev", "redacted"):
        with pytest.raises(ValueError, match="may not replace"):
            audit.build_record(decision=_decision(), outcome="deny", tool_input={}, caller=CALLER,
                               now=NOW, extra={key: "x"})
