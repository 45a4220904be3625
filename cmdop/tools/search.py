"""grep and glob. Neither descends into, reads or reports a floor path.

grep{pattern, path, glob?, max_results?} -> [{file, line, text}]
    `pattern` is a Python regular expression searched in each line (UTF-8, undecodable bytes
    replaced). `path` is a file or a directory walked recursively without following symlinks;
    `glob` filters file NAMES (fnmatch, e.g. "*.py"). Binary files (a NUL in the first 8 KB) and
    files over 20 MB are skipped, as are floor directories (.git, .ssh, ...) and floor files.
    Caps: 1000 results (default), 10 s of wall time, lines cut to 2000 characters in results and
    to 10000 characters for matching. A cap that is hit ends the list early; the list stays a
    list (the tool's result shape), so callers who need to know compare its length with the cap.
    The search runs in a child interpreter (under the sandbox where there is one) that stops
    itself at the time cap and is killed 2 s later if one regex search will not end: Python's
    `re` holds the GIL and cannot be interrupted, so searching in-process would let one
    catastrophic pattern freeze the agent. Results found before the kill are kept.
glob{pattern, cwd?} -> {matches, truncated}
    Shell glob with `**` for any depth, relative to `cwd` (default: the call's cwd); results are
    as the pattern spelled them (relative patterns give relative paths), sorted, at most 10000,
    floor paths left out. Python's glob rules (`*`, `?` and `**` skip names starting with "."
    unless the pattern component starts with one), except that `**` never descends through a
    symlink to a directory (like `find` without -L), so a link loop cannot make it endless; a
    symlink named by the pattern or matched by a one-level `*` is followed as the shell would.
    Floor directories are never read. The time cap (10 s) is checked at every directory entry;
    when it or the result cap is hit the walk stops with `truncated` true.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
import sys
import time
from typing import NamedTuple, Any, Iterable, Iterator, Mapping

from cmdop.adapters import safe_open
from cmdop.core.calls import CallerKind
from cmdop.core.errors import ToolError
from cmdop.core.tool_input import GREP_MAX_RESULTS
from cmdop.tools.base import BadInput, ToolEnv, get_int, get_str
from cmdop.tools.execute_command import run_argv

GREP_TIME_S = 10.0
GREP_KILL_MARGIN_S = 2.0    # the worker stops itself at GREP_TIME_S; killed if it cannot
GLOB_MAX = 10_000
GLOB_TIME_S = 10.0          # glob walks in the calling thread, which nothing can kill: it stops itself
                            # (unlike grep, it runs no regex that could hold the GIL)


def grep(tool_input: Mapping[str, Any], env: ToolEnv) -> list[dict[str, Any]]:
    """Lines matching `pattern` under `path`, as [{file, line, text}] (line is 1-based).

    The search itself runs in a child interpreter (sandboxed where seccomp is available) that is
    killed at the time cap: Python's `re` holds the GIL and cannot be interrupted, so a
    catastrophic pattern searched in-process would freeze the whole agent.
    """
    raw = get_str(tool_input, "pattern")
    try:
        re.compile(raw)
    except re.error as exc:
        raise BadInput(f"bad regular expression: {exc}", "pattern") from None
    name_glob = get_str(tool_input, "glob", required=False)
    limit = get_int(tool_input, "max_results", GREP_MAX_RESULTS, 1, GREP_MAX_RESULTS)
    assert limit is not None
    root = safe_open.canonical(get_str(tool_input, "path", required=False) or ".", env.cwd, env.home)
    safe_open.check_floor(root, env.home)
    job = {"sys_path": _child_sys_path(), "root": root, "pattern": raw, "glob": name_glob,
           "limit": limit, "home": env.home, "time_s": GREP_TIME_S, "agent_pid": os.getpid()}
    argv = [sys.executable, "-I", "-S", "-c", _WORKER, json.dumps(job)]
    # Our own code runs in the child: allowed without seccomp for every caller (it runs no
    # caller-supplied program), and it gets no environment but a PATH and a UTF-8 locale.
    worker_env = dataclasses.replace(env, caller_kind=CallerKind.LOCAL, on_chunk=None, warn=None,
                                     sandbox_required_for_local=False)
    out = run_argv(argv, {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}, "/",
                   GREP_TIME_S + GREP_KILL_MARGIN_S, worker_env)
    results: list[dict[str, Any]] = []
    for line in str(out["stdout"]).splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue  # a line cut by the kill or the output cap
        if "r" in msg:
            results.append(msg["r"])
        elif msg.get("error") == "permission_denied":
            raise safe_open.FloorDenied(str(msg["path"]), str(msg["reason"]))
        elif msg.get("error") == "symlink_refused":
            raise safe_open.SymlinkRefused(str(msg["message"]))
        elif msg.get("error") == "agent_private":
            raise safe_open.AgentPrivate(str(msg["message"]))
        elif msg.get("error") == "os_error":
            raise OSError(int(msg["errno"]), str(msg["message"]), str(msg["path"]))
        elif "error" in msg:
            raise ToolError(str(msg.get("message", "grep failed")))
    if not results and out["exit_code"] != 0 and not out["timed_out"] and not out["cancelled"]:
        raise ToolError(f"grep worker failed: {str(out['stderr'])[-500:]}")
    return results[:limit]


_WORKER = (
    "import json, sys\n"
    "job = json.loads(sys.argv[1])\n"
    "sys.path[:0] = job['sys_path']\n"
    "from cmdop.tools.grep_worker import worker_main\n"
    "sys.exit(worker_main(job))\n"
)


def _child_sys_path() -> list[str]:
    """Where the child finds cmdop and its dependencies: our package root first (a checkout,
    a shiv site-packages or a .pyz file), then this interpreter's path."""
    import cmdop

    root = os.path.dirname(os.path.dirname(os.path.abspath(cmdop.__file__)))
    return [root] + [p for p in sys.path if p and p != root]


def glob(tool_input: Mapping[str, Any], env: ToolEnv) -> dict[str, Any]:
    """Paths matching a shell glob (`**` recursive) as the module docstring promises: sorted,
    floor paths left out (judged as spelled and as resolved), at most GLOB_MAX, returning within
    about GLOB_TIME_S with `truncated` true when a cap was hit."""
    pattern = get_str(tool_input, "pattern")
    given = get_str(tool_input, "cwd", required=False)
    cwd = safe_open.canonical(given or env.cwd or os.getcwd(), env.cwd, env.home)
    safe_open.check_floor(cwd, env.home)
    if given and not os.path.isdir(cwd):   # (it matched nothing, silently)
        raise BadInput(f"cwd is not a directory: {cwd}", "cwd")
    if pattern == "~" or pattern.startswith("~/"):
        pattern = env.home + pattern[1:]
    matches: list[str] = []
    walk = _GlobWalk(cwd, env.home, time.monotonic() + GLOB_TIME_S)
    truncated = False
    own = safe_open.agent_pids()      # /proc/<agent>/…: not even names (its fds, its threads)
    for match in walk.iglob(pattern, dironly=False):
        if not match:
            continue  # the "zero directories" of a leading `**`, not a path
        # Every result is judged, as spelled and as resolved: the walk only prunes directories
        # it reads, and a matched symlink may point anywhere.
        full = safe_open.lexical_path(match, cwd, env.home)
        real = os.path.realpath(full)
        if safe_open.floor_reason(full, env.home) or safe_open.floor_reason(real, env.home):
            continue
        # (/proc/self/fd/3 resolves to the file it holds: judge its directory resolved instead)
        dir_real = os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))
        if any(safe_open.is_agent_proc(p, own) for p in (full, real, dir_real)):
            continue
        if len(matches) >= GLOB_MAX:
            truncated = True
            break
        matches.append(match)
    return {"matches": sorted(matches), "truncated": truncated or walk.cut}


_MAGIC = re.compile(r"[*?\[]")


def _has_magic(s: str) -> bool:
    return _MAGIC.search(s) is not None


def _hidden(name: str) -> bool:
    return name[:1] == "."


def _join(a: str, b: str) -> str:
    return os.path.join(a, b) if a and b else a or b


class _Entry(NamedTuple):
    """A directory entry as read while its directory was open."""

    name: str
    is_dir: bool        # following a symlink
    real_dir: bool      # not following one


class _GlobWalk:
    """One glob expansion below `root`: Python's `glob.iglob(recursive=True)` algorithm, with
    the time cap checked at every directory entry, floor directories never listed, and `**`
    entering only real directories (never a symlink to one)."""

    def __init__(self, root: str, home: str, deadline: float) -> None:
        self.root = root
        self.home = home
        self.deadline = deadline
        self.cut = False    # the time cap was hit: results may be missing

    def _expired(self) -> bool:
        if not self.cut and time.monotonic() > self.deadline:
            self.cut = True
        return self.cut

    def iglob(self, pattern: str, dironly: bool) -> Iterator[str]:
        """Paths (spelled like `pattern`) that match it; only directories when `dironly`."""
        dirname, basename = os.path.split(pattern)
        if not _has_magic(pattern):
            if basename:
                if os.path.lexists(_join(self.root, pattern)):
                    yield pattern
            elif os.path.isdir(_join(self.root, dirname)):
                yield pattern     # a trailing "/" matches directories only
            return
        if not dirname:
            if basename == "**":
                yield from self._glob2(self.root, dironly)
            else:
                yield from self._glob1(self.root, basename, dironly)
            return
        dirs: Iterable[str]
        if dirname != pattern and _has_magic(dirname):
            dirs = self.iglob(dirname, dironly=True)
        else:
            dirs = [dirname]
        for parent in dirs:
            if self._expired():
                return
            where = _join(self.root, parent)
            if basename == "**":
                names: Iterable[str] = self._glob2(where, dironly)
            elif _has_magic(basename):
                names = self._glob1(where, basename, dironly)
            else:
                names = self._glob0(where, basename)
            for name in names:
                yield os.path.join(parent, name)

    def _scan(self, path: str) -> list[_Entry]:
        """The entries of directory `path`: none when it is on the floor (as spelled, or as the
        directory actually opened — judged on the open fd, so a link swapped between the check
        and the listing cannot show a floor directory's names) or unreadable; only those read in
        time when the time cap passes meanwhile."""
        full = safe_open.lexical_path(path, self.root, self.home)
        if safe_open.floor_reason(full, self.home):
            return []
        try:
            fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return []
        entries: list[_Entry] = []
        try:
            if safe_open.floor_reason(safe_open.fd_path(fd), self.home):
                return []
            with os.scandir(fd) as it:      # (entries of an fd scan need the fd: read them now)
                for entry in it:
                    if self._expired():
                        break
                    try:
                        entries.append(_Entry(entry.name, entry.is_dir(), entry.is_dir(follow_symlinks=False)))
                    except OSError:
                        continue
        except OSError:
            pass
        finally:
            os.close(fd)
        return entries

    def _glob0(self, where: str, basename: str) -> list[str]:
        """A literal last component: itself if it exists (a trailing "/": if `where` is a dir)."""
        if basename:
            return [basename] if os.path.lexists(_join(where, basename)) else []
        return [basename] if os.path.isdir(where) else []

    def _glob1(self, where: str, pattern: str, dironly: bool) -> Iterator[str]:
        """Names in `where` matching a one-level wildcard (symlinked dirs count as dirs)."""
        for entry in self._scan(where):
            if self._expired():
                return
            if _hidden(entry.name) and not _hidden(pattern):
                continue
            if not fnmatch.fnmatchcase(entry.name, pattern):
                continue
            if dironly and not entry.is_dir:
                continue
            yield entry.name

    def _glob2(self, where: str, dironly: bool) -> Iterator[str]:
        """`**`: "" (zero directories), then every non-hidden path below `where`, descending only
        into real directories: a symlinked one is listed (unless `dironly`) but never entered."""
        if os.path.isdir(where):
            yield ""
        pending = [""]      # an explicit stack: depth is not bounded by Python's recursion limit
        while pending:
            rel = pending.pop()
            for entry in self._scan(_join(where, rel)):
                if self._expired():
                    return
                if _hidden(entry.name):
                    continue
                real_dir = entry.real_dir
                if dironly and not real_dir:
                    continue
                name = _join(rel, entry.name)
                yield name
                if real_dir:
                    pending.append(name)
