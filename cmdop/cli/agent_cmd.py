"""`cmdop agent run|status` and `cmdop service install|uninstall|status`.

`agent run` is the long-running daemon (cmdop.daemon.app); it logs to stderr for journald.
`agent status` reads daemon.pid / daemon.status and says ONLINE, DEGRADED, STARTING or STOPPED
(exit 0 whatever the state: exit 1 means the report itself failed); a serving agent's
report ends with its sandbox's layers (`kernel floor: ...`, `cgroup per call: ...`,
`capabilities: ...`, `seccomp: ...`, `landlock: ...`, see cmdop.core.enforcement).
`service install` writes the systemd unit (text from cmdop.adapters.systemd_units), reloads
systemd, enables and starts it (user units: `loginctl enable-linger` so it runs without a login),
printing each step; `--dry-run` prints the unit and the steps instead of doing them. While the
machine has a password, `service install` (not `--dry-run`) asks for it first (`--password-stdin`:
stdin's first line) and refuses without it, exit 4.
"""

from __future__ import annotations

import argparse
import os
import sys

from cmdop.cli.common import CliContext, add_command, add_group
from cmdop.core.errors import CmdopError, ConfigError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

UNIT_NAME = "cmdop.service"
SYSTEMCTL_TIMEOUT_S = 30


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `agent` and `service` command groups to `sub`."""
    agent = add_group(sub, "agent", "run the agent daemon or ask about it")
    run = add_command(agent, "run", "run the agent in the foreground (systemd runs this)", _run)
    run.add_argument("--shutdown-deadline", type=float, default=10.0, metavar="S",
                     help="seconds running calls get on SIGTERM before being abandoned (10)")
    run.add_argument("--status-interval", type=float, default=10.0, metavar="S",
                     help="seconds between daemon.status refreshes (10)")
    add_command(agent, "status", "is the agent ONLINE, DEGRADED, STARTING or STOPPED", _status)

    service = add_group(sub, "service", "install the agent as a systemd service")
    for name, helptext, handler in (
        ("install", "write, enable and start the systemd unit", _install),
        ("uninstall", "stop, disable and remove the systemd unit", _uninstall),
        ("status", "show the unit's state and the agent's status", _service_status),
    ):
        p = add_command(service, name, helptext, handler)
        scope = p.add_mutually_exclusive_group()
        scope.add_argument("--system", dest="scope", action="store_const", const="system",
                           help="system unit in /etc/systemd/system (default as root)")
        scope.add_argument("--user", dest="scope", action="store_const", const="user",
                           help="user unit in ~/.config/systemd/user (default otherwise)")
        if name != "status":
            p.add_argument("--dry-run", action="store_true",
                           help="print the unit and the steps instead of doing them")
        if name == "install":
            from cmdop.cli.password_cmd import add_password_flag

            add_password_flag(p)
            p.add_argument("--exec-start", default=None, metavar="CMD",
                           help="the program systemd runs, `agent run` is appended "
                                "(default: this interpreter and this cmdop)")


# Heavy stdlib modules (subprocess, shlex, shutil) are imported inside the handlers that need
# them: every `cmdop` invocation imports this module to build the parser.

# -- agent ------------------------------------------------------------------------------------

def _run(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters.logging_setup import configure
    from cmdop.daemon.app import DaemonOptions, run_daemon

    # A daemon logs at info unless told otherwise (the CLI default, warning, is for commands).
    configure(getattr(args, "log_level", None) or "info", ctx.log_format)
    if args.shutdown_deadline <= 0 or args.status_interval <= 0:
        raise UsageError("--shutdown-deadline and --status-interval must be positive")
    options = DaemonOptions(shutdown_deadline_s=args.shutdown_deadline,
                            status_interval_s=args.status_interval, env=dict(os.environ))
    return run_daemon(ctx.settings, options)


def _relay_line(s: dict[str, Any]) -> str:
    """The relay link in one line: online as NAME via ADDR, or its state and last error."""
    r = s.get("relay")
    if not isinstance(r, dict):
        return "connected" if s.get("relay_connected") else "not connected"
    state = str(r.get("state") or "off")
    if state == "online":
        return f"online as {r.get('machine') or '?'} via {r.get('relay') or '?'} (workspace " \
               f"{r.get('workspace') or '?'})"
    where = f" {r.get('relay')}" if r.get("relay") else ""
    error = f": {r.get('last_error')}" if r.get("last_error") else ""
    return f"{state}{where}{error}"


def _e2e_line(s: dict[str, Any]) -> str:
    """This agent's end-to-end key fingerprint (callers compare it before `connect trust`)."""
    r = s.get("relay")
    if not isinstance(r, dict) or not r.get("e2e_key"):
        return "none yet (created when the relay link starts)"
    how = "plaintext relay calls refused" if r.get("e2e_required", True) else \
        "plaintext relay calls accepted (e2e_required: false)"
    return f"{r['e2e_key']} ({how})"


def _human_status(s: dict[str, Any]) -> str:
    line = str(s["state"])
    if s.get("pid"):
        line += f" (pid {s['pid']})"
    if s.get("detail"):
        line += f": {s['detail']}"
    rows = [line]
    if s["state"] in ("ONLINE", "DEGRADED"):
        c = s.get("counters") or {}
        rows += [
            f"version:   {s.get('version', '?')}  started {s.get('started_at', '?')}",
            f"mode:      {s.get('mode') or '?'}  policy {'ok' if s.get('policy_ok') else 'BAD'}",
            f"relay:     {_relay_line(s)}",
            f"e2e key:   {_e2e_line(s)}",
            f"socket:    {s.get('socket', '?')}",
            f"calls:     {c.get('calls', 0)} ({c.get('denied', 0)} denied), asks {c.get('asks', 0)}, "
            f"approvers attached {s.get('approvers', 0)}",
            f"updated:   {s.get('updated_at', '?')}",
        ]
        enforcement = s.get("enforcement")
        if isinstance(enforcement, dict):
            from cmdop.core.enforcement import layer_lines

            rows += layer_lines(enforcement)
    return "\n".join(rows)


def _status(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.daemon.status import classify

    s = classify(ctx.settings.pid_file, ctx.settings.status_file)
    ctx.emit(s, _human_status)
    return 0  # the report itself succeeded; the state is in the output


# -- service ----------------------------------------------------------------------------------

def _scope(args: argparse.Namespace) -> str:
    return str(args.scope or ("system" if os.geteuid() == 0 else "user"))


def _unit_path(scope: str, ctx: CliContext) -> str:
    from cmdop.adapters.systemd_units import install_path

    return install_path(scope, ctx.settings.home, os.environ.get("XDG_CONFIG_HOME") or None)


def _exec_start(argv0: str | None = None, python: str | None = None) -> str:
    """The program systemd should run (the unit appends `agent run`), all absolute:
    this interpreter followed by this cmdop when it is a zipapp (any name: `cmdop.pyz`, or
    `/usr/local/bin/cmdop` installed without the suffix, recognised with zipfile.is_zipfile);
    otherwise this interpreter with `-m cmdop` (a checkout or an installed package).
    The interpreter is named even when the zipapp has a `#!` line: `#!/usr/bin/env python3.11`
    would be looked up on systemd's PATH, which need not hold the Python running this now."""
    import zipfile

    argv0 = argv0 if argv0 is not None else (sys.argv[0] if sys.argv else "")
    python = os.path.abspath(python or sys.executable)
    entry = os.path.abspath(argv0) if argv0 else ""
    if entry and os.path.isfile(entry) and (entry.endswith(".pyz") or zipfile.is_zipfile(entry)):
        return f"{python} {entry}"
    return f"{python} -m cmdop"


def _systemctl(scope: str, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if scope == "user" else []), *args]


def _steps(scope: str, install: bool) -> list[list[str]]:
    import pwd

    if install:
        steps = [_systemctl(scope, "daemon-reload"), _systemctl(scope, "enable", "--now", UNIT_NAME)]
        if scope == "user":
            steps.insert(0, ["loginctl", "enable-linger", pwd.getpwuid(os.getuid()).pw_name])
        return steps
    return [_systemctl(scope, "disable", "--now", UNIT_NAME), _systemctl(scope, "daemon-reload")]


def _execute(steps: list[list[str]], ctx: CliContext, check: bool = True) -> None:
    import shlex
    import shutil
    import subprocess

    if shutil.which(steps[0][0]) is None and shutil.which("systemctl") is None:
        raise ConfigError("systemctl not found: this machine does not run systemd",
                          "run `cmdop agent run` under your own supervisor, or use --dry-run")
    for cmd in steps:
        ctx.note(f"$ {shlex.join(cmd)}")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CmdopError(f"{shlex.join(cmd)} failed: {exc}") from None
        if proc.returncode != 0 and check:
            raise CmdopError(f"{shlex.join(cmd)} exited {proc.returncode}: "
                             f"{(proc.stderr or proc.stdout).strip()[:300]}")


def _install(args: argparse.Namespace, ctx: CliContext) -> int:
    import shlex

    from cmdop.adapters.secure_file import atomic_write
    from cmdop.adapters.systemd_units import render_unit

    scope = _scope(args)
    if scope == "system" and os.geteuid() != 0 and not args.dry_run:
        raise UsageError("--system needs root", "run with sudo, or use --user")
    try:
        text = render_unit(scope, args.exec_start or _exec_start())
    except ValueError as exc:
        raise UsageError(str(exc), "pass --exec-start with an absolute path") from None
    path = _unit_path(scope, ctx)
    steps = _steps(scope, install=True)
    if args.dry_run:
        ctx.emit({"unit_path": path, "unit": text, "steps": [shlex.join(s) for s in steps]},
                 lambda o: f"# {o['unit_path']}\n{o['unit']}\n# then:\n"
                 + "\n".join(f"#   {s}" for s in o["steps"]))
        return 0
    from cmdop.cli.password_cmd import require_password

    require_password(args, ctx, "service install")
    atomic_write(path, text, mode=0o644)
    ctx.note(f"wrote {path}")
    _execute(steps, ctx)
    ctx.emit({"unit_path": path, "scope": scope, "enabled": True},
             f"installed and started {UNIT_NAME} ({scope}); check with `cmdop agent status`")
    return 0


def _uninstall(args: argparse.Namespace, ctx: CliContext) -> int:
    import shlex

    scope = _scope(args)
    path = _unit_path(scope, ctx)
    steps = _steps(scope, install=False)
    if args.dry_run:
        ctx.emit({"unit_path": path, "steps": [shlex.join(s) for s in steps]},
                 lambda o: "\n".join(f"$ {s}" for s in o["steps"]) + f"\n$ rm {o['unit_path']}")
        return 0
    _execute(steps[:1], ctx, check=False)   # disabling a unit that is already gone is fine
    if os.path.exists(path):
        os.unlink(path)
        ctx.note(f"removed {path}")
    _execute(steps[1:], ctx)
    ctx.emit({"unit_path": path, "removed": True}, f"removed {UNIT_NAME} ({scope})")
    return 0


def _service_status(args: argparse.Namespace, ctx: CliContext) -> int:
    import subprocess

    from cmdop.daemon.status import classify

    scope = _scope(args)
    path = _unit_path(scope, ctx)
    out: dict[str, Any] = {"scope": scope, "unit_path": path, "installed": os.path.exists(path)}
    for key, verb in (("active", "is-active"), ("enabled", "is-enabled")):
        try:
            proc = subprocess.run(_systemctl(scope, verb, UNIT_NAME), capture_output=True,
                                  text=True, timeout=SYSTEMCTL_TIMEOUT_S)
            out[key] = proc.stdout.strip() or "unknown"
        except (OSError, subprocess.TimeoutExpired):
            out[key] = "unknown (no systemctl)"
    out["agent"] = classify(ctx.settings.pid_file, ctx.settings.status_file)["state"]
    ctx.emit(out, lambda o: "\n".join(f"{k}: {v}" for k, v in o.items()))
    return 0
