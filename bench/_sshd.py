"""Shared by bench/remote.py: a throw-away OpenSSH server on a free localhost port, for the ssh
baselines. (No benchmark.)

`Sshd.start(tmp)` generates a host key and a client key under `tmp`, writes an sshd_config that
listens on 127.0.0.1 only, allows exactly that client key for the current user (public keys
only: no passwords, no PAM, no agent or X11 forwarding), runs `sshd -D` and checks one login.
The remote `bash -c CMD` reads no rc file (as cmdop's `bash -c` does not): see SetEnv below.
It raises `SshdUnavailable` with the reason when sshd is missing or cannot serve (not root, no
privilege-separation directory, the login fails); the benchmark then skips the ssh comparison.
`argv(...)` is the client command line: no user config, no known_hosts, the bench's key only.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = "/run/sshd"   # sshd's compiled-in chroot for its unprivileged child


class SshdUnavailable(Exception):
    """Why the ssh baseline cannot be measured on this machine."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sshd:
    def __init__(self, tmp: Path, proc: subprocess.Popen[bytes], port: int, key: Path) -> None:
        self.tmp, self.proc, self.port, self.key = tmp, proc, port, key
        self.control_path = tmp / "cm-%C"

    @classmethod
    def start(cls, tmp: Path) -> "Sshd":
        sshd = SSHD if os.access(SSHD, os.X_OK) else shutil.which("sshd")
        if not sshd:
            raise SshdUnavailable("no sshd on this machine (Debian: apt-get install "
                                  "openssh-server; .ci/setup installs it)")
        for tool in ("ssh", "ssh-keygen"):
            if not shutil.which(tool):
                raise SshdUnavailable(f"no {tool} on PATH (package openssh-client)")
        if os.geteuid() != 0:
            raise SshdUnavailable("sshd needs root to log users in (run the bench as root)")
        if not os.path.isdir(PRIVSEP_DIR):
            # What the distribution's ssh.service does (RuntimeDirectory=sshd).
            try:
                os.mkdir(PRIVSEP_DIR, 0o755)
            except OSError as exc:
                raise SshdUnavailable(f"cannot create {PRIVSEP_DIR}: {exc.strerror}") from None
        tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        host_key, key = tmp / "host_ed25519", tmp / "id_ed25519"
        for path in (host_key, key):
            out = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                                 stdin=subprocess.DEVNULL, capture_output=True)
            if out.returncode:
                raise SshdUnavailable(f"ssh-keygen failed: {out.stderr.decode(errors='replace')}")
        authorized = tmp / "authorized_keys"
        authorized.write_bytes((tmp / "id_ed25519.pub").read_bytes())
        authorized.chmod(0o600)
        port = free_port()
        config = tmp / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
            f"PidFile {tmp / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}",
            f"AllowUsers {getpass.getuser()}", "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "AllowAgentForwarding no", "AllowTcpForwarding no", "X11Forwarding no",
            "PrintMotd no", "PrintLastLog no", "UseDNS no", "MaxStartups 100:30:200",
            "MaxSessions 100", "LogLevel ERROR",
            # bash started by sshd reads ~/.bashrc when SHLVL says it is a first-level shell;
            # a heavy rc (pyenv init: ~90 ms here) would be timed as ssh. cmdop runs `bash -c`
            # without rc files: so does this sshd.
            "SetEnv SHLVL=1", "",
        ]))
        check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True)
        if check.returncode:
            why = check.stderr.decode(errors="replace").strip()
            raise SshdUnavailable(f"sshd -t rejects the config: {why}")
        log = open(tmp / "sshd.log", "wb")
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)
        log.close()
        server = cls(tmp, proc, port, key)
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise SshdUnavailable(f"sshd exited {proc.returncode}: {server.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise SshdUnavailable("sshd does not accept connections within 10 s") from None
                time.sleep(0.05)
        out = subprocess.run(server.argv(["true"]), stdin=subprocess.DEVNULL, capture_output=True,
                             timeout=30)
        if out.returncode:
            server.stop()
            why = out.stderr.decode(errors="replace").strip()
            raise SshdUnavailable(f"ssh login to the bench's sshd fails ({out.returncode}): "
                                  f"{why} {server.log_tail()}")
        return server

    def argv(self, command: list[str], *, master: bool = False) -> list[str]:
        """`ssh ... localhost COMMAND`; with `master`, through a ControlMaster that persists."""
        return ["ssh", *self._options(master), "127.0.0.1", *command]

    def _options(self, master: bool) -> list[str]:
        opts = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-i", str(self.key),
                "-p", str(self.port)]
        if master:
            opts += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path}",
                     "-o", "ControlPersist=60"]
        return opts

    def master_pid(self) -> int:
        """The ControlMaster client's pid (`ssh -O check`), 0 when none runs."""
        out = subprocess.run(["ssh", *self._options(True), "-O", "check", "127.0.0.1"],
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        text = (out.stdout + out.stderr).decode(errors="replace")
        start = text.find("pid=")
        digits = text[start + 4:].split(")")[0] if start >= 0 else ""
        return int(digits) if digits.isdigit() else 0

    def log_tail(self) -> str:
        try:
            return (self.tmp / "sshd.log").read_text(errors="replace")[-400:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        # The ControlMaster (ssh -O exit), then sshd and with it its session children.
        subprocess.run(["ssh", *self._options(True), "-O", "exit", "127.0.0.1"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
