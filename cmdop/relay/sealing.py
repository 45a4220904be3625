"""The caller's half of end-to-end encryption, shared by every way a call leaves this machine
(direct to the relay, or through this machine's own agent link).

`seal_call` checks the host key the relay offered against the caller's pin (pinning it on first
use, HostKeyChangedError when it differs), then seals the call's tool, input, cwd and session,
with a fresh response key and the caller's signature, to that key. The returned `SealedCall`
opens the response: `chunk(frame) -> (fd, data)` and `result(frame) -> the result object`.
A call succeeds only through `result`, which opens the final frame: a stream cut before it
(truncation) never yields a result, and the caller reports the call as failed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from cmdop.adapters import e2e
from cmdop.core.errors import CmdopError, E2EError


@dataclass(frozen=True)
class Target:
    """A host as the relay described it: its name, its agent's machine id and public key."""

    name: str
    machine_id: str
    key: bytes


@dataclass(frozen=True)
class Pins:
    """Where the caller's pins live, which relay they are for, and the scope host names are
    unique in there: the caller's workspace, or a guest's share (`share_scope`)."""

    cmdop_home: str
    relay: str
    scope: str = ""


def share_scope(token: str) -> str:
    """A guest's pin scope: its share, named by a digest of the token (never the token)."""
    import hashlib

    return "share:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]


def no_key_error(name: str) -> E2EError:
    return E2EError(f"{name} has no end-to-end key registered at the relay, so the call cannot "
                    "be sealed; refusing to send it in the clear",
                    f"upgrade cmdop on {name} (and check `cmdop agent status` there)")


class SealedCall:
    """One sealed call: its id, the sealed request, and the opener of its response."""

    def __init__(self, call_id: str, sealed: bytes, opener: e2e.ResponseOpener,
                 from_pin: bool = False) -> None:
        self.call_id, self.sealed, self._opener = call_id, sealed, opener
        # Sealed to the pinned key without asking the relay: a refusal may mean the host's key
        # changed, which only a HostKey answer (checked against the pin) can tell.
        self.from_pin = from_pin

    def chunk(self, frame: bytes) -> tuple[int, bytes]:
        """(fd, data) of the next sealed output chunk; E2EError when it does not open."""
        return self._opener.chunk(frame)

    def result(self, frame: bytes) -> Any:
        """The result object of the sealed final frame."""
        data = self._opener.final(frame)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise CmdopError("the agent sent a result that is not JSON",
                             "upgrade cmdop on that machine") from None


def seal_call(pins: Pins, target: Target, tool: str, tool_input: dict[str, Any], *,
              cwd: str = "", session: str = "", stream: bool = False,
              requested: str = "") -> SealedCall:
    """The call sealed to `target`'s key, once that key passes the pin check. `requested`: the
    host name the user typed; the relay's answer must be a machine that name can mean."""
    from cmdop.adapters import e2e_files

    if not target.key:
        raise no_key_error(target.name)
    if requested:
        check_resolution(pins, requested, target.name)
    key = e2e_files.check_pin(pins.cmdop_home, pins.relay, target.machine_id, target.name,
                              target.key, pins.scope)
    if requested and requested.strip().lower() != target.name.lower():
        e2e_files.add_alias(pins.cmdop_home, pins.relay, target.machine_id, requested.strip(),
                            pins.scope)
    return _seal_to(pins, target.machine_id, key, tool, tool_input, cwd, session, stream)


def check_resolution(pins: Pins, requested: str, answered: str) -> None:
    """E2EError unless the relay's answer `answered` is a host `requested` can mean: the name
    itself or one it is a (case-insensitive) prefix of; and not another machine than the one
    this prefix reached before (its pin's `aliases`), nor — for a prefix — a machine never
    pinned when names pinned here start with it. Else a relay could seal the call to a machine
    of its choosing (a fresh name, pinned on trust, whose key it holds) for a name the user
    always reached another machine by. (An honest relay makes such a prefix ambiguous rather
    than move it: cmdop.relay.routing.resolve_host.)"""
    from cmdop.adapters import e2e_files
    from cmdop.core.errors import HostKeyChangedError

    want, got = requested.strip().lower(), answered.lower()
    if not want or not got.startswith(want) or not answered.isprintable():
        raise E2EError(f"the relay answered {answered!r} for the host {requested!r}, a name "
                       "that cannot mean it; refusing the call",
                       "the relay may be misrouting calls: check `cmdop hosts`")
    pinned = e2e_files.pinned_names(pins.cmdop_home, pins.relay, pins.scope)
    known = [n for n, aliases in pinned.items() if want in aliases]
    if got != want:
        known += [n for n in pinned if n.lower().startswith(want)]
    if known and answered not in known:
        raise HostKeyChangedError(
            f"WARNING: {requested!r} reached {', '.join(sorted(set(known)))} here (pinned); the "
            f"relay now says it means {answered}; refusing the call: a relay could be "
            "redirecting it to a machine of its choosing",
            f"call the machine you mean by its exact name; if {answered} replaced "
            f"{sorted(known)[0]}, compare fingerprints and `cmdop connect trust {answered}`")


def seal_pinned(pins: Pins, host: str, tool: str, tool_input: dict[str, Any], *,
                cwd: str = "", session: str = "", stream: bool = False) -> SealedCall | None:
    """The call sealed to the key pinned under the exact name `host`, without asking the relay
    (one round trip less); None when no single machine is pinned under that name."""
    from cmdop.adapters import e2e_files

    found = e2e_files.pinned_by_name(pins.cmdop_home, pins.relay, host, pins.scope)
    if found is None:
        return None
    call = _seal_to(pins, found[0], found[1], tool, tool_input, cwd, session, stream)
    call.from_pin = True
    return call


def _seal_to(pins: Pins, machine_id: str, key: bytes, tool: str, tool_input: dict[str, Any],
             cwd: str, session: str, stream: bool = False) -> SealedCall:
    from cmdop.adapters import e2e_files

    signer = e2e_files.load_caller_signer(pins.cmdop_home)
    call_id = uuid.uuid4().hex
    request = e2e.sign_request(e2e.Request(
        call_id=call_id, machine_id=machine_id, caller=signer.fingerprint, tool=tool,
        input_json=json.dumps(tool_input, ensure_ascii=False).encode("utf-8"), cwd=cwd,
        session=session, response_key=e2e.new_response_key(), stream=stream), signer.key,
        signer.public)
    return SealedCall(call_id, e2e.seal_request(request, key), e2e.ResponseOpener(request))


def seal_from_answer(cmdop_home: str, answer: dict[str, Any], tool: str,
                     tool_input: dict[str, Any], *, cwd: str = "", session: str = "",
                     scope: str = "", stream: bool = False,
                     requested: str = "") -> tuple[SealedCall, str]:
    """The sealed call for a local agent's `relay_host_key` answer (the agent only forwards
    it), and the host's exact name to route it by. `scope`: the caller's workspace;
    `requested`: the name the user typed (see `check_resolution`)."""
    import base64

    try:
        key = base64.b64decode(str(answer.get("e2e_key") or ""), validate=True)
    except ValueError:
        key = b""
    name = str(answer.get("name") or "")
    target = Target(name, str(answer.get("machine_id") or ""), key)
    return seal_call(Pins(cmdop_home, str(answer.get("relay") or ""), scope), target, tool,
                     tool_input, cwd=cwd, session=session, stream=stream,
                     requested=requested), name
