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


# Found by a black-box pass: these were judged and audited as decisions (an "allow" line for a
# call that never ran; a remote one denied by the mode) before the tool said bad_input. The
# tool checks them too; here they are caught before admission and the gate.
@pytest.mark.parametrize("tool, tool_input, field", [
    ("execute_command", {"command": "ls", "timeout_ms": 0}, "timeout_ms"),
    ("execute_command", {"command": "ls", "timeout_ms": 600_001}, "timeout_ms"),
    ("execute_command", {"command": "echo \ud800"}, "command"),
    ("read_file", {"path": "/x", "start": 0}, "start"),
    ("read_file", {"path": "/x", "start": 5, "end": 2}, "end"),
    ("read_file", {"path": "/x", "end": 0}, "end"),
    ("write_file", {"path": "a", "content": "not base64!", "encoding": "base64"}, "content"),
    ("write_file", {"path": "a", "content": "x", "encoding": "latin-1"}, "encoding"),
    ("write_file", {"path": "a", "content": "\ud800"}, "content"),
    ("grep", {"pattern": "(", "path": "."}, "pattern"),
    ("grep", {"pattern": "x", "path": ".", "max_results": 0}, "max_results"),
    ("glob", {"pattern": "*", "cwd": "\udcff"}, "cwd"),
])
def test_a_value_the_tool_would_refuse_is_bad_input_before_the_gate(tool: str, tool_input: dict[str, Any],
                                                                   field: str) -> None:
    out = problem(tool, tool_input)
    assert out is not None and out["error"] == "bad_input" and out["field"] == field, out


@pytest.mark.parametrize("tool, tool_input", [
    ("execute_command", {"command": "ls", "timeout_ms": 1}),
    ("execute_command", {"command": "ls", "timeout_ms": 600_000}),
    ("read_file", {"path": "/x", "start": 2, "end": 2}),
    ("write_file", {"path": "a", "content": "aGk=", "encoding": "base64"}),
    ("write_file", {"path": "é", "content": "ünïcode"}),
    ("grep", {"pattern": "a(b)?", "path": ".", "max_results": 1000}),
])
def test_values_in_range_pass(tool: str, tool_input: dict[str, Any]) -> None:
    assert problem(tool, tool_input) is None


def test_a_bad_value_is_never_judged_or_audited(tmp_path: Path) -> None:
    """The effect: no audit line, no run, `bad_input` naming the field."""
    from cmdop.core.calls import Caller, CallerKind, ToolCall
    from cmdop.pipeline import handle_call

    class Audit:
        lines: list[Any] = []

        def append(self, record: Any) -> None:
            self.lines.append(record)

    class Ctx:
        audit = Audit()

    result = handle_call(ToolCall("execute_command", {"command": f"touch {tmp_path}/ran", "timeout_ms": 0},
                                  cwd=str(tmp_path)), Caller(CallerKind.LOCAL), Ctx())  # type: ignore[arg-type]
    assert result["error"] == "bad_input" and result["field"] == "timeout_ms"
    assert Ctx.audit.lines == [] and not (tmp_path / "ran").exists()
