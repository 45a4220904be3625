"""Keeping the agent's own secrets away from the commands it runs (Linux).

A shell command run for a caller could read the agent's /proc/<pid>/environ (its parent's or any
ancestor's), where CMDOP_API_KEY and friends sit. Two measures, taken once at daemon start after
`Settings` has been read (the values live on in `Settings` only):

- `scrub_secret_env`: remove the secret variables from os.environ (so no later child inherits
  them) *and* blank their bytes in the process's original environment block, which is what
  /proc/<pid>/environ shows (unsetenv alone does not change it). The block's bounds come from
  /proc/self/stat (env_start, env_end); entries are overwritten with NUL bytes in place.
- `make_undumpable`: prctl(PR_SET_DUMPABLE, 0). The kernel then makes /proc/<pid>/{environ,mem,
  maps,fd,...} root-owned and refuses them to same-uid processes without CAP_SYS_PTRACE, so a
  non-root child cannot read the daemon's memory at all. Root (or CAP_SYS_PTRACE) children still
  can: for those the scrubbed block is what protects the key, and the floor's agent-private paths
  keep file tools away from cmdop's own files. Children are unaffected: execve resets dumpable.

Secret names: CMDOP_* variables whose name contains KEY, TOKEN, SECRET or PASSWORD.
Both functions are best effort and never raise; they report what they did.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import MutableMapping

log = logging.getLogger("cmdop.daemon.hardening")

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def is_secret_name(name: str) -> bool:
    """True for the agent's secret-bearing variables (CMDOP_API_KEY, CMDOP_TOKEN, ...)."""
    return name.startswith("CMDOP_") and any(w in name[6:] for w in SECRET_WORDS)


def _env_block() -> tuple[int, int] | None:
    """(env_start, env_end) of this process from /proc/self/stat (fields 50, 51), or None."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2:].split()   # fields[0] is field 3 (state)
        start, end = int(fields[50 - 3]), int(fields[51 - 3])
    except (OSError, ValueError, IndexError):
        return None
    return (start, end) if 0 < start < end else None


def _blank_block(names: set[bytes]) -> int:
    """Overwrite `NAME=value` entries for `names` in the environment block; how many."""
    bounds = _env_block()
    if bounds is None:
        return 0
    start, end = bounds
    try:
        with open("/proc/self/environ", "rb") as f:   # the block as the kernel shows it
            block = f.read()
    except OSError:
        return 0
    blanked, offset = 0, 0
    for entry in block.split(b"\0"):
        name = entry.split(b"=", 1)[0]
        if name in names and offset + len(entry) <= end - start:
            ctypes.memset(start + offset, 0, len(entry))
            blanked += 1
        offset += len(entry) + 1
    return blanked


def scrub_secret_env(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Remove the secret variables (see `is_secret_name`) from `environ` (default os.environ)
    and, for os.environ, from /proc/self/environ. Returns the names removed."""
    env = os.environ if environ is None else environ
    names = sorted(k for k in env if is_secret_name(k))
    for name in names:
        del env[name]          # os.environ: also unsetenv(), so later children do not inherit it
    if environ is None:
        try:
            with open("/proc/self/environ", "rb") as f:
                present = {e.split(b"=", 1)[0] for e in f.read().split(b"\0") if e}
        except OSError:
            present = set()
        left = {n for n in present if is_secret_name(n.decode("utf-8", "replace"))}
        if left and _blank_block(left) < len(left):
            log.warning("could not blank every secret in /proc/self/environ")
        names = sorted(set(names) | {n.decode("utf-8", "replace") for n in left})
    return names


def make_undumpable() -> bool:
    """prctl(PR_SET_DUMPABLE, 0); True when the kernel confirms it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_DUMPABLE, 0) failed: %s", os.strerror(ctypes.get_errno()))
            return False
        return bool(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError) as exc:
        log.warning("prctl unavailable: %s", exc)
        return False
