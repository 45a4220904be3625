"""The systemd unit text for `cmdop agent run`: the one source of it.

`render_unit(scope, exec_start)` returns the unit file; systemd/cmdop.service and
systemd/cmdop-user.service in the repository are its output for DEFAULT_EXEC_START (a test keeps
them identical), and `cmdop service install` writes it to `install_path(scope, home)`.

Rules:
- Type=notify: the daemon sends READY=1 on $NOTIFY_SOCKET once it serves; Restart=on-failure.
- The zipapp extracts into CacheDirectory (SHIV_ROOT=%C/cmdop/shiv), the audit log and status
  live in StateDirectory (CMDOP_STATE_DIR=%S/cmdop), the socket in RuntimeDirectory
  (CMDOP_SOCKET_PATH=%t/cmdop/agent.sock, directory 0700), so a system agent needs no home.
- Hardening may not break ordinary shell tooling the agent runs for its callers (apt, git,
  systemctl, editors, compilers, JIT runtimes). So: no ProtectSystem/ProtectHome (tools write
  there), no PrivateDevices, no MemoryDenyWriteExecute (JITs), no capability drops in the system
  unit. What stays only removes things no ordinary tool needs: kernel tunables/modules/logs,
  the clock, realtime scheduling, personality changes, foreign syscall ABIs, setuid/setgid
  creation, namespaces other than the ones the sandbox builds, gaining privileges (the seccomp
  sandbox needs no_new_privs anyway), and a private /tmp.
- The command sandbox builds its own kernel floor: a mount namespace (`mount`, `umount2`,
  `RestrictNamespaces=mnt`; a user agent needs `user` too) and a cgroup per call, for which the
  unit delegates its cgroup subtree to the agent (`Delegate=yes`; so no ProtectControlGroups=,
  which would make that subtree read-only).
- A user manager cannot build mount namespaces without implicitly turning on PrivateUsers=,
  which fails where unprivileged user namespaces are disabled; the user unit keeps only the
  seccomp- and prctl-based settings, which work in every user manager.
- KillMode=mixed: SIGTERM goes to the daemon alone, which stops taking calls, finishes or
  cancels running ones and writes their audit lines; whatever is left gets SIGKILL after
  TimeoutStopSec.
"""

from __future__ import annotations

import os
from typing import Literal

Scope = Literal["system", "user"]

UNIT_NAME = "cmdop.service"
DEFAULT_EXEC_START = "/usr/local/bin/cmdop"
REPO_FILE = {"system": "cmdop.service", "user": "cmdop-user.service"}

_UNIT = """\
[Unit]
Description=cmdop agent: runs tools for remote callers through a permission gate
"""

# A user manager has no network-online.target; the relay link retries with backoff anyway.
_UNIT_SYSTEM_ORDER = """\
After=network-online.target
Wants=network-online.target
"""

_SERVICE = """\
[Service]
Type=notify
ExecStart={exec_start} agent run
Restart=on-failure
RestartSec=5s
TimeoutStopSec=30s
KillMode=mixed
CacheDirectory=cmdop
StateDirectory=cmdop
RuntimeDirectory=cmdop
RuntimeDirectoryMode=0700
Environment=SHIV_ROOT=%C/cmdop/shiv
Environment=CMDOP_STATE_DIR=%S/cmdop
Environment=CMDOP_SOCKET_PATH=%t/cmdop/agent.sock
Delegate=yes
"""

# Settings built on seccomp or prctl: they work in system and user managers alike.
# `seccomp` is added to @system-service so the sandbox can stack its own filter (it may only
# narrow what is allowed); prctl(PR_SET_SECCOMP), which the fork server uses, is in the set.
_HARDENING_COMMON = """\
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces={namespaces}
SystemCallArchitectures=native
SystemCallFilter=@system-service seccomp landlock_create_ruleset landlock_add_rule landlock_restrict_self mount umount2
SystemCallErrorNumber=EPERM
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
"""

# Settings that need a mount namespace or capabilities: system manager only.
_HARDENING_SYSTEM = """\
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
"""

_INSTALL = """\
[Install]
WantedBy={wanted_by}
"""


def render_unit(scope: str, exec_start: str = DEFAULT_EXEC_START) -> str:
    """The unit file text for `scope` ("system" or "user").

    `exec_start` is the absolute path of the cmdop program (the installed zipapp), optionally
    followed by arguments that must precede the command, e.g. "/usr/bin/python3.11 /opt/cmdop.pyz";
    the unit runs it with `agent run` appended. Raises ValueError for an unknown scope or an
    exec_start systemd would not accept as written.
    """
    if scope not in REPO_FILE:
        raise ValueError(f"unknown unit scope {scope!r}; expected 'system' or 'user'")
    _check_exec_start(exec_start)
    parts = [_UNIT]
    if scope == "system":
        parts.append(_UNIT_SYSTEM_ORDER)
    namespaces = "mnt" if scope == "system" else "user mnt"
    parts += ["\n", _SERVICE.format(exec_start=exec_start), _HARDENING_COMMON.format(namespaces=namespaces)]
    if scope == "system":
        parts.append(_HARDENING_SYSTEM)
    wanted_by = "multi-user.target" if scope == "system" else "default.target"
    parts += ["\n", _INSTALL.format(wanted_by=wanted_by)]
    return "".join(parts)


def _check_exec_start(exec_start: str) -> None:
    if not exec_start.startswith("/"):
        raise ValueError(f"ExecStart needs an absolute path, got {exec_start!r}")
    if any(c in exec_start for c in "\n\r\\\"'%$;"):
        raise ValueError(f"ExecStart {exec_start!r} holds a character systemd would interpret")


def install_path(scope: str, home: str | None = None,
                 xdg_config_home: str | None = None) -> str:
    """Where the unit file goes: /etc/systemd/system/ or the user's ~/.config/systemd/user/."""
    if scope == "system":
        return os.path.join("/etc/systemd/system", UNIT_NAME)
    if scope == "user":
        base = xdg_config_home or os.path.join(home or os.path.expanduser("~"), ".config")
        return os.path.join(base, "systemd", "user", UNIT_NAME)
    raise ValueError(f"unknown unit scope {scope!r}; expected 'system' or 'user'")
