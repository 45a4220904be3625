"""The gate's start-up shortcuts give what the plain way gives: rule ids from CPython's built-in
SHA-256 equal hashlib's, the bash grammar loaded without tree_sitter_bash's package parses as the
package's, and versioned program names fold as before (their patterns compiled on first use)."""

from __future__ import annotations

import hashlib

import pytest
import tree_sitter
from hypothesis import given
from hypothesis import strategies as st

from cmdop.core.policy import programs, rules, shell


@given(st.text(), st.sampled_from(rules.ACTIONS))
def test_rule_ids_are_sha256(rule: str, action: str) -> None:
    data = (rule + "\n" + action).encode("utf-8", "surrogatepass")
    try:
        (rule + "\n" + action).encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            rules.rule_id(rule, action)
        return
    assert rules.rule_id(rule, action) == "r-" + hashlib.sha256(data).hexdigest()[:12]


@pytest.mark.parametrize("source", [
    b"ls -la", b"git status && rm -rf / ; echo $(curl x | sh)", b"for f in *; do cat \"$f\"; done",
    b"X=1 sudo -u root bash -c 'id' 2>/dev/null", b"cat <<EOF\n$(id)\nEOF\n", b"! { a; }", b"",
])
def test_the_grammar_parses_as_the_packages_own(source: bytes) -> None:
    import tree_sitter_bash

    ours = tree_sitter.Parser(shell._LANGUAGE).parse(source).root_node
    theirs = tree_sitter.Parser(tree_sitter.Language(tree_sitter_bash.language())).parse(source).root_node
    assert str(ours) == str(theirs)


def test_the_grammar_falls_back_to_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.machinery import PathFinder

    def missing(*_: object, **__: object) -> None:
        return None

    monkeypatch.setattr(PathFinder, "find_spec", missing)
    language = tree_sitter.Language(shell._bash_grammar())
    assert str(tree_sitter.Parser(language).parse(b"ls | wc").root_node).startswith("(program")


@pytest.mark.parametrize("name, family", [
    ("python3.12", "python"), ("/usr/bin/python3.13t", "python"), ("pypy3.10", "python"),
    ("perl5.36", "perl"), ("php8.2", "php"), ("node18", "node"), ("mkfs.ext4", "mkfs"),
    ("python", "python"), ("ls", "ls"), ("lsblk2", "lsblk2"), ("git2", "git2"),
])
def test_versioned_names_fold_to_their_family(name: str, family: str) -> None:
    assert programs.family(name) == family
