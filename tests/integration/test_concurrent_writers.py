"""Several cmdop processes changing the same file at once: every change lands.

Found by a black-box pass: six parallel `connect key set --workspace wN` all said "stored"
and two workspaces were kept; six parallel `permissions add` kept one rule."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import CmdopEnv

N = 6


def _parallel(env: CmdopEnv, argvs: list[list[str]], inputs: list[str | None]) -> None:
    procs = [subprocess.Popen([sys.executable, "-m", "cmdop", *argv], env=env.env, cwd=env.home,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for argv in argvs]
    for proc, data in zip(procs, inputs):
        out, err = proc.communicate(data, timeout=60)
        assert proc.returncode == 0, err


def test_parallel_key_sets_keep_every_workspace(cmdop_env: CmdopEnv) -> None:
    key = "cmdop_0123456789ab_V6cxp8rcQyxJShVFiYS94jfp2-TsNP0FpoIkm5deix"      # + one char
    _parallel(cmdop_env,
              [["connect", "key", "set", "--workspace", f"w{i}", "--relay", "relay.example:7443", "-"]
               for i in range(N)],
              [f"{key}{i}\n" for i in range(N)])
    listed = json.loads(cmdop_env.run("connect", "key", "list", "--json").stdout)
    assert sorted(r["name"] for r in listed) == [f"w{i}" for i in range(N)]


def test_parallel_rule_adds_keep_every_rule(cmdop_env: CmdopEnv) -> None:
    assert cmdop_env.run("permissions", "init").returncode == 0
    _parallel(cmdop_env,
              [["permissions", "add", f"execute_command(tool{i} *)", "--action", "allow"] for i in range(N)],
              [None] * N)
    rules = json.loads(cmdop_env.run("permissions", "list", "--json").stdout)
    got = sorted(r["rule"] for r in (rules["rules"] if isinstance(rules, dict) else rules))
    assert got == sorted(f"execute_command(tool{i} *)" for i in range(N)), rules
