"""`cmdop agent run`: the daemon's lifecycle around one root trio nursery.

Order of things, and why:
1. Take the state-dir lock (flock on daemon.lock) and bind the socket *before* trio starts; a
   second daemon fails here with "already running (pid N)" and exit 1, touching nothing.
2. Open the audit writer outermost: it is closed last, after every call has written its line.
3. Root nursery, each long-lived job a named supervised task (crash → logged, restarted with
   backoff): local_server, policy_watcher, ask broker (passive: it lives in the calls), watchdog,
   status_writer, signals, relay_link (cmdop.daemon.relay_link). The parts calls run with
   (audit, gate, sandbox, pipeline) are built in one place: cmdop.daemon.components.
4. READY=1 only once the socket accepts and the policy has been loaded (good or kept-last).
   Then the sandbox is warmed in a worker thread (its server starts, ~50 ms, off the trio loop)
   and its enforcement (`Sandbox.enforcement`) goes into daemon.status; until then the status
   says `enforcement: {"state": "starting"}`. Each status refresh reads it again (cheap once the
   server runs), so a server restarted by the sandbox is reported as it now is.
5. SIGTERM/SIGINT: STOPPING=1, stop accepting (socket unlinked), refuse new calls, set the
   cancel event (running commands' process groups are killed, their audit lines written), deny
   pending asks, wait for calls up to the deadline (10 s), then cancel everything, exit 0.
   SIGHUP reloads permissions.yaml.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import gc
import os
import signal
import socket as stdsocket
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import trio

from cmdop import __version__
from cmdop.adapters.secure_file import ensure_private_dir
from cmdop.core.calls import Caller, ToolCall
from cmdop.core.errors import DaemonError
from cmdop.core.policy.decision import Decision
from cmdop.core.settings import Settings
from cmdop.daemon import status as status_mod
from cmdop.daemon.broker import AskBroker
from cmdop.daemon.components import Components, Gate, SandboxPort, build_components
from cmdop.daemon.local_server import LocalServer, bind_listener
from cmdop.daemon.notify import Notifier
from cmdop.daemon.relay_link import Link, LinkState
from cmdop.daemon.token_task import TokenState, run_token_refresher
from cmdop.daemon.service import AgentService
from cmdop.daemon.supervisor import supervise

log = logging.getLogger("cmdop.daemon")
STATUS_POLL_S = 0.5     # how soon daemon.status follows a change `agent status` would show


@dataclass(frozen=True)
class DaemonOptions:
    shutdown_deadline_s: float = 10.0
    status_interval_s: float = 10.0
    policy_poll_s: float = 0.5       # a changed permissions.yaml is applied within ~2 polls
    relay_link: bool = True          # link to the relay when a credential is configured
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def _take_lock(settings: Settings) -> int:
    """Hold daemon.lock for the process lifetime; DaemonError when another daemon holds it."""
    ensure_private_dir(settings.state_dir)
    path = os.path.join(settings.state_dir, "daemon.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = status_mod.read_pid(settings.pid_file)
        raise DaemonError(f"already running (pid {pid})" if pid else "already running",
                          "stop it first, or use another CMDOP_STATE_DIR") from None
    return fd


class Daemon:
    """One agent process. `run()` blocks until a stop signal and returns the exit status."""

    def __init__(self, settings: Settings, options: DaemonOptions | None = None) -> None:
        self.settings = settings
        self.options = options or DaemonOptions()
        self.notifier = Notifier(self.options.env)
        self.counters: dict[str, int] = {}
        self.crashes: dict[str, int] = {}
        self.started_at = status_mod.utc_now()
        self.state = "starting"
        self.hostname = stdsocket.gethostname()
        self.parts: Components | None = None   # built inside trio.run (build_components)
        self.policy_error = ""
        self.config_error = ""
        # The sandbox's enforcement as last read (off the trio thread): a placeholder until then.
        self.enforcement: dict[str, str] = {"state": "starting"}
        self._socket_ino = -1
        self._accept_scope: trio.CancelScope | None = None
        self._late_scope: trio.CancelScope | None = None
        # More named supervised tasks (the relay link): each gets this Daemon and runs in the
        # root nursery after READY; see add_task.
        self._extra_tasks: list[tuple[str, Callable[["Daemon"], Awaitable[None]]]] = []
        self.relay_state = LinkState()
        self.token_state = TokenState()
        self.current_link: Link | None = None    # while the relay link is up
        self.latest_access_token = ""             # the login's newest access token
        self.credentials_changed = trio.Event()   # set on a refresh; the relay link waits on it
        self._stop_event: trio.Event | None = None   # trio objects are created inside trio.run
        self._reload_lock: trio.Lock | None = None

    @property
    def gatekeeper(self) -> Gate | None:
        return self.parts.gate if self.parts else None

    @property
    def sandbox(self) -> SandboxPort | None:
        return self.parts.sandbox if self.parts else None

    def add_task(self, name: str, fn: Callable[["Daemon"], Awaitable[None]]) -> None:
        """Run `fn(daemon)` as one more named supervised task (call before run()). It reaches
        calls through `daemon.service.run_call` and asks through `daemon.broker`."""
        self._extra_tasks.append((name, fn))

    # -- entry -------------------------------------------------------------------------------

    def run(self) -> int:
        self._harden()
        lock_fd = _take_lock(self.settings)
        try:
            listener = bind_listener(self.settings.socket_path)
            self._socket_ino = os.stat(self.settings.socket_path).st_ino
            status_mod.write_pid(self.settings.pid_file)
            try:
                trio.run(self._main, listener)
            finally:
                listener.close()
                self._unlink_socket()
                self.state = "stopped"
                self._write_status()
                status_mod.remove_if_ours(self.settings.pid_file)
                self.notifier.close()
        finally:
            os.close(lock_fd)
        log.info("agent stopped")
        return 0

    def _harden(self) -> None:
        """Settings are read: take the secrets out of our environment (and its /proc view) and
        make our /proc files unreadable to same-uid non-root children
        (cmdop.adapters.process_hardening)."""
        from cmdop.adapters.process_hardening import make_undumpable, scrub_secret_env

        removed = scrub_secret_env()
        if removed:
            log.info("removed %s from the agent's environment", ", ".join(removed))
        if not make_undumpable():
            log.warning("could not make the agent undumpable: same-uid commands may read its "
                        "/proc files")

    def _unlink_socket(self) -> None:
        """Remove our socket file, never one a newer daemon has bound at the same path."""
        try:
            if os.stat(self.settings.socket_path).st_ino == self._socket_ino:
                os.unlink(self.settings.socket_path)
        except FileNotFoundError:
            pass

    # -- status ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        gk = self.gatekeeper
        # A rejected reload keeps the last good policy serving, but the file needs fixing.
        policy_ok = bool(getattr(gk, "policy_ok", False)) and not self.policy_error
        audit_ok = self._audit_writable()
        state = self.state
        login_ok = self.token_state.status != "DEGRADED" and not self.relay_state.refused
        if state == "online" and not (policy_ok and audit_ok and not self.config_error
                                      and login_ok):
            state = "degraded"
        broker: AskBroker | None = getattr(self, "broker", None)
        service: AgentService | None = getattr(self, "service", None)
        return {
            "pid": os.getpid(), "version": __version__, "started_at": self.started_at,
            "updated_at": status_mod.utc_now(), "state": state,
            "mode": str(getattr(gk, "mode", "") or ""), "policy_ok": policy_ok,
            "policy_error": self.policy_error, "config_error": self.config_error,
            "audit_ok": audit_ok, "relay_connected": self.relay_state.state == "online",
            "relay": self.relay_state.as_dict(),
            "login": self.token_state.as_dict(),
            "socket": self.settings.socket_path, "hostname": self.hostname,
            "approvers": broker.approvers if broker else 0,
            "pending_asks": len(broker.pending()) if broker else 0,
            "running_calls": service.running_calls if service else 0,
            "counters": {**self.counters, **(broker.counters if broker else {})},
            "task_restarts": dict(self.crashes), "refresh_s": self.options.status_interval_s,
            "enforcement": dict(self.enforcement),
        }

    def _write_status(self, snapshot: dict[str, Any] | None = None) -> None:
        try:
            status_mod.write_status(self.settings.status_file, snapshot or self.snapshot())
        except OSError as exc:
            log.warning("cannot write %s: %s", self.settings.status_file, exc)

    async def _write_status_async(self) -> None:
        # The snapshot reads trio-side state, so it is taken here; only the file write (fsync)
        # goes to a worker thread.
        await trio.to_thread.run_sync(self._write_status, self.snapshot())

    def _status_line(self) -> str:
        s = self.snapshot()
        return (f"{s['state']}: mode {s['mode'] or '?'}, {s['counters'].get('calls', 0)} calls, "
                f"{s['approvers']} approvers, policy {'ok' if s['policy_ok'] else 'BAD'}")

    # -- the trio side -----------------------------------------------------------------------

    async def _main(self, listener: stdsocket.socket) -> None:
        self._stop_event = trio.Event()
        self._reload_lock = trio.Lock()
        self._write_status()
        parts = self.parts = build_components(self.settings, self.hostname)
        self.policy_error, self.config_error = parts.policy_error, parts.config_error
        try:
            self.broker = AskBroker(keep_rule=self._keep_rule, judge=self._judge)
            self.service = AgentService(
                broker=self.broker, gatekeeper=parts.gate, call_context=parts.call_context,
                handle_call=parts.handle_call, hostname=self.hostname, status=self.snapshot,
                reload=self.reload_policy, counters=self.counters)
            self.service.current_link = lambda: self.current_link
            server = LocalServer(listener, self.service.dispatch, self.broker, self.counters)
            await self._serve(server)
        finally:
            parts.close()     # the sandbox's server, then the audit writer (last)

    def _spawn(self, nursery: trio.Nursery, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Start `fn` as a named supervised task (crash → logged, restarted with backoff)."""
        nursery.start_soon(functools.partial(supervise, name, fn, crashes=self.crashes), name=name)

    async def _start(self, nursery: trio.Nursery, name: str,
                     fn: Callable[[trio.TaskStatus[None]], Awaitable[None]]) -> None:
        """Start `fn(task_status)` supervised, and return once it reported itself ready."""
        await nursery.start(functools.partial(supervise, name, fn, crashes=self.crashes,
                                              reports_started=True), name=name)

    async def _serve(self, server: LocalServer) -> None:
        stop = self._stop_event
        assert stop is not None
        async with trio.open_nursery() as root:
            root.start_soon(self._signals)
            self._spawn(root, "policy_watcher", self._policy_watcher)
            async with trio.open_nursery() as conns:
                async def local_server(task_status: trio.TaskStatus[None]) -> None:
                    # A fresh scope per (re)start: a trio CancelScope cannot be entered twice.
                    if self.state == "stopping":
                        task_status.started()
                        return
                    with trio.CancelScope() as scope:
                        self._accept_scope = scope
                        await server.serve(conns, task_status)

                await self._start(root, "local_server", local_server)  # accepting from here
                self.state = "online"
                log.info("agent ready on %s (pid %d, mode %s)", self.settings.socket_path,
                         os.getpid(), getattr(self.gatekeeper, "mode", "?"))
                self.notifier.ready(self._status_line())
                self._write_status()
                # After READY=1: systemd expects pings only from a service that is up.
                self._spawn(root, "watchdog", self._watchdog)
                self._spawn(root, "status_writer", self._status_writer)
                self._spawn(root, "sandbox_warmup", self._warm_sandbox)
                if self.options.relay_link:
                    self._spawn(root, "relay_link", self._relay_link)
                    self._spawn(root, "token_refresher", functools.partial(
                        run_token_refresher, self.settings, self.token_state, self._new_token))
                for name, fn in self._extra_tasks:
                    self._spawn(root, name, functools.partial(fn, self))
                await stop.wait()
                await self._shutdown(server)
                conns.cancel_scope.cancel()
            root.cancel_scope.cancel()

    async def _shutdown(self, server: LocalServer) -> None:
        self.notifier.stopping("stopping: finishing running calls")
        self.state = "stopping"
        self._write_status()
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        await server.aclose()
        self._unlink_socket()
        self.service.stopping = True
        self.service.cancel_all()
        self.broker.close("agent shutting down")
        running = self.service.running_calls
        log.info("stopping: %d call(s) running", running)
        with trio.move_on_after(self.options.shutdown_deadline_s) as late:
            self._late_scope = late      # a second stop signal stops the wait at once
            await self.service.wait_idle()
        if late.cancelled_caught:
            log.error("%d call(s) still running after %.0fs; leaving them",
                      self.service.running_calls, self.options.shutdown_deadline_s)

    def request_stop(self) -> None:
        """Begin the clean stop; a second request stops waiting for running calls."""
        if self._stop_event is None:
            return
        if self._stop_event.is_set() and self._late_scope is not None:
            self._late_scope.cancel()
        self._stop_event.set()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reloading policy")
                    await self.reload_policy()
                else:
                    log.info("%s: stopping", signal.Signals(signum).name)
                    self.request_stop()

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await trio.sleep(interval)

    def _status_key(self) -> tuple[object, ...]:
        """What `agent status` readers notice change: the agent's, the link's and the login's
        state, the policy's health and mode, the audit log's writability, pending asks and
        attached approvers (the counters may wait for the next periodic write)."""
        link, login, gk = self.relay_state, self.token_state, self.gatekeeper
        broker: AskBroker | None = getattr(self, "broker", None)
        return (self.state, link.state, link.connects, link.machine, link.last_error, login.status,
                login.reason, self.policy_error, self.config_error,
                bool(getattr(gk, "policy_ok", False)), str(getattr(gk, "mode", "") or ""),
                self._audit_writable(),
                len(broker.pending()) if broker else 0, broker.approvers if broker else 0)

    def _audit_writable(self) -> bool:
        """The audit log itself can be appended to (an immutable or read-only audit.log in a
        writable dir is not), by the probe the pipeline uses to admit remote calls."""
        from cmdop.pipeline import writable_path

        return writable_path(self.settings.audit_file)

    async def _status_writer(self) -> None:
        """daemon.status every status_interval_s, and within STATUS_POLL_S of a change in
        `_status_key`: `agent status` reads the file, and must not say "connecting" for ten
        seconds after the link came up."""
        last_key = self._status_key()
        last_full = trio.current_time()
        while True:
            await trio.sleep(min(STATUS_POLL_S, self.options.status_interval_s))
            full = trio.current_time() - last_full >= self.options.status_interval_s
            key = self._status_key()
            if key == last_key and not full:
                continue
            if full:
                last_full = trio.current_time()
                await self._read_enforcement()
            last_key = key
            await self._write_status_async()
            if full:
                self.notifier.status(self._status_line())

    async def _warm_sandbox(self) -> None:
        """Start the sandbox server now (so the first command does not pay for it) and put its
        enforcement into the status; a one-shot task."""
        await self._read_enforcement()
        await self._write_status_async()
        e = self.enforcement
        if "state" not in e:
            log.info("sandbox: kernel floor %s, cgroup per call %s, capabilities %s, seccomp %s, "
                     "landlock %s", e.get("kernel_floor"), e.get("cgroup_per_call"),
                     e.get("capabilities"), e.get("seccomp"), e.get("landlock"))
        # Everything loaded at start (modules, the bash grammar, the policy) goes to the
        # collector's permanent generation: a full collection then walks only what calls made
        # since, so no decision stalls behind a walk of the whole heap (bench/gate.py).
        gc.collect()
        gc.freeze()

    def _new_token(self, access_token: str) -> None:
        """A refreshed login: the open relay link (if it uses the login) reauthenticates."""
        self.latest_access_token = access_token
        self.credentials_changed.set()      # a link waiting to reconnect tries again now
        link = self.current_link
        if link is not None and self.relay_state.source == "oauth":
            link.reauth(access_token)

    async def _relay_link(self) -> None:
        """The outbound link to the relay (cmdop.daemon.relay_link); idle when unconfigured.
        Waits for the pipeline to load: a forwarded call needs it."""
        if self.gatekeeper is None:
            self.relay_state.set("off", "the permission gate did not load: no remote calls")
            return
        from cmdop.daemon.relay_link import run_relay_link

        await run_relay_link(self)

    async def _read_enforcement(self) -> None:
        """Refresh `self.enforcement` from the sandbox, in a worker thread: the first read starts
        the fork server (~50 ms), later ones only take the sandbox's lock. Never raises."""
        if self.sandbox is None:
            why = self.policy_error if self.gatekeeper is None else "the tool pipeline did not load"
            self.enforcement = {"state": "unavailable", "reason": why or "no sandbox"}
            return
        try:
            found: dict[str, str] = await trio.to_thread.run_sync(self.sandbox.enforcement)
        except Exception as exc:  # noqa: BLE001 - a report, not a reason to stop serving
            text = f"reading the sandbox's enforcement failed: {exc}"
            if self.enforcement.get("reason") != text:
                log.error("%s", text)
            self.enforcement = {"state": "unknown", "reason": text}
            return
        self.enforcement = dict(found)

    # -- policy ------------------------------------------------------------------------------

    def _policy_stamp(self) -> tuple[int, ...] | None:
        """What the watcher compares: content (mtime, size, inode) and also who may write the
        file (mode, owner, ctime), so a chmod/chown is judged at once (policy_store.load refuses
        a file others can write: the last good policy stays, DEGRADED, until it is safe again)."""
        try:
            st = os.lstat(self.settings.permissions_file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode, st.st_uid, st.st_ctime_ns)

    async def _policy_watcher(self) -> None:
        last = self._policy_stamp()
        while True:
            await trio.sleep(self.options.policy_poll_s)
            stamp = self._policy_stamp()
            if stamp != last:
                last = stamp
                await self.reload_policy()

    async def reload_policy(self) -> Any:
        """Reload permissions.yaml now; returns the PolicyError (last good policy kept) or None."""
        assert self._reload_lock is not None
        async with self._reload_lock:
            if self.gatekeeper is None:
                return self.policy_error or "permission gate unavailable"
            started = time.monotonic()
            error = await trio.to_thread.run_sync(self.gatekeeper.reload)
            if error is None:
                self.policy_error = ""
                log.info("policy reloaded (mode %s) in %.0f ms", self.gatekeeper.mode,
                         (time.monotonic() - started) * 1000)
            else:
                self.policy_error = str(error)
                log.error("policy rejected, keeping the last good one: %s", error,
                          extra={"fields": {"file": self.settings.permissions_file}})
            self.counters["policy_reloads"] = self.counters.get("policy_reloads", 0) + 1
        await self._write_status_async()
        return error

    def _judge(self, call: ToolCall, caller: Caller) -> Decision:
        """The gate's decision for `call` now (after an answer kept its rule)."""
        gate = self.gatekeeper
        if gate is None:
            return Decision("deny", "floor", "no gate", "", call.tool)
        return gate.evaluate(call, caller)

    async def _keep_rule(self, verdict: str, scope: str, rule: str) -> None:
        reason = f"kept from an ask answer ({scope})"
        gate = self.gatekeeper
        if gate is None:      # no gate, no asks: cannot happen, but never keep a rule blindly
            return
        if scope == "session":
            gate.add_session_rule(rule, verdict, reason=reason)
        else:  # an atomic file write: off the trio thread
            await trio.to_thread.run_sync(
                lambda: gate.add_global_rule(rule, verdict, reason=reason))
        log.info("kept %s rule %s: %s", scope, verdict, rule)


def run_daemon(settings: Settings, options: DaemonOptions | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; 0 on a clean stop. DaemonError if it cannot start."""
    return Daemon(settings, options).run()
