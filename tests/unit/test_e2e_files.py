"""End-to-end encryption's files and its two ends in-process: the agent's key file, the caller's
pins, a relay swapping a host's key, and the agent refusing plaintext and unauthorized calls."""

from __future__ import annotations

import json
import os
import queue
import stat
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from cmdop.adapters import e2e, e2e_files
from cmdop.core.errors import ConfigFileError, E2EError, HostKeyChangedError
from cmdop.relay.proto import relay_pb2 as pb

KEY_A = e2e.load_private(e2e.generate_private())
KEY_B = e2e.load_private(e2e.generate_private())


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the agent's key file ----------------------------------------------------------------------


def test_agent_key_is_created_once_private_and_reloaded(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    first = e2e_files.load_or_create_agent_key(state)
    assert _mode(e2e_files.agent_key_path(state)) == 0o600
    assert e2e_files.load_or_create_agent_key(state).public == first.public


@pytest.mark.parametrize("damage,match", [
    (lambda p: Path(p).write_bytes(b"short"), "corrupt"),
    (lambda p: os.chmod(p, 0o644), "not private"),
])
def test_an_unusable_agent_key_is_an_error_never_replaced(tmp_path: Path, damage: Any,
                                                          match: str) -> None:
    state = str(tmp_path / "state")
    e2e_files.load_or_create_agent_key(state)
    path = e2e_files.agent_key_path(state)
    damage(path)
    before = Path(path).read_bytes()
    with pytest.raises(E2EError, match=match):
        e2e_files.load_or_create_agent_key(state)
    assert Path(path).read_bytes() == before


# -- the caller's pins -------------------------------------------------------------------------


def test_first_use_pins_then_a_changed_key_is_refused_naming_both(tmp_path: Path) -> None:
    home = str(tmp_path / "cmdop")
    assert e2e_files.check_pin(home, "relay:1", "m1", "web1", KEY_A.public) == KEY_A.public
    assert _mode(Path(home) / "known_hosts.json") == 0o600
    assert e2e_files.check_pin(home, "relay:1", "m1", "web1", KEY_A.public) == KEY_A.public
    with pytest.raises(HostKeyChangedError) as info:
        e2e_files.check_pin(home, "relay:1", "m1", "web1", KEY_B.public)
    text = info.value.message + (info.value.hint or "")
    assert KEY_A.fingerprint in text and KEY_B.fingerprint in text
    assert "cmdop connect trust web1" in text
    e2e_files.pin(home, "relay:1", "m1", "web1", KEY_B.public)      # `connect trust`
    assert e2e_files.check_pin(home, "relay:1", "m1", "web1", KEY_B.public) == KEY_B.public
    # another relay (or another machine id) is another pin
    assert e2e_files.check_pin(home, "relay:2", "m1", "web1", KEY_A.public) == KEY_A.public


def test_host_names_are_pinned_per_workspace_or_share(tmp_path: Path) -> None:
    """The same name in two workspaces (or a guest's share) on one relay is two machines; in one
    scope, a name the relay says is now another machine is refused."""
    home = str(tmp_path / "cmdop")
    for scope, key in (("acme", KEY_A.public), ("share:1234", KEY_B.public)):
        assert e2e_files.check_pin(home, "relay:1", f"id-{scope}", "web01", key, scope) == key
    with pytest.raises(HostKeyChangedError, match="now another machine"):
        e2e_files.check_pin(home, "relay:1", "id-new", "web01", KEY_B.public, "acme")
    assert e2e_files.pinned_by_name(home, "relay:1", "web01", "acme") == ("id-acme",
                                                                        KEY_A.public)


class _SwappingRelay:
    """A channel to a relay that answers HostKey with whatever key it is told to, and whose
    host refuses every sealed call (as a host whose key is not the one sealed to does)."""

    def __init__(self, key: bytes, machine_id: str = "m1") -> None:
        self.key, self.machine_id = key, machine_id
        self.endpoint = type("E", (), {"address": "relay:1"})()
        self.asked = 0
        self.sent: list[Any] = []

    def host_key(self, host: str) -> pb.HostKeyReply:
        self.asked += 1
        return pb.HostKeyReply(name="web1", machine_id=self.machine_id, e2e_key=self.key)

    def call(self, frames: Any, timeout: float) -> Any:
        self.sent.append(next(iter(frames)).start)
        refusal = pb.CallEvent(failure=pb.Failure(code="e2e_refused", message="does not open"))

        class Stream(list):  # type: ignore[type-arg]
            def cancel(self) -> None:
                pass
        return Stream([refusal])


@pytest.mark.parametrize("offered,machine_id", [(KEY_B.public, "m1"),   # another key
                                                (KEY_B.public, "m2"),   # "a new machine"
                                                (KEY_A.public, "m2")])
def test_a_relay_swapping_the_key_is_caught_by_the_pin(tmp_path: Path, offered: bytes,
                                                       machine_id: str) -> None:
    from cmdop.relay.caller import remote_call

    home = str(tmp_path / "cmdop")
    e2e_files.pin(home, "relay:1", "m1", "web1", KEY_A.public)
    relay = _SwappingRelay(offered, machine_id)
    with pytest.raises(HostKeyChangedError):
        remote_call(relay, "web1", "execute_command", {"command": "id"},  # type: ignore[arg-type]
                    cmdop_home=home)
    # the call went sealed to the pinned key, never to the relay's: only the real host opens it
    assert [bool(s.sealed) and not s.tool and not s.input_json for s in relay.sent] == [True]
    assert relay.asked == 1                 # asked only once the host refused


def test_a_relay_hiding_the_key_gets_no_plaintext(tmp_path: Path) -> None:
    from cmdop.relay.caller import remote_call

    relay = _SwappingRelay(b"")
    with pytest.raises(E2EError, match="no end-to-end key"):
        remote_call(relay, "web1", "execute_command", {"command": "id"},  # type: ignore[arg-type]
                    cmdop_home=str(tmp_path / "cmdop"))
    assert relay.sent == []


# -- the agent's end -----------------------------------------------------------------------------


def _run_forwarded(start: pb.CallStart, cfg: Any) -> tuple[list[Any], list[pb.AgentFrame]]:
    import trio

    from cmdop.daemon.relay_link import Link, LinkState

    ran: list[Any] = []

    class Service:
        async def run_call(self, call: Any, *a: Any, **kw: Any) -> Any:
            ran.append(call)
            return {"exit_code": 0, "echo": call.input}

    class Daemon:
        service = Service()
        settings = type("S", (), {"home": "/"})()
        current_link = None

    link = Link(Daemon(), LinkState(), OrderedDict(), e2e=cfg)  # type: ignore[arg-type]
    trio.run(link._forwarded, start)
    frames = []
    while True:
        try:
            frames.append(link.outq.get_nowait())
        except queue.Empty:
            return ran, frames


def _sealed(signer: Any = None) -> tuple[pb.CallStart, e2e.Request]:
    req = e2e.Request(call_id="c1", machine_id="m1", caller="", tool="execute_command",
                      input_json=b'{"command": "id"}', response_key=e2e.new_response_key())
    if signer is not None:
        req = e2e.sign_request(req, signer)
    return pb.CallStart(call_id="k1:c1", sealed=e2e.seal_request(req, KEY_A.public),
                        caller=pb.Principal(kind="remote")), req


def _cfg(required: bool = True, authorized: frozenset[bytes] = frozenset()) -> Any:
    from cmdop.daemon.relay_link import E2EConfig

    return E2EConfig(KEY_A, "m1", required, authorized)


def _failures(frames: list[pb.AgentFrame]) -> list[str]:
    return [f.failure.code for f in frames if f.WhichOneof("kind") == "failure"]


def test_the_agent_opens_a_sealed_call_and_seals_its_result() -> None:
    start, req = _sealed()
    ran, frames = _run_forwarded(start, _cfg())
    assert [c.tool for c in ran] == ["execute_command"] and ran[0].input == {"command": "id"}
    result = [f.result.result_json for f in frames if f.WhichOneof("kind") == "result"]
    assert b"exit_code" not in result[0]
    assert json.loads(e2e.ResponseOpener(req).final(result[0]))["exit_code"] == 0


def test_plaintext_is_refused_unless_e2e_is_off() -> None:
    start = pb.CallStart(call_id="k1:c2", tool="execute_command", input_json=b'{"command":"id"}',
                         caller=pb.Principal(kind="remote"))
    ran, frames = _run_forwarded(start, _cfg())
    assert ran == [] and _failures(frames) == ["e2e_refused"]
    ran, frames = _run_forwarded(start, _cfg(required=False))
    assert len(ran) == 1


def test_a_request_sealed_for_another_call_is_refused() -> None:
    start, _ = _sealed()
    start.call_id = "k1:c9"                     # the relay delivers it as another call
    ran, frames = _run_forwarded(start, _cfg())
    assert ran == [] and _failures(frames) == ["e2e_refused"]


def test_authorized_callers_need_a_valid_signature() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    alice = ed25519.Ed25519PrivateKey.generate()
    mallory = ed25519.Ed25519PrivateKey.generate()
    allowed = frozenset({alice.public_key().public_bytes_raw()})
    for signer, runs in ((alice, True), (mallory, False), (None, False)):
        ran, frames = _run_forwarded(_sealed(signer)[0], _cfg(authorized=allowed))
        assert (len(ran) == 1) is runs, signer
        if not runs:
            assert _failures(frames) == ["e2e_refused"]


# -- config.yaml -----------------------------------------------------------------------------------


def test_config_keys_for_e2e() -> None:
    from cmdop.adapters.config_file import parse_text

    assert parse_text("").e2e_required is True
    good = "ed25519:" + "A" * 43 + "="
    cfg = parse_text(f"e2e_required: false\nauthorized_callers:\n  - \"{good}\"\n")
    assert cfg.e2e_required is False and cfg.authorized_callers == (good,)
    for text, line in (("e2e_required: maybe\n", 1), ("authorized_callers: ed25519:x\n", 1),
                       ("authorized_callers:\n  - ssh-ed25519 AAAA\n", 2)):
        with pytest.raises(ConfigFileError) as info:
            parse_text(text)
        assert info.value.line == line, text


def test_two_callers_pinning_at_once_keep_both_pins(tmp_path):
    # Each first contact reads the pins, adds its own and writes the file back: without one
    # lock around that, the slower writer drops the other's new pin (which is then pinned on
    # trust again at the next call).
    import threading

    from cmdop.adapters import e2e_files

    home, relay = str(tmp_path), "relay.example:7443"
    start = threading.Barrier(8)

    def first_contact(i: int) -> None:
        start.wait()
        e2e_files.check_pin(home, relay, f"id-{i}", f"web{i}", bytes([i]) * 1216, scope="acme")

    threads = [threading.Thread(target=first_contact, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(e2e_files.pinned_key(home, relay, f"id-{i}", "acme") == bytes([i]) * 1216
               for i in range(8))
