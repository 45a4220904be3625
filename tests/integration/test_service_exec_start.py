"""`cmdop service install` picks an ExecStart systemd can run: for a zipapp installed without the
.pyz suffix (/usr/local/bin/cmdop) that is `<python> <abs path>`, never `python -m cmdop`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipapp
from pathlib import Path

from cmdop.cli.agent_cmd import _exec_start


def _tiny_zipapp(tmp_path: Path) -> Path:
    """A zipapp named `cmdop` (no suffix) running this checkout's CLI (via PYTHONPATH)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "__main__.py").write_text("from cmdop.cli.main import entry\nentry()\n")
    target = tmp_path / "bin" / "cmdop"
    target.parent.mkdir()
    zipapp.create_archive(src, target, interpreter="/usr/bin/env python3")
    return target


def test_dry_run_of_a_suffixless_zipapp_names_interpreter_and_file(cmdop_env, tmp_path):
    app = _tiny_zipapp(tmp_path)
    r = subprocess.run([sys.executable, str(app), "service", "install", "--user", "--dry-run",
                        "--json"], env=cmdop_env.env, capture_output=True, text=True, timeout=60,
                       cwd=str(tmp_path / "bin"))
    assert r.returncode == 0, r.stderr
    unit = json.loads(r.stdout)["unit"]
    assert f"\nExecStart={os.path.abspath(sys.executable)} {app} agent run\n" in unit


def test_a_relative_argv0_becomes_absolute(tmp_path, monkeypatch):
    app = _tiny_zipapp(tmp_path)
    monkeypatch.chdir(app.parent)
    assert _exec_start("cmdop", "/usr/bin/python3") == f"/usr/bin/python3 {app}"


def test_a_checkout_or_package_runs_as_a_module(tmp_path):
    script = tmp_path / "cmdop"
    script.write_text("#!/usr/bin/python3\nimport cmdop\n")
    assert _exec_start(str(script), "/usr/bin/python3") == "/usr/bin/python3 -m cmdop"
    assert _exec_start("", "/usr/bin/python3") == "/usr/bin/python3 -m cmdop"
    assert _exec_start(str(tmp_path / "missing.pyz"), "/usr/bin/python3") == "/usr/bin/python3 -m cmdop"
