"""Hard links: the floor judges paths, and a hard link is a protected file under a path the floor
would pass. read_file and grep refuse such files; ordinary multi-linked files stay readable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cmdop.core.calls import ToolCall
from cmdop.tools.base import ToolEnv
from cmdop.tools.registry import run_tool

SECRET = "SECRET-KEY-do-not-leak"


@pytest.fixture
def env(tmp_path: Path) -> ToolEnv:
    home = tmp_path / "home"
    (home / "proj").mkdir(parents=True)
    (home / ".ssh").mkdir(mode=0o700)
    key = home / ".ssh" / "id_ed25519"
    key.write_text(SECRET + "\n")
    key.chmod(0o600)
    dot_env = home / ".env"
    dot_env.write_text(f"TOKEN={SECRET}\n")
    dot_env.chmod(0o644)
    return ToolEnv(home=str(home), cwd=str(home / "proj"))


def call(env: ToolEnv, tool: str, **tool_input: object):  # type: ignore[no-untyped-def]
    return run_tool(ToolCall(tool, tool_input), env)


def test_a_hard_link_to_a_private_key_is_refused(env: ToolEnv) -> None:
    os.link(Path(env.home, ".ssh", "id_ed25519"), Path(env.cwd, "notes.txt"))
    out = call(env, "read_file", path="notes.txt")
    assert out["error"] == "permission_denied" and "hard link" in out["reason"], out
    assert SECRET not in str(out)


def test_a_hard_link_to_a_readable_protected_file_is_refused(env: ToolEnv) -> None:
    os.link(Path(env.home, ".env"), Path(env.cwd, "settings.txt"))   # 0644: not "private"
    out = call(env, "read_file", path="settings.txt")
    assert out["error"] == "permission_denied" and "hard link to a protected file" in out["reason"], out


def test_grep_skips_hard_links_to_protected_files(env: ToolEnv) -> None:
    os.link(Path(env.home, ".ssh", "id_ed25519"), Path(env.cwd, "a.txt"))
    Path(env.cwd, "b.txt").write_text(f"{SECRET} in an ordinary file\n")
    out = call(env, "grep", pattern="SECRET", path=".")
    assert [r["file"].rsplit("/", 1)[-1] for r in out] == ["b.txt"], out


def test_an_ordinary_file_with_two_links_is_still_readable(env: ToolEnv) -> None:
    Path(env.cwd, "readme.txt").write_text("hello\n")
    os.chmod(Path(env.cwd, "readme.txt"), 0o644)
    os.link(Path(env.cwd, "readme.txt"), Path(env.cwd, "readme-copy.txt"))
    assert call(env, "read_file", path="readme-copy.txt")["content"] == "hello\n"
