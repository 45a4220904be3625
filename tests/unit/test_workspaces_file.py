"""ssh_workspaces.json (cmdop.adapters.workspaces_file): 0600, atomic, refuses readable files,
never silently overwrites a corrupt one, keeps unknown keys."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cmdop.adapters import workspaces_file
from cmdop.core.credentials import WorkspaceEntry, WorkspacesData
from cmdop.core.errors import ConfigError, SecretFileError

KEY = "cmdop_0123456789ab_" + "A" * 43


def sample() -> WorkspacesData:
    return WorkspacesData(active="prod", workspaces=(
        WorkspaceEntry("prod", KEY, "relay.example.com:7443", relay_fingerprint="ab" * 32),
        WorkspaceEntry("dev", KEY.replace("A", "B"), "[::1]:7443", relay_ca="/etc/ca.pem"),
    ))


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert workspaces_file.load(str(tmp_path / "nope.json")) == WorkspacesData()


def test_save_is_0600_in_a_0700_dir_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".cmdop" / "ssh_workspaces.json"
    workspaces_file.save(str(path), sample())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert workspaces_file.load(str(path)) == sample()
    doc = json.loads(path.read_text())
    assert doc["active"] == "prod"
    assert doc["workspaces"][0] == {"name": "prod", "api_key": KEY, "server": "relay.example.com:7443",
                                    "relay_fingerprint": "ab" * 32}
    assert "relay_fingerprint" not in doc["workspaces"][1]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_save_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ws.json"
    workspaces_file.save(str(path), sample())
    inode = path.stat().st_ino
    real_replace = os.replace
    seen: list[tuple[str, str]] = []

    def spy(src: str, dst: str) -> None:
        seen.append((src, dst))
        assert json.loads(Path(src).read_text())["active"] is None     # complete before the rename
        assert json.loads(path.read_text())["active"] == "prod"         # old file intact until then
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    workspaces_file.save(str(path), WorkspacesData(active=None, workspaces=sample().workspaces))
    assert len(seen) == 1 and seen[0][1] == str(path)
    assert path.stat().st_ino != inode


def test_refuses_group_or_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "ws.json"
    workspaces_file.save(str(path), sample())
    for mode in (0o644, 0o640, 0o604):
        os.chmod(path, mode)
        with pytest.raises(SecretFileError) as err:
            workspaces_file.load(str(path))
        assert f"chmod 600 {path}" in (err.value.hint or "")
        with pytest.raises(SecretFileError):
            workspaces_file.save(str(path), sample())
    assert os.stat(path).st_mode & 0o777 == 0o604      # refused, not silently fixed or replaced


@pytest.mark.parametrize("text,problem", [
    ("{not json", "line 1"),
    ("[]", "top level"),
    ('{"workspaces": {}}', "must be a list"),
    ('{"workspaces": [1]}', "must be an object"),
    ('{"workspaces": [{"api_key": "k", "server": "s"}]}', "no name"),
    ('{"workspaces": [{"name": "a", "server": "s"}]}', "no api_key"),
    ('{"workspaces": [{"name": "a", "api_key": 5, "server": "s"}]}', "must be a string"),
    ('{"workspaces": [{"name": "a", "api_key": "k"}, {"name": "a", "api_key": "k"}]}', "twice"),
    ('{"active": 3, "workspaces": []}', "active"),
])
def test_corrupt_file_is_a_clear_error_and_kept(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "ws.json"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as err:
        workspaces_file.load(str(path))
    assert problem in err.value.message and str(path) in err.value.message
    assert err.value.hint and "mv" in err.value.hint
    assert path.read_text() == text


def test_unknown_keys_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "ws.json"
    path.write_text(json.dumps({"active": "a", "version": 2, "workspaces": [
        {"name": "a", "api_key": KEY, "server": "h:1", "note": {"x": 1}}]}))
    os.chmod(path, 0o600)
    data = workspaces_file.load(str(path))
    workspaces_file.save(str(path), data)
    doc = json.loads(path.read_text())
    assert doc["version"] == 2 and doc["workspaces"][0]["note"] == {"x": 1}


def test_empty_file_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "ws.json"
    path.write_text("")
    os.chmod(path, 0o600)
    assert workspaces_file.load(str(path)) == WorkspacesData()
