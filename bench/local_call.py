"""Benchmark: one `execute_command("true")` through the daemon's local socket vs the same call done
directly, in the same run; and the daemon's resident memory, idle and after many calls.

    .venv/bin/python bench/local_call.py [--calls 500] [--soak 3000]

- socket: a round trip over one kept-open connection to a real `cmdop agent run` subprocess
  (gate → audit line → sandboxed spawn of `true` → result) as a local caller.
- direct: `pipeline.handle_call` in this process with the same settings, i.e. the same gate,
  audit write and sandboxed spawn, without the socket, the protocol and the worker thread.
- plain: `subprocess.run(["true"])`, for scale.
- RSS: VmRSS of the daemon process after start-up and warm-up, idle; again after `--soak` more
  calls, to show it does not grow. (The sandbox fork server is a separate small process.)

Uses sys.executable (an absolute path), never a pyenv shim. Prints medians in ms.
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _daemon import isolated_env, start_agent

from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.settings import Settings


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--soak", type=int, default=3000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cmdop-bench-"))
    home = tmp / "home"
    home.mkdir()
    env = isolated_env(tmp, home)
    daemon, client = start_agent(env, home)
    try:

        cwd = str(home)
        via_socket = lambda: client.call_tool("execute_command", {"command": "true"}, cwd)  # noqa: E731
        for _ in range(50):
            assert via_socket()["exit_code"] == 0
        time.sleep(2)
        idle_rss = rss_mb(daemon.pid)

        # the direct path: the same pipeline, in this process, its own state dir
        from cmdop.pipeline import handle_call, make_context

        direct_env = dict(env, CMDOP_STATE_DIR=str(home / "state-direct"))
        ctx = make_context(Settings.from_env(direct_env, str(home)), hostname=socket.gethostname())
        caller = Caller(kind=CallerKind.LOCAL, user="bench", hostname=socket.gethostname())
        call = ToolCall(tool="execute_command", input={"command": "true"}, cwd=cwd)
        direct = lambda: handle_call(call, caller, ctx)  # noqa: E731
        for _ in range(50):
            assert direct()["exit_code"] == 0
        plain = lambda: subprocess.run(["true"], check=True)  # noqa: E731

        # Interleave call by call, so drift on a busy machine (spawn times vary most) hits both
        # paths alike; the overhead is the median of the paired differences.
        s_ms, d_ms, p_ms = [], [], []
        for _ in range(args.calls):
            s_ms += timed(via_socket, 1)
            d_ms += timed(direct, 1)
            p_ms += timed(plain, 1)
        ctx.close()

        s_med, d_med, p_med = (statistics.median(x) for x in (s_ms, d_ms, p_ms))
        paired = statistics.median(a - b for a, b in zip(s_ms, d_ms))
        print(f"execute_command(true), median of {len(s_ms)} interleaved calls:")
        print(f"  through the socket   {s_med:7.3f} ms")
        print(f"  direct (in-process)  {d_med:7.3f} ms")
        print(f"  plain subprocess     {p_med:7.3f} ms")
        print(f"  socket overhead      {paired:7.3f} ms  (median paired difference; target <= 1 ms)"
              f"  ratio {s_med / d_med:.2f}x")
        print(f"idle daemon RSS        {idle_rss:7.1f} MB  (target <= 40 MB)")
        for _ in range(args.soak):
            via_socket()
        time.sleep(1)
        print(f"RSS after {args.soak} more calls {rss_mb(daemon.pid):5.1f} MB")
        client.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
