"""The floor for shell commands (CONTRACT §4): shapes no rule, mode or flag can allow.

Entries (source: CONTRACT §4 and spec/security-model.txt "Bash signatures"):
1. removing `/` recursively, in any spelling: `rm` by any path or wrapper, short/long/split
   flags, `--no-preserve-root`, targets `/`, `//`, `/.`, `/*`, `$HOME/../..`, `../..` from cwd,
   and `find / -delete`. A program we cannot resolve with such arguments counts as `rm`.
2. fork bombs: a function that calls itself in a pipe or in the background, in any name.
3. a pipe, here-string or process substitution feeding a shell or interpreter (`| sh`,
   `| python -`, `sh <(...)`, `bash <<< "$(...)"`), `bash -c "$(...)"`, `eval "$(...)"`, and a
   pipe into a program we cannot resolve.
4. writes to block devices: redirections, `tee`, `dd of=`, `cp`/`mv` targets, `shred`, `mkfs*`.
5. any floor path named by a word, a redirection, an assignment or an option value (`--x=PATH`),
   resolved against the call's cwd (tracking static `cd`), with `$HOME`/`~` expanded and globs
   or unknown expansions tested against every floor entry they could expand to.

Being a deny list, the floor guesses wide: an unknown expansion is assumed to be able to be
anything a glob `*` could be, `$IFS` is a space, and brace expressions are expanded.
"""

from __future__ import annotations

import posixpath
import re
from functools import lru_cache

from cmdop.core.policy.commands import SHELLS, unwrap
from cmdop.core.policy.floor_paths import check_pattern
from cmdop.core.policy.paths import expand_user, normalise
from cmdop.core.policy.shell import TOO_DEEP, VAR, SimpleCommand, Word, analyse

UNKNOWN = "\x00"
MAX_COMMAND = 65536   # the floor bounds its own work; a longer command is refused, not guessed at
_INTERPRETER = re.compile(
    r"^(?:(?:python|pypy|perl|ruby|php|lua|luajit|tclsh|node|nodejs|jshell)[0-9.]*|irb|deno|bun|"
    r"wish|R|Rscript|osascript|pwsh|powershell|expect|source|\.)$")
_BLOCK_DEV = re.compile(r"^/dev/(?:sd|hd|vd|xvd|nvme|mmcblk|loop|dm-|md|sr|nbd|rbd|zd|bcache|"
                        r"mtdblock|ram|fd[0-9]|mapper/|disk/|block/|root$)")
_WRITE_OPS = frozenset({">", ">>", ">|", "&>", "&>>", "<>", ">&", "&>|"})
_DEVICE_WRITERS = frozenset({"tee", "cp", "mv", "shred", "wipefs", "blkdiscard", "mke2fs", "mkswap",
                             "install", "pv", "badblocks", "sgdisk", "sfdisk"})
_FORKBOMB_TEXT = re.compile(r"([\w:.-]{1,64})\(\)\{\1\|\1&\}|fork\s*while\s*fork|fork\(\)\s*while|"
                            r"while\s*\(?\s*1?\s*\)?\s*;?\s*do\s*\$0\s*&")


def _braces(text: str, limit: int = 64) -> list[str]:
    """Expand `{a,b}` and `{1..3}` statically (bounded), as bash would before running."""
    m = re.search(r"\{([^{}]*(?:,|\.\.)[^{}]*)\}", text)
    if not m or limit <= 0:
        return [text]
    body = m.group(1)
    if ".." in body and "," not in body:
        a, _, b = body.partition("..")
        if a.lstrip("-").isdigit() and b.lstrip("-").isdigit():
            lo, hi = int(a), int(b)
            step = 1 if hi >= lo else -1
            items = [str(x) for x in range(lo, hi + step, step)][:limit]
        elif len(a) == 1 and len(b) == 1:
            items = [chr(x) for x in range(min(ord(a), ord(b)), max(ord(a), ord(b)) + 1)][:limit]
        else:
            items = [body]
    else:
        items = body.split(",")
    out: list[str] = []
    for item in items:
        out.extend(_braces(text[:m.start()] + item + text[m.end():], limit - len(out) - 1))
    return out[:limit] or [text]


def _argv(words: tuple[Word, ...] | list[Word], home: str, variables: dict[str, str]) -> list[str]:
    """Best-effort argv: known variables substituted, `$IFS` splits, braces expanded,
    unknown expansions as UNKNOWN."""
    out: list[str] = []
    env = dict(variables, HOME=home, IFS=" ")
    for w in words:
        text = w.text(env, UNKNOWN)
        pieces = text.split() if any(k == VAR and t == "IFS" for k, t in w.segments) else [text]
        for p in pieces:
            out.extend(_braces(p))
    return out


def _program(arg0: str) -> str:
    return "?" if UNKNOWN in arg0 or re.search(r"[*?\[]", arg0) else posixpath.basename(arg0.rstrip("/")) or arg0


def _resolve(arg: str, home: str, cwd: str | None) -> str | None:
    """A folded absolute form of `arg` as a path, or None when it depends on an unknown cwd."""
    arg = expand_user(arg, home)
    if not arg.startswith("/"):
        if cwd is None:
            return None
        arg = cwd.rstrip("/") + "/" + arg
    return normalise(arg)


def _is_root_target(arg: str, home: str, cwd: str | None) -> bool:
    """Does removing `arg` remove `/`? An unknown expansion may be empty (`"$X/"*` is `/*`)."""
    for cand in {arg, arg.replace(UNKNOWN, "")}:
        path = _resolve(cand, home, cwd) if cand else None
        if path is None:
            continue
        if path == "/":
            return True
        comps = [c for c in path.split("/") if c]
        # `/*`, `/?*`, `/[a-z]*`, `/$X`: a glob over the top level removes the whole tree.
        if len(comps) == 1 and re.search(r"[*?\[\x00]", comps[0]):
            return True
    return False


def _rm_root(prog: str, args: list[str], home: str, cwd: str | None) -> str | None:
    if prog == "find":
        starts = [a for a in args if not a.startswith(("-", "(", "!"))][:1]
        destructive = "-delete" in args or any(a in ("-exec", "-execdir") and i + 1 < len(args)
                                                and _program(args[i + 1]) in ("rm", "shred")
                                                for i, a in enumerate(args))
        if starts and destructive and _is_root_target(starts[0], home, cwd):
            return "floor: find deleting from /"
        return None
    if prog not in ("rm", "?", "unlink", "rmdir"):
        return None
    recursive, targets, options_done = False, [], False
    for a in args:
        if not options_done and a == "--":
            options_done = True
        elif not options_done and a.startswith("--"):
            if "--recursive".startswith(a) and len(a) > 4 or a.startswith("--no-preserve"):
                recursive = True
        elif not options_done and a.startswith("-") and len(a) > 1:
            recursive = recursive or "r" in a or "R" in a
        else:
            targets.append(a)
    if recursive and any(_is_root_target(t, home, cwd) for t in targets):
        return "floor: recursive removal of /"
    return None


def _rm_anywhere(argv: list[str], home: str, cwd: str | None) -> str | None:
    """`rm` behind a wrapper we do not model (`watch rm -rf /`, `flock l rm -rf /`): check the
    arguments after any word that names rm."""
    for i, a in enumerate(argv[1:], start=1):
        if _program(a) == "rm":
            reason = _rm_root("rm", argv[i + 1:], home, cwd)
            if reason:
                return reason
    return None


_INLINE_FLAGS = frozenset({"-c", "-e", "-E", "--eval", "-r", "--command"})
# `rm` removing / as it appears inside another language's string: os.system("rm -rf /").
_EMBEDDED_RM = re.compile(r"""\brm\s+(?:-[^\s'"]*\s+)*?-[A-Za-z]*[rR][A-Za-z]*\s+(?:-\S+\s+)*['"]?/+[.*]?['"]?(?=[\s'");`]|$)""")


def _inline_code(prog: str, argv: list[str], home: str, cwd: str | None, depth: int,
                 extra: tuple[str, ...] = ()) -> str | None:
    """Strings other programs will run: `find -exec sh -c STR`, `alias x=STR`, `trap STR`,
    and rm-removing-/ inside interpreter code (`python3 -c 'os.system("rm -rf /")'`)."""
    for i, a in enumerate(argv[:-1]):
        if _program(a) in SHELLS and i > 0:
            for j in range(i + 1, min(i + 4, len(argv) - 1)):
                if argv[j].startswith("-") and "c" in argv[j] and not argv[j].startswith("--"):
                    reason = _check(argv[j + 1], home, cwd, depth + 1, extra)
                    if reason:
                        return reason
    if prog == "alias":
        for a in argv[1:]:
            reason = _check(a.partition("=")[2], home, cwd, depth + 1, extra) if "=" in a else None
            if reason:
                return f"{reason} (in an alias)"
    if prog == "trap" and len(argv) > 1:
        reason = _check(argv[1], home, cwd, depth + 1, extra)
        if reason:
            return f"{reason} (in a trap)"
    if prog in SHELLS or _INTERPRETER.match(prog):
        for i, a in enumerate(argv[1:-1], start=1):
            if a in _INLINE_FLAGS and _EMBEDDED_RM.search(argv[i + 1]):
                return "floor: recursive removal of / inside inline code"
    return None


def _device_write(prog: str, args: list[str], redirects: list[tuple[str, str]], home: str,
                  cwd: str | None) -> str | None:
    cands = [t for op, t in redirects if op in _WRITE_OPS and not t.isdigit()]
    if prog == "dd":
        cands += [a[3:] for a in args if a.startswith("of=")]
    elif prog in _DEVICE_WRITERS or prog.startswith("mkfs"):
        cands += [a for a in args if not a.startswith("-")]
    for c in cands:
        path = _resolve(c, home, cwd)
        if path and _BLOCK_DEV.match(path):
            return f"floor: write to block device {path}"
    return None


def _named_paths(args: list[str], home: str, cwd: str | None, extra: tuple[str, ...] = ()) -> str | None:
    for a in args:
        cands = {a}
        for sep in ("=", ":", ",", "@"):
            if sep in a:
                cands.update(a.split(sep))
        if a.startswith("-") and len(a) > 2 and not a.startswith("--"):
            cands.add(a[2:])
        for c in cands:
            if not c or c == UNKNOWN:
                continue
            unknown_cwd = not c.startswith(("/", "~")) and cwd is None
            path = normalise("/" + c) if unknown_cwd else _resolve(c, home, cwd)
            if path is None:
                continue
            reason = check_pattern(path, home, prefixes=not unknown_cwd, extra=extra)
            if reason:
                return f"{reason} (named in the command)"
    return None


def _fork_bomb(analysis_functions: tuple[tuple[str, tuple[SimpleCommand, ...], bool], ...],
               source: str) -> str | None:
    for name, body, backgrounds in analysis_functions:
        calls = [c for c in body if c.words and c.words[0].static == name]
        if calls and (backgrounds or len(calls) > 1 or any(c.stdin == "pipe" for c in calls)):
            return f"floor: fork bomb (function '{name}' spawns itself)"
    if _FORKBOMB_TEXT.search(re.sub(r"\s+", "", source)) or _FORKBOMB_TEXT.search(source):
        return "floor: fork bomb"
    return None


@lru_cache(maxsize=8192)
def check_command(command: str, home: str, cwd: str, extra: tuple[str, ...] = ()) -> str | None:
    """The floor reason if `command` (bash) matches a floor entry, else None. Pure, cached.
    `extra`: more protected directories (see floor_paths.check_path)."""
    if len(command) > MAX_COMMAND:
        return f"floor: command longer than {MAX_COMMAND} characters is not inspected"
    try:
        reason = _check(command, home, cwd or None, 0, extra)
    except RecursionError:
        return "floor: command nested too deeply to inspect"
    if reason is None and "IFS" in command:
        # The grammar mis-splits some `$IFS` spellings (`rm$IFS-rf$IFS/`); check the text with
        # every $IFS spelled as the space it expands to as well.
        spaced = re.sub(r"\$\{IFS\}|\$IFS(?![A-Za-z0-9_])", " ", command)
        if spaced != command:
            reason = _check(spaced, home, cwd or None, 0, extra)
    return reason


def _check(command: str, home: str, cwd: str | None, depth: int, extra: tuple[str, ...] = ()) -> str | None:
    if depth > 8:
        return "floor: commands nested too deeply to inspect"
    analysis = analyse(command)
    if analysis.opaque == TOO_DEEP:
        return f"floor: {TOO_DEEP}"
    reason = _fork_bomb(analysis.functions, analysis.source)
    if reason:
        return reason
    variables: dict[str, str] = {}
    for name, value in analysis.assignments:   # X=/etc; cat $X/passwd
        if name and value.static is not None:
            variables[name] = value.static
    for cmd in analysis.commands:
        for name, value in cmd.assigns:
            if value.static is not None:
                variables.setdefault(name, value.static)
    for cmd in analysis.commands:
        un = unwrap(cmd)
        redirects = [(op, _argv((t,), home, variables)[0] if t is not None else "")
                     for op, t in cmd.redirects]
        for _, value in cmd.assigns:
            reason = _named_paths(_argv((value,), home, variables), home, cwd, extra)
            if reason:
                return reason
        reason = _named_paths([t for _, t in redirects if t], home, cwd, extra) or _device_write(
            "", [], redirects, home, cwd)      # also `> /dev/sda` with no command word at all
        if reason:
            return reason
        for layer in un.layers:
            argv = _argv(layer.words, home, variables)
            if not argv:
                continue
            prog = _program(argv[0])
            args = argv[1:]
            for check in (_rm_root(prog, args, home, cwd), _device_write(prog, args, redirects, home, cwd),
                          _named_paths(argv, home, cwd, extra), _rm_anywhere(argv, home, cwd),
                          _inline_code(prog, argv, home, cwd, depth, extra)):
                if check:
                    return check
            if prog in SHELLS and cmd.heredoc:       # bash <<EOF ... EOF runs the body
                reason = _check(cmd.heredoc, home, cwd, depth + 1, extra)
                if reason:
                    return f"{reason} (in a here-document run by {prog})"
            shellish = prog in SHELLS or prog == "?" or _INTERPRETER.match(prog) is not None
            if shellish and cmd.stdin in ("pipe", "procsub", "herestring"):
                what = "a program that cannot be resolved" if prog == "?" else f"'{prog}'"
                return f"floor: {cmd.stdin} into {what}"
            if (prog in SHELLS or _INTERPRETER.match(prog)) and any(
                    k == "C" and t.startswith(("<(", ">(")) for w in layer.words[1:] for k, t in w.segments):
                return f"floor: '{prog}' runs a process substitution"
            if prog == "cd" and not cmd.substituted:
                target = args[0] if args else "~"
                cwd = _resolve(target, home, cwd) if UNKNOWN not in target and target != "-" else None
        if un.dynamic_nested_sub:
            return "floor: a shell or eval runs the output of a command substitution"
        for script in un.nested:
            reason = _check(script, home, cwd, depth + 1, extra)
            if reason:
                return reason
    return None
