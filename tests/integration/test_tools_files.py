"""File tools: shapes, caps, atomic writes, the floor through every tool, and symlink races."""

from __future__ import annotations

import base64
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from cmdop.core.calls import ToolCall
from cmdop.tools import files as files_mod
from cmdop.tools import search as search_mod
from cmdop.tools.base import ToolEnv
from cmdop.tools.registry import run_tool

SECRET = "SECRET-TOKEN-do-not-leak"


@pytest.fixture
def env(tmp_path: Path) -> ToolEnv:
    home = tmp_path / "home"
    (home / "proj").mkdir(parents=True)
    return ToolEnv(home=str(home), cwd=str(home / "proj"))


def call(env: ToolEnv, tool: str, **tool_input: object):  # type: ignore[no-untyped-def]
    return run_tool(ToolCall(tool, tool_input), env)


# -- read_file -------------------------------------------------------------------------------

def test_read_whole_file_and_line_ranges(env: ToolEnv) -> None:
    Path(env.cwd, "a.txt").write_text("one\ntwo\nthree\nfour\n")
    assert call(env, "read_file", path="a.txt")["content"] == "one\ntwo\nthree\nfour\n"
    out = call(env, "read_file", path="a.txt", start=2, end=3)
    assert out["content"] == "two\nthree\n" and out["truncated"] is False and out["encoding"] == "utf-8"
    assert call(env, "read_file", path="a.txt", start=4)["content"] == "four\n"
    assert call(env, "read_file", path="a.txt", start=9)["content"] == ""
    assert call(env, "read_file", path="a.txt", start=3, end=2)["error"] == "bad_input"


def test_read_binary_is_base64(env: ToolEnv) -> None:
    data = bytes(range(256))
    Path(env.cwd, "b.bin").write_bytes(data)
    out = call(env, "read_file", path="b.bin")
    assert out["encoding"] == "base64" and base64.b64decode(out["content"]) == data


def test_read_cap_truncates_and_says_where_to_go_on(env: ToolEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_mod, "READ_CAP", 10)
    Path(env.cwd, "c.txt").write_text("1234\n5678\nabcd\n")
    out = call(env, "read_file", path="c.txt")
    assert out["content"] == "1234\n5678\n" and out["truncated"] is True and out["next_start"] == 3
    Path(env.cwd, "long.txt").write_text("x" * 50)
    out = call(env, "read_file", path="long.txt")
    assert out["content"] == "x" * 10 and out["truncated"] is True


def test_read_errors_are_results(env: ToolEnv) -> None:
    assert call(env, "read_file", path="missing")["error"] == "not_found"
    assert call(env, "read_file", path=".")["error"] == "is_a_directory"
    assert call(env, "read_file")["error"] == "bad_input"
    os.mkfifo(Path(env.cwd, "fifo"))
    assert call(env, "read_file", path="fifo")["error"] == "bad_input"   # and it did not hang


# -- write_file ------------------------------------------------------------------------------

def test_write_creates_and_replaces_keeping_mode(env: ToolEnv) -> None:
    out = call(env, "write_file", path="new.txt", content="héllo")
    assert out["bytes_written"] == len("héllo".encode())
    target = Path(env.cwd, "new.txt")
    assert target.read_text() == "héllo"
    target.chmod(0o751)
    call(env, "write_file", path="new.txt", content="again")
    assert target.read_text() == "again" and stat.S_IMODE(target.stat().st_mode) == 0o751
    assert [p.name for p in Path(env.cwd).iterdir()] == ["new.txt"]   # no temp file left


def test_write_base64(env: ToolEnv) -> None:
    call(env, "write_file", path="bin", content=base64.b64encode(b"\0\1\2").decode(), encoding="base64")
    assert Path(env.cwd, "bin").read_bytes() == b"\0\1\2"
    assert call(env, "write_file", path="bin", content="!!", encoding="base64")["error"] == "bad_input"


def test_write_refuses_a_final_symlink(env: ToolEnv, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, Path(env.cwd, "link"))
    out = call(env, "write_file", path="link", content="overwritten")
    assert out["error"] == "symlink_refused"
    assert victim.read_text() == "keep" and Path(env.cwd, "link").is_symlink()


# -- list_dir / grep / glob ------------------------------------------------------------------

def test_list_dir_shape(env: ToolEnv) -> None:
    Path(env.cwd, "f").write_text("12345")
    Path(env.cwd, "d").mkdir()
    os.symlink("f", Path(env.cwd, "l"))
    out = call(env, "list_dir", path=".")
    assert out == [{"name": "d", "type": "dir", "size": out[0]["size"]},
                   {"name": "f", "type": "file", "size": 5},
                   {"name": "l", "type": "symlink", "size": 1}]


def test_grep_finds_lines_and_skips_floor_and_binary(env: ToolEnv) -> None:
    proj = Path(env.cwd)
    (proj / "a.py").write_text("x = 1\nneedle here\n")
    (proj / "b.txt").write_text("needle too\n")
    (proj / "bin").write_bytes(b"needle\0")
    (proj / ".env").write_text(f"needle={SECRET}\n")
    (proj / ".git").mkdir()
    (proj / ".git" / "config").write_text("needle in git\n")
    out = call(env, "grep", pattern="needle", path=".")
    assert out == [{"file": str(proj / "a.py"), "line": 2, "text": "needle here"},
                   {"file": str(proj / "b.txt"), "line": 1, "text": "needle too"}]
    assert call(env, "grep", pattern="needle", path=".", glob="*.py") == out[:1]
    assert call(env, "grep", pattern="(", path=".")["error"] == "bad_input"


def test_catastrophic_regex_is_cut_off_and_earlier_results_kept(
        env: ToolEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from cmdop.tools import search

    monkeypatch.setattr(search, "GREP_TIME_S", 0.3)
    monkeypatch.setattr(search, "GREP_KILL_MARGIN_S", 0.3)
    Path(env.cwd, "a.txt").write_text("aaaa\n" + "a" * 60 + "!\n")
    out = call(env, "grep", pattern="^(a+)+$", path="a.txt")
    assert out == [{"file": str(Path(env.cwd, "a.txt")), "line": 1, "text": "aaaa"}]


def test_grep_result_cap(env: ToolEnv) -> None:
    Path(env.cwd, "many").write_text("hit\n" * 50)
    assert len(call(env, "grep", pattern="hit", path="many", max_results=7)) == 7


def test_glob_matches_and_hides_floor(env: ToolEnv) -> None:
    proj = Path(env.cwd)
    (proj / "src" / "pkg").mkdir(parents=True)
    (proj / "src" / "pkg" / "m.py").write_text("")
    (proj / "top.py").write_text("")
    (proj / ".env.py").write_text("")
    out = call(env, "glob", pattern="**/*.py")
    assert out == {"matches": ["src/pkg/m.py", "top.py"], "truncated": False}
    assert call(env, "glob", pattern=".env*")["matches"] == []



def test_glob_double_star_finds_files_in_nested_real_dirs(env: ToolEnv) -> None:
    proj = Path(env.cwd)
    (proj / "a" / "b" / "c").mkdir(parents=True)
    for rel in ("a/one.py", "a/b/two.py", "a/b/c/three.py", "a/b/c/skip.txt"):
        (proj / rel).write_text("")
    assert call(env, "glob", pattern="**/*.py") == {
        "matches": ["a/b/c/three.py", "a/b/two.py", "a/one.py"], "truncated": False}
    assert call(env, "glob", pattern="a/**/c/*")["matches"] == ["a/b/c/skip.txt", "a/b/c/three.py"]
    assert call(env, "glob", pattern="**/")["matches"] == ["a/", "a/b/", "a/b/c/"]


def test_glob_symlink_loop_returns_within_the_cap(env: ToolEnv) -> None:
    proj = Path(env.cwd)
    for name in ("a", "b", "c"):
        os.symlink(".", proj / name)
    started = time.monotonic()
    out = call(env, "glob", pattern="**/zzz")
    assert time.monotonic() - started < search_mod.GLOB_TIME_S
    assert out == {"matches": [], "truncated": False}   # `**` does not follow the links at all
    assert call(env, "glob", pattern="**")["matches"] == ["a", "b", "c"]   # listed, not entered


def test_glob_time_cap_cuts_a_walk_that_matches_nothing(env: ToolEnv,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One-level `*` follows symlinks (as the shell does): 20 levels through 3 links to `.` is
    3**20 directories. The cap must stop it although no entry ever matches."""
    proj = Path(env.cwd)
    for name in ("a", "b", "c"):
        os.symlink(".", proj / name)
    monkeypatch.setattr(search_mod, "GLOB_TIME_S", 0.3)
    started = time.monotonic()
    out = call(env, "glob", pattern="*/" * 20 + "zzz")
    assert time.monotonic() - started < 0.3 + 15   # not the 3**20 directories it would walk
    assert out == {"matches": [], "truncated": True}


def test_glob_double_star_does_not_enter_symlinked_dirs(env: ToolEnv, tmp_path: Path) -> None:
    proj = Path(env.cwd)
    (proj / "real").mkdir()
    (proj / "real" / "here.py").write_text("")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "only.py").write_text("")
    os.symlink(outside, proj / "link")
    os.symlink(outside, proj / "real" / "deeper")
    assert call(env, "glob", pattern="**/*.py")["matches"] == ["real/here.py"]
    assert call(env, "glob", pattern="**/only.py")["matches"] == []
    # Named by the pattern, or one `*` level, a symlinked dir is followed as the shell would.
    assert call(env, "glob", pattern="link/*.py")["matches"] == ["link/only.py"]
    assert call(env, "glob", pattern="*/only.py")["matches"] == ["link/only.py"]


def test_glob_never_lists_floor_dirs_or_links_into_them(env: ToolEnv) -> None:
    proj = Path(env.cwd)
    (proj / "repo" / ".git").mkdir(parents=True)
    (proj / "repo" / ".git" / "config").write_text(SECRET)
    ssh = Path(env.home, ".ssh")
    ssh.mkdir()
    (ssh / "id_rsa").write_text(SECRET)
    os.symlink(ssh, proj / "keys")
    assert call(env, "glob", pattern="repo/.git/*")["matches"] == []
    assert call(env, "glob", pattern="**/.git/**")["matches"] == []
    assert call(env, "glob", pattern="keys/*")["matches"] == []
    assert call(env, "glob", pattern="*")["matches"] == ["repo"]    # `keys` resolves to ~/.ssh


# -- the floor through every tool ------------------------------------------------------------

@pytest.mark.parametrize("tool,tool_input", [
    ("read_file", {"path": "~/.ssh/id_rsa"}),
    ("read_file", {"path": ".env"}),
    ("read_file", {"path": "/etc/hostname"}),
    ("read_file", {"path": "sub/../.git/config"}),
    ("write_file", {"path": ".env", "content": "x"}),
    ("write_file", {"path": "~/.bashrc", "content": "x"}),
    ("list_dir", {"path": "~/.ssh"}),
    ("list_dir", {"path": "/etc"}),
    ("grep", {"pattern": "x", "path": "~/.ssh"}),
    ("grep", {"pattern": "x", "path": ".env"}),
    ("glob", {"pattern": "*", "cwd": "~/.ssh"}),
])
def test_floor_paths_refused_by_every_file_tool(env: ToolEnv, tool: str, tool_input: dict) -> None:
    ssh = Path(env.home, ".ssh")
    ssh.mkdir(exist_ok=True)
    (ssh / "id_rsa").write_text(SECRET)
    Path(env.cwd, ".env").write_text(SECRET)
    Path(env.cwd, ".git").mkdir(exist_ok=True)
    Path(env.cwd, "sub").mkdir(exist_ok=True)
    out = call(env, tool, **tool_input)
    assert isinstance(out, dict) and out["error"] == "permission_denied" and out["source"] == "floor"
    assert SECRET not in str(out)
    assert Path(env.cwd, ".env").read_text() == SECRET


def test_symlink_to_floor_is_judged_by_its_target(env: ToolEnv) -> None:
    Path(env.cwd, ".env").write_text(SECRET)
    os.symlink(".env", Path(env.cwd, "innocent.txt"))
    out = call(env, "read_file", path="innocent.txt")
    assert out["error"] == "permission_denied" and SECRET not in str(out)


# -- races: a symlink flipped between check and open -----------------------------------------

def _flipper(link: Path, targets: tuple[str, str], stop: threading.Event) -> None:
    tmp = link.with_name(link.name + ".tmp")
    i = 0
    while not stop.is_set():
        try:
            os.symlink(targets[i % 2], tmp)
            os.replace(tmp, link)
        except FileNotFoundError:
            pass
        i += 1


@pytest.mark.parametrize("tool", ["read_file", "grep", "list_dir"])
def test_symlink_race_never_leaks_the_floor_file(env: ToolEnv, tool: str) -> None:
    proj = Path(env.cwd)
    (proj / "harmless.txt").write_text("harmless\n")
    (proj / ".env").write_text(SECRET + "\n")
    (proj / "okdir").mkdir()
    (proj / "okdir" / "x").write_text("x\n")
    (proj / "secretdir" / ".git").mkdir(parents=True)
    (proj / "secretdir" / ".git" / SECRET).write_text(SECRET + "\n")
    if tool == "list_dir":
        link, targets = proj / "dirlink", ("okdir", "secretdir/.git")
        tool_input = {"path": "dirlink"}
    else:
        link, targets = proj / "link", ("harmless.txt", ".env")
        tool_input = {"path": "link"} if tool == "read_file" else {"path": "link", "pattern": "."}
    os.symlink(targets[0], link)
    stop = threading.Event()
    flipper = threading.Thread(target=_flipper, args=(link, targets, stop), daemon=True)
    flipper.start()
    seen_ok = 0
    rounds = 60 if tool == "grep" else 400   # grep starts a child interpreter per call
    try:
        for _ in range(rounds):
            out = run_tool(ToolCall(tool, tool_input), env)
            assert SECRET not in str(out)
            seen_ok += "error" not in str(out)
    finally:
        stop.set()
        flipper.join()
    if tool != "grep":   # grep waits on a child, so the flipper's timing skews what it sees
        assert seen_ok > 0   # the harmless side was really read some of the time


def test_directory_component_swapped_for_symlink_is_refused(env: ToolEnv) -> None:
    """The fd-relative walk refuses a component that is a symlink at open time."""
    from cmdop.adapters import safe_open

    proj = Path(env.cwd)
    (proj / "real").mkdir()
    (proj / "real" / "f").write_text("ok")
    (proj / "elsewhere").mkdir()
    (proj / "elsewhere" / "f").write_text("redirected")
    canonical = str(proj / "real" / "f")
    (proj / "real").rename(proj / "moved")
    os.symlink(proj / "elsewhere", proj / "real")   # swapped in after canonicalisation
    with pytest.raises(safe_open.SymlinkRefused):
        safe_open.open_checked(canonical, env.home)


# -- the agent's own process -----------------------------------------------------------------

@pytest.mark.parametrize("tool,tool_input", [
    ("read_file", {"path": "/proc/self/environ"}),
    ("read_file", {"path": f"/proc/{os.getpid()}/environ"}),
    ("list_dir", {"path": "/proc/self/fd"}),
    ("grep", {"pattern": ".", "path": f"/proc/{os.getpid()}/environ"}),
    ("grep", {"pattern": "CMDOP", "path": f"/proc/{os.getpid()}"}),
])
def test_agent_own_proc_entries_are_refused(env: ToolEnv, tool: str, tool_input: dict,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc/<agent>/environ holds the agent's credentials; the tools must not hand it out."""
    out = call(env, tool, **tool_input)
    assert isinstance(out, dict) and out["error"] == "agent_private", out


def test_sandbox_server_environment_holds_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands can read their parent's /proc/PPID/environ: the fork server must have none."""
    from cmdop.adapters.launcher import Sandbox
    from cmdop.tools.execute_command import execute_command

    monkeypatch.setenv("CMDOP_API_KEY", "sk-parent-secret")
    sb = Sandbox()
    try:
        env = ToolEnv(home="/nonexistent", cwd="/", sandbox=sb, warn=lambda _m: None)
        out = execute_command({"command": "tr '\\0' '\\n' < /proc/$PPID/environ"}, env)
    finally:
        sb.close()
    if not out["sandboxed"]:
        pytest.skip("seccomp unavailable: the command's parent is the agent itself")
    # Either the server's environ cannot be opened at all (it is undumpable and a root command
    # lacks CAP_SYS_PTRACE), or it holds no secret.
    assert "sk-parent-secret" not in out["stdout"] + out["stderr"]
    assert "PATH=" in out["stdout"] or "Permission denied" in out["stderr"], out


def test_write_race_never_lands_in_a_floor_directory(env: ToolEnv) -> None:
    """The parent directory is a link flipped between a plain dir and a .git dir while writing."""
    proj = Path(env.cwd)
    (proj / "plain").mkdir()
    (proj / "repo" / ".git").mkdir(parents=True)
    os.symlink("plain", proj / "dirlink")
    stop = threading.Event()
    flipper = threading.Thread(target=_flipper, args=(proj / "dirlink", ("plain", "repo/.git"), stop),
                               daemon=True)
    flipper.start()
    written = attempts = 0
    try:
        # 300 attempts, and more until some land (the flipper can win every round on a busy
        # machine; a run with no successful write would prove nothing), bounded at 5,000.
        while attempts < 300 or (written == 0 and attempts < 5000):
            out = run_tool(ToolCall("write_file", {"path": f"dirlink/f{attempts}", "content": "x"}), env)
            written += "bytes_written" in out
            attempts += 1
    finally:
        stop.set()
        flipper.join()
    assert list((proj / "repo" / ".git").iterdir()) == []
    assert written == len(list((proj / "plain").iterdir())) and written > 0


def test_glob_lists_nothing_of_the_agents_own_proc_entries(env: ToolEnv) -> None:
    """list_dir refuses /proc/self (agent_private); glob must not list its names either."""
    for pattern in ("/proc/self/fd/*", "/proc/self/*", f"/proc/{os.getpid()}/fd/*"):
        assert call(env, "glob", pattern=pattern)["matches"] == [], pattern
    assert call(env, "glob", pattern="/proc/1/fd*")["matches"]      # another process: names only


def test_glob_race_never_lists_a_floor_directory(env: ToolEnv) -> None:
    """A link flipped between a plain dir and ~/.ssh while globbing through it: the names inside
    .ssh must never come back (the listing is judged on the directory actually opened)."""
    home, proj = Path(env.home), Path(env.cwd)
    (home / ".ssh").mkdir()
    (home / ".ssh" / "zz_SECRETNAME").write_text("x")
    (proj / "safe").mkdir()
    (proj / "safe" / "plain.txt").write_text("x")
    os.symlink("safe", proj / "a")
    stop = threading.Event()
    flipper = threading.Thread(target=_flipper, args=(proj / "a", ("safe", str(home / ".ssh")), stop),
                               daemon=True)
    flipper.start()
    seen_plain = 0
    try:
        for _ in range(1500):
            matches = call(env, "glob", pattern="a/*")["matches"]
            assert not any("SECRETNAME" in m for m in matches), matches
            seen_plain += any("plain.txt" in m for m in matches)
    finally:
        stop.set()
        flipper.join()
    assert seen_plain > 0      # the race was really run through the plain side too
