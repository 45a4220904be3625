"""Which enforcement a command runs under, how to show it, and what would make it stronger.

Pure. The sandbox (`cmdop.adapters.launcher.Sandbox.enforcement`) reports one value per layer
and, where a layer is missing, the reason (`kernel_floor_reason`, `cgroup_reason`,
`landlock_reason`; seccomp's reason is in its value, a cgroup's missing limits in
`cgroup_detail`). `layer_lines` renders that for `cmdop agent status` and `cmdop doctor`;
`advice` says, for every layer not at its strongest, what an operator can change, from the
table `ADVICE` (given the reason and the machine's facts, `MachineFacts`).

The strongest level of each layer:
- kernel floor: "mount namespace" (root agent) or "user+mount namespace" (non-root agent: the
  best a non-root agent can have); "landlock" (the floor as Landlock rules) and "static only"
  (the gate's text rules alone) are weaker;
- cgroup per call: "yes" with every limit in force (a "yes" that lists missing limits is weaker);
- capabilities: "trimmed (N dropped)", or "n/a (not root)": a non-root agent's commands hold no
  capabilities, so there is nothing to trim and nothing to advise;
- seccomp: "filter";
- landlock: "ABI N" (any domain).

Rules: matching is on lower-cased substrings of the reason, first matching row of a layer wins,
and every layer has a last row that always matches, so a weak layer always gets one line of
advice. Advice names what to change, never a command cmdop would run for the operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

# (key in the enforcement dict, label shown to people), in the order they are shown.
LAYERS: tuple[tuple[str, str], ...] = (
    ("kernel_floor", "kernel floor"),
    ("cgroup_per_call", "cgroup per call"),
    ("capabilities", "capabilities"),
    ("seccomp", "seccomp"),
    ("landlock", "landlock"),
)

STRONGEST_FLOOR = ("mount namespace", "user+mount namespace")
# Words in `cgroup_detail` that say a "yes" runs without some of its limits.
_PARTIAL_LIMITS = ("limits not available", "no pids limit", "no memory limit",
                   "membership and kill only")


@dataclass(frozen=True)
class MachineFacts:
    """What `doctor` read about this machine besides the sandbox's own report. None: unknown
    (the file is absent on this kernel, or could not be read)."""

    euid: int = 0
    kernel_release: str = ""
    systemd_pid1: bool = False
    cgroup_layout: str = ""
    lsm: str | None = None                           # /sys/kernel/security/lsm, e.g. "lockdown,yama"
    apparmor_restrict_userns: int | None = None      # kernel.apparmor_restrict_unprivileged_userns
    unprivileged_userns_clone: int | None = None     # kernel.unprivileged_userns_clone (Debian)
    max_user_namespaces: int | None = None           # user.max_user_namespaces

    def as_json(self) -> dict[str, object]:
        return {
            "kernel_release": self.kernel_release, "euid": self.euid,
            "systemd_pid1": self.systemd_pid1, "cgroup_layout": self.cgroup_layout,
            "lsm": self.lsm,
            "apparmor_restrict_unprivileged_userns": self.apparmor_restrict_userns,
            "unprivileged_userns_clone": self.unprivileged_userns_clone,
            "max_user_namespaces": self.max_user_namespaces,
        }


@dataclass(frozen=True)
class Advice:
    """One thing to change: which layer it strengthens, and what to do."""

    layer: str
    text: str

    def as_json(self) -> dict[str, str]:
        return {"layer": self.layer, "advice": self.text}


def is_known(enforcement: Mapping[str, str]) -> bool:
    """True when `enforcement` is a sandbox's report, not a placeholder such as
    {"state": "starting"} (a daemon whose sandbox server is not up yet)."""
    return "state" not in enforcement and "seccomp" in enforcement


def reason_of(layer: str, enforcement: Mapping[str, str]) -> str:
    """Why `layer` is below its strongest, as the sandbox said it ("" when it said nothing).
    Without seccomp there is no sandbox server, and the layers it builds (kernel floor,
    capabilities, landlock) say "no sandbox: WHY"."""
    seccomp = str(enforcement.get("seccomp") or "")
    if layer == "seccomp":
        return "" if seccomp == "filter" else seccomp
    if layer == "cgroup_per_call":
        if enforcement.get("cgroup_per_call") == "yes":
            return str(enforcement.get("cgroup_detail") or "")
        return str(enforcement.get("cgroup_reason") or "")
    if seccomp != "filter":
        cause = seccomp.removeprefix("unavailable: ")
        return f"no sandbox: {cause}" if cause else "no sandbox"
    return str(enforcement.get(f"{layer}_reason") or "")


def is_strongest(layer: str, enforcement: Mapping[str, str]) -> bool:
    """True when `layer` is at the strongest level this kind of agent can have (module doc)."""
    value = str(enforcement.get(layer) or "")
    if layer == "kernel_floor":
        return value in STRONGEST_FLOOR
    if layer == "cgroup_per_call":
        detail = str(enforcement.get("cgroup_detail") or "").lower()
        return value == "yes" and not any(w in detail for w in _PARTIAL_LIMITS)
    if layer == "capabilities":
        return value.startswith(("trimmed", "n/a"))
    if layer == "seccomp":
        return value == "filter"
    if layer == "landlock":
        return value.startswith("ABI")
    return True


def layer_lines(enforcement: Mapping[str, str]) -> list[str]:
    """One `label: value` line per layer, with the reason in parentheses where a layer is
    missing; a placeholder (`is_known` false) is one `enforcement: STATE (reason)` line."""
    if not is_known(enforcement):
        state = str(enforcement.get("state") or "unknown")
        why = str(enforcement.get("reason") or "")
        return [f"enforcement: {state}" + (f" ({why})" if why else "")]
    lines = []
    for key, label in LAYERS:
        value = str(enforcement.get(key) or "?")
        if key == "cgroup_per_call" and value == "yes":
            value = str(enforcement.get("cgroup_detail") or value)   # "yes (cgroup v2, ...)"
        elif key != "seccomp":                                     # seccomp's value holds its why
            why = reason_of(key, enforcement)
            if why:
                value += f" ({why})"
        lines.append(f"{label}: {value}")
    return lines


# -- advice -------------------------------------------------------------------------------------

Text = Callable[[MachineFacts], str]

_SECCOMP_FIRST = ("the sandbox server builds this layer, and it cannot start without seccomp: "
                  "fix seccomp first (see its line)")
_UNIT = "`cmdop service install`"


def _userns(f: MachineFacts) -> str:
    tail = ", or run the agent as root (a root agent needs no user namespace)"
    if f.apparmor_restrict_userns == 1:
        return ("allow unprivileged user namespaces: AppArmor restricts them here "
                "(kernel.apparmor_restrict_unprivileged_userns=1, Ubuntu 23.10+): add an AppArmor "
                "profile for the agent's interpreter that grants `userns`, or set the sysctl "
                "kernel.apparmor_restrict_unprivileged_userns=0" + tail)
    if f.unprivileged_userns_clone == 0:
        return ("allow unprivileged user namespaces: set the sysctl "
                "kernel.unprivileged_userns_clone=1 (it is 0 here)" + tail)
    if f.max_user_namespaces == 0:
        return ("allow user namespaces: set the sysctl user.max_user_namespaces to a positive "
                "number, e.g. 15000 (it is 0 here)" + tail)
    return ("allow unprivileged user namespaces (Ubuntu 24.04: an AppArmor profile for cmdop, or "
            "sysctl kernel.apparmor_restrict_unprivileged_userns=0; Debian: sysctl "
            "kernel.unprivileged_userns_clone=1)" + tail)


def _lsm(f: MachineFacts) -> str:
    text = "enable Landlock at boot: add landlock to the kernel's lsm= boot parameter"
    if f.lsm:
        text += f" (now {f.lsm}: e.g. lsm=landlock,{f.lsm})"
    return text + ", then reboot"


def _kernel(need: str) -> Text:
    def text(f: MachineFacts) -> str:
        return need + (f" (this kernel is {f.kernel_release})" if f.kernel_release else "")
    return text


def _const(text: str) -> Text:
    return lambda f: text


# (layer, lower-case substrings of the reason, any of which selects the row (() = always),
#  the advice). First match per layer wins; each layer ends with a catch-all row.
ADVICE: tuple[tuple[str, tuple[str, ...], Text], ...] = (
    ("kernel_floor", ("no sandbox",), _const(_SECCOMP_FIRST)),
    ("kernel_floor", ("user namespace",), _userns),
    ("kernel_floor", ("seccomp filter", "mount("), _const(
        "the agent's own seccomp filter refuses mount(): with systemd use the unit from "
        f"{_UNIT} (it allows mount, umount2 and RestrictNamespaces=mnt), or drop the "
        "SystemCallFilter= that blocks them")),
    ("kernel_floor", ("unshare",), _const(
        "the agent may not create a mount namespace: in a container give it CAP_SYS_ADMIN (or "
        f"run it on the host); with systemd use the unit from {_UNIT} (RestrictNamespaces=mnt)")),
    ("kernel_floor", ("planning the kernel floor failed",), _const(
        "reading this machine's mounts for the kernel floor failed: re-run with --log-level "
        "debug and report the reason")),
    ("kernel_floor", (), _const(
        "commands get no mount namespace here (see the reason): run the agent as root, or from "
        f"the unit of {_UNIT}")),

    ("cgroup_per_call", ("not delegated",), _const(
        f"run the agent from its systemd unit ({_UNIT}), which sets Delegate=yes; "
        "`cmdop agent status` then shows the cgroup of the agent itself")),
    ("cgroup_per_call", ("no cgroup2", "cgroup v1 only", "no 0:: line", "not visible under"),
     _const("needs cgroup v2 with cgroup.kill (Linux 5.14+): boot with "
            "systemd.unified_cgroup_hierarchy=1, or mount cgroup2")),
    ("cgroup_per_call", ("has no cgroup.kill",), _kernel(
        "needs cgroup v2 with cgroup.kill (Linux 5.14+)")),
    ("cgroup_per_call", ("read-only",), _const(
        "the cgroup file system is read-only here (a container?): give the agent a writable "
        "cgroup2 mount of its own, or run it on the host")),
    ("cgroup_per_call", ("other processes live",), _const(
        "the per-call limits need the agent alone in its cgroup: run it from its systemd unit "
        f"({_UNIT}), or start it in a cgroup of its own")),
    ("cgroup_per_call", ("not offered",), _const(
        "the parent cgroup does not offer the pids and memory controllers: enable them in the "
        "parent's cgroup.subtree_control (systemd's Delegate=yes does it for the unit)")),
    ("cgroup_per_call", ("permission denied",), _const(
        f"the agent may not write its cgroup: run it from its systemd unit ({_UNIT}, "
        "Delegate=yes), or as root")),
    ("cgroup_per_call", ("neither cgroup2 nor", "membership and kill only"), _const(
        "no pids or memory controller is available: enable them in the kernel (CONFIG_CGROUP_PIDS, "
        "CONFIG_MEMCG) and in the parent cgroup")),
    ("cgroup_per_call", (), _const(
        f"see the reason; the agent's systemd unit ({_UNIT}) gives it a delegated cgroup v2 "
        "subtree with the pids and memory controllers")),

    ("capabilities", ("no sandbox",), _const(_SECCOMP_FIRST)),
    ("capabilities", (), _const(
        "the sandbox server dropped no capability from its bounding set: re-run with "
        "--log-level debug and report it")),

    ("seccomp", ("libseccomp",), _const(
        "install libseccomp2 (Debian/Ubuntu: apt-get install libseccomp2; Fedora/RHEL: dnf "
        "install libseccomp)")),
    ("seccomp", ("needs linux",), _const("commands are sandboxed only on Linux")),
    ("seccomp", ("could not be installed",), _const(
        "the kernel refused the filter: it needs CONFIG_SECCOMP_FILTER, and a container "
        "runtime's own seccomp profile must allow prctl(PR_SET_SECCOMP)")),
    ("seccomp", (), _const(
        "see the reason; until seccomp works the agent refuses remote commands "
        "(sandbox_required: true in config.yaml, the default)")),

    ("landlock", ("no sandbox",), _const(_SECCOMP_FIRST)),
    ("landlock", ("eopnotsupp", "not in lsm="), _lsm),
    ("landlock", ("enosys", "no landlock"), _kernel(
        "needs Linux 5.13+ with CONFIG_SECURITY_LANDLOCK (Landlock ABI 2: Linux 5.19+)")),
    ("landlock", ("abi 1 (", "forbids moving"), _kernel("needs Landlock ABI 2 (Linux 5.19+)")),
    ("landlock", ("eperm", "seccomp filter"), _const(
        "a seccomp filter on the agent refuses the landlock_* calls: with systemd use the unit "
        f"from {_UNIT}, or allow landlock_create_ruleset, landlock_add_rule and "
        "landlock_restrict_self in its SystemCallFilter=")),
    ("landlock", (), _const("see the reason; Landlock needs Linux 5.19+ with it in lsm=")),
)


def advice(enforcement: Mapping[str, str], facts: MachineFacts) -> list[Advice]:
    """What to change, one `Advice` per layer below its strongest (in `LAYERS` order); [] when
    every layer is at its strongest or `enforcement` is a placeholder. Capabilities "n/a" (a
    non-root agent) gets none: its commands hold no capabilities."""
    if not is_known(enforcement):
        return []
    out: list[Advice] = []
    for layer, _label in LAYERS:
        if is_strongest(layer, enforcement):
            continue
        reason = reason_of(layer, enforcement).lower()
        for row_layer, words, text in ADVICE:
            if row_layer == layer and (not words or any(w in reason for w in words)):
                out.append(Advice(layer, text(facts)))
                break
    return out
