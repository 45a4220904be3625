"""`cmdop run TOOL --input JSON [--cwd DIR]`: one tool call as a local caller.

Goes through the daemon when one is listening on the local socket, else runs in-process through
`cmdop.pipeline.handle_call` (gate -> audit -> tool). Prints the result as ONE JSON document on
stdout. Exit 0 when the tool ran (whatever a command's own exit code), 3 with the
permission_denied object on stdout when denied, 2 for input that is not a JSON object or an
unknown TOOL (the usage error lists the tools), 1 (with the {"error": kind, "message": ...}
object on stdout and `cmdop: error: TOOL: MESSAGE` on stderr) when the tool itself failed,
e.g. a missing file.

Bad input is its own outcome (cmdop.core.tool_input, checked here and again by the pipeline
for every caller), before the gate sees the call: a missing required field or one of the wrong
type gives {"error": "bad_input", "field": F, "message": ..., "tool": T} on stdout,
`cmdop: error: bad input for T: ...` naming the field on stderr, exit 1 (never a floor denial).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from cmdop.cli.common import CliContext, add_command
from cmdop.core.errors import UsageError
from cmdop.core.tool_input import FIELDS, TOOLS, problem


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


def _check_tool(tool: str) -> None:
    if tool not in TOOLS:
        raise UsageError(f"unknown tool {tool!r} (tools: {', '.join(TOOLS)})",
                         hint="e.g. cmdop run execute_command --input '{\"command\": \"uptime\"}'")


def _local_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def handle(args: argparse.Namespace, ctx: CliContext) -> int:
    _check_tool(args.tool)
    tool_input = _parse_input(args.input)
    cwd = os.path.abspath(args.cwd) if args.cwd else os.getcwd()
    if not os.path.isdir(cwd):
        raise UsageError(f"--cwd is not a directory: {cwd}")
    malformed = problem(args.tool, tool_input)
    if malformed is not None:
        return report_bad_input(malformed, ctx)

    from cmdop.daemon.client import connect_if_running

    client = connect_if_running(ctx.settings)
    if client is not None:
        with client:
            result = client.call_tool(args.tool, tool_input, cwd)
    else:
        result = _in_process(args.tool, tool_input, cwd, ctx)
    if isinstance(result, dict) and result.get("error") == "bad_input":
        return report_bad_input(result, ctx)
    return report_result(result, ctx)


def report_result(result: Any, ctx: CliContext) -> int:
    """Print a tool's result document (stdout) and, when the tool failed, the one error line
    every failing cmdop command gives (stderr; a denial speaks for itself on stdout). The exit
    status: 0 the tool ran, 3 denied, 1 the tool could not do its job (missing file, no
    sandbox). The result may come from another machine: its text is escaped for the terminal."""
    print(json.dumps(result, ensure_ascii=False), file=ctx.stdout)
    if isinstance(result, dict) and "error" in result:
        if result["error"] != "permission_denied":
            from cmdop.core.display import escaped

            print(f"cmdop: error: {escaped(result.get('tool'), 64)}: "
                  f"{escaped(str(result.get('message') or result['error']), 500)}", file=ctx.stderr)
        return 3 if result["error"] == "permission_denied" else 1
    return 0


def report_bad_input(result: dict[str, Any], ctx: CliContext) -> int:
    """Print a bad_input result (stdout) and its error line naming the field (stderr); exit 1.
    The result may come from another machine's agent: its text is escaped for the terminal."""
    from cmdop.core.display import escaped

    print(json.dumps(result, ensure_ascii=False), file=ctx.stdout)
    field, message = result.get("field"), str(result.get("message"))
    where = f" (field {field!r})" if field and f"{field!r}" not in message else ""
    print(f"cmdop: error: bad input for {escaped(result.get('tool'), 64)}: "
          f"{escaped(message, 500)}{escaped(where, 100)}", file=ctx.stderr)
    fields = FIELDS.get(str(result.get("tool")))
    if fields:
        takes = ", ".join(name + ("" if required else "?") for name, (_, required) in fields.items())
        print(f"hint: {result.get('tool')} takes {{{takes}}} (? = optional)", file=ctx.stderr)
    return 1


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
