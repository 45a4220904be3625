"""Red team of the kernel floor, second round: what round 1 did not cover, and its new fixes.

Reuses round 1's harness (`test_kernel_floor_redteam`): the agent in a child process, a fixture
home whose secrets carry a random marker, both forms of the floor. Holes found here are
fixed since and kept as regression tests; what stays `xfail(strict=True)` is an ACCEPTED LIMIT
the README states; blocked attempts are regression tests.
Damage, should a defence fail, lands only in the fixture home, the test's tmp dir, a copy of
the interpreter under /tmp, or /dev/shm/cmdop-rt2-<token>* (removed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_kernel_floor_redteam as rt  # noqa: E402
from test_kernel_floor_redteam import (LANDLOCK, MARK, MODES, MOUNT, REPO, TOKEN, Agent,  # noqa: E402,F401
                                       Outside, outside, snapshot, start_agent)

pytestmark = rt.pytestmark


def _changed(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    return {k: (v, after.get(k)) for k, v in before.items() if v != after.get(k)}


def _xf(mode: str, was: dict[str, str]) -> Any:
    """A mode's parameter. `was` records the hole this attempt found in round 2 (fixed since:
    the attempt is a regression test in every mode)."""
    return pytest.param(mode, id=mode)


# --------------------------------------------------------------------------------------------
# (2) Symlinks: a dot-directory of the home that is a link, chains, dangling targets.
def _dotdirs_as_links(home: Path) -> None:
    """~/.config and ~/.local kept in a dotfiles checkout (stow/yadm layouts)."""
    (home / "dotfiles").mkdir()
    (home / ".config").rename(home / "dotfiles" / "config")
    (home / ".config").symlink_to("dotfiles/config")
    (home / ".local" / "state").mkdir(parents=True, exist_ok=True)
    (home / ".local").rename(home / "dotfiles" / "local")
    (home / ".local").symlink_to("dotfiles/local")


@pytest.mark.parametrize("mode", [_xf(m, {
    MOUNT: "HOLE: ~/.config (or ~/.local) as a symlink: seal() skips links, so nothing below "
           "~/.config is ever hidden; _with_link_targets only makes the link's target READONLY. "
           "~/.config/cmdop/config.yaml and ~/.local/state/cmdop/audit.key are readable",
    LANDLOCK: "HOLE: same in landlock_rules: the target of a dotfile link is granted 'ro', "
              "which includes READ_FILE beneath it, so ~/.config/cmdop and the state dir are readable",
}) for m in MODES])
def test_config_dir_behind_a_dotdir_link(tmp_path: Path, outside: Outside, mode: str) -> None:
    a = start_agent(mode, tmp_path, outside, _dotdirs_as_links)
    try:
        key = (a.state_dir / "audit.key").read_bytes().hex() if (a.state_dir / "audit.key").exists() else "none"
        out = a.run("cat ~/.config/cmdop/config.yaml; od -An -tx1 ~/.local/state/cmdop/audit.key | tr -d ' \\n'")
        text = json.dumps(out)
        assert MARK not in text, f"cmdop's config leaked: {text[:1500]}"
        assert key == "none" or key not in text, "the audit seal key leaked"
    finally:
        a.driver.close()


def _dangling_dotfile(home: Path) -> None:
    (home / "dotfiles").mkdir()
    (home / ".zshrc").symlink_to("dotfiles/zshrc")             # target not there (yet)
    (home / ".ssh").rename(home / "dotfiles" / "ssh-real")
    (home / ".ssh").symlink_to("dotfiles/ssh")                 # a dangling protected entry


@pytest.mark.parametrize("mode", [_xf(m, {
    MOUNT: "HOLE: a dangling dotfile/protected link (~/.zshrc -> dotfiles/zshrc, ~/.ssh -> "
           "dotfiles/ssh) is skipped by _with_link_targets (lexists) and the target's directory "
           "is re-exposed writable: a command creates the target, which the next login runs "
           "(or sshd reads as ~/.ssh/authorized_keys)",
    LANDLOCK: "HOLE: same in landlock_rules: the dangling target is not protected, so its directory "
              "(~/dotfiles, with no marks below) gets 'rw' and the target can be created",
}) for m in MODES])
def test_dangling_link_target_cannot_be_created(tmp_path: Path, outside: Outside, mode: str) -> None:
    a = start_agent(mode, tmp_path, outside, _dangling_dotfile)
    try:
        a.run("echo evil > ~/dotfiles/zshrc; mkdir ~/dotfiles/ssh; echo attacker > ~/dotfiles/ssh/authorized_keys")
        made = [p for p in ("dotfiles/zshrc", "dotfiles/ssh") if os.path.lexists(a.home / p)]
        assert not made, f"created through a dangling login/protected link: {made}"
    finally:
        a.driver.close()


def _chain(home: Path) -> None:
    (home / "dotfiles" / "real").mkdir(parents=True)
    (home / ".bashrc").rename(home / "dotfiles" / "real" / "bashrc")
    (home / "dotfiles" / "current").symlink_to("real/bashrc")
    (home / ".bashrc").symlink_to("dotfiles/current")


@pytest.mark.parametrize("mode", [_xf(m, {
    MOUNT: "HOLE: a chain of links (~/.bashrc -> dotfiles/current -> real/bashrc): only the final "
           "target is protected; the intermediate link sits in a directory bound writable, so "
           "`ln -sfn /tmp/evil ~/dotfiles/current` points ~/.bashrc at the attacker's file",
}) for m in MODES])
def test_intermediate_link_of_a_chain(tmp_path: Path, outside: Outside, mode: str) -> None:
    a = start_agent(mode, tmp_path, outside, _chain)
    try:
        evil = outside.tmp / f"evil-bashrc-{TOKEN}-{mode}"
        evil.write_text("evil\n")
        a.run(f"ln -sfn {evil} ~/dotfiles/current")
        assert os.path.realpath(a.home / ".bashrc") == str(a.home / "dotfiles" / "real" / "bashrc"), \
            f"~/.bashrc now resolves to {os.path.realpath(a.home / '.bashrc')}"
    finally:
        a.driver.close()


@pytest.mark.parametrize("mode", [_xf(m, {
    MOUNT: "HOLE: the agent's HOME is a symlink (home-link -> home) in a directory that is only an "
           "ancestor of mounts (bound onto itself, writable): a command swaps the link, so every "
           "path the agent derives from HOME (permissions.yaml, config.yaml, the audit log and "
           "its key) now lands in a directory the command made. (Measured: after kill -9 $PPID "
           "the real home's key still stayed hidden.)",
}) for m in MODES])
def test_swapping_a_home_link_then_restarting(tmp_path: Path, outside: Outside, mode: str) -> None:
    a = start_agent(mode, tmp_path, outside, home_link=True)
    link = tmp_path / "home-link"
    try:
        decoy = tmp_path / "decoy"
        out1 = a.run(f"mkdir -p {decoy}/proj && ln -sfn {decoy} {link}.new && mv -T {link}.new {link}; "
                     "kill -9 $PPID")
        out2 = a.run(f"cat {a.home}/.ssh/id_rsa", wait=60)
        swapped = os.readlink(link) != str(a.home)
        text = json.dumps([out1, out2])
        assert MARK not in text, f"the real home's key leaked after the restart: {text[:1500]}"
        assert not swapped, f"the agent's home link was replaced: -> {os.readlink(link)}"
    finally:
        a.driver.close()
        if os.path.islink(link):
            link.unlink()
            link.symlink_to(a.home)


# --------------------------------------------------------------------------------------------
# (1) Moving things the mounts hang on.
RENAMES = {
    # exchange two mount points, an ancestor with a sibling, a hidden dir with a project dir
    "exchange-mountpoints": "@PY@ -c 'import ctypes; l=ctypes.CDLL(None,use_errno=True); "
                            "print(l.renameat2(-100,b\"@H@/proj\",-100,b\"@H@/.config\",2), ctypes.get_errno())'",
    "exchange-ancestor": "mkdir -p @T@/x$$ && @PY@ -c 'import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); "
                         "print(l.renameat2(-100,sys.argv[1].encode(),-100,sys.argv[2].encode(),2), ctypes.get_errno())' "
                         "$(dirname @H@) @T@/x$$",
    "move-config": "mv ~/.config ~/proj/c; mv ~/.config/systemd ~/proj/s; mkdir -p ~/.config/systemd/user && "
                   "echo '[Service]' > ~/.config/systemd/user/evil.service",
    "rmdir-hidden": "rmdir ~/.ssh ~/.config/cmdop; umount ~/.config/cmdop; ls -la ~/.config",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(RENAMES))
def test_moving_what_mounts_hang_on(tmp_path: Path, outside: Outside, mode: str, name: str) -> None:
    a = start_agent(mode, tmp_path / "box", outside)
    try:
        before = snapshot(a.home, a.state_dir)
        out = a.run(RENAMES[name])
        assert MARK not in json.dumps(out)
        assert _changed(before, snapshot(a.home, a.state_dir)) == {}, out
        assert (tmp_path / "box" / "home").is_dir()
    finally:
        a.driver.close()


# --------------------------------------------------------------------------------------------
# (5) Code the next fork server runs before it confines itself.
ZIP_PAYLOAD = r'''
import sys
try:
    open(LEAK, "w").write(open(KEY).read())
except OSError as e:
    open(LEAK, "w").write(repr(e))
sys.path[:] = [p for p in sys.path if not p.endswith(".zip")]
del sys.modules["json"]
import importlib
sys.modules["json"] = importlib.import_module("json")
'''


@pytest.fixture
def python_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this interpreter and its stdlib under /tmp (never touch the real one)."""
    base = Path(os.path.realpath(sys.executable))
    prefix = base.parent.parent
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    dst = Path(f"/tmp/cmdop-rt2py-{TOKEN}")
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "bin").mkdir(parents=True)
    shutil.copy2(base, dst / "bin" / base.name)
    shutil.copytree(prefix / "lib" / ver, dst / "lib" / ver, symlinks=True,
                    ignore=shutil.ignore_patterns("site-packages", "test", "idlelib", "tkinter", "__pycache__"))
    site = dst / "lib" / ver / "site-packages"
    site.mkdir()
    deps = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    (site / "redteam.pth").write_text("\n".join([*deps, str(REPO)]) + "\n")
    yield dst / "bin" / base.name
    shutil.rmtree(dst, ignore_errors=True)


@pytest.mark.timeout(300)
def test_python_zip_on_the_interpreter_path(tmp_path: Path, outside: Outside, python_copy: Path) -> None:
    zip_path = python_copy.parent.parent / "lib" / f"python{sys.version_info.major}{sys.version_info.minor}.zip"
    leak = outside.tmp / f"zip-leak-{TOKEN}"
    a = start_agent(MOUNT, tmp_path / "box", outside, python=str(python_copy))
    maker = outside.tmp / f"mkzip-{TOKEN}.py"
    payload = ZIP_PAYLOAD.replace("LEAK", repr(str(leak))).replace("KEY", repr(str(a.home / ".ssh" / "id_rsa")))
    maker.write_text("import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w')\n"
                     f"z.writestr('json/__init__.py', {payload!r})\nz.close()\n")
    try:
        # Round 2 found this live: the zip is first on a `-I -S` interpreter's sys.path. Now the
        # launcher holds what a server starts from to what it was when the agent started, and
        # refuses to start one from anything else (fail closed, saying which file changed).
        a.run(f"{sys.executable} {maker} {zip_path} && ls -la {zip_path}; kill -9 $PPID")
        out = a.run("echo next", wait=60)
        got = leak.read_text(errors="replace") if leak.exists() else ""
        assert MARK not in got, f"the next fork server ran the command's code unconfined: {got[:200]}"
        assert "next" not in out.get("stdout", ""), out
        assert zip_path.name in json.dumps(out), out
    finally:
        a.driver.close()
        zip_path.unlink(missing_ok=True)
        leak.unlink(missing_ok=True)


# A changed library or linker cache stopping the next server start (round 2) is tested in
# test_sandbox_start_files.py, on files of the test's own: touching the machine's real
# /etc/ld.so.cache here made every other agent running at the time refuse its next server.


# --------------------------------------------------------------------------------------------
# (4) /dev and devices.
DEV_PROBES = [
    ("dev-tun", "head -c1 /dev/net/tun; ip tuntap add dev rt@TOKEN@ mode tun && echo MADE; ip link del rt@TOKEN@ 2>/dev/null; true"),
    ("dev-loop-control", "@PY@ -c \"import os,fcntl; fd=os.open('/dev/loop-control',os.O_RDWR); "
                         "print('MADE', fcntl.ioctl(fd, 0x4C82))\"; true"),
    ("dev-pts-outside", "for n in /dev/pts/[0-9]*; do (exec 3>>$n) 2>/dev/null && echo MADE $n; done; true"),
    ("dev-shm-node", "mknod /dev/shm/rt2-@TOKEN@ c 1 1 && echo MADE; rm -f /dev/shm/rt2-@TOKEN@; true"),
    ("devtmpfs-mount", "mkdir -p @T@/d$$ && mount -t devtmpfs none @T@/d$$ && echo MADE; "
                       "umount @T@/d$$ 2>/dev/null; true"),
    ("proc-fd-devices", "for f in /proc/*/fd/*; do t=$(readlink $f); case $t in /dev/vd*|/dev/sd*|/dev/loop*|"
                        "/dev/mem|/dev/kmsg|/dev/input*) head -c 16 $f >/dev/null 2>&1 && echo MADE $t;; esac; done; true"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,command", DEV_PROBES, ids=[p[0] for p in DEV_PROBES])
def test_devices(tmp_path: Path, outside: Outside, mode: str, name: str, command: str) -> None:
    a = start_agent(mode, tmp_path, outside)
    try:
        out = a.run(command)
        made = [ln for ln in out.get("stdout", "").splitlines() if ln.startswith("MADE")]
        assert not made, f"{name}: {made} {out.get('stderr', '')[:500]}"
    finally:
        a.driver.close()


# --------------------------------------------------------------------------------------------
# (6) Kept capabilities against protected files.
CAP_PROBES = [
    # FS_IOC_SETFLAGS (chattr) on read-only/hidden things, in the fixture only
    ("chattr-immutable", "chattr +i ~/.bashrc ~/.config/cmdop/permissions.yaml 2>&1; lsattr ~/.bashrc 2>&1"),
    ("setfcap-on-own-code", "cp /bin/true @T@/t$$ && setcap cap_sys_admin+ep @T@/t$$ && @T@/t$$ && echo ran; "
                            "setcap cap_sys_admin+ep @H@/proj/README 2>&1; true"),
    ("xattr-on-hidden", "setfattr -n user.x -v 1 ~/.ssh 2>&1; setfattr -n user.x -v 1 ~/.bashrc 2>&1; true"),
    ("utime-on-readonly", "touch -d 2001-01-01 ~/.bashrc ~/.profile 2>&1; true"),
    ("chown-chmod", "chmod 777 ~/.bashrc ~/.ssh 2>&1; chown 1234 ~/.bashrc 2>&1; true"),
    # Only segments the agent created (the fork server's parent): other services' on this
    # machine (a PostgreSQL another test started) are not this test's to remove.
    ("sysv-shm-of-agent", "agent=$(ps -o ppid= -p $PPID | tr -d ' '); ipcs -mp 2>&1 | head; "
                          "for id in $(ipcs -mp | awk -v p=\"$agent\" '$3==p{print $1}'); do "
                          "ipcrm -m $id 2>&1; done; true"),
]


LANDLOCK_META = ("ACCEPTED LIMIT (docs/security.md, Landlock form): Landlock does not mediate chmod/chown/utimes or "
                 "FS_IOC_SETFLAGS on regular files, so a 'ro' login file (~/.bashrc) can be "
                 "chmod 777'd, chown'd, re-dated or made immutable (chattr +i), and ~/.ssh chmod'ed "
                 "(its files' modes too: chmod 644 ~/.ssh/id_rsa exposes the key to local users)")


def _cap_params() -> list[Any]:
    out = []
    for mode in MODES:
        for name, command in CAP_PROBES:
            hole = mode == LANDLOCK and name in ("chattr-immutable", "utime-on-readonly", "chown-chmod")
            out.append(pytest.param(mode, name, command, id=f"{name}-{mode}",
                                    marks=[pytest.mark.xfail(strict=True, reason=LANDLOCK_META)] if hole else []))
    return out


@pytest.mark.parametrize("mode,name,command", _cap_params())
def test_kept_capabilities(tmp_path: Path, outside: Outside, mode: str, name: str, command: str) -> None:
    a = start_agent(mode, tmp_path, outside)
    try:
        before = snapshot(a.home, a.state_dir)
        modes_before = {p: os.lstat(a.home / p).st_mtime_ns for p in (".bashrc", ".profile")}
        out = a.run(command)
        assert MARK not in json.dumps(out)
        assert _changed(before, snapshot(a.home, a.state_dir)) == {}, out
        assert {p: os.lstat(a.home / p).st_mtime_ns for p in modes_before} == modes_before, out
        attrs = subprocess.run(["lsattr", "-d", str(a.home / ".bashrc")], capture_output=True, text=True).stdout
        assert "i" not in attrs.split()[0] if attrs else True, attrs
    finally:
        subprocess.run(["chattr", "-i", "-a", str(a.home / ".bashrc"),
                        str(a.home / ".config" / "cmdop" / "permissions.yaml")], capture_output=True)
        a.driver.close()


# --------------------------------------------------------------------------------------------
# (8) Memory through tmpfs, with a small test-only limit.
def test_dev_shm_fill_is_bounded_and_left_nothing(tmp_path: Path, outside: Outside) -> None:
    home = rt.make_home(tmp_path)
    spec = {"repo": str(REPO), "home": str(home), "deny_unshare": False, "memory_max": "256M"}
    d = rt.Driver(spec, stderr=tmp_path / "agent.stderr")   # spec["memory_max"]: a small limit
    name = f"/dev/shm/cmdop-rt2-{TOKEN}"
    try:
        d.run("true")
        out = d.run(f"head -c 384M /dev/zero > {name}; ls -la {name}", timeout_ms=60_000)
        assert out.get("limit_hit") == "memory", {k: v for k, v in out.items() if k != "stderr"}
        size = os.path.getsize(name) if os.path.exists(name) else 0
        assert size == 0, f"{size >> 20} MiB left in {name} after the call"
    finally:
        d.close()
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
