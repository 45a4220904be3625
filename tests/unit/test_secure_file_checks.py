"""check_private / check_not_writable: what a secret (or a public key) may sit in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cmdop.adapters import secure_file
from cmdop.adapters.secure_file import check_not_writable, check_private
from cmdop.core.errors import SecretFileError


@pytest.mark.parametrize("dir_mode,file_mode,problem", [
    (0o700, 0o600, None),
    (0o755, 0o600, None),                   # others may look, not swap
    (0o777, 0o600, "chmod 700"),            # found by a black-box pass: ~/.cmdop at 0777 was used
    (0o770, 0o600, "chmod 700"),
    (0o1777, 0o600, "chmod 700"),           # sticky or not: a secret has no place in /tmp itself
    (0o700, 0o620, "chmod 600"),            # group-writable: "writable", not "readable"
    (0o700, 0o644, "chmod 600"),
])
def test_private(tmp_path: Path, dir_mode: int, file_mode: int, problem: str | None) -> None:
    d = tmp_path / "d"
    d.mkdir()
    f = d / "secret"
    f.write_text("x")
    f.chmod(file_mode)
    d.chmod(dir_mode)
    try:
        if problem is None:
            check_private(str(f))
        else:
            with pytest.raises(SecretFileError) as err:
                check_private(str(f))
            assert problem in (err.value.hint or ""), err.value.hint
    finally:
        d.chmod(0o700)


def test_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir()
    os.mkfifo(tmp_path / "fifo")
    for name in ("secret", "fifo"):
        with pytest.raises(SecretFileError, match="not a regular file"):
            check_private(str(tmp_path / name))


def test_public_may_be_read_not_written(tmp_path: Path) -> None:
    f = tmp_path / "audit.pub"
    f.write_bytes(b"k")
    f.chmod(0o644)
    check_not_writable(str(f))
    f.chmod(0o666)
    with pytest.raises(SecretFileError, match="writable by other users"):
        check_not_writable(str(f))
    check_private(str(tmp_path / "missing"))          # missing: the caller decides


@pytest.mark.parametrize("make, expected", [
    (lambda d: ((d / "f").write_bytes(b"ok"), (d / "f").chmod(0o600)), b"ok"),
    (lambda d: ((d / "f").write_bytes(b"ok"), (d / "f").chmod(0o400)), b"ok"),   # private too
    (lambda d: ((d / "f").write_bytes(b"ok"), (d / "f").chmod(0o640)), None),
    (lambda d: ((d / "f").write_bytes(b"x" * 11), (d / "f").chmod(0o600)), None),  # over the limit
    (lambda d: ((d / "g").write_bytes(b"ok"), (d / "g").chmod(0o600), (d / "f").symlink_to(d / "g")), None),
    (lambda d: os.mkfifo(d / "f", 0o600), None),                                   # no hang either
    (lambda d: (d / "f").mkdir(mode=0o700), None),
    (lambda d: ((d / "f").write_bytes(b"ok"), (d / "f").chmod(0o600), d.chmod(0o777)), None),
    (lambda d: None, None),                                                        # missing
])
def test_read_private_in_reads_only_a_private_regular_file_of_ours(tmp_path, make, expected) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    make(d)
    assert secure_file.read_private_in(str(d), "f", limit=10) == expected


def test_write_private_in_writes_0600_and_only_into_a_directory_of_ours(tmp_path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    assert secure_file.write_private_in(str(d), "f", b"one")
    assert (d / "f").read_bytes() == b"one" and (d / "f").stat().st_mode & 0o777 == 0o600
    assert secure_file.write_private_in(str(d), "f", b"two") and (d / "f").read_bytes() == b"two"
    d.chmod(0o775)
    assert not secure_file.write_private_in(str(d), "f", b"three")
    assert (d / "f").read_bytes() == b"two" and sorted(os.listdir(d)) == ["f"]
    assert not secure_file.write_private_in(str(tmp_path / "missing"), "f", b"x")
