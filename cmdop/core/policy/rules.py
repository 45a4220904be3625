"""Rules: the grammar `tool`, `tool(ARGGLOB)`, `tool(OP:ARGGLOB)` (CONTRACT §4), their ids, and
the compiled form the gate matches.

- The argument matched per tool: execute_command → command; read_file, write_file, list_dir,
  grep, glob → path; download_file → destination path; connect, ssh_session, ask_agent → hostname.
- Path globs must be absolute after `~` expansion (or start with `**`); `..` is refused because
  canonical targets never contain it, so such a rule could only mislead.
- A command glob whose program is given by a standard-dir path (`/usr/bin/git *`) is stored
  with the bare name, the same way targets are normalised.
- `rule_id` = "r-" + first 12 hex digits of sha256(rule + "\\n" + action).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cmdop.core.policy import pattern
from cmdop.core.policy.commands import program_name
from cmdop.core.policy.targets import parts_for_command

ACTIONS = ("allow", "ask", "deny")
TOOL_KIND: dict[str, str] = {
    "execute_command": "command",
    "read_file": "path", "write_file": "path", "list_dir": "path", "grep": "path", "glob": "path",
    "download_file": "path",
    "connect": "host", "ssh_session": "host", "ask_agent": "host",
}
_RULE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)
_OP = re.compile(r"^([a-z][a-z0-9_-]*):(?!//)")


class RuleError(ValueError):
    """A rule that does not parse; the message says why (the store adds the line)."""


def rule_id(rule: str, action: str) -> str:
    """"r-" + first 12 hex digits of sha256 over `rule` + "\\n" + `action`."""
    return "r-" + hashlib.sha256((rule + "\n" + action).encode("utf-8")).hexdigest()[:12]


def literal_rule(tool: str, target: str, operation: str = "") -> str:
    """A rule string matching exactly `target` (as the gate sees it) for `tool`.

    For commands pass the normalised single command (the ask flow has it from the decision);
    glob metacharacters are escaped so only this target matches.
    """
    arg = pattern.escape(target)
    if TOOL_KIND.get(tool) == "command":
        # Match what the gate matches: the normalised text of a single simple command. A compound
        # command cannot be allowed by one rule (every part needs its own: `literal_rules`), so
        # its rule is the escaped text, which will simply not match.
        parts = [p for p in parts_for_command(target) if not p.deny_only]
        text = parts[0].allow_text if len(parts) == 1 else None
        arg = pattern.escape((text if text is not None else " ".join(target.split())).replace("\n", " "))
    elif TOOL_KIND.get(tool) == "host":
        arg = pattern.escape(target.lower())
    if operation:
        return f"{tool}({operation}:{arg})"
    if _OP.match(arg):      # a target that looks like OP: must not be read as an operation
        arg = "\\" + arg
    return f"{tool}({arg})"


def literal_rules(tool: str, target: str, operation: str, action: str) -> list[str]:
    """The rules that keep an ask's answer for exactly this target: one `literal_rule` for a
    path, host or single command. A compound command is allowed only when every part is, so
    allowing it keeps one literal rule per part (each part exactly as it was, never a glob);
    `[]` when no rule can say it: a part no allow rule can match (dynamic, unparseable), or a
    compound denial (which part was refused is the approver's secret; denying every part would
    deny commands nobody refused)."""
    if TOOL_KIND.get(tool) != "command":
        return [literal_rule(tool, target, operation)]
    parts = [p for p in parts_for_command(target) if not p.deny_only]
    if len(parts) == 1 and parts[0].allow_text is not None:
        return [literal_rule(tool, target, operation)]
    if action != "allow" or not parts or any(p.allow_text is None for p in parts):
        return []
    texts = dict.fromkeys(p.allow_text for p in parts if p.allow_text is not None)
    out = []
    for text in texts:
        arg = pattern.escape(text.replace("\n", " "))
        if _OP.match(arg) and not operation:
            arg = "\\" + arg
        out.append(f"{tool}({operation}:{arg})" if operation else f"{tool}({arg})")
    return out


@dataclass(frozen=True)
class Rule:
    """One compiled rule. `order` is its position (file order, then session order)."""

    rule: str
    action: str
    reason: str
    scope: str                 # "global" | "session"
    tool: str
    kind: str                  # "command" | "path" | "host"
    operation: str             # "" = any operation
    glob: str | None           # None = any argument
    regex: re.Pattern[str] | None
    literal: int               # most-specific ordering
    order: int
    line: int | None = None
    rid: str = ""              # rule_id, computed once at parse time
    summary: str = ""          # the Decision reason when this rule decides, computed once

    @property
    def id(self) -> str:
        return self.rid or rule_id(self.rule, self.action)

    def matches(self, operation: str, text: str | None) -> bool:
        """Does this rule match `text` (None = unknown argument, matched only by a bare rule)?"""
        if self.operation and self.operation != operation:
            return False
        if self.regex is None:
            return True
        return text is not None and self.regex.match(text) is not None


def parse_rule(text: str, action: str, reason: str = "", *, home: str, scope: str = "global",
               order: int = 0, line: int | None = None) -> Rule:
    """Parse and compile one rule. Raises RuleError with a message a person can act on."""
    if action not in ACTIONS:
        raise RuleError(f"action {action!r} is not one of allow, ask, deny")
    if not isinstance(text, str) or not text.strip():
        raise RuleError("empty rule")
    m = _RULE.match(text)
    if not m:
        raise RuleError(f"rule {text!r} is not tool, tool(GLOB) or tool(OP:GLOB)")
    tool, arg = m.group(1), m.group(2)
    kind = TOOL_KIND.get(tool)
    if kind is None:
        raise RuleError(f"unknown tool {tool!r} in rule {text!r} (tools: {', '.join(TOOL_KIND)})")
    operation = ""
    glob: str | None = None
    if arg is not None:
        om = _OP.match(arg)
        if om and (kind != "path" or not arg.startswith(("/", "~"))):
            operation, arg = om.group(1), arg[om.end():]
        if arg.startswith("\\") and _OP.match(arg[1:]):
            arg = arg[1:]
        if arg == "":
            raise RuleError(f"empty argument in rule {text!r}; write just {tool!r} to match any")
        glob = arg
    regex = None
    if glob is not None:
        try:
            if kind == "path":
                glob = _path_glob(glob, home, text)
                regex = pattern.compile_path(glob)
            elif kind == "command":
                glob = _command_glob(glob)
                regex = pattern.compile_command(glob)
            else:
                glob = glob.lower().rstrip(".")
                regex = pattern.compile_host(glob)
        except pattern.GlobError as exc:
            raise RuleError(str(exc)) from None
    literal = pattern.literal_chars(glob) if glob is not None else 0
    summary = f"{action} rule {text!r} ({scope})" + (f": {reason}" if reason else "")
    return Rule(text, action, reason, scope, tool, kind, operation, glob, regex, literal, order, line,
                rule_id(text, action), summary)


def _path_glob(glob: str, home: str, text: str) -> str:
    if glob == "~" or glob.startswith("~/"):
        glob = home.rstrip("/") + glob[1:]
    if not glob.startswith(("/", "**")):
        raise RuleError(f"path glob in {text!r} must be absolute, start with ~/ or with **")
    if ".." in glob.split("/") or "/./" in glob + "/":
        raise RuleError(f"path glob in {text!r} must not contain '.' or '..' segments")
    glob = re.sub(r"/{2,}", "/", glob)
    return glob.rstrip("/") if len(glob) > 1 else glob


_REDIRECT_IN_RULE = re.compile(r" (\d*(?:>>|>\||>&|>|<<<|<<|<|&>>|&>)) ?")


def _command_glob(glob: str) -> str:
    glob = " ".join(glob.split())
    glob = _REDIRECT_IN_RULE.sub(lambda m: "\n" + m.group(1), glob)
    first, sep, rest = glob.partition(" ")
    if first.startswith("/") and pattern.is_literal(first):
        first = pattern.escape(program_name(first))
    return first + sep + rest


def command_key(glob: str | None) -> str | None:
    """Index key of a command glob: its literal first word, or None when that is a wildcard."""
    if glob is None:
        return None
    first = glob.split(" ", 1)[0]
    if not pattern.is_literal(first):
        return None
    return pattern.literal_prefix(first)


def path_key(glob: str | None) -> str | None:
    """Index key of a path glob: its literal directory prefix, ending in '/'."""
    if glob is None:
        return None
    prefix = pattern.literal_prefix(glob)
    if not prefix.startswith("/"):
        return None
    if pattern.is_literal(glob):
        return prefix.rsplit("/", 1)[0] + "/"
    return prefix[:prefix.rfind("/") + 1]
