"""Supervised long-lived tasks: a crash is logged with the task's name and the task restarts with
exponential backoff, instead of taking the whole daemon down.

Rules:
- Cancellation (shutdown) is never treated as a crash: `trio.Cancelled` passes straight through.
- A task that returns normally is finished and not restarted.
- Backoff doubles from `initial` to `maximum` and resets after the task ran `stable_s` without
  crashing, so a task that fails once a day restarts fast every time.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

import trio

log = logging.getLogger("cmdop.daemon.supervisor")


async def supervise(name: str, fn: Callable[..., Awaitable[None]], *, initial: float = 0.5,
                    maximum: float = 30.0, stable_s: float = 60.0,
                    crashes: dict[str, int] | None = None, reports_started: bool = False,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run `fn()` until it returns; on an exception log it, wait the backoff, and run it again.

    Started with `nursery.start`: with `reports_started`, `fn(task_status)` says when it is
    ready on its first run (a restart reports to nobody); otherwise the task counts as started
    at once. `crashes`, when given, counts restarts per task name (reported in daemon.status)."""
    delay = initial
    status: trio.TaskStatus[None] = task_status
    if not reports_started:
        task_status.started()
    while True:
        started = time.monotonic()
        try:
            if reports_started:
                run_status, status = status, trio.TASK_STATUS_IGNORED
                await fn(run_status)
            else:
                await fn()
            log.debug("task %s finished", name)
            return
        except Exception:
            if crashes is not None:
                crashes[name] = crashes.get(name, 0) + 1
            if time.monotonic() - started >= stable_s:
                delay = initial
            log.exception("task %s crashed; restarting in %.1fs", name, delay,
                          extra={"fields": {"task": name}})
            await trio.sleep(delay)
            delay = min(maximum, delay * 2)
