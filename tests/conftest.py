"""Shared test fixtures: an isolated cmdop environment and a way to run the real CLI.

Every test that touches cmdop's files gets its own HOME and CMDOP_* directories, so nothing on
the machine running the tests is read or changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=300, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

REPO = Path(__file__).resolve().parent.parent


@dataclass
class CmdopEnv:
    """A private home for one test, with the environment that points cmdop at it."""

    home: Path
    env: dict[str, str]

    @property
    def config_dir(self) -> Path:
        return Path(self.env["CMDOP_CONFIG_DIR"])

    @property
    def state_dir(self) -> Path:
        return Path(self.env["CMDOP_STATE_DIR"])

    @property
    def cmdop_home(self) -> Path:
        return Path(self.env["CMDOP_HOME"])

    @property
    def socket_path(self) -> Path:
        return Path(self.env["CMDOP_SOCKET_PATH"])

    def run(self, *args: str, input: str | None = None, timeout: float = 60,
            cwd: str | os.PathLike[str] | None = None, **extra_env: str) -> subprocess.CompletedProcess[str]:
        """Run `python -m cmdop ARGS` in this environment and capture its output."""
        env = dict(self.env, **extra_env)
        return subprocess.run(
            [sys.executable, "-m", "cmdop", *args], env=env, input=input, text=True,
            capture_output=True, timeout=timeout, cwd=cwd or self.home,
        )


@pytest.fixture
def cmdop_env(tmp_path: Path) -> CmdopEnv:
    """A fresh HOME with config, state and credentials dirs redirected into it."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMDOP_", "XDG_"))}
    env.update(
        HOME=str(home),
        CMDOP_CONFIG_DIR=str(home / ".config" / "cmdop"),
        CMDOP_STATE_DIR=str(home / ".local" / "state" / "cmdop"),
        CMDOP_HOME=str(home / ".cmdop"),
        CMDOP_SOCKET_PATH=str(tmp_path / "run" / "agent.sock"),
        PYTHONPATH=str(REPO),
    )
    return CmdopEnv(home=home, env=env)


def pytest_configure(config: Any) -> None:
    # Children spawned by tests find the checkout even when cmdop is not installed.
    os.environ.setdefault("PYTHONPATH", str(REPO))
