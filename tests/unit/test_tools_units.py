"""Pure pieces of the tool layer: input validation, env scrubbing, the filter table, paths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmdop.adapters import safe_open, sandbox
from cmdop.tools.base import BadInput, get_int, get_str
from cmdop.tools.execute_command import scrub_env, shell_argv


def test_get_str_and_get_int_validate() -> None:
    assert get_str({"a": "x"}, "a") == "x"
    with pytest.raises(BadInput):
        get_str({}, "a")
    with pytest.raises(BadInput):
        get_str({"a": "x\0y"}, "a")
    assert get_int({}, "n", 5, 1, 10) == 5
    for bad in (True, "3", 0, 11, 1.5):
        with pytest.raises(BadInput):
            get_int({"n": bad}, "n", 5, 1, 10)


@given(st.dictionaries(st.text(min_size=1), st.text()), st.text(min_size=4))
def test_scrubbed_env_never_holds_the_key_or_cmdop_vars(environ: dict[str, str], key: str) -> None:
    out = scrub_env(environ, key)
    assert not any(k.startswith("CMDOP_") for k in out)
    assert not any(key in v for k, v in out.items() if k != "PATH" or "PATH" in environ)


def test_shell_is_bash_when_present() -> None:
    argv = shell_argv("echo hi")
    assert argv[1:] == ["-c", "echo hi"] and argv[0] in ("/bin/bash", "/bin/sh")


def test_filter_table_covers_what_the_issue_names() -> None:
    blocked = {n for group in sandbox.BLOCKED_SYSCALLS.values() for n in group}
    required = {"ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root",
                "fsopen", "fsconfig", "fsmount", "move_mount", "open_tree", "mount_setattr",
                "unshare", "setns", "io_uring_setup", "io_uring_enter", "io_uring_register",
                "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
                "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "reboot", "swapon",
                "swapoff", "acct", "userfaultfd"}
    assert required <= blocked
    assert "clone" not in blocked and "clone3" not in blocked   # handled by argument / ENOSYS


@pytest.mark.parametrize("path,cwd,expected", [
    ("a/../b", "/x", "/x/b"),
    ("~/f", "/x", "/home/u/f"),
    ("~", "/x", "/home/u"),
    ("/abs//p/.", "/x", "/abs/p"),
])
def test_lexical_path(path: str, cwd: str, expected: str) -> None:
    assert safe_open.lexical_path(path, cwd, "/home/u") == expected


def test_walk_rejects_non_canonical_paths() -> None:
    with pytest.raises(Exception):
        safe_open.open_dir("relative/path")
    with pytest.raises(Exception):
        safe_open.open_dir("/a/../b")
