"""The machine password's pure rules (cmdop.core.password_policy) and its config.yaml keys:
the slow-down schedule after wrong attempts as a function of (failures, now), session expiry,
the stored scrypt parameters a file may ask for, password and duration validation."""

from __future__ import annotations

import pytest

from cmdop.adapters.config_file import AgentConfig, parse_text
from cmdop.core import password_policy as pp
from cmdop.core.errors import ConfigFileError

T0 = 1_800_000_000.0


@pytest.mark.parametrize("failures, delay", [
    (-1, 0), (0, 0), (1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 32), (7, 64), (8, 128),
    (9, 256), (10, 300), (11, 300), (20, 300), (21, 300), (10**9, 300),
])
def test_slowdown_schedule(failures: int, delay: float) -> None:
    assert pp.slowdown_s(failures) == delay


@pytest.mark.parametrize("failures, since_last, wait", [
    (0, 0.0, 0.0),          # no failure: never a wait
    (0, -1000.0, 0.0),
    (1, 0.0, 1.0),          # right after the first wrong attempt: 1 s
    (1, 0.5, 0.5),
    (1, 1.0, 0.0),          # exactly at the end of the window: checked again
    (1, 5.0, 0.0),
    (3, 0.0, 4.0),
    (3, 3.9, 0.1),
    (3, 4.0, 0.0),
    (9, 100.0, 156.0),
    (12, 0.0, 300.0),       # capped
    (12, 299.0, 1.0),
    (12, 301.0, 0.0),
    (3, -3600.0, 4.0),      # the clock went back an hour: never longer than the slow-down
    (12, -10**6, 300.0),
])
def test_wait_after_failures(failures: int, since_last: float, wait: float) -> None:
    state = pp.FailureState(failures, T0)
    assert pp.wait_s(state, T0 + since_last) == pytest.approx(wait)


def test_counter_moves_and_resets() -> None:
    s = pp.FailureState()
    for n in range(1, 12):
        s = pp.after_failure(s, T0 + n)
        assert s == pp.FailureState(n, T0 + n)
        assert pp.wait_s(s, T0 + n) == min(2 ** (n - 1), 300)
    assert pp.after_success() == pp.FailureState(0, 0.0)
    assert pp.wait_s(pp.after_success(), T0) == 0
    assert pp.after_failure(pp.FailureState(-5, 0), T0).failures == 1


@pytest.mark.parametrize("issued, expires, now, valid", [
    (T0, T0 + 900, T0, True),
    (T0, T0 + 900, T0 + 899.9, True),
    (T0, T0 + 900, T0 + 900, False),        # expired at its expiry
    (T0, T0 + 900, T0 + 10**6, False),
    (T0, T0 + 900, T0 - 4, True),           # a little clock skew is fine
    (T0, T0 + 900, T0 - 6, False),          # issued "in the future": not trusted
    (T0, T0 + 2, T0 + 2.5, False),
])
def test_session_validity(issued: float, expires: float, now: float, valid: bool) -> None:
    assert pp.session_valid(issued, expires, now) is valid


def test_session_expiry_is_now_plus_ttl() -> None:
    assert pp.session_expires_at(T0, 900) == T0 + 900
    assert pp.DEFAULT_SESSION_TTL_S == 15 * 60


def test_keep_sessions_drops_expired_malformed_and_excess() -> None:
    rows: list[dict[str, object]] = [
        {"digest": "a", "issued_at": T0, "expires_at": T0 + 10},
        {"digest": "b", "issued_at": T0, "expires_at": T0 - 1},      # expired
        {"digest": "c", "issued_at": "x", "expires_at": T0 + 10},    # malformed
        {"digest": "d", "issued_at": True, "expires_at": T0 + 10},   # a bool is no time
        {"digest": "e"},
    ]
    assert [r["digest"] for r in pp.keep_sessions(rows, T0)] == ["a"]
    many: list[dict[str, object]] = [{"digest": str(i), "issued_at": T0, "expires_at": T0 + 1 + i}
                                     for i in range(pp.MAX_SESSIONS + 10)]
    kept = pp.keep_sessions(many, T0)
    assert len(kept) == pp.MAX_SESSIONS
    assert {r["digest"] for r in kept} == {str(i) for i in range(10, pp.MAX_SESSIONS + 10)}


@pytest.mark.parametrize("n, r, p, length, salt, ok", [
    (2**15, 8, 1, 32, 16, True),            # what `password set` writes
    (2**14, 8, 1, 32, 16, True),
    (2**20, 8, 1, 32, 16, True),            # 1 GiB: the most a file may ask for
    (2**20, 16, 1, 32, 16, False),          # 2 GiB of memory per check
    (2**13, 8, 1, 32, 16, False),           # too weak
    (2**15 + 1, 8, 1, 32, 16, False),       # not a power of two
    (2**15, 0, 1, 32, 16, False),
    (2**15, 8, 17, 32, 16, False),
    (2**15, 8, 1, 8, 16, False),            # key too short
    (2**15, 8, 1, 32, 8, False),            # salt too short
    (True, 8, 1, 32, 16, False),
    ("32768", 8, 1, 32, 16, False),
])
def test_stored_parameters(n: object, r: object, p: object, length: int, salt: int, ok: bool) -> None:
    assert pp.params_ok(pp.ScryptParams(n, r, p, length), salt) is ok  # type: ignore[arg-type]


def test_default_parameters_are_the_documented_ones() -> None:
    assert (pp.SCRYPT_N, pp.SCRYPT_R, pp.SCRYPT_P) == (2**15, 8, 1)
    assert pp.params_ok(pp.DEFAULT_PARAMS, pp.SALT_BYTES)


@pytest.mark.parametrize("password, new, problem", [
    ("", False, "empty"),
    ("x", False, None),
    ("x", True, "at least 8"),
    ("12345678", True, None),
    ("a" * 1024, True, None),
    ("a" * 1025, False, "longer than 1024"),
    ("two\nlines", False, "newline"),
    ("nul\0byte", False, "NUL"),
    ("ünïcødé pässwörd", True, None),
])
def test_password_problems(password: str, new: bool, problem: str | None) -> None:
    got = pp.password_problem(password, new=new)
    assert (got is None) if problem is None else (got is not None and problem in got)


@pytest.mark.parametrize("value, seconds", [
    ("15m", 900), ("2s", 2), ("90s", 90), ("2h", 7200), ("24h", 86400), (900, 900), ("900", 900),
    (" 15m ", 900), (1, 1),
    ("25h", None), (0, None), ("0m", None), (-5, None), ("15 m", None), ("15min", None),
    ("1.5h", None), (True, None), (None, None), ([15], None), ("", None), (86401, None),
])
def test_parse_ttl(value: object, seconds: int | None) -> None:
    assert pp.parse_ttl(value) == seconds


def test_needs_unlock_and_hint() -> None:
    refused = {"error": "permission_denied", "rule_id": "admission:password_required", "reason": "x"}
    assert pp.needs_unlock(refused)
    assert not pp.needs_unlock({**refused, "rule_id": "admission:unknown_tool"})
    assert not pp.needs_unlock({"exit_code": 0})
    assert not pp.needs_unlock(["admission:password_required"])
    assert "cmdop password unlock web01" in pp.unlock_hint("web01")


# -- config.yaml keys ---------------------------------------------------------------------------

def test_config_defaults_and_values() -> None:
    assert AgentConfig().remote_requires_password is False
    assert AgentConfig().password_session_ttl == 900
    cfg = parse_text('remote_requires_password: true\npassword_session_ttl: "2s"\n')
    assert (cfg.remote_requires_password, cfg.password_session_ttl) == (True, 2)
    assert parse_text("password_session_ttl: 600\n").password_session_ttl == 600
    assert parse_text("password_session_ttl: 2h\n").password_session_ttl == 7200


@pytest.mark.parametrize("text, line, words", [
    ('remote_requires_password: "yes"\n', 1, "true or false"),
    ("sandbox_required: true\nremote_requires_password: 1\n", 2, "true or false"),
    ("password_session_ttl: 15 minutes\n", 1, "not a duration"),
    ("password_session_ttl: 0\n", 1, "not a duration"),
    ("password_session_ttl: 48h\n", 1, "1 s to 24 h"),
    ("password_session_ttl: [1]\n", 1, "single value"),
])
def test_config_bad_values_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigFileError) as err:
        parse_text(text)
    assert err.value.line == line and words in err.value.message
