"""The kernel floor in each of its forms, by effect: a root agent (mount namespace), a user agent
(user + mount namespace), and where namespaces are refused (Landlock file rules).

Each case runs a real agent-side sandbox in a child process — as root, or as a second real uid
through setpriv — and, where namespaces must be refused, under an outer seccomp filter that
answers unshare() with EPERM, as a distribution that forbids unprivileged user namespaces (or a
container's own filter) does. The same attempts then run in every form: secrets unreadable,
login files unchangeable and uncreatable, the project writable.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MARK = secrets.token_hex(10)

CHILD = r"""
import json, os, sys
if sys.argv[1] == "refuse-unshare":
    import pyseccomp as sc
    f = sc.SyscallFilter(sc.ALLOW)
    f.add_rule(sc.ERRNO(1), "unshare")
    f.load()
from cmdop.adapters.config_file import AgentConfig
from cmdop.adapters.launcher import sandbox_for_agent
from cmdop.core.settings import Settings
from cmdop.tools.base import ToolEnv
from cmdop.tools.execute_command import execute_command
home = os.environ["HOME"]
sb = sandbox_for_agent(Settings.from_env(os.environ, home), AgentConfig())
out = {"enforcement": sb.enforcement(), "results": {}}
for name, command in json.loads(sys.argv[2]).items():
    r = execute_command({"command": command}, ToolEnv(home=home, cwd=home + "/proj", sandbox=sb))
    out["results"][name] = {k: r.get(k) for k in ("stdout", "stderr", "exit_code")}
sb.close()
print(json.dumps(out))
"""

ATTEMPTS = {
    "read-key": "cat ~/.ssh/id_rsa ~/.cmdop/k ~/.config/cmdop/c",
    "list-key-dir": "ls -a ~/.ssh",
    "write-bashrc": "echo evil >> ~/.bashrc",
    "create-profile": "touch ~/.bash_profile",
    "new-unit": "mkdir -p ~/.config/systemd/user && touch ~/.config/systemd/user/x.service",
    "replace-ssh": "mv ~/.ssh ~/.s2 || rm -rf ~/.ssh",
    "project-write": "echo ok > ~/proj/out && cat ~/proj/out",
    "read-bashrc": "cat ~/.bashrc",
}


def _home(tmp_path: Path, owner: int | None) -> Path:
    home = tmp_path / "home"
    for rel, text in ((".ssh/id_rsa", f"key-{MARK}"), (".cmdop/k", f"cred-{MARK}"),
                      (".config/cmdop/c", f"conf-{MARK}"), (".bashrc", "# rc\n"), ("proj/README", "x")):
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(text)
    (home / ".config" / "systemd").mkdir()
    if owner is not None:
        for p in [tmp_path, *tmp_path.rglob("*")]:
            os.lchown(p, owner, owner)
        tmp_path.chmod(0o755)
    return home


def _run(tmp_path: Path, mode: str, user: str | None) -> dict[str, Any]:
    owner = int(subprocess.run(["id", "-u", user], capture_output=True, text=True).stdout) if user else None
    if owner is not None:
        # pytest's own tmp dirs are root's 0700: the second user gets a tree of its own.
        tmp_path = Path(tempfile.mkdtemp(prefix="cmdop-floor-", dir="/tmp"))
    home = _home(tmp_path, owner)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(REPO)}
    python = sys.executable
    argv = [python, "-c", CHILD, mode, json.dumps(ATTEMPTS)]
    if user:
        # The venv's interpreter lives under /root (0700); the distribution's 3.11 reads the
        # venv's site-packages instead. No capability is kept: a plain user.
        python = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else ""
        if not python:
            pytest.skip("needs /usr/bin/python3.11 to run an agent as another user")
        site = next((REPO / ".venv" / "lib").glob("python3.11/site-packages"))
        env["PYTHONPATH"] += os.pathsep + str(site)
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
                "--inh-caps=-all", python, "-c", CHILD, mode, json.dumps(ATTEMPTS)]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
        facts = {"bashrc": (home / ".bashrc").read_text(),
                 "bash_profile": (home / ".bash_profile").exists(),
                 "user_units": (home / ".config" / "systemd" / "user").exists(),
                 "key_in_place": (home / ".ssh" / "id_rsa").exists(),
                 "ssh_moved": (home / ".s2").exists()}
    finally:
        if owner is not None:
            shutil.rmtree(tmp_path, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    got: dict[str, Any] = json.loads(run.stdout)
    got["facts"] = facts
    return got


def _assert_floor_holds(got: dict[str, Any]) -> None:
    res = got["results"]
    text = json.dumps(res)
    assert MARK not in text, text
    assert "id_rsa" not in res["list-key-dir"]["stdout"] or got["enforcement"]["kernel_floor"] == "landlock"
    assert got["facts"] == {"bashrc": "# rc\n", "bash_profile": False, "user_units": False,
                            "key_in_place": True, "ssh_moved": False}, (got["facts"], res)
    assert res["project-write"]["stdout"] == "ok\n", res["project-write"]
    assert res["read-bashrc"]["stdout"] == "# rc\n", res["read-bashrc"]


@pytest.fixture
def second_user() -> str:
    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("useradd"):
        pytest.skip("needs root, setpriv and useradd to run an agent as another uid")
    user = "cmdoptest"
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        # The other xdist worker may create it at the same moment: "already exists" (9) is fine.
        made = subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", user], capture_output=True, text=True)
        assert made.returncode in (0, 9), made.stderr
    return user


@pytest.mark.skipif(os.geteuid() != 0, reason="the root agent's form needs root")
def test_root_agent_gets_a_mount_namespace(tmp_path: Path) -> None:
    got = _run(tmp_path, "plain", None)
    assert got["enforcement"]["kernel_floor"] == "mount namespace", got["enforcement"]
    _assert_floor_holds(got)


def test_user_agent_gets_a_user_and_mount_namespace(tmp_path: Path, second_user: str) -> None:
    got = _run(tmp_path, "plain", second_user)
    if got["enforcement"]["kernel_floor"] != "user+mount namespace":
        pytest.skip(f"unprivileged user namespaces are refused here: {got['enforcement']}")
    assert got["enforcement"]["capabilities"] == "n/a (not root)"
    _assert_floor_holds(got)


def test_user_agent_without_namespaces_falls_back_to_landlock(tmp_path: Path, second_user: str) -> None:
    got = _run(tmp_path, "refuse-unshare", second_user)
    e = got["enforcement"]
    if e["landlock"] == "none":
        pytest.skip(f"no Landlock here: {e}")
    assert e["kernel_floor"] == "landlock", e
    assert "user namespaces are not available" in e["kernel_floor_reason"], e
    _assert_floor_holds(got)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_agent_where_unshare_is_refused_falls_back_to_landlock(tmp_path: Path) -> None:
    got = _run(tmp_path, "refuse-unshare", None)
    e = got["enforcement"]
    if e["landlock"] == "none":
        pytest.skip(f"no Landlock here: {e}")
    assert e["kernel_floor"] == "landlock", e
    _assert_floor_holds(got)
