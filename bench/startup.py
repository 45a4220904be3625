#!/usr/bin/env python3
"""Startup benchmark: median wall time of `cmdop.pyz --version` (warm shiv cache) divided by
`python -c pass`, both run by the same absolute interpreter, interleaved, in the same run.

Target ratio <= 4. The run fails (exit 1) only past --budget (default 20), to catch a 5x
regression without making timing noise a test failure. Figures are measured twice: with
PYTHONDONTWRITEBYTECODE as this environment has it, and with it unset.

Usage: python bench/startup.py [--pyz dist/cmdop.pyz] [--python /abs/python3.11] [-n 30]
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

ROOT = Path(__file__).resolve().parent.parent


def base_interpreter() -> str:
    """The interpreter behind this one's virtualenv, by absolute path (never a pyenv shim)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def measure(python: str, pyz: Path, runs: int, env: dict[str, str]) -> tuple[float, float]:
    """Median seconds of (pyz --version, python -c pass), warm cache, interleaved runs."""
    app = [python, str(pyz), "--version"]
    bare = [python, "-c", "pass"]
    for _ in range(3):  # warm: shiv extraction, page cache, pyc files
        wall(app, env)
        wall(bare, env)
    app_t, bare_t = [], []
    for _ in range(runs):
        app_t.append(wall(app, env))
        bare_t.append(wall(bare, env))
    return statistics.median(app_t), statistics.median(bare_t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyz", type=Path, default=ROOT / "dist" / "cmdop.pyz")
    parser.add_argument("--python", default=base_interpreter(),
                        help="absolute interpreter path (default: this venv's base interpreter)")
    parser.add_argument("-n", "--runs", type=int, default=30)
    parser.add_argument("--budget", type=float, default=20.0,
                        help="fail when the ratio exceeds this (default 20; target is 4)")
    args = parser.parse_args(argv)
    if not args.pyz.is_file():
        print(f"startup: {args.pyz} not found; build it: python build_zipapp.py", file=sys.stderr)
        return 1
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="cmdop-bench-") as shiv_root:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("SHIV_")}
        base_env["SHIV_ROOT"] = shiv_root
        variants = [("PYTHONDONTWRITEBYTECODE=" + os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
                     dict(base_env)),
                    ("PYTHONDONTWRITEBYTECODE unset",
                     {k: v for k, v in base_env.items() if k != "PYTHONDONTWRITEBYTECODE"})]
        if "PYTHONDONTWRITEBYTECODE" not in os.environ:
            variants = variants[1:]
        print(f"startup: interpreter {args.python}, pyz {args.pyz} "
              f"({args.pyz.stat().st_size / 1e6:.1f} MB), median of {args.runs}")
        for label, env in variants:
            app, bare = measure(args.python, args.pyz, args.runs, env)
            ratio = app / bare
            worst = max(worst, ratio)
            print(f"startup [{label}]: pyz --version {app * 1000:.1f} ms, "
                  f"python -c pass {bare * 1000:.1f} ms, ratio {ratio:.2f} (target <= 4)")
    if worst > args.budget:
        print(f"startup: ratio {worst:.2f} exceeds budget {args.budget}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
