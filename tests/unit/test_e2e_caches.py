"""What end-to-end encryption keeps in memory between calls, and that it never serves a stale or
unsafe answer: the caller's key and pins are read again whenever their file changed (and checked
again: a file opened to others is refused at once), and the agent's record of sealed calls,
kept open for appending, still holds every call after a compaction and a restart."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from cmdop.adapters import e2e, e2e_files, e2e_seen, secure_file
from cmdop.adapters.e2e_seen import SEEN_FILE, SeenRequests
from cmdop.core.errors import E2EError, SecretFileError
from cmdop.relay.sealing import Pins, seal_pinned

KEY_A = e2e.load_private(e2e.generate_private())
KEY_B = e2e.load_private(e2e.generate_private())


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files count as settled at once, so the cache is used right after a write (each change
    below also changes the inode, size or mode, so none can hide in one clock tick)."""
    monkeypatch.setattr(e2e_files, "_SETTLED_NS", -10**12)


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = secure_file.read_private

    def counting(path: str) -> bytes:
        seen.append(os.path.basename(path))
        return real(path)
    monkeypatch.setattr(secure_file, "read_private", counting)
    return seen


def _new_key(path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    secure_file.atomic_write(str(path), ed25519.Ed25519PrivateKey.generate().private_bytes_raw())


# (change to the caller key file, what the next call gets: "new" key, or the error)
CALLER_KEY_CHANGES: list[tuple[Callable[[Path], None], Any]] = [
    (_new_key, "new"),
    (lambda p: p.chmod(0o644), SecretFileError),          # opened to others: refused at once
    (lambda p: p.write_bytes(b"short"), E2EError),         # corrupt
]


@pytest.mark.parametrize("change,then", CALLER_KEY_CHANGES)
def test_a_changed_caller_key_file_is_read_again(tmp_path: Path, settled: None,
                                                 change: Callable[[Path], None],
                                                 then: Any) -> None:
    home = str(tmp_path / "cmdop")
    first = e2e_files.load_caller_signer(home)
    assert e2e_files.load_caller_signer(home) == first          # cached
    change(Path(home) / e2e_files.CALLER_KEY_FILE)
    if then == "new":
        again = e2e_files.load_caller_signer(home)
        assert again.public != first.public
        assert again.fingerprint == e2e.fingerprint(again.public)
        assert again.key.public_key().public_bytes_raw() == again.public
    else:
        for _ in range(2):                                       # errors are never cached
            with pytest.raises(then):
                e2e_files.load_caller_signer(home)


def test_a_settled_caller_key_is_read_once_for_many_calls(tmp_path: Path, settled: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    home = str(tmp_path / "cmdop")
    e2e_files.load_caller_signer(home)
    reads = _reads(monkeypatch)
    for _ in range(5):
        e2e_files.load_caller_signer(home)
    assert reads == []


def test_a_file_written_just_now_is_read_every_time(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Within a clock tick of a write, a later write could keep the same signature: no cache.
    home = str(tmp_path / "cmdop")
    e2e_files.load_caller_signer(home)
    reads = _reads(monkeypatch)
    e2e_files.load_caller_signer(home)
    e2e_files.load_caller_signer(home)
    assert reads == [e2e_files.CALLER_KEY_FILE] * 2


def test_sealing_follows_a_pin_replaced_in_the_same_process(tmp_path: Path,
                                                            settled: None) -> None:
    home = str(tmp_path / "cmdop")
    pins = Pins(home, "relay:1", "ws")
    e2e_files.pin(home, "relay:1", "m1", "web1", KEY_A.public, "ws")
    first = seal_pinned(pins, "web1", "execute_command", {"command": "true"})
    assert first is not None
    assert e2e.open_request(first.sealed, KEY_A, first.call_id, "m1").tool == "execute_command"
    # `cmdop connect trust web1` in another process: the next call seals to the new key
    e2e_files.pin(home, "relay:1", "m2", "web1", KEY_B.public, "ws")
    second = seal_pinned(pins, "web1", "execute_command", {"command": "true"})
    assert second is not None
    assert e2e.open_request(second.sealed, KEY_B, second.call_id, "m2").tool == "execute_command"
    with pytest.raises(E2EError):
        e2e.open_request(second.sealed, KEY_A, second.call_id, "m2")
    os.chmod(Path(home) / e2e_files.KNOWN_HOSTS_FILE, 0o644)
    with pytest.raises(SecretFileError):
        seal_pinned(pins, "web1", "execute_command", {"command": "true"})


def test_sealing_a_call_does_not_change_what_opens_it(tmp_path: Path, settled: None) -> None:
    home = str(tmp_path / "cmdop")
    e2e_files.pin(home, "relay:1", "m1", "web1", KEY_A.public)
    calls = [seal_pinned(Pins(home, "relay:1"), "web1", "execute_command", {"n": i})
             for i in range(3)]
    signer = e2e_files.load_caller_signer(home)
    for i, call in enumerate(calls):
        assert call is not None
        request = e2e.open_request(call.sealed, KEY_A, call.call_id, "m1")
        assert request.input_json == f'{{"n": {i}}}'.encode()
        assert request.caller == signer.fingerprint
        assert e2e.verify_caller(request, frozenset({signer.public})) == signer.fingerprint
    assert len({c.call_id for c in calls if c is not None}) == 3


def test_the_seen_record_survives_compaction_and_a_restart(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e2e_seen, "_COMPACT_AFTER", 2)
    path = str(tmp_path / SEEN_FILE)
    now = time.time()
    seen = SeenRequests(path, now)
    ids = [f"call-{i}" for i in range(7)]            # three compactions along the way
    for call_id in ids:
        seen.accept(call_id, int(now), now)
    seen.close()
    seen.close()                                      # idempotent
    seen.accept("call-after-close", int(now), now)   # reopens the file
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    restarted = SeenRequests(path, now)
    for call_id in [*ids, "call-after-close"]:
        with pytest.raises(E2EError, match="replay"):
            restarted.accept(call_id, int(now), now)
