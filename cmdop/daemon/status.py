"""daemon.status and daemon.pid in the state dir, and how `cmdop agent status` reads them.

daemon.status is one JSON object, replaced atomically: `pid, version, started_at, updated_at,
state, mode, policy_ok, policy_error, audit_ok, relay_connected, socket, counters, enforcement`
(`enforcement`: the sandbox's layers as `Sandbox.enforcement` reports them, or
`{"state": "starting" | "unavailable" | "unknown", "reason"?}` until they are known).
`state` as written by the daemon is `starting`, `online`, `degraded`, `stopping` or `stopped`.

What a reader reports (`classify`):
- STOPPED when no pid file, or its pid is not alive (a stale pid file is reported as stale);
- STARTING when the live daemon has not declared itself ready yet;
- ONLINE when serving with a good policy and a writable audit log;
- DEGRADED while stopping (no new calls taken), or when serving but the policy is bad, the
  audit log is unwritable, a login cannot be refreshed or the relay refused this agent's
  credential (a revoked key), or when the status has not been refreshed for 3 refresh
  intervals (a wedged event loop). A relay that is merely unreachable leaves it ONLINE (local
  calls are served; the `relay:` line says why remote ones are not).
"""

from __future__ import annotations

import errno
import json
import os
import time

from cmdop.adapters.secure_file import atomic_write, ensure_private_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_status(path: str, status: dict[str, Any]) -> None:
    """Atomically replace the status file with `status` (0644: it holds no secret)."""
    atomic_write(path, json.dumps(status, indent=1, sort_keys=True) + "\n", mode=0o644)


def read_json(path: str) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_pid(path: str) -> int | None:
    """The pid in a pid file, or None when missing or garbage."""
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    """True when a process `pid` exists (EPERM means it exists but is not ours)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def _is_cmdop(pid: int) -> bool:
    """Whether process `pid` runs cmdop (its command line names it); True when that cannot be
    read (another user's process: give it the benefit of the doubt)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"cmdop" in fh.read()
    except OSError:
        return True


def write_pid(path: str) -> None:
    ensure_private_dir(os.path.dirname(path))
    atomic_write(path, f"{os.getpid()}\n", mode=0o644)


def remove_if_ours(path: str) -> None:
    """Remove the pid file only if it still names this process."""
    if read_pid(path) == os.getpid():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _age_s(stamp: Any) -> float | None:
    """Seconds since a `utc_now()` stamp, or None when it is not one."""
    import calendar  # only with a status file to read: `agent status` with no agent skips it

    try:
        then = calendar.timegm(time.strptime(str(stamp), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return None
    return time.time() - then


def _missing(path: str) -> bool:
    """Is `path` known not to exist (not merely hidden behind a directory we may not search)?"""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def classify(pid_file: str, status_file: str) -> dict[str, Any]:
    """What `cmdop agent status` reports: `{"state": ONLINE|DEGRADED|STARTING|STOPPED, ...}`."""
    pid = read_pid(pid_file)
    status = read_json(status_file) or {}
    out: dict[str, Any] = {"state": "STOPPED", "pid": pid}
    if pid is None:
        last = status.get("updated_at") if status.get("state") == "stopped" else None
        if last:
            out["detail"] = f"stopped cleanly at {last}"
        elif os.path.lexists(pid_file):
            out.update(detail=f"stale pid file ({pid_file} holds no pid)", stale=True)
        elif _missing(state_dir := os.path.dirname(pid_file) or "."):
            out["detail"] = f"no agent has run with this state dir yet ({state_dir} does not exist)"
        elif not os.access(state_dir, os.R_OK | os.X_OK):
            out["detail"] = f"cannot read the state dir {state_dir} (run as its owner)"
        else:
            out["detail"] = "no pid file"
        return out
    if not pid_alive(pid):
        out["detail"] = f"stale pid file (pid {pid} is not running)"
        out["stale"] = True
        return out
    if status.get("pid") != pid:
        if not _is_cmdop(pid):          # the pid was reused by another program since a crash
            out.update(detail=f"stale pid file (pid {pid} is another program now)", stale=True)
            return out
        out.update(state="STARTING", detail="daemon is starting (no status written yet)")
        return out
    written = str(status.get("state") or "starting")
    state = {"online": "ONLINE", "degraded": "DEGRADED", "stopping": "DEGRADED",
             "stopped": "STOPPED"}.get(written, "STARTING")
    out.update(status)
    out["state"] = state
    reasons = ["stopping: finishing running calls"] if written == "stopping" else []
    stale_s = _age_s(status.get("updated_at"))
    refresh = status.get("refresh_s")
    if state in ("ONLINE", "DEGRADED") and isinstance(refresh, (int, float)) and stale_s is not None \
            and stale_s > 3 * refresh + 5:
        # Alive but not refreshing its status: its event loop is wedged or starved.
        state = out["state"] = "DEGRADED"
        reasons.append(f"status not refreshed for {int(stale_s)}s")
    if status.get("policy_ok") is False:
        reasons.append(f"policy: {status.get('policy_error') or 'no good policy'}")
    if status.get("audit_ok") is False:
        reasons.append("audit log not writable")
    relay = status.get("relay")
    if isinstance(relay, dict) and relay.get("refused"):
        reasons.append(f"relay refused this agent's credential: {relay.get('last_error') or '?'}")
    if status.get("config_error"):
        reasons.append(f"config: {status['config_error']} (defaults in use)")
    if reasons:
        out["detail"] = "; ".join(reasons)
    return out
