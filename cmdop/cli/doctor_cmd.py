"""`cmdop doctor [--json]`: which enforcement commands would run under on this machine, and what
to change to get each layer to its strongest level.

It builds the production sandbox for the current settings and config.yaml as `cmdop agent run`
does (`cmdop.adapters.launcher.sandbox_for_agent`), reads `Sandbox.enforcement()` (which starts
the sandbox server, ~50-100 ms), closes it, and prints one line per layer (`kernel floor`,
`cgroup per call`, `capabilities`, `seccomp`, `landlock`), a `to strengthen:` line under every
layer below its strongest (the table in `cmdop.core.enforcement`), then the machine facts it used:
kernel release, euid, whether systemd is PID 1, this process's cgroup layout, the active LSMs and
the user-namespace sysctls.

What it checks is this process's situation: its uid, its cgroup, the seccomp filters it runs
under. An agent run by its systemd unit has the unit's (a delegated cgroup, the unit's
SystemCallFilter=); `cmdop agent status` shows what a running agent has.

Exit 0 whenever the check ran, whatever the levels; 1 when it could not (an invalid config.yaml,
a sandbox server that cannot be started), with the usual one-line error.
`--json`: one object {"enforcement": {...}, "advice": [{"layer", "advice"}], "machine": {...}}.

Side effects are an agent start's, undone on exit: the config and state dirs are created when
missing, a cgroup subtree is made and removed again (stale ones of dead agents are removed too).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from cmdop.cli.common import CliContext, add_command
from cmdop.core.errors import CmdopError

if TYPE_CHECKING:
    from cmdop.core.enforcement import MachineFacts


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `cmdop doctor`."""
    add_command(sub, "doctor", "show which sandbox layers commands get on this machine, and how "
                "to strengthen them", _run)


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_layout() -> str:
    from cmdop.adapters.cgroups import current_layout

    try:
        layout = current_layout()
    except (OSError, ValueError) as exc:
        return f"unreadable: {exc}"
    parts = [f"v2 {layout.unified}" if layout.unified
             else f"no usable v2 ({layout.unified_problem})"]
    parts += [f"v1 {name} {where}" for name, where in sorted(layout.v1.items())]
    return "; ".join(parts)


def machine_facts() -> MachineFacts:
    """The `MachineFacts` of this machine and process (read before the sandbox is built: in a
    cgroup of its own the sandbox may move this process into a leaf)."""
    from cmdop.adapters.cgroups import SYSTEMD_MARKER
    from cmdop.core.enforcement import MachineFacts

    return MachineFacts(
        euid=os.geteuid(),
        kernel_release=os.uname().release,
        systemd_pid1=os.path.isdir(SYSTEMD_MARKER),
        cgroup_layout=_cgroup_layout(),
        lsm=_read_text("/sys/kernel/security/lsm"),
        apparmor_restrict_userns=_read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        unprivileged_userns_clone=_read_int("/proc/sys/kernel/unprivileged_userns_clone"),
        max_user_namespaces=_read_int("/proc/sys/user/max_user_namespaces"),
    )


def _check(ctx: CliContext) -> dict[str, str]:
    """The enforcement an agent with these settings would give its commands now."""
    from cmdop.adapters.config_file import load
    from cmdop.adapters.launcher import sandbox_for_agent

    config = load(ctx.settings.config_file)  # ConfigFileError: one line naming the file and line
    sandbox = sandbox_for_agent(ctx.settings, config)
    try:
        return dict(sandbox.enforcement())
    except OSError as exc:
        raise CmdopError(f"could not start the sandbox server to check it: {exc}",
                         "re-run with --log-level debug for details") from None
    finally:
        sandbox.close()


def _human(report: dict[str, Any]) -> str:
    from cmdop.core.enforcement import LAYERS, layer_lines

    advice: dict[str, list[str]] = {}
    for item in report["advice"]:
        advice.setdefault(item["layer"], []).append(item["advice"])
    rows: list[str] = []
    for (key, _label), line in zip(LAYERS, layer_lines(report["enforcement"])):
        rows.append(line)
        rows += [f"  to strengthen: {text}" for text in advice.get(key, [])]
    weak = len(advice)
    rows.append("every layer is at its strongest here" if not weak else
                f"{weak} layer{'s' if weak > 1 else ''} can be stronger (see `to strengthen:`)")
    m = report["machine"]
    who = "root" if m["euid"] == 0 else "not root"
    rows += [
        "",
        f"kernel:          Linux {m['kernel_release']}",
        f"euid:            {m['euid']} ({who})",
        f"systemd PID 1:   {'yes' if m['systemd_pid1'] else 'no'}",
        f"cgroups:         {m['cgroup_layout']}",
        f"LSMs:            {m['lsm'] or 'unknown (/sys/kernel/security/lsm unreadable)'}",
    ]
    userns = [f"{name}={m[key]}" for name, key in (
        ("kernel.apparmor_restrict_unprivileged_userns", "apparmor_restrict_unprivileged_userns"),
        ("kernel.unprivileged_userns_clone", "unprivileged_userns_clone"),
        ("user.max_user_namespaces", "max_user_namespaces")) if m[key] is not None]
    if userns:
        rows.append(f"user namespaces: {', '.join(userns)}")
    rows.append("checked as this process; a running agent's own layers: `cmdop agent status`")
    return "\n".join(rows)


def _run(args: argparse.Namespace, ctx: CliContext) -> int:
    from cmdop.adapters.logging_setup import configure
    from cmdop.core.enforcement import advice

    # The sandbox logs a warning for every missing layer; the report says the same, so only
    # errors are logged unless --log-level asks for more.
    configure(getattr(args, "log_level", None) or "error", ctx.log_format)
    facts = machine_facts()
    enforcement = _check(ctx)
    report = {"enforcement": enforcement,
              "advice": [a.as_json() for a in advice(enforcement, facts)],
              "machine": facts.as_json()}
    ctx.emit(report, _human)
    return 0
