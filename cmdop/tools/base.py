"""What every tool receives besides its input, and the helpers they share.

A tool is `fn(tool_input, env) -> dict | list`. It raises `BadInput` (or another ToolError,
FloorDenied, OSError) for the registry to turn into an error result; it never prints.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from cmdop.core.calls import CallerKind
from cmdop.core.errors import ToolError

# Called with ("stdout"|"stderr", bytes) as output arrives, for streaming to a remote caller.
ChunkFn = Callable[[str, bytes], None]


class BadInput(ToolError):
    """The tool input is malformed (missing field, wrong type, value out of range); `field`
    names the input field at fault (the result carries it, as the tool-input contract says)."""

    kind = "bad_input"

    def __init__(self, message: str, field: str = "input") -> None:
        super().__init__(message)
        self.field = field


@dataclass
class ToolEnv:
    """The facts a tool runs with. `home` is what `~` means; `cwd` resolves relative paths."""

    home: str
    cwd: str
    caller_kind: CallerKind = CallerKind.LOCAL
    sandbox: Any = None                      # cmdop.adapters.launcher.Sandbox, or None: no seccomp
    api_key: str | None = None               # scrubbed from children's environment
    cancel: threading.Event | None = None
    on_chunk: ChunkFn | None = None
    sandbox_required_for_local: bool = False  # local callers may run unsandboxed (with a warning)
    sandbox_required_for_remote: bool = True  # remote/self callers are refused without seccomp
    warn: Callable[[str], None] | None = None


def get_str(tool_input: Mapping[str, Any], key: str, required: bool = True, default: str = "") -> str:
    """Field `key` as a string; BadInput when it is missing (and required) or not a string."""
    value = tool_input.get(key)
    if value is None:
        if required:
            raise BadInput(f"missing required field {key!r}", key)
        return default
    if not isinstance(value, str):
        raise BadInput(f"field {key!r} must be a string", key)
    if "\x00" in value:
        raise BadInput(f"field {key!r} contains a NUL byte", key)
    return value


def get_int(tool_input: Mapping[str, Any], key: str, default: int | None,
            lo: int, hi: int) -> int | None:
    """Field `key` as an int within [lo, hi]; BadInput otherwise. Booleans are not ints here."""
    value = tool_input.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"field {key!r} must be an integer", key)
    if not lo <= value <= hi:
        raise BadInput(f"field {key!r} must be between {lo} and {hi}", key)
    return value
