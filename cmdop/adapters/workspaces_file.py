"""`~/.cmdop/ssh_workspaces.json` (Settings.workspaces_file): the workspace API keys.

    {"active": NAME, "workspaces": [{"name", "api_key", "server",
                                     "relay_fingerprint"?, "relay_ca"?}]}

Rules:
- written 0600 in a 0700 directory, atomically (cmdop.adapters.secure_file);
- a file readable by group/others or owned by another user is refused with the chmod/chown to run;
- a file that does not parse or validate is an error naming the file and the problem, and is never
  silently overwritten: `save` is only ever given what `load` read and the user changed;
- keys this version does not know (in the file or in an entry) are kept on save.
A missing file reads as no workspaces.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cmdop.adapters.secure_file import atomic_write, check_private, read_private
from cmdop.core.credentials import WorkspaceEntry, WorkspacesData, normalize_fingerprint
from cmdop.core.errors import ConfigError, UsageError

_ENTRY_KEYS = ("name", "api_key", "server", "relay_fingerprint", "relay_ca")


def _corrupt(path: str, problem: str) -> ConfigError:
    return ConfigError(
        f"{path} is not a valid workspaces file: {problem}",
        hint=f"fix or move it away (mv {path} {path}.bad), then run `cmdop connect key set` again",
    )


def parse(text: str, path: str = "ssh_workspaces.json") -> WorkspacesData:
    """The file's text → WorkspacesData; ConfigError naming `path` and the problem."""
    try:
        doc = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise _corrupt(path, f"line {exc.lineno}: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise _corrupt(path, "the top level must be an object")
    active = doc.get("active")
    if active is not None and not isinstance(active, str):
        raise _corrupt(path, "`active` must be a workspace name or null")
    raw = doc.get("workspaces", [])
    if not isinstance(raw, list):
        raise _corrupt(path, "`workspaces` must be a list")
    entries: list[WorkspaceEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _corrupt(path, f"workspaces[{i}] must be an object")
        for key in _ENTRY_KEYS:
            value = item.get(key, "")
            if value is None and key in ("relay_fingerprint", "relay_ca"):
                continue
            if not isinstance(value, str):
                raise _corrupt(path, f"workspaces[{i}].{key} must be a string")
        name = item.get("name") or ""
        if not name:
            raise _corrupt(path, f"workspaces[{i}] has no name")
        if name in seen:
            raise _corrupt(path, f"workspace {name!r} appears twice")
        seen.add(name)
        if not item.get("api_key"):
            raise _corrupt(path, f"workspace {name!r} has no api_key")
        pin = item.get("relay_fingerprint") or ""
        if pin:
            try:
                pin = normalize_fingerprint(pin)
            except UsageError:   # not "the relay presented another certificate" later
                raise _corrupt(path, f"workspace {name!r}: relay_fingerprint is not 64 hex "
                                     "digits (a SHA-256)") from None
        entries.append(WorkspaceEntry(
            name=name, api_key=item["api_key"], server=item.get("server") or "",
            relay_fingerprint=pin, relay_ca=item.get("relay_ca") or "",
            extra={k: v for k, v in item.items() if k not in _ENTRY_KEYS},
        ))
    extra = {k: v for k, v in doc.items() if k not in ("active", "workspaces")}
    return WorkspacesData(active=active or None, workspaces=tuple(entries), extra=extra)


def dump(data: WorkspacesData) -> str:
    """WorkspacesData → the file's text (stable key order, a trailing newline)."""
    items: list[dict[str, Any]] = []
    for e in data.workspaces:
        item: dict[str, Any] = {"name": e.name, "api_key": e.api_key, "server": e.server}
        if e.relay_fingerprint:
            item["relay_fingerprint"] = e.relay_fingerprint
        if e.relay_ca:
            item["relay_ca"] = e.relay_ca
        item.update({k: v for k, v in e.extra.items() if k not in item})
        items.append(item)
    doc: dict[str, Any] = {"active": data.active, "workspaces": items}
    doc.update({k: v for k, v in data.extra.items() if k not in doc})
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def load(path: str) -> WorkspacesData:
    """Read the workspaces file: empty when missing; SecretFileError when others can read it;
    ConfigError when unreadable or invalid."""
    try:
        raw = read_private(path)
    except FileNotFoundError:
        return WorkspacesData()
    except IsADirectoryError:
        raise _corrupt(path, "it is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}",
                          hint=f"check {path} and the directories above it (ls -ld); "
                               "`cmdop permissions path` shows where cmdop looks") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _corrupt(path, "not UTF-8 text") from None
    return parse(text, path)



def save(path: str, data: WorkspacesData) -> None:
    """Write the workspaces file atomically, 0600 (its directory 0700 when created).

    An existing file others can read is refused rather than replaced: its secret may already have
    leaked, and the user should know (SecretFileError with the chmod to run)."""
    check_private(path)
    try:
        atomic_write(path, dump(data), mode=0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}",
                          hint=f"check that you can write {os.path.dirname(path)} (ls -ld); "
                               "CMDOP_HOME moves it") from None
