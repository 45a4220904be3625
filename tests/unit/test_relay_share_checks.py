"""Guest shares, the pure parts: the expiry parser, the tool subset, the check every guest call
meets at the relay (cmdop.relay.shares), the guest's pasted command, and share tokens in the
audit log's redaction."""

from __future__ import annotations

import shlex
from dataclasses import replace

import pytest
from hypothesis import given, strategies as st

from cmdop.core.redact import redact
from cmdop.relay import shares
from cmdop.relay.shares import Share, ShareInputError, check_call, parse_ttl, state

NOW = 1_800_000_000.0
SHARE = Share(id="sh_0123456789ab", workspace="demo", machine="row-a", host="web01", note="bob",
              created_by="k1", created_at=NOW - 60, expires_at=NOW + 3600, max_uses=3, uses=0,
              tools=("read_file",))


@pytest.mark.parametrize("text, seconds", [
    ("90m", 5400), ("24h", 86400), ("7d", 604800), ("30s", 30), ("1s", 1), (" 2H ", 7200),
    ("365d", 365 * 86400),
])
def test_ttl_parses_whole_numbers_with_a_unit(text, seconds):
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", [
    "", "0h", "0", "24", "-1h", "1.5h", "h", "24 h", "1w", "366d", "9999999999d", "1e3s", "24hh",
    "²h", "٣h",
])
def test_ttl_refuses_zero_negative_garbage_and_more_than_a_year(text):
    with pytest.raises(ShareInputError) as exc:
        parse_ttl(text)
    assert exc.value.hint


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from("smhd"))
def test_ttl_is_the_number_times_its_unit_or_refused(n, unit):
    seconds = n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if seconds <= shares.MAX_TTL_S:
        assert parse_ttl(f"{n}{unit}") == seconds
    else:
        with pytest.raises(ShareInputError):
            parse_ttl(f"{n}{unit}")


@given(st.text(max_size=12))
def test_ttl_never_returns_a_bad_duration(text):
    try:
        seconds = parse_ttl(text)
    except ShareInputError:
        return
    assert 0 < seconds <= shares.MAX_TTL_S


@pytest.mark.parametrize("ttl, no_expiry, expected", [
    (3600, False, 3600), (0, True, None), (0, False, ShareInputError), (60, True, ShareInputError),
    (shares.MAX_TTL_S + 1, False, ShareInputError),
])
def test_an_expiry_is_required_unless_no_expiry_is_explicit(ttl, no_expiry, expected):
    if expected is ShareInputError:
        with pytest.raises(ShareInputError):
            shares.check_ttl(ttl, no_expiry)
    else:
        assert shares.check_ttl(ttl, no_expiry) == expected


@pytest.mark.parametrize("given_, tools", [
    ([], shares.SHAREABLE_TOOLS),
    (["read_file,list_dir"], ("read_file", "list_dir")),
    (["list_dir", "READ_FILE", "list_dir"], ("read_file", "list_dir")),
    ([" grep , glob "], ("grep", "glob")),
])
def test_tools_are_a_known_subset_all_when_none_given(given_, tools):
    assert shares.parse_tools(given_) == tools


@pytest.mark.parametrize("given_", [["rm_rf"], ["read_file,ssh_session"], ["connect"]])
def test_unknown_tools_are_refused(given_):
    with pytest.raises(ShareInputError):
        shares.parse_tools(given_)


def test_shareable_tools_are_the_agents_tools():
    from cmdop.tools.registry import TOOLS

    assert set(shares.SHAREABLE_TOOLS) == set(TOOLS)


@pytest.mark.parametrize("note, ok", [("for bob, ticket 42", True), ("x" * 200, True),
                                      ("x" * 201, False), ("a\nb", False), ("\x1b[31m", False)])
def test_notes_are_short_plain_text(note, ok):
    if ok:
        assert shares.check_note(note) == note
    else:
        with pytest.raises(ShareInputError):
            shares.check_note(note)


@pytest.mark.parametrize("changes, target, code", [
    ({}, "row-a", None),
    ({"revoked_at": NOW - 1}, "row-a", shares.REVOKED),
    ({"expires_at": NOW}, "row-a", shares.EXPIRED),
    ({"expires_at": NOW - 1}, "row-a", shares.EXPIRED),
    ({"expires_at": None}, "row-a", None),                         # --no-expiry
    ({}, "row-b", shares.WRONG_HOST),
    ({}, None, shares.WRONG_HOST),                                 # the host resolved to nothing
    ({"uses": 3}, "row-a", shares.USED_UP),
    ({"uses": 2}, "row-a", None),
    ({"max_uses": 0, "uses": 10**6}, "row-a", None),               # no limit
    # the order of blame: revoked before expired before the host before the uses
    ({"revoked_at": NOW - 1, "expires_at": NOW - 1}, "row-b", shares.REVOKED),
    ({"expires_at": NOW - 1, "uses": 3}, "row-b", shares.EXPIRED),
    ({"uses": 3}, "row-b", shares.WRONG_HOST),
])
def test_a_guest_call_is_checked_for_revocation_expiry_machine_and_uses(changes, target, code):
    refusal = check_call(replace(SHARE, **changes), NOW, target)
    assert (refusal.code if refusal else None) == code
    if refusal is not None:
        assert SHARE.id in refusal.message and refusal.hint
    if code == shares.WRONG_HOST:
        assert "web01" in refusal.message                          # "share … is for web01"


@pytest.mark.parametrize("changes, expected", [
    ({"creator_revoked": True}, "revoked"),
    ({"creator_revoked": True, "expires_at": NOW - 1}, "expired"),       # it had run out: says so
    ({"creator_revoked": True, "max_uses": 2, "uses": 2}, "used_up"),
    ({"creator_revoked": True, "revoked_at": NOW - 5, "expires_at": NOW - 1}, "revoked"),
    ({"revoked_at": NOW - 5, "expires_at": NOW - 1}, "revoked"),
])
def test_a_share_that_ran_out_keeps_saying_so_after_its_creators_key_is_revoked(changes, expected):
    """Found by a black-box pass: `connect share list` called every share of a revoked key
    `revoked`, the expired and used-up ones too."""
    assert state(replace(SHARE, **changes), NOW) == expected


@given(revoked=st.booleans(), creator_revoked=st.booleans(),
       expires=st.one_of(st.none(), st.floats(-1e6, 1e6)),
       max_uses=st.integers(0, 5), uses=st.integers(0, 6), same_machine=st.booleans())
def test_a_call_is_allowed_exactly_when_the_share_is_active_and_for_this_machine(
        revoked, creator_revoked, expires, max_uses, uses, same_machine):
    s = replace(SHARE, revoked_at=NOW if revoked else None, creator_revoked=creator_revoked,
                expires_at=None if expires is None else NOW + expires, max_uses=max_uses,
                uses=uses)
    allowed = check_call(s, NOW, "row-a" if same_machine else "row-x") is None
    assert allowed == (state(s, NOW) == "active" and same_machine)


def test_token_and_id_shapes():
    token = shares.TOKEN_PREFIX + "A" * 43
    assert shares.looks_like_token(token)
    assert not shares.looks_like_token(token + "A") and not shares.looks_like_token("cmdop_x")
    assert shares.valid_id("sh_0123456789ab") and not shares.valid_id("sh_XYZ")


def test_share_tokens_are_redacted_wherever_they_appear():
    token = "cmdop_share_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5hJ7kL9m"
    for text in (f"CMDOP_SHARE_TOKEN={token} cmdop exec h -- ls", f"cmdop exec --share {token} h",
                 f"echo {token}", f'{{"t": "{token}"}}'):
        out, changed = redact(text)
        assert changed and token not in out and token[12:] not in out, out
        assert redact(out) == (out, False)                          # idempotent


def test_the_guests_command_carries_the_relay_and_pin_and_keeps_the_token_off_argv():
    from cmdop.cli.share_cmd import guest_command

    token = "cmdop_share_" + "x" * 43
    cmd = guest_command(token, "relay.example:7443", "ab" * 32, "web01")
    words = shlex.split(cmd.replace(" -- COMMAND ARGS…", ""))
    assert words[0] == f"CMDOP_SHARE_TOKEN={token}"                 # environment, not argv
    assert words[1:] == ["cmdop", "exec", "--relay", "relay.example:7443",
                         "--relay-fingerprint", "ab" * 32, "web01"]
    assert "--share" not in cmd


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """`cmdop ARGS` in-process in an empty home; (exit status, stderr)."""
    from cmdop.cli.main import main

    for name in [n for n in __import__("os").environ if n.startswith(("CMDOP_", "XDG_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CMDOP_SOCKET_PATH", str(tmp_path / "none.sock"))

    def run(*argv: str) -> tuple[int, str]:
        code = main(list(argv))
        return code, capsys.readouterr().err
    return run


@pytest.mark.parametrize("argv, needle", [
    (["connect", "share", "web01"], "--no-expiry"),
    (["connect", "share", "web01", "--ttl", "1h", "--no-expiry"], "not both"),
    (["connect", "share", "web01", "--ttl", "0m"], "zero"),
    (["connect", "share", "web01", "--ttl", "tomorrow"], "invalid duration"),
    (["connect", "share", "web01", "--ttl", "1h", "--tools", "rm"], "unknown tool"),
    (["connect", "share", "web01", "--ttl", "1h", "--max-uses", "-1"], "out of range"),
    # 0 is the proto's "no limit": an explicit 0 must not create an unlimited share
    (["connect", "share", "web01", "--ttl", "1h", "--max-uses", "0"], "give 1 to 1000000"),
    (["connect", "share", "list", "--max-uses", "0"], "--max-uses is for creating"),
    (["connect", "share", "", "--ttl", "1h"], "HOST is empty"),
    (["connect", "share", " ", "--ttl", "1h"], "HOST is empty"),
    (["exec", "", "--", "echo", "x"], "HOST is empty"),
    (["exec", " \t", "--", "echo", "x"], "HOST is empty"),
    (["exec", "web01", "--", ""], "the command is empty"),
    (["exec", "web01", "--", "  "], "the command is empty"),
    (["exec", "web01", ""], "the command is empty"),
    (["connect", "share", "list", "--ttl", "1h"], "--ttl is for creating"),
    (["connect", "share", "revoke"], "which share"),
    (["exec", "--share", "cmdop_share_short", "web01", "--", "true"], "not a cmdop share token"),
    (["exec", "--share", "cmdop_share_" + "a" * 43, "web01", "--", "true"], "no relay address"),
    (["exec", "--share", "cmdop_share_" + "a" * 43, "--api-key", "k", "web01", "--", "true"],
     "credential of its own"),
])
def test_share_usage_errors_are_one_line_with_a_hint_exit_2(cli, argv, needle):
    code, err = cli(*argv)
    assert code == 2, err
    assert needle in err and "hint:" in err and "Traceback" not in err
    assert "cmdop_share_aaaa" not in err                          # never echoes a token


def test_a_guest_token_in_the_environment_never_goes_through_the_local_agent(monkeypatch):
    from cmdop.cli import fast_exec

    monkeypatch.setenv("CMDOP_SHARE_TOKEN", "cmdop_share_" + "a" * 43)
    assert fast_exec.parse(["web01", "--", "true"]) is not None  # a shape it would serve...
    assert fast_exec.run(["web01", "--", "true"]) is None         # ...but not for a guest
