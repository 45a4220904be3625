"""Secret-bearing files: atomic 0600 writes and refusal of files others could read.

Rules:
- directories holding secrets are created 0700; files are created 0600;
- a write goes to a temp file in the same directory, is fsynced, renamed over the target, and the
  directory is fsynced, so a crash leaves either the old or the new content, never a mix;
- a secret file that is group/world-accessible or owned by another user is refused with the
  exact chmod/chown to run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat

from cmdop.core.errors import SecretFileError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator


def ensure_private_dir(path: str) -> None:
    """Create `path` (and parents) if missing; a directory we create is 0700."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)


@contextlib.contextmanager
def exclusive_lock(lock_path: str) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` (created 0600 in a private directory, never
    through a symlink) for the block: read-modify-write of a small file by several processes.
    The lock goes with the descriptor, so a process that dies releases it."""
    ensure_private_dir(os.path.dirname(os.path.abspath(lock_path)))
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def writer_lock(path: str) -> contextlib.AbstractContextManager[None]:
    """The lock of a file's writers (`PATH.lock`), held for a read-modify-write: two at once
    would each write back what they read, and one change would be lost while both said it was
    made (`permissions add|rm|mode`, an "always" answer, `connect key set|rm|use`)."""
    return exclusive_lock(path + ".lock")


def atomic_write(path: str, data: bytes | str, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically; the file ends with permission bits `mode`.

    Readers see either the old file or the new one. Follows no symlink at `path`: the rename
    replaces a link rather than writing through it.
    """
    _publish(path, data, mode, replace=True)


def atomic_create(path: str, data: bytes | str, mode: int = 0o600) -> bool:
    """Create `path` with `data` (complete, `mode`, fsynced) only if nothing is there yet;
    False, touching nothing, when something is — never replaces, so two processes creating
    the same file at once end with exactly one of them (whoever linked first)."""
    return _publish(path, data, mode, replace=False)


def _create_temp(directory: str) -> tuple[int, str]:
    """A new empty 0600 file in `directory` and its path, made as tempfile.mkstemp makes one (an
    unguessable name, O_EXCL, no symlink followed) without importing tempfile: it imports
    shutil (bz2, lzma), ~3 ms of any command that writes a file."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = os.path.join(directory, ".tmp-" + os.urandom(8).hex())
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", directory)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _publish(path: str, data: bytes | str, mode: int, *, replace: bool) -> bool:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`
    (`replace`) or hard-link it to `path` when free; fsync the directory. False when `path`
    existed and `replace` is off."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path)) or "."
    ensure_private_dir(directory)
    fd, tmp = _create_temp(directory)
    try:
        os.fchmod(fd, mode)
        _write_all(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if replace:
            os.replace(tmp, path)
            tmp = ""
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def check_private(path: str) -> None:
    """Raise SecretFileError unless `path` is a regular file owned by us, not accessible to
    group/others, in a directory no one else can write (they could swap the file).

    A missing file is not an error here; callers decide what missing means.
    """
    st = _checked_stat(path)
    if st is None:
        return
    uid = os.geteuid()
    # Root too: root can read any file, but a secret another user owns is that user's to
    # change (they could swap in a key or a relay of their choosing), so it is never trusted.
    if st.st_uid != uid:
        raise SecretFileError(
            f"{path} is owned by uid {st.st_uid}, not by you (uid {uid}); refusing to use it",
            hint=f"run: chown {uid} {path} (or run cmdop as uid {st.st_uid}, its owner)",
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        how = "readable" if mode & 0o044 else "writable" if mode & 0o022 else "open"
        raise SecretFileError(
            f"{path} is {how} by other users (mode {mode:04o}); refusing to use it",
            hint=f"run: chmod 600 {path}",
        )


def check_not_writable(path: str) -> None:
    """Raise SecretFileError unless `path` (readable by all, e.g. a public key) is a regular file
    owned by us or root that no one else can write, in a directory no one else can write."""
    st = _checked_stat(path)
    if st is None:
        return
    if st.st_uid not in (os.geteuid(), 0):
        raise SecretFileError(f"{path} is owned by uid {st.st_uid}, not by you; refusing to use it",
                              hint=f"run: chown {os.geteuid()} {path}")
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise SecretFileError(f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                              "refusing to use it", hint=f"run: chmod 644 {path}")


def _checked_stat(path: str) -> os.stat_result | None:
    """stat(path), None when missing; SecretFileError when it is not a regular file or its
    directory can be written by others or belongs to another user (root excepted)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"{path} is not a regular file; refusing to use it",
                              hint=f"move {path} away (cmdop keeps a file there)")
    directory = os.path.dirname(os.path.abspath(path))
    dst = os.stat(directory)
    if _others_may_write(dst):
        raise SecretFileError(
            f"{directory} (holding {os.path.basename(path)}) can be written by other users "
            f"(owner uid {dst.st_uid}, mode {stat.S_IMODE(dst.st_mode):04o}); refusing to use it",
            hint=f"run: chmod 700 {directory}" + (f" && chown {os.geteuid()} {directory}"
                                                   if dst.st_uid not in (os.geteuid(), 0) else ""))
    return st


def _others_may_write(st: os.stat_result) -> bool:
    """Can someone but us (and root) change what this directory holds?"""
    return st.st_uid not in (os.geteuid(), 0) or bool(stat.S_IMODE(st.st_mode) & 0o022)


def _trusted_dir(directory: str) -> int | None:
    """`directory` opened (a descriptor the caller closes) when it is owned by us or root, no one
    else can write it, and every name on its path (links included) is ours or root's, else None.
    Every check and every later `*_at` call is on this one opened directory: swapping the path
    under us changes nothing we read or write; and no other user's link or directory on the
    way chooses which directory of ours that is (a root shell's state dir under a user's home,
    turned by that user into a link to /etc)."""
    me = os.geteuid()
    parts = os.path.abspath(directory).split(os.sep)
    for i in range(2, len(parts) + 1):
        try:
            if os.lstat(os.sep.join(parts[:i])).st_uid not in (me, 0):
                return None
        except OSError:
            return None
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    if _others_may_write(os.fstat(fd)):
        os.close(fd)
        return None
    return fd


def read_private_in(directory: str, name: str, limit: int) -> bytes | None:
    """The bytes of `name` in `directory` when the directory passes `_trusted_dir` and the file
    in that very directory is a regular file (not a link) owned by us, open to no one else and
    at most `limit` bytes; None in every other case, a missing file included."""
    dir_fd = _trusted_dir(directory)
    if dir_fd is None:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or stat.S_IMODE(st.st_mode) & 0o077 or st.st_size > limit):
            return None
        with os.fdopen(fd, "rb") as f:
            fd = -1
            data = f.read(limit + 1)
        return data if len(data) <= limit else None
    finally:
        if fd >= 0:
            os.close(fd)


def write_private_in(directory: str, name: str, data: bytes) -> bool:
    """Replace `name` in `directory` with `data` (0600) by a rename in that same opened
    directory, when it passes `_trusted_dir`; False when it does not or the write fails, with
    nothing left behind but what a kill in the middle leaves — and the next write removes that.
    Not fsynced: for files whose loss costs nothing (a memo)."""
    dir_fd = _trusted_dir(directory)
    if dir_fd is None:
        return False
    prefix = f".{name}.tmp-"
    tmp = prefix + os.urandom(8).hex()
    try:
        for old in os.listdir(dir_fd):   # what a killed writer left
            if old.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(old, dir_fd=dir_fd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        return False
    finally:
        os.close(dir_fd)


def read_private(path: str) -> bytes:
    """Read a secret file after checking its ownership and mode. Raises FileNotFoundError if absent."""
    check_private(path)
    with open(path, "rb") as f:
        return f.read()
