"""build_zipapp.py's own errors: an interpreter too old to run it, an unsupported target, and a
cold wheel cache without network say what to do (supported versions, --offline, the cache)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build_zipapp.py"
PYENV = Path("/root/.pyenv/versions")


def old_pythons() -> list[Path]:
    found = []
    for minor in ("3.8", "3.9"):
        found += sorted(PYENV.glob(f"{minor}.*/bin/python{minor}"))[:1]
    return found


@pytest.mark.parametrize("python", old_pythons() or [pytest.param(None, marks=pytest.mark.skip(
    reason="no Python older than 3.10 under /root/.pyenv/versions"))])
def test_a_too_old_python_is_told_which_versions_are_supported(python: Path | None) -> None:
    assert python is not None
    r = subprocess.run([str(python), str(BUILD), "--help"], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 1
    assert "is too old to run the build" in r.stderr and "3.10" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_unsupported_target_version_lists_the_supported_ones(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(BUILD), "--python-version", "3.9",
                        "--wheel-cache", str(tmp_path / "cache"), "--fetch-only"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip() == ("build_zipapp: error: --python-version 3.9 is not supported; "
                                "cmdop runs on CPython 3.10, 3.11, 3.12, 3.13, 3.14")


def test_cold_cache_with_offline_names_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cold"
    r = subprocess.run([sys.executable, str(BUILD), "--offline", "--wheel-cache", str(cache),
                        "--fetch-only"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 1
    assert str(cache) in r.stderr and "--offline" in r.stderr and "network" in r.stderr


def test_cold_cache_without_network_says_so_not_conflicting_dependencies(tmp_path: Path) -> None:
    cache = tmp_path / "cold"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple",
               PIP_RETRIES="0", PIP_TIMEOUT="2", no_proxy="*", NO_PROXY="*")
    r = subprocess.run([sys.executable, str(BUILD), "--wheel-cache", str(cache), "--fetch-only"],
                       capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert r.returncode == 1
    first = r.stderr.splitlines()[0]
    assert first.startswith("build_zipapp: error: cannot download the wheels")
    assert str(cache) in first and "--offline" in first and "network" in first
    assert not r.stderr.startswith("build_zipapp: error: pip download failed")
