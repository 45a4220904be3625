"""The child side of the grep tool: walk, match, print one JSON line per result.

Runs in a fresh interpreter started by `cmdop.tools.search.grep` (see there for why), so it
imports as little as it can: a fast start is most of a grep's cost.
Every file is opened race-free (cmdop.adapters.safe_open) and floor paths are never entered,
read or reported.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
import stat
import sys
import time
from typing import Any, Callable, Generator, Mapping

from cmdop.adapters import safe_open

GREP_FILE_MAX = 20 << 20
LINE_MATCH_MAX = 10_000
LINE_SHOW_MAX = 2_000


def worker_main(job: Mapping[str, Any]) -> int:
    """The child side of grep: walk, match, print one JSON line per result, then exit."""
    def emit(obj: Mapping[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        grep_local(str(job["root"]), re.compile(str(job["pattern"])), str(job["glob"]),
                   int(job["limit"]), str(job["home"]), time.monotonic() + float(job["time_s"]),
                   lambda r: emit({"r": r}), int(job.get("agent_pid") or 0) or None)
    except safe_open.FloorDenied as exc:
        emit({"error": "permission_denied", "path": exc.path, "reason": exc.reason})
    except safe_open.SymlinkRefused as exc:
        emit({"error": "symlink_refused", "message": exc.message})
    except safe_open.AgentPrivate as exc:
        emit({"error": "agent_private", "message": exc.message})
    except OSError as exc:
        emit({"error": "os_error", "errno": exc.errno or 0, "message": exc.strerror or str(exc),
              "path": exc.filename or ""})
    return 0


def grep_local(root: str, regex: re.Pattern[str], name_glob: str, limit: int, home: str,
               deadline: float, emit: Callable[[dict[str, Any]], None],
               agent_pid: int | None = None) -> None:
    """Search canonical `root` in this process, calling `emit` per result (at most `limit`).

    `agent_pid`: the agent whose /proc entries stay closed (default: this process)."""
    results: list[dict[str, Any]] = []
    fd = safe_open.open_checked(root, home, os.O_RDONLY, agent_pid=agent_pid)
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            if stat.S_ISREG(st.st_mode):
                _grep_fd(fd, root, regex, results, limit, deadline, emit)
            return
        files = _walk(fd, root, name_glob, home, safe_open.agent_pids(agent_pid))
        try:
            for path, ffd in files:
                try:
                    _grep_fd(ffd, path, regex, results, limit, deadline, emit)
                finally:
                    os.close(ffd)
                if len(results) >= limit or time.monotonic() > deadline:
                    break
        finally:
            files.close()
    finally:
        os.close(fd)


def _walk(root_fd: int, root: str, name_glob: str, home: str,
          private: frozenset[int]) -> Generator[tuple[str, int], None, None]:
    """(path, open fd) of each regular file below the directory `root_fd` (whose path is `root`).

    fd-relative from the already safely opened root; symlinks are never followed.
    """
    for rel, dirnames, filenames, dirfd in os.fwalk(".", follow_symlinks=False, dir_fd=root_fd):
        dirpath = root if rel == "." else posixpath.join(root, rel[2:])
        # Prune floor directories before descending (sorted for a stable order).
        dirnames[:] = sorted(d for d in dirnames
                             if not safe_open.floor_reason(posixpath.join(dirpath, d), home)
                             and not safe_open.is_agent_proc(posixpath.join(dirpath, d), private))
        for name in sorted(filenames):
            if name_glob and not fnmatch.fnmatchcase(name, name_glob):
                continue
            path = posixpath.join(dirpath, name)
            if safe_open.floor_reason(path, home):
                continue
            try:
                fd = safe_open.open_in(dirfd, name, os.O_RDONLY | os.O_NONBLOCK)
            except (OSError, safe_open.SymlinkRefused):
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size > GREP_FILE_MAX:
                    os.close(fd)
                    continue
                safe_open.check_hard_link(fd, path, home)
                os.set_blocking(fd, True)
            except (OSError, safe_open.FloorDenied):
                os.close(fd)
                continue
            yield path, fd


def _grep_fd(fd: int, path: str, regex: re.Pattern[str], results: list[dict[str, Any]],
             limit: int, deadline: float, emit: Callable[[dict[str, Any]], None]) -> None:
    with os.fdopen(os.dup(fd), "rb") as f:
        head = f.read(8192)
        if b"\0" in head:
            return
        f.seek(0)
        for lineno, raw in enumerate(f, 1):
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            if regex.search(text[:LINE_MATCH_MAX]):
                result = {"file": path, "line": lineno, "text": text[:LINE_SHOW_MAX]}
                results.append(result)
                emit(result)
                if len(results) >= limit:
                    return
            if lineno % 256 == 0 and time.monotonic() > deadline:
                return
