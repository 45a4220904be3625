"""Rules: the grammar `tool`, `tool(ARGGLOB)`, `tool(OP:ARGGLOB)`, their ids, and
the compiled form the gate matches.

- The argument matched per tool: execute_command → command; read_file, write_file, list_dir,
  grep, glob → path; download_file → destination path; connect, ssh_session, ask_agent → hostname.
- Path globs must be absolute after `~` expansion (or start with `**`); `..` is refused because
  canonical targets never contain it, so such a rule could only mislead.
- A command glob whose program is given by a standard-dir path (`/usr/bin/git *`) is compiled
  with the bare name, the same way targets are normalised (the file keeps it as written).
- `rule_id` = "r-" + first 12 hex digits of sha256(rule + "\\n" + action).
- Allow and ask command globs cover code a command runs (targets: a newline marks it in the
  text, which `*` never matches) only where they spell its token literally: `find * -exec *`
  covers `find . -exec rm {} \\;` (and `rm {}` still needs a rule of its own), `find *` does not;
  `sudo systemctl *` covers `sudo systemctl restart x`, `sudo *` covers no wrapped program.
  Deny globs are matched on unmarked texts, as written.
"""

from __future__ import annotations

import re
from functools import cache

from cmdop.core.policy import pattern, programs
from cmdop.core.policy.commands import Layer, program_name, unwrap, wrapped_starts
from cmdop.core.policy.pattern import LazyPattern
from cmdop.core.policy.shell import LIT, SimpleCommand, Word
from cmdop.core.policy.targets import Part, parts_for_command
from cmdop.core.value import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

ACTIONS = ("allow", "ask", "deny")
TOOL_KIND: dict[str, str] = {
    "execute_command": "command",
    "read_file": "path", "write_file": "path", "list_dir": "path", "grep": "path", "glob": "path",
    "download_file": "path",
    "connect": "host", "ssh_session": "host", "ask_agent": "host",
}
_RULE = LazyPattern(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)
_OP = LazyPattern(r"^([a-z][a-z0-9_-]*):(?!//)")


class RuleError(ValueError):
    """A rule that does not parse; the message says why (the store adds the line)."""


def rule_id(rule: str, action: str) -> str:
    """"r-" + first 12 hex digits of sha256 over `rule` + "\\n" + `action`."""
    digest: str = _sha256()((rule + "\n" + action).encode("utf-8")).hexdigest()
    return "r-" + digest[:12]


@cache
def _sha256() -> Callable[[bytes], Any]:
    """SHA-256 from CPython's built-in module (`_sha2` since 3.12, `_sha256` before), else
    hashlib's: the same digest, but importing hashlib loads OpenSSL, ~3 ms of every `permissions
    check` with a policy file, where rule ids are the only hashing."""
    import importlib

    for name in ("_sha2", "_sha256"):
        try:
            return importlib.import_module(name).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    import hashlib

    return hashlib.sha256


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
        # A command that runs code (`find -exec rm {} \;`) has parts for what it runs as well;
        # its own part is the one no other command runs.
        parts = [p for p in parts_for_command(target) if not p.deny_only and not p.runs_for]
        text = _rule_text(parts[0]) if len(parts) == 1 and parts[0].allow_text is not None else None
        arg = pattern.escape(text if text is not None else " ".join(target.split()))
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
    own = [p for p in parts if not p.runs_for]
    if action != "allow" and len(own) == 1 and own[0].allow_text is not None:
        # one command that runs code: refusing it refuses the command as it was asked
        return [literal_rule(tool, target, operation)]
    if action != "allow" or not parts or any(p.allow_text is None for p in parts):
        return []
    texts = dict.fromkeys(_rule_text(p) for p in parts)
    out = []
    for text in texts:
        arg = pattern.escape(text)
        if _OP.match(arg) and not operation:
            arg = "\\" + arg
        out.append(f"{tool}({operation}:{arg})" if operation else f"{tool}({arg})")
    return out


def _rule_text(part: Part) -> str:
    """The text a literal rule for `part` spells: its allow text without the marks of code (a
    rule spells the code itself, which `compile_code_glob` marks again) and with a redirection's
    newline written as the space a rule uses."""
    text = part.allow_text or ""
    marks = {pos for pos, _, _ in part.code}
    return "".join(ch for i, ch in enumerate(text) if i not in marks).replace("\n", " ")


class Rule(Frozen):
    """One compiled rule. `order` is its position (file order, then session order)."""

    FIELDS = ("rule", "action", "reason", "scope", "tool", "kind", "operation", "glob", "regex",
              "literal", "order", "line", "rid", "summary")
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
    line: int | None
    rid: str                   # rule_id, computed once at parse time
    summary: str               # the Decision reason when this rule decides, computed once

    def __init__(self, rule: str, action: str, reason: str, scope: str, tool: str, kind: str,
                 operation: str, glob: str | None, regex: re.Pattern[str] | None, literal: int,
                 order: int, line: int | None = None, rid: str = "", summary: str = "") -> None:
        self._set(rule=rule, action=action, reason=reason, scope=scope, tool=tool, kind=kind,
                  operation=operation, glob=glob, regex=regex, literal=literal, order=order,
                  line=line, rid=rid, summary=summary)

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
                if _GLOB_MARK in glob:
                    raise RuleError(f"rule {text!r} contains the reserved character U+E000")
                glob = _command_glob(glob)
                regex = pattern.compile_command(glob) if action == "deny" else compile_code_glob(glob)
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


_REDIRECT_IN_RULE = LazyPattern(r" (\d*(?:>>|>\||>&|>|<<<|<<|<|&>>|&>)) ?")


def _command_glob(glob: str) -> str:
    glob = " ".join(glob.split())
    glob = _REDIRECT_IN_RULE.sub(lambda m: "\n" + m.group(1), glob)
    first, sep, rest = glob.partition(" ")
    if first.startswith("/") and pattern.is_literal(first):
        first = pattern.escape(program_name(first))
    return first + sep + rest


_GLOB_MARK = "\ue000"      # where a glob spells a code token; compiled to an optional newline
_PLACEHOLDER = "\ue001"    # a glob word with a wildcard, for reading the glob as a command
_ASSIGN = LazyPattern(r"^[A-Za-z_][A-Za-z0-9_]*=")


def compile_code_glob(glob: str) -> re.Pattern[str]:
    """The regex of an allow/ask command glob (normalised by `_command_glob`): as
    `pattern.compile_command`, plus an optional newline before every token of code it spells, so
    the glob covers a marked place in a text (`targets`) exactly where it spells what follows."""
    marked = mark_code_tokens(glob)
    rx = pattern.compile_command(marked)
    if _GLOB_MARK not in marked:
        return rx
    # re.escape leaves U+E000 as itself; nothing else in a compiled glob can contain it
    return re.compile(rx.pattern.replace(_GLOB_MARK, "\n?"), re.DOTALL)


def _glob_items(glob: str) -> list[tuple[int, str | None]]:
    """The glob as (index in glob, literal character or None for a wildcard or class)."""
    items: list[tuple[int, str | None]] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "\\" and i + 1 < len(glob):
            items.append((i, glob[i + 1]))
            i += 2
        elif c in "*?":
            items.append((i, None))
            i += 1
        elif c == "[":
            j = glob.find("]", i + 2)
            items.append((i, None))
            i = j + 1 if j > 0 else len(glob)
        else:
            items.append((i, c))
            i += 1
    return items


def mark_code_tokens(glob: str) -> str:
    """`glob` with a mark before every place it spells code of its program literally: a code
    token (programs.is_token, programs.text_tokens), a code-running shape read from its literal
    words (programs.sites), or the program a privileged wrapper runs."""
    items = _glob_items(glob)
    cut = next((k for k, (_, ch) in enumerate(items) if ch == "\n"), len(items))   # redirections
    words: list[list[tuple[int, str | None]]] = [[]]
    for item in items[:cut]:
        if item[1] == " ":
            words.append([])
        else:
            words[-1].append(item)
    words = [w for w in words if w]
    if not words:
        return glob
    literal = ["".join(ch or "" for _, ch in w) if all(ch is not None for _, ch in w) else None for w in words]
    nassign = 0
    while nassign < len(words) - 1 and literal[nassign] is not None and _ASSIGN.match(literal[nassign] or ""):
        nassign += 1
    marks: set[int] = set()          # indexes into `items` to mark before

    def mark(word: int, offset: int) -> None:
        if 0 <= word < len(words) and 0 <= offset < len(words[word]) and words[word][offset][1] is not None:
            marks.add(items.index(words[word][offset]))

    cmd_words = [Word(((LIT, v if v is not None else _PLACEHOLDER),)) for v in literal[nassign:]]
    un = unwrap(SimpleCommand(words=cmd_words))
    allow_at, starts = wrapped_starts(un.layers)
    layers: tuple[Layer, ...] = un.layers if allow_at is None else un.layers[allow_at:]
    if allow_at is None:
        layers = un.layers[-1:]
    total = len(cmd_words)
    if allow_at is not None:
        base = nassign + total - len(un.layers[allow_at].words)
        for start in starts:
            if literal[base + start] is not None:
                mark(base + start, 0)
    names: list[str] = []
    programs_at = {nassign + total - len(layer.words) for layer in layers}
    for layer in layers:
        argv = [w.static if w.static != _PLACEHOLDER else None for w in layer.words]
        if not argv or argv[0] is None:
            continue
        names.append(argv[0])
        base = nassign + total - len(argv)
        for site in programs.sites(argv):
            mark(base + site.word, site.offset)
    if not names:
        return glob
    # tokens as a rule spells them: at a word's start or after `=`, complete up to `=` or the
    # word's end (`core.pager=*` spells `core.pager`; `core.pag*` spells nothing)
    for wi, word in enumerate(words):
        starts_at = [0] + [k + 1 for k, (_, ch) in enumerate(word) if ch == "="]
        for k in starts_at:
            token = []
            complete = True
            for _, ch in word[k:]:
                if ch is None:
                    complete = False
                    break
                if ch == "=":
                    break
                token.append(ch)
            if token and complete and any(programs.is_token(n, "".join(token)) for n in names):
                mark(wi, k)
    # tokens inside program text (awk's `system`, sqlite3's `.shell`): in a literal stretch
    run: list[int] = []
    skip = {id(item) for wi in programs_at | set(range(nassign)) if wi < len(words) for item in words[wi]}
    for k, (_, ch) in enumerate(items[:cut] + [(-1, None)]):
        if ch is not None and id(items[k]) not in skip:
            run.append(k)
            continue
        if run:
            text = "".join(items[j][1] or "" for j in run)
            for n in names:
                for off in programs.text_tokens(n, text):
                    marks.add(run[off])
        run = []
    if not marks:
        return glob
    out = []
    for k, (gi, _) in enumerate(items):
        nxt = items[k + 1][0] if k + 1 < len(items) else len(glob)
        out.append((_GLOB_MARK if k in marks else "") + glob[gi:nxt])
    return glob[:items[0][0]] + "".join(out) if items else glob


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
