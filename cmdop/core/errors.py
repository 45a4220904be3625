"""The one exception tree of cmdop.

Every error a user can cause or meet carries a message (what went wrong) and a hint (what to do
next). The CLI (`cmdop.cli.main`) is the one place that prints them: `cmdop: error: MESSAGE`, then
the hint, and exits with the error's `exit_code`. Nothing else prints errors.

Exit codes: 1 error · 2 usage · 3 denied by a permission gate · 4 no usable credential /
authentication failed · 5 relay or target machine unreachable.
"""

from __future__ import annotations


class CmdopError(Exception):
    """Base of every error cmdop reports to a user."""

    exit_code: int = 1
    default_hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class UsageError(CmdopError):
    """The command line itself is wrong (bad flag value, missing argument)."""

    exit_code = 2
    default_hint = "run the command with --help to see its usage"


class PermissionDeniedError(CmdopError):
    """A permission gate denied the call."""

    exit_code = 3


class AuthError(CmdopError):
    """No usable credential, or the credential was refused."""

    exit_code = 4
    default_hint = "run `cmdop login`, or set CMDOP_API_KEY"


class UnreachableError(CmdopError):
    """The relay or the target machine could not be reached."""

    exit_code = 5


class ConfigError(CmdopError):
    """A configuration file is missing, unreadable or invalid."""


class PolicyError(ConfigError):
    """permissions.yaml failed to parse or validate. `line` is 1-based when known."""

    def __init__(self, message: str, hint: str | None = None, line: int | None = None) -> None:
        if line is not None:
            message = f"line {line}: {message}"
        super().__init__(message, hint or "fix permissions.yaml; a running agent keeps its last good policy")
        self.line = line

    def at(self, path: str) -> "PolicyError":
        """The same error, naming the file it was found in (message and default hint)."""
        out = PolicyError(f"{path}: {self.message.replace('permissions.yaml ', 'the file ')}",
                          (self.hint or "").replace("permissions.yaml", path) or None)
        out.line = self.line
        return out


class SecretFileError(CmdopError):
    """A secret-bearing file is readable by others or owned by another user."""


class AuditWriteError(CmdopError):
    """An audit line could not be written; remote calls must be denied while this lasts."""

    default_hint = "check free space and permissions of the state dir (CMDOP_STATE_DIR)"


class AuditIntegrityError(CmdopError):
    """The audit chain is broken: a line was edited, removed or a file is missing."""


class SandboxUnavailableError(CmdopError):
    """seccomp cannot be applied here, so commands are refused for remote callers."""

    default_hint = "run on a Linux kernel with seccomp, or set `sandbox_required: false` in config.yaml"


class ToolError(CmdopError):
    """A tool was called with bad input or failed in a way the caller should see."""


class UnknownToolError(ToolError):
    """The named tool does not exist."""

    default_hint = "tools: execute_command, read_file, write_file, list_dir, grep, glob"


class DaemonError(CmdopError):
    """The local agent daemon failed or answered badly."""


class DaemonNotRunningError(DaemonError):
    """No daemon is listening on the local socket."""

    default_hint = "start it with `cmdop agent run` or `cmdop service install`"


class ConfigFileError(ConfigError):
    """config.yaml failed to parse or validate. `line` is 1-based when known."""

    def __init__(self, message: str, hint: str | None = None, line: int | None = None) -> None:
        if line is not None:
            message = f"line {line}: {message}"
        super().__init__(message, hint or "fix config.yaml in the config dir (CMDOP_CONFIG_DIR)")
        self.line = line


class NotFoundError(CmdopError):
    """A named thing (workspace, key, machine, stored credential) does not exist."""


class AlreadyExistsError(CmdopError):
    """A name that must be unique is already taken."""


class StoreStatementError(CmdopError):
    """The relay's database refused a statement (not a connection failure): an internal fault
    of the relay's, logged with its detail and answered to clients without it."""

    default_hint = "check the database's logs; the relay's schema may have been altered"


class StoreUnavailableError(UnreachableError):
    """The relay's database (PostgreSQL) cannot be reached or refused the connection. The
    message names the server (never its password); logins and key checks fail closed."""

    default_hint = "check that the database server runs and accepts this relay's connections " \
                   "(--store / CMDOP_RELAY_STORE)"


class BusUnavailableError(UnreachableError):
    """The relay nodes' shared bus (Redis, `relay serve --bus`) cannot be reached. The message
    names the server (never its password); calls that cross nodes fail until it is back."""

    default_hint = "check that the Redis server runs and accepts this relay's connections " \
                   "(--bus / CMDOP_RELAY_BUS)"


class E2EError(CmdopError):
    """End-to-end encryption failed: a sealed request or response frame did not open, or a
    host's key is not the one pinned for it."""

    default_hint = "the relay or the network may have altered the call; try again, and check " \
                   "`cmdop connect trust HOST` if the host's key changed"


class HostKeyChangedError(E2EError):
    """The relay handed out a key for a host that differs from the one pinned on first use."""

    default_hint = "if the host's owner rotated its key, accept it with `cmdop connect trust HOST`"
