"""Running the real CLI in-process (`cmdop.cli.main.main([...])`) in a private HOME.

`cli(*args)` returns a `Result(code, out, err)`; `cli.home` is the redirected HOME. HOME and the
CMDOP_* directories point into tmp_path, every other CMDOP_* / XDG_* variable is removed, and
`stdin=` feeds the command's standard input: a string (read as a pipe, not a terminal) or a
file object.
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cmdop.cli.main import main


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    def __init__(self, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self.home = home
        self._mp = monkeypatch
        self._capsys = capsys

    def __call__(self, *args: str, stdin: str | io.TextIOBase = "") -> Result:
        self._mp.setattr(sys, "stdin", io.StringIO(stdin) if isinstance(stdin, str) else stdin)
        self._capsys.readouterr()
        code = main(list(args))
        got = self._capsys.readouterr()
        return Result(code, got.out, got.err)

    def setenv(self, name: str, value: str) -> None:
        self._mp.setenv(name, value)

    def delenv(self, name: str) -> None:
        self._mp.delenv(name, raising=False)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    for name in list(os.environ):
        if name.startswith(("CMDOP_", "XDG_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CMDOP_CONFIG_DIR", str(home / ".config" / "cmdop"))
    monkeypatch.setenv("CMDOP_STATE_DIR", str(home / ".local" / "state" / "cmdop"))
    monkeypatch.setenv("CMDOP_HOME", str(home / ".cmdop"))
    monkeypatch.setenv("CMDOP_SOCKET_PATH", str(tmp_path / "run" / "agent.sock"))
    return Cli(home, monkeypatch, capsys)
