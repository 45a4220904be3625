"""`cmdop password set|clear|status|unlock HOST`: the machine password, and the gate it puts on
the local actions that change security state.

- `set` stores a new password (scrypt hash, `cmdop.adapters.password_store`); when one is set
  already it asks for the current one first. At a terminal it asks for the new one twice; with
  `--password-stdin` it reads one line per password from stdin (the current one first, when
  there is one). Setting or clearing ends every session and resets the wrong-attempt counter.
- `clear` removes it; it needs the current one.
- `status [--json]`: whether a password is set, config.yaml's `remote_requires_password` and
  `password_session_ttl`, the wrong-attempt counter and slow-down, and how many sessions are
  active. Never a hash or a token.
- `unlock HOST` asks for HOST's password and sends it (tool `unlock`, through the local agent's
  relay link or directly, like `cmdop exec`) to HOST's agent, which checks it (never the relay)
  and answers with a session token; the token is cached in ~/.cmdop/sessions.json (0600) per
  workspace and host, and sent with every later call to that host until it expires. Exit 4 for a
  wrong password or while HOST slows attempts down (the wait is in the hint).

The gate (`require_password`, `add_password_flag`): while this machine has a password,
`permissions add|rm|mode MODE`, `connect key set|rm` and `service install` ask for it first —
at a terminal without echo, or the first line of stdin with `--password-stdin` (never argv) —
and refuse without it (exit 4). Wrong attempts count towards the same slow-down as remote
unlocks: after n wrong ones in a row the next is refused unchecked for min(2**(n-1), 300) s.
Every check is audited (tool `password`, the action as its operation), the password never.
"""

from __future__ import annotations

import argparse
import sys
import time

from cmdop.cli.common import CliContext, add_command, add_group
from cmdop.core.errors import AuthError, CmdopError, PermissionDeniedError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STDIN_HELP = "read the password from stdin's first line (else a terminal prompts without echo)"
UNLOCK_TIMEOUT_S = 60.0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `password` command group to `sub`."""
    from cmdop.cli.credential_flags import add_credential_flags, add_tls_flags

    group = add_group(sub, "password", "the machine password: set, clear, status, unlock a host")
    p = add_command(group, "set", "set or change this machine's password", _set)
    add_password_flag(p, "read the password(s) from stdin, one line each: the current one "
                         "first when there is one, then the new one")
    p = add_command(group, "clear", "remove this machine's password (needs the current one)", _clear)
    add_password_flag(p)
    add_command(group, "status", "is a password set, the slow-down, active sessions", _status)
    p = add_command(group, "unlock", "give a machine its password: later calls to it pass", _unlock)
    add_credential_flags(p)
    add_tls_flags(p)      # (the unreachable-relay hint tells a caller without a stored key to pin)
    add_password_flag(p)
    p.add_argument("--timeout", type=float, default=UNLOCK_TIMEOUT_S, metavar="S",
                   help=f"how long to wait for the machine's answer ({UNLOCK_TIMEOUT_S:.0f} s)")
    p.add_argument("host", metavar="HOST", help="machine name (exact, or a unique prefix)")


def add_password_flag(parser: argparse.ArgumentParser, help: str = STDIN_HELP) -> None:
    """`--password-stdin` on a command that may need the machine password."""
    parser.add_argument("--password-stdin", action="store_true", help=help)


# -- reading and checking -------------------------------------------------------------------

def _read(args: argparse.Namespace, prompt: str, missing: CmdopError) -> str:
    """One password: stdin's next line with --password-stdin (its line end removed), else typed
    at a terminal without echo; `missing` is raised when there is neither."""
    stdin = sys.stdin
    if getattr(args, "password_stdin", False):
        line = stdin.readline() if stdin is not None else ""
        if line.endswith("\n"):
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            raise missing
        return line
    if stdin is None or not stdin.isatty():
        raise missing
    import getpass

    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise missing from None


def _local_caller() -> Any:
    import os
    import pwd
    import socket

    from cmdop.core.calls import Caller, CallerKind

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    return Caller(kind=CallerKind.LOCAL, user=user, hostname=socket.gethostname(), credential="unix")


def _audit(ctx: CliContext, operation: str, allowed: bool, rule: str, reason: str) -> None:
    """One audit line for a local password event (tool `password`); a line that cannot be
    written is a warning, as for any local call."""
    from datetime import datetime, timezone

    from cmdop.adapters.audit_log import AuditLog
    from cmdop.adapters.password_store import NOT_RECORDED
    from cmdop.core.audit import build_record
    from cmdop.core.policy.decision import Decision

    decision = Decision(decision="allow" if allowed else "deny", source="floor", reason=reason,
                        mode="", tool="password", operation=operation, rule_id=rule)
    try:
        with AuditLog(ctx.settings.state_dir) as log:
            log.append(build_record(decision=decision, outcome="allow" if allowed else "deny",
                                    tool_input=NOT_RECORDED, caller=_local_caller(),
                                    now=datetime.now(timezone.utc)))
    except Exception as exc:  # noqa: BLE001 - local: the action goes on, with a warning
        ctx.note(f"warning: audit log unwritable: {exc}")


def _check(ctx: CliContext, store: Any, password: str, action: str) -> None:
    """Check this machine's password for `action` under the slow-down; AuthError (exit 4) when
    it is wrong or attempts are slowed down. Audited either way."""
    attempt = store.attempt(password)
    if attempt.outcome in ("ok", "not_set"):
        _audit(ctx, action, True, "password:ok", f"password accepted for {action}")
        return
    wait = int(attempt.retry_in_s + 0.999)
    if attempt.outcome == "slowed":
        reason = (f"refused unchecked: {attempt.failures} wrong password(s) in a row; try again "
                  f"in {wait} s")
        _audit(ctx, action, False, "password:slowed_down", f"{action}: {reason}")
        raise AuthError(f"{action}: {reason}", f"wait {wait} s, then type the password carefully")
    _audit(ctx, action, False, "password:wrong",
           f"{action}: wrong password ({attempt.failures} in a row)")
    raise AuthError(f"{action}: wrong password ({attempt.failures} in a row)",
                    f"the next attempt is refused for {wait} s; `cmdop password status` shows "
                    "the counter")


def require_password(args: argparse.Namespace, ctx: CliContext, action: str) -> None:
    """The gate of a local action that changes security state: nothing when this machine has
    no password; else the password (terminal or --password-stdin), checked under the slow-down.
    AuthError (exit 4) without it or when it is wrong."""
    from cmdop.adapters.password_store import PasswordStore

    store = PasswordStore(ctx.settings)
    if not store.is_set():
        return
    missing = AuthError(f"{action} needs this machine's password (`cmdop password`)",
                        "type it at a terminal, or pass --password-stdin and the password as "
                        "stdin's first line")
    _check(ctx, store, _read(args, f"cmdop password (for {action}): ", missing), action)


# -- set / clear / status ---------------------------------------------------------------------

def _set(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters.password_store import PasswordStore
    from cmdop.core.password_policy import password_problem

    store = PasswordStore(ctx.settings)
    changing = store.is_set()
    if changing:
        require_password(args, ctx, "password set")
    missing = UsageError("no new password given",
                         "type it at a terminal, or pass --password-stdin and the new password "
                         "as a line of stdin")
    new = _read(args, "new cmdop password: ", missing)
    problem = password_problem(new, new=True)
    if problem is not None:
        raise UsageError(problem, "choose another password")
    if not getattr(args, "password_stdin", False):
        again = _read(args, "the same password again: ", missing)
        if again != new:
            raise UsageError("the two passwords differ; nothing was changed", "try again")
    store.set_password(new)
    _audit(ctx, "password set", True, "password:set",
           "password changed: every session ended" if changing else "password set")
    ctx.emit({"password_set": True, "changed": changing},
             "password changed; every session was ended" if changing else
             "password set: `cmdop password status` shows what it guards")
    return 0


def _clear(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters.password_store import PasswordStore

    store = PasswordStore(ctx.settings)
    if not store.is_set():
        ctx.emit({"password_set": False, "cleared": False}, "no password is set")
        return 0
    require_password(args, ctx, "password clear")
    store.clear()
    _audit(ctx, "password clear", True, "password:cleared", "password cleared: every session ended")
    ctx.emit({"password_set": False, "cleared": True}, "password cleared; every session was ended")
    return 0


def _status(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters.config_file import load as load_config
    from cmdop.adapters.password_store import PasswordStore
    from cmdop.core.errors import ConfigFileError

    out: dict[str, Any] = PasswordStore(ctx.settings).status()
    try:
        config = load_config(ctx.settings.config_file)
        out["remote_requires_password"] = config.remote_requires_password
        out["password_session_ttl_s"] = config.password_session_ttl
    except ConfigFileError as exc:
        # The agent then asks remote callers for the password (fail closed).
        out["remote_requires_password"] = True
        out["password_session_ttl_s"] = None
        out["config_error"] = exc.message
    out["remote_password_in_force"] = bool(out["password_set"] and out["remote_requires_password"])

    def human(o: dict[str, Any]) -> str:
        lines = [f"password: {'set' if o['password_set'] else 'not set'}"]
        remote = "yes" if o["remote_requires_password"] else "no"
        if o.get("config_error"):
            remote += f" (config.yaml does not load: {o['config_error']})"
        lines.append(f"remote callers need it: {remote}"
                     + ("" if o["password_set"] or not o["remote_requires_password"]
                        else " (no effect until a password is set)"))
        if o.get("password_session_ttl_s"):
            lines.append(f"session lifetime: {o['password_session_ttl_s']} s")
        if o["failures"]:
            lines.append(f"wrong attempts in a row: {o['failures']} (last {o['last_failure']})"
                         + (f"; next attempt refused for {o['retry_in_s']:.0f} s more"
                            if o["retry_in_s"] else ""))
        else:
            lines.append("wrong attempts in a row: 0")
        lines.append(f"active sessions: {o['active_sessions']}")
        return "\n".join(lines)

    ctx.emit(out, human)
    return 0


# -- unlock HOST ----------------------------------------------------------------------------

def _unlock(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters.password_store import SessionCache, caller_workspace, forget_session
    from cmdop.cli import remote_cmd
    from cmdop.core.password_policy import password_problem
    from cmdop.relay.caller import remote_call

    host = args.host
    if not 0 < args.timeout <= 600:
        raise UsageError("--timeout must be more than 0 and at most 600 seconds", "e.g. --timeout 30")
    password = _read(args, f"password of {host}: ", AuthError(
        f"unlocking {host} needs its password",
        "type it at a terminal, or pass --password-stdin and the password as stdin's first line"))
    problem = password_problem(password)
    if problem is not None:
        raise UsageError(problem)
    tool_input = {"password": password}
    try:
        result: Any = remote_cmd._NOT_THROUGH_AGENT
        if not remote_cmd._uses_own_credential(args, ctx):    # (a guest's token: direct)
            result = remote_cmd._through_agent(args, ctx, host, "unlock", tool_input, None,
                                               args.timeout)
        if result is remote_cmd._NOT_THROUGH_AGENT:
            with remote_cmd._channel(args, ctx) as channel:
                result = remote_call(channel, host, "unlock", tool_input, deadline_s=args.timeout,
                                     cmdop_home=ctx.settings.cmdop_home,
                                     pin_scope=remote_cmd._pin_scope(args, ctx))
    except KeyboardInterrupt:
        ctx.note("cmdop: interrupted")
        return 130
    workspace = caller_workspace(ctx.settings, getattr(args, "workspace", None))
    if not isinstance(result, dict):
        raise CmdopError(f"{host} sent an unexpected answer to unlock", "upgrade cmdop there")
    token, expires = result.get("session_token"), result.get("expires_at")
    if isinstance(token, str) and token and isinstance(expires, (int, float)):
        SessionCache(ctx.settings.cmdop_home).put(workspace, host, token, float(expires))
        ttl = result.get("ttl_s")
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(expires)))
        ctx.emit({"host": host, "workspace": workspace, "unlocked": True,
                  "expires_at": float(expires), "ttl_s": ttl},
                 f"unlocked {host} until {until}: calls to it pass its password check")
        return 0
    error, rule = result.get("error"), str(result.get("rule_id") or "")
    if error == "password_not_required":
        forget_session(ctx.settings, host, getattr(args, "workspace", None))
        ctx.emit({"host": host, "workspace": workspace, "unlocked": False, "required": False},
                 f"{host} does not ask remote callers for a password: nothing to unlock")
        return 0
    if error == "permission_denied":
        reason = str(result.get("reason") or "refused")
        wait = result.get("retry_in_s")
        if rule == "password:wrong":
            raise AuthError(f"wrong password for {host}",
                            f"{host} refuses the next attempt for {wait} s" if wait else None)
        if rule == "password:slowed_down":
            raise AuthError(f"{host}: {reason}", f"wait {wait} s before the next attempt")
        if rule == "admission:unknown_tool":
            raise CmdopError(f"{host}'s agent does not know `unlock`",
                             "upgrade cmdop on that machine")
        raise PermissionDeniedError(f"{host} refused the unlock: {reason} [rule {rule or '?'}]")
    raise CmdopError(f"{host} could not unlock: {result.get('message') or error}")
