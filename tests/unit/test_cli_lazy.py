"""cmdop.cli.main builds only the invoked command's part of the argparse tree (start-up time),
and that part behaves as the whole tree would: the table of commands matches what the command
modules register, global flags before the command are skipped, anything else gets the whole tree."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from cmdop.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_the_table_names_every_command_its_modules_register() -> None:
    registered: dict[str, set[str]] = {}
    for name, modules in main.COMMANDS:
        for module in modules:
            if name in main.GROUPS:
                continue
            parser = argparse.ArgumentParser()
            sub = parser.add_subparsers(dest="command")
            importlib.import_module(f"cmdop.cli.{module}").register(sub)
            registered.setdefault(module, set()).update(sub.choices)
    table: dict[str, set[str]] = {}
    for name, modules in main.COMMANDS:
        if name not in main.GROUPS:
            for module in modules:
                table.setdefault(module, set()).add(name)
    assert table == registered
    full = main.build_parser()
    subs = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert list(subs.choices) == [name for name, _ in main.COMMANDS]


@pytest.mark.parametrize("group", sorted(main.GROUPS))
def test_a_groups_table_names_its_commands_in_help_order_and_only_builds_one(group: str) -> None:
    def choices(group_sub: argparse.ArgumentParser) -> list[str]:
        action = next(a for a in group_sub._actions if isinstance(a, argparse._SubParsersAction))
        return list(action.choices)

    full = main.build_parser(group)
    group_parser = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction)).choices[group]
    assert choices(group_parser) == [name for name, _ in main.GROUP_COMMANDS[group]]
    for name, _ in main.GROUP_COMMANDS[group]:
        partial = main.build_parser(group, name)
        one = next(a for a in partial._actions if isinstance(a, argparse._SubParsersAction)).choices[group]
        assert name in choices(one)
        assert "check" not in choices(one) or name == "check"   # the costly module builds only `only`


@pytest.mark.parametrize("argv, sub", [
    (["permissions", "check", "execute_command", "ls"], "check"),
    (["--json", "permissions", "--log-level", "debug", "audit", "--tail", "3"], "audit"),
    (["permissions", "pending"], "pending"),
    (["permissions"], None),
    (["permissions", "--help", "check"], None),
    (["permissions", "-h"], None),
    (["permissions", "no-such"], None),
    (["permissions", "--", "check"], None),
    (["agent", "status"], None),             # not a group
    (["check", "permissions"], None),
])
def test_subcommand_of(argv: list[str], sub: str | None) -> None:
    assert main.subcommand_of(argv) == sub


@pytest.mark.parametrize("argv, command", [
    (["permissions", "check", "execute_command", "ls"], "permissions"),
    (["--json", "agent", "status"], "agent"),
    (["--log-level", "debug", "run", "x"], "run"),
    (["--log-level=debug", "exec", "h", "--", "true"], "exec"),
    (["--log-format", "json", "service", "install"], "service"),
    (["--log-level", "exec", "version"], "version"),   # a flag's value is not the command
    (["--help"], None),
    (["-h", "agent"], None),
    ([], None),
    (["no-such-command"], None),
    (["--", "agent"], None),
])
def test_command_of(argv: list[str], command: str | None) -> None:
    assert main.command_of(argv) == command


@pytest.mark.parametrize("argv", [
    ["permissions", "check", "--json", "execute_command", "ls"],
    ["permissions", "check", "--batch", "-", "--caller", "local"],
    ["permissions", "check", "--help"],
    ["permissions", "check", "--bogus"],
    ["permissions", "explain", "read_file", "/etc/hosts", "--mode", "bypass"],
    ["permissions", "audit", "--tail", "3", "--verify"],
    ["--json", "permissions", "pending"],
    ["permissions", "approve", "a-1", "--scope", "session"],
    ["permissions", "mode", "strict"],
    ["permissions", "mode", "loose"],
    ["permissions", "add", "execute_command(ls)", "--action", "allow"],
    ["permissions", "--log-level", "debug", "replay", "--since", "1h"],
    ["permissions", "nope"],
    ["--json", "agent", "status"],
    ["service", "install", "--help"],
    ["exec", "--timeout", "3", "h1", "--", "true"],
])
def test_the_partial_tree_parses_as_the_whole_one(argv: list[str]) -> None:
    def parsed(parser: argparse.ArgumentParser) -> dict[str, object]:
        try:
            ns = vars(parser.parse_args(argv))
        except SystemExit as exc:           # --help: both print and exit the same way
            return {"exit": exc.code}
        ns["func"] = getattr(ns.get("func"), "__qualname__", ns.get("func"))
        return ns

    assert parsed(main.build_parser(main.command_of(argv), main.subcommand_of(argv))) == \
        parsed(main.build_parser())


def test_permissions_check_imports_no_other_command_module() -> None:
    code = ("import sys\n"
            "from cmdop.cli import main\n"
            "argv = ['permissions', 'check', 'execute_command', 'ls']\n"
            "main.build_parser(main.command_of(argv), main.subcommand_of(argv))\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('cmdop.cli.'))))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    others = {f"cmdop.cli.{m}" for _, modules in main.COMMANDS for m in modules} - {
        "cmdop.cli.permissions", "cmdop.cli.password_cmd"}  # its --password flag helpers are shared
    assert not loaded & others, loaded & others


def test_help_still_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main.build_parser(main.command_of(["--help"])).parse_args(["--help"])
    out = capsys.readouterr().out
    for name, _ in main.COMMANDS:
        assert name in out


# What a command must not import when it does not need it (whole process, as a user runs it):
# each of these costs milliseconds of every start (bench/startup.py). The policy file case is
# the control: yaml comes in when a permissions.yaml has to be read.
# typing, dataclasses (and the inspect it imports) and tree-sitter's package __init__s are left
# out of the gate's path; their extension modules are what it loads.
_HEAVY = ("grpc", "google.protobuf", "yaml", "shutil", "importlib.resources", "tree_sitter_bash",
          "tree_sitter", "typing", "dataclasses", "inspect",
          "cmdop.core.kernel_floor", "cmdop.cli.audit_cmd", "cmdop.cli.approvals",
          "cmdop.adapters.password_store")
_NATIVE = ("tree_sitter._binding", "tree_sitter_bash._binding")
_RUN_AND_LIST = ("import sys\n"
                 "from cmdop.cli import main\n"
                 "code = main.main(sys.argv[1:])\n"
                 "print('MODULES', ' '.join(sorted(sys.modules)))\n"
                 "sys.exit(code)\n")


@pytest.mark.parametrize("argv, policy, expected, needs", [
    (["permissions", "check", "execute_command", "ls -la; rm -rf /"], None, "floor: recursive removal of /",
     ("tree_sitter._binding", "tree_sitter_bash._binding", "cmdop.core.policy.gate")),
    (["permissions", "check", "execute_command", "ls"],
     "version: 1\nmode: strict\nrules:\n  - rule: execute_command(ls)\n    action: allow\n",
     "allow (source rule", ("yaml", "tree_sitter._binding", "cmdop.core.policy.gate")),
    (["agent", "status"], None, "STOPPED", ()),
    # direct to a relay that refuses the connection (exit 5): grpc, but no password store when
    # this caller never unlocked a machine (no sessions.json)
    (["exec", "--relay", "127.0.0.1:9", "--relay-fingerprint", "ab" * 32, "--api-key",
      "cmdop_0123456789ab_" + "A" * 43, "web01", "--", "true"], None, "127.0.0.1:9",
     ("grpc", "google.protobuf", "typing", "inspect", "dataclasses")),  # (grpc imports the first two)
])
def test_a_command_imports_only_what_it_needs(tmp_path: Path, argv: list[str], policy: str | None,
                                              expected: str, needs: tuple[str, ...]) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMDOP_", "XDG_"))}
    env.update(HOME=str(tmp_path), CMDOP_CONFIG_DIR=str(tmp_path / "cfg"),
               CMDOP_STATE_DIR=str(tmp_path / "state"), CMDOP_HOME=str(tmp_path / ".cmdop"),
               CMDOP_SOCKET_PATH=str(tmp_path / "agent.sock"))
    if policy is not None:
        (tmp_path / "cfg").mkdir(mode=0o700)
        (tmp_path / "cfg" / "permissions.yaml").write_text(policy)
        (tmp_path / "cfg" / "permissions.yaml").chmod(0o600)
    r = subprocess.run([sys.executable, "-c", _RUN_AND_LIST, *argv], capture_output=True, text=True,
                       timeout=60, cwd=REPO, env=env)
    out, _, listed = r.stdout.partition("MODULES ")
    assert expected in out + r.stderr, (r.returncode, out, r.stderr)
    loaded = set(listed.split())
    assert set(needs) <= loaded                       # the control: the list is the real one
    unneeded = {m for m in _HEAVY if m not in needs}
    extra = {m for m in loaded if m not in _NATIVE and (m in unneeded or m.split(".")[0] in unneeded)}
    assert not extra, sorted(extra)


@pytest.mark.parametrize("columns", [None, "50", "200", "0", "-3", "wide", ""])
def test_help_is_as_wide_as_shutil_would_make_it(monkeypatch: pytest.MonkeyPatch, columns: str | None) -> None:
    import shutil

    from cmdop.cli import common

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    expected = shutil.get_terminal_size().columns   # what argparse's own sizing would use
    assert common.terminal_columns() == expected
    assert common.Formatter("cmdop")._width == expected - 2
