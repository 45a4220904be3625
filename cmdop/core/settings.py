"""Where cmdop keeps things, derived from the environment as one frozen value.

Pure: `Settings.from_env` takes the environment mapping and the user's home directory and
returns paths; it touches no file. Every other module receives a `Settings` and never reads
`os.environ` for these values itself, so tests can redirect everything by changing HOME or the
CMDOP_* variables.
"""

from __future__ import annotations

import posixpath

from cmdop.core.errors import ConfigError
from cmdop.core.value import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

MODES = ("default", "strict", "bypass")

SESSIONS_FILE_NAME = "sessions.json"   # in cmdop_home: the caller's machine-password sessions


class Settings(Frozen):
    """Every path and override cmdop uses. Built once per process and passed down."""

    FIELDS = ("home", "config_dir", "cmdop_home", "state_dir", "socket_path", "relay", "api_key",
              "workspace", "mode_override", "relay_data_dir", "share_token", "relay_store",
              "relay_bus")
    # An API key, a share token, and store or bus URLs that may hold a password: never shown.
    HIDDEN = frozenset(("api_key", "share_token", "relay_store", "relay_bus"))
    home: str                # the agent user's home (what `~` means in rules and the floor)
    config_dir: str          # config.yaml, permissions.yaml
    cmdop_home: str          # ssh_workspaces.json, token.json
    state_dir: str           # audit.log, daemon.status, daemon.pid
    socket_path: str         # local socket of the daemon
    relay: str | None
    api_key: str | None
    workspace: str | None
    mode_override: str | None   # CMDOP_PERMISSIONS_MODE
    relay_data_dir: str         # `cmdop relay` default data dir ($XDG_DATA_HOME/cmdop-relay)
    share_token: str | None     # CMDOP_SHARE_TOKEN (a guest)
    relay_store: str | None     # CMDOP_RELAY_STORE: the relay's store URL (postgresql://…)
    relay_bus: str | None       # CMDOP_RELAY_BUS: the relay nodes' bus (redis://…)

    def __init__(self, home: str, config_dir: str, cmdop_home: str, state_dir: str,
                 socket_path: str, relay: str | None = None, api_key: str | None = None,
                 workspace: str | None = None, mode_override: str | None = None,
                 relay_data_dir: str = "", share_token: str | None = None,
                 relay_store: str | None = None, relay_bus: str | None = None) -> None:
        self._set(home=home, config_dir=config_dir, cmdop_home=cmdop_home, state_dir=state_dir,
                  socket_path=socket_path, relay=relay, api_key=api_key, workspace=workspace,
                  mode_override=mode_override, relay_data_dir=relay_data_dir,
                  share_token=share_token, relay_store=relay_store, relay_bus=relay_bus)

    @property
    def permissions_file(self) -> str:
        return posixpath.join(self.config_dir, "permissions.yaml")

    @property
    def config_file(self) -> str:
        return posixpath.join(self.config_dir, "config.yaml")

    @property
    def audit_file(self) -> str:
        return posixpath.join(self.state_dir, "audit.log")

    @property
    def status_file(self) -> str:
        return posixpath.join(self.state_dir, "daemon.status")

    @property
    def pid_file(self) -> str:
        return posixpath.join(self.state_dir, "daemon.pid")

    @property
    def workspaces_file(self) -> str:
        return posixpath.join(self.cmdop_home, "ssh_workspaces.json")

    @property
    def token_file(self) -> str:
        return posixpath.join(self.cmdop_home, "token.json")

    @property
    def sessions_file(self) -> str:
        """The caller's cached machine-password sessions (cmdop.adapters.password_store)."""
        return posixpath.join(self.cmdop_home, SESSIONS_FILE_NAME)

    @classmethod
    def from_env(cls, env: Mapping[str, str], home: str) -> "Settings":
        """Derive every path from `env` (usually os.environ) and `home` (the account's home, used
        when HOME is unset, empty or relative), as docs/paths.md lists. Every path is absolute
        and normalised; ConfigError for a relative CMDOP_* path."""

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value else None

        def base(name: str) -> str | None:
            # The XDG base directory spec: a relative value is invalid and ignored. So is a
            # relative HOME: paths must not depend on where a command happened to start.
            value = get(name)
            return posixpath.normpath(value) if value and posixpath.isabs(value) else None

        def path(name: str) -> str | None:
            # A relative CMDOP_* path would mean one directory to the CLI and another to a
            # daemon started elsewhere, and would not match the floor's absolute rules: refused.
            value = get(name)
            if value is None:
                return None
            if not posixpath.isabs(value):
                raise ConfigError(f"{name}={value} is not an absolute path",
                                  f"set {name} to an absolute path, e.g. {name}=\"$PWD/{value}\"")
            return posixpath.normpath(value)

        home = base("HOME") or posixpath.normpath(home)
        xdg_config = base("XDG_CONFIG_HOME") or posixpath.join(home, ".config")
        xdg_state = base("XDG_STATE_HOME") or posixpath.join(home, ".local", "state")
        xdg_data = base("XDG_DATA_HOME") or posixpath.join(home, ".local", "share")
        cmdop_home = path("CMDOP_HOME") or posixpath.join(home, ".cmdop")
        runtime = base("XDG_RUNTIME_DIR")
        default_socket = (
            posixpath.join(runtime, "cmdop", "agent.sock")
            if runtime
            else posixpath.join(cmdop_home, "agent.sock")
        )
        return cls(
            home=home,
            config_dir=path("CMDOP_CONFIG_DIR") or posixpath.join(xdg_config, "cmdop"),
            cmdop_home=cmdop_home,
            state_dir=path("CMDOP_STATE_DIR") or posixpath.join(xdg_state, "cmdop"),
            socket_path=path("CMDOP_SOCKET_PATH") or default_socket,
            relay=get("CMDOP_RELAY"),
            api_key=get("CMDOP_API_KEY"),
            workspace=get("CMDOP_WORKSPACE"),
            mode_override=get("CMDOP_PERMISSIONS_MODE"),
            relay_data_dir=posixpath.join(xdg_data, "cmdop-relay"),
            # kept as given, empty included: `CMDOP_SHARE_TOKEN="$UNSET"` asked for a guest
            # call, and must be refused rather than become the owner's (credential_flags)
            share_token=env.get("CMDOP_SHARE_TOKEN"),
            relay_store=get("CMDOP_RELAY_STORE"),
            relay_bus=get("CMDOP_RELAY_BUS"),
        )
