"""config.yaml (cmdop.adapters.config_file): defaults, known keys, errors naming the line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cmdop.adapters.config_file import AgentConfig, load, parse_text
from cmdop.core.errors import ConfigError, ConfigFileError


def test_missing_or_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load(str(tmp_path / "config.yaml")) == AgentConfig(sandbox_required=True, relay=None)
    assert parse_text("") == AgentConfig()
    assert parse_text("# only a comment\n") == AgentConfig()


def test_known_keys() -> None:
    cfg = parse_text("sandbox_required: false\nrelay: relay.example:443\n")
    assert cfg == AgentConfig(sandbox_required=False, relay="relay.example:443")


@pytest.mark.parametrize("text, line, words", [
    ("sandbox_required: true\nsandbox_requried: false\n", 2, "unknown key 'sandbox_requried'"),
    ("sandbox_required: \"no\"\n", 1, "true or false"),
    ("sandbox_required: true\nsandbox_required: false\n", 2, "duplicate key"),
    ("relay: [a, b]\n", 1, "single value"),
    ("- a\n- b\n", 1, "mapping"),
    ("a: [\n", 2, "not valid YAML"),
])
def test_bad_files_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigFileError) as err:
        parse_text(text)
    assert isinstance(err.value, ConfigError) and err.value.line == line
    assert err.value.message.startswith(f"line {line}: ") and words in err.value.message
    assert err.value.hint


def test_a_file_others_can_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("sandbox_required: false\n")
    os.chmod(path, 0o666)
    with pytest.raises(ConfigFileError, match="writable by other users"):
        load(str(path))
    os.chmod(path, 0o600)
    assert load(str(path)).sandbox_required is False
