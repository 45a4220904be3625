"""Permission gate benchmark: median decision time for a mix of 10k calls against policies of
10, 1,000 and 10,000 rules, with the ratios between them and against a baseline measured in the
same process (a dict lookup timed the same way, i.e. mostly timer overhead).

    .venv/bin/python bench/gate.py [--calls N] [--seed S]

The mix: 50% shell commands (a pool of 400 distinct strings, simple and compound, so the parse
cache is warm as it would be for an agent seeing repeated commands), 35% file paths, 15% hosts;
about a third of the calls match a rule. Three runs: warm (the parse LRU and the policy's
decision memo for commands), memo off, and cold (every cache cleared before every call: the
honest cost of a command seen for the first time). Medians per tool are printed too.
Targets (issue 3): ≤ 10 µs median at 1,000 rules; 10 → 10,000 rules growth ≤ 2×.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.policy import floor_cmd, floor_paths, shell, targets
from cmdop.core.policy.gate import Policy, decide
from cmdop.core.policy.index import RuleSet
from cmdop.core.policy.rules import parse_rule

HOME = "/home/bench"
PROGS = ["git", "ls", "cat", "make", "npm", "docker", "kubectl", "systemctl", "journalctl", "grep",
         "find", "tar", "python3", "pip", "cargo", "go", "du", "df", "ps", "uptime"]


def make_rules(n: int, rng: random.Random) -> list:
    """n rules: mostly literal-program command rules, path rules by directory, host rules, and a
    fixed handful of rules whose first word is a wildcard (the generic bucket)."""
    texts: list[tuple[str, str]] = [("execute_command(* --help)", "allow"), ("read_file(**/*.pem)", "deny"),
                                    ("connect(*.internal)", "ask")]
    i = 0
    while len(texts) < n:
        k = rng.randrange(4)
        prog = PROGS[i % len(PROGS)] if i < len(PROGS) * 2 else f"tool{i}"
        if k == 0:
            texts.append((f"execute_command({prog} *)", "allow"))
        elif k == 1:
            texts.append((f"execute_command({prog} sub{i} *)", rng.choice(["deny", "ask"])))
        elif k == 2:
            texts.append((f"read_file(/srv/app{i}/**)", rng.choice(["allow", "deny"])))
        else:
            texts.append((f"connect(host{i}.example.com)", "allow"))
        i += 1
    return [parse_rule(t, a, home=HOME, order=j) for j, (t, a) in enumerate(texts[:n])]


def make_calls(count: int, rng: random.Random) -> list[ToolCall]:
    commands = []
    for j in range(400):
        prog = rng.choice(PROGS + [f"tool{rng.randrange(50)}"])
        shape = j % 4
        if shape == 0:
            commands.append(f"{prog} status --verbose {j}")
        elif shape == 1:
            commands.append(f"{prog} -la /srv/app{j} | grep x{j}")
        elif shape == 2:
            commands.append(f"cd /srv/app{j} && {prog} build && echo done")
        else:
            commands.append(f"{prog} \"$(date +%s)\" file{j}.txt")
    calls = []
    for _ in range(count):
        r = rng.random()
        if r < 0.5:
            calls.append(ToolCall("execute_command", {"command": rng.choice(commands)}, "", "/srv/work"))
        elif r < 0.85:
            calls.append(ToolCall("read_file", {"path": f"/srv/app{rng.randrange(3000)}/src/f{rng.randrange(99)}.py"},
                                  "", "/srv/work"))
        else:
            calls.append(ToolCall("connect", {"hostname": f"host{rng.randrange(3000)}.example.com"}, "exec"))
    return calls


def clear_caches() -> None:
    shell.analyse.cache_clear()
    targets.parts_for_command.cache_clear()
    floor_cmd.check_command.cache_clear()
    floor_paths.check_path.cache_clear()


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000.0 if samples else float("nan")


CACHING = {
    "warm": "warm caches (parse LRU + decision memo)",
    "nomemo": "parse LRU warm, decision memo off",
    "cold": "cold: every cache cleared per call",
}


def run(n_rules: int, calls: list[ToolCall], seed: int, caching: str) -> tuple[float, dict[str, float]]:
    """(median µs over all calls, median µs per tool)."""
    policy = Policy(mode="default", global_rules=RuleSet(make_rules(n_rules, random.Random(seed))))
    caller = Caller(CallerKind.REMOTE)
    clock = time.perf_counter_ns
    for call in calls[:2000]:            # warm-up (and, warm, fill the caches)
        decide(call, caller, policy, HOME)
    samples: list[int] = []
    per_tool: dict[str, list[int]] = {}
    for call in calls:
        if caching != "warm":
            policy.memo.clear()
            if caching == "cold":
                clear_caches()
        t0 = clock()
        decide(call, caller, policy, HOME)
        dt = clock() - t0
        samples.append(dt)
        per_tool.setdefault(call.tool, []).append(dt)
    return median_us(samples), {k: median_us(v) for k, v in per_tool.items()}


def baseline(calls: list[ToolCall]) -> float:
    table = {c.tool: 1 for c in calls}
    clock = time.perf_counter_ns
    samples = []
    for call in calls:
        t0 = clock()
        table.get(call.tool)
        samples.append(clock() - t0)
    return median_us(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    calls = make_calls(args.calls, random.Random(args.seed))
    base = baseline(calls)
    print(f"baseline (dict lookup, same timer): {base:.2f} µs median")
    results: dict[tuple[int, str], float] = {}
    for caching, label in CACHING.items():
        sample = calls if caching != "cold" else calls[: max(1000, args.calls // 5)]
        for n in (10, 1000, 10_000):
            m, per_tool = run(n, sample, args.seed + n, caching)
            results[(n, caching)] = m
            tools = "  ".join(f"{k.split('_')[0]} {v:.1f}" for k, v in sorted(per_tool.items()))
            print(f"{label:40} {n:>6} rules: {m:7.2f} µs median ({m / base:5.1f}× baseline)  [{tools}]")
    for caching in CACHING:
        r1 = results[(1000, caching)] / results[(10, caching)]
        r2 = results[(10_000, caching)] / results[(10, caching)]
        print(f"growth, {caching:7}: 1,000/10 rules = {r1:.2f}×, 10,000/10 rules = {r2:.2f}×")
    ok = results[(1000, "warm")] <= 10 and results[(10_000, "warm")] / results[(10, "warm")] <= 2
    print("targets (≤ 10 µs at 1,000 rules; ≤ 2× from 10 to 10,000), warm:", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
