"""From a parsed command to what rules and the floor match: wrappers unwrapped, programs
normalised, one matchable text per simple command.

Rules (why, in attacker terms):
- Wrappers that only change scheduling or lookup (`nice`, `nohup`, `timeout`, `command`, `exec`,
  `time`, `stdbuf`, `setsid`, `ionice`, `busybox`, `builtin`, `env` without `-C`/`-S`) are
  transparent: `nice git status` is allowed by `git *`.
- Wrappers that change privilege, root, or the arguments (`sudo`, `doas`, `su`, `runuser`, `chroot`,
  `xargs`, `env -C`) are not: the allow text is the whole outer command (`sudo git *` must be
  written to allow `sudo git status`), while deny rules see every layer (`git push *` denies
  `sudo git push x`).
- `bash -c STR`, `sh -c STR`, `eval ARGS`, `env -S STR`, `su -c STR` are parsed again as commands;
  a dynamic STR is unknown.
- `env NAME=V cmd` moves NAME=V into cmd's leading assignments: `ls *` does not match
  `env LD_PRELOAD=x.so ls`.
- Programs given by path match a bare rule name only from /bin, /usr/bin, /sbin, /usr/sbin,
  /usr/local/bin (`//usr/bin/../bin/git` is folded first); for the floor every path is reduced to
  its last component.
"""

from __future__ import annotations

import posixpath
import re

from cmdop.core.policy import programs
from cmdop.core.policy.pattern import LazyPattern
from cmdop.core.policy.shell import LIT, RAW, SimpleCommand, Word
from cmdop.core.value import Frozen

STANDARD_DIRS = frozenset({"/bin", "/usr/bin", "/sbin", "/usr/sbin", "/usr/local/bin"})

# wrapper -> (short options taking an argument, long options taking an argument, privileged);
# the data lives in programs.PROGRAMS, with everything else the gate knows about programs.
_WRAPPERS: dict[str, tuple[str, frozenset[str], bool]] = {
    name: (spec.short, spec.long, spec.privileged) for name, spec in programs.wrappers().items()}
# Wrappers harmless bare but not with options: `time -o FILE` writes a file of chosen content,
# `exec -a NAME` changes the name a program dispatches on (`exec -a git-rm git status` removes).
_PRIVILEGED_WITH_OPTIONS = frozenset({"time", "exec"})
# Positional arguments a wrapper takes before the command it runs.
_POSITIONALS = {name: spec.positionals for name, spec in programs.wrappers().items() if spec.positionals}
SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh", "mksh", "csh", "tcsh", "ash", "fish", "yash",
                    "posh", "rbash", "rc", "es", "sash", "su"})
_VERSIONED = LazyPattern(r"^([a-z]+?)[0-9][0-9.]*$")


def is_shell(name: str) -> bool:
    """A shell by name, versioned spellings included (`ksh93`, `bash5`, `bash-5.2` is not)."""
    if name in SHELLS:
        return True
    m = _VERSIONED.match(name)
    return m is not None and m.group(1) in SHELLS


# Redirections that cannot write anywhere new: between stdout/stderr, closing, or into /dev/null.
_HARMLESS_REDIRECT = LazyPattern(r"^(?:[12]?>&[12-]|[12]?>&?/dev/null|&>>?/dev/null|[12]?>>/dev/null)$")


def harmless_redirect(op: str, target: str) -> bool:
    """Is `op target` a redirection no rule needs to spell (`2>&1`, `>/dev/null`)?"""
    return _HARMLESS_REDIRECT.match(op + target) is not None


def program_name(value: str) -> str:
    """The name a rule matches: the basename only for programs in the standard system dirs."""
    if value.startswith("/"):
        folded = posixpath.normpath("/" + value.lstrip("/"))
        if posixpath.dirname(folded) in STANDARD_DIRS:
            return posixpath.basename(folded)
        return folded
    return value


class Layer(Frozen):
    """One invocation in a chain of wrappers (outermost first)."""

    FIELDS = ("assigns", "words", "privileged")
    assigns: tuple[tuple[str, Word], ...]
    words: tuple[Word, ...]
    privileged: bool          # this layer changes privilege/root/arguments of what it runs

    def __init__(self, assigns: tuple[tuple[str, Word], ...], words: tuple[Word, ...],
                 privileged: bool) -> None:
        self._set(assigns=assigns, words=words, privileged=privileged)


class Unwrapped(Frozen):
    """A simple command with its wrappers peeled. `nested` is a string to parse as a command."""

    FIELDS = ("layers", "nested", "dynamic_nested", "dynamic_nested_sub")
    layers: tuple[Layer, ...]
    nested: tuple[str, ...]      # static -c / eval / env -S strings
    dynamic_nested: bool          # a -c / eval string that is not static
    dynamic_nested_sub: bool      # ... and it contains $(...)/backticks (curl | sh in disguise)

    def __init__(self, layers: tuple[Layer, ...], nested: tuple[str, ...], dynamic_nested: bool,
                 dynamic_nested_sub: bool) -> None:
        self._set(layers=layers, nested=nested, dynamic_nested=dynamic_nested,
                  dynamic_nested_sub=dynamic_nested_sub)


def _static(word: Word) -> str | None:
    return word.static


def unwrap(cmd: SimpleCommand) -> Unwrapped:
    """Peel wrappers off `cmd`. Never raises; stops at the first word it cannot read."""
    layers: list[Layer] = []
    nested: list[str] = []
    dyn = dyn_sub = False
    assigns = tuple(cmd.assigns)
    words = list(cmd.words)
    privileged = False
    for _ in range(16):  # wrappers nest; the bound stops pathological chains
        layers.append(Layer(assigns, tuple(words), privileged))
        if not words:
            break
        head = _static(words[0])
        if head is None:
            break
        name = posixpath.basename(head)
        if is_shell(name) or name == "eval":
            script = _shell_script(name, words)
            if isinstance(script, Word):
                if script.static is not None:
                    nested.append(script.static)
                else:
                    dyn = True
                    dyn_sub = dyn_sub or any(k in ("C", "E") for k, _ in script.segments)
            elif script:
                nested.extend(script)
            if name == "su":        # another user runs the script: only the whole line can allow
                layers.append(Layer(assigns, (), True))
            break
        spec = _WRAPPERS.get(name)
        if spec is None:
            break
        short, long, priv = spec
        rest, extra_assigns, split, chdir = _skip_options(name, words[1:], short, long)
        if rest is None:
            break
        if split is not None:
            nested.append(split)
        rest = rest[_POSITIONALS.get(name, 0):]    # timeout DURATION, chroot NEWROOT, flock FILE...
        if name == "flock" and rest and rest[0].static in ("-c", "--command"):   # flock FILE -c CMD
            if len(rest) > 1 and rest[1].static is not None:
                nested.append(rest[1].static or "")
            else:
                dyn = True
            layers.append(Layer(assigns, tuple(rest), False))
            break
        if name == "watch":             # watch runs `sh -c "ARGS..."`
            if all(w.static is not None for w in rest):
                nested.append(" ".join(w.static or "" for w in rest))
            else:
                dyn = True
            layers.append(Layer(assigns, tuple(rest), True))
            break
        with_options = name in _PRIVILEGED_WITH_OPTIONS and any(
            (w.static or "-").startswith("-") for w in words[1:2])
        privileged = priv or chdir or name == "su" or with_options
        assigns = assigns + tuple(extra_assigns)
        words = rest
    return Unwrapped(tuple(layers), tuple(nested), dyn, dyn_sub)


def _shell_script(name: str, words: list[Word]) -> Word | list[str] | None:
    """The script a shell (-c) or eval runs, if the command gives it inline."""
    if name == "eval":
        if all(w.static is not None for w in words[1:]):
            return [" ".join(w.static or "" for w in words[1:])]
        return Word(tuple(seg for w in words[1:] for seg in w.segments))
    if name == "su":                # su [opts] [user] -c CMD: the command may follow the user
        for i, w in enumerate(words[1:-1], start=1):
            if w.static in ("-c", "--command"):
                return words[i + 1]
            if (w.static or "").startswith("--command="):
                return Word(((LIT, (w.static or "")[len("--command="):]),))
        return None
    i = 1
    while i < len(words):
        v = words[i].static
        if v is None or v == "--" or not v.startswith(("-", "+")):
            return None
        if v in ("-o", "+o", "-O", "+O"):
            i += 2
            continue
        if v.startswith("-") and not v.startswith("--") and "c" in v[1:]:
            return words[i + 1] if i + 1 < len(words) else None
        i += 1
    return None


def _skip_options(name: str, words: list[Word], short: str, long: frozenset[str]
                  ) -> tuple[list[Word] | None, list[tuple[str, Word]], str | None, bool]:
    """Skip a wrapper's options. Returns (remaining words or None if unreadable, NAME=V moved out
    of `env`, an `env -S` string, whether the working directory changes)."""
    assigns: list[tuple[str, Word]] = []
    split: str | None = None
    chdir = False
    i = 0
    while i < len(words):
        v = words[i].static
        if v is None:
            return None, assigns, split, chdir
        if v == "--":
            i += 1
            break
        if name == "env" and v == "-":          # `env -` is `env -i`
            i += 1
            continue
        if name == "env" and "=" in v and not v.startswith("-") and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", v):
            key, _, val = v.partition("=")
            assigns.append((key, Word(((LIT, val),))))
            i += 1
            continue
        if v.startswith("--") and len(v) > 2:
            key, eq, val = v[2:].partition("=")
            if key in ("chdir",):
                chdir = True
            if key == "split-string" or (name == "flock" and key == "command"):
                split = val if eq else (words[i + 1].static if i + 1 < len(words) else None)
            i += 1 if eq or key not in long else 2
            continue
        if v.startswith("-") and len(v) > 1 and not (name in ("nice",) and v[1:].lstrip("-").isdigit()):
            j = 1
            consumed = 1
            while j < len(v):
                ch = v[j]
                if ch in short:
                    arg = v[j + 1:] if j + 1 < len(v) else (words[i + 1].static if i + 1 < len(words) else "")
                    consumed = 1 if j + 1 < len(v) else 2
                    if name == "env" and ch == "C" or name == "sudo" and ch == "D":
                        chdir = True
                    if name == "env" and ch == "S" or name == "flock" and ch == "c":
                        split = arg
                    break
                if name == "sudo" and ch in "si" and _rest_is_empty(words, i + 1):
                    return [Word(((RAW, "sh"),))], assigns, split, chdir   # sudo -s: a shell
                j += 1
            i += consumed
            continue
        if name == "nice" and v.startswith("-"):
            i += 1
            continue
        break
    if name == "su":
        return None, assigns, split, chdir
    return words[i:], assigns, split, chdir


def _rest_is_empty(words: list[Word], i: int) -> bool:
    return all((w.static or "").startswith("-") for w in words[i:])


def word_match_text(word: Word, program: bool) -> str | None:
    """The text an allow rule sees for `word`, or None when it must not be matched.

    Static words give their value. Unquoted globs in argument position are kept as written
    (`ls *.py` matches `ls *`); in program position they are unknown. Variables, substitutions,
    brace expansion and paths with `..` components are unknown.
    """
    value = word.static
    if value is None:
        if program or word.has_expansion or any(k == RAW and "{" in t for k, t in word.segments):
            return None
        value = "".join(t for _, t in word.segments)
    if program:
        name = program_name(value)
        if "/" not in name:          # folded into a standard dir: `/usr/bin/../bin/git` is git
            return name
    if "/" in value and ".." in value.split("/"):
        return None
    return program_name(value) if program else value


MARK = "\x00"     # where `match_text` marks code: a NUL never reaches here from a command


def match_text(layer: Layer, redirects: list[tuple[str, Word | None]],
               marks: dict[int, set[int]] | None = None, keep_marks: bool = False) -> str | None:
    """One line a command glob is matched against, or None when part of it is unknown.

    `marks` (word index → offsets in that word) are where a command runs code (programs.sites,
    a wrapped program): a newline goes there, which a glob's `*` never matches, so only a rule
    that spells what follows literally covers it (`rules` lets a spelled token match one).
    With `keep_marks` they are left as MARK, for the caller to find."""
    out: list[str] = []
    for key, val in layer.assigns:
        v = word_match_text(val, False)
        if v is None:
            return None
        out.append(f"{key}={v}")
    for i, w in enumerate(layer.words):
        v = word_match_text(w, i == 0)
        if v is None:
            return None
        for off in sorted((marks or {}).get(i, ()), reverse=True):
            if 0 <= off <= len(v):
                v = v[:off] + MARK + v[off:]
        out.append(v)
    for op, target in redirects:
        # A redirection starts with a newline, the one character a command glob's `*` does not
        # match: `echo *` must not allow `echo x >~/.profile`; `echo * > *.txt` can.
        if target is None:
            out.append("\n" + op)
            continue
        t = target.static
        if t is None:
            return None
        if harmless_redirect(op, t):
            continue
        out.append("\n" + op + t)
    text = " ".join(out).replace(" \n", "\n")
    return text if keep_marks else text.replace(MARK, "\n")


def wrapped_starts(layers: tuple[Layer, ...]) -> tuple[int | None, list[int]]:
    """(index of the layer that carries the allow text when a privileged wrapper is in the chain,
    the word indexes in that layer where each wrapped command starts). `(None, [])` when no
    wrapper changes privilege: the innermost command is matched on its own then."""
    first_priv = next((i for i, layer in enumerate(layers) if layer.privileged), None)
    if not first_priv:
        return None, []
    outer = layers[first_priv - 1].words
    starts = []
    for layer in layers[first_priv:]:
        n = len(layer.words)
        if n and n <= len(outer) and outer[len(outer) - n:] == layer.words:
            starts.append(len(outer) - n)
    return first_priv - 1, starts
