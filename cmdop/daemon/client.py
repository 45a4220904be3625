"""Client side of the local socket protocol (placeholder until the daemon issue lands)."""

from __future__ import annotations

from typing import Any, Mapping

from cmdop.core.settings import Settings


class DaemonClient:
    """A connection to the running daemon."""

    def call_tool(self, tool: str, tool_input: Mapping[str, Any], cwd: str) -> dict[str, Any]:
        raise NotImplementedError


def connect_if_running(settings: Settings) -> DaemonClient | None:
    """A client for the daemon when one is listening on the local socket, else None."""
    return None
