"""The command line: parse, dispatch, and the one place errors are printed.

Exit status: 0 ok · 1 error · 2 usage · 3 denied · 4 auth · 5 unreachable. An error prints one
line `cmdop: error: WHAT` on stderr and a hint line; a traceback only with `--log-level debug`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Sequence

from cmdop import __version__

if TYPE_CHECKING:
    import argparse

    from cmdop.core.errors import CmdopError

# Module-level imports stay minimal: `cmdop --version` is timed against `python -c pass`
# (bench/startup.py); everything else is imported by the functions that need it.


def build_parser() -> argparse.ArgumentParser:
    """The full argparse tree. Command modules are imported here but load nothing heavy."""
    import argparse

    from cmdop.cli import (agent_cmd, approvals, audit_cmd, common, doctor_cmd, permissions, run_cmd,
                           version_cmd)
    from cmdop.cli import connect_cmd, login_cmd, password_cmd, relay_cmd, remote_cmd

    parser = argparse.ArgumentParser(
        prog="cmdop",
        description="Run tools on this machine for remote callers, through a permission gate.",
        parents=[common.GLOBAL_FLAGS],
    )
    parser.add_argument("--version", action="version", version=f"cmdop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    version_cmd.register(sub)
    run_cmd.register(sub)
    perms = common.add_group(sub, "permissions", "inspect and change the permission gate")
    permissions.register(perms)
    audit_cmd.register(perms)
    approvals.register(perms)
    agent_cmd.register(sub)
    doctor_cmd.register(sub)
    relay_cmd.register(sub)
    connect_cmd.register(sub)
    login_cmd.register(sub)
    remote_cmd.register(sub)
    password_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one cmdop command and return its exit status."""
    import traceback

    from cmdop.cli import common, preflight
    from cmdop.core.errors import CmdopError

    try:  # a zipapp run by another CPython than it was built for: one line, before anything
        preflight.check_interpreter()
    except CmdopError as exc:
        return _report(exc)
    parser = build_parser()
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
            traceback.print_exc()
        return _report(exc)
    except KeyboardInterrupt:
        print("cmdop: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug of ours: say so in one line, trace only on request
        if log_level == "debug":
            traceback.print_exc()
        native = preflight.native_import_error(exc)
        if native is not None:  # not a bug: a native module this Python cannot load
            return _report(native)
        print(f"cmdop: error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: re-run with --log-level debug for a traceback, and report it", file=sys.stderr)
        return 1


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
