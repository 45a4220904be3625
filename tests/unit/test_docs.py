"""The docs/ reference stands on its own and keeps up with the code.

Read at test time: the argparse tree (every command path must be documented in
docs/commands.md), the keys config.yaml accepts (docs/configuration.md), the audit record's
fixed fields (docs/audit.md). No document may point outside the repository, and every
relative link in README.md and docs/*.md must name a file that exists.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _command_paths() -> list[str]:
    from cmdop.cli.main import build_parser

    out: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out.append(" ".join(path + [name]))
                    walk(sub, path + [name])

    walk(build_parser(), [])
    return out


def _documented_spans(text: str) -> set[str]:
    """Every heading line and every `code span`, whitespace-normalised, `cmdop ` prefix dropped."""
    found: set[str] = set()
    pieces = re.findall(r"`([^`\n]+)`", text)
    pieces += [m.strip("# ").strip() for m in re.findall(r"^#+ .*$", text, re.M)]
    for piece in pieces:
        piece = " ".join(piece.replace("`", " ").split())
        found.add(piece)
        if piece.startswith("cmdop "):
            found.add(piece[len("cmdop "):])
    return found


def _mentions(path: str, spans: set[str]) -> bool:
    """`path` is a whole span, or a span starts with it followed by a space or `[`."""
    return any(s == path or s.startswith(path + " ") or s.startswith(path + "[") for s in spans)


def test_the_parser_has_commands():
    paths = _command_paths()
    assert {"exec", "relay key create", "permissions add"} <= set(paths)


def test_every_command_path_is_in_commands_md():
    spans = _documented_spans(_read("commands.md"))
    missing = [p for p in _command_paths() if not _mentions(p, spans)]
    assert not missing, ("commands without a heading or code span in docs/commands.md: "
                         + ", ".join(missing))


def test_every_config_key_is_in_configuration_md():
    from cmdop.adapters.config_file import KEYS, AgentConfig

    text = _read("configuration.md")
    keys = set(KEYS) | set(AgentConfig.__dataclass_fields__)
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"config.yaml keys missing from docs/configuration.md: {missing}"


def test_every_policy_key_is_in_policy_md():
    from cmdop.adapters import policy_store

    text = _read("policy.md")
    keys = set(policy_store.TOP_KEYS) | set(policy_store.RULE_KEYS) | set(policy_store.TEST_KEYS)
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"permissions.yaml keys missing from docs/policy.md: {missing}"


def test_every_audit_field_is_in_audit_md():
    from cmdop.core.audit import FIELDS, OUTCOMES

    text = _read("audit.md")
    missing = sorted(f for f in (*FIELDS, *OUTCOMES) if f"`{f}`" not in text)
    assert not missing, f"audit fields/outcomes missing from docs/audit.md: {missing}"


def test_every_cmdop_environment_variable_is_in_paths_md():
    text = _read("paths.md")
    used: set[str] = set()
    for src in (REPO / "cmdop").rglob("*.py"):
        used |= set(re.findall(r"\bCMDOP_[A-Z][A-Z_]*[A-Z]\b", src.read_text(encoding="utf-8")))
    used -= {"CMDOP_UNKNOWN"}  # an example name in a test-facing docstring, not a variable
    missing = sorted(v for v in used if v not in text)
    assert not missing, f"environment variables missing from docs/paths.md: {missing}"


def _doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", _doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_reference_outside_the_repository(path: Path):
    text = path.read_text(encoding="utf-8")
    for bad in ("CONTRACT", "../shared", "spec/"):
        assert bad not in text, f"{path.relative_to(REPO)} refers to {bad!r}"


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", _doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files(path: Path):
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same file
        file_part = target.split("#", 1)[0]
        if not (path.parent / file_part).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(REPO)}: links to missing files: {broken}"


def _slugs(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    out = set()
    for heading in re.findall(r"^#+ (.*)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("path", _doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_anchors_point_to_existing_headings(path: Path):
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or "#" not in target:
            continue
        file_part, anchor = target.split("#", 1)
        doc = (path.parent / file_part) if file_part else path
        if doc.suffix == ".md" and doc.exists() and anchor not in _slugs(doc):
            broken.append(target)
    assert not broken, f"{path.relative_to(REPO)}: links to missing headings: {broken}"


def test_docs_index_links_every_document():
    index = _read("README.md")
    for doc in sorted(DOCS.glob("*.md")):
        if doc.name != "README.md":
            assert f"]({doc.name}" in index, f"docs/README.md does not link {doc.name}"


def test_readme_links_the_docs():
    assert "](docs/README.md)" in (REPO / "README.md").read_text(encoding="utf-8")
