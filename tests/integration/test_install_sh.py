"""install.sh: verifies the checksum before installing, refuses a tampered file leaving nothing
behind, says what Python to install when it is missing, is idempotent, and installs by rename.

Most tests use a tiny stand-in zipapp (a real one, built with stdlib zipapp, that answers
--version) so the checksum and file logic run in milliseconds; one slow test installs the real
cmdop.pyz built by build_zipapp.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipapp
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "install.sh"
PY_MINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"


def make_fake_pyz(where: Path, version: str = "9.9.9") -> Path:
    """A zipapp that prints `cmdop VERSION`, with SHA256SUMS beside it, like a release."""
    src = where / f"src-{version}"
    src.mkdir(parents=True)
    (src / "__main__.py").write_text(
        "import sys\n"
        "if sys.argv[1:] not in ([], ['--version']):\n"
        "    sys.exit('usage: cmdop [--version]')\n"
        f"print('cmdop {version}')\n")
    where.mkdir(exist_ok=True)
    pyz = where / "cmdop.pyz"
    zipapp.create_archive(src, pyz, interpreter=f"/usr/bin/env python{PY_MINOR}")
    write_sums(pyz)
    return pyz


def write_sums(pyz: Path) -> str:
    digest = hashlib.sha256(pyz.read_bytes()).hexdigest()
    (pyz.parent / "SHA256SUMS").write_text(f"{digest}  {pyz.name}\n")
    return digest


def python_dir() -> str:
    """A directory holding a real pythonX.Y for the installer to find."""
    real = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return str(Path(real).parent)


def run_install(*args: str, path_prefix: str | None = None,
                tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    path = f"{python_dir()}:/usr/local/bin:/usr/bin:/bin"
    env["PATH"] = f"{path_prefix}:{path}" if path_prefix else path
    env["HOME"] = str(tmp / "home")
    env["TMPDIR"] = str(tmp)
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"  # the test's HTTP host is local
    return subprocess.run(["bash", str(INSTALL), *args], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def test_installs_into_temp_prefix_and_rerun_is_idempotent(tmp_path):
    pyz = make_fake_pyz(tmp_path / "rel")
    prefix = tmp_path / "prefix" / "bin"
    r = run_install("--from", str(pyz), "--prefix", str(prefix), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    target = prefix / "cmdop"
    assert target.read_bytes() == pyz.read_bytes()
    assert os.access(target, os.X_OK)
    assert subprocess.run([str(target)], capture_output=True, text=True,
                          env=dict(os.environ, PATH=python_dir() + ":/usr/bin:/bin")
                          ).stdout.strip() == "cmdop 9.9.9"
    before = target.stat()
    r = run_install("--from", str(pyz), "--prefix", str(prefix), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stdout
    after = target.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in prefix.iterdir()) == ["cmdop"]


def test_upgrade_replaces_by_rename(tmp_path):
    prefix = tmp_path / "bin"
    old = make_fake_pyz(tmp_path / "old", "1.0.0")
    new = make_fake_pyz(tmp_path / "new", "2.0.0")
    assert run_install("--from", str(old), "--prefix", str(prefix), tmp=tmp_path).returncode == 0
    inode = (prefix / "cmdop").stat().st_ino
    r = run_install("--from", str(new), "--prefix", str(prefix), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (prefix / "cmdop").read_bytes() == new.read_bytes()
    assert (prefix / "cmdop").stat().st_ino != inode  # a new file renamed in, not rewritten
    assert sorted(p.name for p in prefix.iterdir()) == ["cmdop"]


def test_tampered_file_is_refused_and_nothing_installed(tmp_path):
    pyz = make_fake_pyz(tmp_path / "rel")
    with pyz.open("ab") as f:
        f.write(b"\0")  # one byte appended after SHA256SUMS was written
    prefix = tmp_path / "bin"
    r = run_install("--from", str(pyz), "--prefix", str(prefix), tmp=tmp_path)
    assert r.returncode == 1
    assert "checksum mismatch" in r.stderr and "nothing was installed" in r.stderr
    assert not prefix.exists() or list(prefix.iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("cmdop-install.")]


def test_tampered_file_leaves_existing_install_alone(tmp_path):
    prefix = tmp_path / "bin"
    good = make_fake_pyz(tmp_path / "good", "1.0.0")
    assert run_install("--from", str(good), "--prefix", str(prefix), tmp=tmp_path).returncode == 0
    bad = make_fake_pyz(tmp_path / "bad", "6.6.6")
    r = run_install("--from", str(bad), "--prefix", str(prefix),
                    "--sha256", "0" * 64, tmp=tmp_path)
    assert r.returncode == 1 and "checksum mismatch" in r.stderr
    assert (prefix / "cmdop").read_bytes() == good.read_bytes()
    assert sorted(p.name for p in prefix.iterdir()) == ["cmdop"]


def test_explicit_sha256_and_missing_sums(tmp_path):
    pyz = make_fake_pyz(tmp_path / "rel")
    digest = hashlib.sha256(pyz.read_bytes()).hexdigest()
    (pyz.parent / "SHA256SUMS").unlink()
    prefix = tmp_path / "bin"
    r = run_install("--from", str(pyz), "--prefix", str(prefix), tmp=tmp_path)
    assert r.returncode == 1 and "no SHA256SUMS" in r.stderr and "--sha256" in r.stderr
    assert not prefix.exists()
    r = run_install("--from", str(pyz), "--prefix", str(prefix), "--sha256", digest.upper(),
                    tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (prefix / "cmdop").exists()


def test_python_too_old_says_what_to_install(tmp_path):
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    for name, version in ((f"python{PY_MINOR}", "3.8"), ("python3", "3.8.10")):
        script = fake_bin / name
        script.write_text(f"#!/bin/sh\necho {version}\n")
        script.chmod(0o755)
    pyz = make_fake_pyz(tmp_path / "rel")
    prefix = tmp_path / "bin"
    r = run_install("--from", str(pyz), "--prefix", str(prefix), path_prefix=str(fake_bin),
                    tmp=tmp_path)
    assert r.returncode == 1
    assert f"needs Python {PY_MINOR}" in r.stderr
    assert "3.8" in r.stderr
    hint = [line for line in r.stderr.splitlines() if line.startswith("hint:")]
    assert hint and f"python{PY_MINOR}" in hint[0]
    assert not prefix.exists()


def test_usage_errors_exit_2(tmp_path):
    r = run_install("--no-such-flag", tmp=tmp_path)
    assert r.returncode == 2 and "usage:" in r.stderr
    r = run_install(tmp=tmp_path)
    assert r.returncode == 2 and "--from" in r.stderr


def test_service_without_service_command_is_explained(tmp_path):
    pyz = make_fake_pyz(tmp_path / "rel")
    prefix = tmp_path / "bin"
    r = run_install("--from", str(pyz), "--prefix", str(prefix), "--service", tmp=tmp_path)
    # The stand-in pyz has no `service install`: binary installed, unit refused with a hint.
    assert r.returncode == 1 and "service install" in r.stderr
    assert (prefix / "cmdop").exists()


@pytest.mark.slow
def test_installs_the_real_zipapp(tmp_path, tmp_path_factory):
    from test_zipapp import built_pyz  # one build per session, shared with test_zipapp

    from cmdop import __version__

    pyz = built_pyz(tmp_path_factory)
    prefix = tmp_path / "bin"
    r = run_install("--from", str(pyz), "--prefix", str(prefix), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"cmdop {__version__}" in r.stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=python_dir() + ":/usr/bin:/bin", HOME=str(tmp_path / "home"),
               SHIV_ROOT=str(tmp_path / "shiv"))
    out = subprocess.run([str(prefix / "cmdop"), "version", "--json"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert __version__ in out.stdout
    if shutil.which("sha256sum"):
        sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=pyz.parent,
                              capture_output=True, text=True)
        assert sums.returncode == 0, sums.stdout + sums.stderr


def test_service_flag_runs_service_install_with_the_installed_path(tmp_path):
    """--service hands the unit to `cmdop service install`, naming the real interpreter and the
    installed file (not the download, not a pyenv shim)."""
    src = tmp_path / "svc-src"
    src.mkdir()
    log = tmp_path / "service-args.txt"
    (src / "__main__.py").write_text(
        "import sys\n"
        "args = sys.argv[1:]\n"
        "if args == ['--version']:\n"
        "    print('cmdop 7.7.7')\n"
        "elif args[:2] == ['service', 'install'] and '--help' in args:\n"
        "    print('usage: cmdop service install [--system|--user] [--exec-start CMD]')\n"
        "elif args[:2] == ['service', 'install']:\n"
        f"    open({str(log)!r}, 'w').write('\\n'.join(args))\n"
        "else:\n"
        "    sys.exit('usage: cmdop')\n")
    rel = tmp_path / "rel"
    rel.mkdir()
    pyz = rel / "cmdop.pyz"
    zipapp.create_archive(src, pyz, interpreter=f"/usr/bin/env python{PY_MINOR}")
    write_sums(pyz)
    prefix = tmp_path / "bin"
    r = run_install("--from", str(pyz), "--prefix", str(prefix), "--service=user", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    args = log.read_text().split("\n")
    assert args[:3] == ["service", "install", "--user"]
    exec_start = args[args.index("--exec-start") + 1]
    interpreter, program = exec_start.split(" ")
    assert program == str(prefix / "cmdop")
    assert os.path.isabs(interpreter) and "shims" not in interpreter


@pytest.fixture
def http_dir(tmp_path):
    """Serve a directory over HTTP on loopback, like a release host."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not (shutil.which("curl") or shutil.which("wget")),
                    reason="neither curl nor wget is installed")
def test_install_from_url_checks_the_served_sums(tmp_path, http_dir):
    root, url = http_dir
    make_fake_pyz(root, "3.3.3")
    prefix = tmp_path / "bin"
    r = run_install("--from", f"{url}/cmdop.pyz", "--prefix", str(prefix), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (prefix / "cmdop").read_bytes() == (root / "cmdop.pyz").read_bytes()
    (root / "SHA256SUMS").write_text("0" * 64 + "  cmdop.pyz\n")  # the host was tampered with
    prefix2 = tmp_path / "bin2"
    r = run_install("--from", f"{url}/cmdop.pyz", "--prefix", str(prefix2), tmp=tmp_path)
    assert r.returncode == 1 and "checksum mismatch" in r.stderr
    assert not prefix2.exists()


def test_readme_quick_start_is_what_ci_runs():
    """The README's quick start is exactly two commands, and .ci/run runs those two."""
    import re

    readme = (REPO / "README.md").read_text()
    section = readme.split("<!-- section:quickstart -->")[1].split("<!-- /section:quickstart -->")[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "quick start has no ```sh block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    commands = [c for c in commands if c]
    assert commands == ["bash .ci/setup", "bash .ci/test"]
    run = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    assert run[-2:] == commands


def test_works_piped_into_bash(tmp_path):
    """`curl ... | bash -s -- ARGS`: the script arrives on stdin, nothing in it may eat stdin."""
    pyz = make_fake_pyz(tmp_path / "rel")
    prefix = tmp_path / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{python_dir()}:/usr/bin:/bin", HOME=str(tmp_path / "home"),
               TMPDIR=str(tmp_path))
    r = subprocess.run(["bash", "-s", "--", "--from", str(pyz), "--prefix", str(prefix)],
                       input=INSTALL.read_text(), env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith("(cmdop 9.9.9)")
    assert (prefix / "cmdop").read_bytes() == pyz.read_bytes()
