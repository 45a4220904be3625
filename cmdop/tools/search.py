"""grep and glob (CONTRACT §6). Neither descends into, reads or reports a floor path.

grep{pattern, path, glob?, max_results?} -> [{file, line, text}]
    `pattern` is a Python regular expression searched in each line (UTF-8, undecodable bytes
    replaced). `path` is a file or a directory walked recursively without following symlinks;
    `glob` filters file NAMES (fnmatch, e.g. "*.py"). Binary files (a NUL in the first 8 KB) and
    files over 20 MB are skipped, as are floor directories (.git, .ssh, ...) and floor files.
    Caps: 1000 results (default), 10 s of wall time, lines cut to 2000 characters in results and
    to 10000 characters for matching. A cap that is hit ends the list early; the list stays a
    list (CONTRACT shape), so callers who need to know compare its length with the cap.
    The search runs in a child interpreter (under the sandbox where there is one) that stops
    itself at the time cap and is killed 2 s later if one regex search will not end: Python's
    `re` holds the GIL and cannot be interrupted, so searching in-process would let one
    catastrophic pattern freeze the agent. Results found before the kill are kept.
glob{pattern, cwd?} -> {matches, truncated}
    Shell glob with `**` for any depth, relative to `cwd` (default: the call's cwd); results are
    as the pattern spelled them (relative patterns give relative paths), sorted, at most 10000,
    floor paths left out. The walk stops after 10 s (`truncated` then true).
"""

from __future__ import annotations

import dataclasses
import glob as globmod
import json
import os
import re
import sys
import time
from typing import Any, Mapping

from cmdop.adapters import safe_open
from cmdop.core.calls import CallerKind
from cmdop.core.errors import ToolError
from cmdop.tools.base import BadInput, ToolEnv, get_int, get_str
from cmdop.tools.execute_command import run_argv

GREP_MAX_RESULTS = 1000
GREP_TIME_S = 10.0
GREP_KILL_MARGIN_S = 2.0    # the worker stops itself at GREP_TIME_S; killed if it cannot
GLOB_MAX = 10_000


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
        raise BadInput(f"bad regular expression: {exc}") from None
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
    """Paths matching a shell glob (`**` recursive), floor paths left out."""
    pattern = get_str(tool_input, "pattern")
    cwd = safe_open.canonical(get_str(tool_input, "cwd", required=False) or env.cwd or os.getcwd(),
                              env.cwd, env.home)
    safe_open.check_floor(cwd, env.home)
    if pattern == "~" or pattern.startswith("~/"):
        pattern = env.home + pattern[1:]
    matches: list[str] = []
    truncated = False
    deadline = time.monotonic() + GREP_TIME_S
    for match in globmod.iglob(pattern, root_dir=cwd, recursive=True):
        if time.monotonic() > deadline:
            truncated = True
            break
        full = safe_open.lexical_path(match, cwd, env.home)
        if safe_open.floor_reason(full, env.home) or safe_open.floor_reason(os.path.realpath(full), env.home):
            continue
        if len(matches) >= GLOB_MAX:
            truncated = True
            break
        matches.append(match)
    return {"matches": sorted(matches), "truncated": truncated}
