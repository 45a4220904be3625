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
  A syntax error, or a node kind the walker does not know, is "severe" (`Analysis.unparseable`):
  not even bypass mode allows it.
- The walk is complete by construction: every named node kind of the grammar is in WALKED_NODES
  or REFUSED_NODES (tests/unit/test_shell_nodes.py), and every place bash starts an expansion
  (`$(`, backquote, `${`, `$[`, `<(`, `>(`) that the walk did not enter — because the grammar
  keeps it as text: `${x#$(cmd)}`, a `[[ =~ ]]` regex, an extglob, a here-document line — is
  parsed where it starts. Backquotes are read as bash reads them (to the first unescaped
  backquote; the grammar reads `` `a` `b` `` as one). Where the grammar fails, the text from the
  error to the end of its line is also read as commands, so the floor still sees `| sh`.

This module is pure: it parses strings and returns values. Results are cached by command text.
"""

from __future__ import annotations

import re
import sys
from functools import cached_property, lru_cache
from importlib import import_module

from cmdop.core.policy.pattern import LazyPattern
from cmdop.core.value import Frozen, Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _native(package: str) -> Any:
    """`package`'s extension module `package._binding`, loaded without running the package's
    own `__init__`, found the way `import package._binding` finds it (same sys.path), and
    registered under that name so a later `import package` uses this same copy. Those
    `__init__`s cost every `permissions check` milliseconds for nothing the gate uses:
    tree-sitter-bash's imports importlib.resources (pathlib, tempfile, shutil) to read query
    files, tree-sitter's imports `typing` for one Protocol. Any surprise falls back to the
    plain import; the module is the same either way."""
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec

    name = package + "._binding"
    if package in sys.modules or name in sys.modules:
        return import_module(name)
    try:
        found = PathFinder.find_spec(package)
        spec = found and PathFinder.find_spec(name, found.submodule_search_locations)
        if spec is not None and spec.loader is not None:
            module = module_from_spec(spec)
            sys.modules[name] = module  # first, as the import system does: one copy only
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module
    except (ImportError, AttributeError, OSError):
        pass
    return import_module(name)


_ts = _native("tree_sitter")
_LANGUAGE = _ts.Language(_native("tree_sitter_bash").language())
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

_GLOB_CHARS = LazyPattern(r"[*?\[]")
_BRACE = LazyPattern(r"\{[^{}]*(,|\.\.)[^{}]*\}")
_DIRSTACK = LazyPattern(r"~(?:[+-]?[0-9]+|[+-])(?=/|$)")     # `~+`, `~-1`: a directory on the stack
_DIRSTACK_AFTER = LazyPattern(r"[=:]~(?:[+-]?[0-9]+|[+-])(?=[/:]|$)")
_ASSIGNMENT_LIKE = LazyPattern(r"[A-Za-z_][A-Za-z0-9_]*=")

# ---- every named node kind of tree-sitter-bash, and what the walker does with it ----------------
# The walker is complete by construction: tests/unit/test_shell_nodes.py reads the grammar's named
# node kinds and fails when one is in neither set below. At run time a named kind in neither (a
# newer grammar) is refused like the ones in REFUSED_NODES: the command "cannot be understood", so
# no allow rule and no mode allows it, and its children are still walked so the floor sees every
# command inside. Independently of node kinds, `_Walker.complete` then finds every place in the
# text where bash would start an expansion (`$(`, backtick, `${`, `$[`, `<(`, `>(`) that the walk
# did not enter, and parses it there: what the grammar reads as plain text (a `${x#pattern}`, a
# `[[ =~ ]]` regex, an extglob, a here-document line starting with a tab or holding backticks) is
# still walked.
WALKED_NODES: frozenset[str] = frozenset({
    # statements: walked in order, each simple command collected with where its stdin comes from
    "program", "list", "pipeline", "subshell", "compound_statement",   # also `(( ))`
    "command", "redirected_statement",
    "negated_command",                    # `! cmd`
    "variable_assignment",                # `X=v`, `a[$(cmd)]=v`: the subscript is walked too
    "variable_assignments",               # `X=1 Y=2` with no command
    "function_definition",                # body collected (fork bombs), opaque to allow rules
    # control structures: opaque to allow rules, every word and command inside walked
    "if_statement", "elif_clause", "else_clause", "while_statement",   # also `until`
    "for_statement",                      # also `select`; the `in` words are walked
    "c_style_for_statement", "do_group",
    "case_statement", "case_item",        # the subject and every pattern are walked
    "test_command",                       # `[[ ]]`, `[ ]`: operands walked, kept as a command
    "declaration_command",                # declare/local/export/readonly/typeset: kept as a command
    "unset_command",
    # redirections and here-documents
    "file_redirect", "heredoc_redirect", "herestring_redirect",
    "file_descriptor",                    # digits: no expansion
    "heredoc_start", "heredoc_end",       # the delimiter: never expanded by bash
    "heredoc_body", "heredoc_content",    # walked unless the delimiter is quoted
    # words
    "command_name", "word", "number", "string", "string_content", "raw_string", "ansi_c_string",
    "translated_string", "concatenation", "brace_expression", "simple_expansion", "expansion",
    "variable_name", "special_variable_name", "subscript", "command_substitution",
    "process_substitution", "arithmetic_expansion", "array",
    "regex",                              # `${x#…}` patterns, `[[ =~ ]]`: text rescanned (see above)
    "extglob_pattern",                    # `@(…)`, `!(…)`: text rescanned
    "test_operator",                      # `-f`, `-eq`: fixed text
    # arithmetic and `[[ ]]` expressions: every operand walked
    "binary_expression", "unary_expression", "ternary_expression", "postfix_expression",
    "parenthesized_expression",
    "comment",                            # not run; `#` inside a word is part of the word, not this
})
REFUSED_NODES: frozenset[str] = frozenset({
    "ERROR",      # the grammar could not parse the text: a syntax error to the gate (never allowed)
})
CANNOT_UNDERSTAND = "the parser found a syntax error"   # the opaque reason of anything refused
TOO_MANY = "the command has too many expansions to inspect"
_MAX_RESCANS = 1024                 # `complete` parses at most this many places per command …
_MAX_RESCAN_BYTES = 1 << 22         # … and at most this many bytes in all; past that, refuse

# Kinds whose text bash never expands: `$(` inside them is text.
_LITERAL_NODES = frozenset({"raw_string", "ansi_c_string", "comment", "heredoc_start", "heredoc_end"})
_SUBSTITUTIONS = frozenset({"command_substitution", "process_substitution", "expansion",
                            "arithmetic_expansion"})


@lru_cache(maxsize=None)
def _expansion_start() -> re.Pattern[bytes]:
    """Where bash may start an expansion (compiled on first use)."""
    return re.compile(rb"\$[({\[]|`|[<>]\(")


_STATEMENT_KINDS = frozenset({"program", "list", "subshell", "compound_statement"})
_CONSTRUCTS = frozenset({"if_statement", "elif_clause", "else_clause", "while_statement", "for_statement",
                         "c_style_for_statement", "do_group", "case_statement", "case_item",
                         "negated_command", "binary_expression", "unary_expression", "ternary_expression",
                         "postfix_expression", "parenthesized_expression", "subscript"})
_WORD_KINDS = frozenset({"command_name", "word", "number", "string", "string_content", "raw_string",
                         "ansi_c_string", "translated_string", "concatenation", "brace_expression",
                         "simple_expansion", "expansion", "variable_name", "special_variable_name",
                         "command_substitution", "process_substitution", "arithmetic_expansion", "array",
                         "regex", "extglob_pattern", "test_operator", "file_descriptor"})
_CHAINS = frozenset({"pipeline", "list", "negated_command"})
_LOOPS = frozenset({"while_statement", "for_statement", "c_style_for_statement"})   # (+ until, select)
_REDIRECT_KINDS = frozenset({"file_redirect", "heredoc_redirect", "herestring_redirect"})
_KEPT_AS_COMMAND = frozenset({"declaration_command", "unset_command", "test_command"})
# Where `_Walker.visit` sends each kind (tests/unit/test_shell_nodes.py: this is WALKED_NODES).
DISPATCHED_NODES: frozenset[str] = (
    _STATEMENT_KINDS | _CONSTRUCTS | _WORD_KINDS | _REDIRECT_KINDS | _KEPT_AS_COMMAND
    | {"command", "redirected_statement", "pipeline", "variable_assignment", "variable_assignments",
       "function_definition", "comment", "heredoc_start", "heredoc_end", "heredoc_content", "heredoc_body"})
# Where a text rescanned by `complete` may end at most: the statement (or here-document) it is in.
_RESCAN_BOUNDS = frozenset({"command", "redirected_statement", "heredoc_body", "test_command",
                            "declaration_command", "unset_command", "case_item", "case_statement",
                            "for_statement", "c_style_for_statement", "variable_assignment", "program"})


# Reserved words bash never runs as a program when they come first on a command line (and no
# assignment precedes them). The grammar reads `! { cmd; }`, `! if …`, `! ! cmd` as a command
# named `{`, `if`, `!`; a command so named means the grammar misread the structure.
_RESERVED_FIRST = frozenset({"if", "then", "elif", "else", "fi", "for", "select", "while", "until", "do",
                             "done", "case", "esac", "{", "}", "function", "coproc", "[[", "]]", "!"})


NEGATION = "shell construct 'negated_command'"


def _parse(src: bytes) -> tuple[Any, bool]:
    """The grammar's tree of `src` (read through _PARSE_SAFE), and whether a `!` was blanked:
    `! compound` and `! ! cmd` are misread by the grammar (`! { a; }` becomes a command `{` with
    argument `a`, `! ! X=1 a` a command `!` with arguments `X=1` and `a`),
    and `!` changes only an exit status, which the walker does not model, so such a `!` is
    parsed as a blank (offsets kept)."""
    safe = src.translate(_PARSE_SAFE)
    tree = _ts.Parser(_LANGUAGE).parse(safe)
    blanked = False
    for _ in range(64):
        if b"!" not in safe:
            break
        bang = _misread_negation(tree.root_node)
        if bang is None:
            break
        safe = safe[:bang] + b" " + safe[bang + 1:]
        tree = _ts.Parser(_LANGUAGE).parse(safe)
        blanked = True
    return tree, blanked


def _misread_negation(root: Any) -> int | None:
    """Where the `!` of a negated_command the grammar misread begins (its command is named by a
    reserved word), or None."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "negated_command" and node.child_count >= 2 and node.children[0].type == "!":
            inner = node.children[1]
            name = inner.child_by_field_name("name") if inner.type == "command" else None
            if name is not None and (name.text or b"").decode("latin-1") in _RESERVED_FIRST:
                return int(node.children[0].start_byte)
        stack.extend(node.children)
    return None


class _TooMany(Exception):
    """More rescans than `complete` will do for one command."""


class Word(Frozen):
    """One shell word as segments (kind, text). `static` is its value when fully known."""

    FIELDS = ("segments",)
    segments: tuple[tuple[str, str], ...]

    def __init__(self, segments: tuple[tuple[str, str], ...]) -> None:
        self.__dict__["segments"] = segments  # (the walker makes many: no keyword dict)

    @cached_property
    def static(self) -> str | None:
        """The word's value if it contains no expansion, glob or brace expansion; else None.
        (Computed once per word: the floor and the rules ask for it many times.)"""
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
        value = "".join(out)
        if "~" in value and self._dirstack_tilde(value):
            return None
        return value

    def _dirstack_tilde(self, value: str) -> bool:
        """Does bash read a `~+`, `~-`, `~N`, `~+N`, `~-N` here (the current, previous or a
        stacked directory: known only at run time)? At the start of the word, or after `=` or `:`
        in a word that looks like an assignment (`x=~-`). Other tildes (`~`, `~/x`, `~user`) are
        kept as written: rules spell them so, and the floor expands them."""
        kind, text = self.segments[0]
        m = _DIRSTACK.match(text) if kind == RAW else None
        # (`~+"x"`: a quoted character in the tilde prefix, which bash then leaves as it is)
        if m is not None and (len(self.segments) == 1 or m.end() < len(text)):
            return True
        if not _ASSIGNMENT_LIKE.match(value):
            return False
        return any(kind == RAW and _DIRSTACK_AFTER.search(text) for kind, text in self.segments)

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


class SimpleCommand(Record):
    """One simple command: leading assignments, words, redirections, and where stdin comes from."""

    FIELDS = ("assigns", "words", "redirects", "stdin", "substituted", "heredoc", "producer",
              "repeats")
    assigns: list[tuple[str, Word]]
    words: list[Word]
    redirects: list[tuple[str, Word | None]]   # (operator, target)
    stdin: str               # "" | "pipe" | "herestring" | "heredoc" | "procsub" | "file"
    substituted: bool        # runs inside $(...), `...` or <(...)
    heredoc: str             # the body of the first here-document feeding it
    producer: SimpleCommand | None   # the simple command piping into it (`a | b`: a), if one
    # it may run again after commands that follow it in `Analysis.commands` (and so in a directory
    # a later `cd` chose): it is in a loop (`for`, `while`, `until`, `select`) or a function body
    repeats: bool
    # byte offsets of each word in the analysed text, parallel to `words` (empty when not known);
    # not a field: neither compared nor shown
    spans: list[tuple[int, int]]

    def __init__(self, assigns: list[tuple[str, Word]] | None = None,
                 words: list[Word] | None = None,
                 redirects: list[tuple[str, Word | None]] | None = None, stdin: str = "",
                 substituted: bool = False, heredoc: str = "",
                 producer: SimpleCommand | None = None, repeats: bool = False,
                 spans: list[tuple[int, int]] | None = None) -> None:
        self.assigns = [] if assigns is None else assigns
        self.words = [] if words is None else words
        self.redirects = [] if redirects is None else redirects
        self.stdin = stdin
        self.substituted = substituted
        self.heredoc = heredoc
        self.producer = producer
        self.repeats = repeats
        self.spans = [] if spans is None else spans


class Analysis(Frozen):
    """What the parser made of one command string."""

    FIELDS = ("commands", "opaque", "functions", "assignments", "source")
    commands: tuple[SimpleCommand, ...]
    opaque: str               # "" when fully modelled, else why allow rules cannot match it
    functions: tuple[tuple[str, tuple[SimpleCommand, ...], bool], ...]  # (name, body cmds, body backgrounds)
    assignments: tuple[tuple[str, Word], ...]   # standalone `X=...` statements, in order
    source: str               # the text that was parsed (continuations removed)

    def __init__(self, commands: tuple[SimpleCommand, ...], opaque: str,
                 functions: tuple[tuple[str, tuple[SimpleCommand, ...], bool], ...],
                 assignments: tuple[tuple[str, Word], ...], source: str) -> None:
        self._set(commands=commands, opaque=opaque, functions=functions,
                  assignments=assignments, source=source)

    @property
    def unparseable(self) -> bool:
        """No mode may allow it: a syntax error, a node kind the walker refuses, a NUL byte, or
        more than the walker inspects. (targets.py reads the same from `opaque`'s wording.)"""
        return "syntax error" in self.opaque or "NUL" in self.opaque or self.opaque in (TOO_DEEP, TOO_MANY)


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


@lru_cache(maxsize=1024)
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


class _Budget:
    """Rescans left for one `analyse` call (shared by the walkers it starts)."""

    def __init__(self) -> None:
        self.rescans = _MAX_RESCANS
        self.bytes = _MAX_RESCAN_BYTES

    def spend(self, size: int) -> None:
        self.rescans -= 1
        self.bytes -= size
        if self.rescans < 0 or self.bytes < 0:
            raise _TooMany()


class _Walker:
    """Collects simple commands from a tree-sitter tree. State lives only in one instance."""

    def __init__(self, src: bytes, budget: _Budget | None = None) -> None:
        self.src = src
        self.commands: list[SimpleCommand] = []
        self.opaque = ""
        self.severe = False        # `opaque` is a syntax error or a refusal: no mode allows it
        self.functions: list[tuple[str, tuple[SimpleCommand, ...], bool]] = []
        self.assignments: list[tuple[str, Word]] = []
        self.entered: set[int] = set()   # where the substitutions / expansions walked begin (and
        #                                  where a backquoted one ends): `complete` skips these
        self.covered: list[tuple[int, int]] = []   # spans walked as another text (`...` re-read)
        self.budget = budget or _Budget()

    def _text(self, node: Any) -> str:
        return self.src[node.start_byte:node.end_byte].decode("utf-8", "surrogateescape")

    def mark(self, why: str, severe: bool = False) -> None:
        """Record why allow rules cannot match; a severe reason (the text cannot be understood)
        replaces a mild one (`if`, a function), so it is never hidden behind it."""
        if not self.opaque or (severe and not self.severe):
            self.opaque = why
            self.severe = self.severe or severe

    def refuse(self, kind: str) -> None:
        """A node kind the walker does not know (a newer grammar): fail closed."""
        self.mark(f"cannot understand shell syntax '{kind}' (a syntax error to the gate)", severe=True)

    def _trusted_backquotes(self, node: Any) -> bool:
        """Does the grammar's `...` end where bash ends it (the first unescaped backquote) and
        hold no escapes? It does not always: `a` `b` is read as one substitution of `a``b`."""
        end = _backquote_end(self.src, node.start_byte)
        return end + 1 == node.end_byte and b"\\" not in self.src[node.start_byte:end]

    def _backquoted(self, node: Any) -> None:
        """Walk the grammar's `...` node as bash reads it (`_backquoted_at`), and say so when the
        grammar swallowed more than bash does (what follows is left to `complete`)."""
        in_quotes = node.parent is not None and node.parent.type in ("string", "translated_string")
        end = self._backquoted_at(node.start_byte, in_quotes)
        if end != node.end_byte:
            self.mark("backquotes the grammar misreads")

    def _backquoted_at(self, start: int, in_quotes: bool) -> int:
        """Walk the backquoted substitution starting at `start` as bash reads it: the text up to
        the first unescaped backquote, with backslash-escaped backslash, backquote and `$` (and
        `"` inside double quotes) unescaped, is a script run in a substitution. Returns where it
        ends."""
        end = _backquote_end(self.src, start)
        body = re.sub(rb'\\([\\`$"])' if in_quotes else rb"\\([\\`$])", rb"\1", self.src[start + 1:end])
        self.budget.spend(len(body))
        tree, negated = _parse(body)
        sub = _Walker(body, self.budget)
        if negated:
            sub.mark(NEGATION)
        sub.visit(tree.root_node, substituted=True)
        sub.complete(tree.root_node, 0, len(body))
        if tree.root_node.has_error or end >= len(self.src):
            sub.mark(CANNOT_UNDERSTAND, severe=True)      # (no closing backquote: bash fails too)
        self._merge(sub, None)
        self.entered.update((start, end))
        self.covered.append((start, end + 1))
        return min(end + 1, len(self.src))

    def _merge(self, sub: "_Walker", offset: int | None) -> None:
        """Add what a walker of another text found (its commands run in a substitution);
        `offset`: where that text's byte 0 is in ours, when its offsets map onto ours."""
        for c in sub.commands:
            c.substituted = True
            c.spans.clear()              # (offsets in the other text)
        self.commands.extend(sub.commands)
        self.functions.extend(sub.functions)
        self.assignments.extend(sub.assignments)
        if offset is not None:
            self.entered.update(q + offset for q in sub.entered)
            self.covered.extend((a + offset, b + offset) for a, b in sub.covered)
        if sub.opaque:
            self.mark(sub.opaque, sub.severe)

    def _enter(self, node: Any) -> None:
        self.entered.add(node.start_byte)
        if self.src[node.start_byte:node.start_byte + 1] == b"`":
            self.entered.add(node.end_byte - 1)

    # ---- words -------------------------------------------------------------------------
    def word(self, node: Any, glued: list[Any] | tuple[Any, ...] = ()) -> Word:
        """The word `node` is, continued by the `glued` nodes that follow it with no gap (the
        grammar splits `'r'\\m` into two: bash reads one word, `rm`)."""
        segs: list[tuple[str, str]] = []
        self._word_into(node, segs)
        for more in glued:
            self._word_into(more, segs)
        return _merged(segs)

    def _glue(self, word: Word, glued: list[Any]) -> Word:
        """`word` continued by the `glued` nodes."""
        if not glued:
            return word
        segs = list(word.segments)
        for more in glued:
            self._word_into(more, segs)
        return _merged(segs)

    def _word_into(self, node: Any, segs: list[tuple[str, str]]) -> None:
        t = node.type
        if node.is_error or node.is_missing:
            self.mark(CANNOT_UNDERSTAND, severe=True)
            segs.append((SUB, self._text(node)))
            self._visit_children(node, substituted=True)
        elif node.is_named and t not in WALKED_NODES:
            self.refuse(t)
            segs.append((SUB, self._text(node)))
            self._visit_children(node, substituted=True)
        elif t in ("word", "number", "command_name", "special_variable_name", "variable_name"):
            if t == "command_name" or (t == "number" and node.child_count):
                for c in node.children:      # (`10#$(x)` is a number with a substitution in it)
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
            self._enter(node)
            inner = [c for c in node.children if c.type not in ("${", "}")]
            # `${x}` only: `${!x}` (indirect), `${#x}` (length) and `${x…}` with an operator are
            # other values, unknown here.
            simple = len(inner) == 1 and inner[0].type in ("variable_name", "special_variable_name")
            segs.append((VAR, self._text(inner[0]) if simple else ""))
            self._visit_children(node, substituted=True)
        elif t in ("command_substitution", "process_substitution"):
            self._enter(node)
            # `>(sh)` feeds the outer command's output to sh: its stdin is a pipe.
            writes_into = self._text(node).startswith(">(")
            before = len(self.commands)
            if self.src[node.start_byte:node.start_byte + 1] == b"`" and not self._trusted_backquotes(node):
                self._backquoted(node)
            else:
                self._visit_children(node, substituted=True, stdin="pipe" if writes_into else "")
            value = _static_output(self.commands[before:]) if t == "command_substitution" else None
            segs.append((SUB, self._text(node)) if value is None else (EVAL, value))
        elif not node.is_named:
            segs.append((SUB, self._text(node)))     # an operator in a word: not a known value
        else:   # arithmetic, arrays, patterns, subscripts: unknowable, but still walk them
            if t == "arithmetic_expansion":
                self._enter(node)
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

    def _assignment(self, node: Any) -> tuple[str, Word]:
        """(name, value) of `X=v`; the subscript of `a[$(cmd)]=v` is walked (bash evaluates it)."""
        name = node.child_by_field_name("name")
        value = node.child_by_field_name("value")
        index = name.child_by_field_name("index") if name is not None and name.type == "subscript" else None
        if index is not None:
            self.word(index)                       # walks what the subscript runs
        elif name is not None and name.type != "variable_name":
            self.visit(name, substituted=True)
        return (self._text(name) if name else "", self.word(value) if value else Word(()))

    def visit(self, node: Any, substituted: bool = False, stdin: str = "") -> None:
        t = node.type
        if node.is_error or node.is_missing:
            self.mark(CANNOT_UNDERSTAND, severe=True)
            self._visit_children(node, substituted, stdin)
        elif not node.is_named:
            self._visit_children(node, substituted, stdin)   # punctuation and keywords
        elif t not in WALKED_NODES:
            self.refuse(t)
            self._visit_children(node, substituted, stdin)   # the floor still sees what is inside
        elif t == "command":
            self.command(node, substituted, stdin, [])
        elif t == "redirected_statement":
            body = node.child_by_field_name("body")
            redirs = [c for c in node.children if body is None or c != body]
            if body is not None and body.type == "command":
                self.command(body, substituted, stdin, redirs)
            elif body is not None and body.type in _CHAINS and _last_element(body).type == "command":
                # The grammar hangs `a | b > f x`, `a && b > f x` and `! a > f x` on the whole
                # pipeline, list or negation; bash binds the redirection, and the words after
                # it, to the last command.
                before = len(self.commands)
                self.visit(body, substituted, stdin)
                if len(self.commands) > before:
                    self._redirects(redirs, self.commands[-1])
            else:
                # Redirections on a compound statement: record them on a pseudo command so the
                # floor sees `{ ...; } > /dev/sda`, and make the whole opaque to allow rules.
                self.mark("redirection of a compound statement")
                pseudo = SimpleCommand(substituted=substituted)
                self._redirects(redirs, pseudo)
                if body is not None:
                    self.visit(body, substituted, stdin)
                # After the body: words after the redirection belong to its last command, and a
                # `cd` in the body may already have moved (the floor's directories only grow, so
                # the target is also judged where the statement started).
                self.commands.append(pseudo)
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
        elif t in _STATEMENT_KINDS:
            for c in node.children:
                self.visit(c, substituted, stdin if t != "program" else "")
        elif t == "variable_assignment":
            self.assignments.append(self._assignment(node))
        elif t == "variable_assignments":
            self._visit_children(node, substituted)
        elif t == "function_definition":
            self.mark("function definition")
            name_node = node.child_by_field_name("name")
            before = len(self.commands)
            self._visit_children(node, substituted)
            for c in self.commands[before:]:
                c.repeats = True
            body = tuple(self.commands[before:])
            backgrounds = "&" in self._text(node).replace("&&", "")
            self.functions.append((self._text(name_node) if name_node else "", body, backgrounds))
        elif t == "comment" or t in ("heredoc_start", "heredoc_end", "heredoc_content", "file_descriptor"):
            return
        elif t == "heredoc_body":
            self._visit_children(node, True)
        elif t in _REDIRECT_KINDS:
            # a redirection outside a command (the grammar hangs some on other nodes)
            self.mark("redirection outside a simple command")
            pseudo = SimpleCommand(substituted=substituted)
            self._redirects([node], pseudo)
            self.commands.append(pseudo)
        elif t in _WORD_KINDS:
            self.word(node)   # walks inner commands
        elif t in _KEPT_AS_COMMAND:
            self.mark(f"shell construct '{t}'")
            named = [c for c in node.children if c.is_named and c.type != "comment"]
            words, i = [], 0
            while i < len(named):
                glued = _glued(named, i)
                words.append(self.word(named[i], glued))
                i += 1 + len(glued)
            self.commands.append(SimpleCommand(words=words, substituted=substituted))
        elif t in _CONSTRUCTS:
            # if/while/for/case/(( ))/negation/expressions: not modelled for allow rules, but
            # every word and command inside is still walked for the floor; `x | while …; do …;
            # done`: every command inside may read the pipe.
            self.mark(f"shell construct '{t}'")
            before = len(self.commands)
            self._visit_children(node, substituted, stdin)
            if t in _LOOPS:
                for c in self.commands[before:]:
                    c.repeats = True
        else:                      # listed in WALKED_NODES but dispatched nowhere: fail closed
            self.refuse(t)
            self._visit_children(node, substituted, stdin)

    def command(self, node: Any, substituted: bool, stdin: str, redirs: list[Any]) -> None:
        cmd = SimpleCommand(stdin=stdin, substituted=substituted)
        children = list(node.children)
        i = 0
        while i < len(children):
            c = children[i]
            glued = _glued(children, i) if c.is_named and c.type != "comment" else []
            i += 1 + len(glued)
            if c.type == "variable_assignment":
                name, value = self._assignment(c)
                cmd.assigns.append((name, self._glue(value, glued)))
            elif c.type in _REDIRECT_KINDS:
                self._redirects([c], cmd, glued)
            elif c.type == "comment":
                continue
            elif c.is_named:
                cmd.words.append(self.word(c, glued))
                cmd.spans.append((c.start_byte, glued[-1].end_byte if glued else c.end_byte))
            elif c.child_count or c.is_error or c.is_missing:
                self.visit(c, substituted)
        if cmd.words and not cmd.assigns and len(cmd.words[0].segments) == 1 and \
                cmd.words[0].segments[0][0] == RAW and cmd.words[0].segments[0][1] in _RESERVED_FIRST:
            # bash never runs a program so named: the grammar misread what the text is
            self.mark(CANNOT_UNDERSTAND, severe=True)
        for (_, end), (start, _) in zip(cmd.spans, cmd.spans[1:]):
            if b"\n" in self.src[end:start].replace(b"\\\n", b""):
                # A newline between two words of one command ends the command for bash; the
                # grammar sometimes reads on (`a | b⏎c > f` as one command `b c`): distrust it
                # (found by the differential test against bash).
                self.mark(CANNOT_UNDERSTAND, severe=True)
                break
        self._redirects(redirs, cmd)
        self.commands.append(cmd)

    def _redirects(self, nodes: list[Any], cmd: SimpleCommand, glued: list[Any] | None = None) -> None:
        """Add the redirections `nodes` to `cmd`. `glued`: word nodes that follow the (one)
        redirection with no gap, so continue its last word (`<<< 'a'\\b`)."""
        for r in nodes:
            if r.type == "herestring_redirect":
                cmd.stdin = "herestring"
                target = [c for c in r.children if c.is_named]
                cmd.redirects.append(("<<<", self.word(target[0], [*target[1:], *(glued or [])]) if target else None))
            elif r.type == "heredoc_redirect":
                cmd.stdin = cmd.stdin or "heredoc"
                cmd.redirects.append(("<<", None))
                for c in r.children:
                    start = next((x for x in r.children if x.type == "heredoc_start"), None)
                    if c.type == "heredoc_body":
                        cmd.heredoc = cmd.heredoc or self._text(c)
                        self._visit_children(c, True)
                    elif c.is_named and c.type not in ("heredoc_start", "heredoc_end") and \
                            c.type not in _REDIRECT_KINDS and start is not None and \
                            c.end_byte > _line_end(self.src, start.end_byte):
                        # `a <<EOF &&⏎body⏎EOF⏎b`: bash reads the body, then `b` after `&&`;
                        # the grammar reads the body as the command after `&&` (and may lose
                        # `b` in the body): what it hangs on the here-document runs past the
                        # line. Refused; the text is also read as commands, for the floor.
                        self.mark(CANNOT_UNDERSTAND, severe=True)
                        self._read_as_commands(c.start_byte, r.end_byte, "pipe" if c.type == "pipeline" else "")
                        break
                    elif c.type == "pipeline":
                        # `cat <<EOF | sh`: the grammar hangs the rest of the pipeline here; every
                        # command in it reads a pipe.
                        for cc in c.children:
                            if cc.type not in ("|", "|&"):
                                self.visit(cc, False, "pipe")
                    elif c.type in _REDIRECT_KINDS:
                        self._redirects([c], cmd)       # `cat <<EOF > f`: cat's own redirection
                    elif c.is_named and c.type not in ("heredoc_start", "heredoc_end"):
                        self.mark("commands after a here-document")
                        self.visit(c, False, "")
            elif r.type == "file_redirect":
                op = "".join(self._text(c) for c in r.children if not c.is_named)
                targets = [c for c in r.children if c.is_named and c.type != "file_descriptor"]
                # The grammar hangs the words after the target on the redirection (`rm >/dev/null
                # -rf /`: `-rf` and `/` are "destinations"), and splits a target where a backslash
                # follows a quote (`>'a'\\b`): the first run of words with no gap between them is
                # the target, every later run a word of the command.
                runs: list[list[Any]] = []
                for t in [*targets, *(glued or [])]:
                    if runs and runs[-1][-1].end_byte == t.start_byte:
                        runs[-1].append(t)
                    else:
                        runs.append([t])
                word = self.word(runs[0][0], runs[0][1:]) if runs else None
                for run in runs[1:]:
                    cmd.words.append(self.word(run[0], run[1:]))
                    cmd.spans.append((run[0].start_byte, run[-1].end_byte))
                if op in ("<", "<&") and targets and targets[0].type == "process_substitution":
                    cmd.stdin = "procsub"
                elif op == "<" and not cmd.stdin:
                    cmd.stdin = "file"
                cmd.redirects.append((op, word))
            elif r.is_error:
                self.mark(CANNOT_UNDERSTAND, severe=True)
                self._visit_children(r, True)
            else:
                self.visit(r, True)

    # ---- what the grammar read as text -------------------------------------------------------
    def complete(self, root: Any, lo: int, hi: int) -> None:
        """Walk every expansion bash would perform in src[lo:hi] that the tree walk did not
        enter: each is parsed where it starts (`_rescan`). Then `recover` the syntax errors."""
        self._expansions(root, lo, hi)
        self.recover(root, lo, hi)

    def _expansions(self, root: Any, lo: int, hi: int) -> None:
        done = lo
        for m in _expansion_start().finditer(self.src, lo, hi):
            p = m.start()
            if p < done or p in self.entered or _escaped(self.src, p) or \
                    any(a <= p < b for a, b in self.covered):
                continue
            where = _context(root, p)
            if where is None:                       # in quotes or a comment: text to bash too
                continue
            if m.group() in (b"<(", b">(") and where.type != "word":
                continue                            # `<(` is process substitution only in a word
            if m.group() == b"`":                   # its end is known without parsing
                quoted = where
                while quoted is not None and quoted.type not in ("string", "translated_string"):
                    quoted = quoted.parent
                done = self._backquoted_at(p, quoted is not None)
                continue
            bound = where
            while bound.parent is not None and bound.type not in _RESCAN_BOUNDS:
                bound = bound.parent
            done = self._rescan(p, max(min(bound.end_byte, hi), p + 2))

    def recover(self, root: Any, lo: int, hi: int) -> None:
        """Where the grammar failed (an ERROR node), also read the text from the error to the
        end of its line as command lines of their own, a leading `|` making the first one read a
        pipe: `cat <<EOF 2>/dev/null | sh` is misparsed (`sh` becomes a redirection target), and
        the floor must still see `| sh`. A guess, only ever used to find more commands."""
        if not root.has_error:
            return
        stack = [root]
        while stack:
            node = stack.pop()
            if node.end_byte <= lo or node.start_byte >= hi:
                continue
            if node.is_error:
                self.mark(CANNOT_UNDERSTAND, severe=True)
                self._recover_at(node)
                continue                           # (its inner errors are in the text re-read)
            if node.has_error and node.type != "heredoc_body":
                # (a here-document's lines are text: only their expansions run, see `complete`)
                stack.extend(reversed(node.children))

    def _recover_at(self, err: Any) -> None:
        start = err.start_byte
        eol = self.src.find(b"\n", start)
        end = max(err.end_byte, len(self.src) if eol < 0 else eol)
        text = self.src[start:end]
        lead = re.match(rb"[ \t]*(?:\|\||&&|\|&|\||;;|;|&)?[ \t]*", text)
        skip = lead.end() if lead else 0
        if skip == 0 and start == 0:
            return                                 # the same text again: nothing new to read
        body = text[skip:]
        if not body.strip():
            return
        self.budget.spend(len(body))
        piped = bool(lead) and b"|" in text[:skip] and b"||" not in text[:skip]
        tree, negated = _parse(body)
        sub = _Walker(body, self.budget)
        if negated:
            sub.mark(NEGATION)
        for i, statement in enumerate(tree.root_node.children):   # (the first one reads the pipe)
            sub.visit(statement, stdin="pipe" if piped and i == 0 else "")
        sub.complete(tree.root_node, 0, len(body))
        for cmd in sub.commands:
            cmd.spans.clear()
        self.commands.extend(sub.commands)
        self.functions.extend(sub.functions)
        self.assignments.extend(sub.assignments)

    def _read_as_commands(self, start: int, end: int, stdin: str) -> None:
        """Read src[start:end] as command lines of their own (a guess where the grammar is known
        to misread, only ever used to find more commands); every one may read `stdin`."""
        body = self.src[start:end]
        if not body.strip():
            return
        self.budget.spend(len(body))
        tree, _ = _parse(body)
        sub = _Walker(body, self.budget)
        sub.visit(tree.root_node, stdin=stdin)
        sub.complete(tree.root_node, 0, len(body))
        for cmd in sub.commands:
            cmd.spans.clear()
            cmd.stdin = cmd.stdin or stdin
        self.commands.extend(sub.commands)
        self.functions.extend(sub.functions)
        self.assignments.extend(sub.assignments)

    def _rescan(self, p: int, bound: int) -> int:
        """Parse src[p:bound] as the start of a word, walk the expansion found there (its commands
        run in a substitution), and return where it ends."""
        self.budget.spend(bound - p)
        sub_src = b": " + self.src[p:bound]
        tree, node = _expansion_at(sub_src)
        sub = _Walker(sub_src, self.budget)
        if node is None:
            # Not an expansion after all (bash would not run anything there, or fails on it):
            # the floor still sees whatever commands the text holds; no rule allows it.
            sub.visit(tree.root_node, substituted=True)
            sub.mark(f"cannot understand the text at '{_short(self.src[p:bound])}' (a syntax error to the gate)",
                     severe=True)
            end = bound
        else:
            sub.visit(node, substituted=True)
            if node.has_error:
                sub.mark(CANNOT_UNDERSTAND, severe=True)
            sub.complete(tree.root_node, node.start_byte, node.end_byte)
            end = p + node.end_byte - 2
        self._merge(sub, p - 2)
        return end


def _line_end(src: bytes, p: int) -> int:
    """Where the line holding byte p ends."""
    eol = src.find(b"\n", p)
    return len(src) if eol < 0 else eol


def _first_named(node: Any) -> Any:
    """The first named child of `node` (a pipeline's first command: the node itself may start
    at its `|`), or the node itself."""
    return next((c for c in node.children if c.is_named), node)


def _last_element(node: Any) -> Any:
    """The last command of a pipeline, list or negation (descending into nested ones)."""
    while node.type in _CHAINS:
        named = [c for c in node.children if c.is_named and c.type != "comment"]
        if not named:
            break
        node = named[-1]
    return node


def _merged(segs: list[tuple[str, str]]) -> Word:
    """A word of `segs`, neighbours of the same literal kind merged (simpler matching)."""
    merged: list[tuple[str, str]] = []
    for kind, text in segs:
        if merged and merged[-1][0] == kind and kind in (LIT, RAW):
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return Word(tuple(merged))


def _glued(nodes: list[Any], i: int) -> list[Any]:
    """The word nodes after nodes[i] that continue it with no gap: one bash word the grammar
    split (`'r'\\m`, `"a"\\ b`, `$x\\y`: a backslash escape right after a quote or expansion)."""
    out: list[Any] = []
    end = nodes[i].end_byte
    for n in nodes[i + 1:]:
        if not (n.is_named and n.type in _WORD_KINDS and n.start_byte == end):
            break
        out.append(n)
        end = n.end_byte
    return out


def _expansion_at(sub_src: bytes) -> tuple[Any, Any]:
    """(tree, node) for `: TEXT`: the expansion that begins TEXT (what follows it is not its
    business), or None when the grammar does not read one there."""
    tree, _ = _parse(sub_src)     # (a `!` blanked there only changes an exit status)
    node = tree.root_node.named_descendant_for_byte_range(2, 3)
    if node is None or node.start_byte != 2 or node.type not in _SUBSTITUTIONS:
        return tree, None
    return tree, node


@lru_cache(maxsize=256)
def expansions_in(text: str) -> tuple[str, ...] | None:
    """The outermost expansions bash would perform in `text` read as the body of an unquoted
    here-document (`$(…)`, backquotes, `${…}`, `$((…))`, `$[…]`), each as written; None when there
    are more than the walker inspects. The floor checks them in values bash may evaluate again
    later: `x='a[$(cmd)]'; echo ${!x}` or `$((x))` runs cmd."""
    raw = text.encode("utf-8", "surrogatepass")
    out: list[str] = []
    budget, done = _Budget(), 0
    for m in _expansion_start().finditer(raw):
        p = m.start()
        if p < done or m.group() in (b"<(", b">(") or _escaped(raw, p):
            continue
        try:
            budget.spend(len(raw) - p)
        except _TooMany:
            return None
        _, node = _expansion_at(b": " + raw[p:])
        done = p + node.end_byte - 2 if node is not None else len(raw)
        out.append(raw[p:done].decode("utf-8", "surrogateescape"))
    return tuple(out)


def _backquote_end(src: bytes, start: int) -> int:
    """Index of the backquote closing the one at `start` (the first unescaped one after it), or
    len(src) when there is none."""
    i = start + 1
    while i < len(src):
        c = src[i]
        if c == 0x5C:          # backslash: the next byte is escaped
            i += 2
            continue
        if c == 0x60:
            return i
        i += 1
    return len(src)


def _escaped(src: bytes, p: int) -> bool:
    """Is src[p] escaped by an odd run of backslashes before it?"""
    n = 0
    while p - n - 1 >= 0 and src[p - n - 1] == 0x5C:
        n += 1
    return n % 2 == 1


def _context(root: Any, p: int) -> Any:
    """The innermost named node holding byte p, or None when bash reads the text there as
    literal (single or ANSI-C quotes, a comment, a here-document delimiter, or the body of a
    here-document whose delimiter is quoted)."""
    node = root.descendant_for_byte_range(p, p + 1)
    inner = None
    while node is not None:
        if node.type in _LITERAL_NODES and not (node.type == "raw_string" and _in_subscript(node)):
            return None
        if node.type == "heredoc_body" and _quoted_heredoc(node):
            return None
        if inner is None and node.is_named:
            inner = node
        node = node.parent
    return inner


def _in_subscript(node: Any) -> bool:
    """Is this node inside an array subscript? Bash expands an indexed array's subscript even
    from single quotes: `${a['$(cmd)']}` and `a['$(cmd)']=1` run cmd."""
    while node is not None:
        if node.type == "subscript":
            return True
        node = node.parent
    return False


def _quoted_heredoc(body: Any) -> bool:
    """Is the delimiter of this here-document body quoted (`<<'EOF'`, `<<"EOF"`, `<<\\EOF`)?"""
    start = body.prev_named_sibling
    while start is not None and start.type != "heredoc_start":
        start = start.prev_named_sibling
    return start is not None and any(ch in (start.text or b"") for ch in b"'\"\\")


def _short(text: bytes) -> str:
    s = text.decode("utf-8", "surrogateescape")
    return s if len(s) <= 40 else s[:37] + "..."


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


# Small on purpose: a repeated command is answered by the policy's decision memo before it is
# parsed, and every cached Analysis is an object graph a full garbage collection must walk —
# 8,192 of them made single decisions stall for ~100 ms (bench/gate.py).
@lru_cache(maxsize=512)
def analyse(command: str) -> Analysis:
    """Parse `command` with the bash grammar. Never raises; failures show up as `opaque`."""
    source = command      # one interpretation; callers judge every one (`interpretations`)
    # surrogatepass: a lone surrogate (JSON allows "\ud800") still gives bytes to parse; slices
    # are decoded with surrogateescape, which never fails.
    raw = source.encode("utf-8", "surrogatepass")
    try:
        # A parser per parse (≈ 0.2 µs): a tree-sitter Parser must not be shared between the
        # daemon's worker threads, and a fresh one carries no state from an earlier input.
        tree, negated = _parse(raw)
    except Exception as exc:  # noqa: BLE001 - the grammar should not fail; if it does, nothing is known
        return Analysis((), f"unparseable: {exc}", (), (), source)
    walker = _Walker(raw)
    if negated:
        walker.mark(NEGATION)
    try:
        walker.visit(tree.root_node)
        walker.complete(tree.root_node, 0, len(raw))
    except RecursionError:     # thousands of nested $(...): refuse rather than guess
        return Analysis((), TOO_DEEP, (), (), source)
    except _TooMany:
        return Analysis((), TOO_MANY, (), (), source)
    if tree.root_node.has_error:
        walker.mark(CANNOT_UNDERSTAND, severe=True)
    if "\x00" in source:
        walker.mark("NUL byte in command", severe=True)
    return Analysis(tuple(walker.commands), walker.opaque, tuple(walker.functions),
                    tuple(walker.assignments), source)
