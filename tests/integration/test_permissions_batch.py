"""`cmdop permissions check --batch` and `cmdop permissions replay` through the real CLI.

- `--batch` and single `check --json` runs must agree exactly on the same calls (a differential
  test between the two entry points); audit records are input too; a bad line costs that line
  only, with its number; `-` reads stdin.
- `replay` re-judges a REAL audit log, written by real calls (`cmdop run` in-process as a local
  caller, and the agent's socket with `as_caller` for remote and self callers), under a new
  policy and lists exactly the transitions that policy makes.
- A property (in-process, Hypothesis): for any lines, one output line per input line, in order.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmdop.core.calls import TOOL_TARGET_FIELD
from tests.conftest import CmdopEnv

POLICY = """\
version: 1
mode: strict
rules:
  - rule: "execute_command(git *)"
    action: allow
  - rule: "execute_command(uname *)"
    action: ask
  - rule: "read_file(~/proj/secret/**)"
    action: deny
  - rule: "read_file(~/proj/**)"
    action: allow
  - rule: "connect(exec:*.example.com)"
    action: allow
"""


def write_policy(env: CmdopEnv, text: str, path: Path | None = None) -> Path:
    path = path or env.config_dir / "permissions.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def batch(env: CmdopEnv, lines: list[str] | bytes, *args: str, stdin: bool = False,
          **extra: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run `check --batch` on `lines` (a file, or stdin); (exit status, output objects, stderr)."""
    data = lines if isinstance(lines, bytes) else "".join(line + "\n" for line in lines).encode()
    if stdin:
        r = env.run("permissions", "check", "--batch", "-", *args, input=data.decode(), **extra)
    else:
        path = env.home.parent / f"batch-{time.monotonic_ns()}.jsonl"
        path.write_bytes(data)
        r = env.run("permissions", "check", "--batch", str(path), *args, **extra)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, [json.loads(x) for x in r.stdout.splitlines()], r.stderr


def check(env: CmdopEnv, *args: str) -> dict[str, Any]:
    r = env.run("permissions", "check", "--json", *args)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


# (tool, arg, flags as check takes them: op, caller, cwd — relative to HOME where "proj")
CALLS: list[tuple[str, str, dict[str, str]]] = [
    ("execute_command", "git status", {}),
    ("execute_command", "git status && rm -rf x", {}),
    ("execute_command", "uname -a", {}),
    ("execute_command", "rm -rf *", {"cwd": "HOME"}),
    ("execute_command", "rm -rf *", {"cwd": "HOME/proj"}),
    ("execute_command", "ls -la", {"caller": "local"}),
    ("execute_command", "ls -la", {"caller": "self"}),
    ("execute_command", "sudo rm -rf --no-preserve-root /", {"caller": "local"}),
    ("execute_command", "echo 'unterminated", {}),
    ("read_file", "notes.txt", {"cwd": "HOME/proj"}),
    ("read_file", "notes.txt", {"cwd": "proj"}),                 # relative --cwd
    ("read_file", "notes.txt", {"cwd": "HOME/x/../proj/"}),      # normalised as abspath does
    ("read_file", "~/proj/secret/key.txt", {}),
    ("read_file", ".env", {"cwd": "HOME/proj"}),
    ("read_file", "link/id_rsa", {"cwd": "HOME/proj"}),          # a symlink into ~/.ssh
    ("write_file", "~/proj/out.txt", {}),
    ("list_dir", "/tmp", {}),
    ("grep", "~/proj", {}),
    ("glob", "~/proj/*.txt", {}),
    ("download_file", "~/proj/dl.bin", {}),
    ("connect", "DB.Example.COM", {"op": "exec"}),
    ("connect", "db.example.com", {"op": "shell"}),
    ("ssh_session", "bad host!", {}),
    ("ask_agent", "peer.example.org", {"caller": "self"}),
    ("format_disk", "/dev/sda", {}),                             # unknown tool: the gate denies it
]


def _setup_tree(env: CmdopEnv) -> None:
    proj = env.home / "proj"
    (proj / "secret").mkdir(parents=True)
    (proj / "notes.txt").write_text("n\n")
    (proj / "link").symlink_to(env.home / ".ssh")


def _cwd(env: CmdopEnv, flags: dict[str, str]) -> str | None:
    cwd = flags.get("cwd")
    return cwd.replace("HOME", str(env.home)) if cwd else None


@pytest.mark.parametrize("mode", [None, "default"])
def test_batch_agrees_exactly_with_single_checks(cmdop_env: CmdopEnv, mode: str | None) -> None:
    write_policy(cmdop_env, POLICY)
    _setup_tree(cmdop_env)
    mode_flags = ["--mode", mode] if mode else []
    lines, singles = [], []
    for tool, arg, flags in CALLS:
        cwd = _cwd(cmdop_env, flags)
        argv = [*mode_flags, *(["--op", flags["op"]] if "op" in flags else []),
                *(["--caller", flags["caller"]] if "caller" in flags else []),
                *(["--cwd", cwd] if cwd else []), tool, arg]
        singles.append(check(cmdop_env, *argv))
        line: dict[str, Any] = {"tool": tool, "input": {TOOL_TARGET_FIELD.get(tool, "target"): arg}}
        line.update({k: v for k, v in (("op", flags.get("op")), ("caller", flags.get("caller")),
                                       ("cwd", cwd)) if v})
        lines.append(json.dumps(line))
    rc, out, err = batch(cmdop_env, lines, *mode_flags)
    assert rc == 0 and err == ""
    assert [o.pop("line") for o in out] == list(range(1, len(CALLS) + 1))
    for (tool, arg, _), single, got in zip(CALLS, singles, out):
        assert got == single, (tool, arg)
    # the table covers every source and action, so agreement means something
    assert {o["source"] for o in out} == {"floor", "bypass", "rule", "mode"}
    assert {o["decision"] for o in out} == {"allow", "deny", "ask"}


def test_caller_cwd_and_op_flags_are_the_lines_defaults_and_stdin_works(cmdop_env: CmdopEnv) -> None:
    _setup_tree(cmdop_env)
    proj = str(cmdop_env.home / "proj")
    lines = [json.dumps({"tool": "read_file", "input": {"path": ".env"}}),
             json.dumps({"tool": "execute_command", "input": {"command": "ls"}}),
             json.dumps({"tool": "execute_command", "input": {"command": "ls"}, "caller": "remote"}),
             json.dumps({"tool": "connect", "input": {"hostname": "h.example.com"}})]
    rc, out, _ = batch(cmdop_env, lines, "--caller", "local", "--cwd", proj, "--op", "exec", stdin=True)
    assert rc == 0
    assert out[0]["target"] == f"{proj}/.env" and out[0]["source"] == "floor"
    assert out[1]["source"] == "bypass" and out[2]["source"] == "mode"
    assert out[3]["operation"] == "exec"
    rc2, from_file, _ = batch(cmdop_env, lines, "--caller", "local", "--cwd", proj, "--op", "exec")
    assert (rc2, from_file) == (rc, out)
    # a last line without its newline is a line; --json changes nothing (always JSON lines)
    data = "\n".join(lines).encode()
    assert batch(cmdop_env, data, "--caller", "local", "--cwd", proj, "--op", "exec", "--json")[1] == out


def test_bad_lines_are_reported_by_number_and_the_rest_is_judged(cmdop_env: CmdopEnv) -> None:
    good = json.dumps({"tool": "execute_command", "input": {"command": "git status"}})
    raw = [
        good.encode(),                                                      # 1
        b"not json",                                                        # 2
        json.dumps({"tool": 3, "input": {}}).encode(),                      # 3 wrong type
        json.dumps({"tool": "read_file", "input": ["x"]}).encode(),         # 4 input not an object
        json.dumps({"tool": "read_file", "input": {"path": "x"}, "caller": "root"}).encode(),  # 5
        json.dumps({"tool": "read_file", "input": {"path": "x"}, "caler": "local"}).encode(),  # 6 typo
        b"",                                                                # 7 blank
        b"\xff\xfe{}",                                                      # 8 not UTF-8
        b"[1, 2]",                                                          # 9 not an object
        b"[" * 100_000,                                                     # 10 absurd nesting
        json.dumps({"tool": "format_disk", "input": {"target": "/dev/sda"}}).encode(),  # 11 judged
        json.dumps({"tool": "execute_command", "input": {"command": "echo \ud800"}}).encode(),  # 12 half a pair
        json.dumps({"tool": "execute_command", "input": {"command": "ls"}, "cwd": 7}).encode(),  # 13
        good.encode(),                                                      # 14
    ]
    rc, out, err = batch(cmdop_env, b"\n".join(raw) + b"\n")
    assert rc == 1
    assert [o["line"] for o in out] == list(range(1, 15))
    bad = {o["line"] for o in out if o.get("error") == "bad_input"}
    assert bad == {2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13}
    assert all(o["message"] for o in out if "error" in o)
    assert "not JSON" in out[1]["message"] and "'tool'" in out[2]["message"]
    assert "'caler'" in out[5]["message"] and "UTF-8" in out[7]["message"]
    assert out[10]["decision"] == "deny" and "unknown tool" in out[10]["reason"]   # as `check` says
    assert "Unicode" in out[11]["message"] and out[0] == dict(out[13], line=1)
    assert err.strip().splitlines()[-1] == "11 of 14 lines could not be judged (11 bad input)"


def test_audit_records_are_judged_from_their_target(cmdop_env: CmdopEnv) -> None:
    write_policy(cmdop_env, POLICY)
    _setup_tree(cmdop_env)
    base = {"ts": "2026-01-01T00:00:00Z", "operation": "", "mode": "strict", "rule_id": "",
            "input_digest": "sha256:" + "0" * 64, "ask_ms": 0, "hostname": "h", "user": "u"}

    def rec(**kw: Any) -> str:
        return json.dumps(dict(base, **kw))

    secret = "mysql -p[REDACTED] prod"
    lines = [
        rec(decision="allow", tool="execute_command", target="git status", source="rule", reason="r"),
        rec(decision="allow", tool="execute_command", target="ls", source="bypass", reason="local caller"),
        rec(decision="deny", tool="execute_command", target="ls", source="mode", reason="x",
            as_caller="remote"),
        rec(decision="allow", tool="execute_command", target="ls", source="bypass",
            reason="self caller (self_bypass: true) [as_caller=self]", as_caller="self"),
        rec(decision="allow", tool="read_file", target=str(cmdop_env.home / "proj/notes.txt"),
            source="rule", reason="r"),
        rec(decision="allow", tool="execute_command", target=secret, source="bypass",
            reason="local caller", redacted=True),
        rec(decision="allow", tool="execute_command", target="x" * 4096 + "…", source="rule", reason="r"),
        rec(decision="ask_allowed", tool="connect", operation="exec", target="db.example.com",
            source="rule", reason="r"),
    ]
    rc, out, err = batch(cmdop_env, lines)
    assert rc == 1 and err.strip().endswith("2 of 8 lines could not be judged "
                                            "(2 not judgeable from the audit record)")
    strip = [{k: v for k, v in o.items() if k != "line"} for o in out]
    assert strip[0] == check(cmdop_env, "execute_command", "git status")
    assert strip[1] == check(cmdop_env, "--caller", "local", "execute_command", "ls")
    assert strip[2] == check(cmdop_env, "execute_command", "ls")
    assert strip[3] == check(cmdop_env, "--caller", "self", "execute_command", "ls")
    assert strip[4] == check(cmdop_env, "read_file", str(cmdop_env.home / "proj/notes.txt"))
    assert (out[5]["error"], out[5]["why"]) == ("not_judgeable", "redacted")
    assert (out[6]["error"], out[6]["why"]) == ("not_judgeable", "truncated")
    assert strip[7] == check(cmdop_env, "--op", "exec", "connect", "db.example.com")


def test_batch_usage_and_policy_errors(cmdop_env: CmdopEnv) -> None:
    r = cmdop_env.run("permissions", "check", "--batch", "-", "execute_command", "ls", input="")
    assert r.returncode == 2 and "give no TOOL" in r.stderr
    r = cmdop_env.run("permissions", "check")
    assert r.returncode == 2 and "check needs TOOL and ARG" in r.stderr
    r = cmdop_env.run("permissions", "check", "--batch", str(cmdop_env.home / "missing.jsonl"))
    assert r.returncode == 1 and r.stderr.startswith("cmdop: error: cannot read")
    assert batch(cmdop_env, [], stdin=True)[:2] == (0, [])                     # nothing in, nothing out
    write_policy(cmdop_env, "version: 1\nrules:\n  - rule: 'execute_command(x)'\n    action: alow\n")
    r = cmdop_env.run("permissions", "check", "--batch", "-", input="{}\n")
    assert r.returncode == 1 and r.stdout == "" and r.stderr.startswith("cmdop: error: ") and "permissions.yaml: line 4:" in r.stderr


# ---- replay on a real audit log -----------------------------------------------------------

OLD = """\
version: 1
mode: strict
rules:
  - rule: "execute_command(echo *)"
    action: allow
  - rule: "execute_command(uname *)"
    action: ask
  - rule: "read_file(~/proj/**)"
    action: allow
"""
# Denies one recorded call (echo one), allows another (ls /); the rest judges as before.
NEW = """\
version: 1
mode: strict
rules:
  - rule: "execute_command(echo one)"
    action: deny
  - rule: "execute_command(echo *)"
    action: allow
  - rule: "execute_command(uname *)"
    action: ask
  - rule: "execute_command(ls *)"
    action: allow
  - rule: "read_file(~/proj/**)"
    action: allow
"""


def _audit(env: CmdopEnv) -> list[dict[str, Any]]:
    text = (env.state_dir / "audit.log").read_text()
    return [json.loads(x) for x in text.splitlines()]


def _real_log(env: CmdopEnv) -> str:
    """Real calls: two local ones through `cmdop run` (in-process), then remote and self ones
    through the agent's socket; a second-boundary between them; returns that boundary. `id`
    (local) and `id -u` (self) are allowed only by the bypass: re-judged as remote they would
    change, so an unchanged replay shows the caller kinds were read from the records."""
    from test_daemon_helpers import start_daemon

    write_policy(env, OLD)
    _setup_tree(env)
    for tool, inp in (("execute_command", {"command": "id"}),
                      ("read_file", {"path": str(env.home / "proj/notes.txt")})):
        r = env.run("run", tool, "--input", json.dumps(inp))
        assert r.returncode == 0, r.stdout + r.stderr
    cut = int(time.time()) + 1
    time.sleep(max(0.0, cut - time.time()) + 0.05)
    d = start_daemon(env)
    try:
        for tool, inp in (("execute_command", {"command": "echo one"}),            # allow → deny
                          ("execute_command", {"command": "ls /"}),                # deny → allow
                          ("read_file", {"path": "proj/notes.txt"}),               # unchanged
                          ("execute_command", {"command": "uname -a"}),            # ask, no approver
                          ("read_file", {"path": "~/.ssh/id_rsa"}),                # floor
                          ("execute_command", {"command": "echo --password=hunter2sec"})):  # redacted
            d.call(tool, inp, as_caller="remote")
        d.call("execute_command", {"command": "id -u"}, as_caller="self")
    finally:
        assert d.stop() == 0
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cut))


def test_replay_lists_exactly_the_transitions_a_new_policy_makes(cmdop_env: CmdopEnv) -> None:
    cut = _real_log(cmdop_env)
    log = _audit(cmdop_env)
    assert len(log) == 9 and log[0]["source"] == "bypass" and "as_caller" not in log[0]
    seq = {r["target"]: r["seq"] for r in log}
    assert next(r for r in log if r["target"] == "uname -a")["reason"] == "no approver attached [as_caller=remote]"

    # under the policy that wrote the log, nothing changes
    r = cmdop_env.run("permissions", "replay", "--json")
    assert r.returncode == 0, r.stderr
    same = json.loads(r.stdout)
    assert same["changed"] == []
    assert same["summary"] | {"policy": None} == {
        "records": 9, "rejudged": 7, "changed": 0, "unchanged": 7, "floor_kept": 1, "skipped": 1,
        "skipped_by": {"redacted": 1}, "transitions": {}, "policy": None, "mode": "strict", "since": None}
    assert [(s["seq"], s["why"]) for s in same["skipped"]] == [(seq["echo --password=[REDACTED]"], "redacted")]

    new = write_policy(cmdop_env, NEW, cmdop_env.home / "new.yaml")
    r = cmdop_env.run("permissions", "replay", "--policy", str(new), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"changed", "skipped", "summary"}
    assert [(c["seq"], c["transition"]) for c in out["changed"]] == [
        (seq["echo one"], "allow → deny"), (seq["ls /"], "deny → allow")]
    one = out["changed"][0]
    assert set(one) == {"seq", "ts", "tool", "operation", "target", "caller", "transition", "old", "new"}
    assert one["caller"] == "remote" and one["target"] == "echo one"
    assert one["old"]["source"] == "rule" and one["old"]["reason"].endswith("[as_caller=remote]")
    assert one["new"]["source"] == "rule" and one["new"]["rule_id"].startswith("r-")
    assert out["summary"]["transitions"] == {"allow → deny": 1, "deny → allow": 1}
    assert out["summary"]["policy"] == str(new) and out["summary"]["changed"] == 2

    human = cmdop_env.run("permissions", "replay", "--policy", str(new))
    assert human.returncode == 0 and human.stderr == ""
    lines = human.stdout.splitlines()
    assert lines[0] == "allow → deny (1)" and "echo one" in lines[1]
    assert lines[4] == "deny → allow (1)" and "ls /" in lines[5]
    assert lines[-1].startswith("replayed 9 audit records under ") and "7 re-judged, 2 changed" in lines[-1]
    assert "1 floor denials kept" in lines[-1] and "1 skipped: 1 redacted target" in lines[-1]

    # --since: only the calls made through the agent, after the second boundary
    r = cmdop_env.run("permissions", "replay", "--policy", str(new), "--since", cut, "--json")
    since = json.loads(r.stdout)["summary"]
    assert (since["records"], since["changed"], since["since"]) == (7, 2, cut)
    r = cmdop_env.run("permissions", "replay", "--since", "2099-01-01T00:00Z", "--json")
    assert json.loads(r.stdout)["summary"]["records"] == 0


def test_replay_compares_asks_before_the_answer_and_self_callers_as_self(cmdop_env: CmdopEnv) -> None:
    _real_log(cmdop_env)
    seq = {r["target"]: r["seq"] for r in _audit(cmdop_env)}
    changed = NEW.replace('"execute_command(uname *)"\n    action: ask', '"execute_command(uname *)"\n    action: allow')
    new = write_policy(cmdop_env, changed.replace("mode: strict", "mode: strict\nself_bypass: false"),
                       cmdop_env.home / "new.yaml")
    out = json.loads(cmdop_env.run("permissions", "replay", "--policy", str(new), "--json").stdout)
    moves = {c["target"]: (c["transition"], c["old"]["recorded"], c["caller"]) for c in out["changed"]}
    # the recorded "deny (no approver attached)" was the gate's ask; local calls stay bypassed
    assert moves["uname -a"] == ("ask → allow", "deny", "remote")
    assert moves["id -u"] == ("allow → deny", "allow", "self")     # self_bypass: false now
    assert "id" not in moves and seq["id"] == 1                     # a local caller stays bypassed


def test_replay_with_a_broken_policy_is_one_error_line(cmdop_env: CmdopEnv) -> None:
    bad = write_policy(cmdop_env, "version: 1\nrules:\n  - rule: 'execute_command(x)'\n    action: alow\n",
                       cmdop_env.home / "bad.yaml")
    r = cmdop_env.run("permissions", "replay", "--policy", str(bad))
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr
    assert [x for x in r.stderr.splitlines() if x.startswith("cmdop: error:")] == [
        f"cmdop: error: {bad}: line 4: action 'alow' is not one of allow, ask, deny"]
    assert f"hint: fix {bad};" in r.stderr          # the file given, not "permissions.yaml"
    r = cmdop_env.run("permissions", "replay", "--since", "yesterday")
    assert r.returncode == 2 and "bad --since value" in r.stderr
    r = cmdop_env.run("permissions", "replay", "--policy", str(cmdop_env.home / "none.yaml"))
    assert r.returncode == 1 and "no policy file at" in r.stderr
    r = cmdop_env.run("permissions", "replay")                # no log, no policy: nothing to say
    assert r.returncode == 0 and "replayed 0 audit records" in r.stdout


# ---- the property: one line out per line in, in order ------------------------------------

_TOOLS = st.sampled_from([*TOOL_TARGET_FIELD, "nope"])
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_CALL = st.builds(
    lambda tool, arg, extra: json.dumps(dict({"tool": tool, "input": {TOOL_TARGET_FIELD.get(tool, "target"): arg}},
                                             **extra)),
    _TOOLS, _TEXT,
    st.fixed_dictionaries({}, optional={"caller": st.sampled_from(["local", "self", "remote", "root"]),
                                        "cwd": st.sampled_from(["/", "/tmp", "rel", ""]),
                                        "op": st.sampled_from(["", "exec"])}))
_RECORD = st.builds(lambda tool, target, decision: json.dumps(
    {"tool": tool, "target": target, "decision": decision, "source": "rule", "reason": ""}),
    _TOOLS, _TEXT, st.sampled_from(["allow", "deny", "ask_allowed", "weird"]))
_JUNK = st.one_of(st.binary(max_size=30), st.from_regex(r"[\[\]{}\"a-z0-9:, ]{0,20}", fullmatch=True).map(str.encode))
_LINE = st.one_of(_CALL.map(str.encode), _RECORD.map(str.encode), _JUNK).map(
    lambda b: b.replace(b"\n", b" "))


@pytest.fixture(scope="module")
def inproc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from cmdop.core.settings import Settings

    home = tmp_path_factory.mktemp("home")
    env = {"CMDOP_CONFIG_DIR": str(home / "cfg"), "CMDOP_STATE_DIR": str(home / "state"),
           "CMDOP_HOME": str(home / ".cmdop"), "CMDOP_SOCKET_PATH": str(home / "s.sock")}
    return Settings.from_env(env, str(home))


@given(lines=st.lists(_LINE, max_size=25))
def test_batch_keeps_one_line_per_line_in_order(inproc: Any, lines: list[bytes]) -> None:
    from cmdop.cli.common import CliContext
    from cmdop.cli.main import build_parser

    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl") as f:
        f.write(b"".join(line + b"\n" for line in lines))
        f.flush()
        args = build_parser().parse_args(["permissions", "check", "--batch", f.name])
        out, err = io.StringIO(), io.StringIO()
        rc = args.func(args, CliContext(inproc, False, "warning", "text", stdout=out, stderr=err))
    got = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [o["line"] for o in got] == list(range(1, len(lines) + 1))
    assert all(("decision" in o) != ("error" in o) for o in got)
    failed = sum(1 for o in got if "error" in o)
    assert rc == (1 if failed else 0)
    assert (err.getvalue() == "") == (failed == 0)


def test_replay_reads_every_file_oldest_first(cmdop_env: CmdopEnv) -> None:
    from cmdop.adapters import audit_reader

    state = cmdop_env.state_dir
    state.mkdir(parents=True)
    seq = iter(range(1, 100))

    def write(name: str, *targets: str) -> None:
        (state / name).write_text("".join(json.dumps({
            "ts": "2026-01-01T00:00:0%dZ" % (n % 10), "decision": "deny", "tool": "execute_command",
            "operation": "", "target": t, "mode": "strict", "source": "mode", "rule_id": "", "reason": "r",
            "as_caller": "remote", "seq": n}) + "\n" for t, n in ((t, next(seq)) for t in targets)))

    write("audit.log.2", "git a", "ls")
    write("audit.log.1", "git b")
    write("audit.log", "git c", "git d")
    with open(state / "audit.log", "a") as f:
        f.write("{not a record\n")                     # skipped, as `audit` skips it
    assert [r["seq"] for r in audit_reader.records(str(state))] == [1, 2, 3, 4, 5]
    write_policy(cmdop_env, POLICY)
    out = json.loads(cmdop_env.run("permissions", "replay", "--json").stdout)
    assert [c["target"] for c in out["changed"]] == ["git a", "git b", "git c", "git d"]
    assert out["summary"]["records"] == 5 and out["summary"]["unchanged"] == 1
    since = json.loads(cmdop_env.run("permissions", "replay", "--json", "--since", "2026-01-01T00:00:05Z").stdout)
    assert [c["target"] for c in since["changed"]] == ["git d"]
