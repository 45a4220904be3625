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

from cmdop.core.policy.commands import is_shell, unwrap
from cmdop.core.policy.floor_paths import (FLOOR_ABS_PREFIXES, FLOOR_HOME_PREFIXES, _glob_regex,
                                           check_pattern, fold)
from cmdop.core.policy.paths import components, expand_user, normalise
from cmdop.core.policy.shell import EVAL, TOO_DEEP, VAR, SimpleCommand, Word, analyse

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
        if any(k == EVAL for k, _ in w.segments) and len(text.split()) > 1:
            pieces = [text] + text.split()       # `$(echo / x)` unquoted splits; quoted does not
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
        # A top-level system directory: removing it removes the system as surely as `/` does.
        if len(comps) == 1 and comps[0] in _SYSTEM_TOP:
            return True
    return False


_SYSTEM_TOP = frozenset({"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "root",
                         "run", "sbin", "sys", "usr", "var", "home", "snap", "System", "private"})

_FIND_NO_START = ("-", "(", "!", ")", ",")


def _find_starts(args: list[str]) -> list[str]:
    """The starting points of `find [-H|-L|-P] [-D x] [-Olevel] START... EXPR` (`.` when none)."""
    i = 0
    while i < len(args) and args[i] in ("-H", "-L", "-P") or (i < len(args) and args[i].startswith("-O")):
        i += 1
    if i < len(args) and args[i] == "-D":
        i += 2
    starts = []
    for a in args[i:]:
        if a.startswith(_FIND_NO_START) and a not in ("-", "!"):
            break
        starts.append(a)
    return starts or ["."]


@lru_cache(maxsize=64)
def _anchors(home: str, extra: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Directories statically known to hold floor entries: the home directory (its `.ssh`,
    `.bashrc`, `.profile`, `.cmdop`, `.config/cmdop`) and the floor prefixes."""
    out = [components(fold(normalise(home)))] if home.startswith("/") and home != "/" else []
    out += [components(fold(p)) for p in FLOOR_ABS_PREFIXES]
    out += [components(fold(normalise(home.rstrip("/") + "/" + rel))) for rel in FLOOR_HOME_PREFIXES]
    out += [components(fold(normalise(e))) for e in extra if e.startswith("/") and e.strip("/")]
    return tuple(tuple(c) for c in out)


def _covers_anchor(arg: str, home: str, cwd: str | None, extra: tuple[str, ...] = ()) -> bool:
    """Is `arg` (maybe a glob) `/`, an anchor, or an ancestor of one? Removing, archiving or
    copying it recursively reaches protected files the command never names."""
    for cand in {arg, arg.replace(UNKNOWN, "")}:
        path = _resolve(cand, home, cwd) if cand else None
        if path is None:
            continue
        comps = [fold(c) for c in components(path)]
        if not comps:
            return True
        for anchor in _anchors(home, extra):
            if len(comps) > len(anchor):
                continue
            if all((_glob_regex(c).match(a) if re.search(r"[*?\[\x00]", c) else c == a)
                   for c, a in zip(comps, anchor)):
                return True
    return False


# Programs that read (or copy out) a whole tree: what they are given recursively must not hold
# protected files. (option letters that make them recursive; "" = always recursive)
_TREE_READERS = {"grep": "rR", "egrep": "rR", "fgrep": "rR", "zgrep": "rR", "rg": "", "ag": "", "ack": "",
                 "cp": "rRa", "scp": "r", "rsync": "ra", "zip": "r", "7z": "", "7za": "", "tar": "",
                 "bsdtar": "", "chmod": "R", "chown": "R", "chgrp": "R", "setfacl": "R",
                 "mv": "", "rclone": "", "srm": "r", "wipe": "r"}
_COPIERS = frozenset({"cp", "scp", "rsync", "mv", "rclone"})   # the last target is the destination
_TREE_LONG = ("--recursive", "--archive", "--dereference-recursive")


def _tree_op(prog: str, args: list[str], home: str, cwd: str | None, extra: tuple[str, ...]) -> str | None:
    """`tar cf - ~`, `cp -r ~ /tmp/h`, `grep -r KEY /`, `chmod -R 777 ~`, `rsync --delete x/ /`:
    a recursive read, copy or change of a directory that holds protected files."""
    letters = _TREE_READERS.get(prog)
    if letters is None:
        return None
    recursive = letters == ""
    targets: list[str] = []
    skip_pattern = prog in ("grep", "egrep", "fgrep", "zgrep", "rg", "ag", "ack")
    done = False
    skip = -1
    for i, a in enumerate(args):
        if i == skip:
            continue
        if not done and a == "--":
            done = True
            continue
        if not done and a.startswith("--"):
            key, _, val = a.partition("=")
            recursive = recursive or key in _TREE_LONG or key.startswith("--delete")
            if key == "--directory" and val:                  # tar --directory=DIR: archived too
                targets.append(val)
            elif key in ("--regexp", "--file") and val:       # grep's pattern is not positional
                skip_pattern = False
            continue
        if not done and a.startswith("-") and len(a) > 1:
            recursive = recursive or any(ch in letters for ch in a[1:])
            if prog in ("grep", "egrep", "fgrep", "zgrep") and ("e" in a[1:] or "f" in a[1:]):
                skip_pattern = False
            if prog in ("tar", "bsdtar") and (a == "-C" or a[1:].startswith("C")) and i + 1 < len(args):
                base = a[2:] or args[i + 1]       # tar -C DIR: later members are relative to DIR
                cwd = _resolve(base, home, cwd) if UNKNOWN not in base else None
                skip = i + 1 if a == "-C" else skip
            continue
        targets.append(a)
    if skip_pattern and targets:
        targets = targets[1:]
    if prog in ("tar", "bsdtar"):
        # Only creating an archive reads the tree. (Extracting writes whatever the archive holds,
        # which no static check can know: accepted, see docs.) `tar czf x.tgz DIR`: the first word
        # is an option cluster and `f` takes the next word.
        cluster = args[0].lstrip("-") if args else ""
        creating = any(ch in cluster for ch in "cru") or any(a in ("--create", "--append", "--update") or
                                                             (a.startswith("-") and not a.startswith("--") and "c" in a)
                                                             for a in args)
        if not creating:
            return None
        if args and not args[0].startswith("-") and targets:
            targets = targets[1:]
        if "f" in cluster and targets:
            targets = targets[1:]
    if prog in ("chmod", "chown", "chgrp", "setfacl") and targets:
        targets = targets[1:]          # the mode / owner
    if not recursive:
        return None
    if prog in _COPIERS and len(targets) > 1:
        dest = targets[-1]
        targets = targets[:-1] + ([dest] if prog == "rsync" and any(a.startswith("--del") for a in args) else [])
        if prog == "rsync":      # `host:path` names another machine
            targets = [t for t in targets if ":" not in t.split("/", 1)[0] or t.startswith("/")]
    for t in targets:
        if _covers_anchor(t, home, cwd, extra):
            return f"floor: '{prog}' works recursively on a directory holding protected files ({t or '/'})"
    return None


def _xargs_items(cmd: SimpleCommand, argv: list[str], home: str, variables: dict[str, str]) -> list[str]:
    """What `xargs`/`parallel` appends to its command, as far as it is visible: the words of an
    `echo`/`printf` or here-string feeding it, the starting points (and -name patterns) of a
    `find` feeding it; UNKNOWN for anything else (a file, `cat`, `ls`)."""
    if any(a in ("-a", "--arg-file") or a.startswith(("--arg-file=", "-a")) for a in argv[1:]):
        return [UNKNOWN]
    words: list[str] = []
    if cmd.stdin == "herestring":
        words = [t for op, w in cmd.redirects if op == "<<<" and w is not None
                 for t in _argv((w,), home, variables)]
    elif cmd.stdin == "pipe" and cmd.producer is not None and cmd.producer.words:
        pargv = _argv(tuple(cmd.producer.words), home, variables)
        pprog = _program(pargv[0])
        if pprog == "echo":
            words = [a for a in pargv[1:] if a not in ("-n", "-e", "-E")]
        elif pprog == "printf" and len(pargv) > 1:
            words = pargv[2:] if "%" in pargv[1] else [pargv[1].replace("\\n", "\n").replace("\\0", " ")]
        elif pprog == "find":
            starts = _find_starts(pargv[1:])
            words = starts + [st.rstrip("/") + "/" + UNKNOWN for st in starts]
            for i, a in enumerate(pargv[:-1]):
                if a in ("-name", "-iname", "-path", "-ipath", "-wholename"):
                    words += [st.rstrip("/") + "/" + pargv[i + 1].lstrip("/") for st in starts]
        else:
            return [UNKNOWN]
    else:
        return [UNKNOWN]
    out = [p for w in words for p in w.replace("\x00", "\n").split()] if words else []
    return out or [UNKNOWN]


def _rm_root(prog: str, args: list[str], home: str, cwd: str | None, extra: tuple[str, ...] = ()) -> str | None:
    if prog == "find":
        starts = _find_starts(args)
        destructive = "-delete" in args or any(a in ("-exec", "-execdir") and i + 1 < len(args)
                                                and _program(args[i + 1]) in ("rm", "shred")
                                                for i, a in enumerate(args))
        if starts and destructive and any(_is_root_target(st, home, cwd) or _covers_anchor(st, home, cwd, extra)
                                          for st in starts):
            return "floor: find deleting from / or from a directory holding protected files"
        return None
    if prog not in ("rm", "?", "unlink", "rmdir"):
        return None
    recursive, targets, options_done = False, [], False
    for a in args:
        if not options_done and a == "--":
            options_done = True
        elif not options_done and a.startswith("--"):
            if "--recursive".startswith(a) and len(a) >= 3 or a.startswith("--no-preserve"):
                recursive = True
        elif not options_done and a.startswith("-") and len(a) > 1:
            recursive = recursive or "r" in a or "R" in a
        else:
            targets.append(a)
    if recursive and any(_is_root_target(t, home, cwd) for t in targets):
        return "floor: recursive removal of /"
    if recursive and any(_covers_anchor(t, home, cwd, extra) for t in targets):
        return "floor: recursive removal of a directory holding protected files"
    return None


def _rm_anywhere(argv: list[str], home: str, cwd: str | None, extra: tuple[str, ...] = ()) -> str | None:
    """`rm` behind a wrapper we do not model (`watch rm -rf /`, `flock l rm -rf /`): check the
    arguments after any word that names rm."""
    for i, a in enumerate(argv[1:], start=1):
        if _program(a) == "rm":
            reason = _rm_root("rm", argv[i + 1:], home, cwd, extra)
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
        if is_shell(_program(a)) and i > 0:
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
    if is_shell(prog) or _INTERPRETER.match(prog) or prog in _AWKS:
        for i, a in enumerate(argv[1:], start=1):
            code = argv[i + 1] if a in _INLINE_FLAGS and i + 1 < len(argv) else (
                a if prog in _AWKS and not a.startswith("-") and i == _awk_program_index(argv) else None)
            if code is None:
                continue
            if _EMBEDDED_RM.search(code) or _TREE_API_ROOT.search(code):
                return "floor: recursive removal of / inside inline code"
            # Literal strings of the code name paths as plainly as arguments do: open('.env').
            strings = [m.group(2) for m in _CODE_STRING.finditer(code)]
            reason = _named_paths([x for x in strings if x and "\n" not in x], home, cwd, extra)
            if reason:
                return f"{reason} (a string in inline code)"
    return None


_AWKS = frozenset({"awk", "gawk", "mawk", "nawk", "busybox-awk"})
# Recursive-delete APIs of interpreters called on a literal `/`: shutil.rmtree('/'), rmtree("/"),
# FileUtils.rm_rf('/'), fs.rmSync('/', ...), os.RemoveAll("/"), remove_tree('/').
_TREE_API_ROOT = re.compile(r"""(?:rmtree|remove_tree|rm_rf|rm_r|rmSync|rmdirSync|RemoveAll|rimraf|"""
                            r"""removeRecursively|deleteRecursively|delete_tree|rmdir)\s*\(\s*(?:Path\s*\(\s*)?"""
                            r"""(['"])/+\.?\1""")
_CODE_STRING = re.compile(r"""(['"])((?:(?!\1)[^\\\n]|\\.){1,4096})\1""")


def _awk_program_index(argv: list[str]) -> int:
    """Index of awk's program text in argv (the first non-option word unless -f is given)."""
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in ("-f", "--file") or a.startswith("-f"):
            return -1
        if a in ("-v", "-F", "--assign", "--field-separator"):
            i += 2
            continue
        if a.startswith("-") and a != "-":
            i += 1
            continue
        return i
    return -1


# Where a program reads its code from its own stdin or an inherited descriptor.
_STDIN_PATH = re.compile(r"^/(?:dev/(?:stdin|fd/[0-9]+|tty)|proc/(?:self|thread-self|[0-9]+)(?:/task/[0-9]+)?/fd/[0-9]+)$")
# Programs that run what they read on stdin as commands (beyond shells and interpreters).
_STDIN_RUNNERS = frozenset({"at", "batch", "script", "parallel", "sem"})
# Programs that run a command (given later in their arguments) with this stdin: `| ssh h sh`.
_COMMAND_RUNNERS = frozenset({"ssh", "docker", "podman", "nerdctl", "kubectl", "oc", "lxc", "lxc-attach",
                              "nsenter", "unshare", "firejail", "bwrap", "proot", "machinectl",
                              "systemd-nspawn", "sg", "distrobox", "toolbox", "sshpass"})


def _fed_code(prog: str, argv: list[str], stdin: str, redirects: list[tuple[str, str]], home: str,
              cwd: str | None) -> str | None:
    """Content fed to something that runs it: `bash < file`, `python3 - < x`, `. /dev/stdin`,
    `x | at now`, `x | ssh h sh`, `x | awk '{system($0)}'`, `x | crontab -`."""
    shellish = is_shell(prog) or prog == "?" or _INTERPRETER.match(prog) is not None
    file_in = [t for op, t in redirects if op in ("<", "<>", "0<") and t]
    if shellish and any(_resolve(t, home, cwd) != "/dev/null" for t in file_in):
        return f"floor: a file redirected into '{prog}' is run as code"
    code_from_fd = any(_STDIN_PATH.match(_resolve(a, home, cwd) or "") for a in argv[1:])
    if (shellish or prog in _AWKS) and code_from_fd:
        return f"floor: '{prog}' runs code from a standard-input or descriptor path"
    fed = stdin in ("pipe", "procsub", "herestring") or bool(file_in)
    if not fed:
        return None
    if prog in _STDIN_RUNNERS and not (prog in ("parallel", "sem") and len(argv) > 1 and not
                                       all(a.startswith("-") for a in argv[1:])):
        return f"floor: {stdin or 'a file'} into '{prog}', which runs what it reads"
    if prog == "crontab" and (len(argv) == 1 or argv[-1] == "-"):
        return "floor: a crontab installed from standard input"
    if prog in _COMMAND_RUNNERS and any(is_shell(_program(a)) or _INTERPRETER.match(_program(a))
                                        for a in argv[2:]):
        return f"floor: {stdin or 'a file'} into a shell started by '{prog}'"
    if prog in _AWKS:
        i = _awk_program_index(argv)
        code = argv[i] if i > 0 else ""
        if re.search(r"\bsystem\s*\(|\|\s*getline|\|&|print[^;}]*\|\s*[\"$a-zA-Z]", code):
            return f"floor: {stdin or 'a file'} into awk code that runs commands"
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


_DEFAULT_WORD = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?[-=+?]([^{}]*)\}")


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
    if reason is None and "${" in command:
        # `${X:-/}`, `${X:=/}`, `${X:+/}`: the word may be what the expansion gives; check it too.
        worded = _DEFAULT_WORD.sub(lambda m: m.group(1), command)
        if worded != command:
            try:
                reason = _check(worded, home, cwd or None, 0, extra)
            except RecursionError:
                return "floor: command nested too deeply to inspect"
    if reason is None and "IFS" in command:
        # The grammar mis-splits some `$IFS` spellings (`rm$IFS-rf$IFS/`); check the text with
        # every $IFS spelled as the space it expands to as well.
        spaced = re.sub(r"\$\{IFS\}|\$IFS(?![A-Za-z0-9_])", " ", command)
        if spaced != command:
            reason = _check(spaced, home, cwd or None, 0, extra)
    return reason


def _check(command: str, home: str, cwd: str | None, depth: int, extra: tuple[str, ...] = (),
           outer_stdin: str = "") -> str | None:
    """`outer_stdin`: where the stdin of a nested script (`x | flock -c 'sh'`) comes from."""
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
        stdin = cmd.stdin or ("" if cmd.substituted else outer_stdin)
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
        items: list[str] | None = None         # what xargs appends to the commands below it
        for layer in un.layers:
            argv = _argv(layer.words, home, variables)
            if not argv:
                continue
            prog = _program(argv[0])
            if items is not None:
                argv = argv + items
            if prog in ("xargs", "parallel") and items is None:
                items = _xargs_items(cmd, argv, home, variables)
                if prog == "parallel":
                    argv = argv + items
            args = argv[1:]
            for check in (_rm_root(prog, args, home, cwd, extra), _device_write(prog, args, redirects, home, cwd),
                          _named_paths(argv, home, cwd, extra), _rm_anywhere(argv, home, cwd, extra),
                          _tree_op(prog, args, home, cwd, extra),
                          _inline_code(prog, argv, home, cwd, depth, extra),
                          _fed_code(prog, argv, stdin, redirects, home, cwd)):
                if check:
                    return check
            if is_shell(prog) and cmd.heredoc:       # bash <<EOF ... EOF runs the body
                reason = _check(cmd.heredoc, home, cwd, depth + 1, extra)
                if reason:
                    return f"{reason} (in a here-document run by {prog})"
            shellish = is_shell(prog) or prog == "?" or _INTERPRETER.match(prog) is not None
            if shellish and stdin in ("pipe", "procsub", "herestring"):
                what = "a program that cannot be resolved" if prog == "?" else f"'{prog}'"
                return f"floor: {stdin} into {what}"
            if (is_shell(prog) or _INTERPRETER.match(prog)) and any(
                    k == "C" and t.startswith(("<(", ">(")) for w in layer.words[1:] for k, t in w.segments):
                return f"floor: '{prog}' runs a process substitution"
            if prog in ("cd", "pushd") and not cmd.substituted:
                target = args[0] if args else "~"
                cwd = _resolve(target, home, cwd) if UNKNOWN not in target and target != "-" else None
        if un.dynamic_nested_sub:
            return "floor: a shell or eval runs the output of a command substitution"
        for script in un.nested:
            reason = _check(script, home, cwd, depth + 1, extra, stdin)
            if reason:
                return reason
    return None
