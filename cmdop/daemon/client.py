"""Client side of the local socket protocol (see `cmdop.daemon.protocol`), blocking and bounded.

Used by `cmdop run` (through `connect_if_running`), `cmdop agent status`, and the
`cmdop permissions pending|approve|deny|watch` commands. Every socket operation carries a
timeout, so a wedged daemon never hangs a command forever.
"""

from __future__ import annotations

import itertools
import socket
from typing import Any, Generator, Iterator, Mapping

from cmdop.core.errors import DaemonError, DaemonNotRunningError
from cmdop.core.settings import Settings
from cmdop.daemon import protocol

CONNECT_TIMEOUT_S = 2.0
# A tool call may run up to 600 s plus an ask wait; leave room for both.
CALL_TIMEOUT_S = 600.0 + 3700.0
REQUEST_TIMEOUT_S = 30.0
KEY_QUERY_TIMEOUT_S = 15.0         # the agent waits 10 s for the relay's answer


class DaemonClient:
    """One connection to the running daemon. Not thread-safe; close() when done."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = protocol.FrameBuffer()
        self._ids = itertools.count(1)

    @classmethod
    def connect(cls, path: str, timeout: float = CONNECT_TIMEOUT_S) -> "DaemonClient":
        """Connect to the socket at `path`; DaemonNotRunningError when nobody listens there."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise DaemonNotRunningError(f"no agent is listening on {path}") from exc
        except PermissionError as exc:
            sock.close()
            raise DaemonError(f"not allowed to connect to {path}",
                              "the agent serves only its own user (and root)") from exc
        except OSError as exc:
            sock.close()
            raise DaemonNotRunningError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
        return cls(sock)

    def close(self) -> None:
        """Close the connection; a thread blocked in receive() (watch) wakes up with EOF."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def __enter__(self) -> "DaemonClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- framing -----------------------------------------------------------------------------

    def send(self, obj: Mapping[str, Any]) -> None:
        """Send one frame (bounded by the socket timeout)."""
        try:
            self._sock.sendall(protocol.encode(obj))
        except protocol.ProtocolError as exc:
            raise DaemonError(exc.message) from None
        except OSError as exc:
            raise DaemonError(f"lost the connection to the agent: {exc}") from None

    def receive(self, timeout: float | None) -> dict[str, Any]:
        """The next frame from the daemon; DaemonError on EOF, timeout or a bad frame."""
        try:
            self._sock.settimeout(timeout)
        except OSError as exc:  # closed under us by another thread
            raise DaemonError(f"lost the connection to the agent: {exc}") from None
        while True:
            try:
                obj = self._buf.next()
            except protocol.ProtocolError as exc:
                raise DaemonError(f"bad answer from the agent: {exc.message}") from None
            if obj is not None:
                return obj
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                raise DaemonError("the agent did not answer in time") from None
            except OSError as exc:
                raise DaemonError(f"lost the connection to the agent: {exc}") from None
            if not data:
                raise DaemonError("the agent closed the connection")
            self._buf.feed(data)

    def request(self, op: str, timeout: float = REQUEST_TIMEOUT_S, **args: Any) -> Any:
        """Send request `op` and return its `result`; a failure answer raises DaemonError."""
        req_id = next(self._ids)
        self.send({"v": protocol.VERSION, "id": req_id, "op": op, **args})
        resp = self.receive(timeout)
        if not resp.get("ok"):
            err = resp.get("error") or {}
            exc = DaemonError(str(err.get("message") or "the agent refused the request"),
                              err.get("hint"))
            exc.code = str(err.get("code") or "error")  # type: ignore[attr-defined]
            raise exc
        return resp.get("result")

    def _request_obj(self, op: str, **args: Any) -> dict[str, Any]:
        result = self.request(op, **args)
        if not isinstance(result, dict):
            raise DaemonError(f"bad answer from the agent to {op}")
        return result

    # -- operations --------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return self._request_obj("ping", timeout=CONNECT_TIMEOUT_S)

    def status(self) -> dict[str, Any]:
        return self._request_obj("status")

    def call_tool(self, tool: str, input: Mapping[str, Any], cwd: str,
                  as_caller: str | None = None, operation: str = "") -> Any:
        """Run `tool` as a local caller through the daemon's gate → tool → audit pipeline.

        Returns the tool's result. DaemonError if the daemon cannot serve it."""
        args: dict[str, Any] = {"tool": tool, "input": dict(input), "cwd": cwd}
        if operation:
            args["operation"] = operation
        if as_caller:
            args["as_caller"] = as_caller
        return self.request("call", timeout=CALL_TIMEOUT_S, **args)

    def pending(self) -> list[dict[str, Any]]:
        asks = self._request_obj("pending").get("asks")
        return list(asks) if isinstance(asks, list) else []

    def answer(self, ask_id: str, verdict: str, scope: str = "once",
               input_digest: str | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"ask_id": ask_id, "verdict": verdict, "scope": scope}
        if input_digest:
            args["input_digest"] = input_digest
        return self._request_obj("answer", **args)

    def add_session_rule(self, rule: str, action: str, reason: str = "") -> dict[str, Any]:
        """Add an in-memory rule to the running agent; `{"rule_id", ...}`. DaemonError (code
        `bad_rule`) when the rule does not parse."""
        return self._request_obj("add_session_rule", rule=rule, action=action, reason=reason)

    def list_rules(self) -> dict[str, Any]:
        """The running gate's rules, global and session: `{"mode", "policy_ok", "rules"}`."""
        return self._request_obj("list_rules")

    def reload(self) -> dict[str, Any]:
        return self._request_obj("reload")

    def relay_host_key(self, host: str,
                       credential: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The end-to-end key the relay has for `host`, asked on the agent's link:
        `{"name", "machine_id", "e2e_key": BASE64, "relay", "workspace"}`; DaemonError with the
        relay's failure code (host_unknown, host_offline, ...) or `no_link`."""
        args: dict[str, Any] = {"host": host}
        if credential is not None:
            args["credential"] = dict(credential)
        return self._request_obj("relay_host_key", timeout=KEY_QUERY_TIMEOUT_S, **args)

    def relay_call(self, host: str, sealed: bytes, call_id: str, *, stream: bool,
                   deadline_ms: int, credential: Mapping[str, str] | None = None
                   ) -> Generator[dict[str, Any], None, None]:
        """A call to another machine through the agent's relay link, sealed end to end by the
        caller (cmdop.relay.sealing: tool, input, cwd and session are inside `sealed`, bound to
        `call_id`): yields the event frames (`accepted`, `chunk`, then `result` or `failure`;
        chunks and the result stay sealed). DaemonError with code `no_link` at once when the
        agent has no link up, `other_credential` when `credential` (key id, workspace, relay
        of the caller's own choice) is not the link's. Closing the generator early (Ctrl-C)
        sends `cancel` and waits briefly for the call to end."""
        import base64

        req: dict[str, Any] = {"v": protocol.VERSION, "id": next(self._ids), "op": "relay_call",
                               "host": host, "stream": stream, "deadline_ms": deadline_ms,
                               "call_id": call_id,
                               "sealed": base64.b64encode(sealed).decode("ascii")}
        if credential is not None:
            req["credential"] = dict(credential)
        self.send(req)
        resp = self.receive(REQUEST_TIMEOUT_S)
        if not resp.get("ok"):
            err = resp.get("error") or {}
            exc = DaemonError(str(err.get("message") or "the agent refused the call"),
                              err.get("hint"))
            exc.code = str(err.get("code") or "error")  # type: ignore[attr-defined]
            raise exc
        ended = False
        try:
            while True:
                event = self.receive(deadline_ms / 1000 + 30)
                ended = event.get("event") in ("result", "failure")
                yield event
                if ended:
                    return
        finally:
            if not ended:
                try:
                    self.send({"v": protocol.VERSION, "id": next(self._ids), "op": "cancel"})
                    deadline = 5.0
                    while True:
                        if self.receive(deadline).get("event") in ("result", "failure"):
                            break
                except DaemonError:
                    pass

    def watch(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Attach as an approver and yield pushed events until the daemon closes the stream."""
        self.send({"v": protocol.VERSION, "id": next(self._ids), "op": "watch"})
        while True:
            try:
                yield self.receive(timeout)
            except DaemonError:
                return


def connect_if_running(settings: Settings) -> DaemonClient | None:
    """A client for the daemon when one answers on the local socket, else None.

    Never raises: a missing, dead or refusing daemon (another user's) all mean None, and the
    caller runs the tool in-process as itself."""
    try:
        client = DaemonClient.connect(settings.socket_path)
    except DaemonError:
        return None
    try:
        client.ping()
    except DaemonError:
        client.close()
        return None
    return client
