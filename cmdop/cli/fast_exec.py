"""`cmdop exec HOST -- CMD…` through the local agent's relay link, importing only what it needs.

Like ssh's ControlMaster: when an agent runs here with its relay link up, `cmdop exec` is one
short process that hands the call to it over the local socket and streams the output; no
argparse tree, no grpc, no TLS. `run(argv)` returns None whenever this path does not apply
(another option, no agent, no link, an answer it does not expect), and the full CLI
(`cmdop.cli.remote_cmd`) then handles the invocation from the start — so the two paths cannot
disagree on anything but speed. Exit status as the full CLI's: the remote status, 3 denied,
4 auth, 5 unreachable, 130 after Ctrl-C.
"""

from __future__ import annotations

import base64
import os
import shlex
import socket
import sys

from cmdop.daemon import protocol

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # kept out of the import path of this lean module
    from cmdop.core.errors import CmdopError
    from cmdop.core.settings import Settings

_MAX_TIMEOUT_S = 600.0
_CONNECT_TIMEOUT_S = 2.0
_KEY_TIMEOUT_S = 15.0             # the agent waits 10 s for the relay's answer


def parse(argv: list[str]) -> tuple[str, list[str], float, str] | None:
    """(host, command argv, timeout, cwd) for the shapes this path serves: `[--timeout S]
    [--cwd DIR] HOST [--] CMD…`; None for anything else (the full CLI decides)."""
    timeout, cwd, i = _MAX_TIMEOUT_S, "", 0
    while i < len(argv) and argv[i].startswith("-"):
        opt, eq, value = argv[i].partition("=")
        if opt not in ("--timeout", "--cwd"):
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            value, i = argv[i + 1], i + 1
        if opt == "--timeout":
            try:
                timeout = float(value)
            except ValueError:
                return None
            if not 0 < timeout <= _MAX_TIMEOUT_S:
                return None
        else:
            cwd = value
        i += 1
    if i >= len(argv):
        return None
    host, rest = argv[i], argv[i + 1:]
    if rest and rest[0] != "--" and rest[0].startswith("-"):
        return None               # an option after HOST: the full CLI refuses it
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest or host.startswith("-"):
        return None
    if not host.strip() or (len(rest) == 1 and not rest[0].strip()):
        return None               # an empty HOST or command: the full CLI's usage error
    return host, rest, timeout, cwd


def run(argv: list[str]) -> int | None:
    """Run `cmdop exec ARGV` through the local agent; None when this path does not apply."""
    parsed = parse(argv)
    if parsed is None or "CMDOP_SHARE_TOKEN" in os.environ:   # even empty: refused there
        return None               # a guest's call goes direct, never as this machine's agent
    host, command, timeout, cwd = parsed
    from cmdop.adapters.service_paths import account_home, discover
    from cmdop.core.settings import Settings

    # The same settings the full CLI derives (cmdop.cli.common.current_settings), without
    # importing argparse and the command tree.
    from cmdop.core.errors import CmdopError

    try:
        settings = discover(Settings.from_env(os.environ, account_home()), os.environ)
        claim, workspace = _claim(settings)
    except CmdopError:
        return None               # the full CLI reports the credential problem
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(_CONNECT_TIMEOUT_S)
    try:
        sock.connect(settings.socket_path)
    except OSError:
        sock.close()
        return None
    with sock:
        return _call(sock, host, command, timeout, cwd, claim, _session(settings, host),
                     home=settings.cmdop_home, scope=workspace)


def _claim(settings: "Settings") -> tuple[dict[str, str] | None, str]:
    """The caller's own credential as its agent should compare it (see
    credential_flags.credential_claim), and its workspace (the scope of its end-to-end pins);
    CmdopError when it cannot be resolved."""
    import argparse

    from cmdop.cli.credential_flags import credential_claim, resolve_from_args

    cred = resolve_from_args(argparse.Namespace(), settings)
    return credential_claim(cred), cred.workspace or ""


def _call(sock: socket.socket, host: str, command: list[str], timeout: float,
          cwd: str, claim: dict[str, str] | None, session: str = "", *, home: str,
          scope: str = "") -> int | None:
    text = command[0] if len(command) == 1 else shlex.join(command)
    tool_input: dict[str, object] = {"command": text, "timeout_ms": int(timeout * 1000)}
    if cwd:
        tool_input["cwd"] = cwd
    deadline_ms = int((timeout + 30) * 1000)
    frames = protocol.FrameBuffer()
    # End to end: sealed here, opened here (the agent forwards opaque bytes): to the key pinned
    # under this exact name, else to the key the relay offers, checked against the pin.
    from cmdop.core.errors import CmdopError
    from cmdop.relay.sealing import Pins, seal_pinned

    sealed, name = None, host
    if claim is not None and claim.get("relay"):
        try:
            sealed = seal_pinned(Pins(home, claim["relay"], scope), host, "execute_command",
                                 tool_input, session=session, stream=True)
        except CmdopError as exc:
            return _print(exc)
    if sealed is None:
        found = _asked(sock, frames, host, claim, tool_input, session, home, scope)
        if not isinstance(found, tuple):
            return found          # None: the full CLI decides; an int: the error's exit
        sealed, name = found
    req: dict[str, object] = {"v": protocol.VERSION, "id": 2, "op": "relay_call", "host": name,
                              "call_id": sealed.call_id, "stream": True,
                              "sealed": base64.b64encode(sealed.sealed).decode("ascii"),
                              "deadline_ms": deadline_ms}
    if claim is not None:
        req["credential"] = claim
    sock.sendall(protocol.encode(req))
    sock.settimeout(deadline_ms / 1000 + 30)
    first = _receive(sock, frames)
    if first is None or not first.get("ok"):
        return None               # no link, an old agent, a refusal: the full CLI decides
    out, err = sys.stdout.buffer, sys.stderr.buffer
    try:
        while True:
            event = _receive(sock, frames)
            if event is None:
                print("cmdop: error: the agent closed the connection during the call",
                      file=sys.stderr)
                return 5
            kind = event.get("event")
            if kind == "chunk":
                fd, data = sealed.chunk(base64.b64decode(str(event.get("data") or "")))
                stream = err if fd == 2 else out
                try:
                    stream.write(data)
                    stream.flush()
                except BrokenPipeError:     # `cmdop exec … | head`: stop, cancel the rest
                    sock.close()
                    return 141
            elif kind == "result":
                result = sealed.result(base64.b64decode(str(event.get("sealed") or "")))
                if _needs_unlock(result):
                    return _locked(result, host)
                return _finish(result, timeout)
            elif kind == "failure":
                if event.get("code") == "e2e_refused" and sealed.from_pin:
                    changed = _asked(sock, frames, host, claim, tool_input, session, home,
                                     scope)
                    if isinstance(changed, int):
                        return changed            # the host's key changed: the warning
                return _failed(event)
    except CmdopError as exc:         # a response frame that does not open (E2EError)
        sock.close()
        return _print(exc)
    except KeyboardInterrupt:
        try:
            sock.sendall(protocol.encode({"v": protocol.VERSION, "id": 3, "op": "cancel"}))
            sock.settimeout(5.0)
            while (e := _receive(sock, frames)) is not None and e.get("event") not in (
                    "result", "failure"):
                pass
        except OSError:
            pass
        print("cmdop: interrupted; the remote command was cancelled", file=sys.stderr)
        return 130


def _asked(sock: socket.socket, frames: protocol.FrameBuffer, host: str,
           claim: dict[str, str] | None, tool_input: dict[str, object], session: str,
           home: str, scope: str) -> "tuple[Any, str] | int | None":
    """(sealed call, host name) sealed to the key the relay offers for `host` through the
    agent's link, once it passes the pin check; the exit status after printing the error (a
    changed key: the warning); None when the agent cannot ask (the full CLI decides)."""
    from cmdop.core.errors import CmdopError
    from cmdop.relay.sealing import seal_from_answer

    ask: dict[str, object] = {"v": protocol.VERSION, "id": 1, "op": "relay_host_key",
                              "host": host}
    if claim is not None:
        ask["credential"] = claim
    sock.sendall(protocol.encode(ask))
    sock.settimeout(_KEY_TIMEOUT_S)
    answer = _receive(sock, frames)
    target = answer.get("result") if answer is not None and answer.get("ok") else None
    if not isinstance(target, dict):
        return None               # no link, an old agent, an unknown host: the full CLI decides
    try:
        return seal_from_answer(home, target, "execute_command", dict(tool_input),
                                session=session, scope=scope, stream=True, requested=host)
    except CmdopError as exc:
        return _print(exc)


def _session(settings: "Settings", host: str) -> str:
    # Most callers never unlocked a machine: no cache file, no import of the password store.
    if not os.path.exists(settings.sessions_file):
        return ""
    from cmdop.adapters.password_store import cached_session

    return cached_session(settings, host)


def _needs_unlock(result: object) -> bool:
    from cmdop.core.password_policy import needs_unlock

    return needs_unlock(result)


def _locked(result: object, host: str) -> int:
    """The host wants its password first: say how to unlock it (exit 3, as a denial)."""
    from cmdop.core.password_policy import unlock_hint

    rule = result.get("rule_id") if isinstance(result, dict) else ""
    print(f"cmdop: error: denied: {host}: this machine requires its password from remote "
          f"callers [source floor, rule {rule}]", file=sys.stderr)
    print(f"hint: {unlock_hint(host)}", file=sys.stderr)
    return 3


def _receive(sock: socket.socket, frames: protocol.FrameBuffer) -> dict[str, object] | None:
    while True:
        obj = frames.next()
        if obj is not None:
            return obj
        data = sock.recv(65536)
        if not data:
            return None
        frames.feed(data)


def _finish(result: object, timeout: float) -> int:
    if not isinstance(result, dict):
        print("cmdop: error: the agent sent an unexpected result", file=sys.stderr)
        return 1
    if result.get("error") == "permission_denied":
        from cmdop.relay.caller import denial_error

        return _print(denial_error(result))
    if "exit_code" not in result:
        print(f"cmdop: error: the call failed: {result.get('message') or result.get('error')}",
              file=sys.stderr)
        return 1
    if result.get("timed_out"):
        print(f"cmdop: the command timed out after {timeout:.0f} s and was killed",
              file=sys.stderr)
    code = result["exit_code"]
    if not isinstance(code, int) or isinstance(code, bool):
        print("cmdop: error: the agent sent an exit code that is not a number", file=sys.stderr)
        return 1
    return code


def _failed(event: dict[str, object]) -> int:
    from cmdop.relay.caller import failure_error

    return _print(failure_error(str(event.get("code") or ""), str(event.get("message") or ""),
                                str(event.get("hint") or "")))


def _print(exc: "CmdopError") -> int:
    """Report `exc` as the full CLI does (cmdop.cli.main._report); its exit status."""
    from cmdop.cli.main import _report

    return _report(exc)

