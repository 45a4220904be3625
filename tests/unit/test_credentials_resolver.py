"""The credential resolver (cmdop.core.credentials, CONTRACT §3): every source, every precedence
pair, the relay address and pins, masking and the key/address formats."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cmdop.core.credentials import (OAuthToken, WorkspaceEntry, WorkspacesData, check_api_key, masked,
                                    parse_api_key, resolve_credential, split_host_port, valid_name)
from cmdop.core.errors import AuthError, UsageError

NOW = 1_800_000_000.0
K_FLAG, K_ENV, K_NAMED, K_ENVWS, K_ACTIVE, TOKEN = "k-flag", "k-env", "k-named", "k-envws", "k-active", "tok"

STORE = WorkspacesData(active="act", workspaces=(
    WorkspaceEntry("named", K_NAMED, "named.relay:1", relay_fingerprint="11" * 32),
    WorkspaceEntry("envws", K_ENVWS, "envws.relay:1", relay_ca="/ca/envws.pem"),
    WorkspaceEntry("act", K_ACTIVE, "act.relay:1", relay_fingerprint="22" * 32),
))
OAUTH = OAuthToken(access_token=TOKEN, expires_at=NOW + 3600, refresh_token="r", workspace="oa",
                   relay="oauth.relay:1")

# Each source, as the inputs that make it available (sources are listed in precedence order).
SOURCES: dict[str, dict[str, Any]] = {
    "flag": {"flag_key": K_FLAG},
    "env": {"env_key": K_ENV},
    "workspace(flag)": {"flag_workspace": "named"},
    "workspace(env)": {"env_workspace": "envws"},
    "active": {"workspaces": STORE},
    "oauth": {"oauth": OAUTH},
}
SECRET = {"flag": K_FLAG, "env": K_ENV, "workspace(flag)": K_NAMED, "workspace(env)": K_ENVWS,
          "active": K_ACTIVE, "oauth": TOKEN}


def resolve(**kw: Any) -> Any:
    args: dict[str, Any] = dict(flag_key=None, env_key=None, flag_workspace=None, env_workspace=None,
                                env_relay=None, flag_relay=None,
                                workspaces=WorkspacesData(active=None, workspaces=STORE.workspaces),
                                oauth=None, now=NOW)
    args.update(kw)
    return resolve_credential(**args)


def inputs(*names: str) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for n in names:
        kw.update(SOURCES[n])
    return kw


@pytest.mark.parametrize("name", list(SOURCES))
def test_each_source_alone(name: str) -> None:
    cred = resolve(**inputs(name))
    assert cred.source == name.split("(")[0]
    assert cred.secret == SECRET[name]


@pytest.mark.parametrize("higher,lower", list(itertools.combinations(SOURCES, 2)))
def test_every_precedence_pair(higher: str, lower: str) -> None:
    cred = resolve(**inputs(higher, lower))
    assert (cred.source, cred.secret) == (higher.split("(")[0], SECRET[higher])


def test_all_sources_at_once_flag_wins() -> None:
    assert resolve(**inputs(*SOURCES)).source == "flag"


def test_none() -> None:
    cred = resolve()
    assert (cred.source, cred.secret, cred.workspace, cred.relay) == ("none", "", "", "")
    assert resolve(workspaces=WorkspacesData()).source == "none"


RELAY_TABLE = [
    # inputs, expected (workspace, relay, fingerprint, ca)
    (inputs("active"), ("act", "act.relay:1", "22" * 32, "")),
    (dict(inputs("active"), env_relay="env.relay:2"), ("act", "env.relay:2", "", "")),
    (dict(inputs("active"), env_relay="env.relay:2", flag_relay="flag.relay:3"), ("act", "flag.relay:3", "", "")),
    (dict(inputs("active"), flag_relay="act.relay:1"), ("act", "act.relay:1", "22" * 32, "")),
    (inputs("workspace(flag)"), ("named", "named.relay:1", "11" * 32, "")),
    (inputs("workspace(env)"), ("envws", "envws.relay:1", "", "/ca/envws.pem")),
    (inputs("workspace(flag)", "workspace(env)"), ("named", "named.relay:1", "11" * 32, "")),
    # a key from a flag or env uses the named, else the active, workspace's relay and pin
    (inputs("env", "active"), ("act", "act.relay:1", "22" * 32, "")),
    (inputs("flag", "workspace(env)", "active"), ("envws", "envws.relay:1", "", "/ca/envws.pem")),
    (inputs("flag"), ("", "", "", "")),
    (dict(inputs("env"), env_relay="e:1"), ("", "e:1", "", "")),
    (dict(inputs("env"), config_relay="cfg:1"), ("", "cfg:1", "", "")),
    (dict(inputs("active"), config_relay="cfg:1"), ("act", "act.relay:1", "22" * 32, "")),
    (inputs("oauth"), ("oa", "oauth.relay:1", "", "")),
    (dict(inputs("oauth"), env_relay="e:1"), ("oa", "e:1", "", "")),
    (dict(inputs("oauth"), oauth=OAuthToken("tok", NOW + 60), config_relay="cfg:1"), ("", "cfg:1", "", "")),
]


@pytest.mark.parametrize("kw,expected", RELAY_TABLE)
def test_relay_and_pins(kw: dict[str, Any], expected: tuple[str, str, str, str]) -> None:
    cred = resolve(**kw)
    assert (cred.workspace, cred.relay, cred.relay_fingerprint, cred.relay_ca) == expected


def test_named_workspace_missing_is_an_auth_error() -> None:
    for kw in ({"flag_workspace": "ghost"}, {"env_workspace": "ghost"}, {"flag_workspace": "ghost", **inputs("active")}):
        with pytest.raises(AuthError) as err:
            resolve(**kw)
        assert "ghost" in err.value.message and err.value.exit_code == 4
        assert "connect key set --workspace ghost" in (err.value.hint or "")
    # a key from the flag or environment still wins
    assert resolve(flag_workspace="ghost", env_key=K_ENV).source == "env"


def test_named_workspace_without_a_key_uses_the_login_for_it() -> None:
    """--workspace W / CMDOP_WORKSPACE=W with no stored key for W: the OAuth login when it is
    for W (with its relay and pin), before the active workspace's key; still an AuthError when
    the login is for another workspace, or cannot be used."""
    login = OAuthToken(access_token=TOKEN, expires_at=NOW + 3600, refresh_token="r", workspace="ghost",
                       relay="oauth.relay:1", relay_fingerprint="33" * 32)
    for kw in ({"flag_workspace": "ghost"}, {"env_workspace": "ghost"},
               {"flag_workspace": "ghost", **inputs("active")}, {"env_workspace": "ghost", **inputs("active")}):
        cred = resolve(oauth=login, **kw)
        assert (cred.source, cred.secret, cred.workspace) == ("oauth", TOKEN, "ghost"), kw
        assert (cred.relay, cred.relay_fingerprint) == ("oauth.relay:1", "33" * 32)
    # the flag wins over the environment's workspace: the login is for the environment's
    with pytest.raises(AuthError):
        resolve(oauth=login, flag_workspace="other", env_workspace="ghost")
    # a relay named by hand gets no pin from the login
    assert resolve(oauth=login, flag_workspace="ghost", flag_relay="x:1").relay_fingerprint == ""
    # a stored key for the named workspace still wins over the login
    assert resolve(oauth=OAuthToken(TOKEN, NOW + 3600, workspace="named"),
                   flag_workspace="named").source == "workspace"
    # a key from the flag or the environment still wins over both
    assert resolve(oauth=login, flag_workspace="ghost", env_key=K_ENV).source == "env"
    # a login for another workspace, or one that cannot be used: the named workspace is refused
    for oauth in (OAuthToken(TOKEN, NOW + 3600, workspace="other"), OAuthToken(TOKEN, NOW + 3600),
                  OAuthToken(TOKEN, NOW - 1, workspace="ghost"), OAuthToken("", NOW + 3600, workspace="ghost")):
        for kw in ({"flag_workspace": "ghost"}, {"env_workspace": "ghost", **inputs("active")}):
            with pytest.raises(AuthError) as err:
                resolve(oauth=oauth, **kw)
            assert "ghost" in err.value.message and err.value.exit_code == 4
    # an expired login that can be refreshed is used (the caller refreshes it first)
    assert resolve(oauth=OAuthToken(TOKEN, NOW - 1, refresh_token="r", workspace="ghost"),
                   flag_workspace="ghost").source == "oauth"


def test_dangling_active_falls_through() -> None:
    data = WorkspacesData(active="gone", workspaces=STORE.workspaces)
    assert resolve(workspaces=data).source == "none"
    assert resolve(workspaces=data, oauth=OAUTH).source == "oauth"


def test_oauth_expiry() -> None:
    live = resolve(oauth=OAuthToken("tok", NOW + 3600))
    assert (live.source, live.expires_at) == ("oauth", NOW + 3600)
    soon = resolve(oauth=OAuthToken("tok", NOW + 200, refresh_token="r"))
    assert soon.source == "oauth"
    expired_refreshable = resolve(oauth=OAuthToken("tok", NOW - 1, refresh_token="r"))
    assert expired_refreshable.source == "oauth"   # (token_file refreshes it before use)
    assert resolve(oauth=OAuthToken("tok", NOW - 1)).source == "none"
    assert resolve(oauth=OAuthToken("", NOW + 3600)).source == "none"
    assert resolve(oauth=OAuthToken("tok", None)).expires_at is None


@pytest.mark.parametrize("secret,shown", [
    ("", ""),
    ("short", "…"),
    ("12345678", "…"),
    ("123456789", "12345678…"),
    ("cmdop_0123456789ab_" + "x" * 43, "cmdop_01…"),
])
def test_masked(secret: str, shown: str) -> None:
    assert masked(secret) == shown
    assert len(masked(secret).rstrip("…")) <= 8


def test_masked_secret_on_the_result() -> None:
    assert resolve(flag_key="k-flag-long-secret").masked_secret == "k-flag-l…"
    assert resolve(**inputs("flag")).masked_secret == "…"          # 6 characters: nothing shown


KEY = "cmdop_0123456789ab_" + "Ab-_" * 10 + "xyz"


def test_api_key_format() -> None:
    assert len(KEY) == 6 + 12 + 1 + 43
    assert parse_api_key(KEY) == "0123456789ab"
    assert check_api_key("  " + KEY + "\n") == KEY
    for bad in ("", KEY[:-1], KEY + "x", KEY.replace("cmdop_", "cmdOp_"), "cmdop_0123456789AB_" + "x" * 43,
                "cmdop_0123456789ab-" + "x" * 43, "cmdop_0123456789ab_" + "x" * 42 + "!"):
        assert parse_api_key(bad) is None
        with pytest.raises(UsageError) as err:
            check_api_key(bad)
        assert bad.strip() == "" or bad not in err.value.message   # the text is never echoed


@pytest.mark.parametrize("text,expected", [
    ("relay.example.com:7443", ("relay.example.com", 7443)),
    ("127.0.0.1:1", ("127.0.0.1", 1)),
    ("[::1]:7443", ("::1", 7443)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["", "host", ":7443", "host:", "host:0", "host:65536", "::1:7443",
                                  "http://h:1", "h:1:2", "h :1"])
def test_split_host_port_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        split_host_port(text)


def test_valid_name() -> None:
    assert valid_name("Prod") == "prod"
    for bad in ("", "-a", "a b", "a" * 65, "a/b"):
        with pytest.raises(UsageError):
            valid_name(bad)
