"""Helpers for the daemon's integration tests: start the real `cmdop agent run` as a subprocess in
a temp HOME, talk to it over its socket, attach an approver. (No tests in this module.)"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import pytest

from cmdop.daemon.client import DaemonClient
from cmdop.core.errors import DaemonError

START_TIMEOUT_S = 30.0


def write_policy(env: Any, text: str) -> Path:
    """Write permissions.yaml (0600, atomically) into the test's config dir."""
    path = Path(env.config_dir) / "permissions.yaml"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(".permissions.yaml.tmp")
    tmp.write_text(textwrap.dedent(text))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def wait_for(pred: Any, timeout: float = 20.0, what: str = "condition",
             every: float = 0.05) -> Any:
    """Poll `pred()` every `every` s until truthy; AssertionError naming `what` after
    `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def peer_missing(reason: str) -> NoReturn:
    """A program or package the test needs is missing: skip it on a developer's machine, fail
    it under CI (CI=1/true/yes), where .ci/setup installs every peer — a skip there would hide
    tests that never ran."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


class RunningDaemon:
    """A `cmdop agent run` subprocess and the ways to reach it."""

    def __init__(self, env: Any, proc: subprocess.Popen[bytes], log_path: Path,
                 socket_path: str | None = None) -> None:
        self.env = env
        self.proc = proc
        self.log_path = log_path
        self.socket_path = socket_path or str(env.socket_path)

    def client(self) -> DaemonClient:
        return DaemonClient.connect(self.socket_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def call(self, tool: str, tool_input: dict[str, Any], **kw: Any) -> dict[str, Any]:
        with self.client() as c:
            return c.call_tool(tool, tool_input, kw.pop("cwd", str(self.env.home)), **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop on signal {sig}:\n{self.log()}") from None


def start_daemon(env: Any, *args: str, extra_env: dict[str, str] | None = None,
                 wait: bool = True) -> RunningDaemon:
    """Start the daemon; with `wait`, return once it answers ping (fail with its log if not)."""
    log_path = Path(env.home).parent / f"daemon-{time.monotonic_ns()}.log"
    full_env = dict(env.env, **(extra_env or {}))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cmdop", "agent", "run", *args],
                                env=full_env, stdout=log, stderr=log, cwd=str(env.home))
    d = RunningDaemon(env, proc, log_path, full_env.get("CMDOP_SOCKET_PATH"))
    if wait:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited {proc.returncode}:\n{d.log()}")
            try:
                with d.client() as c:
                    c.ping()
                return True
            except DaemonError:
                return False
        try:
            wait_for(up, START_TIMEOUT_S, "the daemon to answer")
        except BaseException:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise
    return d


class Approver:
    """An attached `watch` connection in a thread; asks arrive on `.asks`."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.asks: "queue.Queue[dict[str, Any]]" = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._client = DaemonClient.connect(socket_path)
        self._attached = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._attached.wait(10):
            raise AssertionError("approver did not attach")

    def _run(self) -> None:
        for ev in self._client.watch(timeout=None):
            self.events.append(ev)
            if ev.get("event") == "hello":
                self._attached.set()
            elif ev.get("event") == "ask":
                self.asks.put(ev["ask"])

    def next_ask(self, timeout: float = 15.0) -> dict[str, Any]:
        return self.asks.get(timeout=timeout)

    def answer(self, ask: dict[str, Any] | str, verdict: str, scope: str = "once",
               digest: str | None = None) -> dict[str, Any]:
        ask_id = ask if isinstance(ask, str) else ask["ask_id"]
        with DaemonClient.connect(self.socket_path) as c:
            return c.answer(ask_id, verdict, scope, digest)

    def close(self) -> None:
        self._client.close()


class CallInThread:
    """One tool call through the socket, running in a thread (it may block on an ask)."""

    def __init__(self, daemon: RunningDaemon, tool: str, tool_input: dict[str, Any], **kw: Any):
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = daemon.call(tool, tool_input, **kw)
            except BaseException as exc:  # reported by join()
                self.error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self, timeout: float = 30.0) -> dict[str, Any]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "call did not finish"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result
