"""The shapes every layer passes around for one tool call: who calls, what they ask.

Frozen values only. The gate (`core/policy/gate.py`) turns (ToolCall, Caller, policy) into a
`Decision`; the pipeline runs the tool; the audit record is built from all three.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

# Tool name -> which input field the gate matches and the floor checks.
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
    """Who is calling. `self` and `remote` are only ever stamped by the relay, never taken from
    what a caller claims."""

    LOCAL = "local"     # same Unix user over the local socket, or cmdop on the box itself
    SELF = "self"       # relay-verified: the agent's own principal, from one of its enrolled machines
    REMOTE = "remote"   # anyone else authenticated in the workspace
    GUEST = "guest"     # a share token: always gated in full, limited to the share's tools


@dataclass(frozen=True)
class Caller:
    """The principal behind a call. For a relay call every field is what the relay verified:
    `user` the account or key name, `hostname`/`machine_id` the caller's machine only when the
    call came through that machine's own enrolled agent link (else empty). `credential` is how
    the caller proved who it is (`unix` for the local socket, `api_key`, `oauth`, `share`).
    `tools` is a guest's tool subset: a guest may use only these (none when empty); `note` the
    share's note, audited with `share_id` so the owner can tell whose guest call it was.
    `password_ok`: the caller presented a valid machine-password session (set by the agent
    after checking the token, never taken from what a caller claims; admission PasswordSession).
    `user` and `hostname` go to the audit record's fixed fields; the rest to its `caller`."""

    kind: CallerKind
    user: str = ""
    hostname: str = ""
    workspace: str = ""
    credential: str = ""
    machine_id: str = ""
    share_id: str = ""
    tools: tuple[str, ...] = ()
    password_ok: bool = False
    note: str = ""

    def audit_fields(self) -> dict[str, str]:
        """The principal as the audit line's extra `caller` object: only the fields that are set
        (a local call has just its kind and credential)."""
        out = {"kind": self.kind.value, "workspace": self.workspace, "credential": self.credential,
               "machine_id": self.machine_id, "share_id": self.share_id, "note": self.note}
        if self.tools:
            out["tools"] = ",".join(self.tools)
        return {k: v for k, v in out.items() if v}


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
