"""The local Unix socket server: binding safely, checking peers, framing, per-client isolation.

Rules:
- The socket's directory is 0700 (created so, or refused if it is open to others) and the socket
  0600. A socket file left behind is unlinked only after checking that no daemon answers on it,
  so a second daemon can never steal a live one's socket.
- Each peer is checked with SO_PEERCRED: its uid must be the daemon's, or root. Anyone else gets a
  `forbidden` frame, is disconnected, and the attempt is logged with its pid and uid.
- Then its seccomp confinement (`peer_confinement_allowed`): a peer carrying more seccomp filters
  than the daemon itself is a command the agent ran (or a child of one) and is refused the same
  way, whatever its uid (root included); so is a peer whose /proc status cannot be read. Without
  this, a command run for a remote caller would come back through the socket as a *local*
  caller (gate bypass, session rules, answering asks).
- Every client runs in its own task; a malformed, oversized, idle or slow client is dropped
  without affecting the others (reads and writes carry deadlines).
"""

from __future__ import annotations

import logging
import os
import pwd
import socket as stdsocket
import stat
import struct
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

import trio

from cmdop.adapters.peer_process import SeccompState, peer_seccomp, read_seccomp
from cmdop.core.errors import DaemonError
from cmdop.daemon import protocol

log = logging.getLogger("cmdop.daemon.socket")

_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection, as the kernel says (never as the client says)."""

    pid: int
    uid: int
    gid: int

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return f"uid:{self.uid}"


class WatchRequested(Exception):
    """Raised by a dispatcher to turn the connection into an event stream (op `watch`)."""

    def __init__(self, req_id: Any) -> None:
        super().__init__("watch")
        self.req_id = req_id


class StreamRequested(Exception):
    """Raised by a dispatcher to serve one request as a stream of frames (op `relay_call`):
    `serve(send, reader)` runs with the connection, then the connection takes requests again."""

    def __init__(self, serve: Callable[[Callable[[dict[str, Any]], Awaitable[None]],
                                        "FrameReader"], Awaitable[None]]) -> None:
        super().__init__("stream")
        self.serve = serve


Dispatch = Callable[[dict[str, Any], Peer], Awaitable[dict[str, Any]]]


class Approvers(Protocol):
    """Where watch connections attach (the ask broker)."""

    def attach(self) -> trio.MemoryReceiveChannel[dict[str, Any]]: ...

    def detach(self, recv: trio.MemoryReceiveChannel[dict[str, Any]]) -> None: ...


def peer_allowed(peer_uid: int, daemon_uid: int) -> bool:
    """The local socket serves the daemon's own user and root, nobody else."""
    return peer_uid == daemon_uid or peer_uid == 0


def peer_confinement_allowed(peer: SeccompState | None, own: SeccompState | None) -> bool:
    """True when the peer is no more seccomp-confined than the daemon itself; False (refuse)
    when it is, and whenever either state is unknown (fail closed).

    Why this tells a command the agent ran from an operator: every sandboxed child inherits the
    daemon's filters plus at least the sandbox's own (the fork server stacks it on top), and a
    filter can never be removed, so such a child always carries MORE filters than the agent. An
    operator's shell carries no more than the agent: the same number when both run in the same
    container, fewer under systemd (`SystemCallFilter=` gives the agent one more).
    Without a filter count (kernels before 5.9) only a peer with no seccomp at all is known to
    be no more confined; a filtered peer is refused, as the counts cannot be compared."""
    if peer is None or own is None:
        return False
    if peer.mode == 1 and own.mode != 1:     # strict mode is tighter than any filter stack
        return False
    if peer.filters is not None and own.filters is not None:
        return peer.filters <= own.filters
    return peer.mode == 0


def peer_of(sock: trio.socket.SocketType) -> Peer:
    raw = sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid=pid, uid=uid, gid=gid)


def _socket_answers(path: str) -> int | None:
    """The pid of a daemon answering on `path`, or None when nobody does (bounded: 2 s)."""
    from cmdop.daemon.client import DaemonClient

    try:
        with DaemonClient.connect(path) as client:
            return int(client.ping().get("pid") or 0)
    except (DaemonError, ValueError):
        return None


_SUN_PATH_MAX = 108     # sizeof(sockaddr_un.sun_path) on Linux, the final NUL included


def _listening(path: str) -> bool:
    """Whether a process accepts connections on the unix socket `path` (a stale socket file
    refuses them)."""
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM | stdsocket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def prepare_socket_dir(path: str) -> None:
    """Create the socket's directory 0700, or refuse one that others can enter."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
    st = os.stat(directory)
    if st.st_uid != os.geteuid():
        raise DaemonError(f"socket directory {directory} is owned by uid {st.st_uid}, not us",
                          f"chown {os.geteuid()} {directory}, or set CMDOP_SOCKET_PATH")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise DaemonError(f"socket directory {directory} is open to other users",
                          f"chmod 700 {directory}, or set CMDOP_SOCKET_PATH to a private directory")


def bind_listener(path: str) -> stdsocket.socket:
    """A listening socket at `path` (dir 0700, socket 0600). DaemonError when another daemon
    answers there ("already running (pid N)"). Blocking; call it before trio starts."""
    prepare_socket_dir(path)
    if len(os.fsencode(path)) >= _SUN_PATH_MAX:
        raise DaemonError(f"socket path {path} is too long for a unix socket "
                          f"({len(os.fsencode(path))} bytes, at most {_SUN_PATH_MAX - 1})",
                          "set CMDOP_SOCKET_PATH (or XDG_RUNTIME_DIR) to a shorter path")
    if os.path.lexists(path):
        # Only a socket is ours to replace: never delete a file or a directory someone
        # pointed CMDOP_SOCKET_PATH at by mistake.
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise DaemonError(f"{path} exists and is not a socket; refusing to replace it",
                              "set CMDOP_SOCKET_PATH to a path where nothing is, or move that away")
        pid = _socket_answers(path)
        if pid is not None:
            raise DaemonError(f"already running (pid {pid})",
                              "stop it first (`systemctl stop cmdop`, or kill that pid)")
        if _listening(path):
            # Alive but silent: a hung or stopped agent, or another program. Its socket is not
            # ours to take; a stale one refuses connections.
            raise DaemonError(f"a process listens on {path} but does not answer as a cmdop agent",
                              "stop it (`fuser -v` or `ss -xlp` shows which), or set "
                              "CMDOP_SOCKET_PATH to another path")
        log.info("removing stale socket %s", path)
        os.unlink(path)
    sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM | stdsocket.SOCK_CLOEXEC)
    # Created 0600 from the start: a umask for the bind closes the window before chmod.
    # (os.umask is process-wide; this runs before any thread exists.)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


class FrameReader:
    """Reads whole frames from a stream with an idle bound and a per-frame bound."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._unread: list[dict[str, Any]] = []

    def unread(self, frame: dict[str, Any]) -> None:
        """Give back a frame read too early: the next read() returns it first."""
        self._unread.append(frame)

    async def _more(self) -> None:
        data = await self._stream.receive_some(65536)
        if not data:
            raise protocol.ProtocolError("truncated", "connection closed inside a frame")
        self._buf += data

    async def read(self, idle_s: float = protocol.IDLE_TIMEOUT_S) -> dict[str, Any] | None:
        """The next request, None on a clean EOF; ProtocolError for bad, big, slow or idle."""
        if self._unread:
            return self._unread.pop(0)
        if not self._buf:
            data = b""
            with trio.move_on_after(idle_s) as idle:
                data = await self._stream.receive_some(65536)
            if idle.cancelled_caught:
                raise protocol.ProtocolError("idle", "connection idle for too long")
            if not data:
                return None
            self._buf += data
        with trio.move_on_after(protocol.FRAME_TIMEOUT_S) as slow:
            while len(self._buf) < protocol.HEADER.size:
                await self._more()
            length = protocol.frame_length(bytes(self._buf[: protocol.HEADER.size]))
            end = protocol.HEADER.size + length
            while len(self._buf) < end:
                await self._more()
        if slow.cancelled_caught:
            raise protocol.ProtocolError("slow", "frame not completed in time")
        body = bytes(self._buf[protocol.HEADER.size:end])
        del self._buf[:end]
        return protocol.decode(body)


async def send_frame(stream: trio.SocketStream, obj: dict[str, Any]) -> None:
    """Send one frame; a client that does not read within the bound is dropped (TooSlowError)."""
    data = protocol.encode(obj)
    with trio.fail_after(protocol.FRAME_TIMEOUT_S):
        await stream.send_all(data)


class LocalServer:
    """Accepts clients on a bound listener and runs each in `conn_nursery`."""

    def __init__(self, listener: stdsocket.socket, dispatch: Dispatch, approvers: Approvers,
                 counters: dict[str, int]) -> None:
        self._listener = trio.SocketListener(trio.socket.from_stdlib_socket(listener))
        self._dispatch = dispatch
        self._approvers = approvers
        self._uid = os.geteuid()
        # Read once: the daemon's own filter count never changes under it except upwards (filters
        # cannot be removed), so the value at start is the strictest baseline. Unreadable → None,
        # retried per connection, and every peer is refused meanwhile (fail closed).
        self._own_seccomp = read_seccomp("self")
        if self._own_seccomp is None:
            log.error("cannot read this agent's own seccomp state from /proc/self/status: "
                      "every local client will be refused until it can")
        self._pidfd_note_logged = False
        self.counters = counters

    async def serve(self, conn_nursery: trio.Nursery,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept until cancelled; connections live in `conn_nursery`, so stopping the accept
        loop does not cut off calls in flight. Reports started once it accepts."""
        task_status.started()
        while True:
            try:
                stream = await self._listener.accept()
            except OSError as exc:  # EMFILE and friends: back off, do not spin or die
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            conn_nursery.start_soon(self._connection, stream)

    async def aclose(self) -> None:
        await self._listener.aclose()

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.counters["connections"] = self.counters.get("connections", 0) + 1
        async with stream:
            try:
                peer = peer_of(stream.socket)
            except OSError:
                return
            if not peer_allowed(peer.uid, self._uid):
                log.warning("refused local client pid %d uid %d (%s)", peer.pid, peer.uid, peer.user,
                            extra={"fields": {"peer_pid": peer.pid, "peer_uid": peer.uid}})
                await self._refuse(stream, "this agent serves only its own user")
                return
            if not self._confinement_ok(stream, peer):
                self.counters["refused_confined_peers"] = (
                    self.counters.get("refused_confined_peers", 0) + 1)
                await self._refuse(
                    stream, "a command run by the agent cannot use the agent's socket",
                    "run cmdop from your own shell; the agent refuses clients more "
                    "seccomp-confined than itself (the commands it runs, and their children)")
                return
            try:
                await self._requests(stream, peer)
            except (protocol.ProtocolError, trio.TooSlowError, trio.BrokenResourceError,
                    trio.ClosedResourceError, OSError) as exc:
                self.counters["dropped_clients"] = self.counters.get("dropped_clients", 0) + 1
                code = getattr(exc, "code", type(exc).__name__)
                log.info("dropped local client pid %d: %s", peer.pid, code)
                if isinstance(exc, protocol.ProtocolError):
                    with trio.move_on_after(1):
                        try:
                            await send_frame(stream, protocol.error(None, exc.code, exc.message))
                        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                            pass
            except Exception:  # a bug of ours must cost one client, never the whole server
                self.counters["dropped_clients"] = self.counters.get("dropped_clients", 0) + 1
                log.exception("local client pid %d: internal error, dropped", peer.pid)

    async def _refuse(self, stream: trio.SocketStream, message: str,
                      hint: str | None = None) -> None:
        """Count a refused peer, send it one `forbidden` frame (bounded: 1 s), and let the caller
        close the connection."""
        self.counters["refused_peers"] = self.counters.get("refused_peers", 0) + 1
        with trio.move_on_after(1):
            try:
                await send_frame(stream, protocol.error(None, "forbidden", message, hint))
                # Drain what it already sent: closing with unread data would reset the
                # connection and the client would never see why it was refused.
                await stream.send_eof()
                await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass    # it left already; the refusal is logged and counted all the same

    def _confinement_ok(self, stream: trio.SocketStream, peer: Peer) -> bool:
        """Whether `peer` is no more seccomp-confined than this daemon (see
        `peer_confinement_allowed`); a refusal is logged with pid, uid and both filter counts.

        Reading /proc is synchronous: it never waits on the peer and takes microseconds."""
        own = self._own_seccomp or read_seccomp("self")
        self._own_seccomp = own
        found = peer_seccomp(stream.socket, peer.pid)
        if not found.pidfd_supported and not self._pidfd_note_logged:
            self._pidfd_note_logged = True
            # Without SO_PEERPIDFD a peer that exits right after connecting could have its pid
            # reused before we read /proc/<pid>/status; the check then reads the wrong process.
            log.info("this kernel has no SO_PEERPIDFD: local clients' seccomp state is read by "
                     "pid (a reused pid cannot be ruled out)")
        if peer_confinement_allowed(found.state, own):
            return True
        peer_filters = found.state.filters if found.state else None
        own_filters = own.filters if own else None
        if own is None:
            why = "the agent cannot read its own seccomp state"
        elif found.state is None:
            why = f"its seccomp state cannot be verified: {found.why}"
        else:
            why = (f"seccomp mode {found.state.mode} with {peer_filters} filter(s), the agent "
                   f"mode {own.mode} with {own_filters}: a command run by the agent")
        log.warning("refused local client pid %d uid %d (%s): %s", peer.pid, peer.uid, peer.user,
                    why, extra={"fields": {"peer_pid": peer.pid, "peer_uid": peer.uid,
                                           "peer_seccomp_filters": peer_filters,
                                           "agent_seccomp_filters": own_filters,
                                           "pidfd": found.pinned}})
        return False

    async def _requests(self, stream: trio.SocketStream, peer: Peer) -> None:
        reader = FrameReader(stream)
        while True:
            req = await reader.read()
            if req is None:
                return
            try:
                resp = await self._dispatch(req, peer)
            except WatchRequested as w:
                await send_frame(stream, protocol.ok(w.req_id, {"watching": True}))
                await self._stream_events(stream, peer)
                return
            except StreamRequested as s:
                async def send(obj: dict[str, Any]) -> None:
                    await send_frame(stream, obj)

                await s.serve(send, reader)
                continue
            await send_frame(stream, resp)

    async def _stream_events(self, stream: trio.SocketStream, peer: Peer) -> None:
        """Push broker events to an attached approver until it leaves or the broker closes.

        Both halves swallow their own connection errors, so nothing but cancellation leaves the
        nursery (trio would wrap it in an ExceptionGroup)."""
        gone = (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError)
        recv = self._approvers.attach()
        log.info("approver attached: pid %d (%s)", peer.pid, peer.user)
        try:
            async with trio.open_nursery() as nursery:
                async def until_client_leaves() -> None:
                    # A watcher sends nothing more; EOF or any byte ends the stream.
                    try:
                        await stream.receive_some(1)
                    except gone:
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_client_leaves)
                try:
                    async for ev in recv:
                        await send_frame(stream, {"v": protocol.VERSION, **ev})
                except gone:
                    pass
                nursery.cancel_scope.cancel()
        finally:
            self._approvers.detach(recv)
            log.info("approver detached: pid %d", peer.pid)
