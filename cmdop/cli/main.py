"""The command line: parse, dispatch, and the one place errors are printed.

Exit status: 0 ok · 1 error · 2 usage · 3 denied · 4 auth · 5 unreachable. An error prints one
line `cmdop: error: WHAT` on stderr and a hint line; a traceback only with `--log-level debug`.
"""

from __future__ import annotations

import errno
import os
import sys

from cmdop import __version__

# Not `from typing import TYPE_CHECKING`: typing costs `cmdop --version` ~4 ms of its ~20 ms.
# (Type checkers treat any name TYPE_CHECKING as true.)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from cmdop.core.errors import CmdopError

# Module-level imports stay minimal: `cmdop --version` is timed against `python -c pass`
# (bench/startup.py); everything else is imported by the functions that need it.


# The command tree, as (top-level command, modules that register it) in `--help` order. A
# command's modules are imported only when it runs (each costs imports and argparse work: the
# whole tree is ~20 ms of a `permissions check`); `--help`, a bad command and no command get the
# whole tree. A group (`permissions`) is built by add_group, its modules fill it.
# tests/unit/test_cli_lazy.py checks this table against what the modules register.
COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("version", ("version_cmd",)),
    ("run", ("run_cmd",)),
    ("permissions", ("permissions", "audit_cmd", "approvals")),
    ("agent", ("agent_cmd",)),
    ("service", ("agent_cmd",)),
    ("doctor", ("doctor_cmd",)),
    ("relay", ("relay_cmd",)),
    ("connect", ("connect_cmd",)),
    ("auth", ("connect_cmd",)),
    ("login", ("login_cmd",)),
    ("logout", ("login_cmd",)),
    ("hosts", ("remote_cmd",)),
    ("exec", ("remote_cmd",)),
    ("call", ("remote_cmd",)),
    ("password", ("password_cmd",)),
)
GROUPS = {"permissions": "inspect and change the permission gate"}
# A group's commands, as (command, module that registers it) in `--help` order. Only the invoked
# one is built (`permissions check` would otherwise build 15 sub-parsers, ~3 ms); `--help`, no
# command or an unknown one gets the whole group. A module's register(sub, only) builds `only`.
GROUP_COMMANDS: dict[str, tuple[tuple[str, str], ...]] = {
    "permissions": tuple((name, "permissions") for name in (
        "list", "add", "rm", "mode", "check", "explain", "replay", "test", "init", "path"))
    + (("audit", "audit_cmd"),)
    + tuple((name, "approvals") for name in ("pending", "approve", "deny", "watch")),
}


def _leading_words(argv: Sequence[str], count: int) -> list[str] | None:
    """Up to `count` first words of `argv` that are neither global flags nor their values; None
    when `--`, -h or --help comes first (the whole tree then decides)."""
    from cmdop.cli import common

    takes_value = {opt for action in common.GLOBAL_FLAGS._actions if action.nargs != 0
                   for opt in action.option_strings}
    words: list[str] = []
    i = 0
    while i < len(argv) and len(words) < count:
        arg = argv[i]
        if arg == "--" or arg in ("-h", "--help"):
            return None
        if arg.startswith("-"):
            i += 2 if arg in takes_value else 1
            continue
        words.append(arg)
        i += 1
    return words


def command_of(argv: Sequence[str]) -> str | None:
    """The top-level command `argv` names (skipping global flags and their values); None when
    there is none or it is not one of COMMANDS (the whole tree then decides)."""
    words = _leading_words(argv, 1)
    known = {name for name, _ in COMMANDS}
    return words[0] if words and words[0] in known else None


def subcommand_of(argv: Sequence[str]) -> str | None:
    """The command of a group (`check` in `permissions check`) `argv` names, skipping global
    flags and their values; None when there is none or it is not in GROUP_COMMANDS."""
    words = _leading_words(argv, 2)
    if not words or len(words) < 2 or words[0] not in GROUP_COMMANDS:
        return None
    return words[1] if words[1] in dict(GROUP_COMMANDS[words[0]]) else None


def build_parser(only: str | None = None, sub_only: str | None = None) -> argparse.ArgumentParser:
    """The argparse tree: every command, or only the command `only` (and whatever else its
    modules register); for a group, only its command `sub_only` when given. Command modules
    load nothing heavy at import."""
    import argparse
    import importlib

    from cmdop.cli import common

    parser: argparse.ArgumentParser = common.Parser(
        prog="cmdop",
        description="Run tools on this machine for remote callers, through a permission gate.",
        parents=[common.GLOBAL_FLAGS], formatter_class=common.Formatter,
    )
    parser.add_argument("--version", action="version", version=f"cmdop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    done: set[str] = set()
    for name, modules in COMMANDS:
        if only is not None and name != only:
            continue
        target = common.add_group(sub, name, GROUPS[name]) if name in GROUPS else sub
        owners = dict(GROUP_COMMANDS.get(name, ()))
        if sub_only in owners:
            importlib.import_module(f"cmdop.cli.{owners[sub_only]}").register(target, only=sub_only)
            continue
        for module in modules:
            if module in done and name not in GROUPS:
                continue  # registered with an earlier command of the same module
            done.add(module)
            importlib.import_module(f"cmdop.cli.{module}").register(target)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one cmdop command and return its exit status."""
    from cmdop.cli import common, preflight
    from cmdop.core.errors import CmdopError

    try:  # a zipapp run by another CPython than it was built for: one line, before anything
        preflight.check_interpreter()
    except CmdopError as exc:
        return _report(exc)
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(command_of(words), subcommand_of(words))
    args = parser.parse_args(argv)  # argparse prints usage and exits 2 on bad usage
    log_level = getattr(args, "log_level", None) or "warning"
    func = getattr(args, "func", None)
    if func is None:
        parser.print_usage(sys.stderr)
        print("cmdop: error: a command is required (see cmdop --help)", file=sys.stderr)
        return 2
    try:
        # A daemon binds exactly what its environment says; every other command may find the
        # system service's agent (cmdop.adapters.service_paths).
        daemon = getattr(args, "command", None) == "agent" and getattr(args, "agent_command", None) == "run"
        if daemon:  # never READY without a gate, an audit log and a sandbox that can load
            preflight.check_agent_parts()
        ctx = common.CliContext(
            settings=common.current_settings(discover=not daemon),
            json=bool(getattr(args, "json", False)),
            log_level=log_level,
            log_format=getattr(args, "log_format", None) or "text",
            stdout=sys.stdout, stderr=sys.stderr,  # today's streams, not those at import time
        )
        return int(func(args, ctx))
    except CmdopError as exc:
        if log_level == "debug":
            _print_traceback()
        return _report(exc)
    except KeyboardInterrupt:
        print("cmdop: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - one line for the user, trace only on request
        if log_level == "debug":
            _print_traceback()
        if isinstance(exc, OSError) and isinstance(exc.filename, (str, bytes)):
            # The machine refused a path the user controls (a file where a directory should
            # be, a directory they cannot write): not a bug; name the path and what to do.
            return _report(os_error(exc))
        native = preflight.native_import_error(exc)
        if native is not None:  # not a bug: a native module this Python cannot load
            return _report(native)
        print(f"cmdop: error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: re-run with --log-level debug for a traceback, and report it", file=sys.stderr)
        return 1


# What to do about a path the system refused, by errno (the rest: "check PATH").
_OS_HINTS = {
    errno.EISDIR: "{path} is a directory where a file is expected: move it away, or point cmdop "
                  "at the file (see `cmdop permissions path`)",
    errno.ENOTDIR: "a part of {path} is a file where a directory is expected: move it away, or "
                   "set the CMDOP_* path variable (see `cmdop permissions path`)",
    errno.EEXIST: "{path} is in the way (a file where a directory is expected?): move it away",
    errno.EACCES: "check the owner and mode of {path} and its directories (ls -ld), or run as "
                  "the user they belong to",
    errno.EPERM: "check the owner and mode of {path} and its directories (ls -ld), or run as "
                 "the user they belong to",
    errno.EROFS: "{path} is on a read-only file system: point the CMDOP_* path variables "
                 "elsewhere (see `cmdop permissions path`)",
    errno.ENOSPC: "free some space on the file system holding {path}",
    errno.ENAMETOOLONG: "use a shorter path",
}


def os_error(exc: OSError) -> "CmdopError":
    """A refused file operation as a user error: what, on which path, and what to do."""
    from cmdop.core.errors import CmdopError

    path = os.fsdecode(exc.filename)
    what = exc.strerror or type(exc).__name__
    hint = _OS_HINTS.get(exc.errno or 0, "check {path}").format(path=path)
    return CmdopError(f"{path}: {what}", hint)


def _print_traceback() -> None:
    import traceback  # only on request: ~2 ms of imports every start otherwise

    traceback.print_exc()


def _report(exc: "CmdopError") -> int:
    """Print a CmdopError the one way the CLI prints errors; its exit status."""
    print(f"cmdop: error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)
    return exc.exit_code


def entry() -> None:
    """Console-script entry point."""
    if sys.argv[1:] == ["--version"]:  # the one call scripts make in a loop; skip building the CLI
        print(f"cmdop {__version__}")
        sys.exit(0)
    if sys.argv[1:2] == ["exec"]:
        # Through the local agent's relay link when it can (no argparse tree, no grpc); else
        # the full CLI below handles the same arguments.
        from cmdop.cli import fast_exec

        code = fast_exec.run(sys.argv[2:])
        if code is not None:
            sys.exit(code)
    sys.exit(main())
