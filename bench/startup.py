#!/usr/bin/env python3
"""Startup benchmark: whole-process wall time of cmdop.pyz commands (warm shiv cache) divided by
the median of `python -c pass`, both run by the same absolute interpreter, interleaved, in one
run. Commands: `--version`, `permissions check execute_command ls` with no permissions.yaml,
again with one (three rules), and again with one whose text changes before every run (a
comment with the run's number: the command line's memo of the last parse never matches, so
yaml is imported and parses it — the first check after an edit), `agent status` (no agent
running) and `exec HOST -- true` up to the point it connects (a pinned relay address that
refuses the connection: every import and check happens, then exit 5).

Beside them, the floors: `python -c` importing only what a command cannot do without, from the
same unpacked pyz (grpc and protobuf for `exec`; argparse and cmdop's bash parser, with
tree-sitter, for `permissions check`). A command cannot start faster than `--version` (what
running any pyz costs) plus its floor's share above `python -c pass`.

For each it prints the median, p99 and worst ratio. Target: <= 3 for `permissions
check` and `exec`, <= 4 for `--version`. The run fails (exit 1) only when a median ratio
exceeds --budget (default 20), to catch a regression without making timing noise a test failure.

With `--compare OTHER.pyz` (e.g. a build of an earlier commit) both builds run in the same
interleaved rounds against the same `python -c pass`: a before/after that machine load cannot
tilt.

Usage: python bench/startup.py [--pyz dist/cmdop.pyz] [--compare OLD.pyz] [--python /abs/python3.11]
                               [-n 30]
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
# (label, arguments, the exit statuses it may end with, its permissions.yaml: "" none,
# "same" one file, "changed" a file whose text changes before every run)
COMMANDS: tuple[tuple[str, tuple[str, ...], tuple[int, ...], str], ...] = (
    ("--version", ("--version",), (0,), ""),
    ("permissions check", ("permissions", "check", "execute_command", "ls"), (0,), ""),
    ("check (policy file)", ("permissions", "check", "execute_command", "ls"), (0,), "same"),
    ("check (policy edited)", ("permissions", "check", "execute_command", "ls"), (0,), "changed"),
    ("agent status", ("agent", "status"), (0,), ""),
    ("exec (to connect)", ("exec", "--relay", "127.0.0.1:9", "--relay-fingerprint", "ab" * 32,
                           "bench-host", "--", "true"), (5,), ""),
)
# (label, code run by `python -c` with the unpacked pyz first on sys.path)
FLOORS: tuple[tuple[str, str], ...] = (
    ("floor: import grpc, protobuf", "import grpc, google.protobuf.message"),
    ("floor: argparse, bash parser", "import argparse\nfrom cmdop.core.policy import shell"),
)
# A small real policy: strict, three rules (a first run writes strict with none).
POLICY = """\
version: 1
mode: strict
rules:
  - rule: execute_command(ls *)
    action: allow
  - rule: execute_command(git status)
    action: allow
    reason: read-only
  - rule: read_file(~/projects/**)
    action: allow
"""


def base_interpreter() -> str:
    """The interpreter behind this one's virtualenv, by absolute path (never a pyenv shim)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def wall(cmd: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> float:
    """Seconds `cmd` takes from spawn to exit; RuntimeError when it ends otherwise than `ok`."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    if proc.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: "
                           + proc.stderr.decode(errors="replace")[-300:])
    return took


def summary(times: list[float], bare: float) -> tuple[float, float, float]:
    """(median, p99, worst) of `times` as ratios to `bare`."""
    ordered = sorted(times)
    p99 = (statistics.quantiles(ordered, n=100, method="inclusive")[98] if len(ordered) > 1
           else ordered[0])
    return statistics.median(ordered) / bare, p99 / bare, ordered[-1] / bare


def write_policy(config_dir: Path, text: str) -> None:
    """`text` as config_dir/permissions.yaml (0600), the way an editor leaves it."""
    path = config_dir / "permissions.yaml"
    path.write_text(text)
    path.chmod(0o600)


def measure(python: str, builds: dict[str, Path], runs: int,
            envs: dict[str, dict[str, str]]) -> dict[str, list[float]]:
    """Seconds per run of each command of each build (key "PREFIX LABEL") and of `python -c
    pass` (key "pass"), interleaved; each command runs with the environment of its policy kind
    (`envs`), and before each run of a "changed" one its policy file gets a text not seen yet."""
    plan = [("pass", [python, "-c", "pass"], (0,), "")]
    plan += [(f"{prefix}{label}", [python, str(pyz), *args], ok, policy)
             for label, args, ok, policy in COMMANDS for prefix, pyz in builds.items()]
    edits = iter(range(1 << 30))

    def run(cmd: list[str], ok: tuple[int, ...], policy: str) -> float:
        if policy == "changed":
            write_policy(Path(envs[policy]["CMDOP_CONFIG_DIR"]), f"# edit {next(edits)}\n{POLICY}")
        return wall(cmd, envs[policy], ok)

    for _ in range(3):  # warm: shiv extraction, page cache, pyc files
        for _, cmd, ok, policy in plan:
            run(cmd, ok, policy)
    first = next(iter(builds.values()))
    unpacked = sorted(Path(envs[""]["SHIV_ROOT"]).glob(f"{first.name}_*/site-packages"),
                      key=lambda p: p.stat().st_mtime)
    if unpacked:  # (the newest unpack of the first build)
        plan += [(label, [python, "-c", f"import sys\nsys.path.insert(0, {str(unpacked[-1])!r})\n{code}"],
                  (0,), "") for label, code in FLOORS]
        for label, cmd, ok, policy in plan[-len(FLOORS):]:
            run(cmd, ok, policy)
    times: dict[str, list[float]] = {label: [] for label, _, _, _ in plan}
    for _ in range(runs):
        for label, cmd, ok, policy in plan:
            times[label].append(run(cmd, ok, policy))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pyz", type=Path, default=ROOT / "dist" / "cmdop.pyz")
    parser.add_argument("--compare", type=Path, default=None, metavar="OTHER_PYZ",
                        help="also time this build in the same rounds (rows marked 'other')")
    parser.add_argument("--python", default=base_interpreter(),
                        help="absolute interpreter path (default: this venv's base interpreter)")
    parser.add_argument("-n", "--runs", type=int, default=30)
    parser.add_argument("--budget", type=float, default=20.0,
                        help="fail when a median ratio exceeds this (default 20; targets 3-4)")
    args = parser.parse_args(argv)
    builds = {"": args.pyz} if args.compare is None else {"this  ": args.pyz, "other ": args.compare}
    for pyz in builds.values():
        if not pyz.is_file():
            print(f"startup: {pyz} not found; build it: python build_zipapp.py", file=sys.stderr)
            return 1
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="cmdop-bench-") as tmp:
        home = Path(tmp, "home")
        home.mkdir()
        # A user of its own: no agent, no policy, no credentials of the person running this.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SHIV_", "CMDOP_", "PYTHON", "VIRTUAL_ENV", "XDG_"))}
        env.update(SHIV_ROOT=str(Path(tmp, "shiv")), HOME=str(home),
                   CMDOP_CONFIG_DIR=str(home / "cfg"), CMDOP_STATE_DIR=str(home / "state"),
                   CMDOP_HOME=str(home / ".cmdop"), CMDOP_SOCKET_PATH=str(home / "agent.sock"),
                   CMDOP_API_KEY="cmdop_k_" + "b" * 40)
        envs = {"": env}
        for kind in ("same", "changed"):
            os.mkdir(home / f"cfg-{kind}", 0o700)
            write_policy(home / f"cfg-{kind}", POLICY)
            # State dirs of their own, made as an agent's first run makes one (the memo of the
            # last text parsed is kept only there, and remembers one text, as for one policy).
            os.mkdir(home / f"state-{kind}", 0o700)
            envs[kind] = dict(env, CMDOP_CONFIG_DIR=str(home / f"cfg-{kind}"),
                              CMDOP_STATE_DIR=str(home / f"state-{kind}"))
        version = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"],
                                 capture_output=True, text=True).stdout.strip()
        for prefix, pyz in builds.items():
            print(f"startup: {prefix or 'pyz '}{pyz} ({pyz.stat().st_size / 1e6:.1f} MB)")
        print(f"startup: interpreter {args.python} (Python {version}), {args.runs} interleaved "
              "runs, warm cache")
        try:
            times = measure(args.python, builds, args.runs, envs)
        except RuntimeError as exc:
            print(f"startup: {exc}", file=sys.stderr)
            return 1
        bare = statistics.median(times.pop("pass"))
        print(f"startup: python -c pass {bare * 1000:.1f} ms (median)")
        for label, taken in times.items():
            med, p99, top = summary(taken, bare)
            if not label.startswith("other "):
                worst = max(worst, med)
            print(f"startup: {label:27s} {statistics.median(taken) * 1000:6.1f} ms  "
                  f"ratio median {med:.2f}  p99 {p99:.2f}  worst {top:.2f}")
    if worst > args.budget:
        print(f"startup: median ratio {worst:.2f} exceeds budget {args.budget}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
