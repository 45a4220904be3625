"""Shared pieces of the command line: the context handed to every command, global flags that may
stand before or after the subcommand, and output helpers.

Command modules register themselves with `register(subparsers)` and set `func=handler` where
`handler(args, ctx) -> int`. Handlers raise `CmdopError`s; they never print errors or call exit.
Command modules import heavy dependencies inside handlers, not at module level, so that
`cmdop --version` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from cmdop.core.settings import Settings
from cmdop.core.value import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing itself is a start-up cost: annotations only)
    from typing import Any, Callable, NoReturn, TextIO

    Handler = Callable[[argparse.Namespace, "CliContext"], int]


class CliContext(Frozen):
    """What every command handler receives besides its arguments."""

    FIELDS = ("settings", "json", "log_level", "log_format", "stdout", "stderr")
    settings: Settings
    json: bool
    log_level: str
    log_format: str
    stdout: TextIO
    stderr: TextIO

    def __init__(self, settings: Settings, json: bool, log_level: str, log_format: str,
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self._set(settings=settings, json=json, log_level=log_level, log_format=log_format,
                  stdout=sys.stdout if stdout is None else stdout,
                  stderr=sys.stderr if stderr is None else stderr)

    def emit(self, obj: Any, human: Callable[[Any], str] | str | None = None) -> None:
        """Print `obj` as one JSON document under --json, else the human rendering."""
        if self.json or human is None:
            import json  # here, not at module level: most commands print no JSON

            print(json.dumps(obj, ensure_ascii=False, sort_keys=False), file=self.stdout)
        else:
            text = human(obj) if callable(human) else human
            if text:
                print(text, file=self.stdout)

    def note(self, text: str) -> None:
        """A progress or status line for a person; goes to stderr so stdout stays parseable."""
        print(text, file=self.stderr)


def terminal_columns() -> int:
    """The terminal's width as shutil.get_terminal_size() reports it ($COLUMNS, else stdout's
    terminal, else 80), without importing shutil."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class Formatter(argparse.HelpFormatter):
    """argparse's help formatter, sized as argparse sizes it. Every parser of the CLI uses it:
    argparse builds a formatter on each add_argument, and its own sizing imports shutil (with
    bz2 and lzma, ~3 ms of every command's start)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         terminal_columns() - 2 if width is None else width)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error never repeats a secret: a key typed where a command or a
    `-` was expected is echoed by argparse ("invalid choice: 'cmdop_…'") into terminals, logs
    and CI output. Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        from cmdop.core.redact import redact

        # The usage of the (sub)command, then the one error line every cmdop error has
        # (`cmdop: error: …`, whichever subcommand found it), exit 2.
        self.print_usage(sys.stderr)
        self.exit(2, f"cmdop: error: {redact(message)[0]}\n")


def global_flags_parser() -> argparse.ArgumentParser:
    """Flags accepted before the subcommand and after it (`cmdop --json x` == `cmdop x --json`)."""
    p = argparse.ArgumentParser(add_help=False, formatter_class=Formatter)
    # SUPPRESS: a subcommand that does not see the flag must not reset what the top level parsed.
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   default=argparse.SUPPRESS, help="log verbosity (debug also shows tracebacks)")
    p.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS,
                   help="log line format on stderr")
    return p


GLOBAL_FLAGS = global_flags_parser()


def add_command(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str,
                help: str, handler: Handler | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    """Add a subcommand that also accepts the global flags; `handler` runs it."""
    kwargs.setdefault("formatter_class", Formatter)
    parser = subparsers.add_parser(name, help=help, description=help, parents=[GLOBAL_FLAGS], **kwargs)
    if handler is not None:
        parser.set_defaults(func=handler)
    return parser


def add_group(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str,
              help: str) -> "argparse._SubParsersAction[argparse.ArgumentParser]":
    """Add a command group (`cmdop permissions ...`) and return its subparsers."""
    parser = add_command(subparsers, name, help)
    group = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    parser.set_defaults(func=_group_help(parser))
    return group


def _group_help(parser: argparse.ArgumentParser) -> Handler:
    def handler(args: argparse.Namespace, ctx: CliContext) -> int:
        parser.print_usage(sys.stderr)
        print(f"cmdop: error: {parser.prog} needs a command (see {parser.prog} --help)", file=sys.stderr)
        return 2
    return handler


def current_settings(discover: bool = True) -> Settings:
    """Settings for this process, from its environment. With `discover`, a root shell with no
    CMDOP_* path override finds the system service's agent (cmdop.adapters.service_paths)."""
    from cmdop.adapters.service_paths import account_home

    settings = Settings.from_env(os.environ, account_home())
    if discover:
        from cmdop.adapters.service_paths import discover as discover_service

        settings = discover_service(settings, os.environ)
    return settings
