"""The shapes every layer passes around for one tool call: who calls, what they ask.

Frozen values only. The gate (`core/policy/gate.py`) turns (ToolCall, Caller, policy) into a
`Decision`; the pipeline runs the tool; the audit record is built from all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from cmdop.core.value import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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


class Caller(Frozen):
    """The principal behind a call. For a relay call every field is what the relay verified:
    `user` the account or key name, `hostname`/`machine_id` the caller's machine only when the
    call came through that machine's own enrolled agent link (else empty). `credential` is how
    the caller proved who it is (`unix` for the local socket, `api_key`, `oauth`, `share`).
    `tools` is a guest's tool subset: a guest may use only these (none when empty); `note` the
    share's note, audited with `share_id` so the owner can tell whose guest call it was.
    `password_ok`: the caller presented a valid machine-password session (set by the agent
    after checking the token, never taken from what a caller claims; admission PasswordSession).
    `user` and `hostname` go to the audit record's fixed fields; the rest to its `caller`."""

    FIELDS = ("kind", "user", "hostname", "workspace", "credential", "machine_id", "share_id",
              "tools", "password_ok", "note")
    kind: CallerKind
    user: str
    hostname: str
    workspace: str
    credential: str
    machine_id: str
    share_id: str
    tools: tuple[str, ...]
    password_ok: bool
    note: str

    def __init__(self, kind: CallerKind, user: str = "", hostname: str = "", workspace: str = "",
                 credential: str = "", machine_id: str = "", share_id: str = "",
                 tools: tuple[str, ...] = (), password_ok: bool = False, note: str = "") -> None:
        self._set(kind=kind, user=user, hostname=hostname, workspace=workspace,
                  credential=credential, machine_id=machine_id, share_id=share_id, tools=tools,
                  password_ok=password_ok, note=note)

    def audit_fields(self) -> dict[str, str]:
        """The principal as the audit line's extra `caller` object: only the fields that are set
        (a local call has just its kind and credential)."""
        out = {"kind": self.kind.value, "workspace": self.workspace, "credential": self.credential,
               "machine_id": self.machine_id, "share_id": self.share_id, "note": self.note}
        if self.tools:
            out["tools"] = ",".join(self.tools)
        return {k: v for k, v in out.items() if v}


_NO_INPUT: Mapping[str, Any] = {}  # the default: each call without an input gets its own dict


class ToolCall(Frozen):
    """One request to run a tool. `input` is the full JSON input as received; `cwd` the
    directory relative paths resolve against ("" means the agent's cwd)."""

    FIELDS = ("tool", "input", "operation", "cwd")
    tool: str
    input: Mapping[str, Any]
    operation: str
    cwd: str

    def __init__(self, tool: str, input: Mapping[str, Any] = _NO_INPUT, operation: str = "",
                 cwd: str = "") -> None:
        self._set(tool=tool, input={} if input is _NO_INPUT else input, operation=operation,
                  cwd=cwd)


def command_dir(tool_input: Mapping[str, Any], call_cwd: str) -> str:
    """The directory an execute_command call runs in, before canonicalisation: the input's `cwd`
    when it is a non-empty string (relative to `call_cwd`, `~` its owner's home), else
    `call_cwd`. The gate and the tool both use this one answer, so a command is judged in the
    directory it runs in."""
    raw = tool_input.get("cwd") if isinstance(tool_input, Mapping) else None
    return raw if isinstance(raw, str) and raw else call_cwd
