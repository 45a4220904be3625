"""Placeholder: commands registered here arrive with their issue."""

from __future__ import annotations

import argparse


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this module's commands to `sub`."""
