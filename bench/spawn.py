"""Spawn cost of the seccomp sandbox, against plain subprocess.run in the same run.

    .venv/bin/python bench/spawn.py [--n 300]

Prints medians (ms) for:
  plain      subprocess.run(["/bin/true"])
  sandboxed  /bin/true through the fork-server launcher (filter inherited from the server)
  ratio, overhead (sandboxed - plain); target: overhead <= 1 ms, ratio <= 3
  execute_command("echo hi") through cmdop.pipeline.handle_call: gate + audit line + bash -c,
  as a local caller, in a throwaway HOME.
Times use time.perf_counter in this interpreter (sys.executable): never a pyenv shim.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cmdop.adapters.launcher import Sandbox  # noqa: E402


def median_ms(fn: Callable[[], object], n: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()

    sandbox = Sandbox()
    if not sandbox.available:
        print(f"seccomp unavailable: {sandbox.reason}")
        return 1
    devnull = os.open(os.devnull, os.O_RDWR)

    def plain() -> None:
        subprocess.run(["/bin/true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)

    def boxed() -> None:
        child = sandbox.spawn(["/bin/true"], {}, "/", devnull, devnull, devnull)
        assert child.wait(10) == 0

    # Interleave the two so drift (CPU frequency, other load) hits both alike.
    p1 = median_ms(plain, args.n)
    s1 = median_ms(boxed, args.n)
    p2 = median_ms(plain, args.n)
    s2 = median_ms(boxed, args.n)
    p, s = (p1 + p2) / 2, (s1 + s2) / 2
    print(f"python        {sys.executable} ({sys.version.split()[0]})")
    print(f"plain spawn   {p:.3f} ms  (subprocess.run /bin/true, median of {2 * args.n})")
    print(f"sandboxed     {s:.3f} ms  (fork-server launcher, seccomp filter inherited)")
    print(f"ratio         {s / p:.2f}   overhead {s - p:+.3f} ms")

    with tempfile.TemporaryDirectory() as home:
        os.environ["HOME"] = home
        for var in [k for k in os.environ if k.startswith(("CMDOP_", "XDG_"))]:
            del os.environ[var]
        from cmdop.core.calls import Caller, CallerKind, ToolCall
        from cmdop.core.settings import Settings
        from cmdop.pipeline import handle_call, make_context

        ctx = make_context(Settings.from_env(os.environ, home))
        caller = Caller(CallerKind.LOCAL, "bench", ctx.hostname)
        call = ToolCall("execute_command", {"command": "echo hi"}, cwd=home)

        def e2e() -> None:
            out = handle_call(call, caller, ctx)
            assert out["stdout"] == "hi\n", out

        def bash_plain() -> None:
            out = subprocess.run(["/bin/bash", "-c", "echo hi"], capture_output=True, cwd=home)
            assert out.stdout == b"hi\n"

        m = max(args.n // 3, 50)
        b1, e1, b2, e2 = (median_ms(bash_plain, m), median_ms(e2e, m),
                          median_ms(bash_plain, m), median_ms(e2e, m))
        b, e = (b1 + b2) / 2, (e1 + e2) / 2
        ctx.close()
    print(f"bash -c 'echo hi' plain subprocess.run, captured: {b:.3f} ms")
    print(f"execute_command('echo hi') end-to-end (gate + audit line + sandboxed bash): {e:.3f} ms"
          f"  (ratio {e / b:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
