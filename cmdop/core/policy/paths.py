"""The pure half of path canonicalisation: `~`, the call's cwd, `..`, doubled slashes and the
/proc "root" aliases, all without touching the filesystem.

`cmdop.adapters.canonical.canonical_path` adds what needs the filesystem (symlinks, /dev/fd/N,
/proc/<pid>/cwd). The gate checks the floor against both forms: the lexical one catches
`/etc/../etc/passwd` even if a symlink would make the resolved form differ, the resolved one
catches a link named `notes.txt` that points at `~/.ssh/id_rsa`.
"""

from __future__ import annotations

import posixpath
import re

from cmdop.core.policy.pattern import LazyPattern

# /proc/self/root, /proc/thread-self/root, /proc/<pid>/root and /proc/<pid>/task/<tid>/root are
# the process's root directory; for a process of ours (or one sharing our root) that is "/".
_PROC_ROOT = LazyPattern(r"^/proc/(?:self|thread-self|[0-9]+)(?:/task/[0-9]+)?/root(?=/|$)")


def expand_user(path: str, home: str) -> str:
    """Expand a leading `~` or `~/` to `home`; `~user` is left for the adapter to resolve."""
    if path == "~" or path.startswith("~/"):
        return home.rstrip("/") + path[1:] if home != "/" else "/" + path[2:]
    return path


def normalise(path: str) -> str:
    """Fold `.`, `..` and repeated slashes of an absolute path; `//x` becomes `/x`."""
    if (path[:1] == "/" and "//" not in path and "/." not in path and path[-1:] != "/"
            and not path.startswith("/proc/")):
        return path          # already folded: the common case, kept cheap
    folded = posixpath.normpath("/" + path.lstrip("/"))
    while True:  # /proc/self/root/proc/self/root/etc -> /etc
        stripped = _PROC_ROOT.sub("", folded, count=1)
        if stripped == folded:
            return folded
        folded = posixpath.normpath("/" + stripped.lstrip("/"))


def lexical_path(path: str, cwd: str, home: str) -> str:
    """`path` as an absolute, folded path: `~` expanded, relative to `cwd` (itself expanded)."""
    path = expand_user(path, home)
    if not path.startswith("/"):
        base = expand_user(cwd or "/", home)
        if not base.startswith("/"):
            base = "/" + base
        path = base.rstrip("/") + "/" + path
    return normalise(path)


def components(path: str) -> list[str]:
    """Components of a normalised absolute path (`/` has none)."""
    return [c for c in path.split("/") if c]
