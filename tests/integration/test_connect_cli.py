"""`cmdop connect key set|list|rm`, `connect use` and `cmdop auth status` through the real CLI,
in-process, in a private HOME (CONTRACT §2, §3, §7)."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import CmdopEnv
from tests.integration.inprocess_cli import Cli, cli  # noqa: F401  (the fixture)

KEY_A = "cmdop_0123456789ab_" + "A" * 40 + "a-_"
KEY_B = "cmdop_ba9876543210_" + "B" * 40 + "b-_"
FP = "ab" * 32


def ws_file(cli: Cli) -> Path:
    return cli.home / ".cmdop" / "ssh_workspaces.json"


def test_key_set_from_stdin_first_becomes_active(cli: Cli) -> None:
    r = cli("connect", "key", "set", "--workspace", "Prod", "--relay", "relay.example.com:7443", "-",
            stdin=KEY_A + "\n")
    assert r.code == 0, r.err
    assert KEY_A not in r.out + r.err and "cmdop_01…" in r.out and "now the active workspace" in r.out
    path = ws_file(cli)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    doc = json.loads(path.read_text())
    assert doc == {"active": "prod", "workspaces": [
        {"name": "prod", "api_key": KEY_A, "server": "relay.example.com:7443"}]}
    r = cli("connect", "key", "set", "--workspace", "dev", "--relay", "[::1]:7443",
            "--relay-fingerprint", "SHA256:" + ":".join([FP[i:i + 2].upper() for i in range(0, 64, 2)]),
            stdin=KEY_B)                               # no "-": stdin is the default
    assert r.code == 0, r.err
    doc = json.loads(path.read_text())
    assert doc["active"] == "prod"                     # the second one does not take over
    assert doc["workspaces"][1] == {"name": "dev", "api_key": KEY_B, "server": "[::1]:7443",
                                    "relay_fingerprint": FP}


def test_key_set_updates_and_drops_a_stale_pin(cli: Cli) -> None:
    cli("connect", "key", "set", "--workspace", "prod", "--relay", "a:1", "--relay-fingerprint", FP, stdin=KEY_A)
    r = cli("connect", "key", "set", "--workspace", "prod", stdin=KEY_B)        # same relay: pin kept
    assert r.code == 0 and "updated" in r.out
    entry = json.loads(ws_file(cli).read_text())["workspaces"][0]
    assert (entry["api_key"], entry["server"], entry["relay_fingerprint"]) == (KEY_B, "a:1", FP)
    r = cli("connect", "key", "set", "--workspace", "prod", "--relay", "b:2", stdin=KEY_B)
    assert "pin was dropped" in r.out
    entry = json.loads(ws_file(cli).read_text())["workspaces"][0]
    assert entry["server"] == "b:2" and "relay_fingerprint" not in entry


def test_key_set_without_workspace_uses_the_active_one(cli: Cli) -> None:
    cli("connect", "key", "set", "--relay", "a:1", stdin=KEY_A)
    doc = json.loads(ws_file(cli).read_text())
    assert doc["active"] == "default" and doc["workspaces"][0]["name"] == "default"
    cli("connect", "key", "set", "--workspace", "other", "--relay", "b:1", stdin=KEY_B)
    cli("connect", "key", "set", stdin=KEY_B)
    doc = json.loads(ws_file(cli).read_text())
    assert [w["api_key"] for w in doc["workspaces"]] == [KEY_B, KEY_B]


@pytest.mark.parametrize("args,stdin,code,needle", [
    (("--relay", "a:1"), "not-a-key\n", 2, "not a cmdop API key"),
    (("--relay", "a:1"), "", 2, "no key on stdin"),
    (("--relay", "a:1"), KEY_A[:-1], 2, "not a cmdop API key"),
    ((), KEY_A, 2, "--relay HOST:PORT"),
    (("--relay", "nohostport"), KEY_A, 2, "HOST:PORT"),
    (("--relay", "a:1", "--relay-fingerprint", "abc"), KEY_A, 2, "fingerprint"),
    (("--relay", "a:1", "--relay-ca", "/nonexistent/ca.pem"), KEY_A, 2, "cannot read"),
    (("--relay", "a:1", "--workspace", "bad name"), KEY_A, 2, "invalid name"),
    # an empty flag is a mistake, never "the default workspace / relay / no pin"
    (("--relay", "a:1", "--workspace", ""), KEY_A, 2, "--workspace is empty"),
    (("--relay", "a:1", "--workspace", "  "), KEY_A, 2, "--workspace is empty"),
    (("--relay", ""), KEY_A, 2, "--relay is empty"),
    (("--relay", "a:1", "--relay-fingerprint", ""), KEY_A, 2, "--relay-fingerprint is empty"),
    (("--relay", "a:1", "--relay-ca", ""), KEY_A, 2, "--relay-ca is empty"),
])
def test_key_set_errors(cli: Cli, args: tuple[str, ...], stdin: str, code: int, needle: str) -> None:
    r = cli("connect", "key", "set", *args, stdin=stdin)
    assert r.code == code and needle in r.err and "Traceback" not in r.err
    assert "hint:" in r.err
    assert KEY_A[19:] not in r.err
    assert not ws_file(cli).exists()


@pytest.mark.parametrize("argv", [
    ("auth", "status", "--workspace", ""), ("hosts", "--workspace", " "), ("hosts", "--relay", ""),
    ("exec", "--api-key", "", "web01", "--", "true"), ("call", "--workspace", "", "web01", "read_file"),
])
def test_an_empty_credential_flag_is_a_usage_error(cli: Cli, argv: tuple[str, ...]) -> None:
    """`--workspace "$UNSET"` never quietly means the active workspace (or relay, or key)."""
    cli("connect", "key", "set", "--relay", "a:1", stdin=KEY_A)
    r = cli(*argv)
    assert r.code == 2 and "is empty" in r.err and "hint:" in r.err and "Traceback" not in r.err, r.err


def test_key_is_never_taken_from_argv(cli: Cli) -> None:
    with pytest.raises(SystemExit) as exc:
        cli("connect", "key", "set", "--relay", "a:1", "--api-key", KEY_A)
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        cli("connect", "key", "set", "--relay", "a:1", KEY_A)
    assert not ws_file(cli).exists()


def test_key_set_prompts_without_echo_at_a_terminal(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return KEY_A

    import getpass

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    r = cli("connect", "key", "set", "--relay", "a:1", stdin=Tty(""))
    assert r.code == 0, r.err
    assert prompts and "hidden" in prompts[0]
    assert json.loads(ws_file(cli).read_text())["workspaces"][0]["api_key"] == KEY_A


def test_key_set_refuses_a_readable_file(cli: Cli) -> None:
    cli("connect", "key", "set", "--relay", "a:1", stdin=KEY_A)
    os.chmod(ws_file(cli), 0o644)
    r = cli("connect", "key", "set", "--relay", "a:1", stdin=KEY_B)
    assert r.code == 1 and "chmod 600" in r.err
    assert json.loads(ws_file(cli).read_text())["workspaces"][0]["api_key"] == KEY_A
    r = cli("connect", "key", "list")
    assert r.code == 1 and "readable by other users" in r.err


@pytest.mark.skipif(os.geteuid() != 0, reason="a file of another user needs root to make")
def test_a_secret_file_of_another_user_is_refused_even_for_root(cli: Cli) -> None:
    """Root reads any file, but a secret owned by someone else is theirs to swap: refused,
    with the chown to run (CONTRACT: secret files)."""
    cli("connect", "key", "set", "--relay", "a:1", stdin=KEY_A)
    path = ws_file(cli)
    os.chown(path, 1234, -1)
    for args in (("auth", "status"), ("connect", "key", "list")):
        r = cli(*args)
        assert r.code == 1, (args, r.out)
        assert "owned by uid 1234" in r.err and f"chown 0 {path}" in r.err
        assert "Traceback" not in r.err and KEY_A not in r.out + r.err
    os.chown(path, 0, -1)
    assert cli("auth", "status").code == 0


def test_corrupt_file_is_not_overwritten(cli: Cli) -> None:
    path = ws_file(cli)
    path.parent.mkdir(mode=0o700)
    path.write_text("{broken")
    os.chmod(path, 0o600)
    r = cli("connect", "key", "set", "--relay", "a:1", stdin=KEY_A)
    assert r.code == 1 and "not a valid workspaces file" in r.err
    assert path.read_text() == "{broken"


def test_key_list_masks(cli: Cli) -> None:
    assert "no stored workspaces" in cli("connect", "key", "list").out
    assert cli("connect", "key", "list", "--json").json() == []
    cli("connect", "key", "set", "--workspace", "prod", "--relay", "a:1", "--relay-fingerprint", FP, stdin=KEY_A)
    cli("connect", "key", "set", "--workspace", "dev", "--relay", "b:1", stdin=KEY_B)
    r = cli("connect", "key", "list")
    assert r.code == 0 and KEY_A not in r.out and KEY_B not in r.out and KEY_A[8:] not in r.out
    assert "cmdop_01…" in r.out and "cmdop_ba…" in r.out
    rows = cli("connect", "key", "list", "--json").json()
    assert rows == [
        {"name": "prod", "server": "a:1", "key": "cmdop_01…", "active": True, "relay_fingerprint": FP, "relay_ca": ""},
        {"name": "dev", "server": "b:1", "key": "cmdop_ba…", "active": False, "relay_fingerprint": "", "relay_ca": ""},
    ]


def test_use_and_rm(cli: Cli) -> None:
    cli("connect", "key", "set", "--workspace", "prod", "--relay", "a:1", stdin=KEY_A)
    cli("connect", "key", "set", "--workspace", "dev", "--relay", "b:1", stdin=KEY_B)
    r = cli("connect", "use", "dev")
    assert r.code == 0 and json.loads(ws_file(cli).read_text())["active"] == "dev"
    r = cli("connect", "use", "nope")
    assert r.code == 1 and "no stored workspace 'nope'" in r.err and "connect key list" in r.err
    r = cli("connect", "key", "rm", "dev")
    assert r.code == 0 and "prod is now the active workspace" in r.out
    doc = json.loads(ws_file(cli).read_text())
    assert doc["active"] == "prod" and [w["name"] for w in doc["workspaces"]] == ["prod"]
    assert cli("connect", "key", "rm", "dev").code == 1
    assert cli("connect", "key", "rm", "prod").code == 0
    assert json.loads(ws_file(cli).read_text()) == {"active": None, "workspaces": []}


# -- auth status ------------------------------------------------------------------------------

def status(cli: Cli, *args: str) -> dict[str, str]:
    r = cli("auth", "status", "--json", *args)
    assert r.code == 0, r.err
    out: dict[str, str] = r.json()
    return out


def test_auth_status_none_exits_4(cli: Cli) -> None:
    r = cli("auth", "status")
    assert r.code == 4 and r.out == ""
    assert r.err.startswith("cmdop: error: no credential") and "hint:" in r.err and "connect key set" in r.err
    r = cli("auth", "status", "--json")
    assert r.code == 4 and r.json()["source"] == "none"


def test_auth_status_sources(cli: Cli) -> None:
    cli("connect", "key", "set", "--workspace", "prod", "--relay", "a:1", "--relay-fingerprint", FP, stdin=KEY_A)
    cli("connect", "key", "set", "--workspace", "dev", "--relay", "b:1", stdin=KEY_B)
    s = status(cli)
    assert (s["source"], s["workspace"], s["relay"], s["key"], s["relay_fingerprint"]) == \
        ("active", "prod", "a:1", "cmdop_01…", FP)
    s = status(cli, "--workspace", "dev")
    assert (s["source"], s["workspace"], s["relay"], s["key"]) == ("workspace", "dev", "b:1", "cmdop_ba…")
    cli.setenv("CMDOP_WORKSPACE", "dev")
    assert status(cli)["source"] == "workspace" and status(cli)["workspace"] == "dev"
    assert status(cli, "--workspace", "prod")["workspace"] == "prod"      # the flag beats the env
    cli.setenv("CMDOP_API_KEY", "cmdop_ffffffffffff_" + "F" * 43)
    s = status(cli)
    assert (s["source"], s["key"], s["relay"]) == ("env", "cmdop_ff…", "b:1")
    cli.setenv("CMDOP_RELAY", "env.relay:9")
    assert status(cli)["relay"] == "env.relay:9" and status(cli)["relay_fingerprint"] == ""
    s = status(cli, "--api-key", "cmdop_eeeeeeeeeeee_" + "E" * 43, "--relay", "flag.relay:8")
    assert (s["source"], s["key"], s["relay"]) == ("flag", "cmdop_ee…", "flag.relay:8")


def test_auth_status_never_shows_the_secret(cli: Cli) -> None:
    cli("connect", "key", "set", "--relay", "a:1", stdin=KEY_A)
    for args in ((), ("--json",)):
        r = cli("auth", "status", *args)
        assert r.code == 0 and KEY_A[8:] not in r.out + r.err
    human = cli("auth", "status").out
    assert "source:     active" in human and "cmdop_01…" in human


def test_auth_status_unknown_workspace_exits_4(cli: Cli) -> None:
    cli("connect", "key", "set", "--relay", "a:1", stdin=KEY_A)
    r = cli("auth", "status", "--workspace", "ghost")
    assert r.code == 4 and "ghost" in r.err and "hint:" in r.err


def test_auth_status_relay_from_config(cli: Cli) -> None:
    cfg = cli.home / ".config" / "cmdop"
    cfg.mkdir(parents=True)
    (cfg / "config.yaml").write_text('relay: "cfg.relay:7443"\n')
    os.chmod(cfg / "config.yaml", 0o600)
    cli.setenv("CMDOP_API_KEY", KEY_A)
    assert status(cli)["relay"] == "cfg.relay:7443"


def test_end_to_end_as_processes(cmdop_env: CmdopEnv, tmp_path: Path) -> None:
    """`python -m cmdop`: the relay admin makes a key, the caller stores it from a pipe, and
    `auth status` names it; the exit codes are the contract's."""
    d = str(tmp_path / "relaydata")
    assert cmdop_env.run("relay", "workspace", "create", "prod", "--data-dir", d).returncode == 0
    made = cmdop_env.run("relay", "key", "create", "prod", "--name", "alice", "--data-dir", d)
    key = made.stdout.strip()
    assert made.returncode == 0 and key.startswith("cmdop_") and "will not be shown again" in made.stderr
    none = cmdop_env.run("auth", "status")
    assert none.returncode == 4 and "Traceback" not in none.stderr
    stored = cmdop_env.run("connect", "key", "set", "--workspace", "prod", "--relay", "localhost:7443", "-",
                           input=key + "\n")
    assert stored.returncode == 0, stored.stderr
    st = cmdop_env.run("auth", "status", "--json")
    assert st.returncode == 0 and json.loads(st.stdout)["source"] == "active"
    assert key[8:] not in st.stdout + st.stderr
    bad = cmdop_env.run("connect", "key", "set", "--relay", "localhost:7443", input="nope\n")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
