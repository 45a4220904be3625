#!/usr/bin/env python3
"""Entry point: `python agent.py ARGS` behaves exactly like `cmdop ARGS`."""

import os
import sys

# Running from a source checkout: make the package importable without installing it.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cmdop.cli.main import entry  # noqa: E402

if __name__ == "__main__":
    entry()
