"""read_file, write_file and list_dir, opened race-free through safe_open.

Every tool canonicalises the caller's path, checks the floor on it, opens it by an fd-relative
O_NOFOLLOW walk and re-checks the floor on the path actually opened.

read_file{path, start?, end?} -> {content, truncated, encoding, ...}
    `start`/`end` are 1-based LINE numbers, both inclusive (`start` defaults to 1, `end` to the
    last line). At most 1 MB of content is returned; `truncated` is true when the selected lines
    were cut (by the cap) — `next_start` then says where to continue. Content that is valid
    UTF-8 comes back as text (`encoding: "utf-8"`); anything else as base64 (`encoding: "base64"`).
write_file{path, content, encoding?} -> {bytes_written, path}
    Atomic (temp file in the same directory, fsync, rename, fsync dir). An existing file keeps its
    mode (and owner, when we may set it); a new file gets 0644 minus the umask. A final symlink
    is refused, never followed. `encoding: "base64"` writes binary content.
list_dir{path} -> [{name, type, size}]
    Sorted by name; type is file|dir|symlink|other; symlinks are not followed. At most 10000.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import posixpath
import secrets
import stat
from typing import Any, Mapping

from cmdop.adapters import safe_open
from cmdop.core.tool_input import MAX_LINE
from cmdop.tools.base import BadInput, ToolEnv, get_int, get_str

READ_CAP = 1 << 20
LIST_CAP = 10_000


def _encode(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _open_named(path: str, home: str, flags: int) -> int:
    """safe_open.open_checked, with an OSError naming the whole path the caller asked for
    (the adapter reports the component it opened, or an fd number)."""
    try:
        return safe_open.open_checked(path, home, flags)
    except OSError as exc:
        raise _named(exc, path) from None


def _named(exc: OSError, path: str) -> OSError:
    if exc.filename == path:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), path)


def read_file(tool_input: Mapping[str, Any], env: ToolEnv) -> dict[str, Any]:
    """Read lines start..end (1-based, inclusive) of a regular file, at most READ_CAP bytes."""
    path = safe_open.canonical(get_str(tool_input, "path"), env.cwd, env.home)
    start = get_int(tool_input, "start", 1, 1, MAX_LINE)
    end = get_int(tool_input, "end", None, 1, MAX_LINE)
    assert start is not None
    if end is not None and end < start:
        raise BadInput("'end' must not be smaller than 'start'", "end")
    fd = _open_named(path, env.home, os.O_RDONLY)
    try:
        # Checked before fdopen: io.FileIO refuses a directory itself, naming the fd number
        # ("11: Is a directory") instead of the path.
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory (use list_dir)", path)
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"not a regular file: {path}", "path")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        out = bytearray()
        truncated = False
        lineno = 0
        next_start = 0
        while True:
            # readline with a limit: a file without newlines cannot blow up memory.
            piece = f.readline(READ_CAP + 1)
            if not piece:
                break
            current = lineno + 1            # the line this piece belongs to
            if piece.endswith(b"\n"):
                lineno += 1
            if current < start:
                continue
            if end is not None and current > end:
                break
            if len(out) + len(piece) > READ_CAP:
                truncated = True
                if not out:  # one huge line: return its first READ_CAP bytes
                    out += piece[:READ_CAP]
                    next_start = current + 1
                else:
                    next_start = current
                break
            out += piece
    content, encoding = _encode(bytes(out))
    result: dict[str, Any] = {"content": content, "truncated": truncated, "encoding": encoding,
                              "path": path, "size": st.st_size}
    if next_start:
        result["next_start"] = next_start
    return result


def write_file(tool_input: Mapping[str, Any], env: ToolEnv) -> dict[str, Any]:
    """Replace (or create) a file atomically, keeping an existing file's mode; no final symlink."""
    given = get_str(tool_input, "path")
    content = get_str(tool_input, "content", required=False)
    encoding = get_str(tool_input, "encoding", required=False, default="utf-8")
    if encoding == "base64":
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput("'content' is not valid base64", "content") from None
    elif encoding == "utf-8":
        data = content.encode("utf-8")
    else:
        raise BadInput("'encoding' must be 'utf-8' or 'base64'", "encoding")
    lexical = safe_open.lexical_path(given, env.cwd, env.home)
    name = posixpath.basename(lexical)
    if not name:
        raise BadInput(f"not a file path: {given}", "path")
    if os.path.islink(lexical):
        raise safe_open.SymlinkRefused(f"{lexical} is a symlink; write_file does not follow a final symlink")
    parent = safe_open.canonical(posixpath.dirname(lexical), env.cwd, env.home)
    path = posixpath.join(parent, name)
    safe_open.check_floor(path, env.home)
    try:
        dfd = safe_open.open_dir(parent)
    except OSError as exc:
        raise _named(exc, parent) from None
    try:
        safe_open.check_floor(posixpath.join(safe_open.fd_path(dfd), name), env.home)
        return _replace_in(dfd, name, data, path)
    finally:
        os.close(dfd)


def _replace_in(dfd: int, name: str, data: bytes, shown: str) -> dict[str, Any]:
    try:
        old: os.stat_result | None = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    if old is not None and stat.S_ISLNK(old.st_mode):
        raise safe_open.SymlinkRefused(f"{shown} is a symlink; write_file does not follow a final symlink")
    if old is not None and not stat.S_ISREG(old.st_mode):
        raise BadInput(f"not a regular file: {shown}", "path")
    if old is not None:
        mode = stat.S_IMODE(old.st_mode)
    else:
        umask = os.umask(0o022)
        os.umask(umask)
        mode = 0o644 & ~umask
    tmp = f".{name[:200]}.cmdop-{secrets.token_hex(6)}.tmp"
    fd = safe_open.open_in(dfd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
        if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.fchown(fd, old.st_uid, old.st_gid)
            except PermissionError:
                pass  # not ours to give away; the file becomes ours, mode kept
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        tmp = ""
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
    sync_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
    try:
        os.fsync(sync_fd)
    finally:
        os.close(sync_fd)
    return {"bytes_written": len(data), "path": shown}


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def list_dir(tool_input: Mapping[str, Any], env: ToolEnv) -> list[dict[str, Any]]:
    """The entries of a directory as [{name, type, size}], sorted by name, symlinks not followed."""
    path = safe_open.canonical(get_str(tool_input, "path", required=False) or ".", env.cwd, env.home)
    fd = _open_named(path, env.home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        entries: list[dict[str, Any]] = []
        with os.scandir(fd) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished while listing
                entries.append({"name": entry.name, "type": _kind(st.st_mode), "size": st.st_size})
                if len(entries) >= LIST_CAP:
                    break
    finally:
        os.close(fd)
    entries.sort(key=lambda e: str(e["name"]))
    return entries
