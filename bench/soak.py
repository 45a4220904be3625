"""Soak: a real `cmdop agent run` under a steady mix of calls for a long time; does it grow?

    .venv/bin/python bench/soak.py [--minutes 60] [--sample-s 30] [--rate CALLS_PER_S]

The mix, over one kept-open connection plus a fresh connection every 100 calls: allowed
`execute_command` (echo, a pipeline), `read_file`, `list_dir`, a floor-denied read, and a remote
call that asks with no approver attached (denied at once). Every `--sample-s` seconds it prints
the daemon's VmRSS, open fds, threads, the audit log's size, and the calls done; at the end the
first and last samples side by side, and RSS growth per hour from a least-squares line over the
second half of the run (the first half includes warm-up). The baseline is the daemon's own
RSS after warm-up in the same run. Uses sys.executable (an absolute path).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from _daemon import isolated_env, start_agent

from cmdop.core.errors import DaemonError
from cmdop.daemon.client import DaemonClient

POLICY = """version: 1
mode: default
rules:
  - rule: "execute_command(echo *)"
    action: allow
"""


def proc_status(pid: int) -> tuple[float, int, int]:
    """(VmRSS MB, open fds, threads) of `pid`."""
    rss, threads = float("nan"), 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per hour."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in points) / den * 3600


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--sample-s", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=0.0, help="calls per second (0: as fast as it goes)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cmdop-soak-"))
    home = tmp / "home"
    (home / "cfg").mkdir(parents=True, mode=0o700)
    (home / "data").mkdir()
    (home / "data" / "notes.txt").write_text("hello\n" * 100)
    (home / ".env").write_text("SECRET=1\n")
    policy = home / "cfg" / "permissions.yaml"
    policy.write_text(POLICY)
    policy.chmod(0o600)
    env = isolated_env(tmp, home)
    daemon, client = start_agent(env, home)
    sock = env["CMDOP_SOCKET_PATH"]
    cwd = str(home)
    mix = [
        ("execute_command", {"command": "echo soak"}, None),
        ("execute_command", {"command": "echo a | tr a b"}, None),
        ("read_file", {"path": "data/notes.txt"}, None),
        ("list_dir", {"path": "data"}, None),
        ("read_file", {"path": ".env"}, None),                         # floor
        ("execute_command", {"command": "uname -a"}, "remote"),        # ask, no approver
    ]
    try:
        for tool, tool_input, as_caller in mix * 20:                  # warm-up
            client.call_tool(tool, tool_input, cwd, **({"as_caller": as_caller} if as_caller else {}))
        time.sleep(2)

        start = time.monotonic()
        end = start + args.minutes * 60
        next_sample = start
        calls = errors = 0
        samples: list[tuple[float, float, int, int, int, int]] = []
        print(f"{'min':>6} {'RSS MB':>7} {'fds':>4} {'thr':>4} {'calls':>8} {'audit KB':>9}", flush=True)
        while True:
            now = time.monotonic()
            if now >= next_sample:
                rss, fds, thr = proc_status(daemon.pid)
                audit = sum(p.stat().st_size for p in (home / "state").glob("audit.log*"))
                samples.append((now - start, rss, fds, thr, calls, audit))
                print(f"{(now - start) / 60:6.1f} {rss:7.1f} {fds:4d} {thr:4d} {calls:8d} {audit // 1024:9d}",
                      flush=True)
                next_sample += args.sample_s
                if now >= end:
                    break
            tool, tool_input, as_caller = mix[calls % len(mix)]
            try:
                client.call_tool(tool, tool_input, cwd, **({"as_caller": as_caller} if as_caller else {}))
            except DaemonError:
                errors += 1
            calls += 1
            if args.rate > 0:
                time.sleep(max(0.0, start + calls / args.rate - time.monotonic()))
            if calls % 100 == 0:                                       # connections come and go
                client.close()
                client = DaemonClient.connect(sock)
        client.close()
        first, last = samples[0], samples[-1]
        half = [(t, r) for t, r, *_ in samples if t >= (last[0] / 2)]
        print(f"\n{calls} calls in {last[0] / 60:.1f} min ({calls / max(last[0], 1):.0f}/s), "
              f"{errors} protocol errors, daemon alive: {daemon.poll() is None}")
        print(f"RSS {first[1]:.1f} → {last[1]:.1f} MB (baseline: after warm-up, same run; "
              f"ratio {last[1] / first[1]:.3f}); second-half slope {slope_per_hour(half):+.2f} MB/h")
        print(f"fds {first[2]} → {last[2]}, threads {first[3]} → {last[3]}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=30)
        print(f"daemon exit status on SIGTERM: {rc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
