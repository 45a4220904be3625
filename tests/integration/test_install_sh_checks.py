"""install.sh: a file that is not a zipapp is refused as such (not handed to Python as source),
and the "install this Python" hint only suggests a PPA where the release does not ship it."""

from __future__ import annotations

import zipapp
from pathlib import Path

import pytest

from test_install_sh import make_fake_pyz, run_install, write_sums


@pytest.mark.parametrize("body", [b"vm = 1\nprint(vm)\n", b"<html>404 Not Found</html>\n", b"",
                                  b"#!/usr/bin/env python3\nprint('not a zip')\n"])
def test_a_file_that_is_not_a_pyz_is_refused_clearly(tmp_path: Path, body: bytes) -> None:
    rel = tmp_path / "rel"
    rel.mkdir()
    pyz = rel / "cmdop.pyz"
    pyz.write_bytes(body)
    write_sums(pyz)
    prefix = tmp_path / "bin"
    r = run_install("--from", str(pyz), "--prefix", str(prefix), tmp=tmp_path)
    assert r.returncode == 1
    assert "cmdop.pyz is not a cmdop zipapp" in r.stderr
    assert "NameError" not in r.stderr and "Traceback" not in r.stderr
    assert any(line.startswith("hint: --from must name the cmdop.pyz") for line in r.stderr.splitlines())
    assert not prefix.exists()


def test_a_truncated_pyz_is_refused(tmp_path: Path) -> None:
    pyz = make_fake_pyz(tmp_path / "rel")
    data = pyz.read_bytes()
    pyz.write_bytes(data[: len(data) // 2])
    write_sums(pyz)
    r = run_install("--from", str(pyz), "--prefix", str(tmp_path / "bin"), tmp=tmp_path)
    assert r.returncode == 1 and "is not a cmdop zipapp" in r.stderr


def _pyz_for(where: Path, minor: str) -> Path:
    src = where / "src"
    src.mkdir(parents=True)
    (src / "__main__.py").write_text("print('cmdop 0')\n")
    pyz = where / "cmdop.pyz"
    zipapp.create_archive(src, pyz, interpreter=f"/usr/bin/env python{minor}")
    write_sums(pyz)
    return pyz


def _hint(tmp_path: Path, os_release: str, want: str, system_python3: str) -> str:
    """install.sh's hint when python{want} is missing (a stand-in reports 3.8) and python3 is
    `system_python3`, on the distribution described by `os_release`."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for name, version in ((f"python{want}", "3.8"), ("python3", system_python3)):
        (fake / name).write_text(f"#!/bin/sh\necho {version}\n")
        (fake / name).chmod(0o755)
    osr = tmp_path / "os-release"
    osr.write_text(os_release)
    pyz = _pyz_for(tmp_path / "rel", want)
    r = run_install_env(tmp_path, pyz, str(fake), str(osr))
    assert r.returncode == 1, r.stderr
    assert f"needs Python {want}" in r.stderr
    [hint] = [line for line in r.stderr.splitlines() if line.startswith("hint:")]
    return hint


def run_install_env(tmp_path: Path, pyz: Path, fake: str, osr: str):  # type: ignore[no-untyped-def]
    import os
    import subprocess

    from test_install_sh import INSTALL, python_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{fake}:{python_dir()}:/usr/local/bin:/usr/bin:/bin", HOME=str(tmp_path / "home"),
               TMPDIR=str(tmp_path), CMDOP_INSTALL_OS_RELEASE=osr)
    return subprocess.run(["bash", str(INSTALL), "--from", str(pyz), "--prefix", str(tmp_path / "bin")],
                          env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


UBUNTU_2404 = 'ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n'


def test_ubuntu_2404_ships_python312_no_ppa(tmp_path: Path) -> None:
    hint = _hint(tmp_path, UBUNTU_2404, "3.12", "3.12.3")
    assert "apt-get install -y python3.12" in hint
    assert "ppa" not in hint.lower() and "deadsnakes" not in hint


def test_ubuntu_2404_python311_needs_the_ppa_or_the_312_build(tmp_path: Path) -> None:
    hint = _hint(tmp_path, UBUNTU_2404, "3.11", "3.12.3")
    assert "ppa:deadsnakes/ppa" in hint and "python3.11" in hint and "ships Python 3.12" in hint
    assert "--python-version 3.12" in hint


def test_debian_12_ships_python311(tmp_path: Path) -> None:
    hint = _hint(tmp_path, 'ID=debian\nVERSION_ID="12"\n', "3.11", "3.11.2")
    assert hint == "hint: sudo apt-get install -y python3.11"


def test_fedora_gets_dnf(tmp_path: Path) -> None:
    hint = _hint(tmp_path, 'ID=fedora\nVERSION_ID="40"\n', "3.11",
                 "3.12.1")
    assert "dnf install -y python3." in hint


# A multi-version pyz (#!/usr/bin/env python3, its versions in the zip comment): which Python
# install.sh settles on, and what it says when there is none of them.
CARRIED = "3.10,3.11,3.12,3.13"


def _multi_pyz(where: Path) -> Path:
    import zipfile

    src = where / "src"
    src.mkdir(parents=True)
    (src / "__main__.py").write_text("import sys\nprint('cmdop 0 on %d.%d' % sys.version_info[:2])\n")
    pyz = where / "cmdop.pyz"
    zipapp.create_archive(src, pyz, interpreter="/usr/bin/env python3")
    with zipfile.ZipFile(pyz, "a") as zf:
        zf.comment = f"cmdop-pythons={CARRIED}".encode()
    write_sums(pyz)
    return pyz


def _fakes(tmp_path: Path, versions: dict[str, str]) -> str:
    """Stand-in interpreters on PATH that report `version` (and cannot run anything)."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for name, version in versions.items():
        (fake / name).write_text(f"#!/bin/sh\necho {version}\n")
        (fake / name).chmod(0o755)
    return str(fake)


def test_multi_version_pyz_installs_as_is_for_a_carried_python3(tmp_path: Path) -> None:
    from test_install_sh import PY_MINOR

    pyz = _multi_pyz(tmp_path / "rel")
    r = run_install("--from", str(pyz), "--prefix", str(tmp_path / "bin"), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"cmdop 0 on {PY_MINOR}" in r.stdout
    assert (tmp_path / "bin" / "cmdop").read_bytes() == pyz.read_bytes()


def test_an_old_python3_falls_back_to_a_carried_python3x(tmp_path: Path) -> None:
    """RHEL 9: python3 is 3.9, python3.11 comes from AppStream. The installed #! names it."""
    import subprocess

    pyz = _multi_pyz(tmp_path / "rel")
    fake = _fakes(tmp_path, {"python3": "3.9"})
    r = run_install_env(tmp_path, pyz, fake, str(tmp_path / "no-os-release"))
    assert r.returncode == 0, r.stderr
    assert "the installed #! line names python3.11" in r.stdout
    installed = (tmp_path / "bin" / "cmdop").read_bytes()
    assert installed.startswith(b"#!/usr/bin/env python3.11\n")
    assert installed.split(b"\n", 1)[1] == pyz.read_bytes().split(b"\n", 1)[1]
    out = subprocess.run([str(tmp_path / "bin" / "cmdop")], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/root/.pyenv/versions/3.11.7/bin:/usr/bin:/bin"})
    assert out.stdout.strip() == "cmdop 0 on 3.11", out.stderr


@pytest.mark.parametrize("os_release, hint", [
    ('ID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.4"\n', "hint: sudo dnf install -y python3.12"),
    ('ID=debian\nVERSION_ID="12"\n', "hint: sudo apt-get install -y python3.11"),
    ('ID=ubuntu\nID_LIKE=debian\nVERSION_ID="20.04"\n',
     "hint: sudo add-apt-repository ppa:deadsnakes/ppa && sudo apt-get install -y python3.13"),
    ("", "hint: install one of CPython 3.10, 3.11, 3.12, 3.13"),
])
def test_no_carried_python_names_the_versions_and_what_to_install(
        tmp_path: Path, os_release: str, hint: str) -> None:
    pyz = _multi_pyz(tmp_path / "rel")
    fake = _fakes(tmp_path, {"python3": "3.9", "python3.11": "3.9"})  # shadows the real ones
    osr = tmp_path / "os-release"
    osr.write_text(os_release)
    r = run_install_env(tmp_path, pyz, fake, str(osr))
    assert r.returncode == 1, r.stdout + r.stderr
    first, second = r.stderr.splitlines()[:2]
    assert first.startswith("install.sh: error: cmdop.pyz runs on CPython 3.10, 3.11, 3.12, 3.13; "
                            f"found: python3 3.9 at {fake}/python3")
    assert second.startswith(hint)
    assert not (tmp_path / "bin").exists()
