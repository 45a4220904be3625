"""The gate's start-up shortcuts give what the plain way gives: rule ids from CPython's built-in
SHA-256 equal hashlib's, the bash grammar loaded without tree_sitter_bash's package parses as the
package's, versioned program names fold as before (their patterns compiled on first use), and
the patterns compiled on first use match as re.compile's."""

from __future__ import annotations

import hashlib
import re

import pytest
import tree_sitter
from hypothesis import given
from hypothesis import strategies as st

from cmdop.core.policy import programs, rules, shell
from cmdop.core.policy.pattern import LazyPattern


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


_LOAD = """
import sys
{patch}
from cmdop.core.policy import shell
before = sorted(m for m in ("typing", "importlib.resources", "tree_sitter", "tree_sitter_bash")
                if m in sys.modules)
import tree_sitter
print(before, tree_sitter.Language is shell._ts.Language,
      str(tree_sitter.Parser(shell._LANGUAGE).parse(b"ls | wc").root_node).startswith("(program"))
"""
_NO_QUICK_WAY = ("import importlib.util\n"
                 "def refuse(spec):\n"
                 "    raise ImportError('refused')\n"
                 "importlib.util.module_from_spec = refuse\n")


@pytest.mark.parametrize("patch, before", [
    # the bindings alone: neither package's __init__ (typing, importlib.resources) runs
    ("", "[]"),
    # nothing found the quick way: the plain imports, which bring their packages in
    (_NO_QUICK_WAY, "['importlib.resources', 'tree_sitter', 'tree_sitter_bash', 'typing']"),
])
def test_the_bindings_load_without_their_packages_and_stay_one_copy(patch: str, before: str) -> None:
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "-c", _LOAD.format(patch=patch)], capture_output=True,
                       text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{before} True True"


@pytest.mark.parametrize("name, family", [
    ("python3.12", "python"), ("/usr/bin/python3.13t", "python"), ("pypy3.10", "python"),
    ("perl5.36", "perl"), ("php8.2", "php"), ("node18", "node"), ("mkfs.ext4", "mkfs"),
    ("python", "python"), ("ls", "ls"), ("lsblk2", "lsblk2"), ("git2", "git2"),
])
def test_versioned_names_fold_to_their_family(name: str, family: str) -> None:
    assert programs.family(name) == family


def _lazy_patterns() -> list[tuple[str, LazyPattern]]:
    from cmdop.core.policy import commands, floor_cmd, floor_paths, gate, paths

    return [(f"{m.__name__}.{k}", v) for m in (commands, floor_cmd, floor_paths, gate, paths, programs, rules, shell)
            for k, v in vars(m).items() if isinstance(v, LazyPattern) and isinstance(v._source, str)]


def test_the_gates_patterns_are_compiled_on_first_use() -> None:
    found = _lazy_patterns()
    assert len(found) >= 30
    for name, lazy in found:
        assert lazy.compiled() is lazy.compiled(), name
        assert lazy.compiled().pattern == lazy._source and lazy.compiled().flags == re.compile(
            lazy._source, lazy._flags).flags, name


@given(st.text(alphabet=st.sampled_from("ab /.-_$(){}=~*?[]!|&;<>'\"\\\n\t0123456789rmfx:")))
def test_a_lazy_pattern_matches_as_re_does(text: str) -> None:
    for name, lazy in _lazy_patterns():
        rx = re.compile(lazy._source, lazy._flags)
        for method in ("match", "search"):
            got, want = getattr(lazy, method)(text), getattr(rx, method)(text)
            assert (got and got.span()) == (want and want.span()), (name, method)
        assert [m.span() for m in lazy.finditer(text)] == [m.span() for m in rx.finditer(text)], name
        assert lazy.sub("_", text, count=1) == rx.sub("_", text, count=1), name
