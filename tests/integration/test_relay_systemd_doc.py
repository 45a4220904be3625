"""The templated relay unit docs/relay.md shows (`cmdop-relay@.service`, several relay nodes
under systemd) is one an administrator can paste: systemd-analyze finds nothing to say about
it, it runs `cmdop relay serve` with every flag that command knows, and the URLs with their
passwords come from a per-instance environment file, never from the command line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANALYZE = shutil.which("systemd-analyze")


def _unit() -> str:
    text = (REPO / "docs" / "relay.md").read_text(encoding="utf-8")
    found = re.search(r"```\n# /etc/systemd/system/cmdop-relay@\.service\n(.*?)```", text, re.S)
    assert found, "docs/relay.md no longer shows cmdop-relay@.service"
    return found.group(1)


def test_the_documented_unit_keeps_secrets_in_its_environment_file() -> None:
    unit = _unit()
    assert "EnvironmentFile=/etc/cmdop/relay-%i.env" in unit
    assert "postgresql://" not in unit and "redis://" not in unit and "--store" not in unit
    start = re.search(r"^ExecStart=(.*?)(?<!\\)$", unit, re.S | re.M)
    assert start is not None
    flags = set(re.findall(r"(--[a-z-]+)", start.group(1)))
    out = subprocess.run([sys.executable, "-m", "cmdop", "relay", "serve", "--help"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert flags and flags <= set(re.findall(r"(--[a-z-]+)", out.stdout)), flags


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_the_documented_unit_lints_clean(tmp_path: Path) -> None:
    program = tmp_path / "cmdop"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    unit = tmp_path / "cmdop-relay@relay-a.service"
    unit.write_text(_unit().replace("/usr/local/bin/cmdop", str(program)))
    out = subprocess.run([str(ANALYZE), "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
