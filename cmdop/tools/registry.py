"""The tool table and `run_tool`: one call in, one JSON-able result out, never an exception.

`run_tool` runs the TOOL only; the gate and the audit are `cmdop.pipeline.handle_call`'s job.
Errors become result objects a remote caller can read:
  {"error": "<kind>", "message": "...", "tool": "..."} with kind one of
  bad_input, not_found, is_a_directory, not_a_directory, os_permission, symlink_refused,
  agent_private, sandbox_unavailable, os_error, internal_error;
  a floor hit found while opening (the path actually opened is on the floor) gives the
  permission_denied object with source "floor".
"""

from __future__ import annotations

import errno
import logging
from typing import Any, Callable, Mapping

from cmdop.adapters import safe_open
from cmdop.core.calls import ToolCall
from cmdop.core.errors import SandboxUnavailableError, ToolError
from cmdop.tools.base import BadInput, ToolEnv
from cmdop.tools.execute_command import execute_command
from cmdop.tools.files import list_dir, read_file, write_file
from cmdop.tools.search import glob, grep

log = logging.getLogger("cmdop.tools")

ToolFn = Callable[[Mapping[str, Any], ToolEnv], Any]

TOOLS: Mapping[str, ToolFn] = {
    "execute_command": execute_command,
    "read_file": read_file,
    "write_file": write_file,
    "list_dir": list_dir,
    "grep": grep,
    "glob": glob,
}

_OS_KINDS = {
    errno.ENOENT: "not_found",
    errno.EISDIR: "is_a_directory",
    errno.ENOTDIR: "not_a_directory",
    errno.EACCES: "os_permission",
    errno.EPERM: "os_permission",
}


def floor_denied_result(tool: str, target: str, reason: str) -> dict[str, Any]:
    """The permission_denied object for a floor hit found by a tool itself."""
    return {"error": "permission_denied", "tool": tool, "target": target, "decision": "deny",
            "source": "floor", "rule_id": "", "reason": reason}


def error_result(kind: str, message: str, tool: str) -> dict[str, Any]:
    return {"error": kind, "message": message, "tool": tool}


def run_tool(call: ToolCall, env: ToolEnv) -> Any:
    """Run `call.tool` with `call.input` in `env`; a dict or list result, or an error dict.

    Does not consult the gate: callers must have allowed the call first.
    """
    fn = TOOLS.get(call.tool)
    if fn is None:
        return error_result("unknown_tool", f"no such tool: {call.tool}", call.tool)
    if not isinstance(call.input, Mapping):
        return dict(error_result("bad_input", "the tool input must be a JSON object", call.tool),
                    field="input")
    try:
        return fn(call.input, env)
    except safe_open.FloorDenied as exc:
        return floor_denied_result(call.tool, exc.path, exc.reason)
    except safe_open.SymlinkRefused as exc:
        return error_result("symlink_refused", exc.message, call.tool)
    except SandboxUnavailableError as exc:
        out = error_result("sandbox_unavailable", exc.message, call.tool)
        if exc.hint:
            out["hint"] = exc.hint
        return out
    except ToolError as exc:
        out = error_result(getattr(exc, "kind", "tool_error"), exc.message, call.tool)
        if isinstance(exc, BadInput):
            out["field"] = exc.field
        return out
    except OSError as exc:
        kind = _OS_KINDS.get(exc.errno or 0, "os_error")
        where = f"{exc.filename}: " if exc.filename else ""
        return error_result(kind, f"{where}{exc.strerror or exc}", call.tool)
    except Exception as exc:  # a bug of ours: the caller gets a structured result, not a trace
        log.exception("tool %s failed", call.tool)
        return error_result("internal_error", f"{type(exc).__name__}: {exc}", call.tool)
