"""Finding the system service's agent from a root shell (`cmdop agent status`, `permissions
watch|audit|pending`, `cmdop run`, ...).

The system unit (cmdop.adapters.systemd_units) runs the agent as root with
CMDOP_STATE_DIR=/var/lib/cmdop and CMDOP_SOCKET_PATH=/run/cmdop/agent.sock; its config dir is
root's default (~/.config/cmdop), the same one a root shell derives. A root shell's CLI derives
the per-user defaults instead (~/.local/state/cmdop, $XDG_RUNTIME_DIR/cmdop/agent.sock), so without
this step it would not find the system agent.

The rule (one decision for the socket and the state dir together, so the CLI never mixes the
system agent's socket with a per-user audit log):
- Nothing changes when any of CMDOP_SOCKET_PATH, CMDOP_STATE_DIR, CMDOP_CONFIG_DIR is set: an
  explicit environment always wins.
- Otherwise the system paths are used when
  (a) the system socket exists and the per-user socket does not, or
  (b) neither socket exists, the system state dir exists and the per-user state dir does not.
- "Exists" means exists *and belongs to this user* (`exists` callable): the system unit runs as
  root, so only root ever switches; any other user keeps their own paths.
`cmdop agent run` does not use this step: a daemon binds exactly what its environment says.
"""

from __future__ import annotations

import os

from cmdop.core.settings import Settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Mapping

SYSTEM_SOCKET = "/run/cmdop/agent.sock"    # %t/cmdop/agent.sock in the system unit
SYSTEM_STATE_DIR = "/var/lib/cmdop"        # %S/cmdop
OVERRIDES = ("CMDOP_SOCKET_PATH", "CMDOP_STATE_DIR", "CMDOP_CONFIG_DIR")


def account_home() -> str:
    """This account's home from the password database, for when HOME is unset, empty or
    relative ("/" when the account has no entry)."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_dir or "/"
    except KeyError:
        return "/"


def with_system_service(settings: Settings, env: Mapping[str, str], exists: Callable[[str], bool],
                        root: str = "/") -> Settings:
    """`settings` pointed at the system service's socket and state dir when the rule in the
    module docstring says so, else `settings` unchanged. Touches no file itself: `exists(path)`
    answers every question (paths are under `root`, which tests set to a fake tree)."""
    if any(env.get(name) for name in OVERRIDES):
        return settings
    sys_socket = os.path.join(root, SYSTEM_SOCKET.lstrip("/"))
    sys_state = os.path.join(root, SYSTEM_STATE_DIR.lstrip("/"))
    user_socket = exists(settings.socket_path)
    use_system = (exists(sys_socket) and not user_socket) or (
        not user_socket and not exists(sys_socket)
        and exists(sys_state) and not exists(settings.state_dir))
    if not use_system:
        return settings
    return settings.replace(socket_path=sys_socket, state_dir=sys_state)


def owned_by_me(path: str) -> bool:
    """True when `path` exists (not following a final symlink) and is owned by our euid."""
    try:
        return os.lstat(path).st_uid == os.geteuid()
    except OSError:
        return False


def discover(settings: Settings, env: Mapping[str, str]) -> Settings:
    """`with_system_service` on the real file system."""
    return with_system_service(settings, env, owned_by_me)
