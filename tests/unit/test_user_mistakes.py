"""What a user gets for a mistake in the environment, a file or a flag (each found by a
black-box pass against the contract): a clear line with a hint, never a traceback, a secret
echoed, a wrong diagnosis, or a path other than the one the floor protects.

Settings.from_env first: every path absolute and normalised, whatever the environment says.
CMDOP_CONFIG_DIR=relcfg was used as given, so the agent's own policy file (relcfg/permissions.yaml)
was not the absolute path the floor protects and a remote write_file replaced the live policy."""

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


@pytest.mark.parametrize("args,setup,named", [
    (["permissions", "init"], "config-dir-is-a-file", "cfg"),
    (["permissions", "list"], "policy-is-a-directory", "permissions.yaml"),
])
def test_a_path_the_system_refuses_is_one_line_naming_it(tmp_path, monkeypatch, capsys,
                                                         args: list[str], setup: str, named: str) -> None:
    from cmdop.cli.main import main

    cfg = tmp_path / "cfg"
    if setup == "config-dir-is-a-file":
        cfg.write_text("")
    else:
        (cfg / "permissions.yaml").mkdir(parents=True)
    for var in ("CMDOP_SOCKET_PATH", "CMDOP_STATE_DIR", "CMDOP_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CMDOP_CONFIG_DIR", str(cfg))
    assert main(args) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith("cmdop: error: ") and named in lines[0], err
    assert "internal error" not in err and "Traceback" not in err
    assert lines[1].startswith("hint: ") and len(lines) == 2, err


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_a_policy_or_config_that_is_not_a_file_is_refused_not_read(tmp_path, kind: str) -> None:
    import os

    from cmdop.adapters import config_file, policy_store
    from cmdop.core.errors import ConfigFileError, PolicyError

    for name, load, error in (("permissions.yaml", lambda p: policy_store.load(p, str(tmp_path)), PolicyError),
                              ("config.yaml", config_file.load, ConfigFileError)):
        path = tmp_path / name
        path.mkdir() if kind == "dir" else os.mkfifo(path, 0o600)
        with pytest.raises(error, match="not a regular file"):
            load(str(path))


def test_a_usage_error_never_echoes_a_key(capsys) -> None:
    """Found by a black-box pass: `connect key set --workspace w KEY` (the key where `-` goes)
    made argparse print the whole key."""
    from cmdop.cli.main import main

    key = "cmdop_k_abcd1234_V6cxp8rcQyxJShVFiYS94jfp2-TsNP0FpoIkm5deixY"
    for argv in (["connect", "key", "set", "--workspace", "w", key], [key]):
        with pytest.raises(SystemExit) as ended:
            main(argv)
        assert ended.value.code == 2
        err = capsys.readouterr().err
        assert key not in err and "V6cxp8rc" not in err and "invalid choice" in err, err


def test_a_bad_cmdop_relay_is_a_usage_error_at_once(tmp_path, monkeypatch, capsys) -> None:
    """Found by a black-box pass: CMDOP_RELAY=garbage waited 10 s, then said "unreachable"."""
    from cmdop.cli.main import main

    for var in ("CMDOP_SOCKET_PATH", "CMDOP_STATE_DIR", "CMDOP_HOME", "CMDOP_CONFIG_DIR", "CMDOP_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CMDOP_RELAY", "garbage")
    monkeypatch.setenv("CMDOP_API_KEY", "cmdop_0123456789ab_V6cxp8rcQyxJShVFiYS94jfp2-TsNP0FpoIkm5deixY")
    assert main(["hosts"]) == 2
    assert capsys.readouterr().err.startswith("cmdop: error: CMDOP_RELAY: invalid address 'garbage'")


def test_an_active_workspace_that_is_not_stored_is_named(tmp_path, monkeypatch, capsys) -> None:
    import json
    import os

    from cmdop.cli.main import main

    for var in ("CMDOP_SOCKET_PATH", "CMDOP_STATE_DIR", "CMDOP_HOME", "CMDOP_CONFIG_DIR",
                "CMDOP_WORKSPACE", "CMDOP_RELAY", "CMDOP_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    home = tmp_path / ".cmdop"
    home.mkdir(mode=0o700)
    f = home / "ssh_workspaces.json"
    f.write_text(json.dumps({"active": "ghost", "workspaces": [{
        "name": "real", "api_key": "cmdop_0123456789ab_V6cxp8rcQyxJShVFiYS94jfp2-TsNP0FpoIkm5deixY",
        "server": "127.0.0.1:9"}]}))
    os.chmod(f, 0o600)
    assert main(["hosts"]) == 4
    err = capsys.readouterr().err
    assert "the active workspace 'ghost'" in err and "(real)" in err and "cmdop connect use" in err


def test_a_stored_pin_that_is_not_a_fingerprint_is_a_bad_file() -> None:
    """Found by a black-box pass: relay_fingerprint "nothex" was reported as a pin mismatch
    ("someone may be intercepting the connection")."""
    import json

    from cmdop.adapters import workspaces_file

    doc = {"workspaces": [{"name": "w", "api_key": "k", "server": "r:1", "relay_fingerprint": "nothex"}]}
    with pytest.raises(ConfigError, match="relay_fingerprint is not 64 hex digits"):
        workspaces_file.parse(json.dumps(doc), "/x/ssh_workspaces.json")
    doc["workspaces"][0]["relay_fingerprint"] = "AB:" * 31 + "AB"        # written by hand, colons
    assert workspaces_file.parse(json.dumps(doc)).workspaces[0].relay_fingerprint == "ab" * 32


def test_a_user_code_hint_names_the_letters(tmp_path) -> None:
    from cmdop.core.errors import UsageError
    from cmdop.relay.store import RelayStore

    with RelayStore.open(str(tmp_path / "relay")) as store:
        with pytest.raises(UsageError) as err:
            store.approve_device("ABCD-EFGH", "a@example.com", "w")
    assert "BCDFGHJKMNPQRSTVWXZ" in (err.value.hint or "")


@pytest.mark.parametrize("tool,make_input,field", [
    ("execute_command", lambda d: {"command": "true", "cwd": str(d / "missing")}, "cwd"),
    ("write_file", lambda d: {"path": str(d), "content": "x"}, "path"),
    ("grep", lambda d: {"pattern": "(", "path": str(d)}, "pattern"),
    ("read_file", lambda d: {"path": str(d / "f"), "start": 5, "end": 2}, "end"),
    ("read_file", lambda d: {"path": str(d / "f"), "start": -1}, "start"),
    ("write_file", lambda d: {"path": str(d / "g"), "content": "x", "encoding": "latin-1"}, "encoding"),
])
def test_every_bad_input_names_its_field(tmp_path, tool, make_input, field) -> None:
    """Found by a black-box pass: the tools' own bad_input results (a cwd that is no directory,
    a bad regex, end < start, a directory to write) carried no `field`, as the contract promises."""
    from cmdop.core.calls import ToolCall
    from cmdop.tools.base import ToolEnv
    from cmdop.tools.registry import run_tool

    (tmp_path / "f").write_text("one\ntwo\n")
    out = run_tool(ToolCall(tool, make_input(tmp_path)), ToolEnv(home=str(tmp_path), cwd=str(tmp_path)))
    assert out["error"] == "bad_input" and out["field"] == field, out


@pytest.mark.parametrize("given,expected", [
    (None, None),
    ("ab" * 32, "sha256:" + "ab" * 32),                    # found by a black-box pass: refused
    ("SHA256:" + "AB" * 32, "sha256:" + "ab" * 32),
    (" sha256:" + "ab" * 32 + " ", "sha256:" + "ab" * 32),
])
def test_an_approval_digest_in_any_spelling(given, expected) -> None:
    from cmdop.cli.approvals import _digest

    assert _digest(given) == expected


@pytest.mark.parametrize("given", ["", "sha256:", "ab" * 31, "zz" * 32, "sha1:" + "ab" * 20])
def test_an_approval_digest_that_is_not_one_is_a_usage_error(given) -> None:
    from cmdop.cli.approvals import _digest
    from cmdop.core.errors import UsageError

    with pytest.raises(UsageError, match="is not a SHA-256"):
        _digest(given)


@pytest.mark.parametrize("source,hint", [("floor", "no rule or mode allows this"),
                                         ("rule", "ask the machine's owner for a rule"),
                                         ("mode", "ask the machine's owner for a rule")])
def test_a_remote_denial_hint_fits_its_source(source, hint) -> None:
    """Found by a black-box pass: a floor denial told the caller to ask for a rule, which
    cannot change the floor."""
    from cmdop.relay.caller import denial_error

    err = denial_error({"error": "permission_denied", "reason": "r", "source": source})
    assert err.exit_code == 3 and hint in (err.hint or "")


def test_a_call_cut_by_the_local_agents_lost_link_is_unreachable() -> None:
    """Found by a black-box pass: exit 1 with no hint (the key behind the agent's link was
    revoked mid-call)."""
    from cmdop.relay.caller import failure_error

    err = failure_error("relay_lost", "this agent's link to the relay ended during the call")
    assert err.exit_code == 5 and "cmdop agent status" in (err.hint or "")


def test_a_failed_tool_says_so_on_stderr_too(tmp_path, monkeypatch, capsys) -> None:
    """Found by black-box passes: `cmdop run` (and `cmdop call`) exited 1 for a tool that
    failed with nothing on stderr; the result document stays on stdout for scripts."""
    import json

    from cmdop.cli.main import main

    for var in ("CMDOP_SOCKET_PATH", "CMDOP_STATE_DIR", "CMDOP_HOME", "CMDOP_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    missing = tmp_path / "missing.txt"
    assert main(["run", "read_file", "--input", json.dumps({"path": str(missing)})]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["error"] == "not_found"
    assert out.err.startswith(f"cmdop: error: read_file: {missing}: ")


@pytest.mark.parametrize("rpc", ["list_hosts", "host_key", "share_rpc"])
def test_a_relay_nobody_listens_at_is_said_at_once_by_every_rpc(rpc: str) -> None:
    """`cmdop hosts`, `exec` to an unpinned host and the share commands waited out their 10 s
    deadline before saying "unreachable: Deadline Exceeded" (found by a black-box pass)."""
    import socket

    from cmdop.adapters.relay_grpc import RelayChannel, RelayEndpoint
    from cmdop.core.errors import UnreachableError
    from cmdop.relay.proto import relay_pb2 as pb

    with socket.socket() as s:   # a port that was free a moment ago, and is closed now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    channel = RelayChannel(RelayEndpoint(f"127.0.0.1:{port}"), "cmdop_0123456789ab_" + "A" * 43)
    calls = {"list_hosts": lambda: channel.list_hosts(timeout=60),
             "host_key": lambda: channel.host_key("web01", timeout=60),
             "share_rpc": lambda: channel.share_rpc("ListShares", pb.ListSharesRequest(), timeout=60)}
    try:
        with pytest.raises(UnreachableError, match="cannot reach the relay at 127.0.0.1") as err:
            calls[rpc]()
        assert "Connection refused" in err.value.message and err.value.hint
    finally:
        channel.close()


def test_a_policys_control_characters_never_reach_the_terminal(tmp_path, monkeypatch, capsys) -> None:
    """Found by a red team: a reason of "\\x1b[2K\\rallow (source rule): …" made `permissions
    list` (and a check it decides) show a deny as an allow, and a rule could set the title."""
    from cmdop.cli.main import main

    for var in ("CMDOP_SOCKET_PATH", "CMDOP_STATE_DIR", "CMDOP_HOME", "CMDOP_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    policy = tmp_path / ".config" / "cmdop" / "permissions.yaml"
    policy.parent.mkdir(parents=True, mode=0o700)
    policy.write_text('version: 1\nmode: strict\nrules:\n  - rule: "execute_command(rm *)"\n'
                      '    action: deny\n    reason: "\\e[2K\\rallow (source rule): looks allowed"\n'
                      '  - rule: "execute_command(\\e]0;pwned\\a)"\n    action: allow\n')
    policy.chmod(0o600)
    for argv in (["permissions", "list"], ["permissions", "check", "execute_command", "rm x"],
                 ["permissions", "check", "execute_command", "\x1b]0;pwned\x07"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\r" not in out and "\x07" not in out, (argv, out)
        assert "\\x1b" in out or "(U+001B)" in out, (argv, out)   # shown, as an escape


def test_adding_a_rule_the_file_has_says_so(tmp_path, monkeypatch, capsys) -> None:
    """Found by a black-box pass: a repeated `permissions add` said "added" for a rule that was
    there already (the file did not change)."""
    import json

    from cmdop.cli.main import main

    for var in ("CMDOP_SOCKET_PATH", "CMDOP_STATE_DIR", "CMDOP_HOME", "CMDOP_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    argv = ["permissions", "add", "execute_command(uptime)", "--action", "allow"]
    assert main(argv) == 0 and capsys.readouterr().out.startswith("added global rule r-")
    policy = tmp_path / ".config" / "cmdop" / "permissions.yaml"
    before = policy.read_bytes()
    assert main(argv) == 0 and "is already in" in capsys.readouterr().out
    assert main(["--json", *argv]) == 0 and json.loads(capsys.readouterr().out)["already_present"] is True
    assert policy.read_bytes() == before
