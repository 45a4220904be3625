"""Red team of end-to-end encryption, in-process: the relay is the adversary.

Each test is an attack a malicious relay (or whoever recorded its traffic) can try, and what a
user would notice if it worked: a command run twice, output never shown, a gate skipped, a call
sealed to a key the relay holds, a terminal driven by relay text. The agent side runs the real
`Link._forwarded` with a fake tool service; the caller side runs the real `remote_call` against a
fake relay channel.
"""

from __future__ import annotations

import json
import os
import queue
import stat
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519

from cmdop.adapters import e2e, e2e_files
from cmdop.adapters.e2e_seen import SEEN_FILE, SeenRequests
from cmdop.core.calls import CallerKind
from cmdop.core.errors import E2EError, HostKeyChangedError
from cmdop.daemon.relay_link import E2EConfig, Link, LinkState
from cmdop.relay.proto import relay_pb2 as pb

KEY = e2e.load_private(e2e.generate_private())
ALICE = ed25519.Ed25519PrivateKey.generate()


# -- the agent's end ---------------------------------------------------------------------------


class _Agent:
    """One agent process: a Link (re-made on `restart`) over a fake tool service that records
    what ran, with which caller, and whether its output was to be streamed."""

    def __init__(self, state_dir: Path | None = None, authorized: frozenset[bytes] = frozenset(),
                 required: bool = True) -> None:
        self.state_dir, self.authorized, self.required = state_dir, authorized, required
        self.ran: list[dict[str, Any]] = []
        self.audit: list[Any] = []
        self.frames: list[pb.AgentFrame] = []
        self.restart()

    def restart(self) -> None:
        seen = None
        if self.state_dir is not None:
            seen = SeenRequests(str(self.state_dir / SEEN_FILE), time.time())
        cfg = E2EConfig(KEY, "m1", self.required, self.authorized, seen)
        agent = self

        class Service:
            async def run_call(self, call: Any, caller: Any, **kw: Any) -> Any:
                agent.ran.append({"call": call, "caller": caller,
                                  "streamed": kw.get("on_chunk") is not None})
                return {"exit_code": 0, "stdout": "out", "stderr": ""}

            call_context = type("Ctx", (), {
                "gatekeeper": type("G", (), {"mode": "ask"})(),
                "audit": type("A", (), {"append": staticmethod(agent.audit.append)})()})()

        class Daemon:
            service = Service()
            settings = type("S", (), {"home": "/"})()
            current_link = None

        self.link = Link(Daemon(), LinkState(), OrderedDict(), e2e=cfg)  # type: ignore[arg-type]

    def deliver(self, start: pb.CallStart) -> list[str]:
        """Run one forwarded call; the failure codes it answered."""
        trio.run(self.link._forwarded, start)
        out = []
        while True:
            try:
                out.append(self.link.outq.get_nowait())
            except queue.Empty:
                break
        self.frames += out
        return [f.failure.code for f in out if f.WhichOneof("kind") == "failure"]


def _request(cid: str = "c1", **kw: Any) -> e2e.Request:
    fields: dict[str, Any] = dict(call_id=cid, machine_id="m1", caller="me",
                                  tool="execute_command",
                                  input_json=b'{"command": "echo once >> /tmp/ledger"}',
                                  response_key=e2e.new_response_key())
    fields.update(kw)
    return e2e.Request(**fields)


def _start(req: e2e.Request, prefix: str = "k1", kind: str = "remote",
           stream: bool = False) -> pb.CallStart:
    return pb.CallStart(call_id=f"{prefix}:{req.call_id}", sealed=e2e.seal_request(req, KEY.public),
                        caller=pb.Principal(kind=kind, name="dev", workspace="demo"),
                        stream=stream)


def test_a_replay_under_another_caller_prefix_runs_once() -> None:
    """Attack: the relay delivers a recorded sealed request again as "<other key>:<same id>"
    (the agent's duplicate check was on the relay-chosen outer id). A user would see an
    `>> ledger` append, a payment, a `rm` run twice."""
    agent = _Agent()
    req = _request()
    assert agent.deliver(_start(req, "k1")) == []
    assert agent.deliver(_start(req, "k2")) == ["e2e_refused"]
    assert agent.deliver(_start(req, "k1-again")) == ["e2e_refused"]
    assert len(agent.ran) == 1


def test_a_replay_after_the_agent_restarted_is_refused(tmp_path: Path) -> None:
    """Attack: the relay keeps the ciphertext and sends it again once the agent restarted (its
    in-memory list of seen call ids is gone)."""
    agent = _Agent(tmp_path)
    req = _request()
    assert agent.deliver(_start(req)) == []
    agent.restart()
    assert agent.deliver(_start(req)) == ["e2e_refused"]
    assert len(agent.ran) == 1
    assert stat.S_IMODE(os.stat(tmp_path / SEEN_FILE).st_mode) == 0o600
    last = agent.audit[-1]
    last = json.loads(last) if isinstance(last, str) else last
    assert "e2e:replayed" in json.dumps(last, default=str)


@pytest.mark.parametrize("age_s,runs", [(0, True), (-60, True), (60, True),
                                        (3600, False),      # recorded an hour ago
                                        (-3600, False),     # "from the future": kept for later
                                        (10 ** 9, False)])
def test_only_fresh_sealed_requests_run(age_s: int, runs: bool) -> None:
    agent = _Agent()
    req = _request(issued_at=int(time.time()) - age_s)
    assert (agent.deliver(_start(req)) == []) is runs
    assert bool(agent.ran) is runs


@pytest.mark.parametrize("sealed_stream,relay_stream", [(True, False), (False, True)])
def test_the_relay_cannot_flip_streaming(sealed_stream: bool, relay_stream: bool) -> None:
    """Attack: CallStart.stream is plaintext. Off: `exec` gets no chunks and prints nothing,
    exit 0 (the output sits unread in the result). On: `call` gets chunks it drops and a
    result without stdout. Either way output silently vanishes."""
    agent = _Agent()
    agent.deliver(_start(_request(stream=sealed_stream), stream=relay_stream))
    assert [r["streamed"] for r in agent.ran] == [sealed_stream]


def test_with_authorized_callers_the_relay_cannot_make_a_caller_self() -> None:
    """Attack: with authorized_callers the relay is not trusted for who calls; it takes a
    signed call of an authorized (remote) caller and stamps it kind "self", whose gate
    `self_bypass` skips."""
    agent = _Agent(authorized=frozenset({ALICE.public_key().public_bytes_raw()}))
    req = e2e.sign_request(_request(), ALICE)
    assert agent.deliver(_start(req, kind="self")) == []
    assert [r["caller"].kind for r in agent.ran] == [CallerKind.REMOTE]


def test_with_authorized_callers_plaintext_is_refused_even_with_e2e_off() -> None:
    """Attack: the owner set authorized_callers and e2e_required: false (old callers): the
    relay sends a plaintext call, which carries no signature and used to skip the check."""
    agent = _Agent(authorized=frozenset({ALICE.public_key().public_bytes_raw()}),
                   required=False)
    start = pb.CallStart(call_id="k1:c1", tool="execute_command",
                         input_json=b'{"command": "id"}', caller=pb.Principal(kind="remote"))
    assert agent.deliver(start) == ["e2e_refused"]
    assert agent.ran == []


# -- the request's wire form ------------------------------------------------------------------


@pytest.mark.parametrize("issued,stream", [(b"01", b""), (b"+1", b""), (b" 1", b""),
                                           (b"1.0", b""), (b"", b""), (b"\xd9\xa1", b""),
                                           (b"1", b"0"), (b"1", b"true"), (b"1", b"11")])
def test_non_canonical_time_or_stream_is_malformed(issued: bytes, stream: bytes) -> None:
    """One encoding per value: a body the caller signed reads back as exactly what it meant."""
    req = _request()
    fields = dict(zip(e2e._FIELDS, req._fields()))
    fields["issued_at"], fields["stream"] = issued, stream
    body = b"".join(e2e._lp(fields[f]) for f in e2e._FIELDS)
    with pytest.raises(E2EError, match="malformed"):
        e2e.parse_request_body(body, "c1", "m1")


def test_issued_at_and_stream_are_covered_by_the_signature() -> None:
    signed = e2e.sign_request(_request(stream=True), ALICE)
    allowed = frozenset({ALICE.public_key().public_bytes_raw()})
    for field, value in (("stream", False), ("issued_at", signed.issued_at + 1)):
        forged = e2e.Request(**{**signed.__dict__, field: value})
        with pytest.raises(E2EError, match="does not verify"):
            e2e.verify_caller(forged, allowed)


@pytest.mark.parametrize("content,mode,error", [
    ("1 a\n", 0o644, "cannot use"),          # readable by others: fail closed, not forgotten
    ("garbage\n\n9 x y\n", 0o600, None),     # junk lines are ignored, not fatal
])
def test_the_seen_record_file(tmp_path: Path, content: str, mode: int, error: str | None) -> None:
    path = tmp_path / SEEN_FILE
    path.write_text(content)
    path.chmod(mode)
    if error:
        with pytest.raises(E2EError, match=error):
            SeenRequests(str(path), time.time())
    else:
        seen = SeenRequests(str(path), time.time())
        seen.accept("c1", int(time.time()), time.time())
        assert "c1" in path.read_text()


def test_a_call_id_that_would_forge_record_lines_is_refused(tmp_path: Path) -> None:
    seen = SeenRequests(str(tmp_path / SEEN_FILE), time.time())
    with pytest.raises(E2EError, match="malformed"):
        seen.accept(f"c1\n{int(time.time())} c2", int(time.time()), time.time())


# -- the caller's end -------------------------------------------------------------------------


class _Relay:
    """A relay channel that answers HostKey as told and records the CallStarts it gets; each
    call then answers `events`."""

    def __init__(self, name: str, machine_id: str, key: bytes,
                 events: list[pb.CallEvent] | None = None) -> None:
        self.answer = pb.HostKeyReply(name=name, machine_id=machine_id, e2e_key=key)
        self.endpoint = type("E", (), {"address": "relay:1"})()
        self.sent: list[pb.CallStart] = []
        self.events = events if events is not None else [
            pb.CallEvent(failure=pb.Failure(code="host_offline", message="gone"))]

    def host_key(self, host: str) -> pb.HostKeyReply:
        return self.answer

    def call(self, frames: Any, timeout: float) -> Any:
        self.sent.append(next(iter(frames)).start)
        events = self.respond(self.sent[-1])

        class Stream(list):  # type: ignore[type-arg]
            def cancel(self) -> None:
                pass
        return Stream(events)

    def respond(self, start: pb.CallStart) -> list[pb.CallEvent]:
        return self.events


OTHER = e2e.load_private(e2e.generate_private())


@pytest.mark.parametrize("typed,name,machine_id,key,refused", [
    # `web` always reached web1 (pinned); the relay now says it is a fresh machine, with its key
    ("web", "web-evil", "m9", OTHER.public, HostKeyChangedError),
    ("WEB", "web-evil", "m9", OTHER.public, HostKeyChangedError),
    # a name that cannot mean the machine answered: the call would run elsewhere
    ("db", "web1", "m1", KEY.public, E2EError),
    ("db", "evil", "m9", OTHER.public, E2EError),
    # honest answers
    ("web", "web1", "m1", KEY.public, None),
    ("WEB1", "web1", "m1", KEY.public, None),
    ("db", "db1", "m2", OTHER.public, None),          # first contact: pinned on trust
])
def test_the_relay_cannot_resolve_a_name_to_a_machine_of_its_choosing(
        tmp_path: Path, typed: str, name: str, machine_id: str, key: bytes,
        refused: type[Exception] | None) -> None:
    from cmdop.relay.caller import remote_call

    home = str(tmp_path / "cmdop")
    e2e_files.pin(home, "relay:1", "m1", "web1", KEY.public)
    relay = _Relay(name, machine_id, key)
    if refused is None:
        with pytest.raises(Exception, match="gone"):
            remote_call(relay, typed, "execute_command", {"command": "id"},  # type: ignore[arg-type]
                        cmdop_home=home)
        assert len(relay.sent) == 1
    else:
        with pytest.raises(refused):
            remote_call(relay, typed, "execute_command", {"command": "id"},  # type: ignore[arg-type]
                        cmdop_home=home)
        assert relay.sent == []


def test_relay_failure_text_cannot_drive_the_terminal() -> None:
    """Attack: a Failure's message is relay text printed on stderr: escape sequences could
    rewrite the sealed output already shown, or fake a prompt."""
    from cmdop.relay.caller import failure_error

    exc = failure_error("e2e_refused", "\x1b[2J\x1b[Hall good\r\n$ ", "\x1b]0;title\x07")
    text = exc.message + (exc.hint or "")
    assert not any(ord(c) < 32 or ord(c) == 0x7f for c in text), text


def test_the_unlock_password_never_leaves_sealed(tmp_path: Path) -> None:
    from cmdop.relay.caller import remote_call

    relay = _Relay("web1", "m1", KEY.public)
    with pytest.raises(Exception, match="gone"):
        remote_call(relay, "web1", "unlock", {"password": "hunter2-secret"},  # type: ignore[arg-type]
                    cmdop_home=str(tmp_path / "cmdop"))
    wire = relay.sent[0].SerializeToString()
    assert b"hunter2-secret" not in wire and b"unlock" not in wire


def _sealed_output_then(event: pb.CallEvent | None,
                        tmp_path: Path) -> tuple[list[bytes], Exception]:
    """A call whose sealed chunk the relay passes on, then `event` of the relay's making (None:
    the stream just ends)."""
    from cmdop.relay.caller import remote_call

    home = str(tmp_path / "cmdop")

    class Relay(_Relay):
        def respond(self, start: pb.CallStart) -> list[pb.CallEvent]:
            req = e2e.open_request(start.sealed, KEY, start.call_id, "m1")
            chunk = e2e.ResponseSealer(req).chunk(1, b"real output\n")
            return [pb.CallEvent(chunk=pb.Chunk(data=chunk))] + ([event] if event else [])

    got: list[bytes] = []
    with pytest.raises(Exception) as info:
        remote_call(Relay("web1", "m1", KEY.public), "web1", "execute_command",  # type: ignore[arg-type]
                    {"command": "make deploy"}, on_chunk=lambda fd, d: got.append(d),
                    cmdop_home=home)
    return got, info.value


def test_a_relay_cannot_end_sealed_output_with_an_exit_status_or_result(tmp_path: Path) -> None:
    """Attack: after real sealed output, the relay sends a plaintext result (exit 0) or a
    truncating end: the caller must refuse both (never exit 0)."""
    from cmdop.core.errors import CmdopError

    for event in (pb.CallEvent(result=pb.Result(result_json=b'{"exit_code": 0}')), None):
        got, exc = _sealed_output_then(event, tmp_path)
        assert got == [b"real output\n"]
        assert isinstance(exc, CmdopError) and exc.exit_code != 0, exc


@pytest.mark.xfail(strict=True, reason=(
    "ACCEPTED LIMIT (docs/security.md, what the relay can still do): a Failure frame is not "
    "sealed (the relay itself must be able to say host_offline), so a relay can end a call "
    "after its sealed output with a failure of its own wording; it never supplies output, a "
    "result or an exit status of the command"))
def test_a_relay_forged_failure_is_told_apart_from_the_agents(tmp_path: Path) -> None:
    forged = pb.CallEvent(failure=pb.Failure(code="e2e_refused",
                                             message="the agent refused: disk full"))
    got, exc = _sealed_output_then(forged, tmp_path)
    assert "relay" in str(getattr(exc, "message", exc)).lower()


def test_pins_and_seen_record_do_not_hold_secrets(tmp_path: Path) -> None:
    """The known-hosts file holds public keys only; the caller key file is 0600."""
    home = str(tmp_path / "cmdop")
    e2e_files.pin(home, "relay:1", "m1", "web1", KEY.public)
    text = Path(home, e2e_files.KNOWN_HOSTS_FILE).read_text()
    assert json.loads(text)["hosts"] and e2e.fingerprint(KEY.public) in text
    e2e_files.load_or_create_caller_key(home)
    assert stat.S_IMODE(os.stat(Path(home, e2e_files.CALLER_KEY_FILE)).st_mode) == 0o600


def test_a_prefix_keeps_meaning_the_machine_it_reached(tmp_path: Path) -> None:
    """Attack: the user reaches web1 by typing `web`; the relay later answers `web` with a
    fresh machine named exactly `web` (its own key, pinned on trust). An honest relay makes
    the prefix ambiguous instead. `connect trust web` is the way to move the prefix."""
    from cmdop.relay.caller import remote_call

    home = str(tmp_path / "cmdop")
    e2e_files.pin(home, "relay:1", "m0", "other", OTHER.public)
    with pytest.raises(Exception, match="gone"):
        remote_call(_Relay("web1", "m1", KEY.public), "web", "execute_command",  # type: ignore[arg-type]
                    {}, cmdop_home=home)
    evil = _Relay("web", "m9", OTHER.public)
    with pytest.raises(HostKeyChangedError, match="reached web1"):
        remote_call(evil, "web", "execute_command", {}, cmdop_home=home)  # type: ignore[arg-type]
    assert evil.sent == []
    e2e_files.pin(home, "relay:1", "m9", "web", OTHER.public, alias="web")    # connect trust
    with pytest.raises(Exception, match="gone"):
        remote_call(evil, "web", "execute_command", {}, cmdop_home=home)  # type: ignore[arg-type]


def test_the_capture_tap_records_every_rpc_the_relay_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sealed-capture test ("the relay sees no plaintext") is only as good as its tap: it
    must be on every RPC of the service (share RPCs were not)."""
    import asyncio
    import re

    from cmdop.adapters import relay_grpc
    from cmdop.core.errors import CmdopError

    taps: list[Any] = []
    for name in ("_unary_handler", "_stream_handler"):
        real = getattr(relay_grpc, name)
        monkeypatch.setattr(relay_grpc, name,
                            lambda *a, _real=real, **kw: taps.append(a[3] if len(a) > 3
                                                                     else kw.get("tap"))
                            or _real(*a, **kw))

    def tap(direction: str, data: bytes) -> None:
        pass

    with pytest.raises(CmdopError):                      # handlers are built, then bind fails
        asyncio.run(relay_grpc.start_server(type("H", (), {"__getattr__": lambda s, n: None})(),
                                            "256.0.0.1:1", b"", b"", tap=tap))
    proto = (Path(relay_grpc.__file__).parents[1] / "relay/proto/relay.proto").read_text()
    assert len(taps) == len(re.findall(r"^\s*rpc \w+", proto, re.M)) and all(t is tap for t in taps)


def test_the_local_agent_never_forwards_a_call_in_the_clear() -> None:
    """Downgrade: an old or hostile local client asks this machine's agent for a plaintext
    `relay_call`; forwarded, the relay would see its tool, input and output."""
    from cmdop.daemon.service import AgentService, RequestError

    svc = AgentService.__new__(AgentService)
    svc.current_link = lambda: object()  # type: ignore[method-assign,assignment]
    req = {"op": "relay_call", "host": "web1", "tool": "execute_command",
           "input": {"command": "id"}}
    with pytest.raises(RequestError) as info:
        trio.run(svc._op_relay_call, req, None)
    assert info.value.code == "bad_request" and "sealed" in info.value.message


@pytest.mark.xfail(strict=True, reason=(
    "ACCEPTED LIMIT (docs/security.md, what the relay can still do): the first call to a host "
    "pins the key the relay offers on trust, as ssh's known_hosts does; compare the fingerprint "
    "with `cmdop agent status` on the host when it matters"))
def test_a_key_swapped_at_first_contact_is_caught(tmp_path: Path) -> None:
    from cmdop.relay.caller import remote_call

    relay = _Relay("web1", "m1", OTHER.public)          # the relay's own key, not web1's
    with pytest.raises(E2EError):
        remote_call(relay, "web1", "execute_command", {}, cmdop_home=str(tmp_path))  # type: ignore[arg-type]


@pytest.mark.parametrize("make", ["bytes", "spaces", "empty", "directory", "dangling"])
def test_an_unusable_machine_id_is_an_error_not_silently_replaced(tmp_path: Path,
                                                                  make: str) -> None:
    """Sealed calls are bound to the agent's machine id: a new one, made silently, has every
    caller warn "now another machine" and trains users to `connect trust` whatever comes."""
    from cmdop.core.errors import CmdopError
    from cmdop.daemon.relay_link import machine_id

    path = tmp_path / "machine_id"
    {"bytes": lambda: path.write_bytes(b"\xff\xfe"), "spaces": lambda: path.write_text("a b\n"),
     "empty": lambda: path.write_text(""), "directory": lambda: path.mkdir(),
     "dangling": lambda: path.symlink_to(tmp_path / "nowhere")}[make]()
    before = os.lstat(path)
    with pytest.raises(CmdopError):
        machine_id(str(tmp_path))
    assert os.lstat(path).st_ino == before.st_ino


def test_a_missing_machine_id_is_created_once(tmp_path: Path) -> None:
    from cmdop.daemon.relay_link import machine_id

    first = machine_id(str(tmp_path))
    assert first == machine_id(str(tmp_path)) and len(first) == 32


@pytest.mark.parametrize("name", [
    "web1: offered key SHA256:looks-right\n",           # a line break forging the compared line
    "web1\x1b[8m",                                       # text hidden from here on
    "db1",                                               # another host than the one typed
])
def test_connect_trust_refuses_relay_text_that_could_fake_the_fingerprint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        name: str) -> None:
    from cmdop.cli import main, trust_cmd

    monkeypatch.setenv("CMDOP_HOME", str(tmp_path / "cmdop"))
    monkeypatch.setattr(trust_cmd, "_lookup", lambda *a: {
        "name": name, "machine_id": "m9", "e2e_key": OTHER.public, "relay": "relay:1"})
    assert main.main(["connect", "trust", "web1", "--yes"]) != 0
    assert not (tmp_path / "cmdop" / e2e_files.KNOWN_HOSTS_FILE).exists()
    assert "\x1b" not in capsys.readouterr().err


def test_an_unwritable_replay_record_refuses_the_call_instead_of_ending_the_link(tmp_path):
    # A full disk (or the file replaced by a directory) while recording a sealed call: the
    # one call is refused as an E2EError (answered, audited) — an OSError escaping here ended
    # the agent's whole relay link, and every call after it did the same.
    import os
    import time

    from cmdop.adapters.e2e_seen import SeenRequests
    from cmdop.core.errors import E2EError

    path = tmp_path / "e2e_seen"
    seen = SeenRequests(str(path), time.time())
    seen.accept("call-1", int(time.time()), time.time())
    seen.close()
    os.unlink(path)
    os.mkdir(path)                                   # open(O_WRONLY) now fails: EISDIR
    with pytest.raises(E2EError, match="cannot record"):
        seen.accept("call-2", int(time.time()), time.time())
    with pytest.raises(E2EError, match="already run"):   # still refused as a replay
        seen.accept("call-2", int(time.time()), time.time())


def test_an_agent_key_that_cannot_be_created_is_an_e2e_error(tmp_path):
    # The state dir cannot be made (a file stands where a directory should): one E2EError
    # with a hint, which the link turns into "no usable key" — not an OSError ending it.
    from cmdop.adapters.e2e_files import load_or_create_agent_key
    from cmdop.core.errors import E2EError

    (tmp_path / "blocker").write_text("")
    with pytest.raises(E2EError, match="cannot create"):
        load_or_create_agent_key(str(tmp_path / "blocker" / "state"))
