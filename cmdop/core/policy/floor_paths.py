"""The floor for paths: files, directories and prefixes no rule can open up.

Every entry is part of the floor the README's gate section lists.
Checks are component- and prefix-wise on a canonical path, never substring: `/etcetera` and
`my.env.example.txt` are not floor, `.env.local` is.

Comparison is done on NFKC-normalised, case-folded components. On Linux `.ENV` is a different
file from `.env`, but on case-insensitive or normalising mounts (vfat, exfat, some network and
macOS filesystems) it is the same file, and refusing `.ENV` costs nobody anything.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from cmdop.core.policy.paths import components
from cmdop.core.policy.pattern import LazyPattern, class_body

FLOOR_FILES = frozenset({".env", ".gitconfig", ".bashrc", ".zshrc", ".profile", ".ripgreprc",
                         ".mcp.json", ".claude.json",
                         # beyond the basic list: the other files a shell runs at login or start,
                         # as much code execution on the next login as .bashrc is
                         ".bash_profile", ".bash_login", ".bash_logout", ".zshenv", ".zprofile",
                         ".zlogin", ".zlogout"})
FLOOR_FILE_PREFIXES = (".env.",)
FLOOR_DIRS = frozenset({".git", ".ssh", ".cmdop"})
FLOOR_ABS_PREFIXES = ("/etc", "/System", "/private/etc")
# `.config/systemd/user` (beyond the basic list): a unit written there runs code as the user,
# this agent's own user unit included.
FLOOR_HOME_PREFIXES = ("Library/Keychains", ".config/cmdop", ".config/systemd/user")

# Names a glob or an unknown expansion is tested against: one representative per entry.
_SAMPLES = tuple(sorted(FLOOR_FILES | FLOOR_DIRS | {".env.local"}))


def fold(text: str) -> str:
    """The form components are compared in (see module docstring)."""
    if text.isascii():
        return text.lower()
    return unicodedata.normalize("NFKC", text).casefold()


_ASCII_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-+@~,=")
_FOLDED_FILES = frozenset(fold(n) for n in FLOOR_FILES)
_FOLDED_DIRS = frozenset(fold(n) for n in FLOOR_DIRS)


@lru_cache(maxsize=64)
def _prefixes(home: str) -> tuple[tuple[str, list[str]], ...]:
    out = [(p, components(fold(p))) for p in FLOOR_ABS_PREFIXES]
    for rel in FLOOR_HOME_PREFIXES:
        full = home.rstrip("/") + "/" + rel
        out.append(("~/" + rel, components(fold(full))))
    return tuple(out)


def _component_reason(comp: str) -> str | None:
    if comp in _FOLDED_FILES or any(comp.startswith(p) for p in FLOOR_FILE_PREFIXES):
        return f"floor: protected file '{comp}'"
    if comp in _FOLDED_DIRS:
        return f"floor: protected directory '{comp}'"
    return None


@lru_cache(maxsize=64)
def _prefix_strings(home: str) -> tuple[tuple[str, str], ...]:
    return tuple((shown, "/" + "/".join(comps)) for shown, comps in _prefixes(home))


@lru_cache(maxsize=4096)
def check_path(canonical_path: str, home: str, extra: tuple[str, ...] = ()) -> str | None:
    """The floor reason if `canonical_path` (absolute, folded) is protected, else None.

    `extra` adds directories protected like prefixes: the gatekeeper passes cmdop's own config,
    credentials and state dirs when the environment moves them away from their defaults.
    File tools call this again on the path they actually opened.
    """
    # (The agent's own /proc entries are refused by the file tools, `agent_private`, not here.)
    folded = fold(canonical_path)
    for pref in extra:
        pref = fold(pref.rstrip("/")) or "/"
        if pref != "/" and folded.startswith(pref) and (len(folded) == len(pref) or folded[len(pref)] == "/"):
            return f"floor: cmdop's own files ({pref})"
    if "/." in folded:                   # every protected file or directory name starts with "."
        for c in folded.split("/"):
            if c[:1] == ".":
                reason = _component_reason(c)
                if reason:
                    return reason
    for shown, pref in _prefix_strings(home):
        if folded.startswith(pref) and (len(folded) == len(pref) or folded[len(pref)] == "/"):
            return f"floor: protected prefix '{shown}'"
    return None


@lru_cache(maxsize=1024)
def _glob_regex(component: str) -> re.Pattern[str]:
    """A shell glob for one component, as bash expands it without dotglob: a leading `*`, `?`
    or `[...]` does not match a leading dot. `\\x00` stands for an unknown expansion."""
    out: list[str] = []
    i = 0
    while i < len(component):
        c = component[i]
        if c in "*\x00":
            if not out or out[-1] != "[^/]*":   # runs of wildcards are one (no backtracking blow-up)
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = component.find("]", i + 2)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = component[i + 1:j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + class_body(body) + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    rx = "".join(out)
    if component[:1] in ("*", "?", "[", "\x00"):
        rx = "(?!\\.)" + rx
    try:
        return re.compile(rx + r"\Z", re.DOTALL)
    except re.error:
        return re.compile(r"[^/]*\Z")


_WILD = LazyPattern(r"[*?\[\x00]")


def check_pattern(path: str, home: str, prefixes: bool = True, extra: tuple[str, ...] = (),
                  listing: bool = False) -> str | None:
    """Like check_path, for a folded absolute path that may hold glob characters or `\\x00`
    (an unknown expansion): the reason if *some* expansion of it could be protected.
    `prefixes=False` checks components only (for a relative path under an unknown cwd).
    `listing`: the path is given to a program that only lists or measures what it is given
    (`ls -d /*`, `du -sh /*`): a last component that is a bare `*` stands for every entry of its
    directory and names a protected directory there only as one entry among all (its contents
    are not read), so it does not count; `/*/shadow`, `/e*` and `/etc/*` still do."""
    if not _WILD.search(path) and prefixes:
        return check_path(path, home, extra)
    comps = [fold(c) for c in components(path)]
    regexes = [(_glob_regex(c) if _WILD.search(c) else None, c) for c in comps]
    for rx, c in regexes:
        if rx is None:
            reason = _component_reason(c)
            if reason:
                return reason
        else:
            for sample in _SAMPLES:
                if rx.match(sample):
                    return f"floor: pattern '{c}' can name protected '{sample}'"
    extra_prefixes = tuple((p, components(fold(p))) for p in extra if p.strip("/"))
    for shown, pref in ((_prefixes(home) + extra_prefixes) if prefixes else ()):
        # The pattern names something inside a protected prefix when its first components can
        # each match the prefix's components.
        if listing and len(regexes) == len(pref) and regexes[-1][1] == "*":
            continue
        if len(regexes) >= len(pref) and all(
                (rx.match(p) if rx else c == p) for (rx, c), p in zip(regexes, pref)):
            return f"floor: pattern can name protected prefix '{shown}'"
    return None
