"""`cmdop version`: print the version."""

from __future__ import annotations

import argparse

from cmdop import __version__
from cmdop.cli.common import CliContext, add_command


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    add_command(sub, "version", "print the version", _run)


def _run(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.emit({"version": __version__}, f"cmdop {__version__}")
    return 0
