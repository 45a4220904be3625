"""Tool calls through the real daemon's socket: local calls, the ask flow end to end (approved,
denied, timeout, no approver, no replay), kept rules, hot reload, and SIGTERM mid-command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from test_daemon_helpers import Approver, CallInThread, start_daemon, wait_for, write_policy

from cmdop.core.errors import DaemonError

ASK_POLICY = """\
version: 1
mode: default
ask_timeout_s: {timeout}
rules: []
"""


def audit_lines(env) -> list[dict]:
    path = Path(env.state_dir) / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def ask_daemon(cmdop_env):
    write_policy(cmdop_env, ASK_POLICY.format(timeout=20))
    d = start_daemon(cmdop_env)
    yield d
    if d.proc.poll() is None:
        assert d.stop() == 0
    assert "Traceback" not in d.log(), d.log()   # clients coming and going are not crashes


def test_a_local_call_runs_through_the_socket_and_is_audited(cmdop_env, ask_daemon):
    out = ask_daemon.call("execute_command", {"command": "echo hi"})
    assert out["exit_code"] == 0 and out["stdout"] == "hi\n"
    line = audit_lines(cmdop_env)[-1]
    assert line["decision"] == "allow" and line["source"] == "bypass" and line["user"] == "root"
    assert line["target"] == "echo hi" and line["hostname"] == os.uname().nodename
    # `cmdop run` goes through the daemon too
    run = cmdop_env.run("run", "execute_command", "--input", '{"command": "echo via-cli"}')
    assert run.returncode == 0 and json.loads(run.stdout)["stdout"] == "via-cli\n"
    with ask_daemon.client() as c:
        assert c.status()["counters"]["calls"] == 2


@pytest.mark.parametrize("command", ["{\U0002c744", "echo {\U000a2854$", "$(" * 3000 + "x" + ")" * 3000])
def test_hostile_command_text_is_denied_and_the_agent_lives_on(cmdop_env, ask_daemon, command):
    """Text that once crashed the bash grammar and absurd nesting: a remote caller gets a
    denial with a reason, and the agent keeps serving."""
    out = ask_daemon.call("execute_command", {"command": command}, as_caller="remote")
    assert out["error"] == "permission_denied" and out["reason"], out
    assert ask_daemon.proc.poll() is None
    line = audit_lines(cmdop_env)[-1]      # audited like any call, as one valid JSON line
    assert line["tool"] == "execute_command" and line["decision"] == "deny"
    assert line["input_digest"].startswith("sha256:")
    assert ask_daemon.call("execute_command", {"command": "echo alive"})["stdout"] == "alive\n"


def test_a_nul_byte_is_bad_input_and_the_agent_lives_on(cmdop_env, ask_daemon):
    """A NUL byte cannot be in a command line: a mistake in the input (bad_input naming the
    field), not a denial; nothing is run or judged."""
    before = len(audit_lines(cmdop_env)) if (cmdop_env.state_dir / "audit.log").exists() else 0
    out = ask_daemon.call("execute_command", {"command": "\x00rm -rf /"}, as_caller="remote")
    assert (out["error"], out["field"]) == ("bad_input", "command"), out
    assert ask_daemon.proc.poll() is None
    assert (len(audit_lines(cmdop_env)) if (cmdop_env.state_dir / "audit.log").exists() else 0) == before
    assert ask_daemon.call("execute_command", {"command": "echo alive"})["stdout"] == "alive\n"


@pytest.mark.parametrize("as_caller", [None, "remote"])
def test_a_lone_surrogate_is_bad_input_and_the_agent_lives_on(cmdop_env, ask_daemon, as_caller):
    """Half a surrogate pair (JSON allows "\\ud800") is no text a command, path or file can
    hold: malformed input, never judged (it was denied by the floor, or audited and run into an
    encoding error) — `bad_input` naming the field, no audit line (CONTRACT: input mistakes are
    not denials)."""
    before = len(audit_lines(cmdop_env))
    out = ask_daemon.call("execute_command", {"command": "echo \ud800 && rm -rf /"}, as_caller=as_caller)
    assert out["error"] == "bad_input" and out["field"] == "command", out
    assert ask_daemon.proc.poll() is None and len(audit_lines(cmdop_env)) == before
    assert ask_daemon.call("execute_command", {"command": "echo alive"})["stdout"] == "alive\n"


def test_no_approver_attached_denies_at_once(cmdop_env, ask_daemon):
    out = ask_daemon.call("execute_command", {"command": "echo nobody"}, as_caller="remote")
    assert out["error"] == "permission_denied" and out["reason"].startswith("no approver attached")
    line = audit_lines(cmdop_env)[-1]
    # every reason of a downgraded call says so (found by a black-box pass: this one did not)
    assert line["decision"] == "deny" and line["reason"] == "no approver attached [as_caller=remote]"
    assert line["user"] == "root"     # the audit identity is the real peer, not the claim
    # strict mode for the same downgraded caller: the gate's reason carries the downgrade
    write_policy(cmdop_env, "version: 1\nmode: strict\nrules: []\n")
    with ask_daemon.client() as c:
        assert c.reload()["policy_ok"] is True
    out = ask_daemon.call("execute_command", {"command": "echo strict"}, as_caller="remote")
    assert out["error"] == "permission_denied"
    line = audit_lines(cmdop_env)[-1]
    assert line["source"] == "mode" and line["reason"].endswith("[as_caller=remote]")
    # a "self" caller is bypassed by default (self_bypass: true), and the audit says so
    out = ask_daemon.call("execute_command", {"command": "echo self"}, as_caller="self")
    assert out["stdout"] == "self\n"
    line = audit_lines(cmdop_env)[-1]
    assert line["source"] == "bypass" and line["reason"].endswith("[as_caller=self]")


def test_ask_goes_to_every_approver_first_answer_wins_then_denied(cmdop_env, ask_daemon):
    approver, second = Approver(ask_daemon.socket_path), Approver(ask_daemon.socket_path)
    try:
        call = CallInThread(ask_daemon, "execute_command", {"command": "echo approved"},
                            as_caller="remote")
        ask = approver.next_ask()
        assert second.next_ask()["ask_id"] == ask["ask_id"]
        assert ask["tool"] == "execute_command" and ask["target"] == "echo approved"
        assert ask["caller"]["kind"] == "remote" and ask["input_digest"].startswith("sha256:")
        assert approver.answer(ask, "allow", digest=ask["input_digest"])["outcome"] == "ask_allowed"
        with pytest.raises(DaemonError, match="no pending ask"):
            second.answer(ask, "deny")
        assert call.join()["stdout"] == "approved\n"
        second.close()
        line = audit_lines(cmdop_env)[-1]
        assert line["decision"] == "ask_allowed" and line["reason"].endswith("[as_caller=remote]")

        call = CallInThread(ask_daemon, "execute_command", {"command": "echo denied"},
                            as_caller="remote")
        ask = approver.next_ask()
        approver.answer(ask, "deny")
        out = call.join()
        assert out["error"] == "permission_denied"
        assert audit_lines(cmdop_env)[-1]["decision"] == "ask_denied"
    finally:
        approver.close()


def test_an_approval_cannot_be_replayed_for_a_different_input(cmdop_env, ask_daemon):
    approver = Approver(ask_daemon.socket_path)
    try:
        first = CallInThread(ask_daemon, "execute_command", {"command": "echo one"}, as_caller="remote")
        ask1 = approver.next_ask()
        approver.answer(ask1, "allow")
        assert first.join()["stdout"] == "one\n"

        second = CallInThread(ask_daemon, "execute_command", {"command": "echo two; id"},
                              as_caller="remote")
        ask2 = approver.next_ask()
        assert ask2["ask_id"] != ask1["ask_id"] and ask2["input_digest"] != ask1["input_digest"]
        with pytest.raises(DaemonError, match="no pending ask"):
            approver.answer(ask1, "allow")                    # the old id is spent
        with pytest.raises(DaemonError, match="different input"):
            approver.answer(ask2, "allow", digest=ask1["input_digest"])
        # the CLI sees it still pending, and denies it by id
        pending = json.loads(cmdop_env.run("permissions", "pending", "--json").stdout)["asks"]
        assert [a["ask_id"] for a in pending] == [ask2["ask_id"]]
        deny = cmdop_env.run("permissions", "deny", ask2["ask_id"])
        assert deny.returncode == 0, deny.stderr
        assert second.join()["error"] == "permission_denied"
        # "once" keeps no rule: the same first call asks again
        again = CallInThread(ask_daemon, "execute_command", {"command": "echo one"}, as_caller="remote")
        approver.answer(approver.next_ask(), "deny")
        assert again.join()["error"] == "permission_denied"
    finally:
        approver.close()


def _approve_by_cli(cmdop_env, approver, scope: str) -> dict:
    """`cmdop permissions approve ID --scope SCOPE --json` for the ask `approver` sees next;
    the answer it prints."""
    approve = cmdop_env.run("permissions", "approve", approver.next_ask()["ask_id"],
                            "--scope", scope, "--json")
    assert approve.returncode == 0, approve.stderr
    return json.loads(approve.stdout)


def test_session_and_always_answers_keep_exact_rules(cmdop_env, ask_daemon):
    approver = Approver(ask_daemon.socket_path)
    try:
        call = CallInThread(ask_daemon, "execute_command", {"command": "echo kept"}, as_caller="remote")
        answer = _approve_by_cli(cmdop_env, approver, "session")
        assert answer["rules"] and "rule_error" not in answer
        assert call.join()["stdout"] == "kept\n"
        # same call again: allowed by the session rule, no ask
        out = ask_daemon.call("execute_command", {"command": "echo kept"}, as_caller="remote")
        assert out["stdout"] == "kept\n" and audit_lines(cmdop_env)[-1]["source"] == "rule"
        assert approver.asks.empty()

        call = CallInThread(ask_daemon, "execute_command", {"command": "echo forever"},
                            as_caller="remote")
        approver.answer(approver.next_ask(), "allow", scope="always")
        assert call.join()["stdout"] == "forever\n"
        text = (Path(cmdop_env.config_dir) / "permissions.yaml").read_text()
        assert "echo forever" in text and "echo kept" not in text
        # a different command is not covered by the literal rule
        other = CallInThread(ask_daemon, "execute_command", {"command": "echo forever2"},
                             as_caller="remote")
        approver.answer(approver.next_ask(), "deny")
        assert other.join()["error"] == "permission_denied"
    finally:
        approver.close()


def test_an_always_answer_an_ask_rule_would_overrule_says_so(cmdop_env):
    """A global `ask` rule asked; "always" keeps an allow rule in the same scope, where ask wins
    over allow: the approver is told the kept rule changes nothing (and what would), rather
    than being shown a rule that does not stop the next ask."""
    write_policy(cmdop_env, ASK_POLICY.format(timeout=20).replace(
        "rules: []", "rules:\n  - rule: execute_command(echo restart *)\n    action: ask"))
    d = start_daemon(cmdop_env)
    approver = Approver(d.socket_path)
    try:
        call = CallInThread(d, "execute_command", {"command": "echo restart web2"}, as_caller="remote")
        answer = _approve_by_cli(cmdop_env, approver, "always")
        assert "still 'ask'" in answer.get("rule_error", ""), answer
        assert "session" in answer["rule_error"], answer
        assert call.join()["stdout"] == "restart web2\n"          # the answer itself stands
        call = CallInThread(d, "execute_command", {"command": "echo restart web3"}, as_caller="remote")
        human = cmdop_env.run("permissions", "approve", approver.next_ask()["ask_id"], "--scope", "always")
        assert human.returncode == 0 and "still 'ask'" in human.stdout + human.stderr, (human.stdout, human.stderr)
        call.join()
    finally:
        approver.close()
        if d.proc.poll() is None:
            assert d.stop() == 0


def test_answering_an_ask_that_is_not_pending_says_what_to_do(cmdop_env, ask_daemon):
    for argv in (("approve", "ask-nope"), ("deny", "ask-nope", "--scope", "session")):
        out = cmdop_env.run("permissions", *argv)
        assert out.returncode != 0 and "cmdop: error:" in out.stderr, out.stderr
        assert "hint: list the asks waiting now: `cmdop permissions pending`" in out.stderr, out.stderr


def test_an_approved_compound_command_is_not_asked_again(cmdop_env, ask_daemon):
    approver = Approver(ask_daemon.socket_path)
    try:
        cmd = {"command": "echo pipe | tr a-z A-Z"}
        call = CallInThread(ask_daemon, "execute_command", cmd, as_caller="remote")
        assert _approve_by_cli(cmdop_env, approver, "session")["rules"] == [
            "execute_command(echo pipe)", "execute_command(tr a-z A-Z)"]
        assert call.join()["stdout"] == "PIPE\n"
        out = ask_daemon.call("execute_command", cmd, as_caller="remote")
        assert out["stdout"] == "PIPE\n" and approver.asks.empty()
        # a denial of a compound command applies once and says why no rule was kept
        call = CallInThread(ask_daemon, "execute_command", {"command": "echo x | wc -c"},
                            as_caller="remote")
        deny = cmdop_env.run("permissions", "deny", approver.next_ask()["ask_id"], "--scope",
                             "session")
        assert deny.returncode == 0 and "rule not kept" in deny.stdout, deny.stdout
        assert call.join()["error"] == "permission_denied"
    finally:
        approver.close()


def test_no_answer_is_ask_timeout(cmdop_env):
    write_policy(cmdop_env, ASK_POLICY.format(timeout=1))
    d = start_daemon(cmdop_env)
    approver = Approver(d.socket_path)
    try:
        out = d.call("execute_command", {"command": "echo late"}, as_caller="remote")
        assert out["error"] == "permission_denied" and "ask_timeout" in out["reason"]
        assert audit_lines(cmdop_env)[-1]["decision"] == "ask_timeout"
    finally:
        approver.close()
        assert d.stop() == 0


def test_hot_reload_applies_a_good_file_and_keeps_the_last_good_on_a_bad_one(cmdop_env):
    write_policy(cmdop_env, "version: 1\nmode: strict\nrules: []\n")
    d = start_daemon(cmdop_env)
    try:
        probe = {"command": "echo reloaded"}
        assert d.call("execute_command", probe, as_caller="remote")["error"] == "permission_denied"
        write_policy(cmdop_env, """\
            version: 1
            mode: strict
            rules:
              - rule: "execute_command(echo *)"
                action: allow
            """)
        wait_for(lambda: "stdout" in d.call("execute_command", probe, as_caller="remote"),
                 15, "the new policy to apply")
        write_policy(cmdop_env, "version: 1\nmode: strict\nrules: [unclosed\n")
        wait_for(lambda: "policy rejected" in d.log(), 15, "the bad policy to be logged")
        assert d.call("execute_command", probe, as_caller="remote")["stdout"] == "reloaded\n"
        status = json.loads(cmdop_env.run("agent", "status", "--json").stdout)
        assert status["state"] == "DEGRADED" and status["policy_error"]
        # SIGHUP reloads as well (the file is still bad: still kept)
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: reloading policy" in d.log(), 15, "SIGHUP to be handled")
        with d.client() as c:
            assert c.reload()["policy_ok"] is False
    finally:
        assert d.stop() == 0


def _approvers(d) -> int:
    with d.client() as c:
        return int(c.status()["approvers"])


def _pids_running(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline and "pytest" not in cmdline:
                found.append(int(entry))
    return found


def test_sigterm_kills_a_running_command_writes_its_audit_line_and_exits_0(cmdop_env, ask_daemon):
    marker = f"sleep 100.{os.getpid() % 1000:03d}1"
    call = CallInThread(ask_daemon, "execute_command", {"command": marker})
    try:
        wait_for(lambda: _pids_running(marker), 30, "the command to start")
        assert ask_daemon.stop() == 0
        wait_for(lambda: not _pids_running(marker), 20, "the command to be killed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ndaemon log:\n{ask_daemon.log()}") from None
    assert any(line["target"] == marker for line in audit_lines(cmdop_env))
    try:
        out = call.join()
        assert out.get("cancelled") or out.get("exit_code") != 0
    except DaemonError:
        pass  # the connection may close before the cancelled result is sent


def test_watch_cli_without_a_tty_streams_json_and_takes_answers_from_stdin(cmdop_env, ask_daemon):
    import subprocess
    import sys

    watch = subprocess.Popen([sys.executable, "-m", "cmdop", "permissions", "watch", "--json"],
                             env=cmdop_env.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _approvers(ask_daemon) == 1, 15, "watch to attach")
        call = CallInThread(ask_daemon, "execute_command", {"command": "echo from-watch"},
                            as_caller="remote")
        ask = json.loads(watch.stdout.readline())
        assert ask["event"] == "ask" and ask["target"] == "echo from-watch"
        watch.stdin.write(f"approve {ask['ask_id']}\n")
        watch.stdin.flush()
        assert call.join()["stdout"] == "from-watch\n"
        # its own answer ends the ask with a `resolved` event too (found by a black-box pass)
        assert json.loads(watch.stdout.readline()) == {"event": "resolved", "ask_id": ask["ask_id"],
                                                       "outcome": "ask_allowed"}
        watch.stdin.close()                      # EOF: watch exits instead of hanging
        assert watch.wait(timeout=15) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        for stream in (watch.stdout, watch.stderr):
            stream.close()


def test_watch_cli_on_a_terminal_shows_hostile_text_escaped_and_takes_y(cmdop_env, ask_daemon):
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    watch = subprocess.Popen([sys.executable, "-m", "cmdop", "permissions", "watch"],
                             env=cmdop_env.env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    try:
        wait_for(lambda: _approvers(ask_daemon) == 1, 15, "watch to attach")
        # (C0 controls such as ESC never reach an approver now: the gate refuses them outright.
        # C1 controls, bidi and zero-width characters pass the gate and must be made visible.)
        hostile = "echo \u009b2Jsafe\u202etxt.sh\u200b"
        call = CallInThread(ask_daemon, "execute_command", {"command": hostile}, as_caller="remote")

        def prompt_shown() -> bool:
            nonlocal seen
            seen += os.read(master, 65536)
            return b"> " in seen
        wait_for(prompt_shown, 15, "the prompt")
        text = seen.decode("utf-8", "replace")
        assert "\\x9b2Jsafe<U+202E>txt.sh<U+200B>" in text
        assert "\x9b" not in text and "\u202e" not in text and "\u200b" not in text
        assert "caller: remote root@" in text and "cwd:" in text and "rule:" in text
        os.write(master, b"y\n")
        out = call.join()
        assert out["exit_code"] == 0
        # the answered ask is not shown again; the next one is, and "n" denies it
        seen = b""
        call = CallInThread(ask_daemon, "execute_command", {"command": "echo second"},
                            as_caller="remote")
        wait_for(lambda: prompt_shown() and b"echo second" in seen, 15, "the second prompt")
        assert b"safe" not in seen
        os.write(master, b"n\n")
        assert call.join()["error"] == "permission_denied"
    finally:
        watch.terminate()
        watch.wait(timeout=15)
        os.close(master)


def test_an_audit_log_that_cannot_be_appended_makes_the_agent_degraded(cmdop_env):
    """Found by a black-box pass: with audit.log immutable (chattr +i) remote calls were refused
    "audit log unwritable" while `agent status` said ONLINE, audit_ok true: it probed the
    directory, not the log."""
    if shutil.which("chattr") is None:
        pytest.skip("no chattr here")
    d = start_daemon(cmdop_env)
    log_file = cmdop_env.state_dir / "audit.log"
    try:
        d.call("execute_command", {"command": "true"})             # the log exists now
        made = subprocess.run(["chattr", "+i", str(log_file)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"chattr +i refused here: {made.stderr.strip()}")
        wait_for(lambda: json.loads(cmdop_env.run("agent", "status", "--json").stdout)["state"]
                 == "DEGRADED", 15, "the agent to report DEGRADED")
        status = json.loads(cmdop_env.run("agent", "status", "--json").stdout)
        assert status["audit_ok"] is False
        subprocess.run(["chattr", "-i", str(log_file)], check=True)
        wait_for(lambda: json.loads(cmdop_env.run("agent", "status", "--json").stdout)["state"]
                 == "ONLINE", 15, "the agent to report ONLINE again")
    finally:
        subprocess.run(["chattr", "-i", str(log_file)], capture_output=True)
        assert d.stop() == 0
