"""The filesystem half of path canonicalisation (the pure half is core/policy/paths.py).

`canonical_path` expands `~` (and `~user`), makes the path absolute against the call's cwd,
resolves symlinks of the part that exists (component by component, as the kernel would, so
`link/..` is the link target's parent), folds the rest lexically, and sees through the /proc and
/dev/fd magic links (`/proc/self/root`, `/proc/<pid>/root|cwd`, `/dev/fd/N`, `/proc/self/fd/N`)
because they are symlinks the kernel resolves. A descriptor that points at something that is not
a path (a pipe, a socket, a deleted file) yields the un-resolvable `/proc/...` path itself, which
no rule written for real paths will match.

It never raises: an error while resolving (loops, permissions) falls back to the lexical form.
"""

from __future__ import annotations

import os

from cmdop.core.policy.paths import expand_user, lexical_path, normalise


def canonical_path(path: str, cwd: str, home: str) -> str:
    """The canonical absolute form of `path` for the gate and the floor."""
    if path.startswith("~") and not (path == "~" or path.startswith("~/")):
        expanded = os.path.expanduser(path)
        path = expanded if expanded != path else path
    path = expand_user(path, home)
    if not cwd:
        try:
            cwd = os.getcwd()
        except OSError:
            cwd = "/"
    if not path.startswith("/"):
        path = expand_user(cwd, home).rstrip("/") + "/" + path
    try:
        resolved = os.path.realpath("/" + path.lstrip("/"))
    except (OSError, ValueError, RuntimeError):
        return lexical_path(path, "/", home)
    if not resolved.startswith("/"):
        return lexical_path(path, "/", home)
    # realpath leaves "pipe:[123]"-style link targets as a path component; keep them as written.
    return normalise(resolved) if "pipe:" not in resolved and "socket:" not in resolved else resolved


def canonical_dir(cwd: str, home: str) -> str:
    """The canonical form of a working directory ("" → the process's own)."""
    return canonical_path(cwd or ".", "", home) if cwd else canonical_path(".", "", home)

