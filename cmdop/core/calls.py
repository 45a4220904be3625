"""The shapes every layer passes around for one tool call: who calls, what they ask.

Frozen values only. The gate (`core/policy/gate.py`) turns (ToolCall, Caller, policy) into a
`Decision`; the pipeline runs the tool; the audit record is built from all three.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

# Tool name -> which input field the gate matches and the floor checks (CONTRACT §4).
TOOL_TARGET_FIELD: Mapping[str, str] = {
    "execute_command": "command",
    "read_file": "path",
    "write_file": "path",
    "list_dir": "path",
    "grep": "path",
    "glob": "pattern",
    "download_file": "destination",
    "connect": "hostname",
    "ssh_session": "hostname",
    "ask_agent": "hostname",
}


class CallerKind(str, Enum):
    """Who is calling, as CONTRACT §4 defines it."""

    LOCAL = "local"     # same Unix user over the local socket, or cmdop on the box itself
    SELF = "self"       # relay-verified: the agent's own user from one of their machines
    REMOTE = "remote"   # anyone else, share-link guests included


@dataclass(frozen=True)
class Caller:
    """The identity behind a call. `user` and `hostname` go to the audit record."""

    kind: CallerKind
    user: str = ""
    hostname: str = ""


@dataclass(frozen=True)
class ToolCall:
    """One request to run a tool. `input` is the full JSON input as received."""

    tool: str
    input: Mapping[str, Any] = field(default_factory=dict)
    operation: str = ""
    cwd: str = ""      # directory relative paths resolve against; "" means the agent's cwd


def command_dir(tool_input: Mapping[str, Any], call_cwd: str) -> str:
    """The directory an execute_command call runs in, before canonicalisation: the input's `cwd`
    when it is a non-empty string (relative to `call_cwd`, `~` its owner's home), else
    `call_cwd`. The gate and the tool both use this one answer, so a command is judged in the
    directory it runs in."""
    raw = tool_input.get("cwd") if isinstance(tool_input, Mapping) else None
    return raw if isinstance(raw, str) and raw else call_cwd
