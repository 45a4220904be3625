"""Spawn cost of the command sandbox against plain spawns, all measured in the same run.

    .venv/bin/python bench/spawn.py [--runs 600] [--json]

Rows (each run `--runs` times, round-robin per iteration -- one of each, in a rotating order --
so machine noise hits every row alike; 20 rounds of warm-up first, not counted):
  plain      subprocess.run(["/bin/true", i]), fds on /dev/null: the baseline
  seccomp    /bin/true through `Sandbox()`: today's fork server, seccomp filter + Landlock domain
             + trimmed capabilities, no kernel floor, no cgroup
  ns         /bin/true through the full sandbox's server but without a call cgroup: seccomp row
             + the kernel floor's mount namespace (separates the namespace from the cgroup)
  full       /bin/true through `sandbox_for_agent(settings, AgentConfig())` in a throwaway HOME:
             the above plus the kernel floor's mount namespace, and a fresh cgroup per call
             (create, spawn in it, wait, finish) -- what every command pays
  bash       subprocess.run(["/bin/bash", "-c", "true i"], capture_output=True): the e2e baseline
  e2e        execute_command({"command": "true i"}) with the full sandbox: scrubbed env, cwd
             checks, pipes, the run loop, cgroup usage -- what a user meets
For each: median, p99, max (ms), how many runs took over 5 ms, overhead over its baseline
(difference of medians, ms) and ratio. Target: full - plain <= 1 ms (median). `i` is the
iteration number, so no two runs of a row get the same input. One-time costs, measured apart:
the fork server's start with the full plan (sandbox built -> first command done) and the
namespace rebuild (a new directory in the home changes a watched listing; the next command
pays for a fresh plan and server). The script asserts no timing: it prints whether the target
holds and exits 0 (1 only when there is no sandbox to measure).
Times use time.perf_counter in this interpreter (sys.executable): never a pyenv shim.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cmdop.adapters.config_file import AgentConfig  # noqa: E402
from cmdop.adapters.launcher import Sandbox, sandbox_for_agent  # noqa: E402
from cmdop.core.errors import SandboxUnavailableError  # noqa: E402
from cmdop.core.settings import Settings  # noqa: E402
from cmdop.tools.base import ToolEnv  # noqa: E402
from cmdop.tools.execute_command import execute_command  # noqa: E402

TARGET_MS = 1.0
WARMUP = 20
ONE_TIME_REPEATS = 10
SLOW_MS = 5.0
ROWS = ("plain", "seccomp", "ns", "full", "bash", "e2e")
BASELINE = {"seccomp": "plain", "ns": "plain", "full": "plain", "e2e": "bash"}


def summary(seconds: list[float]) -> dict[str, float]:
    """median, p99 (nearest rank) and max, in ms."""
    s = sorted(seconds)
    p99 = s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]
    return {"n": len(s), "median_ms": statistics.median(s) * 1000, "p99_ms": p99 * 1000,
            "max_ms": s[-1] * 1000, "over_5ms": sum(x * 1000 > SLOW_MS for x in s)}


class _Rebuilds(logging.Handler):
    """Counts the launcher's "rebuilding the namespace" lines; shows its warnings on stderr."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "rebuilding the namespace" in record.getMessage():
            self.count += 1
        elif record.levelno >= logging.WARNING:
            print(f"[{record.levelname.lower()}] {record.getMessage()}", file=sys.stderr)


class Bench:
    def __init__(self, home: str) -> None:
        self.home = home
        self.settings = Settings.from_env({"HOME": home}, home)
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.full: Sandbox | None = None
        self.seccomp: Sandbox | None = None
        self.parts: dict[str, list[float]] = {"cgroup_create": [], "spawn_wait": [],
                                              "cgroup_finish": []}

    # -- one command through a sandbox: create the call's cgroup, spawn, wait, finish ----------
    def call(self, sandbox: Sandbox, argv: list[str], record: bool = False,
             cgroup: bool = True) -> None:
        t0 = time.perf_counter()
        cg = sandbox.cgroups.create() if cgroup and sandbox.cgroups is not None else None
        t1 = time.perf_counter()
        child = sandbox.spawn(argv, {}, "/", self.devnull, self.devnull, self.devnull, cgroup=cg)
        rc = child.wait(10)
        t2 = time.perf_counter()
        if cg is not None:
            cg.finish()
        t3 = time.perf_counter()
        if rc != 0:
            raise RuntimeError(f"{argv} exited {rc}")
        if record:
            self.parts["cgroup_create"].append(t1 - t0)
            self.parts["spawn_wait"].append(t2 - t1)
            self.parts["cgroup_finish"].append(t3 - t2)

    def start_full(self) -> tuple[Sandbox, float, float]:
        """A new full sandbox and its first command: (sandbox, setup s, first command s)."""
        t0 = time.perf_counter()
        sandbox = sandbox_for_agent(self.settings, AgentConfig())
        t1 = time.perf_counter()
        self.call(sandbox, ["/bin/true", "first"])
        return sandbox, t1 - t0, time.perf_counter() - t1

    # -- the rows -------------------------------------------------------------------------
    def ops(self, tool_env: ToolEnv) -> dict[str, Callable[[int], None]]:
        assert self.full is not None and self.seccomp is not None
        full, seccomp = self.full, self.seccomp

        def plain(i: int) -> None:
            subprocess.run(["/bin/true", str(i)], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

        def bash(i: int) -> None:
            out = subprocess.run(["/bin/bash", "-c", f"true {i}"], capture_output=True,
                                 cwd=self.home)
            assert out.returncode == 0, out

        def e2e(i: int) -> None:
            out = execute_command({"command": f"true {i}"}, tool_env)
            assert out["exit_code"] == 0 and out["sandboxed"], out
            assert out["cgroup"] == (full.cgroups is not None), out

        return {"plain": plain,
                "seccomp": lambda i: self.call(seccomp, ["/bin/true", str(i)]),
                "ns": lambda i: self.call(full, ["/bin/true", str(i)], cgroup=False),
                "full": lambda i: self.call(full, ["/bin/true", str(i)], record=i >= WARMUP),
                "bash": bash, "e2e": e2e}

    def interleaved(self, runs: int) -> dict[str, list[float]]:
        assert self.full is not None
        ops = self.ops(ToolEnv(home=self.home, cwd=self.home, sandbox=self.full))
        times: dict[str, list[float]] = {name: [] for name in ROWS}
        for i in range(WARMUP + runs):
            k = i % len(ROWS)
            for name in ROWS[k:] + ROWS[:k]:
                t0 = time.perf_counter()
                ops[name](i)
                dt = time.perf_counter() - t0
                if i >= WARMUP:
                    times[name].append(dt)
        return times

    def rebuilds(self) -> tuple[list[float], list[float]]:
        """(steady full commands, full commands right after a new directory in the home)."""
        assert self.full is not None
        steady, rebuilt = [], []
        for j in range(ONE_TIME_REPEATS):
            for w in range(3):  # untimed: let the last rebuild's retired server wind down
                self.call(self.full, ["/bin/true", f"warm-{j}-{w}"])
            t0 = time.perf_counter()
            self.call(self.full, ["/bin/true", f"steady-{j}"])
            steady.append(time.perf_counter() - t0)
            os.mkdir(os.path.join(self.home, f"project-{j}"))  # changes a watched listing
            t0 = time.perf_counter()
            self.call(self.full, ["/bin/true", f"rebuilt-{j}"])
            rebuilt.append(time.perf_counter() - t0)
        return steady, rebuilt

    def starts(self) -> tuple[list[float], list[float], list[float]]:
        """Fork-server starts, alternating: (full: setup + first command, of which setup,
        seccomp-only: first command)."""
        full_t, setup_t, seccomp_t = [], [], []
        for _ in range(ONE_TIME_REPEATS):
            sandbox, setup, first = self.start_full()
            sandbox.close()
            full_t.append(setup + first)
            setup_t.append(setup)
            plain_sb = Sandbox()
            t0 = time.perf_counter()
            self.call(plain_sb, ["/bin/true", "first"])
            seccomp_t.append(time.perf_counter() - t0)
            plain_sb.close()
        return full_t, setup_t, seccomp_t


def run(runs: int) -> dict[str, Any]:
    counter = _Rebuilds()
    sandbox_log = logging.getLogger("cmdop.sandbox")
    sandbox_log.addHandler(counter)
    sandbox_log.setLevel(logging.INFO)
    out: dict[str, Any] = {"python": sys.executable, "python_version": sys.version.split()[0],
                           "cpus": os.cpu_count(), "kernel": os.uname().release, "runs": runs,
                           "target_ms": TARGET_MS}
    with tempfile.TemporaryDirectory(prefix="cmdop-bench-spawn-") as home:
        bench = Bench(home)
        try:
            # The agent's first command: cgroup setup, BPF, mount plan, interpreter, namespace.
            try:
                bench.full, setup, first = bench.start_full()
            except SandboxUnavailableError as exc:
                out["error"] = str(exc)
                return out
            out["first_start_in_process_ms"] = {"total": (setup + first) * 1000,
                                                "setup": setup * 1000}
            out["enforcement"] = bench.full.enforcement()
            bench.seccomp = Sandbox()
            out["enforcement_seccomp"] = bench.seccomp.enforcement()

            before = counter.count
            times = bench.interleaved(runs)
            out["rebuilds_during_loop"] = counter.count - before
            rows: dict[str, Any] = {}
            for name in ROWS:
                rows[name] = summary(times[name])
            for name, base in BASELINE.items():
                rows[name]["overhead_ms"] = rows[name]["median_ms"] - rows[base]["median_ms"]
                rows[name]["ratio"] = rows[name]["median_ms"] / rows[base]["median_ms"]
            out["rows"] = rows
            out["full_parts"] = {k: summary(v) for k, v in bench.parts.items()}
            out["target_holds"] = rows["full"]["overhead_ms"] <= TARGET_MS

            steady, rebuilt = bench.rebuilds()
            cost = statistics.median(rebuilt) - statistics.median(steady)
            out["rebuild"] = {"steady": summary(steady), "after_new_dir": summary(rebuilt),
                              "cost_ms": cost * 1000}
        finally:
            for sb in (bench.full, bench.seccomp):
                if sb is not None:
                    sb.close()
        full_t, setup_t, seccomp_t = bench.starts()
        out["start"] = {"full": summary(full_t), "full_setup": summary(setup_t),
                        "seccomp": summary(seccomp_t)}
        os.close(bench.devnull)
    sandbox_log.removeHandler(counter)
    return out


def report(r: dict[str, Any]) -> None:
    print(f"python   {r['python']} ({r['python_version']}), {r['cpus']} CPUs, Linux {r['kernel']}")
    if "error" in r:
        print(r["error"])
        return
    enf = r["enforcement"]
    print("full sandbox enforcement:")
    for key, value in enf.items():
        print(f"  {key:20} {value}")
    print(f"\n{r['runs']} runs per row, interleaved round-robin; ms")
    print(f"{'row':8} {'median':>8} {'p99':>8} {'max':>8} {'>5ms':>5} {'overhead':>9} {'ratio':>6}"
          "  what")
    what = {"plain": "subprocess.run /bin/true (baseline)",
            "seccomp": "Sandbox(): seccomp + Landlock + caps, fork server",
            "ns": "full sandbox, spawned without a cgroup: + mount namespace",
            "full": "sandbox_for_agent: + mount ns + cgroup per call (create/spawn/wait/finish)",
            "bash": "subprocess.run bash -c 'true', captured (e2e baseline)",
            "e2e": "execute_command('true') with the full sandbox"}
    for name in ROWS:
        row = r["rows"][name]
        extra = (f"{row['overhead_ms']:+9.3f} {row['ratio']:6.2f}" if "ratio" in row
                 else f"{'':9} {'':6}")
        print(f"{name:8} {row['median_ms']:8.3f} {row['p99_ms']:8.3f} {row['max_ms']:8.3f} "
              f"{row['over_5ms']:5d} {extra}  {what[name]}")
    print("  full, its parts (median / p99 / max): " + ", ".join(
        f"{part.replace('_', ' ').replace('spawn wait', 'spawn+wait')} {v['median_ms']:.3f} / "
        f"{v['p99_ms']:.3f} / {v['max_ms']:.3f}" for part, v in r["full_parts"].items()))
    if r["rebuilds_during_loop"]:
        print(f"  note: {r['rebuilds_during_loop']} namespace rebuild(s) during the loop (a "
              "watched directory changed on this machine): they are in the ns/full/e2e tails")
    full = r["rows"]["full"]
    verdict = "HOLDS" if r["target_holds"] else "DOES NOT HOLD"
    print(f"\ntarget: full sandbox overhead <= {r['target_ms']:g} ms over plain spawn (median): "
          f"{verdict} ({full['overhead_ms']:+.3f} ms, ratio {full['ratio']:.2f})")
    s, rb = r["start"], r["rebuild"]
    print(f"\none-time costs (ms, median / max of {s['full']['n']}):")
    print(f"  first start in this process (cgroup setup + BPF + plan + server + 1st command): "
          f"{r['first_start_in_process_ms']['total']:.1f}")
    print(f"  full fork-server start, sandbox_for_agent -> 1st command done: "
          f"{s['full']['median_ms']:.1f} / {s['full']['max_ms']:.1f} "
          f"(of which sandbox_for_agent, cgroup setup: {s['full_setup']['median_ms']:.1f})")
    print(f"  seccomp-only fork-server start -> 1st command done:          "
          f"{s['seccomp']['median_ms']:.1f} / {s['seccomp']['max_ms']:.1f}")
    print(f"  namespace rebuild: command after a new dir in the home "
          f"{rb['after_new_dir']['median_ms']:.1f} / {rb['after_new_dir']['max_ms']:.1f}, "
          f"steady {rb['steady']['median_ms']:.2f}: rebuild costs {rb['cost_ms']:.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=600, help="runs per row (default 600)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    r = run(max(args.runs, 1))
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        report(r)
    return 1 if "error" in r else 0


if __name__ == "__main__":
    sys.exit(main())
