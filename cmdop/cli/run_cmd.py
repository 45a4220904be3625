"""`cmdop run TOOL --input JSON [--cwd DIR]`: one tool call as a local caller.

Goes through the daemon when one is listening on the local socket, else runs in-process through
`cmdop.pipeline.handle_call` (gate -> audit -> tool). Prints the result as ONE JSON document on
stdout. Exit 0 when the tool ran (whatever a command's own exit code), 3 with the
permission_denied object on stdout when denied, 2 for input that is not a JSON object, 1 (with
the {"error": kind, "message": ...} object on stdout) when the tool itself failed, e.g. a
missing file or bad input.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from cmdop.cli.common import CliContext, add_command
from cmdop.core.errors import UsageError


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `cmdop run`."""
    p = add_command(sub, "run", "run one tool as a local caller (gate, audit, sandbox apply)",
                    handler=handle)
    p.add_argument("tool", metavar="TOOL",
                   help="execute_command, read_file, write_file, list_dir, grep or glob")
    p.add_argument("--input", default="{}", metavar="JSON", help="the tool input as a JSON object")
    p.add_argument("--cwd", default=None, metavar="DIR",
                   help="directory relative paths resolve against (default: the current one)")


def _parse_input(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--input is not valid JSON: {exc}",
                         hint='pass an object, e.g. --input \'{"command": "uptime"}\'') from None
    if not isinstance(value, dict):
        raise UsageError("--input must be a JSON object", hint='e.g. --input \'{"path": "README.md"}\'')
    return value


def _local_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def handle(args: argparse.Namespace, ctx: CliContext) -> int:
    tool_input = _parse_input(args.input)
    cwd = os.path.abspath(args.cwd) if args.cwd else os.getcwd()
    if not os.path.isdir(cwd):
        raise UsageError(f"--cwd is not a directory: {cwd}")

    from cmdop.daemon.client import connect_if_running

    client = connect_if_running(ctx.settings)
    if client is not None:
        with client:
            result = client.call_tool(args.tool, tool_input, cwd)
    else:
        result = _in_process(args.tool, tool_input, cwd, ctx)
    print(json.dumps(result, ensure_ascii=False), file=ctx.stdout)
    if isinstance(result, dict) and "error" in result:
        # Denied -> 3; the tool could not do its job (bad input, missing file, no sandbox) -> 1.
        return 3 if result["error"] == "permission_denied" else 1
    return 0


def _in_process(tool: str, tool_input: dict[str, Any], cwd: str, ctx: CliContext) -> Any:
    import socket

    from cmdop.core.calls import Caller, CallerKind, ToolCall
    from cmdop.pipeline import handle_call, make_context

    hostname = socket.gethostname()
    call_ctx = make_context(ctx.settings, hostname=hostname)
    try:
        caller = Caller(kind=CallerKind.LOCAL, user=_local_user(), hostname=hostname)
        return handle_call(ToolCall(tool=tool, input=tool_input, cwd=cwd), caller, call_ctx)
    finally:
        call_ctx.close()
