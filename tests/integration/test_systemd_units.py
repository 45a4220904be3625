"""The systemd units: one source (render_unit), lint-clean under systemd-analyze, and the files
shipped in systemd/ are exactly its output.

`systemd-analyze verify` exits 0 on unknown keys and bad values, so the lint fails on any line
it prints on stderr. It also checks that ExecStart's program exists, so the units are rendered
with an executable in tmp_path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cmdop.adapters.systemd_units import (
    DEFAULT_EXEC_START,
    REPO_FILE,
    UNIT_NAME,
    install_path,
    render_unit,
)

REPO = Path(__file__).resolve().parents[2]
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


@pytest.mark.parametrize("scope", ["system", "user"])
def test_shipped_unit_files_are_render_unit_output(scope):
    shipped = (REPO / "systemd" / REPO_FILE[scope]).read_text()
    assert shipped == render_unit(scope, DEFAULT_EXEC_START), (
        f"systemd/{REPO_FILE[scope]} differs from render_unit({scope!r}); regenerate it with "
        "python -c 'from cmdop.adapters.systemd_units import *; ...'")


@pytest.mark.parametrize("scope", ["system", "user"])
def test_unit_promises(scope):
    text = render_unit(scope, "/opt/cmdop/cmdop.pyz")
    keys = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert keys["Type"] == "notify"
    assert keys["ExecStart"] == "/opt/cmdop/cmdop.pyz agent run"
    assert keys["Restart"] == "on-failure"
    assert keys["CacheDirectory"] == "cmdop" and keys["StateDirectory"] == "cmdop"
    assert "Environment=SHIV_ROOT=%C/cmdop/shiv" in text
    for key in ("NoNewPrivileges", "LockPersonality", "RestrictRealtime"):
        assert keys[key] == "yes"
    assert keys["SystemCallArchitectures"] == "native"
    assert "User" not in keys
    # The sandbox's kernel floor: a cgroup subtree of its own (writable, so no
    # ProtectControlGroups=) and a mount namespace (the user agent's inside a user namespace).
    assert keys["Delegate"] == "yes" and "ProtectControlGroups" not in keys
    assert set(keys["SystemCallFilter"].split()) >= {"mount", "umount2", "seccomp"}
    assert keys["RestrictNamespaces"] == ("mnt" if scope == "system" else "user mnt")
    if scope == "system":
        for key in ("ProtectKernelTunables", "ProtectKernelModules", "PrivateTmp"):
            assert keys[key] == "yes"
        assert keys["WantedBy"] == "multi-user.target"
    else:
        assert "PrivateTmp" not in keys  # would need user namespaces in a user manager
        assert keys["WantedBy"] == "default.target"
    # Nothing that breaks ordinary tooling the agent runs for its callers.
    for key in ("ProtectSystem", "ProtectHome", "PrivateDevices", "MemoryDenyWriteExecute"):
        assert key not in keys


def test_render_unit_rejects_bad_input():
    with pytest.raises(ValueError):
        render_unit("session", DEFAULT_EXEC_START)
    with pytest.raises(ValueError):
        render_unit("system", "cmdop")
    with pytest.raises(ValueError):
        render_unit("system", "/usr/bin/cmdop\nExecStartPre=/bin/evil")


def test_install_paths():
    assert install_path("system") == "/etc/systemd/system/cmdop.service"
    assert install_path("user", home="/home/u") == "/home/u/.config/systemd/user/cmdop.service"
    assert install_path("user", xdg_config_home="/x") == "/x/systemd/user/cmdop.service"
    assert UNIT_NAME == "cmdop.service"


def _render_into(tmp_path: Path, scope: str) -> tuple[Path, dict[str, str]]:
    program = tmp_path / "bin" / "cmdop"
    program.parent.mkdir(exist_ok=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    unit_dir = tmp_path / scope
    unit_dir.mkdir()
    unit = unit_dir / UNIT_NAME
    unit.write_text(render_unit(scope, str(program)))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), SYSTEMD_LOG_COLOR="0")
    return unit, env


def _analyze(scope: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    scope_flag = ["--user"] if scope == "user" else []
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *scope_flag, *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.systemd
@needs_analyze
@pytest.mark.parametrize("scope", ["system", "user"])
def test_systemd_analyze_verify_prints_nothing(tmp_path, scope):
    unit, env = _render_into(tmp_path, scope)
    r = _analyze(scope, "verify", str(unit), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", f"systemd-analyze verify warned:\n{r.stderr}"


@pytest.mark.systemd
@needs_analyze
def test_verify_really_reports_bad_keys(tmp_path):
    """Guards the lint itself: a misspelt key must show up on stderr (exit status stays 0)."""
    unit, env = _render_into(tmp_path, "system")
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=on-failure\nFooBar=1"))
    r = _analyze("system", "verify", str(unit), env=env)
    assert "FooBar" in r.stderr


@pytest.mark.systemd
@needs_analyze
@pytest.mark.parametrize("scope", ["system", "user"])
def test_security_exposure_is_recorded_in_readme(tmp_path, scope):
    """`systemd-analyze security --offline=true` scores the unit; the README states that score."""
    unit, env = _render_into(tmp_path, scope)
    r = _analyze(scope, "security", "--offline=true", "--no-pager", str(unit), env=env)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    assert match, r.stdout[-2000:] + r.stderr
    score, label = match.groups()
    print(f"{scope} unit exposure: {score} {label}")
    readme = (REPO / "README.md").read_text()
    assert f"{REPO_FILE[scope]}: exposure {score} {label}" in readme, (
        f"README must record the {scope} unit's exposure as "
        f"'{REPO_FILE[scope]}: exposure {score} {label}'")


_UNDER_FILTER = r'''
import errno, json, os, subprocess, sys
import pyseccomp as sc

listing, allowed_spec = sys.argv[1], sys.argv[2].split()
groups, cur = {}, None
for line in open(listing):
    text = line.strip()
    if not text or text.startswith("#"):
        continue
    if line.startswith("@"):
        cur = groups.setdefault(text, [])
    elif cur is not None:
        cur.append(text)

def expand(name):
    if not name.startswith("@"):
        return {name}
    return set().union(*(expand(x) for x in groups.get(name, [])))

f = sc.SyscallFilter(defaction=sc.ERRNO(errno.EPERM))
for name in sorted(set().union(*(expand(x) for x in allowed_spec))):
    try:
        f.add_rule(sc.ALLOW, name)
    except Exception:
        pass  # a name this kernel/libseccomp does not know
f.load()
os.execv(sys.argv[3], sys.argv[3:])
'''


@pytest.mark.systemd
@pytest.mark.seccomp
@needs_analyze
def test_sandbox_still_works_under_the_units_syscall_filter(tmp_path, cmdop_env):
    """The unit's SystemCallFilter= (emulated: the same allow-list, EPERM otherwise, loaded with
    pyseccomp) must leave room for the agent's own sandbox to stack its filter."""
    import json
    import sys

    pytest.importorskip("pyseccomp")
    text = render_unit("system", DEFAULT_EXEC_START)
    spec = next(line.split("=", 1)[1] for line in text.splitlines()
                if line.startswith("SystemCallFilter="))
    listing = tmp_path / "syscall-filter.txt"
    listing.write_text(subprocess.run([str(ANALYZE), "syscall-filter"], capture_output=True,
                                      text=True, timeout=60, check=True).stdout)
    script = tmp_path / "under_filter.py"
    script.write_text(_UNDER_FILTER)
    command = ["-m", "cmdop", "run", "execute_command", "--input",
               json.dumps({"command": "grep Seccomp_filters /proc/self/status; echo hi | cat"})]
    baseline = subprocess.run([sys.executable, *command], env=cmdop_env.env, capture_output=True,
                              text=True, timeout=60, cwd=cmdop_env.home)
    if baseline.returncode != 0 or not json.loads(baseline.stdout).get("sandboxed"):
        pytest.skip(f"the sandbox does not run here even without the unit's filter: "
                    f"{baseline.stdout[:200]}{baseline.stderr[:200]}")
    r = subprocess.run([sys.executable, str(script), str(listing), spec, sys.executable, *command],
                       env=cmdop_env.env, capture_output=True, text=True, timeout=60,
                       cwd=cmdop_env.home)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["sandboxed"] is True, r.stderr
    assert "hi" in result["stdout"]
    assert "Seccomp_filters:\t2" in result["stdout"]  # the unit's filter and the sandbox's
