"""What a new sandbox server starts from must be what the agent started with (real servers).

A fork server runs the interpreter, its libraries and the linker's cache before it confines
itself; a root command can change those files (package upgrades need to). The launcher compares
them before each later server start and refuses a start on a change. These tests use files of
their own — a file this process maps, a stand-in for the linker's cache — so no other agent on
the machine sees the change.
"""

from __future__ import annotations

import mmap
import os
import signal
from pathlib import Path

import pytest

from cmdop.adapters import kernel_floor_fs
from cmdop.adapters.launcher import Sandbox
from cmdop.core.errors import SandboxUnavailableError
from cmdop.tools.base import ToolEnv
from cmdop.tools.execute_command import execute_command

pytestmark = pytest.mark.seccomp


def _kill_server(sb: Sandbox) -> None:
    assert sb._proc is not None
    os.kill(sb._proc.pid, signal.SIGKILL)
    sb._proc.wait()


def _started(sb: Sandbox, env: ToolEnv) -> None:
    if not sb.available:
        pytest.skip(f"seccomp unavailable: {sb.reason}")
    assert execute_command({"command": "echo up"}, env)["stdout"] == "up\n"


def test_a_changed_mapped_file_stops_the_next_server_start(tmp_path: Path) -> None:
    lib = tmp_path / "libstandin.so"
    lib.write_bytes(b"\0" * 4096)
    with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        sb = Sandbox()        # it records what this process maps now: the stand-in too
        env = ToolEnv(home=str(tmp_path), cwd=str(tmp_path), sandbox=sb)
        try:
            _started(sb, env)
            os.utime(lib)     # a reinstalled library: same bytes, new times
            _kill_server(sb)
            with pytest.raises(SandboxUnavailableError, match="libstandin.so.*restart the agent"):
                execute_command({"command": "echo next"}, env)
        finally:
            sb.close()
        assert mapped[0] == 0


# (linker file, its bytes when the agent starts (None: absent), a harmless change, named bytes)
LINKER_CASES = [
    # `ldconfig` rewrites /etc/ld.so.cache on every package install, mostly with the same bytes:
    # that must not cost the agent its sandbox (it did: the next server start was refused until
    # a restart).
    pytest.param("ld.so.cache", b"glibc-ld.so.cache1.1 entries", b"glibc-ld.so.cache1.1 entries",
                 b"glibc-ld.so.cache1.1 entries, one pointing elsewhere", id="cache-rewritten-same"),
    # A root agent creates an empty /etc/ld.so.preload (so its namespace can hold it read-only);
    # another agent on the machine, started before, must not lose its sandbox over that.
    pytest.param("ld.so.preload", None, b"", b"/tmp/evil.so\n", id="preload-created-empty"),
]


@pytest.mark.parametrize("name,before,harmless,named", LINKER_CASES)
def test_linker_files_are_compared_by_what_they_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    name: str, before: bytes | None, harmless: bytes,
                                                    named: bytes) -> None:
    """The linker's files by their bytes (an empty preload list as none): a harmless rewrite
    keeps the sandbox; different bytes stop the next server start, naming the file."""
    path = tmp_path / name
    if before is not None:
        path.write_bytes(before)
    monkeypatch.setattr(kernel_floor_fs, "LINKER_FILES", (str(path),))
    sb = Sandbox()
    env = ToolEnv(home=str(tmp_path), cwd=str(tmp_path), sandbox=sb)
    try:
        _started(sb, env)
        fresh = tmp_path / (name + "~")
        fresh.write_bytes(harmless)
        os.replace(fresh, path)                  # as ldconfig does: a new file
        _kill_server(sb)
        assert execute_command({"command": "echo same"}, env)["stdout"] == "same\n"
        path.write_bytes(named)
        _kill_server(sb)
        with pytest.raises(SandboxUnavailableError, match=f"{name}.*restart the agent"):
            execute_command({"command": "echo changed"}, env)
    finally:
        sb.close()


def test_content_identity_table(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert kernel_floor_fs.content_identity(str(path)) is None            # absent
    path.write_bytes(b"a")
    first = kernel_floor_fs.content_identity(str(path))
    assert isinstance(first, str)
    os.utime(path, (1, 1))
    assert kernel_floor_fs.content_identity(str(path)) == first           # times alone: no change
    path.write_bytes(b"b")
    assert kernel_floor_fs.content_identity(str(path)) != first
    path.unlink()
    path.mkdir()
    assert kernel_floor_fs.content_identity(str(path)) not in (None, first)   # not a file now
