"""The enforcement report and its advice (cmdop.core.enforcement), as tables: every weak layer
gets one `to strengthen` line that names what to change, every strong layer gets none."""

from __future__ import annotations

import pytest

from cmdop.core.enforcement import (ADVICE, LAYERS, MachineFacts, advice, is_known, is_strongest,
                                    layer_lines)

STRONG = {
    "seccomp": "filter", "kernel_floor": "mount namespace", "landlock": "ABI 7",
    "cgroup_per_call": "yes",
    "cgroup_detail": "yes (cgroup v2, delegated: pids.max 1024, memory.max 7.8 GiB)",
    "capabilities": "trimmed (13 dropped)",
}
NO_SECCOMP = {
    "seccomp": "unavailable: libseccomp is not usable: No module named 'pyseccomp'",
    "kernel_floor": "static only", "kernel_floor_reason": "no sandbox", "landlock": "none",
    "landlock_reason": "libseccomp is not usable: No module named 'pyseccomp'",
    "cgroup_per_call": "no", "cgroup_reason": "not delegated: the agent's cgroup /x is not delegated",
    "capabilities": "not trimmed",
}
ROOT = MachineFacts(euid=0, kernel_release="6.8.0-31-generic", systemd_pid1=True)
USER = MachineFacts(euid=1000, kernel_release="6.8.0-31-generic", systemd_pid1=True)


def with_(**changes: str) -> dict[str, str]:
    out = dict(STRONG)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def only(found: list, layer: str) -> str:
    texts = [a.text for a in found if a.layer == layer]
    assert len(texts) == 1, found
    return texts[0]


def test_every_layer_at_its_strongest_gets_no_advice():
    assert advice(STRONG, ROOT) == []
    assert advice(with_(kernel_floor="user+mount namespace", capabilities="n/a (not root)"), USER) == []
    assert all(is_strongest(layer, STRONG) for layer, _ in LAYERS)


@pytest.mark.parametrize("layer,changes,facts,expected", [
    # kernel floor: user namespaces refused (non-root agent)
    ("kernel_floor", {"kernel_floor": "static only", "kernel_floor_reason":
                      "unprivileged user namespaces are not available here (unshare: Operation not permitted)"},
     USER, ["allow unprivileged user namespaces", "Ubuntu 24.04", "AppArmor profile for cmdop",
            "kernel.apparmor_restrict_unprivileged_userns=0", "or run the agent as root"]),
    ("kernel_floor", {"kernel_floor": "static only", "kernel_floor_reason":
                      "unprivileged user namespaces are not available here (unshare: Permission denied)"},
     MachineFacts(euid=1000, apparmor_restrict_userns=1),
     ["AppArmor restricts them here", "grants `userns`",
      "kernel.apparmor_restrict_unprivileged_userns=0", "run the agent as root"]),
    ("kernel_floor", {"kernel_floor": "static only", "kernel_floor_reason":
                      "unprivileged user namespaces are not available here (unshare: Operation not permitted)"},
     MachineFacts(euid=1000, unprivileged_userns_clone=0),
     ["kernel.unprivileged_userns_clone=1", "run the agent as root"]),
    ("kernel_floor", {"kernel_floor": "static only", "kernel_floor_reason":
                      "unprivileged user namespaces are not available here (unshare: No space left on device)"},
     MachineFacts(euid=1000, max_user_namespaces=0), ["user.max_user_namespaces", "run the agent as root"]),
    # the "landlock" floor (no mount namespace, Landlock rules instead) is weaker: same advice
    ("kernel_floor", {"kernel_floor": "landlock", "kernel_floor_reason":
                      "unprivileged user namespaces are not available here (unshare: Operation not permitted)"},
     USER, ["allow unprivileged user namespaces"]),
    ("kernel_floor", {"kernel_floor": "static only", "kernel_floor_reason":
                      "unprivileged user namespaces are not available here (unshare: Operation not "
                      "permitted); Landlock file rules: Landlock ABI query: Landlock is built in but "
                      "disabled at boot (not in lsm=) (EOPNOTSUPP)", "landlock": "ABI 7"},
     USER, ["allow unprivileged user namespaces"]),
    # kernel floor: a seccomp filter on the agent (a unit's SystemCallFilter=) refuses mount()
    ("kernel_floor", {"kernel_floor": "static only", "kernel_floor_reason":
                      "mount /: Operation not permitted (is mount() refused by a seccomp filter on the agent?)"},
     ROOT, ["the agent's own seccomp filter refuses mount()", "`cmdop service install`"]),
    ("kernel_floor", {"kernel_floor": "static only",
                      "kernel_floor_reason": "unshare(CLONE_NEWNS): Operation not permitted"},
     ROOT, ["CAP_SYS_ADMIN", "RestrictNamespaces=mnt"]),
    ("kernel_floor", {"kernel_floor": "static only",
                      "kernel_floor_reason": "planning the kernel floor failed: boom"},
     ROOT, ["--log-level debug"]),
    ("kernel_floor", {"kernel_floor": "static only", "kernel_floor_reason": "something new"},
     ROOT, ["run the agent as root", "`cmdop service install`"]),
    # cgroup per call
    ("cgroup_per_call", {"cgroup_per_call": "no", "cgroup_detail": None, "cgroup_reason":
                         "not delegated: the agent's cgroup /user.slice/x.scope is not delegated "
                         "(run it from the cmdop systemd unit, which sets Delegate=yes)"},
     ROOT, ["run the agent from its systemd unit (`cmdop service install`), which sets Delegate=yes"]),
    ("cgroup_per_call", {"cgroup_per_call": "no", "cgroup_detail": None, "cgroup_reason":
                         "this kernel (5.10.0) has no cgroup.kill (Linux >= 5.14 needed)"},
     ROOT, ["needs cgroup v2 with cgroup.kill (Linux 5.14+)", "this kernel is 6.8.0-31-generic"]),
    ("cgroup_per_call", {"cgroup_per_call": "no", "cgroup_detail": None, "cgroup_reason":
                         "no cgroup2 hierarchy is mounted (cgroup v1 only); per-call cgroups need "
                         "cgroup2 for cgroup.kill: boot with systemd.unified_cgroup_hierarchy=1 or mount cgroup2"},
     ROOT, ["needs cgroup v2 with cgroup.kill (Linux 5.14+)", "systemd.unified_cgroup_hierarchy=1"]),
    ("cgroup_per_call", {"cgroup_per_call": "no", "cgroup_detail": None, "cgroup_reason":
                         "cannot create the agent's cgroup subtree: /sys/fs/cgroup/x: the cgroup "
                         "filesystem is mounted read-only (a container without a writable cgroup mount?)"},
     ROOT, ["read-only", "writable cgroup2 mount"]),
    ("cgroup_per_call", {"cgroup_per_call": "no", "cgroup_detail": None, "cgroup_reason":
                         "cannot create the agent's cgroup subtree: /sys/fs/cgroup/x: permission denied"},
     USER, ["may not write its cgroup", "Delegate=yes"]),
    # a "yes" without its limits is not the strongest
    ("cgroup_per_call", {"cgroup_detail": "yes (cgroup v2 membership and kill only; limits not available: "
                                          "cannot enable +memory +pids in /x/cgroup.subtree_control: other "
                                          "processes live in /x (pid 12))"},
     ROOT, ["alone in its cgroup", "`cmdop service install`"]),
    ("cgroup_per_call", {"cgroup_detail": "yes (cgroup v2 membership and kill only; limits not available: "
                                          "cannot enable +pids in /x/cgroup.subtree_control: not offered "
                                          "to /x by its parent (see its cgroup.controllers))"},
     ROOT, ["cgroup.subtree_control"]),
    # capabilities: only a root agent's can be trimmed
    ("capabilities", {"capabilities": "not trimmed"}, ROOT, ["report it"]),
    # seccomp
    ("seccomp", {"seccomp": "unavailable: libseccomp is not usable: libseccomp.so.2: cannot open"},
     ROOT, ["install libseccomp2"]),
    ("seccomp", {"seccomp": "unavailable: seccomp needs Linux; this is Darwin"}, ROOT, ["only on Linux"]),
    ("seccomp", {"seccomp": "unavailable: seccomp filter could not be installed: prctl: EINVAL"},
     ROOT, ["CONFIG_SECCOMP_FILTER"]),
    # landlock
    ("landlock", {"landlock": "none", "landlock_reason": "Landlock ABI query: Landlock is built in but "
                  "disabled at boot (not in lsm=) (EOPNOTSUPP)"},
     MachineFacts(lsm="lockdown,capability,yama,apparmor"),
     ["add landlock to the kernel's lsm= boot parameter", "lsm=landlock,lockdown,capability,yama,apparmor"]),
    ("landlock", {"landlock": "none", "landlock_reason": "Landlock ABI query: this kernel has no Landlock (ENOSYS)"},
     ROOT, ["needs Linux 5.13+ with CONFIG_SECURITY_LANDLOCK"]),
    ("landlock", {"landlock": "none", "landlock_reason": "Landlock ABI 1 (Linux 5.13-5.18) forbids moving "
                  "files between directories in every domain; no domain used"},
     ROOT, ["Landlock ABI 2 (Linux 5.19+)"]),
    ("landlock", {"landlock": "none", "landlock_reason": "Landlock ABI query: refused with EPERM, most likely "
                  "by a seccomp filter on the agent (e.g. systemd SystemCallFilter= without the landlock_* calls)"},
     ROOT, ["landlock_restrict_self", "SystemCallFilter="]),
])
def test_a_weak_layer_gets_one_line_saying_what_to_change(layer, changes, facts, expected):
    enforcement = with_(**changes)
    assert not is_strongest(layer, enforcement)
    found = advice(enforcement, facts)
    assert [a.layer for a in found] == [layer], found
    text = only(found, layer)
    for words in expected:
        assert words in text, (words, text)


def test_a_non_root_agents_capabilities_get_no_advice():
    assert advice(with_(capabilities="n/a (not root)"), USER) == []


def test_no_seccomp_means_the_server_built_layers_say_fix_seccomp_first():
    found = advice(NO_SECCOMP, ROOT)
    assert [a.layer for a in found] == ["kernel_floor", "cgroup_per_call", "capabilities",
                                        "seccomp", "landlock"]
    for layer in ("kernel_floor", "capabilities", "landlock"):
        assert "fix seccomp first" in only(found, layer)
    assert "install libseccomp2" in only(found, "seccomp")
    assert "Delegate=yes" in only(found, "cgroup_per_call")


def test_every_layer_has_a_catch_all_row():
    for layer, _label in LAYERS:
        rows = [words for row_layer, words, _text in ADVICE if row_layer == layer]
        assert rows and rows[-1] == (), layer
    weird = {"seccomp": "unavailable: ???", "kernel_floor": "???", "landlock": "???",
             "cgroup_per_call": "???", "capabilities": "???"}
    assert len(advice(weird, ROOT)) == len(LAYERS)


def test_layer_lines_show_each_layer_with_its_reason():
    assert layer_lines(STRONG) == [
        "kernel floor: mount namespace",
        "cgroup per call: yes (cgroup v2, delegated: pids.max 1024, memory.max 7.8 GiB)",
        "capabilities: trimmed (13 dropped)",
        "seccomp: filter",
        "landlock: ABI 7",
    ]
    assert layer_lines(NO_SECCOMP) == [
        "kernel floor: static only (no sandbox: libseccomp is not usable: No module named 'pyseccomp')",
        "cgroup per call: no (not delegated: the agent's cgroup /x is not delegated)",
        "capabilities: not trimmed (no sandbox: libseccomp is not usable: No module named 'pyseccomp')",
        "seccomp: unavailable: libseccomp is not usable: No module named 'pyseccomp'",
        "landlock: none (no sandbox: libseccomp is not usable: No module named 'pyseccomp')",
    ]


def test_placeholders_are_one_line_and_get_no_advice():
    for placeholder, line in (({"state": "starting"}, "enforcement: starting"),
                              ({"state": "unavailable", "reason": "the tool pipeline did not load"},
                               "enforcement: unavailable (the tool pipeline did not load)")):
        assert not is_known(placeholder)
        assert layer_lines(placeholder) == [line]
        assert advice(placeholder, ROOT) == []


def test_machine_facts_as_json_names_every_fact():
    facts = MachineFacts(euid=0, kernel_release="6.18", systemd_pid1=False, cgroup_layout="v2 /x",
                         lsm="landlock", max_user_namespaces=10)
    assert facts.as_json() == {
        "kernel_release": "6.18", "euid": 0, "systemd_pid1": False, "cgroup_layout": "v2 /x",
        "lsm": "landlock", "apparmor_restrict_unprivileged_userns": None,
        "unprivileged_userns_clone": None, "max_user_namespaces": 10,
    }
