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

    assert parsed(main.build_parser(main.command_of(argv))) == parsed(main.build_parser())


def test_permissions_check_imports_no_other_command_module() -> None:
    code = ("import sys\n"
            "from cmdop.cli import main\n"
            "main.build_parser(main.command_of(['permissions', 'check', 'execute_command', 'ls']))\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('cmdop.cli.'))))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    others = {f"cmdop.cli.{m}" for _, modules in main.COMMANDS for m in modules} - {
        "cmdop.cli.permissions", "cmdop.cli.audit_cmd", "cmdop.cli.approvals",
        "cmdop.cli.password_cmd"}               # its --password flag helpers are shared
    assert not loaded & others, loaded & others


def test_help_still_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main.build_parser(main.command_of(["--help"])).parse_args(["--help"])
    out = capsys.readouterr().out
    for name, _ in main.COMMANDS:
        assert name in out
