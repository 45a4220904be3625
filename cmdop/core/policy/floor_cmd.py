"""The floor for shell commands: shapes no rule, mode or flag can allow.

Entries (the security model's bash signatures):
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
   or unknown expansions tested against every floor entry they could expand to. A `file:` URL
   is a path here, read percent-decoded (one that cannot be decoded is refused).

Where a word points is read from the program table (programs.ROLES "remote-paths", "urls",
"remote-command"): `scp web01:/etc/shadow .`, `curl https://x/.bashrc` and the command in
`ssh web01 cat /etc/shadow`, `docker exec c …`, `kubectl exec pod -- …` name another machine's
paths, which are not this machine's floor. The command run there is still read for entries 1-3
(the refusal names the machine); what the command reads or writes here (a local source or
destination, an option's file such as `ssh -i KEY`, a redirection, a substitution) stays floor.

Being a deny list, the floor guesses wide: an unknown expansion is assumed to be able to be
anything a glob `*` could be, `$IFS` is a space, and brace expressions are expanded.

And it must be right: a kernel floor (mount namespace) now keeps credentials out of reach
whatever the text says, so this layer's job is to explain its refusals and not to refuse
ordinary administration. Hence: control characters other than tab and newline are refused with
their name (bash and a display would read the text differently); a bare `*` given to a program
that only lists or measures (`du -sh /*`, `ls -d /*/`) does not "name" /etc; `find -exec` of a
program that only shows metadata (`-exec ls -lh {} +`) is not a read of the tree; `find -delete`
limited by name tests no protected name can pass (`-name '*.pyc'`) is not a removal of the
protected files under it; and fork-bomb text is looked for in code, not in what `echo` prints.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from contextvars import ContextVar
from functools import lru_cache

from cmdop.core.policy.commands import is_shell, unwrap
from cmdop.core.policy.floor_paths import (_SAMPLES, FLOOR_ABS_PREFIXES, FLOOR_HOME_PREFIXES, _glob_regex,
                                           _prefix_strings, _prefixes, check_path, check_pattern, fold)
from cmdop.core.policy.pattern import LazyPattern
from cmdop.core.policy.paths import components, expand_user, normalise
from cmdop.core.policy.programs import (Remote, device_role, elsewhere, family, has_role, host_path, lookup,
                                        remote_url)
from cmdop.core.policy.shell import (EVAL, SUB, TOO_DEEP, TOO_MANY, VAR, SimpleCommand, Word, analyse,
                                     expansions_in, interpretations)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Sequence

UNKNOWN = "\x00"
_NAMED = "(named in the command"   # a path argument hit the floor (the reason's suffix)
# Where the command being checked runs: "" here; else a text naming the other machine (`on web01`,
# `in container c`) while the floor reads a command ssh, docker exec, kubectl exec… run there.
# Its paths are that machine's: the checks of targets (floor paths, devices, trees holding
# protected files) stand down; the signatures (removing /, feeding a shell, fork bombs) do not.
_ELSEWHERE: ContextVar[str] = ContextVar("cmdop_floor_elsewhere", default="")
MAX_COMMAND = 65536   # the floor bounds its own work; a longer command is refused, not guessed at
# Control characters a command may not hold: every C0 control but tab and newline, and DEL. Bash
# splits words on space, tab and newline only, so for bash `\r`, `\v`, `\f`, ESC… are ordinary
# word characters (`ls\r` is a program named "ls\r"), while a parser, a log or a terminal may
# read them as blanks, line ends or escape sequences — and what the gate, the audit log and an
# approval prompt show must be what bash runs (`\r` or ESC[2K can hide text on a terminal).
# Non-ASCII characters (U+0085, U+2028, C1 controls, bidi marks) are ordinary bytes to bash and
# to the grammar alike (see shell._PARSE_SAFE): they do not change what is read, so they pass;
# showing them safely is the display's job.
_CONTROL = LazyPattern(r"[\x00-\x08\x0b-\x1f\x7f]")
_CONTROL_NAMES = {"\x00": "NUL", "\x07": "bell", "\x08": "backspace", "\x0b": "vertical tab",
                  "\x0c": "form feed", "\x0d": "carriage return", "\x1b": "escape", "\x7f": "delete"}


def control_character(command: str) -> str | None:
    """Why `command` cannot be read as bash reads it (a control character), or None."""
    m = _CONTROL.search(command)
    if m is None:
        return None
    ch = m.group()
    name = _CONTROL_NAMES.get(ch, "control character")
    return (f"floor: {name} (U+{ord(ch):04X}) at position {m.start()} of the command: bash reads it as part "
            f"of a word, and a terminal or log showing the command may hide or rewrite text around it")


def _interpreter(prog: str) -> bool:
    """An interpreter, REPL or editor that runs code (programs.ROLES "interpreter"), any version."""
    return has_role(prog, "interpreter")


# A path under /dev is treated as a block device unless it is one of the character devices and
# pseudo files ordinary tools write to: new disk kinds (zram, pmem, LVM's /dev/VG/LV, drbd, zvol,
# cciss/…) then need no list, and a glob under /dev (`> /dev/[s]da`) counts as one.
_BLOCK_DEV = LazyPattern(r"^/dev/(?!(?:null|zero|full|random|urandom|tty[0-9]*|stdout|stderr|stdin|ptmx|"
                        r"(?:tcp|udp)/.*|"
                        r"console|kmsg|fd/[0-9]+|pts/[0-9]+|shm/.*|mqueue/.*|log|termination-log|"
                        r"net/tun|fuse|rtc[0-9]*|watchdog[0-9]*|cpu_dma_latency|hwrng|uinput|snd/.*|"
                        r"dri/.*|input/.*|vhost-.*|kvm|tpm[0-9]*|tpmrm[0-9]*|ttyS[0-9]+|ttyUSB[0-9]+|"
                        r"ttyACM[0-9]+)$).")
_WRITE_OPS = frozenset({">", ">>", ">|", "&>", "&>>", "<>", ">&", "&>|"})
# What a program does with a block device given as an argument is its `device` role in the
# program table (programs.DEVICE_ROLES): it writes it (tee, cp, shred, wipefs, mkfs…), reads or
# writes it as if=/of= (dd), only names it (disk administration: fdisk -l, parted, growpart,
# resize2fs, lvextend, cryptsetup, smartctl, blkid…; listing; printing), or — the default, also
# for a program the table does not know — reads it: a disk's raw bytes hold every file.
_FORKBOMB_TEXT = LazyPattern(r"([\w:.-]{1,64})\(\)\{\1\|\1&\}|fork\s*while\s*fork|fork\(\)\s*while|"
                            r"while\s*\(?\s*1?\s*\)?\s*;?\s*do\s*\$0\s*&|"
                            r"\bfork\s+while\s+1|while\s*(?:1|True|\(\s*1\s*\))\s*:?\s*(?:os\.)?fork\(|"
                            r"loop\s*\{\s*fork|for\s*\(\s*;\s*;\s*\)\s*\{?\s*fork\(|"
                            r"\$0\s*&\s*\$0\s*&|alias\s+([\w.-]+)=['\"]?\s*\2\s*\|\s*\2\s*&")


def _braces(text: str, limit: int = 64) -> list[str]:
    """Expand `{a,b}` and `{1..3}` statically (bounded), as bash would before running."""
    if "{" not in text:
        return [text]
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


def _argv(words: Sequence[Word], home: str, variables: dict[str, str]) -> list[str]:
    """Best-effort argv: known variables substituted, `$IFS` splits, braces expanded,
    unknown expansions as UNKNOWN."""
    out: list[str] = []
    env = dict(variables, HOME=home, IFS=" ")
    for w in words:
        out.extend(_word_argv(w, env))
    return out


def _argv_head(words: Sequence[Word], home: str, variables: dict[str, str], n: int) -> list[str]:
    """`_argv(words, home, variables)[:n]`, expanding no more words than that takes."""
    out: list[str] = []
    env = dict(variables, HOME=home, IFS=" ")
    for w in words:
        if len(out) >= n:
            break
        out.extend(_word_argv(w, env))
    return out[:n]


def _word_argv(w: Word, env: dict[str, str]) -> list[str]:
    """What one word adds to an `_argv` under `env` (the variables, HOME and IFS)."""
    out: list[str] = []
    text = w.text(env, UNKNOWN)
    pieces = text.split() if any(k == VAR and t == "IFS" for k, t in w.segments) else [text]
    if any(k == EVAL for k, _ in w.segments) and len(text.split()) > 1:
        pieces = [text] + text.split()       # `$(echo / x)` unquoted splits; quoted does not
    for p in pieces:
        out.extend(_braces(p))
    return out


class _Argvs:
    """`_argv` for one line, its variables final: each word is expanded once. The line's simple
    commands are judged in every directory the line may be in (up to 8), and what a word
    expands to does not depend on the directory."""

    def __init__(self, home: str, variables: dict[str, str]) -> None:
        self.env = dict(variables, HOME=home, IFS=" ")
        self.done: dict[Word, tuple[str, ...]] = {}

    def __call__(self, words: Sequence[Word]) -> list[str]:
        """Exactly `_argv(words, home, variables)`."""
        out: list[str] = []
        for w in words:
            pieces = self.done.get(w)
            if pieces is None:
                pieces = self.done[w] = tuple(_word_argv(w, self.env))
            out.extend(pieces)
        return out


@lru_cache(maxsize=4096)
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


_ARRAYS = "\x00arrays"     # key in `variables` holding the line's static array elements
_REDEFINED = "\x00redefined"   # key in `variables` holding the names the line defines as functions or aliases
_LEAD = LazyPattern(r"^(~[^/]*|\x00+)")


def _resolutions(arg: str, home: str, cwd: str | None, unknown_cwd_as_root: bool = False) -> list[str]:
    """Every absolute path `arg` may name: its plain resolution; when it starts with something
    only known at run time (`$X/etc`, `${HOME%/}/…`, `~user/…`, `~+`, `~-`), that part read as
    empty, as `/`, as the home directory and as the cwd; and, with `unknown_cwd_as_root` when the
    cwd is unknown, a relative path read from `/` and from home (only `rm` needs that: after
    `cd "$D"`, `rm -rf *` may be `rm -rf /*`; a `grep -r .` there is not worth refusing)."""
    out: list[str] = []
    plain = _resolve(arg, home, cwd)
    if plain is not None:
        out.append(plain)
    m = _LEAD.match(arg)
    rest = arg[m.end():] if m else ""
    lead = m.group(1) if m else ""
    # (a bare unknown word, `"$D"`, stays unknown: it may name anything, checking it as `/`
    # would refuse every `rm -rf "$D"`)
    if m and lead != "~" and (rest or lead.startswith("~")):
        if lead == "~+" and cwd:
            bases = [cwd]
        elif lead.startswith("~") and lead not in ("~+", "~-"):
            # ~user: their home, which only /etc/passwd knows; as `/` only when the path climbs
            # out of it (`~root/../etc`, `~sys/..`: system users' homes are /bin, /root, …)
            name = lead[1:]
            bases = ["/root" if name == "root" else "/home/" + name, home]
            bases += ["/"] if "/.." in rest or rest == "/.." else []
        else:
            bases = ["/", home, *([cwd] if cwd else [])]
        out.extend(normalise(b.rstrip("/") + "/" + rest.lstrip("/")) for b in bases)
    elif cwd is None and unknown_cwd_as_root and arg and not arg.startswith(("/", "~")):
        out.extend(normalise(b.rstrip("/") + "/" + arg) for b in ("/", home))
    return list(dict.fromkeys(out))


def _is_root_target(arg: str, home: str, cwd: str | None) -> bool:
    """Does removing `arg` remove `/`? An unknown expansion may be empty (`"$X/"*` is `/*`)."""
    for path in (p for cand in {arg, arg.replace(UNKNOWN, "")} if cand
                 for p in _resolutions(cand, home, cwd, unknown_cwd_as_root=True)):
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
    for path in (p for cand in {arg, arg.replace(UNKNOWN, "")} if cand
                 for p in _resolutions(cand, home, cwd)):
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


# Programs that read (or copy out, or change) a whole tree are those with a `tree` in the program
# table: what they are given recursively must not hold protected files (option letters that make
# them recursive, "" = always; `tree_words`: only after one of these words, `restic backup`).
_TREE_LONG = ("--recursive", "--archive", "--dereference-recursive")


_FIND_ACTS = frozenset({"-exec", "-execdir", "-ok", "-okdir", "-fprint", "-fprint0", "-fprintf", "-fls"})


# What `find -exec` may run on every file of a tree holding protected files: programs that show
# a file's name or metadata (`-exec ls -lh {} \;`), never its contents (programs.ROLES "looker").


def _find_only_looks(args: list[str]) -> bool:
    """Is every action of this `find` an -exec/-execdir/-ok/-okdir of a program that only shows
    names and metadata? (`-fprint` and the like keep their old meaning: not only looking.)"""
    i, found = 0, False
    while i < len(args):
        a = args[i]
        if a in ("-exec", "-execdir", "-ok", "-okdir"):
            j = i + 1
            while j < len(args) and args[j] not in (";", "+"):
                j += 1
            command = args[i + 1:j]
            if not command or not has_role(_program(command[0]), "looker"):
                return False
            found, i = True, j + 1
            continue
        if a in _FIND_ACTS:
            return False
        i += 1
    return found


def _find_walks_protected(args: list[str], home: str, cwd: str | None, extra: tuple[str, ...]) -> bool:
    """`find START…` from a start that holds protected files: what it hands on may be any of
    them (a name filter does not help: `-name id_rsa` is how you find the key)."""
    return any(_covers_anchor(st, home, cwd, extra) or _under_dev(st, home, cwd) for st in _find_starts(args))


# Consumers that only show or count the names a listing gives them: programs.ROLES
# "names-consumer" (awk and sed are not: `getline < $0`, `s/^/cat /e` read the files named).


def _lists_protected_tree(pargv: list[str], home: str, cwd: str | None, extra: tuple[str, ...]) -> bool:
    """Is `pargv` a recursive listing (`find`, `rg --files`, `fd`) of a directory holding
    protected files? Whatever reads its output then reads protected files by name."""
    if _ELSEWHERE.get():
        return False
    prog, args = family(_program(pargv[0])), pargv[1:]
    if prog == "find":
        return _find_walks_protected(args, home, cwd, extra)
    if prog in ("rg", "fd") and (prog != "rg" or "--files" in args):
        paths = [a for a in args if not a.startswith("-")]
        paths = paths[1:] if prog != "rg" else paths          # fd PATTERN PATH…
        return any(_covers_anchor(p, home, cwd, extra) for p in (paths or ["."]))
    return False


def _under_dev(arg: str, home: str, cwd: str | None) -> bool:
    """`/dev` or below it (device nodes: a walk or a link there reaches block devices)."""
    return any(p == "/dev" or p.startswith("/dev/") for p in _resolutions(arg, home, cwd))


def _symlink_to_protected(prog: str, args: list[str], home: str, cwd: str | None,
                          extra: tuple[str, ...]) -> str | None:
    """`ln -s / /tmp/r`, `ln -s ~/.config /tmp/c`, `ln -s /dev /tmp/d`: a new name for a
    directory holding protected files or devices, which later commands could use unseen."""
    if prog != "ln" or _ELSEWHERE.get() or not any(a == "--symbolic" or (a.startswith("-") and not a.startswith("--") and "s" in a)
                               for a in args):
        return None
    targets = [a for a in args if not a.startswith("-")]
    for t in targets[:-1] if len(targets) > 1 else targets:
        if _covers_anchor(t, home, cwd, extra) or _under_dev(t, home, cwd):
            return f"floor: a symbolic link to a directory holding protected files ({t})"
    return None


def _tree_op(prog: str, args: list[str], home: str, cwd: str | None, extra: tuple[str, ...]) -> str | None:
    """`tar cf - ~`, `cp -r ~ /tmp/h`, `grep -r KEY /`, `chmod -R 777 ~`, `rsync --delete x/ /`,
    `find ~ -exec cat {} +`: a recursive read, copy or change of a directory that holds
    protected files."""
    if _ELSEWHERE.get():
        return None
    spec = lookup(prog)
    fam = spec.names[0] if spec is not None else prog
    if fam == "find" and any(a in _FIND_ACTS for a in args) and not _find_only_looks(args) \
            and _find_walks_protected(args, home, cwd, extra):
        return "floor: find runs a command on every file of a directory holding protected files"
    if fam == "fd" and any(a in ("-x", "-X", "--exec", "--exec-batch") for a in args) \
            and _lists_protected_tree([prog, *args[:min((args.index(a) for a in args
                                                        if a in ("-x", "-X", "--exec", "--exec-batch")))]],
                                      home, cwd, extra):
        return "floor: fd runs a command on every file of a directory holding protected files"
    if spec is None or spec.tree is None:
        return None
    letters = spec.tree
    roles = spec.roles
    recursive = letters == ""
    targets: list[str] = []
    skip_pattern = "pattern" in roles
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
            if "pattern" in roles and ("e" in a[1:] or "f" in a[1:]):
                skip_pattern = False
            if "archiver" in roles and (a == "-C" or a[1:].startswith("C")) and i + 1 < len(args):
                base = a[2:] or args[i + 1]       # tar -C DIR: later members are relative to DIR
                cwd = _resolve(base, home, cwd) if UNKNOWN not in base else None
                skip = i + 1 if a == "-C" else skip
            continue
        targets.append(a)
    if spec.tree_words:                   # `restic backup DIR`, `borg create REPO::A DIR`
        at = next((k for k, t in enumerate(targets) if t in spec.tree_words), None)
        if at is None:
            return None
        targets = targets[at + 1:]
    if skip_pattern and targets:
        targets = targets[1:]
    if "archiver" in roles:
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
    if "setting" in roles and targets:
        targets = targets[1:]          # the mode / owner
    if not recursive:
        return None
    if "copier" in roles and len(targets) > 1:
        dest = targets[-1]
        targets = targets[:-1] + ([dest] if fam == "rsync" and any(a.startswith("--del") for a in args) else [])
    if "remote-paths" in roles:      # `host:path` names another machine
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
        elif family(pprog) == "find":
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


# Names no name test of a deleting `find` may be able to match, under a directory holding
# protected files: the protected names themselves, and the files that live inside protected
# directories (keys, git's metadata, cmdop's own files, login and unit files).
_KEPT_NAMES = tuple(sorted(set(_SAMPLES) | {
    "id_rsa", "id_ed25519", "id_ecdsa", "id_dsa", "id_rsa.pub", "authorized_keys", "authorized_keys2",
    "known_hosts", "config", "x.pem", "x.key", "x.p12", "x.pfx", "x.ppk", "x.gpg", "x.asc", "x.kdbx",
    "token.json", "permissions.yaml", "config.yaml", "audit.log", "daemon.status", "daemon.pid",
    "ssh_workspaces.json", "agent.sock", "HEAD", "index", "packed-refs", "x.pack", "x.idx", "hooks",
    "pre-commit", "x.service", "x.timer", "login.keychain-db", "shadow", "passwd", "sudoers"}))
_FIND_NAME_TESTS = ("-name", "-iname")


def _find_deletes_only_safe_names(args: list[str]) -> bool:
    """Does `find … -delete` delete only entries whose names pass a name test that no protected
    name (nor a file kept in a protected directory) can pass? `find . -name '*.pyc' -delete`
    does; `find ~ -delete`, `-name 'id_*'`, `! -name x`, `-name x -o -type f` do not. Every `-o`
    must sit between two name tests, so that each alternative is limited by one."""
    expr = args              # (a starting point is never a test or an operator: scan them all)
    if any(a in ("!", "-not", ",", "-exec", "-execdir", "-ok", "-okdir") for a in expr):
        return False
    patterns: list[str] = []
    for i, a in enumerate(expr):
        if a in _FIND_NAME_TESTS and i + 1 < len(expr):
            patterns.append(expr[i + 1])
        if a in ("-o", "-or") and not (i >= 2 and expr[i - 2] in _FIND_NAME_TESTS
                                       and i + 1 < len(expr) and expr[i + 1] in _FIND_NAME_TESTS):
            return False
    if not patterns:
        return False
    for pattern in patterns:
        if UNKNOWN in pattern:
            return False
        folded = pattern.lower()
        # find's -name matches a leading dot with `*` (fnmatch without FNM_PERIOD)
        if any(fnmatch.fnmatchcase(name.lower(), folded) for name in _KEPT_NAMES):
            return False
    return True


def _rm_root(prog: str, args: list[str], home: str, cwd: str | None, extra: tuple[str, ...] = ()) -> str | None:
    if family(prog) == "find":
        starts = _find_starts(args)
        destructive = "-delete" in args or any(a in ("-exec", "-execdir") and i + 1 < len(args)
                                                and _program(args[i + 1]) in ("rm", "shred")
                                                for i, a in enumerate(args))
        if not starts or not destructive:
            return None
        if any(_is_root_target(st, home, cwd) for st in starts):
            return "floor: find deleting from / or from a directory holding protected files"
        if _ELSEWHERE.get():
            return None
        if any(_covers_anchor(st, home, cwd, extra) for st in starts) and not _find_deletes_only_safe_names(args):
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
    if recursive and not _ELSEWHERE.get() and any(_covers_anchor(t, home, cwd, extra) for t in targets):
        return "floor: recursive removal of a directory holding protected files"
    return None


def _rm_anywhere(argv: list[str], home: str, cwd: str | None, extra: tuple[str, ...] = ()) -> str | None:
    """`rm` behind a wrapper we do not model (`watch rm -rf /`, `flock l rm -rf /`): check the
    arguments after any word that names rm."""
    for i, a in enumerate(argv[1:], start=1):
        if _program(a) == "rm":
            after = argv[i + 1:]
            # `start-stop-daemon --exec /bin/rm -- -rf /`: the wrapper's `--` ends its options
            reason = _rm_root("rm", after[1:] if after[:1] == ["--"] else after, home, cwd, extra)
            if reason:
                return reason
    return None


_INLINE_FLAGS = frozenset({"-c", "-e", "-E", "--eval", "-r", "--command"})
# `rm` removing / as it appears inside another language's string: os.system("rm -rf /").
_EMBEDDED_RM = LazyPattern(r"""\brm\s+(?:-[^\s'"]*\s+)*?-[A-Za-z]*[rR][A-Za-z]*\s+(?:-\S+\s+)*['"]?/+[.*]?['"]?(?=[\s'");`]|$)""")


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
    awk = has_role(prog, "awk")
    if is_shell(prog) or _interpreter(prog) or awk:
        for i, a in enumerate(argv[1:], start=1):
            code = argv[i + 1] if a in _INLINE_FLAGS and i + 1 < len(argv) else (
                a if awk and not a.startswith("-") and i == _awk_program_index(argv) else None)
            if code is None:
                continue
            if _EMBEDDED_RM.search(code) or _TREE_API_ROOT.search(code):
                return "floor: recursive removal of / inside inline code"
            # Literal strings of the code name paths as plainly as arguments do: open('.env').
            strings = [m.group(2) for m in _CODE_STRING.finditer(code)]
            reason = _named_paths([x for x in strings if x and "\n" not in x], home, cwd, extra) \
                or _device_write("?", [x for x in strings if x.startswith("/dev/")], [], home, cwd)
            if reason:
                return f"{reason} (a string in inline code)"
    return None


# Programs whose arguments are text to search for or print, never run (`grep -r 'rm -rf /' docs`):
# programs.ROLES "text".
_GIT_TEXT_OPTS = ("-m", "--message", "-S", "-G", "--grep", "--author", "--committer", "-F")


def _embedded_commands(argv: list[str], home: str, cwd: str | None, depth: int,
                       extra: tuple[str, ...]) -> str | None:
    """Arguments other programs hand to a shell: `git -c alias.x='!rm -rf /'`,
    `strace -o '|sh …'`, `ssh -o ProxyCommand=…`, `tar --checkpoint-action=exec=…`, `script -c …`,
    `vim -c '!…'`, `LESSOPEN='|…'`. There are too many such programs to list, so every argument
    that reads as a command line (it has blank space) is checked as one, after any `KEY=` prefix
    and a leading `!` or `|`, for the command-shaped dangers (removing /, feeding a shell, fork
    bombs, devices). A floor *path* inside it counts only where the argument is marked as a
    command (a leading `!`/`|`, or a key naming a command, editor, pager, hook, proxy or
    `exec`): `mail -s "backup of /etc done"` is a sentence, `alias.x=!cat /etc/shadow` is not."""
    prog = _program(argv[0]) if argv else ""
    if has_role(prog, "text"):
        return None
    for i, a in enumerate(argv[1:], start=1):
        if not _BLANK.search(a):
            continue
        if prog == "git" and (_is_git_text_opt(argv[i - 1]) or a.startswith(tuple(o + "=" for o in _GIT_TEXT_OPTS))):
            continue                                   # a commit message or a search string
        key, eq, _ = a.partition("=")
        for raw, text in _lines_in(a):
            marked = raw.lstrip(" \t")[:1] in ("!", "|") or bool(eq and _COMMAND_KEY.search(key)) or \
                bool(_COMMAND_KEY.search(argv[i - 1]) and argv[i - 1].startswith("-"))
            if _EMBEDDED_RM.search(text):
                return "floor: recursive removal of / inside an argument"
            reason = _check(text, home, cwd, depth + 1, extra)
            if not reason or reason.startswith("floor: commands nested too deeply"):
                continue
            if _NAMED in reason and not marked:
                continue
            return f"{reason} (inside an argument)"
    return None


def _lines_in(word: str) -> list[tuple[str, str]]:
    """(as written, as read) for each part of `word` that reads as a command line: the word, its
    value after the first and after the last `=`, without a leading `!` or `|`, blanks as spaces."""
    out: list[tuple[str, str]] = []
    for raw in dict.fromkeys((word, word.split("=", 1)[-1], word.rsplit("=", 1)[-1])):
        text = _BLANK.sub(" ", raw.lstrip("!| \t"))
        if text and " " in text:
            out.append((raw, text))
    return out


_BLANK = LazyPattern(r"[ \t\n\r\v\f]+")
# Keys and options whose value is a command line (git's alias.x / core.sshCommand / core.pager /
# core.fsmonitor / hooks, ssh's ProxyCommand / LocalCommand, tar's --to-command /
# --checkpoint-action=exec, rsync -e/--rsh, GIT_EDITOR/PAGER-style variables, vim -c, gdb -ex).
_COMMAND_KEY = LazyPattern(r"(?i)(alias\.|command|cmd|editor|pager|fsmonitor|hook|proxy|exec|shell|"
                          r"rsh|askpass|lessopen|lessclose|^-c$|^-ex$|^-e$|^--eval$)")


def _is_git_text_opt(opt: str) -> bool:
    """`-m`, `--message`, …, and short clusters ending in one (`-am`, `-qm`): their value is text."""
    return opt in _GIT_TEXT_OPTS or (opt.startswith("-") and not opt.startswith("--") and len(opt) > 2
                                     and opt[-1] in "mF")


# Recursive-delete APIs of interpreters called on a literal `/`: shutil.rmtree('/'), rmtree("/"),
# FileUtils.rm_rf('/'), fs.rmSync('/', ...), os.RemoveAll("/"), remove_tree('/').
_TREE_API_ROOT = LazyPattern(r"""(?:rmtree|remove_tree|rm_rf|rm_r|rmSync|rmdirSync|RemoveAll|rimraf|"""
                            r"""removeRecursively|deleteRecursively|delete_tree|rmdir)\s*\(\s*(?:Path\s*\(\s*)?"""
                            r"""(['"])/+\.?\1""")
_CODE_STRING = LazyPattern(r"""(['"])((?:(?!\1)[^\\\n]|\\.){1,4096})\1""")


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
_STDIN_PATH = LazyPattern(r"^/(?:dev/(?:stdin|fd/[0-9]+|tty)|proc/(?:self|thread-self|[0-9]+)(?:/task/[0-9]+)?/fd/[0-9]+)$")
# Programs that run what they read on stdin as commands (beyond shells and interpreters), and
# programs that run a command given later in their arguments with this stdin (`| ssh h sh`):
# programs.ROLES "stdin-runner" and "command-runner".


# Options of shells and interpreters that take a value (so the next word is not the script).
_VALUE_OPTS = frozenset({"-W", "-X", "-m", "-r", "-I", "-M", "-o", "-O", "+o", "+O", "--rcfile",
                         "--init-file", "--require", "--input-type", "--import", "--loader",
                         "--experimental-loader"})


def reads_program_from_stdin(argv: list[str]) -> bool:
    """Does this shell or interpreter take its program from standard input? Yes with no script
    argument (`| bash`, `| python3 -W x`), with `-` or `/dev/stdin` as the script, or with
    `-s`; no with `-c`/`-e` code or a script file (`| python3 process.py` reads data)."""
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in ("-", "/dev/stdin"):
            return True
        if a == "--":
            return i + 1 >= len(argv) or argv[i + 1] in ("-", "/dev/stdin")
        if a.startswith(("-", "+")) and len(a) > 1:
            if not a.startswith("--") and a[0] == "-" and "s" in a[1:] and len(a) <= 4:
                return True                                      # bash -s, sh -si
            if a in ("-c", "-e", "-E", "--eval", "--print", "--command") or (
                    not a.startswith("--") and a[1:2] in ("c", "e") and len(a) > 2 and "=" not in a):
                return False                                     # code given inline
            i += 2 if a in _VALUE_OPTS else 1
            continue
        return False                                             # a script file
    return True


def _fed_code(prog: str, argv: list[str], stdin: str, redirects: list[tuple[str, str]], home: str,
              cwd: str | None) -> str | None:
    """Content fed to something that runs it: `bash < file`, `python3 - < x`, `. /dev/stdin`,
    `x | at now`, `x | ssh h sh`, `x | awk '{system($0)}'`, `x | crontab -`."""
    shellish = is_shell(prog) or prog == "?" or _interpreter(prog)
    # (`bash < script.sh` runs a named local file, as `bash script.sh` does: not floor)
    file_in = [t for op, t in redirects if op in ("<", "<>", "0<") and t]
    if shellish and reads_program_from_stdin(argv) and any(op in ("<&", "0<&") for op, _ in redirects):
        return f"floor: a descriptor redirected into '{prog}' is run as code"
    if prog == "socat" and any(a.upper().startswith(("EXEC:", "SYSTEM:")) or ",EXEC:" in a.upper()
                               or ",SYSTEM:" in a.upper() for a in argv[1:]):
        return "floor: socat connecting a stream to a command it runs"
    code_from_fd = any(_STDIN_PATH.match(_resolve(a, home, cwd) or "") for a in argv[1:])
    if (shellish or has_role(prog, "awk")) and code_from_fd:
        return f"floor: '{prog}' runs code from a standard-input or descriptor path"
    fed = stdin in ("pipe", "procsub", "herestring") or bool(file_in)
    if not fed:
        return None
    if has_role(prog, "stdin-runner") and not (family(prog) == "parallel" and len(argv) > 1 and not
                                       all(a.startswith("-") for a in argv[1:])):
        return f"floor: {stdin or 'a file'} into '{prog}', which runs what it reads"
    if prog == "crontab" and (len(argv) == 1 or argv[-1] == "-"):
        return "floor: a crontab installed from standard input"
    remote = _elsewhere(argv, prog) if has_role(prog, "remote-command") else _HERE
    if family(prog) == "ssh" and len([a for a in argv[1:] if not a.startswith("-")]) <= 1 or (
            remote.line and remote.command is not None and remote.command[0] >= len(argv)):
        return f"floor: {stdin or 'a file'} into a remote shell (ssh with no command)"
    if has_role(prog, "stdin-script") and any(
            a in ("-f", "--file", "-x", "--script") and b in ("-", "/dev/stdin")
            or a in ("-f-", "--file=-", "--file=/dev/stdin") for a, b in zip(argv[1:], [*argv[2:], ""])):
        return f"floor: {stdin or 'a file'} into '{prog}' as its script"
    if has_role(prog, "command-runner") and any(is_shell(_program(a)) or _interpreter(_program(a))
                                        for a in argv[2:]):
        return f"floor: {stdin or 'a file'} into a shell started by '{prog}'"
    if has_role(prog, "awk"):
        i = _awk_program_index(argv)
        code = argv[i] if i > 0 else ""
        if re.search(r"\bsystem\s*\(|\|\s*getline|\|&|print[^;}]*\|\s*[\"$a-zA-Z]", code):
            return f"floor: {stdin or 'a file'} into awk code that runs commands"
    return None


def _device_write(prog: str, args: list[str], redirects: list[tuple[str, str]], home: str,
                  cwd: str | None) -> str | None:
    """`> /dev/sda`, `tee /dev/sda`, `dd of=/dev/sda`, `mkfs /dev/sdb1`: a block device written;
    `cat /dev/nvme0n1`, `dd if=/dev/sda`, `< /dev/sda`: its raw bytes copied out. (Not while the
    command runs elsewhere: the devices are that machine's.)"""
    if _ELSEWHERE.get():
        return None
    for c in (t for op, t in redirects if op in _WRITE_OPS and not t.isdigit()):
        for path in _device_paths(c, home, cwd):
            return f"floor: write to block device {path}"
    role = device_role(prog) if prog else "names"
    writes, reads, operands = role in ("writes", "operands"), role in ("reads", "operands"), role == "operands"
    cands = [a[3:] if operands and a.startswith(("if=", "of=")) else a
             for a in _without_pattern(prog, args)] if writes or reads else []
    cands += [t for op, t in redirects if op in ("<", "0<", "<>") and t]
    for c in cands:
        for path in _device_paths(c, home, cwd):
            verb = "write to" if writes and c not in dict(redirects).values() else "raw read of"
            if operands:
                verb = "raw access to"
            return f"floor: {verb} block device {path} (its bytes hold every file)"
    return None


def _without_pattern(prog: str, args: list[str]) -> list[str]:
    """`args` without the pattern of a program whose first operand is one (`grep /dev/sda
    /etc/fstab` reads /etc/fstab), unless an option gives the pattern (`-e`, `-f`, `--regexp`)."""
    if not has_role(prog, "pattern"):
        return args
    for i, a in enumerate(args):
        if a == "--":
            return args[:i + 1] + args[i + 2:]
        if a.startswith(("--regexp", "--file")) or (a.startswith("-") and not a.startswith("--")
                                                    and ("e" in a[1:] or "f" in a[1:])):
            return args
        if not a.startswith("-") or a == "-":
            return args[:i] + args[i + 1:]
    return args


def _device_paths(arg: str, home: str, cwd: str | None) -> list[str]:
    """The block devices `arg` may name: resolved against the cwd(s), with a glob in the leading
    directories tried against `/dev` (`/de?/sda`, `/[d]ev/sda` are /dev/sda to bash)."""
    out = []
    for path in _resolutions(arg, home, cwd):
        comps = path.split("/")
        if len(comps) > 2 and comps[1] != "dev" and re.search(r"[*?\[]", comps[1]) \
                and fnmatch.fnmatchcase("dev", comps[1]):
            path = "/dev/" + "/".join(comps[2:])
        if _BLOCK_DEV.match(path):
            out.append(path)
    return out


# Programs that only list or measure the paths they are given (names, sizes, modes), never read
# or change their contents (programs.ROLES "lister"): `du -sh /*` and `ls -d /*/` name /etc only
# as one entry of `/`.


# A `file:` URL in a word: the scheme is case-insensitive; the path runs to a blank or a quote.
_FILE_URL = LazyPattern(r"(?i)(?<![A-Za-z0-9+.-])file:([^\s'\"<>]*)")
_HEX = frozenset("0123456789abcdefABCDEF")


def _percent_decode(text: str) -> tuple[str, str]:
    """(`text` percent-decoded, "") or ("", why it cannot be decoded). An unknown expansion
    (UNKNOWN) stays unknown, and so does a `%` escape it is part of."""
    if "%" not in text:
        return text, ""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "%":
            out += ch.encode("utf-8", "surrogatepass")
            i += 1
            continue
        pair = text[i + 1:i + 3]
        if UNKNOWN in pair:
            out += UNKNOWN.encode()
            i += 1 + pair.index(UNKNOWN) + 1
            continue
        if len(pair) < 2 or not set(pair) <= _HEX:
            return "", "has a '%' not followed by two hex digits"
        if pair == "00":
            return "", "percent-decodes to a NUL byte, which no path holds"
        out.append(int(pair, 16))
        i += 3
    try:
        return out.decode("utf-8"), ""
    except UnicodeDecodeError:
        return "", "percent-decodes to bytes that are not UTF-8 text"


def _url_path(rest: str) -> str:
    """The path of a `file:` URL's text after the scheme: past `//host` when there is one."""
    if not rest.startswith("//"):
        return rest
    slash = rest.find("/", 2)
    return rest[slash:] if slash >= 0 else "/"


def file_url_paths(word: str) -> tuple[list[str], str]:
    """The paths on this machine the `file:` URLs in `word` name, percent-decoded (`file:///etc/x`,
    `FILE://localhost/%65tc/x`, `file:/etc/x`; any host is read as this machine, the floor guessing
    wide), with and without a `?query`/`#fragment`, decoded before and after the host is split off
    (`file://localhost%2Fetc/x`), and with the host read as part of the path too (`file://%2Fetc/x`
    to a parser that only strips the scheme); or the floor reason when one cannot be read."""
    if ":" not in word or ("file:" not in word and "file:" not in word.lower()):
        return [], ""
    out: list[str] = []
    for m in _FILE_URL.finditer(word):
        for raw in dict.fromkeys((re.split(r"[?#]", m.group(1), maxsplit=1)[0], m.group(1))):
            for text in dict.fromkeys((_url_path(raw), raw)):
                path, why = _percent_decode(text)
                if why:
                    return out, f"floor: cannot understand the file: URL {m.group(0)!r}: it {why}"
                out.extend(p for p in dict.fromkeys((path, _url_path(path))) if p)
    return list(dict.fromkeys(out)), ""


def _named_paths(args: list[str], home: str, cwd: str | None, extra: tuple[str, ...] = (),
                 listing: bool = False, program: str = "") -> str | None:
    """The floor reason if an argument names a protected path (`listing`: see check_pattern), a
    `file:` URL among them (percent-decoded; one that cannot be decoded is refused, unless the
    `program` they are given to only prints text). Nothing while the command runs elsewhere."""
    if _ELSEWHERE.get():
        return None
    for a in args:
        cands = {a}
        for sep in ("=", ":", ",", "@"):
            if sep in a:
                cands.update(a.split(sep))
        if ":" in a:
            urls, bad = file_url_paths(a)
            if bad and not (program and has_role(program, "text")):
                return bad
            cands.update(urls)
        if a.startswith("-") and len(a) > 2 and not a.startswith("--"):
            cands.add(a[2:])
        for c in cands:
            if not c or c == UNKNOWN:
                continue
            unknown_cwd = not c.startswith(("/", "~", UNKNOWN)) and cwd is None
            paths = [normalise("/" + c)] if unknown_cwd else _resolutions(c, home, cwd)
            for path in paths:
                reason = check_pattern(path, home, prefixes=not unknown_cwd, extra=extra, listing=listing)
                if reason:
                    return f"{reason} {_NAMED}{_relative_to(c, cwd, unknown_cwd, home, extra)})"
    return None


def _relative_to(word: str, cwd: str | None, unknown_cwd: bool, home: str, extra: Any) -> str:
    """What a reason adds when the floor hit the relative `word` because the directory the
    command runs in is itself protected (every word then names something in it: `cat` in
    /etc). Nothing otherwise: a reason must not name a directory where the floor judges a
    command once for many (see "one simple command in many directories")."""
    if word.startswith(("/", "~")) or unknown_cwd or cwd is None:
        return ""
    return f": it runs in {cwd}" if check_pattern(normalise(cwd), home, extra=extra) else ""


def _fork_bomb(analysis: Any, here_only: bool = False) -> str | None:
    """`here_only`: not in the words of a command run on another machine (`ssh h CMD`,
    `docker exec c CMD`): the floor reads those as that command, and names the machine."""
    for name, body, backgrounds in analysis.functions:
        calls = [c for c in body if c.words and c.words[0].static == name]
        if calls and (backgrounds or len(calls) > 1 or any(c.stdin == "pipe" for c in calls)):
            return f"floor: fork bomb (function '{name}' spawns itself)"
    code = _code_text(analysis, here_only)
    if _FORKBOMB_TEXT.search(re.sub(r"\s+", "", code)) or _FORKBOMB_TEXT.search(code):
        return "floor: fork bomb"
    return None


def _redefined(analysis: Any) -> frozenset[str]:
    """Names the line defines as functions or aliases: `echo(){ bash -c "$1"; }` makes `echo`
    something else than the program that only prints."""
    names = {name for name, _, _ in analysis.functions if name}
    for c in analysis.commands:
        if c.words and c.words[0].static == "alias":
            names.update(w.text(None, "").split("=", 1)[0] for w in c.words[1:] if "=" in w.text(None, ""))
    return frozenset(names)


def _code_text(analysis: Any, here_only: bool = False) -> str:
    """The command's text with the arguments of programs that only print or search text blanked:
    the fork-bomb patterns are looked for in code (the line itself, strings handed to `perl -e`
    or `alias`), not in what `echo ':(){ :|:& };:' > notes.txt` writes. (Printed text that is
    run after all — piped into a shell, eval'd — is refused by the rules for those.)"""
    raw = analysis.source.encode("utf-8", "surrogatepass")
    blank = bytearray(raw)
    redefined = _redefined(analysis)
    for c in analysis.commands:
        if len(c.spans) != len(c.words) or len(c.words) < 2:
            continue
        if here_only:
            inner = unwrap(c).layers[-1].words
            remote = elsewhere([w.static if w.static is not None or w.has_expansion
                                else "".join(t for _, t in w.segments) for w in inner]).command
            at = len(c.words) - len(inner)
            for (start, end), w in zip(c.spans[at + remote[0]:at + remote[1]] if remote else [],
                                       c.words[at + remote[0]:at + remote[1]] if remote else []):
                if w.static is not None:
                    blank[start:end] = b" " * (end - start)
        prog = c.words[0].static
        if prog is None or prog in redefined or not has_role(posixpath.basename(prog), "text"):
            continue
        for (start, end), w in zip(c.spans[1:], c.words[1:]):
            if w.static is not None:
                blank[start:end] = b" " * (end - start)
    return bytes(blank).decode("utf-8", "surrogateescape") if blank != raw else analysis.source


_MODIFIED_WORD = LazyPattern(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[^{}]*|[%#/^,][^{}]*)\}")
_DEFAULT_WORD = LazyPattern(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?[-=+?]([^{}]*)\}")


@lru_cache(maxsize=2048)
def check_command(command: str, home: str, cwd: str, extra: tuple[str, ...] = ()) -> str | None:
    """The floor reason if `command` (bash) matches a floor entry, else None. Pure, cached.
    `extra`: more protected directories (see floor_paths.check_path)."""
    if len(command) > MAX_COMMAND:
        return f"floor: command longer than {MAX_COMMAND} characters is not inspected"
    control = control_character(command)
    if control:
        return control
    for text in _variants(command):
        try:
            reason = _check(text, home, cwd or None, 0, extra)
        except RecursionError:
            return "floor: command nested too deeply to inspect"
        if reason:
            return reason
    return None


def _variants(command: str) -> list[str]:
    """`command` and the texts bash may make of it that the grammar does not show: `${X:-/}`
    (`:=`, `:+`) as its word; `${a:0}`, `${HOME%/}`, `${a/x/y}` as the whole value; every
    `$IFS` as the space it expands to (the grammar mis-splits `rm$IFS-rf$IFS/`); with
    `dotglob`/`GLOBIGNORE` on the line, a leading `*` as `.*` too."""
    out = [command]
    if "${" in command:
        out.append(_DEFAULT_WORD.sub(lambda m: m.group(1), command))
        out.append(_MODIFIED_WORD.sub(lambda m: "${" + m.group(1) + "}", command))
    if "IFS" in command:
        out.append(re.sub(r"\$\{IFS\}|\$IFS(?![A-Za-z0-9_])", " ", command))
    if "dotglob" in command or "GLOBIGNORE" in command:
        # `shopt -s dotglob; cat ~/*`: a leading `*` then matches dotfiles too
        out.append(re.sub(r"(^|[\s/=])\*", r"\1.*", command))
    return list(dict.fromkeys(out))


def _check(command: str, home: str, cwd: str | None, depth: int, extra: tuple[str, ...] = (),
           outer_stdin: str = "") -> str | None:
    """`outer_stdin`: where the stdin of a nested script (`x | flock -c 'sh'`) comes from.
    Every reading of the text's line continuations is checked (`interpretations`)."""
    if depth > 8:
        return "floor: commands nested too deeply to inspect"
    for source in interpretations(command):
        reason = _check_source(source, home, cwd, depth, extra, outer_stdin)
        if reason:
            return reason
    return None


def _check_source(command: str, home: str, cwd: str | None, depth: int, extra: tuple[str, ...],
                  outer_stdin: str) -> str | None:
    analysis = analyse(command)
    if analysis.opaque in (TOO_DEEP, TOO_MANY):
        return f"floor: {analysis.opaque}"
    bomb = _fork_bomb(analysis)
    if bomb and (_ELSEWHERE.get() or _fork_bomb(analysis, here_only=True)):
        return bomb
    # (a fork bomb only in a command run elsewhere: its own check below names the machine; the
    # line is refused all the same, `bomb` being the answer when nothing else is)
    variables: dict[str, str] = {}
    for name, value in analysis.assignments:   # X=/etc; cat $X/passwd
        if name and value.static is not None:
            variables[name] = value.static
    for cmd in analysis.commands:
        for name, value in cmd.assigns:
            if value.static is not None:
                variables.setdefault(name, value.static)
    tainted = _tainted(analysis)
    for name, text in _stored_code(analysis):
        found = expansions_in(text)
        if found is None:
            return f"floor: the value of {name} has too many expansions to inspect"
        for inner in found:
            reason = _check(": " + inner, home, cwd, depth + 1, extra)
            if reason:
                return (f"{reason} (in the value of {name}: bash runs it when it evaluates the value, "
                        f"as ${{!{name}}} or $(({name})) do)")
    for text in _quoted_subscripts(analysis):
        found = expansions_in(text)
        if found is None:
            return "floor: an array subscript has too many expansions to inspect"
        for inner in found:
            reason = _check(": " + inner, home, cwd, depth + 1, extra)
            if reason:
                return f"{reason} (in an array subscript, which bash expands even from quotes)"
    array_words: list[str] = []
    for inner in _array_literals(analysis):        # cmd=(rm -rf /); declare -a c=(…)
        reason = _check(inner, home, cwd, depth + 1, extra)
        if reason:
            return f"{reason} (an array run as a command)"
        array_words += [x for c in analyse(inner).commands for x in _argv(tuple(c.words), home, variables)]
    for name, value in analysis.assignments:       # c[0]=rm; c[1]=-rf; c[2]=/
        if "[" in name and value.static is not None:
            array_words.append(value.static)
    for c in analysis.commands:
        head = _argv_head(c.words, home, variables, 2)
        if head == ["set", "--"]:                   # set -- -rf /; rm "$@"
            array_words += _argv(c.words, home, variables)[2:]
        elif head[:1] in (["readarray"], ["mapfile"]):  # readarray -t c <<< $'rm\n-rf\n/'
            array_words += [x for op, w in c.redirects if op == "<<<" and w is not None
                            for x in (w.static or "").split("\n") if x]
        for w in c.words:                           # export CDPATH=/, declare X=/etc
            if len(w.segments) == 1 and w.segments[0][0] == SUB:
                m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=([^()$`\s]*)$", w.segments[0][1])
                if m:
                    variables.setdefault(m.group(1), m.group(2))
    if array_words:
        variables = dict(variables, **{_ARRAYS: "\x01".join(array_words)})
    redefined = _redefined(analysis)
    if redefined:                                  # echo(){ bash -c "$1"; }; echo 'rm -rf /'
        variables = dict(variables, **{_REDEFINED: "\x01".join(sorted(redefined))})
    # The directories the line may be in: a `cd` can fail, run in a subshell or go somewhere
    # unknown, so each one adds a possibility and removes none (None = unknown).
    # A command in a loop or a function body may run many times, and later than written: a cd
    # there can repeat (`for d in a b; do rm -rf *; cd ..; done` climbs a level each round), so
    # after it the directory is unknown, and every repeating command is judged again in every
    # directory the line can reach.
    # A command is judged only where its answer may differ from one it got already (`_Judged`,
    # below: a long line would otherwise judge each command up to 8 times), and its words are
    # expanded once for all directories.
    argvs = _Argvs(home, variables)
    cwds: list[str | None] = [cwd]
    repeating: list[tuple[Any, Any, str, _Judged]] = []
    for cmd in analysis.commands:
        un = unwrap(cmd)
        stdin = cmd.stdin or ("" if cmd.substituted else outer_stdin)
        judged = _Judged(cmd, un, argvs, variables, home, depth, extra)
        for here in cwds:
            if judged.known_clean(here):
                continue
            reason = _check_simple(cmd, un, stdin, variables, home, here, depth, extra, tainted, argvs)
            if reason:
                return reason
            judged.judged_clean(here)
        after = _after_cd(cmd, un, cwds, home, variables, argvs)
        if getattr(cmd, "repeats", False):
            repeating.append((cmd, un, stdin, judged))
            if after != cwds and None not in after:
                after = [*after, None]
        cwds = after
    for cmd, un, stdin, judged in repeating:
        for here in cwds:
            if judged.known_clean(here):
                continue
            reason = _check_simple(cmd, un, stdin, variables, home, here, depth, extra, tainted, argvs)
            if reason:
                return reason
            judged.judged_clean(here)
    return bomb


def _tainted(analysis: Any) -> frozenset[str]:
    """Variables the line fills at run time: assigned from a substitution, or by `read`/`mapfile`."""
    names = {n for n, v in analysis.assignments if any(k in (SUB, EVAL) for k, _ in v.segments)}
    names |= {n for c in analysis.commands for n, v in c.assigns if any(k in (SUB, EVAL) for k, _ in v.segments)}
    for c in analysis.commands:
        words = [w.static or "" for w in c.words]
        if words and words[0] in ("read", "mapfile", "readarray"):
            names.update(w for w in words[1:] if w and not w.startswith("-"))
            names.add("REPLY")
    return frozenset(names)


_DECLARED = LazyPattern(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[[^=]*\])?\+?=(.*)$", re.DOTALL)
_CODE_MARK = ("$(", "`", "${", "$[")


def _stored_code(analysis: Any) -> list[tuple[str, str]]:
    """(name, value) of the line's assignments whose literal value holds an expansion bash did
    not perform when assigning (`x='a[$(cmd)]'`) but performs when it evaluates the value again:
    indirect expansion `${!x}`, arithmetic `$((x))`/`(( x ))`/`[[ x -eq 1 ]]`, a subscript."""
    out = [(n, v.static) for n, v in analysis.assignments if v.static is not None]
    out += [(n, v.static) for c in analysis.commands for n, v in c.assigns if v.static is not None]
    for c in analysis.commands:                   # declare/local/export x='…' (one opaque word)
        for w in c.words:
            if len(w.segments) == 1 and w.segments[0][0] == SUB:
                m = _DECLARED.match(w.segments[0][1])
                if m:
                    out.append((m.group(1), m.group(2)))
    return [(n, v) for n, v in out if any(mark in v for mark in _CODE_MARK)]


def _quoted_subscripts(analysis: Any) -> list[str]:
    """The text from the `[` on of quoted words that name an array element: bash expands the
    subscript of an indexed array when it evaluates the name, quotes or not — `unset 'a[$(cmd)]'`,
    `read 'a[$(cmd)]'`, `printf -v 'a[$(cmd)]'`, `test -v 'a[$(cmd)]'`, `a+=(['$(cmd)']=1)`.
    (The arguments of programs that only print or search text are text, but printf's -v.)"""
    out: list[str] = []

    def add(word: Word) -> None:
        if word.static is not None:
            text = word.static
        elif len(word.segments) == 1 and word.segments[0][0] == SUB:
            text = word.segments[0][1]
        else:
            return
        i = text.find("[")
        if i >= 0 and ("$(" in text[i:] or "`" in text[i:]):
            out.append(text[i:])

    for _, value in analysis.assignments:
        add(value)
    for c in analysis.commands:
        for _, value in c.assigns:
            add(value)
        prog = posixpath.basename(c.words[0].static or "") if c.words else ""
        if has_role(prog, "text"):
            for before, w in zip(c.words, c.words[1:]):
                if prog == "printf" and before.static == "-v":
                    add(w)
            continue
        for w in c.words:
            add(w)
    return out


def _array_literals(analysis: Any) -> list[str]:
    """The insides of the line's array literals: `c=(…)`, and `declare`/`local`/`typeset -a c=(…)`
    (the grammar keeps those as one word)."""
    out = []
    for _, v in analysis.assignments:
        if len(v.segments) == 1 and v.segments[0][0] == SUB and v.segments[0][1].startswith("(") \
                and v.segments[0][1].endswith(")"):
            out.append(v.segments[0][1][1:-1])
    for c in analysis.commands:
        for w in c.words:
            if len(w.segments) == 1 and w.segments[0][0] == SUB:
                m = re.match(r"^[A-Za-z_][A-Za-z0-9_]*\+?=\((.*)\)$", w.segments[0][1], re.DOTALL)
                if m:
                    out.append(m.group(1))
    return out


def _whole_expansion(word: Word) -> bool:
    """`"${c[@]}"`, `"$@"`, `$*`: a word that is one expansion we cannot read."""
    return len(word.segments) == 1 and word.segments[0][0] == VAR and word.segments[0][1] in ("", "@", "*")


_HERE = Remote()


def _elsewhere(argv: list[str], prog: str, env: Any = ()) -> Remote:
    """programs.elsewhere on a floor argv (`prog`: its program): a word starting with an unknown
    expansion may be an option (`$X:/y` may be `-oProxyCommand=…:/y`), so the option grammar
    does not know it. `env`: the names the command line assigns (`RSYNC_RSH=…` reroutes rsync)."""
    spec = lookup(prog) if argv else None
    if spec is None or spec.remote is None or any(n in env for n in spec.remote.here_env):
        return _HERE
    return elsewhere([None if a.startswith(UNKNOWN) else a for a in argv])


def _remote_indexes(remote: Remote, offset: int) -> set[int]:
    """The argv indexes (shifted by `offset`) naming paths on, or a command run on, another machine."""
    out = {offset + k for k in remote.paths}
    if remote.command is not None:
        out.update(range(offset + remote.command[0], offset + remote.command[1]))
    return out


def where(remote: Remote, argv: list[str]) -> str:
    """`on web01`, `in container c`, `in a pod`: where `remote`'s command runs."""
    name = argv[remote.host] if remote.host is not None and remote.host < len(argv) else ""
    name = name.replace(UNKNOWN, "$?")
    if remote.what == "host":
        return f"on {name}" if name else "on another host"
    return f"in {remote.what} {name}" if name else f"in a {remote.what}"


def _quoted(word: str) -> str:
    """`word` as one shell word, an unknown expansion in it kept unknown (`$CMDOP_UNKNOWN`)."""
    if UNKNOWN not in word:
        import shlex  # here, not at the top: its import costs every start half a millisecond

        return shlex.quote(word)
    return '"' + re.sub(r'(["\\$`])', r"\\\1", word).replace(UNKNOWN, "${CMDOP_UNKNOWN}") + '"'


def _run_elsewhere(remote: Remote, argv: list[str], heredoc: str | None, home: str, depth: int,
                   extra: tuple[str, ...]) -> str | None:
    """The floor reason for the command `remote` runs on another machine, or None: read as a
    command there, where this machine's floor paths are not (they are that machine's), but the
    signatures — removing /, a pipe into a shell, a fork bomb — are refused wherever they run.
    ssh hands its words to the remote shell as one line, which it reads again (`ssh h sh -c 'a b'`
    runs `sh -c a b` there): both that line and the words as given are read. A here-document fed
    to a remote shell (`ssh h <<EOF`) is read too. It starts in the remote home (ssh; read as this
    machine's home), or somewhere unknown (a container's working directory)."""
    if remote.command is None:
        return None
    words = argv[remote.command[0]:remote.command[1]]
    texts: list[str] = []
    if words:
        texts.append(" ".join(_quoted(w) for w in words))
        if remote.line:
            texts.insert(0, " ".join(w.replace(UNKNOWN, "$CMDOP_UNKNOWN") for w in words))
    if heredoc and (not words or (is_shell(_program(words[0])) or _interpreter(_program(words[0])))
                    and reads_program_from_stdin(words)):
        texts.append(heredoc)
    place = where(remote, argv)
    for text in dict.fromkeys(texts):
        token = _ELSEWHERE.set(place)
        try:
            reason = _check(text, home, home if remote.at_home else None, depth + 1, extra)
        finally:
            _ELSEWHERE.reset(token)
        if reason:
            return f"{reason} (in the command run {place})"
    return None


def elsewhere_notes(command: str, home: str, depth: int = 0) -> list[str]:
    """For `explain`: what the words of `command` name on other machines (remote paths, URLs, a
    command run on a host, container or pod) and the `file:` URLs naming paths here. Never raises."""
    notes: list[str] = []
    if depth > 3:
        return notes
    try:
        analysis = analyse(command)
        for cmd in analysis.commands:
            un = unwrap(cmd)
            for script in un.nested:
                notes.extend(elsewhere_notes(script, home, depth + 1))
            if not un.layers or not un.layers[-1].words:
                continue
            argv = _argv(un.layers[-1].words, home, {})
            shown = [a.replace(UNKNOWN, "$?") for a in argv]
            remote = _elsewhere(argv, _program(argv[0]))
            for k in remote.paths:
                colon = host_path(argv[k])
                if colon and not remote_url(argv[k]):
                    notes.append(f"{shown[k][colon + 1:] or '~'!r} is a path on {shown[k][:colon]}, not on this "
                                 "machine: this machine's floor does not apply to it")
                else:
                    notes.append(f"{shown[k]!r} is a URL of another machine, not a path on this machine")
            if remote.command is not None:
                place = where(remote, argv)
                words = shown[remote.command[0]:remote.command[1]]
                if words:
                    notes.append(f"{' '.join(words)!r} runs {place}: its paths are that machine's, not this "
                                 "machine's floor; the floor still refuses removing /, a pipe into a shell and "
                                 "fork bombs in it")
                notes.extend(f"{w!r} is a path {place}, not on this machine" for w in words
                             if w.startswith(("/", "~")))
            for a, w in zip(argv, shown):
                paths, bad = file_url_paths(a)
                if bad:
                    notes.append(bad.removeprefix("floor: "))
                if paths and paths[0].startswith("/"):       # (the strict reading; the floor checks all)
                    notes.append(f"{w!r} is the path {normalise(paths[0])!r} on this machine (a file: URL)")
    except Exception:  # noqa: BLE001 - notes are an aid; explain must answer
        return notes
    return list(dict.fromkeys(notes))


def _check_simple(cmd: SimpleCommand, un: Any, stdin: str, variables: dict[str, str], home: str,
                  cwd: str | None, depth: int, extra: tuple[str, ...],
                  tainted: frozenset[str] = frozenset(), argvs: _Argvs | None = None) -> str | None:
    """The floor reason for one simple command run in `cwd`, or None. `tainted`: variables this
    line fills at run time (`x=$(curl …)`, `read x`); `argvs`: `_argv` under `variables`, memoised."""
    argv_of = argvs or (lambda words: _argv(words, home, variables))
    redirects = [(op, argv_of((t,))[0] if t is not None else "")
                 for op, t in cmd.redirects]
    for _, value in cmd.assigns:
        text = argv_of((value,))
        reason = _named_paths(text, home, cwd, extra) or _embedded_commands(["", *text], home, cwd, depth, extra)
        if reason:
            return reason
    head = argv_of(un.layers[-1].words[:1]) if un.layers and un.layers[-1].words else []
    prog0 = _program(head[0]) if head else ""
    if (is_shell(prog0) or _interpreter(prog0)) and any(
            k == SUB and t.startswith(("<(", ">(")) or (name in ("BASH_ENV", "ENV") and value.static is None)
            for name, value in cmd.assigns for k, t in value.segments):
        return f"floor: '{prog0}' starts by running a file given at run time (BASH_ENV/ENV=<(…))"
    if un.layers and un.layers[-1].words and any(
            k == SUB and t.startswith(("$(", "`")) for k, t in un.layers[-1].words[0].segments):
        return "floor: the output of a command is run as a command"
    top = un.layers[-1].words if un.layers else ()
    script = [w for i, w in enumerate(top[1:], start=1)            # eval's words, `sh -c WORD`
              if prog0 == "eval" or (is_shell(prog0) and (top[i - 1].static or "").startswith("-")
                                     and "c" in (top[i - 1].static or "")[1:])]
    if tainted and any(k == VAR and t in tainted for w in script for k, t in w.segments):
        return f"floor: '{prog0}' runs text this command line fetched at run time"
    reason = _named_paths([t for _, t in redirects if t], home, cwd, extra) or _device_write(
        "", [], redirects, home, cwd)      # also `> /dev/sda` with no command word at all
    if reason:
        return reason
    items: list[str] | None = None         # what xargs appends to the commands below it
    redefined = variables.get(_REDEFINED, "").split("\x01")
    unknown_program = bool(un.layers and un.layers[0].words and un.layers[0].words[0].static in redefined)
    # What the innermost command names on other machines (`ssh h CMD`, `scp h:/x .`): its outer
    # layers (`sudo ssh h CMD`) hold the same words at their end.
    env = {*variables, *(n for layer in un.layers for n, _ in layer.assigns)}
    inner = argv_of(un.layers[-1].words) if len(un.layers) > 1 and not unknown_program else []
    inner_remote = _elsewhere(inner, _program(inner[0]), env) if inner else _HERE
    for layer in un.layers:
        argv = argv_of(layer.words)
        if not argv:
            continue
        if unknown_program:
            # a function or alias of this line: whatever it runs, its words may be code to it
            argv = [UNKNOWN, *argv[1:]]
        if _ARRAYS in variables and layer.words and _whole_expansion(layer.words[0]):
            argv = [*variables[_ARRAYS].split("\x01"), *argv[1:]]      # "${c[@]}" as the command
        prog = _program(argv[0])
        if items is not None:
            last = argv[-1] if len(argv) > 1 else ""
            if is_shell(prog) and last.startswith("-") and not last.startswith("--") and "c" in last[1:]:
                return f"floor: xargs hands piped text to '{prog} -c' as its script"
            argv = argv + items
        producer = cmd.producer.words if cmd.stdin == "pipe" and cmd.producer is not None else []
        pargv = argv_of(producer) if producer else []
        reads_names = has_role(prog, "names-consumer") and not any(    # `while read f; do cat "$f"` reads files
            k == VAR and t in tainted for w in layer.words[1:] for k, t in w.segments)
        if pargv and not reads_names and _lists_protected_tree(pargv, home, cwd, extra):
            return f"floor: '{prog}' is fed the files of a directory holding protected files"
        if prog in ("xargs", "parallel") and items is None:
            reason = _fed_code(prog, argv, stdin, redirects, home, cwd)   # before items hide it
            if reason:
                return reason
            if prog == "parallel" and any(a in ("--pipe", "--pipepart") for a in argv) and any(
                    is_shell(_program(a)) or _interpreter(_program(a)) for a in argv[1:]):
                return "floor: standard input split into a shell by parallel --pipe"
            items = _xargs_items(cmd, argv, home, variables)
            if prog == "parallel":
                argv = argv + items
        args = argv[1:]
        innermost = layer is un.layers[-1]
        remote = _HERE
        if unknown_program:
            pass
        elif innermost:
            remote = _elsewhere(argv, prog, env)
        elif inner_remote is not _HERE and argv[len(argv) - len(inner):] == inner:
            remote = inner_remote
        local = argv
        if remote is not _HERE:
            drop = _remote_indexes(remote, len(argv) - len(inner) if not innermost else 0)
            local = [a for k, a in enumerate(argv) if k not in drop]
        if _ARRAYS in variables and any(_whole_expansion(w) for w in layer.words[1:]):
            spliced = variables[_ARRAYS].split("\x01")          # rm "${a[@]}" with a=(-rf /)
            reason = _rm_root(prog, [*args, *spliced], home, cwd, extra) or _named_paths(spliced, home, cwd, extra)
            if reason:
                return f"{reason} (with an array's elements)"
        # (words naming another machine's paths, or run there, are not checked as this machine's)
        for check in (_rm_root(prog, args, home, cwd, extra), _device_write(prog, local[1:], redirects, home, cwd),
                      _named_paths(local, home, cwd, extra, listing=has_role(prog, "lister"), program=prog),
                      _rm_anywhere(local, home, cwd, extra),
                      _tree_op(prog, args, home, cwd, extra), _symlink_to_protected(prog, args, home, cwd, extra),
                      _inline_code(prog, local, home, cwd, depth, extra),
                      _fed_code(prog, argv, stdin, redirects, home, cwd)):
            if check:
                return check
        reason = _embedded_commands(local, home, cwd, depth, extra)
        if reason:
            return reason
        if innermost and remote.command is not None:
            reason = _run_elsewhere(remote, argv, cmd.heredoc, home, depth, extra)
            if reason:
                return reason
        if is_shell(prog) and cmd.heredoc:       # bash <<EOF ... EOF runs the body
            reason = _check(cmd.heredoc, home, cwd, depth + 1, extra)
            if reason:
                return f"{reason} (in a here-document run by {prog})"
        shellish = is_shell(prog) or prog == "?" or _interpreter(prog)
        if shellish and stdin in ("pipe", "procsub", "herestring") and reads_program_from_stdin(argv):
            what = "a program that cannot be resolved" if prog == "?" else f"'{prog}'"
            return f"floor: {stdin} into {what}"
        if (is_shell(prog) or _interpreter(prog)) and any(
                k == "C" and t.startswith(("<(", ">(")) for w in layer.words[1:] for k, t in w.segments):
            return f"floor: '{prog}' runs a process substitution"
    if un.dynamic_nested_sub:
        return "floor: a shell or eval runs the output of a command substitution"
    for script in un.nested:
        reason = _check(script, home, cwd, depth + 1, extra, stdin)
        if reason:
            return reason
    return None


_CD_WORD = LazyPattern(r"(?:^|[\s;&|(`])(?:cd|pushd|popd)(?:$|[\s;&|)`])")


def _after_cd(cmd: SimpleCommand, un: Any, cwds: list[str | None], home: str,
              variables: dict[str, str], argvs: _Argvs | None = None) -> list[str | None]:
    """`cwds` after `cmd`: unchanged unless it changes directory, then with the new place added
    (the old stays: the cd may fail, or run in a subshell). A target we cannot resolve (`cd -`,
    `cd "$D"`, CDPATH, popd, a cd inside eval or `sh -c`) adds None, the unknown directory.
    `argvs`: `_argv` under `variables`, memoised."""
    targets: list[str | None] = []
    for layer in un.layers:
        words = argvs(layer.words) if argvs else _argv(layer.words, home, variables)
        if not words or _program(words[0]) not in ("cd", "pushd", "popd"):
            continue
        rest = words[1:]
        while rest and rest[0].startswith("-") and rest[0] != "-":   # -P, -L, -e, -@, --
            done = rest[0] == "--"
            rest = rest[1:]
            if done:
                break
        target = rest[0] if rest else "~"
        if _program(words[0]) == "popd" or target == "-" or UNKNOWN in target:
            targets.append(None)
            continue
        targets.extend(p for c in cwds for p in (_resolutions(target, home, c) if c else [None]))
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", target) and target in variables:   # cdable_vars
            targets.extend(_resolutions(variables[target], home, cwds[0]) if cwds[0] else [None])
        cdpath = dict((n, _argv((v,), home, variables)[0]) for n, v in cmd.assigns).get(
            "CDPATH", variables.get("CDPATH"))
        if cdpath is not None and not target.startswith(("/", "~", ".")):   # CDPATH=/ cd etc
            targets.extend(None if UNKNOWN in e else _resolve(target, home, e or ".") for e in cdpath.split(":"))
    for script in un.nested:            # `eval cd /` changes this shell's directory too
        if _CD_WORD.search(script):
            inner = analyse(script)
            for sub in inner.commands:
                targets.extend(t for t in _after_cd(sub, unwrap(sub), cwds, home, variables) if t not in cwds)
            if inner.opaque:
                targets.append(None)
    if not targets:
        return cwds
    out = list(dict.fromkeys([*cwds, *targets]))
    return out if len(out) <= 8 else [*out[:7], None]     # bounded; past that, "unknown"


# ---- one simple command in many directories ------------------------------------------------------
# A line's simple commands are judged in every directory the line may be in (up to 8, the last
# one often "unknown": each `cd` adds one, see `_check_source`), and a long line holds thousands
# of them, most judged alike everywhere: their words are options, names and absolute paths.
# Judging is pure, so a command is never judged twice in one directory; and a "blind" command is
# judged once for all "neutral" directories, and for the unknown one too when it names nothing
# `rm` could remove: `_check_simple` gives it the same answer in each. This follows from all that
# the checks do with the directory: resolve words against it (`_resolve`, `_resolutions`), test
# the paths (floor paths and patterns, devices, descriptors, `/` and the system directories for
# rm, trees holding protected files, links), and judge nested command lines there. A neutral
# directory is in no protected tree and above none; a blind command's words are absolute or stay
# inside the directory (`_cwd_free`), so they resolve to paths every test answers alike in any
# neutral directory, and its nested lines are `_invariant`. tests/unit/test_floor_cwd.py holds
# the claim against `_check_simple` itself.
#
# How far a command (a word, a line) is blind: not at all; across the neutral directories; across
# those and the unknown one.
SEES_CWD, BLIND_NEUTRAL, BLIND_UNKNOWN = 0, 1, 2


def _cwd_free(word: str, home: str) -> int:
    """How far `word` names the same things in every directory (SEES_CWD, BLIND_NEUTRAL or
    BLIND_UNKNOWN)? Each path the checks read in it — the word; its parts between `=`, `:`, `,`
    or `@`; a short option's value (`-fFILE`); what follows its first `=` (`of=FILE`,
    `--directory=DIR`) — must be absolute, the home directory (`~`, `~/…`), or relative, ASCII
    and inside the directory it is read in (no `..`), read also without its unknown expansions
    as `_covers_anchor` does; no `file:` URL (its path may be anything). In the unknown
    directory, no path below an unknown expansion (`"$X"/a`), read from `/` and home there."""
    if "file:" in word.lower():
        return SEES_CWD
    paths = {word, *(part for sep in "=:,@" if sep in word for part in word.split(sep))}
    if word.startswith("-") and len(word) > 2 and not word.startswith("--"):
        paths.add(word[2:])
    if "=" in word:
        paths.add(word.partition("=")[2])
    level = BLIND_UNKNOWN
    for path in paths:
        for text in {path, path.replace(UNKNOWN, "")}:
            if not text or text[0] == "/":
                continue
            if text[0] == "~":
                if (text == "~" or text.startswith("~/")) and home.startswith("/"):
                    continue                          # (expanded to an absolute path)
                return SEES_CWD
            if not text.isascii() or ".." in text.split("/"):
                return SEES_CWD
        if path[:1] == UNKNOWN and "/" in path:
            level = BLIND_NEUTRAL
    return level


def _related(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Is one of two component paths at or under the other?"""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


@lru_cache(maxsize=256)
def _neutral(cwd: str | None, home: str, extra: tuple[str, ...]) -> bool:
    """Is `cwd` neutral: a known, folded, ASCII directory with no glob in it, neither `/` nor a
    system directory at the top (`_is_root_target`), not in /dev or /proc, not protected
    (`check_path`), and neither in nor above any protected tree (the anchors of `_covers_anchor`,
    the floor's and the caller's prefixes as `check_path` and `check_pattern` read them)? Then
    no path inside it is any of those, or in one."""
    if cwd is None or not cwd.isascii() or re.search(r"[*?\[\x00]", cwd) or normalise(cwd) != cwd \
            or cwd.startswith(("/dev", "/proc")) or check_path(cwd, home, extra):
        return False
    folded = fold(cwd)
    comps = tuple(components(folded))
    if len(comps) < 2 and (not comps or comps[0] in _SYSTEM_TOP):
        return False
    trees = [*_anchors(home, extra), *(tuple(c) for _, c in _prefixes(home)),
             *(tuple(components(fold(p))) for p in extra)]
    if any(_related(comps, tree) for tree in trees):
        return False
    strings = [fold(p.rstrip("/")) or "/" for p in extra] + [pref for _, pref in _prefix_strings(home)]
    return not any(pref.startswith(folded + "/") for pref in strings)


def _blind(cmd: SimpleCommand, un: Any, argvs: _Argvs, variables: dict[str, str], home: str, depth: int,
           extra: tuple[str, ...]) -> int:
    """How far `_check_simple` gives `cmd` the same answer in every directory (SEES_CWD,
    BLIND_NEUTRAL or BLIND_UNKNOWN)? Every word (with what `xargs` appends), assignment value,
    redirection target, word of a listing piped in and string of inline code must be
    `_cwd_free`, and every command line it runs `_invariant`: so no shell (by name or as a word),
    `alias`, `trap`, `-c`/`eval` script, array or function of the line; an argument with blanks
    is such a line. In the unknown directory, nothing `_is_root_target` reads either: no
    recursive rm (by any program name) nor find that deletes (an unknown directory may be `/`)."""
    if un.nested or un.dynamic_nested or _ARRAYS in variables or _REDEFINED in variables:
        return SEES_CWD
    level = BLIND_UNKNOWN
    words = [w for _, value in cmd.assigns for w in argvs((value,))]
    words += [argvs((t,))[0] for _, t in cmd.redirects if t is not None]
    if cmd.stdin == "pipe" and cmd.producer is not None and cmd.producer.words:
        pargv = argvs(cmd.producer.words)     # (its words are read for the trees a listing walks)
        if family(_program(pargv[0])) in ("find", "rg", "fd"):
            words += pargv
    items: list[str] | None = None            # (as `_check_simple` builds each layer's argv)
    for layer in un.layers:
        argv = argvs(layer.words)
        if not argv:
            continue
        prog = _program(argv[0])
        if items is not None:
            argv = argv + items
        if prog in ("xargs", "parallel") and items is None:
            items = _xargs_items(cmd, argv, home, variables)
            if prog == "parallel":
                argv = argv + items
        if prog in ("alias", "trap") or is_shell(prog):
            return SEES_CWD
        if family(prog) == "find" and any(a in ("-delete", "-exec", "-execdir") for a in argv):
            level = BLIND_NEUTRAL
        if (prog in ("rm", "?", "unlink", "rmdir") or any(_program(a) == "rm" for a in argv[1:])) and any(
                a.startswith("-") and ("r" in a or "R" in a) for a in argv[1:]):
            level = BLIND_NEUTRAL
        if _interpreter(prog) or has_role(prog, "awk"):
            for a in argv[1:]:               # (the strings of inline code are read as paths)
                level = min([level, *(_cwd_free(m.group(2), home) for m in _CODE_STRING.finditer(a))])
        words += argv
    for w in words:
        if is_shell(_program(w)):
            return SEES_CWD
        level = min(level, _cwd_free(w, home))
        if _BLANK.search(w):
            for _, text in _lines_in(w):
                level = min(level, _invariant(text, home, depth + 1, extra))
        if level == SEES_CWD:
            break
    return level


@lru_cache(maxsize=1024)
def _invariant(command: str, home: str, depth: int, extra: tuple[str, ...]) -> int:
    """How far `_check(command, home, cwd, depth, extra)` gives the same answer in every
    directory (SEES_CWD, BLIND_NEUTRAL or BLIND_UNKNOWN)? No reading of it may set a variable,
    define a function, change directory, or hold code run later (`_stored_code`,
    `_quoted_subscripts`, `_array_literals`), and all its commands must be `_blind`."""
    if depth > 8:
        return BLIND_UNKNOWN
    if len(command) > 4096 or sum(command.count(ch) for ch in "()[]{}`$;&|<>\n") > 64:
        # Only a line parsed well within the walker's depth: a deeper one may be parsed
        # differently at another depth of the stack (see `shell.analyse`), and this reading
        # must not be the first to parse it.
        return SEES_CWD
    level = BLIND_UNKNOWN
    for source in interpretations(command):
        analysis = analyse(source)
        if analysis.opaque in (TOO_DEEP, TOO_MANY):
            continue
        if analysis.assignments or analysis.functions or _stored_code(analysis) or \
                _quoted_subscripts(analysis) or _array_literals(analysis):
            return SEES_CWD
        argvs = _Argvs(home, {})
        for cmd in analysis.commands:
            words = argvs(cmd.words)
            if cmd.assigns or words[:1] in (["set"], ["readarray"], ["mapfile"]) or any(
                    len(w.segments) == 1 and w.segments[0][0] == SUB and "=" in w.segments[0][1] for w in cmd.words):
                return SEES_CWD             # (what `_check_source` makes variables of: `declare X=…`)
            un = unwrap(cmd)
            if any(argv and _program(argv[0]) in ("cd", "pushd", "popd")
                   for argv in (argvs(layer.words) for layer in un.layers)):
                return SEES_CWD
            level = min(level, _blind(cmd, un, argvs, {}, home, depth, extra))
            if level == SEES_CWD:
                return level
    return level


class _Judged:
    """Where one simple command of a line was judged clean, and where it need not be judged."""

    def __init__(self, cmd: SimpleCommand, un: Any, argvs: _Argvs, variables: dict[str, str], home: str,
                 depth: int, extra: tuple[str, ...]) -> None:
        self.cmd, self.un, self.argvs, self.variables = cmd, un, argvs, variables
        self.home, self.depth, self.extra = home, depth, extra
        self.clean: list[str | None] = []
        self.alike: set[bool] = set()        # of the clean places neutral or unknown: is it unknown?
        self._blind: int | None = None

    def judged_clean(self, cwd: str | None) -> None:
        """The command was judged clean in `cwd`."""
        self.clean.append(cwd)
        if cwd is None or _neutral(cwd, self.home, self.extra):
            self.alike.add(cwd is None)

    def known_clean(self, cwd: str | None) -> bool:
        """Would judging the command in `cwd` surely find nothing? When it was judged clean there;
        or when `cwd` and a directory it was judged clean in are both neutral or unknown, and it
        is blind to the difference."""
        if cwd in self.clean:
            return True
        if not self.alike or not (cwd is None or _neutral(cwd, self.home, self.extra)):
            return False
        if self._blind is None:
            self._blind = _blind(self.cmd, self.un, self.argvs, self.variables, self.home, self.depth, self.extra)
        need = BLIND_NEUTRAL if cwd is not None and False in self.alike else BLIND_UNKNOWN
        return self._blind >= need
