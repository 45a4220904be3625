"""`cmdop password set|clear|status` and the gate it puts on local security changes, through the
real CLI in-process in a private HOME; then the store itself (cmdop.adapters.password_store):
the hash file, the persisted slow-down, sessions, and the caller's session cache."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cmdop.adapters import password_store as ps
from cmdop.core.errors import SecretFileError
from cmdop.core.settings import Settings
from tests.integration.inprocess_cli import Cli, cli  # noqa: F401  (the fixture)

PW = "correct horse battery"
KEY = "cmdop_0123456789ab_" + "A" * 40 + "a-_"


def settings_of(cli: Cli) -> Settings:
    return Settings.from_env(os.environ, str(cli.home))


def password_file(cli: Cli) -> Path:
    return cli.home / ".config" / "cmdop" / "password"


def audit_lines(cli: Cli) -> list[dict[str, Any]]:
    path = cli.home / ".local" / "state" / "cmdop" / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def set_password(cli: Cli, pw: str = PW) -> None:
    r = cli("password", "set", "--password-stdin", stdin=pw + "\n")
    assert r.code == 0, r.err


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def typed(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """getpass answers, in order; returns the prompts it was asked with."""
    prompts: list[str] = []
    queue = list(answers)

    def fake(prompt: str = "") -> str:
        prompts.append(prompt)
        return queue.pop(0)

    monkeypatch.setattr("getpass.getpass", fake)
    return prompts


# -- set / status / clear ---------------------------------------------------------------------

def test_set_status_clear(cli: Cli) -> None:
    r = cli("password", "status", "--json")
    assert r.code == 0 and r.json()["password_set"] is False
    assert r.json()["remote_requires_password"] is False and r.json()["active_sessions"] == 0

    set_password(cli)
    path = password_file(cli)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert (stored["kdf"], stored["n"], stored["r"], stored["p"]) == ("scrypt", 2**15, 8, 1)
    assert PW not in path.read_text()

    r = cli("password", "status", "--json")
    out = r.json()
    assert out["password_set"] is True and out["failures"] == 0 and out["retry_in_s"] == 0
    assert out["remote_password_in_force"] is False           # config.yaml does not ask for it
    assert stored["hash"] not in r.out and stored["salt"] not in r.out
    human = cli("password", "status")
    assert "password: set" in human.out and "remote callers need it: no" in human.out

    r = cli("password", "clear")                              # no terminal, no --password-stdin
    assert r.code == 4 and "needs this machine's password" in r.err and "--password-stdin" in r.err
    assert path.exists()
    r = cli("password", "clear", "--password-stdin", stdin=PW + "\n")
    assert r.code == 0, r.err
    assert not path.exists() and cli("password", "status", "--json").json()["password_set"] is False
    assert cli("password", "clear").code == 0                 # nothing to clear: fine
    # Every event is audited; the password never.
    events = [(a["tool"], a["operation"], a["rule_id"]) for a in audit_lines(cli)]
    assert ("password", "password set", "password:set") in events
    assert ("password", "password clear", "password:ok") in events
    assert ("password", "password clear", "password:cleared") in events
    assert PW not in (cli.home / ".local" / "state" / "cmdop" / "audit.log").read_text()


def test_status_shows_remote_requirement_and_a_bad_config(cli: Cli) -> None:
    cfg = cli.home / ".config" / "cmdop" / "config.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("remote_requires_password: true\npassword_session_ttl: 10m\n")
    os.chmod(cfg, 0o600)
    out = cli("password", "status", "--json").json()
    assert out["remote_requires_password"] is True and out["password_session_ttl_s"] == 600
    assert out["remote_password_in_force"] is False           # no password yet
    set_password(cli)
    assert cli("password", "status", "--json").json()["remote_password_in_force"] is True
    cfg.write_text("remote_requires_password: maybe\n")
    out = cli("password", "status", "--json").json()
    assert out["remote_requires_password"] is True and "config_error" in out   # fail closed


def test_set_rejects_short_passwords_and_changing_needs_the_current_one(cli: Cli) -> None:
    r = cli("password", "set", "--password-stdin", stdin="short\n")
    assert r.code == 2 and "at least 8" in r.err and not password_file(cli).exists()
    r = cli("password", "set", "--password-stdin")
    assert r.code == 2 and "no new password" in r.err
    set_password(cli)
    before = password_file(cli).read_text()
    r = cli("password", "set", "--password-stdin", stdin="not the password\nnew password 1\n")
    assert r.code == 4 and "wrong password" in r.err
    assert password_file(cli).read_text() == before
    time.sleep(1.05)                                          # the 1 s slow-down
    r = cli("password", "set", "--password-stdin", stdin=f"{PW}\nnew password 1\n")
    assert r.code == 0, r.err
    assert "every session was ended" in r.out
    r = cli("password", "clear", "--password-stdin", stdin=PW + "\n")
    assert r.code == 4                                        # the old one no longer works


def test_set_at_a_terminal_asks_twice(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = typed(monkeypatch, "first password", "other password")
    r = cli("password", "set", stdin=Tty(""))
    assert r.code == 2 and "differ" in r.err and not password_file(cli).exists()
    assert len(prompts) == 2
    typed(monkeypatch, "first password", "first password")
    assert cli("password", "set", stdin=Tty("")).code == 0
    # A gated action at a terminal prompts without echo (getpass), never reads argv.
    prompts = typed(monkeypatch, "first password")
    r = cli("permissions", "mode", "default", stdin=Tty(""))
    assert r.code == 0, r.err
    assert prompts == ["cmdop password (for permissions mode): "]


# -- the gate on local security changes --------------------------------------------------------

def test_gated_actions_need_the_password(cli: Cli) -> None:
    set_password(cli)
    policy = cli.home / ".config" / "cmdop" / "permissions.yaml"

    r = cli("permissions", "add", "execute_command(git *)", "--action", "allow")
    assert r.code == 4, r.err
    assert "permissions add needs this machine's password" in r.err and "hint:" in r.err
    assert not policy.exists()
    r = cli("permissions", "add", "execute_command(git *)", "--action", "allow", "--password-stdin",
            stdin=PW + "\n")
    assert r.code == 0, r.err
    rid = r.out.split()[3].rstrip(":")

    r = cli("permissions", "mode", "bypass")
    assert r.code == 4 and "mode: bypass" not in policy.read_text()
    assert cli("permissions", "mode").code == 0               # reading the mode is not gated
    assert cli("permissions", "mode", "default", "--password-stdin", stdin=PW + "\n").code == 0

    r = cli("permissions", "rm", rid)
    assert r.code == 4 and "git" in policy.read_text()
    r = cli("permissions", "rm", rid, "--password-stdin", stdin=PW + "\n")
    assert r.code == 0, r.err
    assert "git" not in policy.read_text()

    # connect key set: the password is the first line, the key the next one.
    ws = cli.home / ".cmdop" / "ssh_workspaces.json"
    r = cli("connect", "key", "set", "--relay", "relay.example.com:7443", stdin=KEY + "\n")
    assert r.code == 4 and not ws.exists()
    r = cli("connect", "key", "set", "--relay", "relay.example.com:7443", "--password-stdin",
            stdin=f"{PW}\n{KEY}\n")
    assert r.code == 0, r.err
    assert KEY in ws.read_text() and PW not in ws.read_text()
    r = cli("connect", "key", "rm", "default")
    assert r.code == 4 and KEY in ws.read_text()
    r = cli("connect", "key", "rm", "default", "--password-stdin", stdin=PW + "\n")
    assert r.code == 0, r.err

    # service install: refused before anything is written; --dry-run changes nothing: not gated.
    r = cli("service", "install", "--user", "--exec-start", "/usr/bin/cmdop")
    assert r.code == 4 and "service install needs this machine's password" in r.err
    assert not (cli.home / ".config" / "systemd").exists()
    assert cli("service", "install", "--user", "--dry-run", "--exec-start", "/usr/bin/cmdop").code == 0

    # Without a password, nothing asks.
    assert cli("password", "clear", "--password-stdin", stdin=PW + "\n").code == 0
    assert cli("permissions", "mode", "strict").code == 0


def test_wrong_attempts_slow_down_and_are_audited(cli: Cli) -> None:
    set_password(cli)
    r = cli("permissions", "mode", "bypass", "--password-stdin", stdin="guess-1\n")
    assert r.code == 4 and "wrong password (1 in a row)" in r.err and "refused for 1 s" in r.err
    # Within the slow-down even the right password is refused, unchecked.
    r = cli("permissions", "mode", "bypass", "--password-stdin", stdin=PW + "\n")
    assert r.code == 4 and "refused unchecked" in r.err
    st = cli("password", "status", "--json").json()
    assert st["failures"] == 1 and 0 < st["retry_in_s"] <= 1
    time.sleep(1.05)
    r = cli("permissions", "mode", "bypass", "--password-stdin", stdin="guess-2\n")
    assert r.code == 4 and "2 in a row" in r.err and "refused for 2 s" in r.err
    assert cli("password", "status", "--json").json()["failures"] == 2
    time.sleep(2.05)
    r = cli("permissions", "mode", "strict", "--password-stdin", stdin=PW + "\n")
    assert r.code == 0, r.err
    assert cli("password", "status", "--json").json()["failures"] == 0     # reset on success
    rules = [a["rule_id"] for a in audit_lines(cli) if a["tool"] == "password"]
    assert rules == ["password:set", "password:wrong", "password:slowed_down", "password:wrong",
                     "password:ok"]
    text = (cli.home / ".local" / "state" / "cmdop" / "audit.log").read_text()
    assert "guess-1" not in text and "guess-2" not in text and PW not in text


def test_call_unlock_with_the_password_on_argv_is_refused(cli: Cli) -> None:
    r = cli("call", "web01", "unlock", "--input", json.dumps({"password": PW}))
    assert r.code == 2 and "cmdop password unlock web01" in r.err


# -- the store --------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> ps.PasswordStore:
    home = tmp_path / "home"
    home.mkdir()
    return ps.PasswordStore(Settings.from_env({"HOME": str(home)}, str(home)))


T0 = 1_800_000_000.0


def test_store_attempts_follow_the_schedule_and_survive_restarts(store: ps.PasswordStore) -> None:
    assert store.attempt(PW, T0).outcome == "not_set"
    store.set_password(PW)
    assert store.attempt(PW, T0).ok
    a = store.attempt("wrong password", T0)
    assert (a.outcome, a.failures, a.retry_in_s) == ("wrong", 1, 1)
    assert store.attempt(PW, T0 + 0.5).outcome == "slowed"           # refused unchecked
    a = store.attempt("wrong again", T0 + 1)
    assert (a.outcome, a.failures, a.retry_in_s) == ("wrong", 2, 2)
    # A new store (an agent restart) keeps the counter: it is on disk, 0600.
    again = ps.PasswordStore(Settings.from_env({"HOME": str(Path(store.state_dir).parents[2])},
                                               str(Path(store.state_dir).parents[2])))
    assert again.failures_path == store.failures_path
    slowed = again.attempt(PW, T0 + 2)
    assert (slowed.outcome, slowed.failures) == ("slowed", 2) and slowed.retry_in_s == pytest.approx(1)
    assert stat.S_IMODE(os.stat(store.failures_path).st_mode) == 0o600
    assert again.attempt(PW, T0 + 3).ok
    assert not os.path.exists(store.failures_path)                     # reset on success
    for n in range(1, 12):                                             # the cap
        a = store.attempt("nope", T0 + 10_000 * n)
    assert a.retry_in_s == 300 and a.failures == 11


def test_store_refuses_unsafe_and_damaged_files(store: ps.PasswordStore) -> None:
    store.set_password(PW)
    os.chmod(store.path, 0o644)
    with pytest.raises(SecretFileError):
        store.attempt(PW, T0)
    os.chmod(store.path, 0o600)
    Path(store.path).write_text("{not json")
    with pytest.raises(ps.PasswordFileError):
        store.attempt(PW, T0)
    assert store.is_set()                     # a damaged file still guards: never "no password"
    huge = ps.hash_password(PW)
    huge["n"] = 2**24
    Path(store.path).write_text(json.dumps(huge))
    with pytest.raises(ps.PasswordFileError, match="outside the allowed range"):
        store.attempt(PW, T0)
    store.set_password(PW)
    Path(store.failures_path).write_text("garbage")
    os.chmod(store.failures_path, 0o600)
    with pytest.raises(ps.PasswordFileError, match="counter"):
        store.attempt(PW, T0)


def test_hash_is_salted_and_verifies_in_constant_time_shape() -> None:
    a, b = ps.hash_password(PW), ps.hash_password(PW)
    assert a["salt"] != b["salt"] and a["hash"] != b["hash"]
    assert ps.verify_hash(a, PW) and not ps.verify_hash(a, PW + " ")
    with pytest.raises(ps.PasswordFileError):
        ps.verify_hash({**a, "salt": "%%%"}, PW)


def test_scrypt_cost_is_tens_of_milliseconds() -> None:
    stored = ps.hash_password(PW)
    start = time.perf_counter()
    assert ps.verify_hash(stored, PW)
    took = time.perf_counter() - start
    assert 0.005 < took < 2.0, took          # ~56 ms on the development machine


def test_concurrent_guesses_get_one_check_per_window(store: ps.PasswordStore) -> None:
    store.set_password(PW)
    results: list[str] = []

    def guess() -> None:
        results.append(store.attempt("a wrong guess").outcome)

    threads = [threading.Thread(target=guess) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["slowed"] * 5 + ["wrong"]


def test_sessions_are_hashed_bound_expiring_and_ended_by_a_new_password(store: ps.PasswordStore) -> None:
    store.set_password(PW)
    token, expires = store.issue_session("demo/ops", 900, T0)
    assert expires == T0 + 900 and token.startswith(ps.TOKEN_PREFIX)
    text = Path(store.sessions_path).read_text()
    assert token not in text and ps.token_digest(token) in text
    assert stat.S_IMODE(os.stat(store.sessions_path).st_mode) == 0o600
    assert store.session_ok(token, "demo/ops", T0 + 10)
    assert not store.session_ok(token, "demo/other", T0 + 10)         # another principal
    assert not store.session_ok(token + "x", "demo/ops", T0 + 10)
    assert not store.session_ok(token, "demo/ops", T0 + 900)          # expired
    assert not store.session_ok("", "demo/ops", T0)
    assert store.active_sessions(T0 + 1) == 1 and store.status(T0 + 1)["active_sessions"] == 1
    store.set_password("another password")
    assert not store.session_ok(token, "demo/ops", T0 + 10)
    token2, _ = store.issue_session("demo/ops", 900, time.time())
    assert store.session_ok(token2, "demo/ops")
    store.clear()
    assert not store.session_ok(token2, "demo/ops") and not store.is_set()


def test_caller_session_cache(tmp_path: Path) -> None:
    cache = ps.SessionCache(str(tmp_path / ".cmdop"))
    assert cache.get("demo", "web01") is None
    cache.put("demo", "web01", "tok-1", time.time() + 60)
    cache.put("demo", "db01", "tok-2", time.time() - 1)                # already expired
    assert cache.get("demo", "web01") == "tok-1"
    assert cache.get("other", "web01") is None                          # per workspace
    assert cache.get("demo", "db01") is None
    assert stat.S_IMODE(os.stat(cache.path).st_mode) == 0o600
    assert "db01" not in Path(cache.path).read_text()                   # pruned on write
    assert cache.drop("demo", "web01") and cache.get("demo", "web01") is None
    assert not cache.drop("demo", "web01")
