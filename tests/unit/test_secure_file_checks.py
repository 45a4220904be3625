"""check_private / check_not_writable: what a secret (or a public key) may sit in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
