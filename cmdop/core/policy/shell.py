"""Shell commands as the gate sees them: a real bash grammar (tree-sitter-bash), split into
simple commands, with every word reduced to what can be known statically.

Rules (each is an attacker's trick closed, see tests/unit/test_shell_*.py):
- The command is parsed by tree-sitter-bash, never split by hand. Line continuations
  (backslash-newline outside single quotes) are removed first, as bash's lexer does, because the
  grammar does not know them (`r\\<nl>m -rf /` is `rm -rf /`).
- Every simple command anywhere in the tree is collected: lists (`&&`, `||`, `;`, newlines),
  pipelines (`|`, `|&`), subshells, `{ }` groups, `$(...)`, backticks, `<(...)`/`>(...)`,
  control structures, function bodies. Each knows whether its stdin is a pipe, a here-string, a
  here-doc or a process substitution, so the floor can see `... | sh` and `sh <(...)`.
- A word is a list of segments: quoted literal text, unquoted text (which may glob or
  brace-expand), variables and substitutions. Only a word made of literal text is "static"; a word
  with `$VAR`, `$(...)`, backticks, `${...}` or arithmetic is not, and an allow rule never matches
  a command whose text would need it (the gate treats it as unknown).
- Anything the grammar marks as an error, and shell constructs we do not model (functions,
  `if`/`for`/`while`/`case`, `[[ ]]`, declarations), make the analysis "opaque": no allow rule
  can match it, the floor still scans every simple command and word the parser did recover.

This module is pure: it parses strings and returns values. Results are cached by command text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import tree_sitter as _ts
import tree_sitter_bash as _tsb

_LANGUAGE = _ts.Language(_tsb.language())
# tree-sitter-bash's lexer crashes the whole process (SIGSEGV/SIGBUS) on some characters above
# U+2C000 (`{` + U+2C744 is enough), so it never sees a non-ASCII byte: each one is parsed as the
# letter `a`, offsets unchanged, and every text is read from the original bytes. Bash itself
# treats any non-ASCII byte as an ordinary word character, so the split into words and commands
# is the same; where the grammar reads more into a letter than bash would (`$é` becomes a
# variable), the result is only more dynamic, which never helps an allow rule.
_PARSE_SAFE = bytes(range(128)) + b"a" * 128
TOO_DEEP = "the command is nested too deeply to inspect"

# Segment kinds of a word.
LIT = "L"   # literal text, quoted or escaped: no globbing, no splitting
RAW = "G"   # unquoted literal text: may contain glob characters, braces, a leading ~
VAR = "V"   # a parameter expansion; text is the variable name, or "" when complex (${x:-y})
SUB = "C"   # command/process substitution or arithmetic: unknowable statically
EVAL = "E"  # a command substitution whose output is statically known (`$(echo /)`, `$(printf curl)`):
            # text is that output. Dynamic for allow rules (like SUB); the floor and deny rules see it.

_GLOB_CHARS = re.compile(r"[*?\[]")
_BRACE = re.compile(r"\{[^{}]*(,|\.\.)[^{}]*\}")


@dataclass(frozen=True)
class Word:
    """One shell word as segments (kind, text). `static` is its value when fully known."""

    segments: tuple[tuple[str, str], ...]

    @property
    def static(self) -> str | None:
        """The word's value if it contains no expansion, glob or brace expansion; else None."""
        out = []
        for kind, text in self.segments:
            if kind == LIT:
                out.append(text)
            elif kind == RAW:
                if _GLOB_CHARS.search(text) or _BRACE.search(text):
                    return None
                out.append(text)
            else:
                return None
        return "".join(out)

    @property
    def has_expansion(self) -> bool:
        """True when a variable or substitution is part of the word."""
        return any(kind in (VAR, SUB, EVAL) for kind, _ in self.segments)

    @property
    def has_glob(self) -> bool:
        return any(kind == RAW and (_GLOB_CHARS.search(t) or _BRACE.search(t)) for kind, t in self.segments)

    def text(self, variables: dict[str, str] | None = None, unknown: str = "*") -> str:
        """Best-effort value: known variables substituted, other expansions replaced by `unknown`.

        Used by the floor (a deny list, so guessing wide is safe) and for deny-rule matching.
        """
        out = []
        for kind, text in self.segments:
            if kind in (LIT, RAW, EVAL):
                out.append(text)
            elif kind == VAR and variables is not None and text in variables:
                out.append(variables[text])
            else:
                out.append(unknown)
        return "".join(out)


@dataclass
class SimpleCommand:
    """One simple command: leading assignments, words, redirections, and where stdin comes from."""

    assigns: list[tuple[str, Word]] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    redirects: list[tuple[str, Word | None]] = field(default_factory=list)   # (operator, target)
    stdin: str = ""          # "" | "pipe" | "herestring" | "heredoc" | "procsub" | "file"
    substituted: bool = False  # runs inside $(...), `...` or <(...)
    heredoc: str = ""          # the body of the first here-document feeding it
    producer: "SimpleCommand | None" = None   # the simple command piping into it (`a | b`: a), if one


@dataclass(frozen=True)
class Analysis:
    """What the parser made of one command string."""

    commands: tuple[SimpleCommand, ...]
    opaque: str               # "" when fully modelled, else why allow rules cannot match it
    functions: tuple[tuple[str, tuple[SimpleCommand, ...], bool], ...]  # (name, body cmds, body backgrounds)
    assignments: tuple[tuple[str, Word], ...]   # standalone `X=...` statements, in order
    source: str               # the text that was parsed (continuations removed)


def remove_line_continuations(command: str) -> str:
    """`command` with its line continuations (backslash-newline) removed where bash removes them:
    in plain text and inside double quotes — not inside single or `$'...'` quotes, comments or
    here-document bodies (a `\\` ending a comment line does not join the next command to it)."""
    if "\\\n" not in command:
        return command
    out: list[str] = []
    heredocs: list[tuple[str, bool]] = []      # (delimiter, strip leading tabs) awaiting a body
    i, n = 0, len(command)
    word_start = True
    while i < n:
        c = command[i]
        if c == "\\" and i + 1 < n:
            if command[i + 1] == "\n":
                i += 2
                continue
            out.append(command[i:i + 2])
            i, word_start = i + 2, False
            continue
        if c == "'" or (c == "$" and command.startswith("$'", i)):
            j = _end_of_single(command, i + (2 if c == "$" else 1), ansi=c == "$")
            out.append(command[i:j])
            i, word_start = j, False
            continue
        if c == '"':
            j, body = _double_quoted(command, i + 1)
            out.append('"' + body)
            i, word_start = j, False
            continue
        if c == "#" and word_start:
            j = command.find("\n", i)
            j = n if j < 0 else j
            out.append(command[i:j])
            i = j
            continue
        if command.startswith("<<", i) and not command.startswith("<<<", i):
            j = i + 2
            strip = command.startswith("-", j)
            j += 1 if strip else 0
            while j < n and command[j] in " \t":
                j += 1
            k = j
            while k < n and command[k] not in " \t\n;&|()<>":
                k += 1
            delim = re.sub(r"[\\'\"]", "", command[j:k])
            if delim:
                heredocs.append((delim, strip))
            out.append(command[i:k])
            i, word_start = k, False
            continue
        if c == "\n" and heredocs:
            out.append(c)
            i += 1
            for delim, strip in heredocs:          # bodies are copied as they are
                while i < n:
                    j = command.find("\n", i)
                    j = n if j < 0 else j + 1
                    line = command[i:j]
                    out.append(line)
                    i = j
                    if (line.rstrip("\n").lstrip("\t") if strip else line.rstrip("\n")) == delim:
                        break
            heredocs.clear()
            word_start = True
            continue
        out.append(c)
        word_start = c in " \t\n;&|()<>"
        i += 1
    return "".join(out)


def _end_of_single(text: str, i: int, ansi: bool) -> int:
    """Index just past the quote closing a '...' (or $'...', where a backslash escapes) string."""
    while i < len(text):
        if ansi and text[i] == "\\":
            i += 2
            continue
        if text[i] == "'":
            return i + 1
        i += 1
    return len(text)


def _double_quoted(text: str, i: int) -> tuple[int, str]:
    """(index past the closing quote, the body with its continuations removed, quote included)."""
    out: list[str] = []
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            if text[i + 1] != "\n":
                out.append(text[i:i + 2])
            i += 2
            continue
        out.append(c)
        i += 1
        if c == '"':
            break
    return i, "".join(out)


def _naive_join(command: str) -> str:
    """Every backslash-newline outside single quotes removed (the reading of an older lexer)."""
    out: list[str] = []
    i, n, in_single, in_double = 0, len(command), False, False
    while i < n:
        c = command[i]
        if in_single:
            in_single = c != "'"
        elif c == "\\" and i + 1 < n:
            if command[i + 1] != "\n":
                out.append(command[i:i + 2])
            i += 2
            continue
        elif c == "'" and not in_double:
            in_single = True
        elif c == '"':
            in_double = not in_double
        out.append(c)
        i += 1
    return "".join(out)


@lru_cache(maxsize=4096)
def interpretations(command: str) -> tuple[str, ...]:
    """The texts to judge for `command`: itself when it has no line continuation; otherwise the
    continuations removed as bash does, and — because a joiner that errs hides or invents
    commands — also the raw text, a naive join, and every continuation removed. The floor denies
    if any of them hits, and an allow rule must allow the parts of all of them, so a wrong guess
    can only deny more."""
    if "\\\n" not in command:
        return (command,)
    every = command.replace("\\\n", "")       # joined everywhere, comments and quotes included
    return tuple(dict.fromkeys((remove_line_continuations(command), command, _naive_join(command), every)))


_ANSI_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b",
                "f": "\f", "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}


def _ansi_c(body: str) -> str | None:
    """Decode the inside of $'...'; None when it uses an escape we do not model."""
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1:i + 2]
        if nxt in _ANSI_SIMPLE:
            out.append(_ANSI_SIMPLE[nxt])
            i += 2
        elif nxt == "x":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
            if not m:
                return None
            out.append(chr(int(m.group(), 16)))
            i += 2 + len(m.group())
        elif nxt in ("u", "U"):
            m = re.match(r"[0-9a-fA-F]{1,8}", body[i + 2:])
            if not m:
                return None
            out.append(chr(int(m.group(), 16)))
            i += 2 + len(m.group())
        elif nxt.isdigit():
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            if not m:
                return None
            out.append(chr(int(m.group(), 8)))
            i += 1 + len(m.group())
        else:
            return None
    return "".join(out)


class _Walker:
    """Collects simple commands from a tree-sitter tree. State lives only in one instance."""

    def __init__(self, src: bytes) -> None:
        self.src = src
        self.commands: list[SimpleCommand] = []
        self.opaque = ""
        self.functions: list[tuple[str, tuple[SimpleCommand, ...], bool]] = []
        self.assignments: list[tuple[str, Word]] = []

    def _text(self, node: Any) -> str:
        return self.src[node.start_byte:node.end_byte].decode("utf-8", "surrogateescape")

    def mark(self, why: str) -> None:
        if not self.opaque:
            self.opaque = why

    # ---- words -------------------------------------------------------------------------
    def word(self, node: Any) -> Word:
        segs: list[tuple[str, str]] = []
        self._word_into(node, segs)
        merged: list[tuple[str, str]] = []
        for kind, text in segs:          # merge neighbours of the same kind: simpler matching
            if merged and merged[-1][0] == kind and kind in (LIT, RAW):
                merged[-1] = (kind, merged[-1][1] + text)
            else:
                merged.append((kind, text))
        return Word(tuple(merged))

    def _word_into(self, node: Any, segs: list[tuple[str, str]]) -> None:
        t = node.type
        if node.is_error or node.is_missing:
            self.mark("the parser found a syntax error")
            segs.append((SUB, self._text(node)))
        elif t in ("word", "number", "command_name", "special_variable_name", "variable_name"):
            if t == "command_name":
                for c in node.children:
                    self._word_into(c, segs)
                return
            text = self._text(node)
            i = 0
            while i < len(text):     # backslash escapes make the next char literal
                j = text.find("\\", i)
                if j < 0:
                    segs.append((RAW, text[i:]))
                    break
                if j > i:
                    segs.append((RAW, text[i:j]))
                if j + 1 < len(text):
                    segs.append((LIT, text[j + 1]))
                i = j + 2
        elif t == "raw_string":
            segs.append((LIT, self._text(node)[1:-1]))
        elif t == "ansi_c_string":
            decoded = _ansi_c(self._text(node)[2:-1])
            segs.append((LIT, decoded) if decoded is not None else (SUB, self._text(node)))
        elif t in ("string", "translated_string"):
            self._string_into(node, segs)
        elif t == "concatenation":
            for c in node.children:
                self._word_into(c, segs)
        elif t == "brace_expression":
            segs.append((RAW, self._text(node)))
        elif t == "simple_expansion":
            segs.append((VAR, self._text(node)[1:]))
        elif t == "expansion":
            names = [c for c in node.children if c.type not in ("${", "}")]
            simple = len(names) == 1 and names[0].type in ("variable_name", "special_variable_name")
            segs.append((VAR, self._text(names[0]) if simple else ""))
            self._visit_children(node, substituted=True)
        elif t in ("command_substitution", "process_substitution"):
            # `>(sh)` feeds the outer command's output to sh: its stdin is a pipe.
            writes_into = self._text(node).startswith(">(")
            before = len(self.commands)
            self._visit_children(node, substituted=True, stdin="pipe" if writes_into else "")
            value = _static_output(self.commands[before:]) if t == "command_substitution" else None
            segs.append((SUB, self._text(node)) if value is None else (EVAL, value))
        else:   # arithmetic and anything unmodelled: unknowable, but still walk it
            segs.append((SUB, self._text(node)))
            self._visit_children(node, substituted=True)

    def _string_into(self, node: Any, segs: list[tuple[str, str]]) -> None:
        start = node.start_byte + (2 if node.type == "translated_string" else 1)
        end = node.end_byte - 1
        pos = start
        for c in node.children:
            if c.start_byte < start or c.end_byte > end or c.type == '"':
                continue
            if c.start_byte > pos:
                segs.append((LIT, _dq_unescape(self.src[pos:c.start_byte].decode("utf-8", "surrogateescape"))))
            if c.type == "string_content":
                segs.append((LIT, _dq_unescape(self._text(c))))
            else:
                self._word_into(c, segs)
            pos = c.end_byte
        if pos < end:
            segs.append((LIT, _dq_unescape(self.src[pos:end].decode("utf-8", "surrogateescape"))))

    # ---- statements ----------------------------------------------------------------------
    def _visit_children(self, node: Any, substituted: bool = False, stdin: str = "") -> None:
        for c in node.children:
            self.visit(c, substituted=substituted, stdin=stdin)

    def visit(self, node: Any, substituted: bool = False, stdin: str = "") -> None:
        t = node.type
        if node.is_error or node.is_missing:
            self.mark("the parser found a syntax error")
            self._visit_children(node, substituted, stdin)
        elif t == "command":
            self.command(node, substituted, stdin, [])
        elif t == "redirected_statement":
            body = node.child_by_field_name("body")
            redirs = [c for c in node.children if c is not body]
            if body is not None and body.type == "command":
                self.command(body, substituted, stdin, redirs)
            else:
                # Redirections on a compound statement: record them on a pseudo command so the
                # floor sees `{ ...; } > /dev/sda`, and make the whole opaque to allow rules.
                self.mark("redirection of a compound statement")
                pseudo = SimpleCommand(substituted=substituted)
                self._redirects(redirs, pseudo)
                self.commands.append(pseudo)
                if body is not None:
                    self.visit(body, substituted, stdin)
        elif t == "pipeline":
            first = True
            producer: SimpleCommand | None = None
            for c in node.children:
                if c.type in ("|", "|&"):
                    continue
                before = len(self.commands)
                self.visit(c, substituted, stdin if first else "pipe")
                if not first and len(self.commands) > before and self.commands[-1].stdin == "pipe":
                    self.commands[-1].producer = producer
                simple = c.type == "command" or (c.type == "redirected_statement" and c.child_by_field_name(
                    "body") is not None and c.child_by_field_name("body").type == "command")
                producer = self.commands[-1] if simple and len(self.commands) > before else None
                first = False
        elif t in ("program", "list", "subshell", "compound_statement"):
            for c in node.children:
                self.visit(c, substituted, stdin if t != "program" else "")
        elif t == "variable_assignment":
            name = node.child_by_field_name("name")
            value = node.child_by_field_name("value")
            self.assignments.append((self._text(name) if name else "", self.word(value) if value else Word(())))
        elif t == "variable_assignments":
            self._visit_children(node, substituted)
        elif t == "function_definition":
            self.mark("function definition")
            name_node = node.child_by_field_name("name")
            before = len(self.commands)
            self._visit_children(node, substituted)
            body = tuple(self.commands[before:])
            backgrounds = "&" in self._text(node).replace("&&", "")
            self.functions.append((self._text(name_node) if name_node else "", body, backgrounds))
        elif t in ("comment", ";", ";;", "&", "&&", "||", "\n", "(", ")", "{", "}", "heredoc_body",
                   "heredoc_start", "heredoc_end", "heredoc_content"):
            if t == "heredoc_body":
                self._visit_children(node, True)
        elif node.child_count == 0:
            return
        elif t in ("command_substitution", "process_substitution", "expansion", "arithmetic_expansion",
                   "string", "concatenation"):
            self.word(node)   # walks inner commands
        else:
            # if/while/for/case/[[ ]]/declarations/negation...: not modelled for allow rules,
            # but every command inside is still collected for the floor.
            self.mark(f"shell construct '{t}'")
            if t in ("declaration_command", "unset_command", "test_command"):
                words = [self.word(c) for c in node.children if c.is_named]
                self.commands.append(SimpleCommand(words=words, substituted=substituted))
            else:
                # `x | while …; do …; done`: every command inside may read the pipe
                self._visit_children(node, substituted, stdin)

    def command(self, node: Any, substituted: bool, stdin: str, redirs: list[Any]) -> None:
        cmd = SimpleCommand(stdin=stdin, substituted=substituted)
        for c in node.children:
            if c.type == "variable_assignment":
                name = c.child_by_field_name("name")
                value = c.child_by_field_name("value")
                cmd.assigns.append((self._text(name) if name else "", self.word(value) if value else Word(())))
            elif c.type in ("file_redirect", "heredoc_redirect", "herestring_redirect"):
                self._redirects([c], cmd)
            elif c.type == "comment":
                continue
            elif c.is_named:
                cmd.words.append(self.word(c))
        self._redirects(redirs, cmd)
        self.commands.append(cmd)

    def _redirects(self, nodes: list[Any], cmd: SimpleCommand) -> None:
        for r in nodes:
            if r.type == "herestring_redirect":
                cmd.stdin = "herestring"
                target = [c for c in r.children if c.is_named]
                cmd.redirects.append(("<<<", self.word(target[0]) if target else None))
            elif r.type == "heredoc_redirect":
                cmd.stdin = cmd.stdin or "heredoc"
                cmd.redirects.append(("<<", None))
                for c in r.children:
                    if c.type == "heredoc_body":
                        cmd.heredoc = cmd.heredoc or self._text(c)
                        self._visit_children(c, True)
                    elif c.type == "pipeline":
                        # `cat <<EOF | sh`: the grammar hangs the rest of the pipeline here; every
                        # command in it reads a pipe.
                        for cc in c.children:
                            if cc.type not in ("|", "|&"):
                                self.visit(cc, False, "pipe")
                    elif c.is_named and c.type not in ("heredoc_start", "heredoc_end"):
                        self.mark("commands after a here-document")
                        self.visit(c, False, "")
            elif r.type == "file_redirect":
                op = "".join(self._text(c) for c in r.children if not c.is_named)
                targets = [c for c in r.children if c.is_named and c.type != "file_descriptor"]
                word = self.word(targets[-1]) if targets else None
                if op in ("<", "<&") and targets and targets[-1].type == "process_substitution":
                    cmd.stdin = "procsub"
                elif op == "<" and not cmd.stdin:
                    cmd.stdin = "file"
                cmd.redirects.append((op, word))
            elif r.is_error:
                self.mark("the parser found a syntax error")


def _static_output(cmds: list[SimpleCommand]) -> str | None:
    """The output of `$(...)` when it is one `echo`/`printf` of static words, else None.
    (Trailing newlines removed, as bash does.)"""
    if len(cmds) != 1 or cmds[0].redirects or cmds[0].assigns or cmds[0].stdin:
        return None
    args = [w.static for w in cmds[0].words]
    if not args or any(a is None for a in args):
        return None
    prog, rest = (args[0] or "").rsplit("/", 1)[-1], [a or "" for a in args[1:]]
    if prog == "echo":
        escapes = False
        while rest and rest[0] in ("-n", "-e", "-E", "-ne", "-en"):
            escapes = escapes or "e" in rest[0]
            rest = rest[1:]
        out = " ".join(rest)
        if escapes:
            decoded = _ansi_c(out)
            if decoded is None:
                return None
            out = decoded
    elif prog == "printf" and rest:
        if rest[0] == "--":
            rest = rest[1:]
        fmt = _ansi_c(rest[0]) if rest else None
        if fmt is None or "%" in fmt.replace("%s", "").replace("%%", ""):
            return None
        args_left = rest[1:]
        out = ""
        while True:                      # printf reuses the format while arguments remain
            piece = fmt.replace("%%", "\x00")
            while "%s" in piece:
                piece = piece.replace("%s", args_left.pop(0) if args_left else "", 1)
            out += piece.replace("\x00", "%")
            if not args_left or "%s" not in fmt:
                break
    else:
        return None
    return out.rstrip("\n")


def _dq_unescape(text: str) -> str:
    """Backslash escapes that bash honours inside double quotes (a backslash-newline vanishes)."""
    return re.sub(r'\\([$`"\\\n])', lambda m: "" if m.group(1) == "\n" else m.group(1), text)


@lru_cache(maxsize=8192)
def analyse(command: str) -> Analysis:
    """Parse `command` with the bash grammar. Never raises; failures show up as `opaque`."""
    source = command      # one interpretation; callers judge every one (`interpretations`)
    # surrogatepass: a lone surrogate (JSON allows "\ud800") still gives bytes to parse; slices
    # are decoded with surrogateescape, which never fails.
    raw = source.encode("utf-8", "surrogatepass")
    try:
        # A parser per parse (≈ 0.2 µs): a tree-sitter Parser must not be shared between the
        # daemon's worker threads, and a fresh one carries no state from an earlier input.
        tree = _ts.Parser(_LANGUAGE).parse(raw.translate(_PARSE_SAFE))
    except Exception as exc:  # noqa: BLE001 - the grammar should not fail; if it does, nothing is known
        return Analysis((), f"unparseable: {exc}", (), (), source)
    walker = _Walker(raw)
    try:
        walker.visit(tree.root_node)
    except RecursionError:     # thousands of nested $(...): refuse rather than guess
        return Analysis((), TOO_DEEP, (), (), source)
    if tree.root_node.has_error:
        walker.mark("the parser found a syntax error")
    if "\x00" in source:
        walker.mark("NUL byte in command")
    return Analysis(tuple(walker.commands), walker.opaque, tuple(walker.functions),
                    tuple(walker.assignments), source)
