"""Rule argument globs, compiled once per policy load to anchored regexes.

- path globs: anchored on the full canonical path; `*` and `?` stay within one segment, `**`
  spans any depth (`/a/**` also matches `/a`), `[abc]`/`[!abc]` classes, `\\x` escapes.
- command globs: anchored on one simple command's text (the parser has already split the command
  at every separator, so a `;` or `|` left in the text is part of an argument); `*` matches any
  characters but a newline, which is what starts a redirection in the text
  (`commands.match_text`), so `echo *` never spans into `echo x > ~/.profile`; a rule writes a
  redirection as ` > GLOB`. A trailing ` *` also matches nothing (`ls *` matches `ls`).
- host globs: the whole lower-cased hostname; `*` matches anything.
`literal_chars` counts non-wildcard characters: "most specific" means most literal characters.
"""

from __future__ import annotations

import re
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing itself is a start-up cost: annotations only)
    from typing import Callable, Iterator

    # translates the glob syntax at a position, or None: (regex, next position)
    Special = Callable[[str, int], "tuple[str, int] | None"]

GLOB_META = "*?[]\\"
_CMD_ANY = r"[^\n]"


class LazyPattern:
    """A regular expression compiled at its first use instead of at import: the gate's modules
    hold ~30 such patterns, compiling them all costs ~3 ms of every `permissions check`, and one
    call uses a few (`ls`: 9). It matches exactly as `re.compile(pattern, flags)` does (it is
    that pattern, compiled once; two threads may both compile it, harmlessly)."""

    __slots__ = ("_source", "_flags", "_compiled")

    def __init__(self, source: str, flags: int = 0) -> None:
        self._source: str = source
        self._flags = flags
        self._compiled: re.Pattern[str] | None = None

    def compiled(self) -> re.Pattern[str]:
        """The compiled pattern (compiled now if it is the first use)."""
        rx = self._compiled
        if rx is None:
            rx = self._compiled = re.compile(self._source, self._flags)
        return rx

    def match(self, string: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[str] | None:
        """As re.Pattern.match."""
        return self.compiled().match(string, pos, endpos)

    def search(self, string: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[str] | None:
        """As re.Pattern.search."""
        return self.compiled().search(string, pos, endpos)

    def finditer(self, string: str, pos: int = 0, endpos: int = sys.maxsize) -> Iterator[re.Match[str]]:
        """As re.Pattern.finditer."""
        return self.compiled().finditer(string, pos, endpos)

    def sub(self, repl: str | Callable[[re.Match[str]], str], string: str, count: int = 0) -> str:
        """As re.Pattern.sub."""
        return self.compiled().sub(repl, string, count)


class GlobError(ValueError):
    """A glob that cannot be compiled; the message says why."""


def escape(text: str) -> str:
    """`text` with every glob metacharacter escaped, so it matches only itself."""
    return "".join("\\" + c if c in GLOB_META else c for c in text)


def literal_chars(glob: str) -> int:
    """Number of characters of `glob` that match only themselves."""
    n, i = 0, 0
    while i < len(glob):
        c = glob[i]
        if c == "\\":
            n += 1
            i += 2
            continue
        if c == "[":
            j = glob.find("]", i + 2)
            i = (j + 1) if j > 0 else i + 1
            continue
        if c not in "*?":
            n += 1
        i += 1
    return n


def literal_prefix(glob: str) -> str:
    """The text every match of `glob` starts with (escapes resolved)."""
    out = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "\\" and i + 1 < len(glob):
            out.append(glob[i + 1])
            i += 2
            continue
        if c in "*?[":
            break
        out.append(c)
        i += 1
    return "".join(out)


def is_literal(glob: str) -> bool:
    """True when `glob` has no wildcard (it matches exactly one string)."""
    i = 0
    while i < len(glob):
        if glob[i] == "\\":
            i += 2
            continue
        if glob[i] in "*?[":
            return False
        i += 1
    return True


def class_body(body: str) -> str:
    """A glob bracket expression's body made safe inside a regex class: backslash and `[` taken
    literally, and `&&`, `~~`, `||`, `--` (set operations in future Python regexes) split."""
    body = re.sub(r"([\\\[&~|])", r"\\\1", body)
    return body.replace("--", "-\\-")


def _class(glob: str, i: int) -> tuple[str, int]:
    j = glob.find("]", i + 2)
    if j < 0:
        raise GlobError(f"unclosed '[' at position {i + 1} in {glob!r}")
    body = glob[i + 1:j]
    neg = body[:1] in ("!", "^")
    if neg:
        body = body[1:]
    return ("[^" if neg else "[") + class_body(body) + "]", j + 1


def _translate(glob: str, special: Special, strict_backslash: bool = True) -> re.Pattern[str]:
    """The regex for `glob`: `special(glob, i)` translates the wildcards of one glob kind at
    position i (regex piece, next position) or says None; backslash escapes, `[...]` classes and
    literal characters are the same for every kind. With `strict_backslash` a trailing backslash
    is an error, else it is a literal backslash."""
    out = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
        elif c == "\\" and strict_backslash:
            raise GlobError(f"trailing backslash in {glob!r}")
        elif (hit := special(glob, i)) is not None:
            piece, i = hit
            out.append(piece)
        elif c == "[":
            cls, i = _class(glob, i)
            out.append(cls)
        else:
            out.append(re.escape(c))
            i += 1
    return _compile("".join(out), glob)


def _path_special(glob: str, i: int) -> tuple[str, int] | None:
    if glob.startswith("/**", i) and (i + 3 == len(glob) or glob[i + 3] == "/"):
        return "(?:/.*)?", i + 3
    if glob.startswith("**", i):
        return ".*", i + 2
    return {"*": ("[^/]*", i + 1), "?": ("[^/]", i + 1)}.get(glob[i])


def _command_special(glob: str, i: int) -> tuple[str, int] | None:
    if glob[i:] in (" *", " **"):
        return f"(?: {_CMD_ANY}*)?", len(glob)
    if glob[i] == "*":
        j = i
        while j < len(glob) and glob[j] == "*":
            j += 1
        return f"{_CMD_ANY}*", j
    return (_CMD_ANY, i + 1) if glob[i] == "?" else None


def _host_special(glob: str, i: int) -> tuple[str, int] | None:
    return {"*": (".*", i + 1), "?": (".", i + 1)}.get(glob[i])


def compile_path(glob: str) -> re.Pattern[str]:
    """Regex for an absolute path glob (already `~`-expanded): `*` and `?` stay within one
    segment, `**` crosses segments, `/**` also matches the directory itself."""
    return _translate(glob, _path_special)


def compile_command(glob: str) -> re.Pattern[str]:
    """Regex for a command glob (normalised by `rules`), matched against `match_text` output."""
    return _translate(glob, _command_special)


def compile_host(glob: str) -> re.Pattern[str]:
    """Regex for a hostname glob (lower-cased by the caller)."""
    return _translate(glob, _host_special, strict_backslash=False)


def _compile(rx: str, glob: str) -> re.Pattern[str]:
    try:
        return re.compile(rx + r"\Z", re.DOTALL)
    except re.error as exc:
        raise GlobError(f"invalid glob {glob!r}: {exc}") from None
