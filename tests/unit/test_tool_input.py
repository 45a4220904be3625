"""The input schema checked before admission and the gate (cmdop.core.tool_input): it names
the agent's tools and the fields they read, and a mistake is reported, never raised."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmdop.core.calls import TOOL_TARGET_FIELD
from cmdop.core.tool_input import FIELDS, TOOLS, problem
from cmdop.tools.registry import TOOLS as REGISTRY

TOOLS_DIR = Path(__file__).resolve().parents[2] / "cmdop" / "tools"


def test_the_schema_names_the_agents_tools() -> None:
    assert set(FIELDS) == set(REGISTRY) == set(TOOLS)


def test_every_field_a_tool_reads_is_in_the_schema() -> None:
    """get_str/get_int(tool_input, "X") in cmdop/tools: X is a field of some tool's schema, so a
    field the tools read cannot go unchecked."""
    known = {name for fields in FIELDS.values() for name in fields}
    read = set()
    for source in TOOLS_DIR.glob("*.py"):
        read |= set(re.findall(r'get_(?:str|int)\(tool_input, "([a-z_]+)"', source.read_text()))
    assert read and read <= known, read - known


def _well_formed(tool: str) -> dict[str, Any]:
    return {name: (1 if kind is int else "x")
            for name, (kind, required) in FIELDS[tool].items() if required}


@pytest.mark.parametrize("tool", TOOLS)
def test_each_required_field_missing_blank_or_mistyped_is_named(tool: str) -> None:
    assert problem(tool, _well_formed(tool)) is None
    for name, (kind, required) in FIELDS[tool].items():
        if not required:
            continue
        missing = {k: v for k, v in _well_formed(tool).items() if k != name}
        assert problem(tool, missing) == {"error": "bad_input", "field": name, "tool": tool,
                                          "message": f"missing required field {name!r}"}
        wrong = dict(_well_formed(tool), **{name: [] if kind is str else "1"})
        assert (problem(tool, wrong) or {}).get("field") == name
        if name == TOOL_TARGET_FIELD[tool]:
            assert (problem(tool, dict(_well_formed(tool), **{name: " \t"})) or {}).get("field") == name
            assert (problem(tool, dict(_well_formed(tool), **{name: "a\x00b"})) or {}).get("field") == name


@pytest.mark.parametrize("value", [True, 1.5, "7", None])
def test_an_integer_field_takes_only_integers(value: object) -> None:
    got = problem("read_file", {"path": "/x", "start": value})
    assert (got is None) == (value is None)


def test_an_unknown_tool_lists_the_tools() -> None:
    got = problem("format_disk", {})
    assert got is not None and got["error"] == "unknown_tool" and got["tools"] == list(TOOLS)
    assert "format_disk" in got["message"] and "read_file" in got["message"]
    assert (problem("read_file", ["not", "a", "dict"]) or {}).get("field") == "input"


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
                           | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@given(st.sampled_from([*TOOLS, "", "x", "read_file "]),
       st.dictionaries(st.sampled_from(["path", "command", "pattern", "content", "start", "end",
                                        "timeout_ms", "cwd", "glob", "x"]), json_values, max_size=5))
def test_any_input_is_answered_never_raised(tool: str, tool_input: dict[str, Any]) -> None:
    got = problem(tool, tool_input)
    assert got is None or got["error"] in ("bad_input", "unknown_tool")
    if got is None:   # well formed: every required field is there with its type
        for name, (kind, required) in FIELDS[tool].items():
            assert not required or isinstance(tool_input.get(name), kind)
