"""The ask broker: first answer wins, no approver → deny at once, timeout, digest binding."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.policy.decision import Decision
from cmdop.daemon import broker as broker_mod
from cmdop.daemon.broker import NO_APPROVER, AnswerError, AskBroker

CALL = ToolCall(tool="execute_command", input={"command": "make"}, cwd="/srv")
CALLER = Caller(kind=CallerKind.REMOTE, user="guest", hostname="far")
DECISION = Decision(decision="ask", source="mode", reason="mode default", mode="default",
                    tool="execute_command", target="make")
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(autouse=True)
def literal_rules(monkeypatch):
    # The real literal_rule belongs to the gate; the broker only needs "a rule for this target".
    monkeypatch.setattr(broker_mod, "_rules_for", lambda p, verdict: [f"{p.call.tool}({p.decision.target})"])


def run(fn):
    return trio.run(fn)


async def _ask_and(b: AskBroker, answer_with, timeout: float = 5.0):
    """Start one ask, let `answer_with(ask_json)` answer it, return (outcome, answer result)."""
    out: dict[str, Any] = {}
    recv = b.attach()
    async with trio.open_nursery() as n:
        async def asker():
            out["outcome"] = await b.ask(DECISION, CALL, CALLER, DIGEST, timeout)
        n.start_soon(asker)
        async for ev in recv:
            if ev["event"] == "ask":
                out["answer"] = await answer_with(ev["ask"])
                break
    b.detach(recv)
    return out


def test_no_approver_is_denied_at_once():
    async def main():
        outcome = await AskBroker().ask(DECISION, CALL, CALLER, DIGEST, 60)
        assert (outcome.outcome, outcome.reason) == ("ask_denied", NO_APPROVER)
    run(main)


def test_approved_once_keeps_no_rule():
    kept = []

    async def keep(*a):
        kept.append(a)

    async def main():
        b = AskBroker(keep_rule=keep)
        out = await _ask_and(b, lambda ask: b.answer(ask["ask_id"], "allow", "once", ask["input_digest"], "me"))
        assert out["outcome"].outcome == "ask_allowed"
        assert "approved once by me" == out["outcome"].reason
        assert kept == [] and b.pending() == []
    run(main)


def test_session_and_always_answers_keep_a_literal_rule():
    kept = []

    async def keep(*a):
        kept.append(a)

    async def main():
        b = AskBroker(keep_rule=keep)
        out = await _ask_and(b, lambda ask: b.answer(ask["ask_id"], "deny", "always"))
        assert out["outcome"].outcome == "ask_denied"
        assert out["answer"]["rules"] == ["execute_command(make)"]
        assert kept == [("deny", "always", "execute_command(make)")]
    run(main)


def test_first_answer_wins_and_an_answered_id_cannot_be_replayed():
    async def main():
        b = AskBroker()

        async def twice(ask):
            first = await b.answer(ask["ask_id"], "allow")
            with pytest.raises(AnswerError) as exc:
                await b.answer(ask["ask_id"], "deny")
            assert exc.value.code == "not_pending"
            return first
        out = await _ask_and(b, twice)
        assert out["outcome"].outcome == "ask_allowed"
    run(main)


def test_an_answer_for_a_different_input_is_refused_and_the_ask_stays():
    async def main():
        b = AskBroker()

        async def wrong_then_right(ask):
            with pytest.raises(AnswerError) as exc:
                await b.answer(ask["ask_id"], "allow", input_digest="sha256:" + "00" * 32)
            assert exc.value.code == "digest_mismatch"
            assert [p["ask_id"] for p in b.pending()] == [ask["ask_id"]]
            return await b.answer(ask["ask_id"], "deny", input_digest=ask["input_digest"])
        out = await _ask_and(b, wrong_then_right)
        assert out["outcome"].outcome == "ask_denied"
    run(main)


def test_no_answer_times_out():
    async def main():
        b = AskBroker()
        recv = b.attach()
        outcome = await b.ask(DECISION, CALL, CALLER, DIGEST, 0.05)
        assert outcome.outcome == "ask_timeout"
        events = [recv.receive_nowait()["event"] for _ in range(3)]
        assert events == ["hello", "ask", "resolved"]
    run(main)


def test_close_denies_pending_and_later_asks():
    async def main():
        b = AskBroker()
        b.attach()
        async with trio.open_nursery() as n:
            res = {}

            async def asker():
                res["o"] = await b.ask(DECISION, CALL, CALLER, DIGEST, 60)
            n.start_soon(asker)
            await trio.sleep(0.01)
            b.close("agent shutting down")
        assert res["o"].outcome == "ask_denied" and res["o"].reason == "agent shutting down"
        later = await b.ask(DECISION, CALL, CALLER, DIGEST, 60)
        assert later.reason == "agent shutting down"
    run(main)


def test_bad_verdicts_and_scopes_are_refused():
    async def main():
        b = AskBroker()
        for args in (("x", "maybe"), ("x", "allow", "forever")):
            with pytest.raises(AnswerError):
                await b.answer(*args)
    run(main)


def test_a_slow_approver_is_dropped_not_waited_for():
    async def main():
        b = AskBroker()
        b.attach()  # never read
        for _ in range(broker_mod.WATCH_BUFFER + 1):
            b._broadcast({"event": "noise"})
        assert b.approvers == 0
    run(main)



def test_an_approver_sees_a_guests_share_id_and_note():
    from cmdop.cli.approvals import describe

    guest = Caller(kind=CallerKind.GUEST, user="alice", workspace="acme", credential="share",
                   share_id="sh_0123456789ab", note="db migration\x1b[2J", tools=("read_file",))

    async def main():
        b = AskBroker()
        seen: dict[str, Any] = {}
        recv = b.attach()
        async with trio.open_nursery() as n:
            n.start_soon(b.ask, DECISION, CALL, guest, DIGEST, 5.0)
            async for ev in recv:
                if ev["event"] == "ask":
                    seen.update(ev["ask"])
                    await b.answer(ev["ask"]["ask_id"], "deny")
                    break
        b.detach(recv)
        return seen
    ask = run(main)
    assert ask["caller"]["kind"] == "guest"
    assert ask["caller"]["share_id"] == "sh_0123456789ab"
    text = describe(ask)
    assert "guest alice@" in text and "share sh_0123456789ab" in text
    assert "db migration" in text and "\x1b" not in text   # the note passes through visible()
