"""What each tool's input must hold, checked before admission and the gate. Pure.

`problem(tool, tool_input)` is None for a well-formed call, else the result the caller gets:
- an unknown tool name: {"error": "unknown_tool", "message", "tool", "tools": [...]};
- a missing required field, a field of the wrong type, a NUL byte in a string or a string that
  is not Unicode text (a lone surrogate), a blank target (the field the gate judges), an
  integer out of its range (RANGES), `end` before `start`, an unknown `encoding`, `content`
  that is not the base64 it says, a grep `pattern` that is not a regular expression:
  {"error": "bad_input", "field", "message", "tool"}.
A mistake in the input is not a denial: such a call is never judged by the floor (which would
report it as `source: floor`), never audited as a decision, never run. The pipeline checks every
call (local, self, remote, guest); `cmdop run` checks first to exit 1/2 without starting anything.

FIELDS mirrors what the tools read (cmdop.tools, get_str/get_int); tests/unit/test_tool_input.py
checks the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping

from cmdop.core.calls import TOOL_TARGET_FIELD

TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing itself is a start-up cost: the check path imports this module)
    from typing import Any

# tool -> field -> (type, required)
FIELDS: Mapping[str, Mapping[str, tuple[type, bool]]] = {
    "execute_command": {"command": (str, True), "timeout_ms": (int, False), "cwd": (str, False)},
    "read_file": {"path": (str, True), "start": (int, False), "end": (int, False)},
    "write_file": {"path": (str, True), "content": (str, True), "encoding": (str, False)},
    "list_dir": {"path": (str, True)},
    "grep": {"pattern": (str, True), "path": (str, True), "glob": (str, False),
             "max_results": (int, False)},
    "glob": {"pattern": (str, True), "cwd": (str, False)},
}
TOOLS: tuple[str, ...] = tuple(FIELDS)
# The tools' limits, checked here before the gate and again by the tools (get_int).
MAX_TIMEOUT_MS = 600_000
MAX_LINE = 1 << 62
GREP_MAX_RESULTS = 1000
# tool -> integer field -> (lowest, highest)
RANGES: Mapping[str, Mapping[str, tuple[int, int]]] = {
    "execute_command": {"timeout_ms": (1, MAX_TIMEOUT_MS)},
    "read_file": {"start": (1, MAX_LINE), "end": (1, MAX_LINE)},
    "grep": {"max_results": (1, GREP_MAX_RESULTS)},
}


def problem(tool: str, tool_input: object, *, target_only: bool = False) -> dict[str, Any] | None:
    """The unknown_tool or bad_input result for this call, or None when it is well formed (see
    the module docstring). Fields the table does not name are left to the tool. `target_only`:
    only the field the gate judges (a dry run — `permissions check --batch` — gives the target
    alone, e.g. a write_file path without content), and a tool the gate knows but this agent
    does not serve is the gate's to judge (rules may name it)."""
    fields = FIELDS.get(tool)
    if fields is None and target_only:
        return None
    if fields is None:
        return {"error": "unknown_tool", "tool": tool, "tools": list(TOOLS),
                "message": f"unknown tool {tool!r} (tools: {', '.join(TOOLS)})"}
    if not isinstance(tool_input, Mapping):
        return _bad(tool, "input", "the tool input must be a JSON object")
    for name, (kind, required) in fields.items():
        if target_only and name != TOOL_TARGET_FIELD.get(tool):
            continue
        value = tool_input.get(name)
        if value is None:
            if required:
                return _bad(tool, name, f"missing required field {name!r}")
            continue
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                return _bad(tool, name, f"field {name!r} must be an integer")
            lo, hi = RANGES.get(tool, {}).get(name, (value, value))
            if not lo <= value <= hi:
                return _bad(tool, name, f"field {name!r} must be between {lo} and {hi}")
        if kind is str:
            if not isinstance(value, str):
                return _bad(tool, name, f"field {name!r} must be a string")
            if "\x00" in value:
                return _bad(tool, name, f"field {name!r} contains a NUL byte")
            if not is_text(value):
                return _bad(tool, name, f"field {name!r} is not Unicode text (it holds half of a "
                                        "surrogate pair)")
            if name == TOOL_TARGET_FIELD.get(tool) and not value.strip():
                return _bad(tool, name, f"field {name!r} is empty")
    if target_only:
        return None
    return _value_problem(tool, tool_input)


def _value_problem(tool: str, tool_input: Mapping[str, Any]) -> dict[str, Any] | None:
    """What is wrong with well-typed fields taken together, or None (the tools check the same)."""
    if tool == "read_file":
        start, end = tool_input.get("start") or 1, tool_input.get("end")
        if end is not None and end < start:
            return _bad(tool, "end", "'end' must not be smaller than 'start'")
    elif tool == "write_file":
        encoding = tool_input.get("encoding") or "utf-8"
        if encoding not in ("utf-8", "base64"):
            return _bad(tool, "encoding", "'encoding' must be 'utf-8' or 'base64'")
        if encoding == "base64":
            import base64
            import binascii

            try:
                base64.b64decode(tool_input.get("content") or "", validate=True)
            except (binascii.Error, ValueError):
                return _bad(tool, "content", "'content' is not valid base64")
    elif tool == "grep":
        import re

        try:
            re.compile(tool_input["pattern"])
        except (re.error, RecursionError, OverflowError) as exc:
            return _bad(tool, "pattern", f"bad regular expression: {exc}")
    return None


def is_text(value: str) -> bool:
    """Is `value` Unicode text, which any file, argument or UTF-8 byte string can hold? (JSON
    and YAML escapes can make half of a surrogate pair, which none can.)"""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bad(tool: str, field: str, message: str) -> dict[str, Any]:
    return {"error": "bad_input", "field": field, "message": message, "tool": tool}
