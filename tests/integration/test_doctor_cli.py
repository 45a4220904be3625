"""`cmdop doctor` and `cmdop agent status` report the sandbox's layers: black-box through the real
CLI, against this machine (the sandbox server really starts)."""

from __future__ import annotations

import json
import os
import re

import pytest

from test_daemon_helpers import start_daemon, wait_for, write_policy

from cmdop.adapters.cgroups import current_layout
from cmdop.core.enforcement import LAYERS, MachineFacts, advice, is_strongest

pytestmark = pytest.mark.seccomp

KEYS = tuple(key for key, _label in LAYERS)
LABELS = tuple(f"{label}: " for _key, label in LAYERS)


def check_layers(e: dict) -> None:
    """Every layer present; the levels this machine gives (root: the full kernel floor)."""
    for key in KEYS:
        assert isinstance(e.get(key), str) and e[key], (key, e)
    assert e["seccomp"] == "filter", e
    assert e["cgroup_per_call"] in ("yes", "no"), e
    assert e.get("cgroup_detail" if e["cgroup_per_call"] == "yes" else "cgroup_reason"), e
    if os.geteuid() == 0:
        assert e["kernel_floor"] == "mount namespace", e
        assert re.fullmatch(r"trimmed \(\d+ dropped\)", e["capabilities"]), e
    else:
        assert e["kernel_floor"] in ("user+mount namespace", "landlock", "static only"), e
        assert e["capabilities"] == "n/a (not root)", e
    if e["kernel_floor"] not in ("mount namespace", "user+mount namespace"):
        assert e.get("kernel_floor_reason"), e
    if e["landlock"] == "none":
        assert e.get("landlock_reason"), e
    else:
        assert re.fullmatch(r"ABI \d+", e["landlock"]), e


def test_doctor_json_reports_every_layer_the_advice_and_the_machine(cmdop_env):
    r = cmdop_env.run("doctor", "--json")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    report = json.loads(r.stdout)
    assert set(report) == {"enforcement", "advice", "machine"}
    e = report["enforcement"]
    check_layers(e)
    m = report["machine"]
    assert m["euid"] == os.geteuid() and m["kernel_release"] == os.uname().release
    assert m["systemd_pid1"] == os.path.isdir("/run/systemd/system")
    assert m["cgroup_layout"]
    facts = MachineFacts(
        euid=m["euid"], kernel_release=m["kernel_release"], systemd_pid1=m["systemd_pid1"],
        cgroup_layout=m["cgroup_layout"], lsm=m["lsm"],
        apparmor_restrict_userns=m["apparmor_restrict_unprivileged_userns"],
        unprivileged_userns_clone=m["unprivileged_userns_clone"],
        max_user_namespaces=m["max_user_namespaces"])
    assert report["advice"] == [a.as_json() for a in advice(e, facts)]
    weak = {key for key in KEYS if not is_strongest(key, e)} - {"capabilities"}
    assert {a["layer"] for a in report["advice"]} >= weak


def test_doctor_prints_one_line_per_layer_advice_under_it_and_the_facts(cmdop_env):
    r = cmdop_env.run("doctor")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    layer_lines = [ln for ln in lines if ln.startswith(LABELS)]
    assert [ln.split(": ", 1)[0] + ": " for ln in layer_lines] == list(LABELS), r.stdout
    if os.geteuid() == 0:
        assert "kernel floor: mount namespace" in lines
    assert "seccomp: filter" in lines
    for i, line in enumerate(lines):   # advice sits under a layer line (or under more advice)
        if line.startswith("  to strengthen: "):
            assert lines[i - 1].startswith((*LABELS, "  to strengthen: ")), r.stdout
    assert f"kernel:          Linux {os.uname().release}" in lines
    assert any(ln.startswith("euid:            ") for ln in lines)
    assert any(ln.startswith("cgroups:         ") for ln in lines)
    assert any(ln.startswith("systemd PID 1:   ") for ln in lines)


def _dead_subtrees() -> set[str]:
    """cmdop-<pid>-* cgroup subtrees beside this process whose agent is gone."""
    try:
        base = current_layout().unified
    except OSError:
        return set()
    if base is None or not os.path.isdir(base):
        return set()
    found = set()
    for name in os.listdir(base):
        m = re.fullmatch(r"cmdop-(\d+)-[0-9a-f]+", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            found.add(name)
    return found


def test_doctor_leaves_no_cgroup_subtree_behind(cmdop_env):
    before = _dead_subtrees()
    r = cmdop_env.run("doctor", "--json")
    assert r.returncode == 0, r.stderr
    assert _dead_subtrees() - before == set()


@pytest.mark.parametrize("text", ["sandbox_required: [unclosed\n", "sandbox_requird: true\n"])
@pytest.mark.parametrize("json_flag", [(), ("--json",)])
def test_doctor_with_a_broken_config_is_one_error_line(cmdop_env, text, json_flag):
    cmdop_env.config_dir.mkdir(parents=True, mode=0o700)
    path = cmdop_env.config_dir / "config.yaml"
    path.write_text(text)
    os.chmod(path, 0o600)
    r = cmdop_env.run("doctor", *json_flag)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("cmdop: error:")]
    assert len(errors) == 1 and "config.yaml" in errors[0], r.stderr
    assert re.search(r": line \d+: ", errors[0]), r.stderr
    assert "hint: " in r.stderr


GOOD_POLICY = """\
version: 1
mode: strict
rules: []
"""


def test_agent_status_shows_the_layers_of_the_running_agent(cmdop_env):
    write_policy(cmdop_env, GOOD_POLICY)
    d = start_daemon(cmdop_env)
    try:
        def known() -> dict | None:
            r = cmdop_env.run("agent", "status", "--json")
            assert r.returncode == 0, r.stderr
            st = json.loads(r.stdout)
            return st if "seccomp" in (st.get("enforcement") or {}) else None

        st = wait_for(known, 20, "the agent's status to carry its enforcement")
        assert st["state"] == "ONLINE", st
        check_layers(st["enforcement"])
        with d.client() as c:      # the socket's status carries it too
            assert c.status()["enforcement"] == st["enforcement"]

        human = cmdop_env.run("agent", "status")
        assert human.returncode == 0 and human.stdout.startswith("ONLINE (pid "), human.stdout
        lines = human.stdout.splitlines()
        shown = [ln for ln in lines if ln.startswith(LABELS)]
        assert [ln.split(": ", 1)[0] + ": " for ln in shown] == list(LABELS), human.stdout
        if os.geteuid() == 0:
            assert "kernel floor: mount namespace" in lines
        assert "seccomp: filter" in lines
        assert f"landlock: {st['enforcement']['landlock']}" in "\n".join(lines)
    finally:
        assert d.stop() == 0
    assert "Traceback" not in d.log(), d.log()
