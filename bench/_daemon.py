"""Shared by the daemon benchmarks: a real `cmdop agent run` in a throw-away HOME. (No benchmark.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cmdop.core.errors import DaemonError  # noqa: E402
from cmdop.daemon.client import DaemonClient  # noqa: E402


def isolated_env(tmp: Path, home: Path) -> dict[str, str]:
    """This environment without cmdop/XDG/systemd variables, every cmdop path under `home`
    (socket under `tmp`), and the checkout on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMDOP_", "XDG_", "NOTIFY_", "WATCHDOG_"))}
    env.update(HOME=str(home), CMDOP_CONFIG_DIR=str(home / "cfg"), CMDOP_STATE_DIR=str(home / "state"),
               CMDOP_HOME=str(home / ".cmdop"), CMDOP_SOCKET_PATH=str(tmp / "run" / "agent.sock"),
               PYTHONPATH=str(REPO))
    return env


def start_agent(env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[bytes], DaemonClient]:
    """Start the daemon with `env` (sys.executable, an absolute path) and return it with a
    connected client once it answers ping; SystemExit when it does not within 30 s."""
    daemon = subprocess.Popen([sys.executable, "-m", "cmdop", "agent", "run", "--log-level", "warning"],
                              env=env, cwd=str(cwd), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            client = DaemonClient.connect(env["CMDOP_SOCKET_PATH"])
            client.ping()
            return daemon, client
        except DaemonError:
            if time.monotonic() > deadline or daemon.poll() is not None:
                daemon.kill()
                raise SystemExit("daemon did not start")
            time.sleep(0.05)
