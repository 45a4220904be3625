"""Settings.from_env: every path absolute and normalised, whatever the environment says.

Found by a black-box pass: CMDOP_CONFIG_DIR=relcfg was used as given, so the agent's own
policy file (relcfg/permissions.yaml) was not the absolute path the floor protects and a remote
write_file replaced the live policy."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmdop.core.errors import ConfigError
from cmdop.core.settings import Settings

ACCOUNT = "/home/op"


@pytest.mark.parametrize("env,field,expected", [
    ({}, "config_dir", "/home/op/.config/cmdop"),
    ({"HOME": ""}, "config_dir", "/home/op/.config/cmdop"),            # empty: the account's
    ({"HOME": "rel"}, "config_dir", "/home/op/.config/cmdop"),         # relative: ignored
    ({"HOME": "/srv/x/../y/"}, "home", "/srv/y"),                      # normalised
    ({"XDG_CONFIG_HOME": "cfg"}, "config_dir", "/home/op/.config/cmdop"),
    ({"XDG_STATE_HOME": "./st"}, "state_dir", "/home/op/.local/state/cmdop"),
    ({"XDG_DATA_HOME": "d"}, "relay_data_dir", "/home/op/.local/share/cmdop-relay"),
    ({"XDG_RUNTIME_DIR": "run"}, "socket_path", "/home/op/.cmdop/agent.sock"),
    ({"XDG_RUNTIME_DIR": "/run/user/7"}, "socket_path", "/run/user/7/cmdop/agent.sock"),
    ({"CMDOP_CONFIG_DIR": "/etc/cmdop/../cmdop2"}, "config_dir", "/etc/cmdop2"),
    ({"CMDOP_STATE_DIR": "/var/lib//cmdop/"}, "state_dir", "/var/lib/cmdop"),
])
def test_paths(env: dict[str, str], field: str, expected: str) -> None:
    assert getattr(Settings.from_env(env, ACCOUNT), field) == expected


@pytest.mark.parametrize("name", ["CMDOP_CONFIG_DIR", "CMDOP_STATE_DIR", "CMDOP_HOME", "CMDOP_SOCKET_PATH"])
@pytest.mark.parametrize("value", ["relcfg", "./x", "../up", "~/x"])
def test_a_relative_cmdop_path_is_refused_with_the_fix(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}=.* is not an absolute path") as err:
        Settings.from_env({name: value}, ACCOUNT)
    assert "$PWD" in (err.value.hint or "")


@given(st.dictionaries(st.sampled_from(["HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME",
                                        "XDG_RUNTIME_DIR"]),
                       st.text(alphabet="/.ab", max_size=12)))
def test_every_path_is_absolute_and_normal(env: dict[str, str]) -> None:
    s = Settings.from_env(env, ACCOUNT)
    for path in (s.home, s.config_dir, s.cmdop_home, s.state_dir, s.socket_path, s.relay_data_dir,
                 s.permissions_file, s.audit_file):
        assert posixpath.isabs(path) and posixpath.normpath(path) == path, (env, path)
